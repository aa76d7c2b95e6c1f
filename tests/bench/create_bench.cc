// create_bench: CreateVideoTask through the sidecar with deduplication, one
// sidecar (single mode) or a fleet of --fleet sidecars sharing a real
// redis-server (fleet mode: keys claimed in Redis), measured on this machine.
//
// Starts the simulated vendor and the real sidecar(s) in this process (the
// clients too, so the figures include their CPU; with --fleet, a
// redis-server on a free loopback port, and the calls go round-robin over
// the sidecars, so a herd's callers of one key meet in Redis), then:
//   1. new:    --keys distinct request_ids from --concurrency threads: every
//              call one vendor create (POST on loopback) through the shared
//              rate budget (--max_upstream_qps, set high here to measure the
//              sidecar rather than the vendor's cap);
//   2. repeat: the same keys --repeats times each: answered from the key
//              store, no vendor request;
//   3. herd:   --herd callers at once on each of --herd_keys new keys: one
//              vendor create per key.
// Prints a table and `key=value` lines; exits non-zero when a count is wrong
// (a second vendor create for a key, an id that differs between callers).
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/redis_server.h"

ABSL_FLAG(int, keys, 1000, "Distinct request_ids created in the first phase.");
ABSL_FLAG(int, repeats, 10, "Repeats of each key in the second phase.");
ABSL_FLAG(int, concurrency, 32, "Client threads.");
ABSL_FLAG(int, herd, 16, "Concurrent callers per key in the third phase.");
ABSL_FLAG(int, herd_keys, 50, "Keys in the third phase.");
ABSL_FLAG(int, max_upstream_qps, 2000, "The sidecar's --max_upstream_qps.");
ABSL_FLAG(int, fleet, 0,
          "0: one sidecar (single mode); N: N sidecars in fleet mode on one redis-server.");

