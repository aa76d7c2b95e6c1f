#include "server/archive/s3/credentials.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "server/archive/s3/http_call.h"
#include "server/base/secret_file.h"

extern char** environ;

namespace videotask::s3 {
namespace {

// The EKS Pod Identity agent's and ECS's credential endpoints, reached over
// plain http on the node's link-local addresses: the AWS SDKs allow exactly
// these besides loopback (AWS SDK for JavaScript v3,
// credential-provider-http checkUrl; botocore ContainerMetadataFetcher).
const std::vector<std::string>& ContainerAgentHosts() {
  static const auto* hosts =
      new std::vector<std::string>{"169.254.170.2", "169.254.170.23", "[fd00:ec2::23]"};
  return *hosts;
}

std::string Env(const std::map<std::string, std::string>& env, const std::string& name) {
  auto it = env.find(name);
  return it == env.end() ? "" : it->second;
}

// A secret file's content without surrounding whitespace (ReadSecretFile's
// rules). The message names the file and the error, never the content.
absl::StatusOr<std::string> SecretFromFile(const std::string& path, absl::string_view what) {
  const std::string file = absl::StrCat("the ", what, " file ", path);
  absl::StatusOr<std::string> data = ReadSecretFile(path, file);
  if (!data.ok()) return data.status();
  std::string out(absl::StripAsciiWhitespace(*data));
  std::fill(data->begin(), data->end(), '\0');
  if (out.empty()) return absl::FailedPreconditionError(absl::StrCat(file, " is empty"));
  return out;
}

// 1. Static keys, from files (re-read at each Get) or from the environment.
class StaticProvider : public CredentialsProvider {
 public:
  StaticProvider(std::string id_file, std::string secret_file, std::string token_file)
      : files_(true),
        id_file_(std::move(id_file)),
        secret_file_(std::move(secret_file)),
        token_file_(std::move(token_file)) {}
  explicit StaticProvider(AwsCredentials env) : files_(false), env_(std::move(env)) {}

  absl::StatusOr<AwsCredentials> Get() override {
    if (!files_) return env_;
    AwsCredentials c;
    absl::StatusOr<std::string> id = SecretFromFile(id_file_, "access key id");
    if (!id.ok()) return id.status();
    absl::StatusOr<std::string> secret = SecretFromFile(secret_file_, "secret access key");
    if (!secret.ok()) return secret.status();
    c.access_key_id = *std::move(id);
    c.secret_access_key = *std::move(secret);
    if (!token_file_.empty()) {
      absl::StatusOr<std::string> token = SecretFromFile(token_file_, "session token");
      if (!token.ok()) return token.status();
      c.session_token = *std::move(token);
    }
    return c;
  }
  std::string Describe() const override {
    return files_ ? absl::StrCat("key files ", id_file_, ", ", secret_file_)
                  : "environment (AWS_ACCESS_KEY_ID)";
  }

 private:
  const bool files_;
  const std::string id_file_, secret_file_, token_file_;
  const AwsCredentials env_;
};

// Where temporary credentials come from: STS, the container agent.
class Issuer {
 public:
  explicit Issuer(const CredentialsOptions& o) : timeout_(o.http_timeout), ca_file_(o.ca_file) {}
  virtual ~Issuer() = default;
  // New credentials and their expiration (wall time).
  virtual absl::StatusOr<AwsCredentials> Fetch(absl::Time* expiration) = 0;
  virtual std::string Describe() const = 0;
  // Set once, before the first Fetch: true once the provider is going away.
  void set_cancelled(std::function<bool()> cancelled) { cancelled_ = std::move(cancelled); }

 protected:
  // `request` to the credential issuer `who`, with the options' timeout and
  // CA file; a transport failure is UNAVAILABLE.
  absl::StatusOr<HttpResponse> CallIssuer(HttpRequest request, const std::string& who) const {
    request.timeout = timeout_;
    request.connect_timeout = std::min(timeout_, absl::Seconds(10));
    request.ca_file = ca_file_;
    request.cancelled = cancelled_;
    HttpSession session;
    absl::StatusOr<HttpResponse> resp = session.Call(request);
    if (!resp.ok()) return absl::UnavailableError(absl::StrCat(who, ": ", resp.status().message()));
    return resp;
  }

