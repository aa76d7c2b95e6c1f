#include "tests/sim/sim_upstream.h"

#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <limits>
#include <map>
#include <set>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace videotask::sim {
namespace {

using json = nlohmann::json;

constexpr char kResultPrefix[] = "/kyyReactApiServer/v1/result/";
constexpr size_t kMaxBodyBytes = size_t{256} << 20;  // admin-set oversized bodies

enum class Phase { kQueued, kProcessing, kDone };

struct TaskState {
  TaskScript script;
  Phase phase = Phase::kQueued;
  int phase_polls = 0;  // script answers given in the current phase
  absl::Time phase_start = absl::InfiniteFuture();
  std::string forced;  // "completed" / "failed" once Complete()/Fail() ran
  std::string forced_error;
  absl::Time terminal_served = absl::InfiniteFuture();
};

struct PendingFault {
  std::string id;
  Fault fault;
  int left;  // -1: until ClearFaults()
};

std::optional<VideoFault> ParseVideoFault(const std::string& s) {
  static const auto* const kinds = new std::map<std::string, VideoFault>{
      {"none", VideoFault::kNone},
      {"truncated", VideoFault::kTruncated},
      {"wrong_length", VideoFault::kWrongLength},
      {"not_found", VideoFault::kNotFound},
      {"server_error", VideoFault::kServerError}};
  auto it = kinds->find(s);
  if (it == kinds->end()) return std::nullopt;
  return it->second;
}

struct VideoState {
  VideoScript script;
  int faults_served = 0;
};

constexpr size_t kVideoChunk = 64 << 10;

std::optional<FaultKind> ParseKind(const std::string& s) {
  static const auto* const kinds = new std::map<std::string, FaultKind>{
      {"rate_limit", FaultKind::kRateLimit},
      {"server_error", FaultKind::kServerError},
      {"malformed_json", FaultKind::kMalformedJson},
      {"html", FaultKind::kHtml},
      {"oversized", FaultKind::kOversized},
      {"unknown_status", FaultKind::kUnknownStatus},
      {"not_found", FaultKind::kNotFound},
      {"unauthorized", FaultKind::kUnauthorized},
      {"slow", FaultKind::kSlow},
      {"hang", FaultKind::kHang},
      {"status", FaultKind::kStatus},
      {"truncated", FaultKind::kTruncated},
      {"reset", FaultKind::kReset},
      {"accepted_then_dropped", FaultKind::kAcceptedThenDropped},
      {"refuse", FaultKind::kRefuse},
      {"no_id", FaultKind::kNoId}};
  auto it = kinds->find(s);
  if (it == kinds->end()) return std::nullopt;
  return it->second;
}

// JSON text for the wire. Ids come from request paths and may hold any
// bytes; dump() would throw on invalid UTF-8 (a 500, and /_sim/counts broken
// for good), so such bytes become U+FFFD.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void JsonError(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(Dump(json{{"error", {{"message", message}, {"code", status}}}}),
                  "application/json");
}

// Parses an optional JSON object body ("" => {}); nullopt when it is not one.
std::optional<json> ObjectBody(const std::string& body) {
  json j = json::parse(body.empty() ? std::string("{}") : body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

// Typed optional fields of an admin body; throw std::invalid_argument with a
// readable message on a wrong type or range.
int64_t IntField(const json& j, const char* name, int64_t def, int64_t lo, int64_t hi) {
  if (!j.contains(name) || j[name].is_null()) return def;
  const json& v = j[name];
  int64_t n;
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    throw std::invalid_argument(absl::StrCat("\"", name, "\" must be in [", lo, ", ", hi, "]"));
  } else if (v.is_number_integer()) {
    n = v.get<int64_t>();
  } else if (v.is_number_float() && std::abs(v.get<double>()) < 9e15 &&
             v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>()))) {
    n = static_cast<int64_t>(v.get<double>());
  } else {
    throw std::invalid_argument(absl::StrCat("\"", name, "\" must be an integer"));
  }
  if (n < lo || n > hi) {
    throw std::invalid_argument(absl::StrCat("\"", name, "\" must be in [", lo, ", ", hi, "]"));
  }
  return n;
}
double NumberField(const json& j, const char* name, double def) {
  if (!j.contains(name) || j[name].is_null()) return def;
  if (!j[name].is_number()) throw std::invalid_argument(absl::StrCat("\"", name, "\" must be a number"));
  return j[name].get<double>();
}
bool BoolField(const json& j, const char* name, bool def) {
  if (!j.contains(name) || j[name].is_null()) return def;
  if (!j[name].is_boolean()) throw std::invalid_argument(absl::StrCat("\"", name, "\" must be true or false"));
  return j[name].get<bool>();
}
std::string StringField(const json& j, const char* name, const std::string& def) {
  if (!j.contains(name) || j[name].is_null()) return def;
  if (!j[name].is_string()) throw std::invalid_argument(absl::StrCat("\"", name, "\" must be a string"));
  return j[name].get<std::string>();
}