namespace {

using videotask::v1::CreateVideoTaskRequest;
using videotask::v1::VideoTask;

struct Phase {
  int calls = 0;
  int errors = 0;
  absl::Duration elapsed;
  double per_second() const { return calls / absl::ToDoubleSeconds(elapsed); }
};

// Runs `calls` calls of `fn(i)` over `threads` threads.
template <typename Fn>
Phase Run(int calls, int threads, Fn fn) {
  std::atomic<int> next{0}, errors{0};
  const absl::Time start = absl::Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < calls; i = next++) {
        if (!fn(i)) ++errors;
      }
    });
  }
  for (auto& t : pool) t.join();
  return Phase{calls, errors.load(), absl::Now() - start};
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int keys = absl::GetFlag(FLAGS_keys);
  const int repeats = absl::GetFlag(FLAGS_repeats);
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const int herd = absl::GetFlag(FLAGS_herd);
  const int herd_keys = absl::GetFlag(FLAGS_herd_keys);
  setenv("VIDEOTASK_BENCH_KEY", "bench-key", 1);
  videotask::sim::SimUpstream::Options so;
  so.api_key = "bench-key";
  so.threads = 32;
  auto sim = videotask::sim::SimUpstream::Start(so);
  if (!sim.ok()) {
    std::cerr << "create_bench: " << sim.status() << "\n";
    return 1;
  }
  const int fleet = absl::GetFlag(FLAGS_fleet);
  std::unique_ptr<videotask::testing::RedisServer> redis;
  if (fleet > 0) {
    auto r = videotask::testing::RedisServer::Start();
    if (!r.ok()) {
      std::cerr << "create_bench: " << r.status() << "\n";
      return 1;
    }
    redis = std::move(*r);
  }
  std::vector<std::unique_ptr<videotask::Sidecar>> sidecars;
  std::vector<std::unique_ptr<videotask::v1::VideoTaskService::Stub>> stubs;
  for (int n = 0; n < std::max(fleet, 1); ++n) {
    videotask::SidecarConfig config;
    config.listen = "127.0.0.1:0";
    config.metrics_listen = "";
    config.upstream_url = (*sim)->base_url();
    config.api_key_env = "VIDEOTASK_BENCH_KEY";
    config.hub.max_upstream_qps = absl::GetFlag(FLAGS_max_upstream_qps);
    config.hub.max_inflight = 64;
    if (redis != nullptr) config.redis_url = redis->Url();
    auto sidecar = videotask::Sidecar::Start(config);
    if (!sidecar.ok()) {
      std::cerr << "create_bench: " << sidecar.status() << "\n";
      return 1;
    }
    auto channel =
        grpc::CreateChannel((*sidecar)->target(), grpc::InsecureChannelCredentials());
    stubs.push_back(videotask::v1::VideoTaskService::NewStub(channel));
    sidecars.push_back(std::move(*sidecar));
  }
  if (redis != nullptr) {
    // Every sidecar's Redis connection is up before the clock starts.
    const absl::Time end = absl::Now() + absl::Seconds(10);
    for (auto& s : sidecars) {
      while (s->metrics()->Render().find("videotask_redis_up 1") == std::string::npos &&
             absl::Now() < end) {
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
  }
  std::atomic<uint64_t> turn{0};
  google::protobuf::Struct body;
  (void)google::protobuf::util::JsonStringToMessage(
      R"({"model":"videos","prompt":"a benchmark","duration":10,"ratio":"16:9"})", &body);

  absl::Mutex mu;
  std::map<std::string, std::string> ids;  // key -> id
  bool mismatch = false;
  auto create = [&](const std::string& key) {
    CreateVideoTaskRequest req;
    req.set_request_id(key);
    req.set_family("videos");
    *req.mutable_body() = body;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    VideoTask task;
    auto& stub = stubs[turn++ % stubs.size()];
    if (!stub->CreateVideoTask(&ctx, req, &task).ok()) return false;
    absl::MutexLock lock(&mu);
    auto [it, inserted] = ids.emplace(key, task.id());
    if (!inserted && it->second != task.id()) mismatch = true;
    return true;
  };

  const Phase fresh = Run(keys, concurrency, [&](int i) { return create(absl::StrCat("k", i)); });
  const int after_fresh = (*sim)->CreatedCount();
  const Phase repeat = Run(keys * repeats, concurrency,
                           [&](int i) { return create(absl::StrCat("k", i % keys)); });
  const int after_repeat = (*sim)->CreatedCount();
  const Phase herded = Run(herd * herd_keys, std::max(concurrency, herd),
                           [&](int i) { return create(absl::StrCat("h", i / herd)); });
  const int after_herd = (*sim)->CreatedCount();
  for (auto& s : sidecars) s->Shutdown(absl::Seconds(1));

  auto row = [](const char* name, const Phase& p, int vendor) {
    std::cout << absl::StrFormat("%-8s %8d %8d %10.0f %10d\n", name, p.calls, p.errors,
                                 p.per_second(), vendor);
  };
  std::cout << absl::StrFormat("%-8s %8s %8s %10s %10s\n", "phase", "calls", "errors", "calls/s",
                               "vendor");
  row("new", fresh, after_fresh);
  row("repeat", repeat, after_repeat - after_fresh);
  row("herd", herded, after_herd - after_repeat);
  std::cout << "mode=" << (fleet > 0 ? absl::StrCat("fleet of ", fleet) : "single") << "\n";
  std::cout << "new_per_second=" << static_cast<int64_t>(fresh.per_second())
            << "\nrepeat_per_second=" << static_cast<int64_t>(repeat.per_second())
            << "\nherd_per_second=" << static_cast<int64_t>(herded.per_second())
            << "\nvendor_creates=" << after_herd << "\n";
  const bool ok = !mismatch && fresh.errors + repeat.errors + herded.errors == 0 &&
                  after_fresh == keys && after_repeat == keys && after_herd == keys + herd_keys;
  if (!ok) std::cout << "create_bench: WRONG COUNTS (see above)\n";
  return ok ? 0 : 1;
}
