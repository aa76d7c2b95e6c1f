// The credential chain against the stand-in STS and Pod Identity agent
// (tests/testing/s3_standin.py), with the environment as a map and time on a
// SimulatedClock.
#include "server/archive/s3/credentials.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
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

// A credential issuer on loopback that answers from a script, for answers
// the stand-in does not give: odd JSON, STS errors, and never answering.
class ScriptedIssuer {
 public:
  struct Answer {
    int status = 200;
    std::string body;
    bool hang = false;  // read the request, never answer
  };

  ScriptedIssuer() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(fd_, 64);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedIssuer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
    for (int c : hung_) close(c);
  }

  std::string Url(const std::string& path = "/") const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }
  // Answers in order; once they are used up, `fallback` for every request.
  void Then(Answer a) {
    absl::MutexLock l(&mu_);
    script_.push_back(std::move(a));
  }
  void Fallback(Answer a) {
    absl::MutexLock l(&mu_);
    fallback_ = std::move(a);
  }
  int calls() const { return calls_.load(); }

 private:
  void Serve() {
    while (!stop_) {
      const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (stop_) return;
        continue;
      }
      std::string req;
      char buf[4096];
      size_t want = std::string::npos;
      while (req.size() < want) {
        pollfd p{c, POLLIN, 0};
        if (poll(&p, 1, 2000) <= 0) break;
        const ssize_t n = read(c, buf, sizeof(buf));
        if (n <= 0) break;
        req.append(buf, n);
        const size_t end = req.find("\r\n\r\n");
        if (want == std::string::npos && end != std::string::npos) {
          size_t length = 0;
          const size_t cl = req.find("Content-Length: ");
          if (cl != std::string::npos && cl < end) length = std::stoul(req.substr(cl + 16));
          want = end + 4 + length;
        }
      }
      ++calls_;
      Answer a;
      {
        absl::MutexLock l(&mu_);
        if (!script_.empty()) {
          a = script_.front();
          script_.pop_front();
        } else {
          a = fallback_;
        }
      }
      if (a.hang) {
        hung_.push_back(c);
        continue;
      }
      const std::string out =
          absl::StrCat("HTTP/1.1 ", a.status, " X\r\nContent-Length: ", a.body.size(),
                       "\r\nConnection: close\r\n\r\n", a.body);
      (void)!write(c, out.data(), out.size());
      close(c);
    }
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> calls_{0};
  std::vector<int> hung_;  // only the serving thread, then the destructor
  absl::Mutex mu_;
  std::deque<Answer> script_ ABSL_GUARDED_BY(mu_);
  Answer fallback_ ABSL_GUARDED_BY(mu_) = {500, "", false};
  std::thread thread_;
};

std::string Rfc3339(absl::Time t) { return absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone()); }

std::string PodAnswer(const std::string& akid, absl::Time expiry) {
  return absl::StrCat(R"({"AccessKeyId": ")", akid,
                      R"(", "SecretAccessKey": "scripted-secret", "Token": "scripted-token", )",
                      R"("Expiration": ")", Rfc3339(expiry), R"("})");
}

std::string StsAnswer(const std::string& akid, absl::Time expiry) {
  return absl::StrCat(
      "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
      "<AccessKeyId>", akid, "</AccessKeyId><SecretAccessKey>scripted-secret</SecretAccessKey>"
      "<SessionToken>scripted-token</SessionToken><Expiration>", Rfc3339(expiry),
      "</Expiration></Credentials></AssumeRoleWithWebIdentityResult>"
      "</AssumeRoleWithWebIdentityResponse>");
}

// The IRSA variables of a pod: a role, its token file and the STS to ask.
std::map<std::string, std::string> IrsaEnv(const std::string& token_file,
                                           const std::string& sts_url) {
  return {{"AWS_ROLE_ARN", "arn:aws:iam::1:role/r"},
          {"AWS_WEB_IDENTITY_TOKEN_FILE", token_file},
          {"AWS_ENDPOINT_URL_STS", sts_url}};
}

