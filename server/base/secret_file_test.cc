#include "server/base/secret_file.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace videotask {
namespace {

std::string Path(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

TEST(SecretFile, ReadsTheBytesAndTheirVersion) {
  const std::string p = Path("key");
  std::ofstream(p) << "  sk-secret\n";
  FileVersion v;
  absl::StatusOr<std::string> got = ReadSecretFile(p, "key file", &v);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "  sk-secret\n");  // as read: callers strip
  EXPECT_EQ(v, FileVersion::At(p));
  EXPECT_EQ(v.size, 12);
  std::ofstream(p) << "sk-other";
  EXPECT_NE(FileVersion::At(p), v);
}

TEST(SecretFile, RefusalsNameTheFileNeverTheContent) {
  const std::string big = Path("big");
  std::ofstream(big) << std::string(kMaxSecretFileBytes, 's') << "sk-tail";
  absl::StatusOr<std::string> got = ReadSecretFile(big, "key file " + big);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(got.status().message(), "key file " + big + ": larger than 64 KiB");
  const std::string exact = Path("exact");
  std::ofstream(exact) << std::string(kMaxSecretFileBytes, 's');
  EXPECT_TRUE(ReadSecretFile(exact, "key file").ok());
  // A directory opens, but is no file to read.
  const std::string dir = Path("dir");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  got = ReadSecretFile(dir, "key file " + dir);
  EXPECT_EQ(got.status().message(), "key file " + dir + ": not a regular file");
  got = ReadSecretFile(Path("missing"), "key file");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(got.status().message(), "key file: No such file")) << got.status();
}

}  // namespace
}  // namespace videotask