 private:
  const absl::Duration timeout_;
  const std::string ca_file_;
  std::function<bool()> cancelled_;
};

// Temporary credentials, cached until shortly before they expire. Past the
// refresh point, while the cached ones are still valid, Get returns them at
// once and one background fetch runs; only when nothing valid is cached does
// a caller wait for a fetch (one fetch at a time, the others wait for its
// result). After a failed fetch no other is tried for a backoff (5 s doubling
// to 60 s, on the injected clock); meanwhile Get gives the cached
// credentials while valid, else the last error.
class RefreshingProvider final : public CredentialsProvider {
 public:
  RefreshingProvider(const CredentialsOptions& o, std::unique_ptr<Issuer> issuer)
      : clock_(o.clock != nullptr ? o.clock : RealClock::Get()),
        refresh_before_(o.refresh_before),
        issuer_(std::move(issuer)) {
    issuer_->set_cancelled([this] { return stopping_.load(); });
  }
  ~RefreshingProvider() override {
    stopping_ = true;  // cancels a fetch in flight
    std::thread refresher;
    {
      absl::MutexLock lock(&mu_);
      refresher = std::move(refresher_);
    }
    if (refresher.joinable()) refresher.join();
  }

  std::string Describe() const override { return issuer_->Describe(); }

  absl::StatusOr<AwsCredentials> Get() override {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Monotonic();
    if (cached_.has_value() && now < refresh_at_) return *cached_;
    const bool valid = Valid(now);
    if (fetching_) {
      if (valid) return *cached_;
      mu_.Await(absl::Condition(
          +[](bool* fetching) { return !*fetching; }, &fetching_));
      return Current();
    }
    if (now < retry_at_) {  // backing off after a failed fetch
      if (valid) return *cached_;
      return last_error_;
    }
    fetching_ = true;
    if (valid) {
      // Sign with these while new ones are fetched in the background.
      if (refresher_.joinable()) refresher_.join();  // done: fetching_ was false
      refresher_ = std::thread([this] { Refresh(); });
      return *cached_;
    }
    mu_.Unlock();
    Refresh();
    mu_.Lock();
    return Current();
  }

  void Invalidate(const std::string& refused_access_key_id) override {
    absl::MutexLock lock(&mu_);
    if (cached_.has_value() && cached_->access_key_id == refused_access_key_id) cached_.reset();
  }

 private:
  static constexpr absl::Duration kFirstBackoff = absl::Seconds(5);
  static constexpr absl::Duration kMaxBackoff = absl::Seconds(60);

  // Still good to sign with, with a minute to spare.
  bool Valid(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cached_.has_value() && now + absl::Minutes(1) < expires_at_;
  }

  // After a fetch: the new credentials, else the cached ones while still
  // valid, else the fetch's error.
  absl::StatusOr<AwsCredentials> Current() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cached_.has_value() && (last_error_.ok() || Valid(clock_->Monotonic()))) return *cached_;
    if (!last_error_.ok()) return last_error_;
    return absl::UnavailableError(absl::StrCat(Describe(), ": no credentials yet"));
  }

  // One fetch, mu_ not held, fetching_ set by the caller; clears it.
  void Refresh() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::Time wall_expiry;
    absl::StatusOr<AwsCredentials> fresh = issuer_->Fetch(&wall_expiry);
    absl::MutexLock lock(&mu_);
    fetching_ = false;
    const absl::Time now = clock_->Monotonic();
    absl::Status error;
    if (fresh.ok()) {
      // The expiration is wall time from the issuer; from here on it is
      // measured on the monotonic clock.
      const absl::Duration lifetime = wall_expiry - clock_->Now();
      if (lifetime > absl::ZeroDuration()) {
        expires_at_ = now + lifetime;
        refresh_at_ = expires_at_ - std::min(refresh_before_, lifetime / 2);
        cached_ = *std::move(fresh);
        last_error_ = absl::OkStatus();
        backoff_ = absl::ZeroDuration();
        retry_at_ = absl::InfinitePast();
        return;
      }
      error = absl::FailedPreconditionError(absl::StrCat(
          Describe(), " gave credentials that expire at ",
          absl::FormatTime(absl::RFC3339_sec, wall_expiry, absl::UTCTimeZone()),
          ", already past by this machine's clock"));
    } else {
      error = fresh.status();
    }
    last_error_ = error;
    backoff_ = backoff_ == absl::ZeroDuration() ? kFirstBackoff : std::min(2 * backoff_, kMaxBackoff);
    retry_at_ = now + backoff_;
    if (!Valid(now)) cached_.reset();
  }

  Clock* const clock_;
  const absl::Duration refresh_before_;
  const std::unique_ptr<Issuer> issuer_;
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  std::optional<AwsCredentials> cached_ ABSL_GUARDED_BY(mu_);
  absl::Time refresh_at_ ABSL_GUARDED_BY(mu_);
  absl::Time expires_at_ ABSL_GUARDED_BY(mu_);
  bool fetching_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  absl::Time retry_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::thread refresher_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<absl::Time> ParseExpiration(absl::string_view text, absl::string_view who) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, " answered an unreadable Expiration: ", Excerpt(text, 40)));
  }
  return t;
}

