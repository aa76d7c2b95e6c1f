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
//          "delay_ms","body_bytes","status"}; kind: rate_limit, server_error,
//          malformed_json, html, oversized, unknown_status, not_found,
//          unauthorized, slow, hang, status ("status": the status string
//          served, e.g. one that goes backwards), truncated, reset     -> 204
//   DELETE /_sim/faults                                               -> 204
//   GET    /_sim/counts  -> {"total":N,"tasks":{"<id>":n,...}}
//   POST   /_sim/reset   (request counts only)                        -> 204
//   PUT    /_sim/videos/{id}  {"size_bytes","content_type","chunk_delay_ms",
//          "fault","fault_count","redirect_hops","redirect_location",
//          "chunked"} (all optional; see VideoScript) -> 204; fault: none,
//          truncated, wrong_length, not_found, server_error
//   GET    /_sim/video_counts -> {"total":N,"authorization":M,
//          "videos":{"<id>":n,...}}  (M: video requests with an
//          Authorization header; reset by /_sim/reset too)
//
// The create endpoints, POST /kyyReactApiServer/v1/{family}/videos (Bearer
// key), create a task from `default_script` (its model from the body's
// "model") that is then served at /result/{id}. Family `videos` answers
// {"code":"0","msg":null,"data":{"projectId":"proj_sim_N"}}, any other
// {"id":"video_sim_N","object":"video","created":...,"model":...,
// "status":"queued"}. A body that is not a JSON object, or without a string
// "prompt", is refused: 200 {"code":"400","msg":...} for `videos`, else 400
// {"error":{"message":...}}. Every create received is recorded with its body
// exactly as it came. Create faults (by family, "" = any) answer first:
//   POST   /_sim/create_faults {"family","kind","count","http_status",
//          "retry_after","delay_ms","message"}; kind: rate_limit (429, nothing
//          created), server_error (`http_status`, default 503, nothing
//          created), refuse (`http_status`, default 400; 200 gives the
//          {"code":"400"} shape), accepted_then_dropped (creates the task,
//          then drops the connection without an answer), reset (drops it
//          without creating), no_id (creates it, answers 200 without an
//          id), slow (waits `delay_ms`, then creates and answers), hang
//          (waits, then 504, nothing created)                          -> 204
//   GET    /_sim/creates -> {"total":N,"creates":[{"family","body","id",
//          "answer"},...]} ("body" as received; "id" empty when nothing
//          was created; "answer" the HTTP status or "dropped")
// DELETE /_sim/faults clears create faults too; /_sim/reset forgets creates.
//
// It also plays the video host: GET /videos/{id}[.ext] answers the bytes of
// the task's video (no key needed), generated on the fly from the id
// (VideoBytes), so a test can check content and SHA-256 without holding the
// video. With Options::video_urls_on_sim a completed task's default
// video_url points there: http://127.0.0.1:PORT/videos/{id}.mp4.
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
  kStatus,         // 200 with a well-formed task in `status` (any string, e.g.
                   // one that goes backwards or flaps); the script stays put
  kTruncated,      // 200 whose body stops halfway: the connection closes
                   // before the promised Content-Length
  kReset,          // the connection is dropped without an answer
  // Create faults only (InjectCreateFault):
  kAcceptedThenDropped,  // the task is created, then the connection dropped
  kRefuse,               // `http_status` (400; 200: the {"code"} shape), `message`
  kNoId,                 // the task is created; 200 without an id
};

struct Fault {
  FaultKind kind = FaultKind::kServerError;
  int count = 1;  // how many requests it answers; -1: until ClearFaults()
  int http_status = 503;
  std::string retry_after_header;
  absl::Duration delay = absl::Hours(1);
  size_t body_bytes = 2 << 20;
  std::string status = "queued";  // kStatus only
  std::string message = "the vendor refuses this request";  // kRefuse only
};

// One create the sim received.
struct ReceivedCreate {
  std::string family;
  std::string body;    // exactly as received
  std::string id;      // the task created; empty when none was
  std::string answer;  // the HTTP status sent, or "dropped"
};

// How the sim's video host answers GET /videos/{id}[.ext].
enum class VideoFault {
  kNone,
  kTruncated,    // Content-Length is the full size; the connection closes halfway
  kWrongLength,  // Content-Length claims 1 KiB more than the body, which then ends
  kNotFound,     // 404
  kServerError,  // 503
};

struct VideoScript {
  int64_t size_bytes = 1 << 20;
  std::string content_type = "video/mp4";  // empty: no Content-Type header
  // Slow: waits this long before each 64 KiB chunk (released when the sim stops).
  absl::Duration chunk_delay = absl::ZeroDuration();
  VideoFault fault = VideoFault::kNone;
  int fault_count = -1;  // how many requests the fault answers; -1: every one
  // Answers 302 to the same path with ?hop=N+1 this many times (on loopback
  // http), then the video; redirects are not faults and do not use up
  // fault_count.
  int redirect_hops = 0;
  // When set, a request without ?hop= is answered 302 to this URL instead.
  std::string redirect_location;
  bool chunked = false;  // no Content-Length: chunked transfer encoding
};

// The video bytes of task `id` at [offset, offset + n): a deterministic
// pseudo-random stream, the same for every request.
void VideoBytes(const std::string& id, uint64_t offset, char* out, size_t n);

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
    // A completed task without a scripted video_url points at this sim's
    // video host (http://HOST:PORT/videos/{id}.mp4) instead of cdn.invalid.
    bool video_urls_on_sim = false;
    // What /videos/ serves for ids without SetVideo().
    VideoScript default_video;
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

  // Create faults answer the next `count` creates for `family` ("" = any).
  // ClearFaults() clears them too.
  void InjectCreateFault(const std::string& family, Fault fault);
  // Every create received, in order (ResetCounts() forgets them).
  std::vector<ReceivedCreate> Creates() const;
  // Creates that created a task.
  int CreatedCount() const;

  int RequestCount(const std::string& id) const;  // all requests for id
  int TotalRequests() const;                      // every request, creates too
  std::vector<absl::Time> RequestTimes() const;   // start times, all ids
  // How many answers for `id` carried `what`: a task status ("queued",
  // "processing", "completed", "failed", also from kSlow and kStatus) or the
  // HTTP code of a refusal ("404", "401"). Lets a test check that whatever a
  // client of the sidecar saw was really served.
  int ServedCount(const std::string& id, const std::string& what) const;
  void ResetCounts();  // request counts, times and served answers
  // The video host: the script of `id`'s video, its request count (every
  // request, redirects included), and how many video requests carried an
  // Authorization header (any id; the key must never reach a video host).
  void SetVideo(const std::string& id, VideoScript script);
  int VideoRequestCount(const std::string& id) const;
  int VideoAuthorizationCount() const;
  // The URL of `id`'s video on this sim: http://HOST:PORT/videos/{id}{ext}.
  std::string VideoUrl(const std::string& id, const std::string& ext = ".mp4") const;

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
