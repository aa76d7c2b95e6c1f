// Helpers shared by the fuzz targets: a check that aborts with a message
// (a finding, under libFuzzer and in the corpus tests alike) and input
// splitting.
#ifndef VIDEOTASK_TESTS_FUZZ_FUZZ_UTIL_H_
#define VIDEOTASK_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

#define FUZZ_CHECK(cond, what)                                                     \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: %s\n", __FILE__, __LINE__, \
                   #cond, std::string(what).c_str());                             \
      std::abort();                                                                \
    }                                                                              \
  } while (0)

namespace videotask::fuzz {

inline absl::string_view AsView(const uint8_t* data, size_t size) {
  return absl::string_view(reinterpret_cast<const char*>(data), size);
}

// The input cut at each NUL byte, at most `max_parts` parts (the last one
// keeps the rest, NULs included).
inline std::vector<absl::string_view> SplitNul(absl::string_view in, size_t max_parts) {
  std::vector<absl::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t nul = in.find('\0');
    if (nul == absl::string_view::npos) break;
    parts.push_back(in.substr(0, nul));
    in.remove_prefix(nul + 1);
  }
  parts.push_back(in);
  return parts;
}

// True when every byte is printable ASCII: what an error message or log
// line built from outside bytes must be.
inline bool PrintableAscii(absl::string_view s) {
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) return false;
  }
  return true;
}

}  // namespace videotask::fuzz

#endif  // VIDEOTASK_TESTS_FUZZ_FUZZ_UTIL_H_