std::string StsError(const std::string& code, const std::string& message = "no") {
  return absl::StrCat("<ErrorResponse><Error><Type>Sender</Type><Code>", code, "</Code><Message>",
                      message, "</Message></Error></ErrorResponse>");
}

// Pod Identity answers of the wrong shape are errors, never a crash
// (nlohmann::json::value() throws on a key of another type).
TEST(Credentials, PodIdentityAnswersOfTheWrongShapeAreUnavailable) {
  SimulatedClock clock;
  const absl::Time later = clock.Now() + absl::Hours(1);
  const std::vector<std::pair<int, std::string>> answers = {
      {200, R"({"AccessKeyId": 12345, "SecretAccessKey": "s", "Expiration": "x"})"},
      {200, absl::StrCat(R"({"AccessKeyId": "A", "SecretAccessKey": "s", "Token": 7, "Expiration": ")",
                         Rfc3339(later), R"("})")},
      {200, R"({"AccessKeyId": "A", "SecretAccessKey": "s", "Expiration": null})"},
      {200, R"({"AccessKeyId": "A", "SecretAccessKey": ["s"], "Expiration": {}})"},
      {200, R"([1, 2, 3])"},
      {200, R"("just a string")"},
      {200, "not json {"},
      {500, R"({"code": 500, "message": {"a": 1}})"},
      {503, R"({"Code": null, "Message": 17})"},
  };
  for (const auto& [status, body] : answers) {
    ScriptedIssuer issuer;
    issuer.Fallback({status, body, false});
    CredentialsOptions o;
    o.clock = &clock;
    o.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", issuer.Url("/v1/credentials")}};
    auto p = CredentialsFromEnvironment(o);
    ASSERT_TRUE(p.ok()) << p.status();
    absl::StatusOr<AwsCredentials> c = (*p)->Get();
    if (status == 200 && absl::StrContains(body, "Token\": 7")) {
      // A token of another type is no token: the key and secret still sign.
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_EQ(c->session_token, "");
      continue;
    }
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << body << " " << c.status();
    if (status == 200) {
      EXPECT_TRUE(absl::StrContains(c.status().message(), "the answer holds no credentials"))
          << c.status();
    }
  }
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

// Waits (real time, bounded) for a background refresh to bring a key other
// than `old`.
absl::StatusOr<AwsCredentials> WaitForNewKey(CredentialsProvider* p, const std::string& old) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<AwsCredentials> c = p->Get();
  while (c.ok() && c->access_key_id == old && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    c = p->Get();
  }
  return c;
}

