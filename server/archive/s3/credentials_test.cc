// The credential chain against the stand-in STS and Pod Identity agent
// (tests/testing/s3_standin.py), with the environment as a map and time on a
// SimulatedClock.
#include "server/archive/s3/credentials.h"

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/s3_standin.h"

namespace videotask::s3 {
namespace {

using ::videotask::testing::S3Standin;

std::string TempFile(const std::string& name, const std::string& content) {
  const std::string path = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  std::ofstream(path, std::ios::trunc) << content;
  return path;
}

// Every secret a test hands out, to check that no message carries one.
const std::vector<std::string> kSecrets = {
    "env-secret-key", "env-session-token", "file-secret-key", "standin-web-identity-token",
    "standin-pod-identity-token", "wrong-web-identity-token", "wrong-pod-token"};

void ExpectNoSecret(const std::string& text) {
  for (const std::string& s : kSecrets) EXPECT_FALSE(absl::StrContains(text, s)) << text;
}

TEST(Credentials, EnvironmentKeys) {
  CredentialsOptions o;
  o.env = {{"AWS_ACCESS_KEY_ID", "AKIAENV"},
           {"AWS_SECRET_ACCESS_KEY", "env-secret-key"},
           {"AWS_SESSION_TOKEN", "env-session-token"},
           {"AWS_ROLE_ARN", "arn:aws:iam::1:role/ignored"},
           {"AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent"}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->access_key_id, "AKIAENV");
  EXPECT_EQ(c->secret_access_key, "env-secret-key");
  EXPECT_EQ(c->session_token, "env-session-token");
  ExpectNoSecret((*p)->Describe());

  o.env = {{"AWS_ACCESS_KEY_ID", "AKIAENV"}};
  p = CredentialsFromEnvironment(o);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  o.env = {};
  p = CredentialsFromEnvironment(o);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
}

TEST(Credentials, KeyFilesWinAndAreReadAgainWhenTheSecretRotates) {
  CredentialsOptions o;
  o.env = {{"AWS_ACCESS_KEY_ID", "AKIAENV"}, {"AWS_SECRET_ACCESS_KEY", "env-secret-key"}};
  o.access_key_id_file = TempFile("id", "AKIAFILE\n");
  o.secret_access_key_file = TempFile("secret", "  file-secret-key\n");
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "AKIAFILE");
  EXPECT_EQ(c->secret_access_key, "file-secret-key");
  EXPECT_EQ(c->session_token, "");
  TempFile("secret", "file-secret-key-2");
  c = (*p)->Get();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->secret_access_key, "file-secret-key-2");
  // Gone (a Secret being swapped): a clear error naming the file only.
  std::remove(o.secret_access_key_file.c_str());
  c = (*p)->Get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(c.status().message(), o.secret_access_key_file));
  ExpectNoSecret(std::string(c.status().message()));

  o.secret_access_key_file.clear();
  EXPECT_EQ(CredentialsFromEnvironment(o).status().code(), absl::StatusCode::kInvalidArgument);
}

class StandinCredentials : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<S3Standin>> s = S3Standin::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    standin_ = *std::move(s);
    ASSERT_TRUE(standin_->SetClock(clock_.Now()).ok());
  }
  SimulatedClock clock_;
  std::unique_ptr<S3Standin> standin_;
};