// Shuts down (without closing: their threads still own them) the accepted
// sockets of the server listening on `port`, found through /proc/self/fd.
// httplib 0.11 keeps a worker in its keep-alive wait on an idle connection
// until the keep-alive timeout even after stop(); this ends those waits.
void ShutdownConnectionsOnPort(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  const int self = dirfd(dir);
  while (struct dirent* e = readdir(dir)) {
    int fd;
    if (!absl::SimpleAtoi(e->d_name, &fd) || fd == self) continue;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;
    int local_port = -1;
    if (addr.ss_family == AF_INET) {
      local_port = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    } else if (addr.ss_family == AF_INET6) {
      local_port = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    }
    if (local_port != port) continue;
    // Only connected sockets: a peer means it was accepted from our listener.
    sockaddr_storage peer;
    socklen_t peer_len = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    ::shutdown(fd, SHUT_RDWR);
  }
  closedir(dir);
}

// Drops the accepted connection from loopback port `peer_port` to `port`
// without an answer: SO_LINGER 0 makes the server's later close() a reset.
void DropConnection(int port, int peer_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  const int self = dirfd(dir);
  while (struct dirent* e = readdir(dir)) {
    int fd;
    if (!absl::SimpleAtoi(e->d_name, &fd) || fd == self) continue;
    sockaddr_in local, peer;
    socklen_t len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
        local.sin_family != AF_INET || ntohs(local.sin_port) != port) {
      continue;
    }
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        ntohs(peer.sin_port) != peer_port) {
      continue;
    }
    linger lg{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    ::shutdown(fd, SHUT_RDWR);
  }
  closedir(dir);
}

// A task's body as the vendor sends it, with `status` (any string). A
// completed task without a scripted video_url gets `video_prefix` + id + ".mp4".
std::string TaskBody(const std::string& id, const TaskScript& s, const std::string& status,
                     const std::string& error, const std::string& video_prefix) {
  json body = {{"id", id},         {"object", "video"}, {"created", s.created},
               {"model", s.model}, {"status", status},  {"video_url", nullptr},
               {"error", nullptr}};
  if (status == "completed") {
    body["video_url"] =
        s.video_url.empty() ? absl::StrCat(video_prefix, id, ".mp4") : s.video_url;
    body["actualDuration"] = s.actual_duration;
  } else if (status == "failed") {
    body["error"] = error;
  }
  return Dump(body);
}

}  // namespace

struct SimUpstream::Impl {
  Options options;
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> loop_done{false};
  int port = 0;

  absl::Mutex mu;
  std::map<std::string, TaskState> tasks ABSL_GUARDED_BY(mu);
  std::deque<PendingFault> faults ABSL_GUARDED_BY(mu);
  std::deque<PendingFault> create_faults ABSL_GUARDED_BY(mu);  // id: the family
  std::vector<ReceivedCreate> creates ABSL_GUARDED_BY(mu);
  int64_t next_create ABSL_GUARDED_BY(mu) = 1;
  std::map<std::string, int> counts ABSL_GUARDED_BY(mu);
  // (id, status or refusal code) -> answers served.
  std::map<std::pair<std::string, std::string>, int> served ABSL_GUARDED_BY(mu);
  std::vector<absl::Time> times ABSL_GUARDED_BY(mu);
  int total ABSL_GUARDED_BY(mu) = 0;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  // The video host.
  std::map<std::string, VideoState> videos ABSL_GUARDED_BY(mu);
  std::map<std::string, int> video_counts ABSL_GUARDED_BY(mu);
  int video_total ABSL_GUARDED_BY(mu) = 0;
  int video_authorization ABSL_GUARDED_BY(mu) = 0;
  // Default video_url prefix of completed tasks (set once the port is known).
  std::string video_prefix = "https://cdn.invalid/videos/";

  std::string Origin() const { return absl::StrCat("http://", options.host, ":", port); }

