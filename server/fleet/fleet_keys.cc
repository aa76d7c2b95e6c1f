#include "server/fleet/fleet_keys.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

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

FleetKeys::FleetKeys(absl::string_view api_key, absl::string_view upstream_host) {
  const std::string ns = HmacSha256(api_key, absl::StrCat("videotask fleet namespace", upstream_host));
  fingerprint_ = absl::BytesToHexString(ns).substr(0, 16);
  prefix_ = absl::StrCat("vt:{", fingerprint_, "}:");
  signing_key_ = HmacSha256(api_key, absl::StrCat("videotask fleet state v1", std::string(1, '\0'),
                                                  upstream_host));
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
std::string FleetKeys::StatesChannel() const { return absl::StrCat(prefix_, "states"); }
std::string FleetKeys::LeasesChannel() const { return absl::StrCat(prefix_, "leases"); }

}  // namespace videotask::fleet