// Waits (real time, bounded) until calls() reaches `n`, and a moment more
// for the fetch to be handled.
void WaitForCalls(const std::function<int()>& calls, int n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (calls() < n && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(calls(), n);
  absl::SleepFor(absl::Milliseconds(100));
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

  // Within 5 minutes of expiry: the cached ones at once, and new ones
  // (from the token file read again) fetched in the background.
  clock_.Advance(absl::Minutes(2));
  ASSERT_TRUE(standin_->SetClock(clock_.Now()).ok());
  absl::StatusOr<AwsCredentials> second = (*p)->Get();
  ASSERT_TRUE(second.ok()) << second.status();
  second = WaitForNewKey(p->get(), first->access_key_id);
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
  WaitForCalls([&] { return standin_->State()["sts_calls"].get<int>(); }, 3);
  kept = (*p)->Get();
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
  (*p)->Invalidate("ASIA-someone-else");  // not the cached ones: kept
  ASSERT_TRUE((*p)->Get().ok());
  EXPECT_EQ(standin_->State()["pod_calls"], 1);
  (*p)->Invalidate(c->access_key_id);
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
  o.env = IrsaEnv(token_file, "http://127.0.0.1:1/");
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  ExpectNoSecret(std::string(c.status().message()));
}

// The reviewer's scenario: STS answers once, then hangs. Past the refresh
// point the cached credentials come back at once to every caller, one
// background fetch runs, and after it fails no other is tried before the
// backoff (on the injected clock) is over.
TEST(Credentials, HangingStsDoesNotStallGetWhileCachedCredentialsAreValid) {
  SimulatedClock clock;
  ScriptedIssuer sts;
  sts.Then({200, StsAnswer("ASIAFIRST", clock.Now() + absl::Hours(1)), false});
  sts.Fallback({0, "", true});
  const std::string token_file = TempFile("web-identity-hang", "standin-web-identity-token");
  CredentialsOptions o;
  o.clock = &clock;
  o.http_timeout = absl::Seconds(2);
  o.env = IrsaEnv(token_file, sts.Url());
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->Get().ok());
  EXPECT_EQ(sts.calls(), 1);

  clock.Advance(absl::Minutes(56));
  const absl::Time start = absl::Now();
  std::vector<std::thread> callers;
  std::atomic<int> good{0};
  for (int i = 0; i < 3; ++i) {
    callers.emplace_back([&] {
      absl::StatusOr<AwsCredentials> c = (*p)->Get();
      if (c.ok() && c->access_key_id == "ASIAFIRST") ++good;
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(good.load(), 3);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  WaitForCalls([&] { return sts.calls(); }, 2);  // one refresh, hanging

  // While it hangs, and after it times out: the cached ones, at once, and
  // no other request during the backoff.
  for (int i = 0; i < 5; ++i) {
    const absl::Time t = absl::Now();
    absl::StatusOr<AwsCredentials> c = (*p)->Get();
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->access_key_id, "ASIAFIRST");
    EXPECT_LT(absl::Now() - t, absl::Milliseconds(200));
  }
  absl::SleepFor(absl::Milliseconds(2500) - (absl::Now() - start));  // the 2 s timeout passes
  ASSERT_TRUE((*p)->Get().ok());
  clock.Advance(absl::Seconds(4));
  ASSERT_TRUE((*p)->Get().ok());
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(sts.calls(), 2);
  clock.Advance(absl::Seconds(1));  // the first backoff (5 s) is over
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "ASIAFIRST");
  WaitForCalls([&] { return sts.calls(); }, 3);
  // Going away cancels the fetch in flight rather than waiting it out.
  const absl::Time gone = absl::Now();
  p->reset();
  EXPECT_LT(absl::Now() - gone, absl::Milliseconds(1900));
}

// Nothing cached and the issuer failing: one fetch per backoff period,
// concurrent callers share it, the others get the last error at once.
TEST(Credentials, FailingIssuerIsAskedOncePerBackoff) {
  SimulatedClock clock;
  ScriptedIssuer pod;
  pod.Fallback({503, R"({"code": "Unavailable", "message": "try later"})", false});
  CredentialsOptions o;
  o.clock = &clock;
  o.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", pod.Url("/v1/credentials")}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*p)->Get().status().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(pod.calls(), 1);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ((*p)->Get().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(pod.calls(), 2);
  clock.Advance(absl::Seconds(5));  // now 10 s
  EXPECT_EQ((*p)->Get().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(pod.calls(), 2);
  clock.Advance(absl::Seconds(5));
  pod.Then({200, PodAnswer("ASIAPOD", clock.Now() + absl::Hours(1)), false});
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "ASIAPOD");
  EXPECT_EQ(pod.calls(), 3);
}

// STS's throttling and IdP trouble come as 400: retried (UNAVAILABLE), not
// a refusal.
TEST(Credentials, StsThrottlingIsUnavailable) {
  const std::string token_file = TempFile("web-identity-throttle", "standin-web-identity-token");
  for (const std::string code : {"Throttling", "ThrottlingException", "RequestLimitExceeded",
                                 "IDPCommunicationError", "ServiceUnavailable", "AccessDenied"}) {
    SimulatedClock clock;
    ScriptedIssuer sts;
    sts.Fallback({400, StsError(code), false});
    CredentialsOptions o;
    o.clock = &clock;
    o.env = IrsaEnv(token_file, sts.Url());
    auto p = CredentialsFromEnvironment(o);
    ASSERT_TRUE(p.ok()) << p.status();
    absl::StatusOr<AwsCredentials> c = (*p)->Get();
    EXPECT_EQ(c.status().code(), code == "AccessDenied" ? absl::StatusCode::kPermissionDenied
                                                         : absl::StatusCode::kUnavailable)
        << code << " " << c.status();
    EXPECT_TRUE(absl::StrContains(c.status().message(), code)) << c.status();
  }
}

// A proxy in the environment is not used: the Pod Identity token and the
// answer go straight to the agent.
TEST(Credentials, ProxyFromTheEnvironmentIsNotUsed) {
  SimulatedClock clock;
  ScriptedIssuer pod, proxy;
  pod.Fallback({200, PodAnswer("ASIADIRECT", clock.Now() + absl::Hours(1)), false});
  proxy.Fallback({200, PodAnswer("ASIAPROXY", clock.Now() + absl::Hours(1)), false});
  const std::vector<std::string> vars = {"http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"};
  for (const std::string& v : vars) setenv(v.c_str(), proxy.Url().c_str(), 1);
  unsetenv("NO_PROXY");
  unsetenv("no_proxy");
  CredentialsOptions o;
  o.clock = &clock;
  o.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", pod.Url("/v1/credentials")},
           {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "standin-pod-identity-token"}};
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  for (const std::string& v : vars) unsetenv(v.c_str());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "ASIADIRECT");
  EXPECT_EQ(pod.calls(), 1);
  EXPECT_EQ(proxy.calls(), 0);
}

