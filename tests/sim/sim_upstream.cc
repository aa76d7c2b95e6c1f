#include "tests/sim/sim_upstream.h"

#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace videotask::sim {
namespace {

using json = nlohmann::json;

constexpr char kResultPrefix[] = "/kyyReactApiServer/v1/result/";

struct TaskState {
  TaskScript script;
  int answered = 0;  // script answers given (faults excluded)
  absl::Time first_request = absl::InfiniteFuture();
  std::string forced;  // "completed" / "failed" once Complete()/Fail() ran
  std::string forced_error;
};

struct PendingFault {
  std::string id;
  Fault fault;
  int left;
};

std::optional<FaultKind> ParseKind(const std::string& s) {
  static const std::map<std::string, FaultKind> kinds = {
      {"rate_limit", FaultKind::kRateLimit},       {"server_error", FaultKind::kServerError},
      {"malformed_json", FaultKind::kMalformedJson}, {"html", FaultKind::kHtml},
      {"oversized", FaultKind::kOversized},         {"unknown_status", FaultKind::kUnknownStatus},
      {"not_found", FaultKind::kNotFound},          {"unauthorized", FaultKind::kUnauthorized},
      {"slow", FaultKind::kSlow},                   {"hang", FaultKind::kHang}};
  auto it = kinds.find(s);
  if (it == kinds.end()) return std::nullopt;
  return it->second;
}

void JsonError(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(json{{"error", {{"message", message}, {"code", status}}}}.dump(),
                  "application/json");
}

}  // namespace

struct SimUpstream::Impl {
  Options options;
  httplib::Server server;
  std::thread thread;
  int port = 0;

  absl::Mutex mu;
  std::map<std::string, TaskState> tasks ABSL_GUARDED_BY(mu);
  std::deque<PendingFault> faults ABSL_GUARDED_BY(mu);
  std::map<std::string, int> counts ABSL_GUARDED_BY(mu);
  std::vector<absl::Time> times ABSL_GUARDED_BY(mu);
  int total ABSL_GUARDED_BY(mu) = 0;
  bool stopping ABSL_GUARDED_BY(mu) = false;

