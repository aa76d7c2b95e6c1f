#include "server/upstream/task_json.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace videotask {
namespace {

using ::videotask::v1::VideoTask;
using ::videotask::v1::VideoTaskStatus;

const absl::Time kObserve = absl::FromUnixNanos(1761635500123456789LL);

absl::StatusOr<VideoTask> Parse(absl::string_view body,
                                absl::string_view id = "proj_1234567890") {
  return ParseVendorTask(body, id, kObserve);
}

TEST(ParseVendorStatusTest, CanonicalValues) {
  EXPECT_EQ(*ParseVendorStatus("queued"), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(*ParseVendorStatus("processing"), v1::VIDEO_TASK_STATUS_PROCESSING);
  EXPECT_EQ(*ParseVendorStatus("completed"), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(*ParseVendorStatus("failed"), v1::VIDEO_TASK_STATUS_FAILED);
}

TEST(ParseVendorStatusTest, Synonyms) {
  struct Case {
    const char* in;
    VideoTaskStatus want;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"pending", v1::VIDEO_TASK_STATUS_QUEUED},
           {"submitted", v1::VIDEO_TASK_STATUS_QUEUED},
           {"waiting", v1::VIDEO_TASK_STATUS_QUEUED},
           {"created", v1::VIDEO_TASK_STATUS_QUEUED},
           {"in_queue", v1::VIDEO_TASK_STATUS_QUEUED},
           {"not_started", v1::VIDEO_TASK_STATUS_QUEUED},
           {"in_progress", v1::VIDEO_TASK_STATUS_PROCESSING},
           {"running", v1::VIDEO_TASK_STATUS_PROCESSING},
           {"generating", v1::VIDEO_TASK_STATUS_PROCESSING},
           {"started", v1::VIDEO_TASK_STATUS_PROCESSING},
           {"active", v1::VIDEO_TASK_STATUS_PROCESSING},
           {"complete", v1::VIDEO_TASK_STATUS_COMPLETED},
           {"succeeded", v1::VIDEO_TASK_STATUS_COMPLETED},
           {"success", v1::VIDEO_TASK_STATUS_COMPLETED},
           {"successful", v1::VIDEO_TASK_STATUS_COMPLETED},
           {"done", v1::VIDEO_TASK_STATUS_COMPLETED},
           {"finished", v1::VIDEO_TASK_STATUS_COMPLETED},
           {"failure", v1::VIDEO_TASK_STATUS_FAILED},
           {"error", v1::VIDEO_TASK_STATUS_FAILED},
           {"errored", v1::VIDEO_TASK_STATUS_FAILED},
           {"cancelled", v1::VIDEO_TASK_STATUS_FAILED},
           {"canceled", v1::VIDEO_TASK_STATUS_FAILED},
           {"rejected", v1::VIDEO_TASK_STATUS_FAILED},
       }) {
    absl::StatusOr<VideoTaskStatus> got = ParseVendorStatus(c.in);
    ASSERT_TRUE(got.ok()) << c.in << ": " << got.status();
    EXPECT_EQ(*got, c.want) << c.in;
  }
}

TEST(ParseVendorStatusTest, NormalizesCaseSpaceAndDashes) {
  EXPECT_EQ(*ParseVendorStatus("  QUEUED\n"), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(*ParseVendorStatus("In-Progress"), v1::VIDEO_TASK_STATUS_PROCESSING);
  EXPECT_EQ(*ParseVendorStatus("in progress"), v1::VIDEO_TASK_STATUS_PROCESSING);
  EXPECT_EQ(*ParseVendorStatus("Not-Started"), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(*ParseVendorStatus("\tSucceeded "), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(*ParseVendorStatus("IN QUEUE"), v1::VIDEO_TASK_STATUS_QUEUED);
}

TEST(ParseVendorStatusTest, UnknownIsAnError) {
  for (const char* s : {"", " ", "exploded", "unknown", "queue d", "complet",
                        "succeeded!", "in__progress", "0", "null"}) {
    absl::StatusOr<VideoTaskStatus> got = ParseVendorStatus(s);
    EXPECT_FALSE(got.ok()) << "'" << s << "'";
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ParseVendorStatusTest, ErrorExcerptIsShortAndSanitized) {
  const std::string evil = "bad\r\nX-Injected: 1\x01" + std::string(500, 'z');
  absl::StatusOr<VideoTaskStatus> got = ParseVendorStatus(evil);
  ASSERT_FALSE(got.ok());
  const std::string msg(got.status().message());
  EXPECT_LT(msg.size(), 100u);
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_EQ(msg.find('\r'), std::string::npos);
  EXPECT_EQ(msg.find('\x01'), std::string::npos);
  EXPECT_TRUE(absl::StrContains(msg, "bad??X-Injected")) << msg;
}

TEST(SanitizedExcerptTest, Basics) {
  EXPECT_EQ(SanitizedExcerpt("abc"), "abc");
  EXPECT_EQ(SanitizedExcerpt("a\nb\xff", 10), "a?b?");
  EXPECT_EQ(SanitizedExcerpt("abcdef", 3), "abc...");
  EXPECT_EQ(SanitizedExcerpt(""), "");
}

TEST(ParseVendorTaskTest, VendorExample) {
  absl::StatusOr<VideoTask> t = Parse(R"({
    "id": "proj_1234567890", "object": "video", "created": 1761635478,
    "model": "videos", "status": "processing", "video_url": null,
    "error": null})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->id(), "proj_1234567890");
  EXPECT_EQ(t->model(), "videos");
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_PROCESSING);
  EXPECT_TRUE(t->has_create_time());
  EXPECT_EQ(t->create_time().seconds(), 1761635478);
  EXPECT_EQ(t->create_time().nanos(), 0);
  EXPECT_EQ(t->video_url(), "");
  EXPECT_FALSE(t->has_actual_duration());
  EXPECT_EQ(t->error(), "");
  EXPECT_EQ(t->observe_time().seconds(), 1761635500);
  EXPECT_EQ(t->observe_time().nanos(), 123456789);
}

TEST(ParseVendorTaskTest, Completed) {
  absl::StatusOr<VideoTask> t = Parse(R"({
    "id": "proj_1234567890", "object": "video", "created": 1761635478,
    "model": "videos", "status": "completed",
    "video_url": "https://cdn.example/v.mp4", "actualDuration": 8.25,
    "error": "ignored when completed"})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(t->video_url(), "https://cdn.example/v.mp4");
  ASSERT_TRUE(t->has_actual_duration());
  EXPECT_EQ(t->actual_duration().seconds(), 8);
  EXPECT_EQ(t->actual_duration().nanos(), 250000000);
  EXPECT_EQ(t->error(), "");
}

TEST(ParseVendorTaskTest, IntegerDuration) {
  absl::StatusOr<VideoTask> t =
      Parse(R"({"status": "completed", "actualDuration": 10})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->actual_duration().seconds(), 10);
  EXPECT_EQ(t->actual_duration().nanos(), 0);
}

TEST(ParseVendorTaskTest, Failed) {
  absl::StatusOr<VideoTask> t = Parse(R"({
    "id": "proj_1234567890", "status": "failed",
    "video_url": "https://cdn.example/ignored.mp4", "actualDuration": 3,
    "error": "unsupported reference material"})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_FAILED);
  EXPECT_EQ(t->error(), "unsupported reference material");
  EXPECT_EQ(t->video_url(), "");
  EXPECT_FALSE(t->has_actual_duration());
}

