// SimUpstream: a real HTTP server on loopback that implements the vendor's
// `GET /kyyReactApiServer/v1/result/{id}` with scripted task lifecycles,
// Bearer key checks, injectable faults and per-task request counts. Used by
// every integration test, the benchmark and the README's run command.
//
// Thread-safe: tests script and inspect it while the sidecar polls it.
//
// The same server answers a control API (no key) for tests in other languages
// and scripts, e.g. with the standalone //tests/sim:sim_upstream_server:
//   PUT    /_sim/tasks/{id}           {"queued_polls","processing_polls",
//          "queued_for_ms","processing_for_ms","fails","advances","video_url",
//          "actual_duration","error","model","created"} (all optional) -> 204
//   POST   /_sim/tasks/{id}/complete                                  -> 204
//   POST   /_sim/tasks/{id}/fail     {"error"} (optional)              -> 204
//   POST   /_sim/faults  {"id","kind","count","http_status","retry_after",
//          "delay_ms","body_bytes"}; kind: rate_limit, server_error,
//          malformed_json, html, oversized, unknown_status, not_found,
//          unauthorized, slow, hang                                   -> 204
//   DELETE /_sim/faults                                               -> 204
//   GET    /_sim/counts  -> {"total":N,"tasks":{"<id>":n,...}}
//   POST   /_sim/reset   (request counts only)                        -> 204
// Bad input is a 400 with a JSON {"error":{"message":...}} body.
#ifndef VIDEOTASK_TESTS_SIM_SIM_UPSTREAM_H_
#define VIDEOTASK_TESTS_SIM_SIM_UPSTREAM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videotask::sim {

// A task's lifecycle. Each state lasts a number of polls (counted per task,
// every answered request counts) or, when the duration is positive, a time
// since the task's first request. The lifecycle ends in completed or failed.
// (Queued by time starts at the first scripted answer; processing starts when
// queued ends. Faulted and refused requests do not count as polls.)
struct TaskScript {
  int queued_polls = 1;
  int processing_polls = 1;
  absl::Duration queued_for = absl::ZeroDuration();
  absl::Duration processing_for = absl::ZeroDuration();
  bool fails = false;
  std::string model = "videos";
  int64_t created = 1761635478;
  std::string video_url;          // default: https://cdn.invalid/videos/{id}.mp4
  double actual_duration = 8.0;   // seconds, sent when completed
  std::string error = "unsupported reference material";  // sent when failed
  // When false the task holds in its current state until Complete()/Fail().
  bool advances = true;
};

enum class FaultKind {
  kRateLimit,      // 429, with `retry_after_header` when non-empty
  kServerError,    // `http_status` (default 503), JSON error body
  kMalformedJson,  // 200 with a truncated JSON body
  kHtml,           // 200 with an HTML body (a proxy's error page)
  kOversized,      // 200 with a body of `body_bytes` (default 2 MiB)
  kUnknownStatus,  // 200 with status "exploded"
  kNotFound,       // 404
  kUnauthorized,   // 401
  kSlow,           // waits `delay`, then answers normally
  kHang,           // waits `delay` (default 1 h) or until the server stops
};

struct Fault {
  FaultKind kind = FaultKind::kServerError;
  int count = 1;  // how many requests it answers; -1: until ClearFaults()
  int http_status = 503;
  std::string retry_after_header;
  absl::Duration delay = absl::Hours(1);
  size_t body_bytes = 2 << 20;
};

class SimUpstream {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;  // 0: pick a free port
    std::string api_key = "sim-key";
    // Ids never scripted: 404 when false, else run `default_script`.
    bool serve_unknown_ids = false;
    TaskScript default_script;
    int threads = 16;
    // Logs one line per request (method, path, status) to stderr.
    bool log_requests = false;
  };

  static absl::StatusOr<std::unique_ptr<SimUpstream>> Start(Options options);
  ~SimUpstream();  // stops the server; hanging requests are released

  int port() const;
  // "http://127.0.0.1:PORT/kyyReactApiServer/v1": the sidecar's --upstream_url.
  std::string base_url() const;

  void SetTask(const std::string& id, TaskScript script);
  // Moves a task to its terminal state at once (for tasks with advances=false).
  void Complete(const std::string& id);
  void Fail(const std::string& id, const std::string& error);

  // Faults answer the next `count` requests for `id` ("" = any id) before the
  // script does. Faulted requests are counted but do not advance a script.
  void InjectFault(const std::string& id, Fault fault);
  void ClearFaults();

  int RequestCount(const std::string& id) const;  // all requests for id
  int TotalRequests() const;                      // every request
  std::vector<absl::Time> RequestTimes() const;   // start times, all ids
  void ResetCounts();
  // When the task's terminal state (completed or failed) was first served;
  // InfiniteFuture if it has not been.
  absl::Time TerminalServedAt(const std::string& id) const;

 private:
  struct Impl;
  explicit SimUpstream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace videotask::sim

#endif  // VIDEOTASK_TESTS_SIM_SIM_UPSTREAM_H_