  // Waits up to `d`, or less when the server stops.
  void Wait(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&stopping), d);
  }

  std::optional<Fault> TakeFault(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return TakeFrom(faults, id);
  }

  static std::optional<Fault> TakeFrom(std::deque<PendingFault>& queue, const std::string& id) {
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (!it->id.empty() && it->id != id) continue;
      Fault f = it->fault;
      if (it->left > 0 && --it->left == 0) queue.erase(it);
      return f;
    }
    return std::nullopt;
  }

  // A new task for a create of `family` with `body`: its id, scripted from
  // the default script (the body's model, when it names one).
  std::string NewTask(const std::string& family, const json& body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const std::string id =
        absl::StrCat(family == "videos" ? "proj_sim_" : "video_sim_", next_create++);
    TaskScript script = options.default_script;
    if (body.contains("model") && body["model"].is_string()) {
      script.model = body["model"].get<std::string>();
    }
    script.created = absl::ToUnixSeconds(absl::Now());
    tasks[id] = TaskState{std::move(script)};
    return id;
  }

  static std::string CreatedBody(const std::string& family, const std::string& id,
                                 const TaskState& t) {
    if (family == "videos") {
      return Dump(json{{"code", "0"}, {"msg", nullptr}, {"data", {{"projectId", id}}}});
    }
    return Dump(json{{"id", id},
                     {"object", "video"},
                     {"created", t.script.created},
                     {"model", t.script.model},
                     {"status", "queued"}});
  }

  static void Refuse(httplib::Response& res, const std::string& family, int status,
                     const std::string& message) {
    if (status == 200) {
      res.set_content(Dump(json{{"code", "400"}, {"msg", message}, {"data", nullptr}}),
                      "application/json");
      return;
    }
    JsonError(res, status, message);
  }

  // POST /kyyReactApiServer/v1/{family}/videos.
  void HandleCreate(const httplib::Request& req, httplib::Response& res) ABSL_LOCKS_EXCLUDED(mu) {
    const std::string family = req.matches[1];
    std::optional<Fault> fault;
    size_t index = 0;
    {
      absl::MutexLock lock(&mu);
      ++total;
      times.push_back(absl::Now());
      index = creates.size();
      creates.push_back({family, req.body, "", ""});
      if (req.get_header_value("Authorization") != "Bearer " + options.api_key) {
        creates[index].answer = "401";
        JsonError(res, 401, "invalid api key");
        return;
      }
      fault = TakeFrom(create_faults, family);
    }
    const json body = json::parse(req.body, nullptr, false);
    auto answer = [&](const std::string& what) {
      absl::MutexLock lock(&mu);
      creates[index].answer = what;
    };
    auto create = [&]() {
      absl::MutexLock lock(&mu);
      const std::string id = NewTask(family, body);
      creates[index].id = id;
      return std::make_pair(id, CreatedBody(family, id, tasks[id]));
    };
    if (fault.has_value()) {
      const Fault& f = *fault;
      switch (f.kind) {
        case FaultKind::kRateLimit:
          if (!f.retry_after_header.empty()) res.set_header("Retry-After", f.retry_after_header);
          answer("429");
          return JsonError(res, 429, "too many requests");
        case FaultKind::kServerError:
          answer(std::to_string(f.http_status));
          return JsonError(res, f.http_status, "upstream trouble");
        case FaultKind::kRefuse: {
          const int status = f.http_status == 503 ? 400 : f.http_status;
          answer(std::to_string(status));
          return Refuse(res, family, status, f.message);
        }
        case FaultKind::kAcceptedThenDropped:
          create();
          answer("dropped");
          DropConnection(port, req.remote_port);
          return;
        case FaultKind::kReset:
          answer("dropped");
          DropConnection(port, req.remote_port);
          return;
        case FaultKind::kNoId:
          create();
          answer("200");
          res.set_content(R"({"object":"video","status":"queued"})", "application/json");
          return;
        case FaultKind::kHang:
          Wait(f.delay);
          answer("504");
          res.set_header("Connection", "close");
          return JsonError(res, 504, "hung request released");
        case FaultKind::kSlow:
          Wait(f.delay);
          break;  // then as usual
        default:
          answer("500");
          return JsonError(res, 500, "fault kind not supported for creates");
      }
    }
    if (!body.is_object() || !body.contains("prompt") || !body["prompt"].is_string()) {
      answer(family == "videos" ? "200" : "400");
      return Refuse(res, family, family == "videos" ? 200 : 400,
                    "the body must be a JSON object with a string \"prompt\"");
    }
    auto [id, text] = create();
    answer("200");
    res.set_content(text, "application/json");
  }

  // The task for `id`, created from the default script when unknown ids are
  // served; nullptr otherwise.
  TaskState* Find(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = tasks.find(id);
    if (it == tasks.end()) {
      if (!options.serve_unknown_ids) return nullptr;
      it = tasks.emplace(id, TaskState{options.default_script}).first;
    }
    return &it->second;
  }

  // Counts `status` as served for `id`; a terminal one stamps the task's
  // first terminal answer (scripted or injected alike: a watcher acts on both).
  void NoteServed(const std::string& id, TaskState* t, const std::string& status, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ++served[{id, status}];
    if (t != nullptr && (status == "completed" || status == "failed") &&
        t->terminal_served == absl::InfiniteFuture()) {
      t->terminal_served = now;
    }
  }

  // The vendor's body for a task's next answer; advances the script. Each
  // phase lasts its duration (from the phase's start) when positive, else its
  // number of polls.
  std::string Answer(const std::string& id, TaskState& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time now = absl::Now();
    const TaskScript& s = t.script;
    if (t.phase_start == absl::InfiniteFuture()) t.phase_start = now;  // first request
    if (t.forced.empty() && s.advances) {
      while (t.phase != Phase::kDone) {
        const bool queued = t.phase == Phase::kQueued;
        const absl::Duration for_ = queued ? s.queued_for : s.processing_for;
        const int polls = queued ? s.queued_polls : s.processing_polls;
        const bool timed = for_ > absl::ZeroDuration();
        if (timed ? now - t.phase_start < for_ : t.phase_polls < polls) break;
        t.phase = queued ? Phase::kProcessing : Phase::kDone;
        t.phase_start = timed ? t.phase_start + for_ : now;
        t.phase_polls = 0;
      }
    }
    ++t.phase_polls;
    std::string status = !t.forced.empty()             ? t.forced
                         : t.phase == Phase::kQueued     ? "queued"
                         : t.phase == Phase::kProcessing ? "processing"
                         : s.fails                       ? "failed"
                                                         : "completed";
    NoteServed(id, &t, status, now);
    return TaskBody(id, s, status, t.forced.empty() ? s.error : t.forced_error, video_prefix);
  }

  // A 200 body of exactly `n` bytes; valid JSON (a task with padding) when
  // `n` allows, so that only the size is wrong with it.
  static std::string Oversized(const std::string& id, size_t n) {
    const std::string head =
        Dump(json{{"id", id}, {"object", "video"}, {"status", "processing"}});
    const std::string open = head.substr(0, head.size() - 1) + ",\"padding\":\"";
    const std::string close = "\"}";
    if (n < open.size() + close.size()) return std::string(n, ' ');
    return open + std::string(n - open.size() - close.size(), 'x') + close;
  }

  void HandleResult(const httplib::Request& req, httplib::Response& res) ABSL_LOCKS_EXCLUDED(mu) {
    const std::string id = req.path.substr(sizeof(kResultPrefix) - 1);
    std::optional<Fault> fault;
    std::string body;
    {
      absl::MutexLock lock(&mu);
      ++counts[id];
      ++total;
      times.push_back(absl::Now());
      if (req.get_header_value("Authorization") != "Bearer " + options.api_key) {
        ++served[{id, "401"}];
        JsonError(res, 401, "invalid api key");
        return;
      }
      fault = TakeFault(id);
      if (!fault.has_value()) {
        TaskState* t = Find(id);
        if (t == nullptr) {
          ++served[{id, "404"}];
          JsonError(res, 404, "task not found");
          return;
        }
        body = Answer(id, *t);
      } else if (fault->kind == FaultKind::kNotFound) {
        ++served[{id, "404"}];
      } else if (fault->kind == FaultKind::kUnauthorized) {
        ++served[{id, "401"}];
      } else if (fault->kind == FaultKind::kStatus || fault->kind == FaultKind::kUnknownStatus) {
        TaskState* t = Find(id);
        const std::string status =
            fault->kind == FaultKind::kStatus ? fault->status : std::string("exploded");
        NoteServed(id, t, status, absl::Now());
        body = TaskBody(id, t != nullptr ? t->script : options.default_script, status,
                        t != nullptr ? t->script.error : options.default_script.error,
                        video_prefix);
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
        res.set_content(absl::StrCat(R"({"id": ")", id, R"(", "object": "video", "status": "compl)"),
                        "application/json");
        return;
      case FaultKind::kHtml:
        res.set_content(
            "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>"
            "<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>\n",
            "text/html");
        return;
      case FaultKind::kOversized:
        res.set_content(Oversized(id, f.body_bytes), "application/json");
        return;
      case FaultKind::kUnknownStatus:
      case FaultKind::kStatus:
        res.set_content(body, "application/json");
        return;
      case FaultKind::kTruncated: {
        const std::string full =
            TaskBody(id, options.default_script, "completed", "", video_prefix);
        res.set_content_provider(
            full.size(), "application/json",
            [full](size_t offset, size_t, httplib::DataSink& sink) {
              if (offset == 0) sink.write(full.data(), full.size() / 2);
              return false;  // ends the connection short of Content-Length
            });
        return;
      }
      case FaultKind::kReset:
        DropConnection(port, req.remote_port);
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
        TaskState* t = Find(id);
        if (t == nullptr) {
          ++served[{id, "404"}];
          JsonError(res, 404, "task not found");
          return;
        }
        res.set_content(Answer(id, *t), "application/json");
        return;
      }
      case FaultKind::kHang:
        Wait(f.delay);
        res.set_header("Connection", "close");
        JsonError(res, 504, "hung request released");
        return;
      case FaultKind::kAcceptedThenDropped:
      case FaultKind::kRefuse:
      case FaultKind::kNoId:
        JsonError(res, 500, "a create fault kind injected for results");
        return;
    }
  }

  // GET /videos/{name}: the video of the id `name` names (up to its first
  // '.'), as its VideoScript says; bytes generated chunk by chunk.
  void HandleVideo(const httplib::Request& req, httplib::Response& res) ABSL_LOCKS_EXCLUDED(mu) {
    const std::string name = req.matches[1];
    const std::string id = name.substr(0, name.find('.'));
    int hop = 0;
    if (req.has_param("hop") && !absl::SimpleAtoi(req.get_param_value("hop"), &hop)) hop = 0;
    VideoScript s;
    VideoFault fault = VideoFault::kNone;
    {
      absl::MutexLock lock(&mu);
      ++video_counts[id];
      ++video_total;
      if (req.has_header("Authorization")) ++video_authorization;
      auto it = videos.find(id);
      if (it == videos.end()) it = videos.emplace(id, VideoState{options.default_video}).first;
      VideoState& v = it->second;
      s = v.script;
      if (!s.redirect_location.empty() && !req.has_param("hop")) {
        res.set_redirect(s.redirect_location, 302);
        return;
      }
      if (hop < s.redirect_hops) {
        res.set_redirect(absl::StrCat(Origin(), req.path, "?hop=", hop + 1), 302);
        return;
      }
      if (s.fault != VideoFault::kNone && (s.fault_count < 0 || v.faults_served < s.fault_count)) {
        ++v.faults_served;
        fault = s.fault;
      }
    }
    if (fault == VideoFault::kNotFound) return JsonError(res, 404, "no such video");
    if (fault == VideoFault::kServerError) return JsonError(res, 503, "video host trouble");
    const size_t size = static_cast<size_t>(std::max<int64_t>(0, s.size_bytes));
    const size_t send = fault == VideoFault::kTruncated ? size / 2 : size;
    const size_t claimed = fault == VideoFault::kWrongLength ? size + 1024 : size;
    const absl::Duration delay = s.chunk_delay;
    auto chunk = [this, id, send, delay](size_t offset, httplib::DataSink& sink) {
      if (offset >= send) return false;  // ends the connection short of the promise
      if (delay > absl::ZeroDuration()) {
        Wait(delay);
        absl::MutexLock lock(&mu);
        if (stopping) return false;
      }
      std::string buf(std::min(kVideoChunk, send - offset), '\0');
      VideoBytes(id, offset, buf.data(), buf.size());
      return sink.write(buf.data(), buf.size());
    };
    if (!s.content_type.empty()) res.set_header("Content-Type", s.content_type);
    if (s.chunked) {
      const bool short_body = send < size;
      res.set_chunked_content_provider(
          s.content_type, [chunk, send, short_body](size_t offset, httplib::DataSink& sink) {
            if (offset >= send) {
              if (short_body) return false;  // no last chunk: the transfer is cut
              sink.done();
              return true;
            }
            return chunk(offset, sink);
          });
      return;
    }
    res.set_content_provider(claimed, s.content_type,
                             [chunk](size_t offset, size_t, httplib::DataSink& sink) {
                               return chunk(offset, sink);
                             });
  }

  // The fields /_sim/faults and /_sim/create_faults share ("count",
  // "http_status", "retry_after", "delay_ms"); throws std::invalid_argument.
  static void ParseFaultFields(const json& j, Fault& f) {
    f.count = IntField(j, "count", 1, -1, std::numeric_limits<int>::max());
    if (f.count == 0) throw std::invalid_argument("\"count\" must be positive or -1");
    f.http_status = IntField(j, "http_status", f.http_status, 100, 599);
    f.retry_after_header = StringField(j, "retry_after", "");
    if (f.retry_after_header.find_first_of("\r\n") != std::string::npos) {
      throw std::invalid_argument("\"retry_after\" must be one line");
    }
    if (j.contains("delay_ms") && !j["delay_ms"].is_null()) {
      f.delay = absl::Milliseconds(IntField(j, "delay_ms", 0, 0, int64_t{24} * 3600 * 1000));
    }
  }

  void InstallAdmin() {
    server.Put(R"(/_sim/tasks/([^/]+))", [this](const httplib::Request& req,
                                                 httplib::Response& res) {
      std::optional<json> j = ObjectBody(req.body);
      if (!j) return JsonError(res, 400, "body must be a JSON object");
      TaskScript s;
      try {
        constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
        constexpr int64_t kDay = int64_t{24} * 3600 * 1000;
        s.queued_polls = IntField(*j, "queued_polls", s.queued_polls, 0, kMaxInt);
        s.processing_polls = IntField(*j, "processing_polls", s.processing_polls, 0, kMaxInt);
        s.queued_for = absl::Milliseconds(IntField(*j, "queued_for_ms", 0, 0, kDay));
        s.processing_for = absl::Milliseconds(IntField(*j, "processing_for_ms", 0, 0, kDay));
        s.fails = BoolField(*j, "fails", s.fails);
        s.advances = BoolField(*j, "advances", s.advances);
        s.video_url = StringField(*j, "video_url", s.video_url);
        s.actual_duration = NumberField(*j, "actual_duration", s.actual_duration);
        s.error = StringField(*j, "error", s.error);
        s.model = StringField(*j, "model", s.model);
        s.created = IntField(*j, "created", s.created, std::numeric_limits<int64_t>::min(),
                             std::numeric_limits<int64_t>::max());
      } catch (const std::exception& e) {
        return JsonError(res, 400, e.what());
      }
      SetTask(req.matches[1], std::move(s));
      res.status = 204;
    });
    server.Post(R"(/_sim/tasks/([^/]+)/complete)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Force(req.matches[1], "completed", "");
                  res.status = 204;
                });
    server.Post(R"(/_sim/tasks/([^/]+)/fail)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  std::optional<json> j = ObjectBody(req.body);
                  if (!j) return JsonError(res, 400, "body must be a JSON object");
                  std::string error;
                  try {
                    error = StringField(*j, "error", "failed by the test");
                  } catch (const std::exception& e) {
                    return JsonError(res, 400, e.what());
                  }
                  Force(req.matches[1], "failed", error);
                  res.status = 204;
                });
    server.Post("/_sim/faults", [this](const httplib::Request& req, httplib::Response& res) {
      std::optional<json> j = ObjectBody(req.body);
      if (!j || !j->contains("kind") || !(*j)["kind"].is_string()) {
        return JsonError(res, 400, "body must be a JSON object with a string \"kind\"");
      }
      std::optional<FaultKind> kind = ParseKind((*j)["kind"].get<std::string>());
      if (kind == FaultKind::kAcceptedThenDropped || kind == FaultKind::kRefuse ||
          kind == FaultKind::kNoId) {
        kind.reset();  // create faults: POST /_sim/create_faults
      }
      if (!kind) {
        return JsonError(res, 400,
                         "unknown fault kind; one of rate_limit, server_error, malformed_json, "
                         "html, oversized, unknown_status, not_found, unauthorized, slow, hang, "
                         "status, truncated, reset");
      }
      Fault f;
      f.kind = *kind;
      std::string id;
      try {
        id = StringField(*j, "id", "");
        ParseFaultFields(*j, f);
        f.body_bytes = IntField(*j, "body_bytes", f.body_bytes, 0, kMaxBodyBytes);
        f.status = StringField(*j, "status", f.status);
      } catch (const std::exception& e) {
        return JsonError(res, 400, e.what());
      }
      InjectFault(id, f);
      res.status = 204;
    });
    server.Post("/_sim/create_faults", [this](const httplib::Request& req,
                                              httplib::Response& res) {
      std::optional<json> j = ObjectBody(req.body);
      if (!j || !j->contains("kind") || !(*j)["kind"].is_string()) {
        return JsonError(res, 400, "body must be a JSON object with a string \"kind\"");
      }
      std::optional<FaultKind> kind = ParseKind((*j)["kind"].get<std::string>());
      static const std::set<FaultKind> kCreateKinds = {
          FaultKind::kRateLimit, FaultKind::kServerError,        FaultKind::kRefuse,
          FaultKind::kReset,     FaultKind::kAcceptedThenDropped, FaultKind::kNoId,
          FaultKind::kSlow,      FaultKind::kHang};
      if (!kind || kCreateKinds.count(*kind) == 0) {
        return JsonError(res, 400,
                         "unknown create fault kind; one of rate_limit, server_error, refuse, "
                         "accepted_then_dropped, reset, no_id, slow, hang");
      }
      Fault f;
      f.kind = *kind;
      if (f.kind == FaultKind::kRefuse) f.http_status = 400;
      std::string family;
      try {
        family = StringField(*j, "family", "");
        ParseFaultFields(*j, f);
        f.message = StringField(*j, "message", f.message);
      } catch (const std::exception& e) {
        return JsonError(res, 400, e.what());
      }
      InjectCreateFault(family, f);
      res.status = 204;
    });
    server.Get("/_sim/creates", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      json list = json::array();
      for (const ReceivedCreate& c : creates) {
        list.push_back({{"family", c.family}, {"body", c.body}, {"id", c.id}, {"answer", c.answer}});
      }
      res.set_content(Dump(json{{"total", creates.size()}, {"creates", list}}), "application/json");
    });
    server.Delete("/_sim/faults", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      create_faults.clear();
      faults.clear();
      res.status = 204;
    });
    server.Get("/_sim/counts", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      json j = {{"total", total}, {"tasks", json::object()}};
      for (const auto& [id, n] : counts) j["tasks"][id] = n;
      res.set_content(Dump(j), "application/json");
    });
    server.Put(R"(/_sim/videos/([^/]+))", [this](const httplib::Request& req,
                                                  httplib::Response& res) {
      std::optional<json> j = ObjectBody(req.body);
      if (!j) return JsonError(res, 400, "body must be a JSON object");
      VideoScript v;
      try {
        constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
        v.size_bytes = IntField(*j, "size_bytes", v.size_bytes, 0, int64_t{1} << 40);
        v.content_type = StringField(*j, "content_type", v.content_type);
        if (v.content_type.find_first_of("\r\n") != std::string::npos) {
          throw std::invalid_argument("\"content_type\" must be one line");
        }
        v.chunk_delay =
            absl::Milliseconds(IntField(*j, "chunk_delay_ms", 0, 0, int64_t{3600} * 1000));
        const std::string fault = StringField(*j, "fault", "none");
        std::optional<VideoFault> kind = ParseVideoFault(fault);
        if (!kind) {
          throw std::invalid_argument(
              "unknown video fault; one of none, truncated, wrong_length, not_found, server_error");
        }
        v.fault = *kind;
        v.fault_count = IntField(*j, "fault_count", v.fault_count, -1, kMaxInt);
        v.redirect_hops = IntField(*j, "redirect_hops", 0, 0, 100);
        v.redirect_location = StringField(*j, "redirect_location", "");
        if (v.redirect_location.find_first_of("\r\n") != std::string::npos) {
          throw std::invalid_argument("\"redirect_location\" must be one line");
        }
        v.chunked = BoolField(*j, "chunked", false);
      } catch (const std::exception& e) {
        return JsonError(res, 400, e.what());
      }
      SetVideo(req.matches[1], std::move(v));
      res.status = 204;
    });
    server.Get("/_sim/video_counts", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      json j = {{"total", video_total},
                {"authorization", video_authorization},
                {"videos", json::object()}};
      for (const auto& [id, n] : video_counts) j["videos"][id] = n;
      res.set_content(Dump(j), "application/json");
    });
    server.Post("/_sim/reset", [this](const httplib::Request&, httplib::Response& res) {
      ResetCounts();
      res.status = 204;
    });
  }

  void SetVideo(const std::string& id, VideoScript v) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    videos[id] = VideoState{std::move(v)};
  }

  void SetTask(const std::string& id, TaskScript s) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    tasks[id] = TaskState{std::move(s)};
  }

  void Force(const std::string& id, const std::string& status, const std::string& error)
      ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    auto it = tasks.find(id);
    if (it == tasks.end()) it = tasks.emplace(id, TaskState{options.default_script}).first;
    it->second.forced = status;
    it->second.forced_error = error;
  }

  void InjectFault(const std::string& id, Fault f) ABSL_LOCKS_EXCLUDED(mu) {
    Enqueue(&Impl::faults, id, std::move(f));
  }

  // `queue` names the member (faults or create_faults), read under mu.
  void Enqueue(std::deque<PendingFault> Impl::*queue, const std::string& id, Fault f)
      ABSL_LOCKS_EXCLUDED(mu) {
    if (f.count == 0 || f.count < -1) return;  // answers no request
    absl::MutexLock lock(&mu);
    const int left = f.count;
    (this->*queue).push_back({id, std::move(f), left});
  }

  void InjectCreateFault(const std::string& family, Fault f) ABSL_LOCKS_EXCLUDED(mu) {
    Enqueue(&Impl::create_faults, family, std::move(f));
  }

  void ResetCounts() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    creates.clear();
    counts.clear();
    served.clear();
    times.clear();
    total = 0;
    video_counts.clear();
    video_total = 0;
    video_authorization = 0;
  }
};