  // Waits up to `d`, or less when the server stops.
  void Wait(absl::Duration d) {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&stopping), d);
  }

  std::optional<Fault> TakeFault(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (auto it = faults.begin(); it != faults.end(); ++it) {
      if (!it->id.empty() && it->id != id) continue;
      Fault f = it->fault;
      if (it->left > 0 && --it->left == 0) faults.erase(it);
      return f;
    }
    return std::nullopt;
  }

  // The vendor's body for a task's next answer; advances the script.
  std::string Answer(const std::string& id, TaskState& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time now = absl::Now();
    if (t.first_request == absl::InfiniteFuture()) t.first_request = now;
    const TaskScript& s = t.script;
    std::string status;
    if (!t.forced.empty()) {
      status = t.forced;
    } else if (!s.advances) {
      status = "queued";
    } else if (s.queued_for > absl::ZeroDuration() || s.processing_for > absl::ZeroDuration()) {
      const absl::Duration e = now - t.first_request;
      status = e < s.queued_for                      ? "queued"
               : e < s.queued_for + s.processing_for ? "processing"
               : s.fails                             ? "failed"
                                                     : "completed";
    } else {
      const int n = t.answered;
      status = n < s.queued_polls                        ? "queued"
               : n < s.queued_polls + s.processing_polls ? "processing"
               : s.fails                                 ? "failed"
                                                         : "completed";
    }
    ++t.answered;
    json body = {{"id", id},          {"object", "video"}, {"created", s.created},
                 {"model", s.model},  {"status", status},  {"video_url", nullptr},
                 {"error", nullptr}};
    if (status == "completed") {
      body["video_url"] = s.video_url.empty()
                              ? absl::StrCat("https://cdn.invalid/videos/", id, ".mp4")
                              : s.video_url;
      body["actualDuration"] = s.actual_duration;
    } else if (status == "failed") {
      body["error"] = t.forced_error.empty() ? s.error : t.forced_error;
    }
    return body.dump();
  }

  void HandleResult(const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.path.substr(sizeof(kResultPrefix) - 1);
    std::optional<Fault> fault;
    std::string body;
    {
      absl::MutexLock lock(&mu);
      ++counts[id];
      ++total;
      times.push_back(absl::Now());
      if (req.get_header_value("Authorization") != "Bearer " + options.api_key) {
        JsonError(res, 401, "invalid api key");
        return;
      }
      fault = TakeFault(id);
      if (!fault.has_value()) {
        auto it = tasks.find(id);
        if (it == tasks.end()) {
          if (!options.serve_unknown_ids) {
            JsonError(res, 404, "task not found");
            return;
          }
          it = tasks.emplace(id, TaskState{options.default_script}).first;
        }
        body = Answer(id, it->second);
      }
    }
    if (!fault.has_value()) {
      res.set_content(body, "application/json");
      return;
    }
    const Fault& f = *fault;
    switch (f.kind) {
      case FaultKind::kRateLimit:
        if (!f.retry_after_header.empty()) res.set_header("Retry-After", f.retry_after_header);
        JsonError(res, 429, "too many requests");
        return;
      case FaultKind::kServerError:
        JsonError(res, f.http_status, "upstream trouble");
        return;
      case FaultKind::kMalformedJson:
        res.set_content(R"({"id": "x", "status": "compl)", "application/json");
        return;
      case FaultKind::kHtml:
        res.set_content("<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html");
        return;
      case FaultKind::kOversized:
        res.set_content(std::string(f.body_bytes, 'x'), "application/json");
        return;
      case FaultKind::kUnknownStatus:
        res.set_content(json{{"id", id}, {"object", "video"}, {"status", "exploded"}}.dump(),
                        "application/json");
        return;
      case FaultKind::kNotFound:
        JsonError(res, 404, "task not found");
        return;
      case FaultKind::kUnauthorized:
        JsonError(res, 401, "invalid api key");
        return;
      case FaultKind::kSlow: {
        Wait(f.delay);
        absl::MutexLock lock(&mu);
        auto it = tasks.find(id);
        if (it == tasks.end()) it = tasks.emplace(id, TaskState{options.default_script}).first;
        res.set_content(Answer(id, it->second), "application/json");
        return;
      }
      case FaultKind::kHang:
        Wait(f.delay);
        JsonError(res, 504, "hung");
        return;
    }
  }

  void InstallAdmin() {
    server.Put(R"(/_sim/tasks/([A-Za-z0-9_\-]+))", [this](const httplib::Request& req,
                                                          httplib::Response& res) {
      json j = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
      if (j.is_discarded() || !j.is_object()) return JsonError(res, 400, "body must be a JSON object");
      TaskScript s;
      try {
        s.queued_polls = j.value("queued_polls", s.queued_polls);
        s.processing_polls = j.value("processing_polls", s.processing_polls);
        s.queued_for = absl::Milliseconds(j.value("queued_for_ms", 0));
        s.processing_for = absl::Milliseconds(j.value("processing_for_ms", 0));
        s.fails = j.value("fails", false);
        s.advances = j.value("advances", true);
        s.video_url = j.value("video_url", std::string());
        s.actual_duration = j.value("actual_duration", s.actual_duration);
        s.error = j.value("error", s.error);
        s.model = j.value("model", s.model);
        s.created = j.value("created", s.created);
      } catch (const json::exception& e) {
        return JsonError(res, 400, e.what());
      }
      SetTask(req.matches[1], s);
      res.status = 204;
    });
    server.Post(R"(/_sim/tasks/([A-Za-z0-9_\-]+)/complete)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Force(req.matches[1], "completed", "");
                  res.status = 204;
                });
    server.Post(R"(/_sim/tasks/([A-Za-z0-9_\-]+)/fail)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  json j = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
                  std::string error = "failed by the test";
                  if (j.is_object() && j.contains("error") && j["error"].is_string()) {
                    error = j["error"].get<std::string>();
                  }
                  Force(req.matches[1], "failed", error);
                  res.status = 204;
                });
    server.Post("/_sim/faults", [this](const httplib::Request& req, httplib::Response& res) {
      json j = json::parse(req.body, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("kind") || !j["kind"].is_string()) {
        return JsonError(res, 400, "body must be {\"kind\": ...}");
      }
      std::optional<FaultKind> kind = ParseKind(j["kind"].get<std::string>());
      if (!kind) return JsonError(res, 400, "unknown fault kind");
      Fault f;
      f.kind = *kind;
      try {
        f.count = j.value("count", 1);
        f.http_status = j.value("http_status", 503);
        f.retry_after_header = j.value("retry_after", std::string());
        if (j.contains("delay_ms")) f.delay = absl::Milliseconds(j["delay_ms"].get<int64_t>());
        f.body_bytes = j.value("body_bytes", f.body_bytes);
        InjectFault(j.value("id", std::string()), f);
      } catch (const json::exception& e) {
        return JsonError(res, 400, e.what());
      }
      res.status = 204;
    });
    server.Delete("/_sim/faults", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      faults.clear();
      res.status = 204;
    });
    server.Get("/_sim/counts", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      json j = {{"total", total}, {"tasks", json::object()}};
      for (const auto& [id, n] : counts) j["tasks"][id] = n;
      res.set_content(j.dump(), "application/json");
    });
    server.Post("/_sim/reset", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      counts.clear();
      times.clear();
      total = 0;
      res.status = 204;
    });
  }

  void SetTask(const std::string& id, TaskScript s) {
    absl::MutexLock lock(&mu);
    tasks[id] = TaskState{std::move(s)};
  }

  void Force(const std::string& id, const std::string& status, const std::string& error) {
    absl::MutexLock lock(&mu);
    auto it = tasks.find(id);
    if (it == tasks.end()) it = tasks.emplace(id, TaskState{options.default_script}).first;
    it->second.forced = status;
    it->second.forced_error = error;
  }

  void InjectFault(const std::string& id, Fault f) {
    absl::MutexLock lock(&mu);
    faults.push_back({id, f, f.count});
  }
};

