#include "tests/testing/s3_standin.h"

#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "httplib.h"

namespace videotask::testing {

absl::StatusOr<std::unique_ptr<S3Standin>> S3Standin::Start(Options o) {
  constexpr char kPython[] = "/usr/bin/python3";
  if (access(kPython, X_OK) != 0) {
    return absl::FailedPreconditionError("/usr/bin/python3 is missing (./dev deps installs it)");
  }
  std::vector<std::string> argv = {kPython, Runfile("tests/testing/s3_standin.py"),
                                   "--region", o.region,
                                   "--web-identity-token", o.web_identity_token,
                                   "--pod-identity-token", o.pod_identity_token,
                                   "--sts-duration",
                                   absl::StrCat(absl::ToDoubleSeconds(o.sts_duration))};
  for (const std::string& b : o.buckets) {
    argv.push_back("--bucket");
    argv.push_back(b);
  }
  for (const std::string& c : o.credentials) {
    argv.push_back("--credentials");
    argv.push_back(c);
  }
  // Debian's botocore only: no user site, no pyenv paths.
  absl::StatusOr<Subprocess> p =
      Subprocess::Start(argv, {{"PYTHONNOUSERSITE", "1"}, {"PYTHONPATH", ""}});
  if (!p.ok()) return p.status();
  std::unique_ptr<S3Standin> s(new S3Standin());
  s->process_.emplace(*std::move(p));
  const absl::Time end = absl::Now() + absl::Seconds(20);
  while (absl::Now() < end) {
    const std::string out = s->process_->Stdout();
    const size_t at = out.find("READY ");
    const size_t eol = at == std::string::npos ? at : out.find('\n', at);
    if (eol != std::string::npos) {
      nlohmann::json ports = nlohmann::json::parse(out.substr(at + 6, eol - at - 6));
      s->s3_port_ = ports["s3"];
      s->sts_port_ = ports["sts"];
      s->pod_port_ = ports["pod"];
      return s;
    }
    if (s->process_->Wait(absl::Milliseconds(20)).has_value()) {
      const std::string err = s->process_->Stderr();
      if (absl::StrContains(err, "No module named 'botocore'")) {
        return absl::FailedPreconditionError(
            "Debian's python3-botocore is missing (./dev deps installs it)");
      }
      return absl::UnavailableError(absl::StrCat("the S3 stand-in exited: ", err));
    }
  }
  return absl::UnavailableError("the S3 stand-in did not start within 20 s");
}

std::string S3Standin::S3Endpoint() const { return absl::StrCat("http://127.0.0.1:", s3_port_); }
std::string S3Standin::S3VirtualHostEndpoint() const {
  return absl::StrCat("http://localhost:", s3_port_);
}
std::string S3Standin::StsEndpoint() const {
  return absl::StrCat("http://127.0.0.1:", sts_port_, "/");
}
std::string S3Standin::PodIdentityUri() const {
  return absl::StrCat("http://127.0.0.1:", pod_port_, "/v1/credentials");
}

absl::StatusOr<std::string> S3Standin::Control(const std::string& method,
                                               const std::string& path,
                                               const std::string& body) const {
  httplib::Client c("127.0.0.1", s3_port_);
  c.set_read_timeout(10, 0);
  httplib::Result r = method == "GET" ? c.Get(path.c_str())
                                      : c.Post(path.c_str(), body, "application/json");
  if (!r) return absl::UnavailableError(absl::StrCat("stand-in control ", path, " failed"));
  if (r->status != 200) {
    return absl::InternalError(absl::StrCat("stand-in control ", path, ": HTTP ", r->status));
  }
  return r->body;
}

nlohmann::json S3Standin::Requests() const {
  absl::StatusOr<std::string> body = Control("GET", "/_standin/requests", "");
  return body.ok() ? nlohmann::json::parse(*body) : nlohmann::json::array();
}

nlohmann::json S3Standin::State() const {
  absl::StatusOr<std::string> body = Control("GET", "/_standin/state", "");
  return body.ok() ? nlohmann::json::parse(*body) : nlohmann::json::object();
}

absl::Status S3Standin::AddFault(const nlohmann::json& fault) {
  return Control("POST", "/_standin/faults", nlohmann::json::array({fault}).dump()).status();
}

absl::Status S3Standin::SetClock(absl::Time now) {
  return Control("POST", "/_standin/clock",
                 nlohmann::json{{"now", absl::ToUnixSeconds(now)}}.dump())
      .status();
}

absl::Status S3Standin::FollowRealClock() {
  return Control("POST", "/_standin/clock", R"({"now": null})").status();
}

absl::Status S3Standin::Reset() { return Control("POST", "/_standin/reset", "{}").status(); }

std::string DebianAwsCli() {
  return access("/usr/bin/aws", X_OK) == 0 ? "/usr/bin/aws" : "";
}

}  // namespace videotask::testing
