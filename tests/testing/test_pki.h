// TestPki: a throw-away certificate authority for TLS tests, made at test
// time with the `openssl` command line tool (looked up on PATH, then
// /usr/bin) in a directory of the caller's: a test CA, a second unrelated
// CA, a server certificate for "localhost" and 127.0.0.1 signed by the test
// CA, the same server key with a certificate that expired in 2020, and a
// client certificate. Keys are unencrypted EC P-256 PEM. Errors: the
// openssl command's stderr as FAILED_PRECONDITION.
#ifndef VIDEOTASK_TESTS_TESTING_TEST_PKI_H_
#define VIDEOTASK_TESTS_TESTING_TEST_PKI_H_

#include <string>

#include "absl/status/statusor.h"

namespace videotask::testing {

struct TestPki {
  std::string dir;
  std::string ca_pem, ca_key;              // the test CA
  std::string other_ca_pem;                // a CA that signed nothing here
  std::string server_pem, server_key;      // CN/SAN localhost, IP 127.0.0.1
  std::string expired_server_pem;          // same key, valid 2020-01-01..02
  std::string client_pem, client_key;      // signed by the test CA
  std::string other_client_pem, other_client_key;  // signed by other CA

  static absl::StatusOr<TestPki> Create(const std::string& dir);
};

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_TEST_PKI_H_