absl::StatusOr<std::unique_ptr<SimUpstream>> SimUpstream::Start(Options options) {
  // A client that leaves mid-answer (a timed-out hang, a reset) must not kill
  // the process with SIGPIPE when the answer is written.
  struct sigaction old_action;
  if (sigaction(SIGPIPE, nullptr, &old_action) == 0 && old_action.sa_handler == SIG_DFL) {
    signal(SIGPIPE, SIG_IGN);
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  Impl* p = impl.get();
  const int threads = std::max(1, options.threads);
  p->server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  p->server.set_keep_alive_max_count(100000);
  p->server.set_keep_alive_timeout(30);
  p->server.set_tcp_nodelay(true);  // else reused connections wait ~40 ms (Nagle)
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, with which a
  // second server could share a fixed port instead of failing to bind.
  p->server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  p->server.Get(R"(/kyyReactApiServer/v1/result/(.*))",
                [p](const httplib::Request& req, httplib::Response& res) {
                  p->HandleResult(req, res);
                });
  p->server.Post(R"(/kyyReactApiServer/v1/([a-z0-9_]+)/videos)",
                 [p](const httplib::Request& req, httplib::Response& res) {
                   p->HandleCreate(req, res);
                 });
  p->server.Get(R"(/videos/([^/]+))", [p](const httplib::Request& req, httplib::Response& res) {
    p->HandleVideo(req, res);
  });
  p->InstallAdmin();
  // Every error answer carries a JSON body, also for paths nobody serves.
  p->server.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        JsonError(res, res.status,
                  res.status == 404 ? absl::StrCat("no route for ", req.method, " ", req.path)
                                    : std::string("request failed"));
        return httplib::Server::HandlerResponse::Handled;
      }));
  p->server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        JsonError(res, 500, what);
      });
  if (options.log_requests) {
    p->server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::cerr << absl::StrCat("sim_upstream: ", req.method, " ", req.path, " -> ", res.status,
                                "\n");
    });
  }
  p->port = options.port == 0
                ? p->server.bind_to_any_port(options.host)
                : (p->server.bind_to_port(options.host, options.port) ? options.port : -1);
  if (p->port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("simulated upstream cannot listen on ", options.host, ":", options.port));
  }
  if (options.video_urls_on_sim) p->video_prefix = absl::StrCat(p->Origin(), "/videos/");
  p->thread = std::thread([p] {
    p->server.listen_after_bind();
    p->loop_done = true;
  });
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
  // The listen loop joins its workers; those waiting on idle keep-alive
  // connections end once their sockets are shut down.
  while (!impl_->loop_done) {
    ShutdownConnectionsOnPort(impl_->port);
    absl::SleepFor(absl::Milliseconds(2));
  }
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
  impl_->create_faults.clear();
}
void SimUpstream::InjectCreateFault(const std::string& family, Fault fault) {
  impl_->InjectCreateFault(family, std::move(fault));
}
std::vector<ReceivedCreate> SimUpstream::Creates() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->creates;
}
int SimUpstream::CreatedCount() const {
  absl::MutexLock lock(&impl_->mu);
  int n = 0;
  for (const ReceivedCreate& c : impl_->creates) n += c.id.empty() ? 0 : 1;
  return n;
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
int SimUpstream::ServedCount(const std::string& id, const std::string& what) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->served.find({id, what});
  return it == impl_->served.end() ? 0 : it->second;
}
absl::Time SimUpstream::TerminalServedAt(const std::string& id) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->tasks.find(id);
  return it == impl_->tasks.end() ? absl::InfiniteFuture() : it->second.terminal_served;
}
void SimUpstream::ResetCounts() { impl_->ResetCounts(); }

void SimUpstream::SetVideo(const std::string& id, VideoScript script) {
  impl_->SetVideo(id, std::move(script));
}
int SimUpstream::VideoRequestCount(const std::string& id) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->video_counts.find(id);
  return it == impl_->video_counts.end() ? 0 : it->second;
}
int SimUpstream::VideoAuthorizationCount() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->video_authorization;
}
std::string SimUpstream::VideoUrl(const std::string& id, const std::string& ext) const {
  return absl::StrCat(impl_->Origin(), "/videos/", id, ext);
}

// splitmix64 of (a hash of the id + the 8-byte block index): any byte range
// can be produced without the ones before it.
void VideoBytes(const std::string& id, uint64_t offset, char* out, size_t n) {
  uint64_t seed = 1469598103934665603ULL;  // FNV-1a of the id
  for (unsigned char c : id) seed = (seed ^ c) * 1099511628211ULL;
  auto block = [seed](uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  size_t i = 0;
  while (i < n) {
    const uint64_t pos = offset + i;
    const uint64_t word = block(pos / 8);
    size_t k = pos % 8;
    for (; k < 8 && i < n; ++k, ++i) out[i] = static_cast<char>((word >> (8 * k)) & 0xff);
  }
}

}  // namespace videotask::sim
