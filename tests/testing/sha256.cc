#include "tests/testing/sha256.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "tests/sim/sim_upstream.h"

namespace videotask::testing {
namespace {

// Finishes `ctx` (and frees it): the digest as hex.
std::string FinalHex(EVP_MD_CTX* ctx) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string out;
  for (unsigned i = 0; i < len; ++i) absl::StrAppend(&out, absl::Hex(md[i], absl::kZeroPad2));
  return out;
}

}  // namespace

std::string SimVideoSha256(const std::string& id, int64_t size) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::string buf(1 << 20, '\0');
  for (int64_t off = 0; off < size; off += static_cast<int64_t>(buf.size())) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(buf.size(), size - off));
    sim::VideoBytes(id, off, buf.data(), n);
    EVP_DigestUpdate(ctx, buf.data(), n);
  }
  return FinalHex(ctx);
}

std::string FileSha256(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return "<missing>";
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::string buf(1 << 20, '\0');
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) EVP_DigestUpdate(ctx, buf.data(), n);
  std::fclose(f);
  return FinalHex(ctx);
}

}  // namespace videotask::testing
