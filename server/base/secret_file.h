// ReadSecretFile: the bytes of a small file that holds a secret (a mounted
// Kubernetes Secret: the vendor API key, the Redis password, S3 keys).
//
// Only a regular file is read (a FIFO or a device could block or never
// end), through one descriptor, so `*version` is the version of the bytes
// returned; more than kMaxSecretFileBytes is refused, so a wrong path cannot
// pull in a huge file. Errors are FAILED_PRECONDITION "<what>: <reason>"
// (`what` names the file, e.g. "API key file /etc/key"), never the content,
// and the partial bytes of a failed read are wiped. The bytes come back as
// read: callers strip and check them, and wipe their copies.
#ifndef VIDEOTASK_SERVER_BASE_SECRET_FILE_H_
#define VIDEOTASK_SERVER_BASE_SECRET_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/base/file_version.h"

namespace videotask {

inline constexpr size_t kMaxSecretFileBytes = 64 * 1024;

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view what,
                                           FileVersion* version = nullptr);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_SECRET_FILE_H_
