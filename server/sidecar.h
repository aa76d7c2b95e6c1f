// Sidecar: the whole videotask sidecar assembled from its parts (API key
// source, upstream client, poll hub, gRPC service with health and
// reflection, metrics endpoint), for main() and for in-process tests.
//
// Start() validates the configuration first and returns INVALID_ARGUMENT
// with one clear sentence on a bad value; nothing is started then. It binds
// the metrics port before the gRPC server starts listening, so a port that
// is taken (UNAVAILABLE naming --metrics_listen or --listen; ports are not
// shared with other processes, no SO_REUSEPORT) fails the start before the
// gRPC port was ever open; whatever had started is then stopped as by
// Shutdown(), bounded. Drain() turns health NOT_SERVING, refuses new watches
// and ends open ones with UNAVAILABLE. Shutdown() drains, then stops
// everything within `grace`. Teardown, also of a Start() that failed
// halfway, always goes: gRPC server stopped, hub Shutdown() (after which the
// hub calls neither the fleet gate nor the archiver), upstream client,
// archiver, creator (with its key store, spend guard and budget) and fleet
// gate destroyed in that order (their late completions
// still find the hub), metrics endpoint stopped, then server, service and
// hub destroyed.
#ifndef VIDEOTASK_SERVER_SIDECAR_H_
#define VIDEOTASK_SERVER_SIDECAR_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "server/base/clock.h"
#include "server/archive/file_archiver.h"
#include "server/archive/s3_archiver.h"
#include "server/fleet/fleet_gate.h"
#include "server/fleet/redis_tls.h"
#include "server/fleet/redis_url.h"
#include "server/base/loopback.h"  // IsLoopbackHost
#include "server/base/metrics.h"
#include "server/hub/poll_hub.h"
#include "server/upstream/upstream_client.h"
#include "server/api/video_task_service.h"
#include "server/create/creator.h"
#include "server/create/curl_vendor_create.h"
#include "server/create/memory_create_key_store.h"
#include "server/create/spend_guard.h"
#include "server/fleet/fleet_create_budget.h"
#include "server/fleet/redis_create_key_store.h"
#include "server/fleet/redis_spend_guard.h"

namespace httplib {
class Server;
}

