// SHA-256 digests for archive tests, as lowercase hex (the form of
// VideoTask.archive.sha256).
#ifndef VIDEOTASK_TESTS_TESTING_SHA256_H_
#define VIDEOTASK_TESTS_TESTING_SHA256_H_

#include <cstdint>
#include <string>

namespace videotask::testing {

// The SHA-256 of the simulated upstream's video for `id`, `size` bytes
// (sim::VideoBytes), computed a megabyte at a time without holding them.
std::string SimVideoSha256(const std::string& id, int64_t size);

// The SHA-256 of the file at `path`; "<missing>" when it cannot be opened.
std::string FileSha256(const std::string& path);

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_SHA256_H_