// An answer's status as an error of the provider's, the body's text (with
// any secret the caller holds redacted).
absl::Status HttpError(absl::string_view who, long status, const std::string& code,
                       const std::string& message) {
  const std::string text = absl::StrCat(who, ": HTTP ", status, code.empty() ? "" : " ", code,
                                        message.empty() ? "" : ": ", Excerpt(message));
  // STS answers throttling and its own trouble reaching the identity
  // provider with 400 and these codes: retried like 5xx (as the AWS SDKs do).
  const bool transient_code = code == "Throttling" || code == "ThrottlingException" ||
                              code == "RequestLimitExceeded" ||
                              code == "IDPCommunicationError" || code == "ServiceUnavailable";
  if (status >= 500 || status == 429 || status == 408 || transient_code) {
    return absl::UnavailableError(text);
  }
  if (status == 401) return absl::UnauthenticatedError(text);
  return absl::PermissionDeniedError(text);
}

// `j[key]` when it is a string, else "" (a missing key, or one of another
// type: an issuer's answer is not trusted to have the documented shape, and
// nlohmann::json::value() would throw on a wrong type).
std::string JsonString(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// 2. IRSA: STS AssumeRoleWithWebIdentity.
class WebIdentityIssuer : public Issuer {
 public:
  WebIdentityIssuer(const CredentialsOptions& o, std::string endpoint, std::string role_arn,
                    std::string token_file, std::string session_name)
      : Issuer(o),
        endpoint_(std::move(endpoint)),
        role_arn_(std::move(role_arn)),
        token_file_(std::move(token_file)),
        session_name_(std::move(session_name)) {}

  std::string Describe() const override {
    return absl::StrCat("IRSA role ", role_arn_, " via ", endpoint_);
  }

 public:
  absl::StatusOr<AwsCredentials> Fetch(absl::Time* expiration) override {
    absl::StatusOr<std::string> token = SecretFromFile(token_file_, "web identity token");
    if (!token.ok()) return token.status();
    const std::string body = absl::StrCat(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=",
        UriEncode(role_arn_, false), "&RoleSessionName=", UriEncode(session_name_, false),
        "&WebIdentityToken=", UriEncode(*token, false));
    HttpRequest req;
    req.method = "POST";
    req.url = endpoint_;
    req.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
                   {"Accept", "application/xml"}};
    req.body = body;
    const std::string who = absl::StrCat("STS AssumeRoleWithWebIdentity at ", endpoint_);
    absl::StatusOr<HttpResponse> resp = CallIssuer(std::move(req), who);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) {
      return HttpError(who, resp->status, ErrorCode(Redact(XmlText(resp->body, "Code"), {*token})),
                       Redact(XmlText(resp->body, "Message"), {*token}));
    }
    AwsCredentials c;
    c.access_key_id = XmlText(resp->body, "AccessKeyId");
    c.secret_access_key = XmlText(resp->body, "SecretAccessKey");
    c.session_token = XmlText(resp->body, "SessionToken");
    if (c.access_key_id.empty() || c.secret_access_key.empty() || c.session_token.empty()) {
      return absl::UnavailableError(absl::StrCat(who, ": the answer holds no credentials"));
    }
    absl::StatusOr<absl::Time> t = ParseExpiration(XmlText(resp->body, "Expiration"), who);
    if (!t.ok()) return t.status();
    *expiration = *t;
    return c;
  }

 private:
  const std::string endpoint_, role_arn_, token_file_, session_name_;
};

// 3. EKS Pod Identity / ECS container credentials.
class ContainerIssuer : public Issuer {
 public:
  ContainerIssuer(const CredentialsOptions& o, std::string uri, std::string token_file,
                  std::string token)
      : Issuer(o),
        uri_(std::move(uri)),
        token_file_(std::move(token_file)),
        token_(std::move(token)) {}

  std::string Describe() const override {
    return absl::StrCat("container credentials at ", uri_);
  }

