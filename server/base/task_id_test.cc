#include "server/base/task_id.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace videotask {
namespace {

TEST(ValidateTaskIdTest, AcceptsValidIds) {
  for (const std::string& id :
       {std::string("proj_1234567890"), std::string("a"), std::string("Z"),
        std::string("0"), std::string("_"), std::string("-"),
        std::string("abc-DEF_123"), std::string("task--__--x"),
        std::string(kMaxTaskIdLength, 'a'), std::string(127, '9')}) {
    EXPECT_TRUE(ValidateTaskId(id).ok()) << id;
  }
}

TEST(ValidateTaskIdTest, RejectsEmpty) {
  absl::Status s = ValidateTaskId("");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateTaskIdTest, RejectsTooLong) {
  EXPECT_EQ(ValidateTaskId(std::string(129, 'a')).code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = ValidateTaskId(std::string(1000, 'b'));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(absl::StrContains(s.message(), "bbbb")) << s;
}

TEST(ValidateTaskIdTest, RejectsPathTraversalAndEscapes) {
  for (const std::string& id :
       {std::string(".."), std::string("."), std::string("../admin"),
        std::string("a/b"), std::string("/abs"), std::string("a\\b"),
        std::string("%2F"), std::string("..%2Fadmin"), std::string("a?b=1"),
        std::string("a#frag"), std::string("a.b"), std::string("a:b"),
        std::string("a@b"), std::string("a+b"), std::string("a~b")}) {
    absl::Status s = ValidateTaskId(id);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << id;
  }
}

TEST(ValidateTaskIdTest, RejectsWhitespaceAndControlCharacters) {
  for (const std::string& id :
       {std::string("a b"), std::string(" a"), std::string("a "),
        std::string("a\nb"), std::string("a\n"), std::string("\n"),
        std::string("a\r\nX-Injected: 1"), std::string("a\tb"),
        std::string("a\0b", 3), std::string(1, '\0'), std::string("a\x7f"),
        std::string("a\x01")}) {
    absl::Status s = ValidateTaskId(id);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ValidateTaskIdTest, RejectsNonAscii) {
  for (const std::string& id :
       {std::string("t\xc3\xa9st"),             // é
        std::string("\xe4\xbb\xbb\xe5\x8a\xa1"),  // 任务
        std::string("a\xff"), std::string("\xef\xbc\x8f"),  // fullwidth '/'
        std::string("a\xe2\x80\x8b")}) {                   // zero-width space
    EXPECT_EQ(ValidateTaskId(id).code(), absl::StatusCode::kInvalidArgument)
        << id;
  }
}

TEST(ValidateTaskIdTest, MessageNeverEchoesTheId) {
  for (const std::string& id :
       {std::string("evil/SECRETPART"), std::string("SECRETPART\n"),
        std::string(200, 'S') + "SECRETPART"}) {
    absl::Status s = ValidateTaskId(id);
    ASSERT_FALSE(s.ok());
    EXPECT_FALSE(absl::StrContains(s.message(), "SECRETPART")) << s;
  }
}

}  // namespace
}  // namespace videotask
