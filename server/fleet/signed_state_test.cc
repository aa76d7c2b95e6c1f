#include "server/fleet/signed_state.h"

#include <string>

#include "gtest/gtest.h"
#include "server/fleet/fleet_keys.h"

namespace videotask::fleet {
namespace {

using videotask::v1::VideoTask;

VideoTask Completed(const std::string& id) {
  VideoTask t;
  t.set_id(id);
  t.set_status(videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
  t.set_video_url("https://cdn.example.com/v.mp4");
  t.mutable_observe_time()->set_seconds(1761635478);
  return t;
}

TEST(SignedStateTest, RoundTrip) {
  SignedState s(FleetKeys("key", "host").signing_key());
  const std::string entry = s.Sign(Completed("proj_1"));
  absl::StatusOr<VideoTask> t = s.Verify(entry, "proj_1");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->video_url(), "https://cdn.example.com/v.mp4");
  EXPECT_EQ(t->status(), videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_TRUE(s.Verify(entry).ok());
}

TEST(SignedStateTest, EveryFlippedBitIsRejected) {
  SignedState s(FleetKeys("key", "host").signing_key());
  const std::string entry = s.Sign(Completed("proj_1"));
  for (size_t i = 0; i < entry.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = entry;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      absl::StatusOr<VideoTask> t = s.Verify(bad, "proj_1");
      ASSERT_FALSE(t.ok()) << "byte " << i << " bit " << bit;
      EXPECT_TRUE(t.status().code() == absl::StatusCode::kPermissionDenied ||
                  t.status().code() == absl::StatusCode::kDataLoss)
          << t.status();
    }
  }
}

TEST(SignedStateTest, ForgedUnsignedTruncatedAndForeignAreRejected) {
  SignedState s(FleetKeys("key", "host").signing_key());
  VideoTask forged = Completed("proj_1");
  forged.set_video_url("https://evil.example.com/x.mp4");
  std::string body;
  forged.SerializeToString(&body);
  // A writer without the key: raw proto, or a made-up MAC.
  EXPECT_EQ(s.Verify(body).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.Verify("vts1" + std::string(32, 'x') + body).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.Verify("").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.Verify("vts1").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.Verify(std::string(1 << 20, 'v')).status().code(), absl::StatusCode::kDataLoss);
  const std::string entry = s.Sign(Completed("proj_1"));
  EXPECT_FALSE(s.Verify(entry.substr(0, entry.size() - 1)).ok());
  EXPECT_FALSE(s.Verify(entry + "x").ok());
  // Another fleet's key (other API key or other host).
  SignedState other(FleetKeys("key2", "host").signing_key());
  EXPECT_EQ(other.Verify(entry).status().code(), absl::StatusCode::kPermissionDenied);
  SignedState other_host(FleetKeys("key", "host2").signing_key());
  EXPECT_EQ(other_host.Verify(entry).status().code(), absl::StatusCode::kPermissionDenied);
  // A genuine entry replayed under another task's key.
  EXPECT_EQ(s.Verify(entry, "proj_2").status().code(), absl::StatusCode::kFailedPrecondition);
  // Signed but without a status.
  VideoTask empty;
  empty.set_id("proj_1");
  EXPECT_EQ(s.Verify(s.Sign(empty), "proj_1").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace videotask::fleet
