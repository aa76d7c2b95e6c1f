#include "server/create/create_request.h"

#include <string>

#include "google/protobuf/util/json_util.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace videotask {
namespace {

google::protobuf::Struct Parse(const std::string& json) {
  google::protobuf::Struct s;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &s).ok()) << json;
  return s;
}

videotask::v1::CreateVideoTaskRequest Request(std::string key, std::string family,
                                              const std::string& body) {
  videotask::v1::CreateVideoTaskRequest r;
  r.set_request_id(std::move(key));
  r.set_family(std::move(family));
  *r.mutable_body() = Parse(body);
  return r;
}

TEST(CreateRequestTest, IntegralNumbersStayIntegers) {
  absl::StatusOr<std::string> j = StructToJson(Parse(
      R"({"model":"videos","prompt":"a cat","duration":10,"seed":-3,"big":9007199254740992,)"
      R"("ratio":1.5,"huge":1e300,"nested":{"n":[1,2.5,0]},"on":true,"none":null})"));
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(*j,
            R"({"big":9007199254740992,"duration":10,"huge":1e+300,"model":"videos",)"
            R"("nested":{"n":[1,2.5,0]},"none":null,"on":true,"prompt":"a cat","ratio":1.5,)"
            R"("seed":-3})");
}

TEST(CreateRequestTest, NonFiniteNumbersAndOversizedBodiesAreRefused) {
  google::protobuf::Struct s;
  (*s.mutable_fields())["x"].set_number_value(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(StructToJson(s).status().code(), absl::StatusCode::kInvalidArgument);
  (*s.mutable_fields())["x"].set_number_value(std::numeric_limits<double>::infinity());
  EXPECT_EQ(StructToJson(s).status().code(), absl::StatusCode::kInvalidArgument);
  google::protobuf::Struct big;
  (*big.mutable_fields())["prompt"].set_string_value(std::string(kMaxCreateBodyBytes, 'a'));
  EXPECT_EQ(StructToJson(big).status().code(), absl::StatusCode::kInvalidArgument);
  (*big.mutable_fields())["prompt"].set_string_value(std::string(kMaxCreateBodyBytes - 13, 'a'));
  ASSERT_TRUE(StructToJson(big).ok());  // {"prompt":"..."} is exactly 64 KiB
  EXPECT_EQ(StructToJson(big)->size(), kMaxCreateBodyBytes);
}

// A body nested `levels` deep (the body itself is level 1), objects or arrays.
google::protobuf::Struct Nested(int levels, bool arrays) {
  google::protobuf::Value inner;
  inner.set_string_value("x");
  for (int i = 1; i < levels; ++i) {
    google::protobuf::Value outer;
    if (arrays) {
      *outer.mutable_list_value()->add_values() = std::move(inner);
    } else {
      (*outer.mutable_struct_value()->mutable_fields())["a"] = std::move(inner);
    }
    inner = std::move(outer);
  }
  google::protobuf::Struct body;
  (*body.mutable_fields())["a"] = std::move(inner);
  return body;
}

TEST(CreateRequestTest, DeeplyNestedBodiesAreRefusedNamingTheLimit) {
  for (bool arrays : {false, true}) {
    EXPECT_TRUE(StructToJson(Nested(kMaxCreateBodyDepth, arrays)).ok()) << arrays;
    absl::Status s = StructToJson(Nested(kMaxCreateBodyDepth + 1, arrays)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << arrays;
    EXPECT_NE(s.message().find("32 levels"), std::string::npos) << s;
    EXPECT_EQ(StructToJson(Nested(5000, arrays)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  videotask::v1::CreateVideoTaskRequest r;
  r.set_request_id("k");
  r.set_family("videos");
  *r.mutable_body() = Nested(kMaxCreateBodyDepth + 1, false);
  EXPECT_EQ(PrepareCreate(r).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CreateRequestTest, HugeRequestsAreRefusedBeforeConversion) {
  videotask::v1::CreateVideoTaskRequest r;
  r.set_request_id("k");
  r.set_family("videos");
  (*r.mutable_body()->mutable_fields())["prompt"].set_string_value(
      std::string(kMaxCreateRequestBytes, 'a'));
  absl::Status s = PrepareCreate(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("serialized"), std::string::npos) << s;
  EXPECT_NE(s.message().find(absl::StrCat(kMaxCreateRequestBytes)), std::string::npos) << s;
}

TEST(CreateRequestTest, RequestIdAndFamilyRules) {
  EXPECT_TRUE(ValidateRequestId("k").ok());
  EXPECT_TRUE(ValidateRequestId("wf-1/run 2:activity~3").ok());
  EXPECT_TRUE(ValidateRequestId(std::string(128, 'k')).ok());
  EXPECT_FALSE(ValidateRequestId("").ok());
  EXPECT_FALSE(ValidateRequestId(std::string(129, 'k')).ok());
  EXPECT_FALSE(ValidateRequestId("tab\tkey").ok());
  EXPECT_FALSE(ValidateRequestId("caf\xc3\xa9").ok());
  EXPECT_TRUE(ValidateFamily("videos").ok());
  EXPECT_TRUE(ValidateFamily("kyyvideo2").ok());
  EXPECT_TRUE(ValidateFamily("star_videos").ok());
  EXPECT_TRUE(ValidateFamily(std::string(32, 'a')).ok());
  for (const char* bad : {"", "Videos", "../result", "a/b", "a-b", "a b", "a.b", "%2e"}) {
    EXPECT_FALSE(ValidateFamily(bad).ok()) << bad;
  }
  EXPECT_FALSE(ValidateFamily(std::string(33, 'a')).ok());
  // The message never echoes the input.
  EXPECT_EQ(ValidateFamily("../secret").message().find("secret"), std::string::npos);
}

TEST(CreateRequestTest, FingerprintDependsOnFamilyAndBodyOnly) {
  auto a = PrepareCreate(Request("k1", "videos", R"({"prompt":"x","duration":10})"));
  auto b = PrepareCreate(Request("k2", "videos", R"({"duration":10.0,"prompt":"x"})"));
  auto c = PrepareCreate(Request("k1", "sora", R"({"prompt":"x","duration":10})"));
  auto d = PrepareCreate(Request("k1", "videos", R"({"prompt":"x","duration":11})"));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(a->fingerprint, b->fingerprint) << "key order and 10 vs 10.0 do not matter";
  EXPECT_NE(a->fingerprint, c->fingerprint);
  EXPECT_NE(a->fingerprint, d->fingerprint);
  EXPECT_EQ(a->fingerprint.size(), 64u);
  EXPECT_EQ(a->body_json, R"({"duration":10,"prompt":"x"})");
  EXPECT_EQ(PrepareCreate(Request("", "videos", "{}")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareCreate(Request("k", "Videos", "{}")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace videotask