// An issuer's error code goes into errors bounded, printable and without
// the secret the caller sent.
TEST(Credentials, IssuerErrorCodeIsBoundedAndRedacted) {
  const std::string token_file = TempFile("web-identity-code", "standin-web-identity-token");
  const std::string code = absl::StrCat("InvalidIdentityToken", "standin-web-identity-token",
                                        std::string(10000, 'x'), "\r\nInjected: yes");
  SimulatedClock clock;
  ScriptedIssuer sts;
  sts.Fallback({403, StsError(code), false});
  CredentialsOptions o;
  o.clock = &clock;
  o.env = IrsaEnv(token_file, sts.Url());
  auto p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<AwsCredentials> c = (*p)->Get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kPermissionDenied);
  const std::string m(c.status().message());
  EXPECT_TRUE(absl::StrContains(m, "InvalidIdentityToken")) << m;
  EXPECT_FALSE(absl::StrContains(m, "standinwebidentitytoken")) << m;
  EXPECT_FALSE(absl::StrContains(m, "Injected")) << m;
  EXPECT_FALSE(absl::StrContains(m, "\n")) << m;
  EXPECT_LT(m.size(), 400u) << m;
  ExpectNoSecret(m);

  ScriptedIssuer pod;
  pod.Fallback({403, absl::StrCat(R"({"code": ")", code, R"(", "message": "no"})"), false});
  o.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", pod.Url("/v1/credentials")},
           {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "standin-web-identity-token"}};
  p = CredentialsFromEnvironment(o);
  ASSERT_TRUE(p.ok()) << p.status();
  c = (*p)->Get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kPermissionDenied);
  const std::string m2(c.status().message());
  EXPECT_FALSE(absl::StrContains(m2, "standinwebidentitytoken")) << m2;
  EXPECT_LT(m2.size(), 400u) << m2;
}

// A user name or password in an issuer's URL is refused, never printed
// (Describe() is logged at start).
TEST(Credentials, UserinfoInIssuerUrlsIsRefusedUnshown) {
  CredentialsOptions o;
  for (const std::string url :
       {"https://user:hunter2pw@sts.example.com/", "https://hunter2pw@sts.example.com/",
        "http://user:hunter2pw@127.0.0.1:9/", "https://user:hunter2pw@bad host/"}) {
    o.env = IrsaEnv("/var/run/secrets/token", url);
    auto p = CredentialsFromEnvironment(o);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << url;
    EXPECT_FALSE(absl::StrContains(p.status().message(), "hunter2pw")) << p.status();
    o.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", url}};
    p = CredentialsFromEnvironment(o);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << url;
    EXPECT_FALSE(absl::StrContains(p.status().message(), "hunter2pw")) << p.status();
  }
}

}  // namespace
}  // namespace videotask::s3
