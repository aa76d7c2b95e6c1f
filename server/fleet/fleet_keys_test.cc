#include "server/fleet/fleet_keys.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace videotask::fleet {
namespace {

TEST(HmacSha256Test, Rfc4231Case2) {
  EXPECT_EQ(absl::BytesToHexString(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(HmacSha256("", "").size(), 32u);
}

TEST(FleetKeysTest, FingerprintIsStableHexAndNeverTheKey) {
  const std::string api_key = "sk-live-0123456789abcdef";
  FleetKeys a(api_key, "api.example.com");
  FleetKeys b(api_key, "api.example.com");
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  ASSERT_EQ(a.fingerprint().size(), 16u);
  for (char c : a.fingerprint()) EXPECT_TRUE(absl::ascii_isxdigit(c));
  EXPECT_FALSE(absl::StrContains(a.prefix(), api_key));
  EXPECT_FALSE(absl::StrContains(a.prefix(), "0123456789abcdef"));
  // Another name or another host: another fleet; another key: the same one
  // (issue 16 item 3: a key rotation must not split the budget).
  EXPECT_EQ(FleetKeys("sk-live-other", "api.example.com").fingerprint(), a.fingerprint());
  EXPECT_EQ(FleetKeys("", "api.example.com", "sk-live-other").fingerprint(), a.fingerprint());
  EXPECT_NE(FleetKeys("team-b", "api.example.com", api_key).fingerprint(), a.fingerprint());
  EXPECT_NE(FleetKeys(api_key, "api2.example.com").fingerprint(), a.fingerprint());
  EXPECT_NE(FleetKeys("sk-live-other", "api.example.com").signing_key(), a.signing_key());
  // The signing key differs from the namespace and between fleets.
  EXPECT_EQ(a.signing_key().size(), 32u);
  EXPECT_EQ(a.signing_key(), b.signing_key());
  EXPECT_NE(FleetKeys(api_key, "api2.example.com").signing_key(), a.signing_key());
  EXPECT_FALSE(absl::StrContains(absl::BytesToHexString(a.signing_key()), a.fingerprint()));
}

// Rotation: the configured previous key and a replaced one verify; the
// current one signs.
TEST(FleetKeysTest, SigningKeysFollowARotation) {
  FleetKeys old_only("fleet", "api.example.com", "sk-old");
  FleetKeys both("fleet", "api.example.com", "sk-new", {"sk-old"});
  EXPECT_EQ(both.fingerprint(), old_only.fingerprint());
  const std::vector<std::string> accepted = both.signing()->accepted();
  ASSERT_EQ(accepted.size(), 2u);
  EXPECT_EQ(accepted[0], both.signing_key());
  EXPECT_EQ(accepted[1], old_only.signing_key());
  // A re-read key: it signs, the replaced one is still accepted.
  old_only.signing()->UseApiKey("sk-new");
  EXPECT_EQ(old_only.signing_key(), both.signing_key());
  EXPECT_EQ(old_only.signing()->accepted().size(), 2u);
  old_only.signing()->UseApiKey("sk-new");  // unchanged: nothing moves
  EXPECT_EQ(old_only.signing()->accepted().size(), 2u);
  for (int i = 0; i < 5; ++i) old_only.signing()->UseApiKey("sk-" + std::to_string(i));
  EXPECT_EQ(old_only.signing()->accepted().size(), 1 + SigningKeys::kMaxReplaced);
}

TEST(FleetKeysTest, EveryKeySharesOneHashTag) {
  FleetKeys k("key", "host");
  const std::string tag = "{" + k.fingerprint() + "}";
  EXPECT_EQ(k.prefix(), "vt:" + tag + ":");
  for (const std::string& key : {k.RateKey(), k.PauseKey(), k.StateKey("proj_1"),
                                 k.LeaseKey("proj_1"), k.StatesChannel()}) {
    EXPECT_TRUE(absl::StartsWith(key, k.prefix())) << key;
    // Redis Cluster hashes the first {...}: exactly one brace pair.
    EXPECT_EQ(std::count(key.begin(), key.end(), '{'), 1) << key;
  }
  EXPECT_EQ(k.StateKey("proj_1"), k.prefix() + "state:proj_1");
  EXPECT_EQ(k.LeaseKey("proj_1"), k.prefix() + "lease:proj_1");
  EXPECT_NE(k.StateKey("a"), k.LeaseKey("a"));
}

}  // namespace
}  // namespace videotask::fleet