TEST(ParseVendorTaskTest, FieldsMayBeAbsentOrNull) {
  absl::StatusOr<VideoTask> t = Parse(R"({"status": "queued"})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->id(), "proj_1234567890");
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_FALSE(t->has_create_time());
  EXPECT_EQ(t->model(), "");
  EXPECT_TRUE(t->has_observe_time());

  t = Parse(R"({"id": null, "object": null, "created": null, "model": null,
               "status": "completed", "video_url": null,
               "actualDuration": null, "error": null})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_FALSE(t->has_create_time());
  EXPECT_FALSE(t->has_actual_duration());
  EXPECT_EQ(t->video_url(), "");
}

TEST(ParseVendorTaskTest, UnknownFieldsIgnored) {
  absl::StatusOr<VideoTask> t = Parse(
      R"({"status": "Running", "progress": 42, "extra": {"a": [1, 2]},
          "error": null, "meta": null})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_PROCESSING);
}

TEST(ParseVendorTaskTest, MissingOrNullStatusIsAnError) {
  EXPECT_FALSE(Parse(R"({"id": "proj_1234567890"})").ok());
  EXPECT_FALSE(Parse(R"({"status": null})").ok());
  EXPECT_FALSE(Parse(R"({})").ok());
}

TEST(ParseVendorTaskTest, UnknownStatusIsAnError) {
  absl::StatusOr<VideoTask> t = Parse(R"({"status": "exploded"})");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "exploded"));
}

