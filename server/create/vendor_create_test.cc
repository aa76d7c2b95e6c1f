#include "server/create/vendor_create.h"

#include "gtest/gtest.h"

namespace videotask {
namespace {

using Kind = VendorCreateResult::Kind;
const absl::Time kNow = absl::FromUnixSeconds(1761635478);

VendorCreateResult Classify(long status, const std::string& body,
                            std::optional<absl::Duration> retry_after = std::nullopt) {
  return ClassifyCreateAnswer(status, body, retry_after, "sk-secret", kNow);
}

TEST(VendorCreateTest, BothAnswerShapesCreate) {
  VendorCreateResult a = Classify(200, R"({"code":"0","msg":null,"data":{"projectId":"proj_1"}})");
  EXPECT_EQ(a.kind, Kind::kCreated);
  EXPECT_EQ(a.task.id(), "proj_1");
  EXPECT_EQ(a.task.status(), videotask::v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(a.task.observe_time().seconds(), 1761635478);
  VendorCreateResult b = Classify(
      200, R"({"id":"video_9","object":"video.generation","created":1761635400,)"
           R"("model":"sora-2","status":"queued"})");
  EXPECT_EQ(b.kind, Kind::kCreated);
  EXPECT_EQ(b.task.id(), "video_9");
  EXPECT_EQ(b.task.model(), "sora-2");
  EXPECT_EQ(b.task.create_time().seconds(), 1761635400);
  EXPECT_EQ(Classify(201, R"({"id":"video_9","status":"queued"})").kind, Kind::kCreated);
  EXPECT_EQ(Classify(200, R"({"code":0,"data":{"projectId":"p"}})").kind, Kind::kCreated);
}

TEST(VendorCreateTest, RefusalsCarryTheVendorsMessageWithoutTheKey) {
  VendorCreateResult a = Classify(200, R"({"code":"1001","msg":"prompt too long","data":null})");
  EXPECT_EQ(a.kind, Kind::kRefused);
  EXPECT_EQ(a.message, "prompt too long");
  VendorCreateResult b = Classify(400, R"({"error":{"message":"bad key sk-secret\n here"}})");
  EXPECT_EQ(b.kind, Kind::kRefused);
  EXPECT_EQ(b.message, "bad key [redacted]? here");
  VendorCreateResult c = Classify(422, std::string(5000, 'x'));
  EXPECT_EQ(c.kind, Kind::kRefused);
  EXPECT_EQ(c.message, "HTTP 422 without a message");
  VendorCreateResult d =
      Classify(400, "{\"message\":\"" + std::string(5000, 'y') + "\"}");
  EXPECT_LE(d.message.size(), kMaxVendorMessageChars + 3);
  EXPECT_EQ(Classify(404, "").kind, Kind::kRefused);  // an unknown family
}

TEST(VendorCreateTest, KeyRejectionsAndSurelyNotCreated) {
  EXPECT_EQ(Classify(401, "{}").kind, Kind::kRejected);
  EXPECT_EQ(Classify(403, "{}").kind, Kind::kRejected);
  VendorCreateResult r = Classify(429, "{}", absl::Seconds(7));
  EXPECT_EQ(r.kind, Kind::kNotSent);
  EXPECT_TRUE(r.rate_limited);
  EXPECT_EQ(r.retry_after, absl::Seconds(7));
  EXPECT_EQ(Classify(503, "{}").kind, Kind::kNotSent);
  EXPECT_FALSE(Classify(503, "{}").rate_limited);
}

TEST(VendorCreateTest, UnknownOutcomes) {
  for (long status : {500, 502, 504, 301, 100}) {
    EXPECT_EQ(Classify(status, "{}").kind, Kind::kUnknown) << status;
  }
  EXPECT_EQ(Classify(200, "").kind, Kind::kUnknown);
  EXPECT_EQ(Classify(200, "<html>").kind, Kind::kUnknown);
  EXPECT_EQ(Classify(200, R"({"object":"video","status":"queued"})").kind, Kind::kUnknown);
  EXPECT_EQ(Classify(200, R"({"code":"0","data":null})").kind, Kind::kUnknown);
  EXPECT_EQ(Classify(200, R"({"code":"0","data":{"projectId":"../x"}})").kind, Kind::kUnknown);
  EXPECT_EQ(Classify(200, R"({"id":""})").kind, Kind::kUnknown);
}

}  // namespace
}  // namespace videotask
