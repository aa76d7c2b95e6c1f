// AWS credentials for the S3 client, found the way AWS SDKs find them in a
// Kubernetes pod, first configured source wins:
//   1. static keys: the files given in CredentialsOptions (a mounted
//      Secret; re-read at every Get, so a rotated Secret is used at once),
//      else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN;
//   2. IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE -> STS
//      AssumeRoleWithWebIdentity at AWS_ENDPOINT_URL_STS, else
//      https://sts.REGION.amazonaws.com (AWS_REGION, else the options'
//      region); the token file is re-read at each call (the kubelet rotates it);
//   3. EKS Pod Identity (and ECS): AWS_CONTAINER_CREDENTIALS_FULL_URI with
//      the Authorization header from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
//      (re-read each call) or AWS_CONTAINER_AUTHORIZATION_TOKEN.
// A configured source that fails is an error; there is no silent fall back
// to another identity (as in the SDKs, where the chain stops at the first
// provider that is configured).
//
// Guarantees: temporary credentials (2, 3) are cached and fetched again
// before they expire (`refresh_before` ahead, or half their lifetime if that
// is shorter), measured on the injected clock's monotonic time; a failed
// refresh keeps the old credentials while they are still valid, and past the
// refresh point Get returns them at once while one background fetch runs;
// after a failed fetch the next waits 5 s, doubling to 60 s. Plain http
// only to loopback (and, for 3, to the EKS/ECS agent addresses that the AWS
// SDKs allow). No secret (secret key, session token, web identity or
// authorization token) ever appears in an error message or in Describe().
// Thread-safe; only when nothing valid is cached does Get wait for a fetch
// (at most one HTTP timeout; concurrent callers share that one fetch).
#ifndef VIDEOTASK_SERVER_ARCHIVE_S3_CREDENTIALS_H_
#define VIDEOTASK_SERVER_ARCHIVE_S3_CREDENTIALS_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/archive/s3/sigv4.h"
#include "server/base/clock.h"

namespace videotask::s3 {

class CredentialsProvider {
 public:
  virtual ~CredentialsProvider() = default;
  // Credentials to sign with now. Errors: INVALID_ARGUMENT (misconfigured:
  // a key without its secret, an http:// endpoint), FAILED_PRECONDITION (a
  // file missing or empty), PERMISSION_DENIED / UNAUTHENTICATED (the
  // provider refused), UNAVAILABLE (could not reach it: retry later).
  virtual absl::StatusOr<AwsCredentials> Get() = 0;
  // The credentials with this access key id were refused as expired: if
  // they are still the cached ones, fetch anew at the next Get (newer ones
  // fetched meanwhile are kept). No-op for static keys.
  virtual void Invalidate(const std::string& refused_access_key_id) {}
  // Where the credentials come from, for logs ("environment",
  // "IRSA role arn:aws:iam::1:role/x"); never a secret.
  virtual std::string Describe() const = 0;
};

struct CredentialsOptions {
  // The environment, name -> value: the sidecar passes ProcessEnvironment(),
  // tests a map of their own.
  std::map<std::string, std::string> env;
  // Static keys from files (a mounted Secret); the access key id and secret
  // must be given together; the session token file is optional.
  std::string access_key_id_file;
  std::string secret_access_key_file;
  std::string session_token_file;
  // For the regional STS endpoint when AWS_REGION is not set.
  std::string region = "us-east-1";
  absl::Duration refresh_before = absl::Minutes(5);
  absl::Duration http_timeout = absl::Seconds(10);
  std::string ca_file;  // empty: the system's
  Clock* clock = nullptr;  // null: RealClock
};

// The provider for the first configured source above; NOT_FOUND when none
// is, INVALID_ARGUMENT when one is configured badly.
absl::StatusOr<std::unique_ptr<CredentialsProvider>> CredentialsFromEnvironment(
    CredentialsOptions options);

// This process's environment as a map.
std::map<std::string, std::string> ProcessEnvironment();

}  // namespace videotask::s3

#endif  // VIDEOTASK_SERVER_ARCHIVE_S3_CREDENTIALS_H_
