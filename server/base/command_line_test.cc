#include "server/base/command_line.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

ABSL_FLAG(absl::Duration, test_interval, absl::Seconds(30), "A duration.");
ABSL_FLAG(int, test_count, 5, "A number.");
ABSL_FLAG(bool, test_switch, false, "A switch.");

namespace videotask {
namespace {

absl::Status Check(std::vector<std::string> args) {
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return CheckCommandLineFlags(static_cast<int>(argv.size()), argv.data());
}

TEST(CheckCommandLineFlagsTest, AcceptsGoodFlagsInEveryForm) {
  EXPECT_TRUE(Check({}).ok());
  EXPECT_TRUE(Check({"--test_interval=45s", "-test_count=7", "--test_switch"}).ok());
  EXPECT_TRUE(Check({"--test_interval", "1m", "watch", "id"}).ok());
  EXPECT_TRUE(Check({"--notest_switch", "--test_switch=false"}).ok());
  EXPECT_TRUE(Check({"watch", "-", "--", "--anything=goes"}).ok());
  EXPECT_TRUE(Check({"--help"}).ok()) << "left to absl";
}

TEST(CheckCommandLineFlagsTest, RejectsUnknownFlagsBadAndMissingValues) {
  absl::Status s = Check({"--bogus"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "unknown flag --bogus");
  s = Check({"--test_interval=soon"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--test_interval"), absl::string_view::npos) << s.message();
  EXPECT_EQ(Check({"--test_count=many"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check({"--test_switch=maybe"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check({"--notest_switch=true"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check({"--notest_count"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check({"--test_count"}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckCommandLineFlagsTest, LeavesValuesAsTheyWere) {
  absl::SetFlag(&FLAGS_test_count, 9);
  EXPECT_TRUE(Check({"--test_count=3"}).ok());
  EXPECT_FALSE(Check({"--test_count=3", "--test_interval=soon"}).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_test_count), 9);
  EXPECT_EQ(absl::GetFlag(FLAGS_test_interval), absl::Seconds(30));
}

}  // namespace
}  // namespace videotask