namespace videotask {

inline constexpr char kDefaultUpstreamUrl[] = "https://zcbservice.aizfw.cn/kyyReactApiServer/v1";
inline constexpr char kServiceName[] = "videotask.v1.VideoTaskService";
// The gRPC health service name that reports the archive's bucket
// credentials (--archive_url): NOT_SERVING after one was missing or refused.
// Probes check "" or kServiceName, which it never changes.
inline constexpr char kArchiveHealthName[] = "videotask.v1.VideoTaskService.archive";

struct SidecarConfig {
  std::string listen = "127.0.0.1:50051";  // host:port, or unix:PATH
  std::string upstream_url = kDefaultUpstreamUrl;
  std::string api_key_file;                 // empty: the key is in api_key_env
  std::string api_key_env = "VIDEOTASK_API_KEY";
  bool allow_insecure_upstream = false;
  absl::Duration upstream_timeout = absl::Seconds(10);
  absl::Duration upstream_connect_timeout = absl::Seconds(5);
  PollHubOptions hub;
  VideoTaskServiceOptions service;
  std::string metrics_listen = "127.0.0.1:9464";  // empty: no metrics endpoint
  Clock* clock = nullptr;                           // null: the real clock
  // Fleet mode (empty redis_url: one pod). See server/fleet/fleet_gate.h.
  std::string redis_url;
  std::string redis_password_file;
  // rediss:// only (see server/fleet/redis_tls.h): CA bundle (empty: the
  // system's), client certificate and key, name to verify (empty: the host).
  std::string redis_ca_file;
  std::string redis_cert_file;
  std::string redis_key_file;
  std::string redis_tls_server_name;
  double fleet_max_upstream_qps = 0;  // 0: no fleet budget
  // The fleet's name; with the upstream host it names the Redis namespace
  // (empty: "default"). Not the API key, so a key rotation keeps one fleet.
  std::string fleet_name;
  // The fleet budget's allowance for differing request lags (RedisRateBudget).
  absl::Duration fleet_arrival_margin = absl::Milliseconds(250);
  // During a key rotation: the previous key, whose signed states still verify.
  std::string api_key_previous_file;
  // Archiving completed videos (empty archive_dir: off); see file_archiver.h.
  std::string archive_dir;
  int64_t archive_max_bytes = int64_t{2} << 30;
  absl::Duration archive_timeout = absl::Minutes(30);
  bool archive_allow_loopback = false;
  int64_t archive_min_bytes_per_second = 32 << 10;
  // Archiving to a bucket (empty archive_url: off); see s3_archiver.h. With
  // archive_dir too, the directory keeps a local copy and the bucket's
  // object is the archive reported.
  std::string archive_url;
  std::string archive_s3_endpoint;
  std::string archive_s3_region;  // empty: AWS_REGION, else us-east-1
  bool archive_s3_path_style = false;
  std::string archive_s3_access_key_id_file;
  std::string archive_s3_secret_access_key_file;
  std::string archive_s3_session_token_file;
  // CreateVideoTask (see server/create/creator.h): how long request_ids are
  // remembered, the spend guard (0: off), and whether creates are allowed
  // when `listen` is neither loopback nor a unix socket.
  absl::Duration create_dedup_ttl = absl::Hours(24);
  int64_t max_creates_per_hour = 0;
  bool allow_remote_create = false;
  // Each vendor create request's whole duration (a timeout after sending is
  // an unknown outcome, so this is longer than upstream_timeout).
  absl::Duration create_timeout = absl::Seconds(30);
  int64_t create_max_keys = 100000;
};

// Why CreateVideoTask is refused with this configuration (OK: allowed):
// PERMISSION_DENIED when --listen is neither loopback nor a unix socket
// without --allow_remote_create. (Fleet mode keeps request_ids in Redis:
// RedisCreateKeyStore.)
absl::Status CreateRefusal(const SidecarConfig& config);

// OK, or INVALID_ARGUMENT naming the bad setting. Also rejects a plain
// http:// upstream on a non-loopback host unless allow_insecure_upstream.
absl::Status ValidateSidecarConfig(const SidecarConfig& config);

class Sidecar {
 public:
  static absl::StatusOr<std::unique_ptr<Sidecar>> Start(SidecarConfig config);
  ~Sidecar();  // Shutdown(zero grace) if still running

  int grpc_port() const { return grpc_port_; }  // 0 for unix sockets
  int metrics_port() const { return metrics_port_; }  // 0 when disabled
  // The address a client dials: "127.0.0.1:PORT" or "unix:PATH".
  std::string target() const { return target_; }

  void Drain();
  void Shutdown(absl::Duration grace);

  PollHub* hub() { return hub_.get(); }
  CreateKeyStore* create_keys() { return create_keys_.get(); }
  VideoTaskServiceImpl* service() { return service_.get(); }
  MetricsRegistry* metrics() { return &metrics_; }

 private:
  Sidecar() = default;

  // Binds --metrics_listen and starts serving it; no-op when empty.
  absl::Status StartMetrics();
  void StopMetrics();
  // Stops whatever has been started, in the order above; idempotent.
  void TearDown(absl::Duration grace);

  SidecarConfig config_;
  MetricsRegistry metrics_;
  std::unique_ptr<UpstreamClient> client_;
  std::unique_ptr<fleet::RedisPasswordFile> redis_password_;
  std::unique_ptr<fleet::FleetPollGate> gate_;  // fleet mode only
  std::unique_ptr<Archiver> archiver_;          // null: archiving off
  std::unique_ptr<PollHub> hub_;
  std::unique_ptr<CurlVendorCreateClient> vendor_create_;
  // Memory, or the fleet's Redis (fleet mode; then also create_budget_).
  std::unique_ptr<CreateKeyStore> create_keys_;
  std::unique_ptr<SpendGuard> spend_guard_;
  std::unique_ptr<UpstreamBudget> create_budget_;
  std::unique_ptr<Creator> creator_;
  std::unique_ptr<VideoTaskServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<httplib::Server> metrics_server_;
  std::thread metrics_thread_;
  std::atomic<bool> metrics_done_{false};  // metrics_thread_ has returned
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string target_;
  bool stopped_ = true;  // until Start() succeeds
  bool torn_down_ = false;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_SIDECAR_H_