TEST_F(StandinCredentials, IrsaFetchesCachesAndRefreshesBeforeExpiry) {
  const std::string token_file = TempFile("web-identity", "standin-web-identity-token\n");
  CredentialsOptions o;
  o.clock = &clock_;
  o.env = {{"AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/videotask"},
           {"AWS_WEB_IDENTITY_TOKEN_FILE", token_file},
           {"AWS_ENDPOINT_URL_STS", standin_->StsEndpoint()},
           {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/ignored"}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(absl::StrContains((*p)->Describe(), "IRSA role arn:aws:iam::123456789012"));
  absl::StatusOr<AwsCredentials> first = (*p)->Get();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(absl::StartsWith(first->access_key_id, "ASIA"));
  EXPECT_FALSE(first->session_token.empty());
  EXPECT_EQ(standin_->State()["sts_calls"], 1);

  // Cached while more than 5 minutes are left of the hour.
  clock_.Advance(absl::Minutes(54));
  ASSERT_TRUE(standin_->SetClock(clock_.Now()).ok());
  absl::StatusOr<AwsCredentials> same = (*p)->Get();
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->access_key_id, first->access_key_id);
  EXPECT_EQ(standin_->State()["sts_calls"], 1);

  // Within 5 minutes of expiry: new ones, from the token file read again.
  clock_.Advance(absl::Minutes(2));
  ASSERT_TRUE(standin_->SetClock(clock_.Now()).ok());
  absl::StatusOr<AwsCredentials> second = (*p)->Get();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE(second->access_key_id, first->access_key_id);
  EXPECT_EQ(standin_->State()["sts_calls"], 2);

  // A refresh that fails (the token is refused) keeps valid credentials...
  TempFile("web-identity", "wrong-web-identity-token");
  clock_.Advance(absl::Minutes(56));
  ASSERT_TRUE(standin_->SetClock(clock_.Now()).ok());
  absl::StatusOr<AwsCredentials> kept = (*p)->Get();
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->access_key_id, second->access_key_id);
  // ...and gives the refusal once they are no longer valid.
  clock_.Advance(absl::Minutes(4));
  ASSERT_TRUE(standin_->SetClock(clock_.Now()).ok());
  absl::StatusOr<AwsCredentials> refused = (*p)->Get();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "InvalidIdentityToken"))
      << refused.status();
  ExpectNoSecret(std::string(refused.status().message()));
}

TEST_F(StandinCredentials, IrsaEndpointRules) {
  CredentialsOptions o;
  o.region = "eu-west-1";
  o.env = {{"AWS_ROLE_ARN", "arn:aws:iam::1:role/r"},
           {"AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(absl::StrContains((*p)->Describe(), "https://sts.eu-west-1.amazonaws.com/"));
  o.env["AWS_REGION"] = "ap-south-1";
  p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(absl::StrContains((*p)->Describe(), "https://sts.ap-south-1.amazonaws.com/"));
  o.env["AWS_ENDPOINT_URL_STS"] = "http://sts.example.com/";
  EXPECT_EQ(CredentialsFromEnvironment(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.env.erase("AWS_WEB_IDENTITY_TOKEN_FILE");
  EXPECT_EQ(CredentialsFromEnvironment(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StandinCredentials, PodIdentity) {
  const std::string token_file = TempFile("pod-token", "standin-pod-identity-token");
  CredentialsOptions o;
  o.clock = &clock_;
  o.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", standin_->PodIdentityUri()},
           {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(absl::StartsWith(c->access_key_id, "ASIA"));
  EXPECT_FALSE(c->session_token.empty());
  ASSERT_TRUE((*p)->Get().ok());
  EXPECT_EQ(standin_->State()["pod_calls"], 1);  // cached

  // A rotated token file is read again; a wrong token is refused, unnamed.
  TempFile("pod-token", "wrong-pod-token");
  (*p)->Invalidate();
  c = (*p)->Get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnauthenticated) << c.status();
  ExpectNoSecret(std::string(c.status().message()));

  // The EKS agent's link-local address is allowed over http, as the SDKs do;
  // another plain-http host is not.
  o.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://169.254.170.23/v1/credentials";
  EXPECT_TRUE(CredentialsFromEnvironment(o).ok());
  o.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://[fd00:ec2::23]/v1/credentials";
  EXPECT_TRUE(CredentialsFromEnvironment(o).ok());
  o.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://10.0.0.1/v1/credentials";
  EXPECT_EQ(CredentialsFromEnvironment(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StandinCredentials, UnreachableStsIsUnavailable) {
  const std::string token_file = TempFile("web-identity-2", "standin-web-identity-token");
  CredentialsOptions o;
  o.clock = &clock_;
  o.http_timeout = absl::Seconds(2);
  o.env = {{"AWS_ROLE_ARN", "arn:aws:iam::1:role/r"},
           {"AWS_WEB_IDENTITY_TOKEN_FILE", token_file},
           {"AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1/"}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  ExpectNoSecret(std::string(c.status().message()));
}

}  // namespace
}  // namespace videotask::s3
