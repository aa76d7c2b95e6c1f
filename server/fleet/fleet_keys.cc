#include "server/fleet/fleet_keys.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace videotask::fleet {

std::string HmacSha256(absl::string_view key, absl::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // HMAC() with an empty key still works; a null result only on OOM.
  static const unsigned char kEmpty = 0;
  const void* k = key.empty() ? static_cast<const void*>(&kEmpty) : key.data();
  const unsigned char* d =
      data.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(data.data());
  if (HMAC(EVP_sha256(), k, static_cast<int>(key.size()), d, data.size(), out, &len) == nullptr) {
    abort();  // allocation failure inside OpenSSL
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

SigningKeys::SigningKeys(std::string upstream_host, absl::string_view api_key,
                         const std::vector<std::string>& accepted_api_keys)
    : host_(std::move(upstream_host)) {
  absl::MutexLock lock(&mu_);
  current_ = Derive(api_key);
  for (const std::string& k : accepted_api_keys) configured_.push_back(Derive(k));
}

std::shared_ptr<SigningKeys> SigningKeys::FromSigningKey(std::string signing_key) {
  std::shared_ptr<SigningKeys> keys(new SigningKeys());
  absl::MutexLock lock(&keys->mu_);
  keys->current_ = std::move(signing_key);
  return keys;
}

std::string SigningKeys::Derive(absl::string_view api_key) const {
  return HmacSha256(api_key, absl::StrCat("videotask fleet state v1", std::string(1, '\0'), host_));
}

void SigningKeys::UseApiKey(absl::string_view api_key) {
  std::string d = Derive(api_key);
  absl::MutexLock lock(&mu_);
  if (d == current_) return;
  replaced_.push_back(std::exchange(current_, std::move(d)));
  if (replaced_.size() > kMaxReplaced) replaced_.erase(replaced_.begin());
}

std::string SigningKeys::current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

std::vector<std::string> SigningKeys::accepted() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out = {current_};
  for (const auto* list : {&configured_, &replaced_}) {
    for (const std::string& k : *list) {
      if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
    }
  }
  return out;
}

FleetKeys::FleetKeys(absl::string_view fleet_name, absl::string_view upstream_host,
                     absl::string_view api_key, const std::vector<std::string>& accepted_api_keys) {
  if (fleet_name.empty()) fleet_name = kDefaultFleetName;
  unsigned char digest[SHA256_DIGEST_LENGTH];
  const std::string ns =
      absl::StrCat("videotask fleet namespace", std::string(1, '\0'), fleet_name,
                   std::string(1, '\0'), upstream_host);
  SHA256(reinterpret_cast<const unsigned char*>(ns.data()), ns.size(), digest);
  fingerprint_ = absl::BytesToHexString(
                     absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)))
                     .substr(0, 16);
  prefix_ = absl::StrCat("vt:{", fingerprint_, "}:");
  signing_ = std::make_shared<SigningKeys>(std::string(upstream_host), api_key, accepted_api_keys);
}

std::string FleetKeys::RateKey() const { return absl::StrCat(prefix_, "rate"); }
std::string FleetKeys::PauseKey() const { return absl::StrCat(prefix_, "pause"); }
std::string FleetKeys::StateKey(absl::string_view id) const {
  return absl::StrCat(prefix_, "state:", id);
}
std::string FleetKeys::TerminalKey(absl::string_view id) const {
  return absl::StrCat(prefix_, "done:", id);
}
std::string FleetKeys::LeaseKey(absl::string_view id) const {
  return absl::StrCat(prefix_, "lease:", id);
}
std::string FleetKeys::ProbeKey() const { return absl::StrCat(prefix_, "probe"); }
std::string FleetKeys::StatesChannel() const { return absl::StrCat(prefix_, "states"); }
std::string FleetKeys::LeasesChannel() const { return absl::StrCat(prefix_, "leases"); }

}  // namespace videotask::fleet