TEST(ParseVendorTaskTest, NotAnObject) {
  for (const char* body :
       {"", "   ", "[]", "[{\"status\":\"queued\"}]", "\"queued\"", "42",
        "null", "true", "{\"status\": \"queued\"", "{\"status\": \"queued\",}",
        "<html><body>502 Bad Gateway</body></html>",
        "{\"status\": \"queued\"} trailing"}) {
    absl::StatusOr<VideoTask> t = Parse(body);
    EXPECT_FALSE(t.ok()) << body;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << body;
  }
}

TEST(ParseVendorTaskTest, WrongTypesAreErrors) {
  for (const char* body : {
           R"({"status": 1})",
           R"({"status": ["queued"]})",
           R"({"status": "queued", "id": 12})",
           R"({"status": "queued", "object": {}})",
           R"({"status": "queued", "created": "1761635478"})",
           R"({"status": "queued", "created": true})",
           R"({"status": "queued", "model": 3})",
           R"({"status": "completed", "video_url": ["x"]})",
           R"({"status": "completed", "actualDuration": "8"})",
           R"({"status": "failed", "error": {"message": "x"}})",
           R"({"status": "queued", "error": false})",
       }) {
    absl::StatusOr<VideoTask> t = Parse(body);
    EXPECT_FALSE(t.ok()) << body;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << body;
  }
}

TEST(ParseVendorTaskTest, OutOfRangeNumbers) {
  EXPECT_FALSE(Parse(R"({"status": "queued", "created": 1e300})").ok());
  EXPECT_FALSE(
      Parse(R"({"status": "queued", "created": 18446744073709551615})").ok());
  EXPECT_FALSE(Parse(R"({"status": "queued", "created": -1e15})").ok());
  EXPECT_FALSE(
      Parse(R"({"status": "completed", "actualDuration": -1})").ok());
  EXPECT_FALSE(
      Parse(R"({"status": "completed", "actualDuration": 1e300})").ok());
  absl::StatusOr<VideoTask> t =
      Parse(R"({"status": "queued", "created": 1761635478.9})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->create_time().seconds(), 1761635478);
}

TEST(ParseVendorTaskTest, IdMismatchIsAnError) {
  absl::StatusOr<VideoTask> t =
      Parse(R"({"id": "proj_other", "status": "queued"})");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(absl::StrContains(t.status().message(), "proj_other"));
}

TEST(ParseVendorTaskTest, ErrorsNeverEchoTheBody) {
  const std::string secret = "SECRET-BODY-CONTENT";
  for (const std::string& body : {
           "<html>" + secret + "</html>",
           "{\"status\": \"queued\", \"x\": \"" + secret + "\"",
           "{\"status\": 5, \"x\": \"" + secret + "\"}",
           "{\"id\": \"" + secret + "\", \"status\": \"queued\"}",
           "[\"" + secret + "\"]",
       }) {
    absl::StatusOr<VideoTask> t = Parse(body);
    ASSERT_FALSE(t.ok()) << body;
    EXPECT_FALSE(absl::StrContains(t.status().message(), secret))
        << t.status().message();
  }
}

TEST(ParseVendorTaskTest, LongStatusIsTruncatedInMessage) {
  const std::string body = "{\"status\": \"" + std::string(10000, 'q') + "\"}";
  absl::StatusOr<VideoTask> t = Parse(body);
  ASSERT_FALSE(t.ok());
  EXPECT_LT(t.status().message().size(), 120u);
}

TEST(ParseVendorTaskTest, Utf8StringsKept) {
  absl::StatusOr<VideoTask> t = Parse(
      "{\"status\": \"failed\", \"error\": \"\xe5\x8f\x82\xe8\x80\x83\"}");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->error(), "\xe5\x8f\x82\xe8\x80\x83");
}

}  // namespace
}  // namespace videotask
