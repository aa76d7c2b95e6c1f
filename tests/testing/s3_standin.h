// S3Standin: the stand-in S3, STS and EKS Pod Identity agent
// (tests/testing/s3_standin.py, see its docstring) as a subprocess for C++
// tests, run with Debian's /usr/bin/python3 and python3-botocore. It is a
// STAND-IN, not S3: what makes it worth testing against is that it
// recomputes every request's SigV4 signature with botocore and refuses a
// mismatch (403 SignatureDoesNotMatch), as S3 does.
//
// Start() returns once the three listeners are up on free loopback ports;
// the controls (fault scripts, the clock, the record of requests, the
// stored objects) go over its unsigned /_standin/ endpoints. The process is
// killed when the object is destroyed.
#ifndef VIDEOTASK_TESTS_TESTING_S3_STANDIN_H_
#define VIDEOTASK_TESTS_TESTING_S3_STANDIN_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tests/testing/subprocess.h"

namespace videotask::testing {

class S3Standin {
 public:
  struct Options {
    std::string region = "us-east-1";
    std::vector<std::string> buckets = {"videos"};
    // Long-term keys it accepts, "AKID:SECRET".
    std::vector<std::string> credentials = {"AKIASTANDIN:standin-secret-key"};
    std::string web_identity_token = "standin-web-identity-token";
    std::string pod_identity_token = "standin-pod-identity-token";
    absl::Duration sts_duration = absl::Hours(1);  // of temporary credentials
  };

  // FAILED_PRECONDITION when /usr/bin/python3 cannot import botocore.
  static absl::StatusOr<std::unique_ptr<S3Standin>> Start(Options options);
  static absl::StatusOr<std::unique_ptr<S3Standin>> Start() { return Start(Options{}); }

  // "http://127.0.0.1:PORT" (path style) and "http://localhost:PORT"
  // (virtual-hosted: BUCKET.localhost resolves to loopback in libcurl).
  std::string S3Endpoint() const;
  std::string S3VirtualHostEndpoint() const;
  std::string StsEndpoint() const;          // http://127.0.0.1:PORT/
  std::string PodIdentityUri() const;       // http://127.0.0.1:PORT/v1/credentials

  // Requests seen (JSON list: op, part, status, code, access_key, token, ...).
  nlohmann::json Requests() const;
  // {"objects": [{bucket,key,size,sha256,content_type,meta}], "uploads": [...],
  //  "sts_calls": N, "pod_calls": N}
  nlohmann::json State() const;
  // Appends to the fault script, e.g. {{"op","UploadPart"},{"part",3},{"times",2},
  // {"status",500},{"code","InternalError"}}.
  absl::Status AddFault(const nlohmann::json& fault);
  // The stand-in's clock: fixed at `now`, or the real clock again.
  absl::Status SetClock(absl::Time now);
  absl::Status FollowRealClock();
  absl::Status Reset();

 private:
  S3Standin() = default;
  absl::StatusOr<std::string> Control(const std::string& method, const std::string& path,
                                      const std::string& body) const;

  std::optional<Subprocess> process_;
  int s3_port_ = 0, sts_port_ = 0, pod_port_ = 0;
};

// Debian's AWS CLI v2 (/usr/bin/aws), an independent S3 client; "" when it
// is not installed.
std::string DebianAwsCli();

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_S3_STANDIN_H_