 public:
  absl::StatusOr<AwsCredentials> Fetch(absl::Time* expiration) override {
    std::string token = token_;
    if (!token_file_.empty()) {
      absl::StatusOr<std::string> t = SecretFromFile(token_file_, "container authorization token");
      if (!t.ok()) return t.status();
      token = *std::move(t);
    }
    HttpRequest req;
    req.url = uri_;
    req.headers = {{"Accept", "application/json"}};
    if (!token.empty()) req.headers.emplace_back("Authorization", token);
    const std::string who = absl::StrCat("container credentials at ", uri_);
    absl::StatusOr<HttpResponse> resp = CallIssuer(std::move(req), who);
    if (!resp.ok()) return resp.status();
    nlohmann::json j = nlohmann::json::parse(resp->body, nullptr, /*allow_exceptions=*/false);
    if (resp->status != 200) {
      std::string code, message;
      code = JsonString(j, "code");
      if (code.empty()) code = JsonString(j, "Code");
      message = JsonString(j, "message");
      if (message.empty()) message = JsonString(j, "Message");
      return HttpError(who, resp->status, ErrorCode(Redact(code, {token})),
                       Redact(message, {token}));
    }
    AwsCredentials c;
    c.access_key_id = JsonString(j, "AccessKeyId");
    c.secret_access_key = JsonString(j, "SecretAccessKey");
    c.session_token = JsonString(j, "Token");
    const std::string expires = JsonString(j, "Expiration");
    if (c.access_key_id.empty() || c.secret_access_key.empty() || expires.empty()) {
      return absl::UnavailableError(absl::StrCat(who, ": the answer holds no credentials"));
    }
    absl::StatusOr<absl::Time> t = ParseExpiration(expires, who);
    if (!t.ok()) return t.status();
    *expiration = *t;
    return c;
  }

 private:
  const std::string uri_, token_file_, token_;
};

}  // namespace

std::map<std::string, std::string> ProcessEnvironment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const absl::string_view kv = *e;
    const size_t eq = kv.find('=');
    if (eq != absl::string_view::npos) env.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return env;
}

absl::StatusOr<std::unique_ptr<CredentialsProvider>> CredentialsFromEnvironment(
    CredentialsOptions o) {
  const auto& env = o.env;
  // 1. Static keys: files first (given explicitly), then the environment.
  if (!o.access_key_id_file.empty() || !o.secret_access_key_file.empty()) {
    if (o.access_key_id_file.empty() || o.secret_access_key_file.empty()) {
      return absl::InvalidArgumentError(
          "the access key id file and the secret access key file go together");
    }
    return std::make_unique<StaticProvider>(o.access_key_id_file, o.secret_access_key_file,
                                            o.session_token_file);
  }
  const std::string id = Env(env, "AWS_ACCESS_KEY_ID");
  const std::string secret = Env(env, "AWS_SECRET_ACCESS_KEY");
  if (!id.empty() || !secret.empty()) {
    if (id.empty() || secret.empty()) {
      return absl::InvalidArgumentError(
          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together");
    }
    return std::make_unique<StaticProvider>(
        AwsCredentials{id, secret, Env(env, "AWS_SESSION_TOKEN")});
  }
  // 2. IRSA.
  const std::string role = Env(env, "AWS_ROLE_ARN");
  const std::string token_file = Env(env, "AWS_WEB_IDENTITY_TOKEN_FILE");
  if (!role.empty() || !token_file.empty()) {
    if (role.empty() || token_file.empty()) {
      return absl::InvalidArgumentError(
          "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE must be set together (IRSA)");
    }
    std::string region = Env(env, "AWS_REGION");
    if (region.empty()) region = Env(env, "AWS_DEFAULT_REGION");
    if (region.empty()) region = o.region;
    std::string endpoint = Env(env, "AWS_ENDPOINT_URL_STS");
    if (endpoint.empty()) {
      endpoint = absl::StrCat("https://sts.", region, ".amazonaws.com",
                              absl::StartsWith(region, "cn-") ? ".cn" : "", "/");
    }
    if (absl::Status s = CheckTransport(endpoint, "AWS_ENDPOINT_URL_STS"); !s.ok()) return s;
    std::string session = Env(env, "AWS_ROLE_SESSION_NAME");
    if (session.empty()) {
      Clock* clock = o.clock != nullptr ? o.clock : RealClock::Get();
      session = absl::StrCat("videotask-", absl::ToUnixSeconds(clock->Now()));
    }
    return std::make_unique<RefreshingProvider>(
        o, std::make_unique<WebIdentityIssuer>(o, endpoint, role, token_file, session));
  }
  // 3. EKS Pod Identity / ECS.
  const std::string uri = Env(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
  if (!uri.empty()) {
    if (absl::Status s = CheckTransport(uri, "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                                        ContainerAgentHosts());
        !s.ok()) {
      return s;
    }
    return std::make_unique<RefreshingProvider>(
        o, std::make_unique<ContainerIssuer>(o, uri,
                                             Env(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
                                             Env(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN")));
  }
  return absl::NotFoundError(
      "no AWS credentials configured: set key files, AWS_ACCESS_KEY_ID and "
      "AWS_SECRET_ACCESS_KEY, IRSA (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE) or "
      "Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI)");
}

}  // namespace videotask::s3