absl::StatusOr<std::unique_ptr<SimUpstream>> SimUpstream::Start(Options options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  Impl* p = impl.get();
  const int threads = std::max(1, options.threads);
  p->server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  p->server.set_keep_alive_max_count(100000);
  p->server.set_tcp_nodelay(true);  // else reused connections wait ~40 ms (Nagle)
  p->server.set_keep_alive_timeout(30);
  p->server.Get(R"(/kyyReactApiServer/v1/result/(.*))",
                [p](const httplib::Request& req, httplib::Response& res) { p->HandleResult(req, res); });
  p->InstallAdmin();
  p->port = options.port == 0 ? p->server.bind_to_any_port(options.host)
                              : (p->server.bind_to_port(options.host, options.port) ? options.port : -1);
  if (p->port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("simulated upstream cannot listen on ", options.host, ":", options.port));
  }
  p->thread = std::thread([p] { p->server.listen_after_bind(); });
  // The socket is bound, so connections queue anyway; wait for the loop too.
  for (int i = 0; i < 5000 && !p->server.is_running(); ++i) absl::SleepFor(absl::Milliseconds(1));
  return std::unique_ptr<SimUpstream>(new SimUpstream(std::move(impl)));
}

SimUpstream::SimUpstream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SimUpstream::~SimUpstream() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;  // releases hanging and slow handlers
  }
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int SimUpstream::port() const { return impl_->port; }

std::string SimUpstream::base_url() const {
  return absl::StrCat("http://", impl_->options.host, ":", impl_->port, "/kyyReactApiServer/v1");
}

void SimUpstream::SetTask(const std::string& id, TaskScript script) {
  impl_->SetTask(id, std::move(script));
}
void SimUpstream::Complete(const std::string& id) { impl_->Force(id, "completed", ""); }
void SimUpstream::Fail(const std::string& id, const std::string& error) {
  impl_->Force(id, "failed", error);
}
void SimUpstream::InjectFault(const std::string& id, Fault fault) {
  impl_->InjectFault(id, std::move(fault));
}
void SimUpstream::ClearFaults() {
  absl::MutexLock lock(&impl_->mu);
  impl_->faults.clear();
}
int SimUpstream::RequestCount(const std::string& id) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->counts.find(id);
  return it == impl_->counts.end() ? 0 : it->second;
}
int SimUpstream::TotalRequests() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->total;
}
std::vector<absl::Time> SimUpstream::RequestTimes() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->times;
}
void SimUpstream::ResetCounts() {
  absl::MutexLock lock(&impl_->mu);
  impl_->counts.clear();
  impl_->times.clear();
  impl_->total = 0;
}

}  // namespace videotask::sim
