#include "server/sidecar_flags.h"

#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC listen address: host:port (port 0 picks a free one) or unix:PATH.");
ABSL_FLAG(std::string, upstream_url, videotask::kDefaultUpstreamUrl,
          "The vendor's API base; the sidecar polls {upstream_url}/result/{id}. Must be "
          "https:// unless the host is loopback.");
ABSL_FLAG(std::string, api_key_file, "",
          "File holding the vendor API key (e.g. a mounted Secret); re-read when it changes. "
          "When empty the key is read from the environment variable VIDEOTASK_API_KEY.");
ABSL_FLAG(absl::Duration, poll_interval, absl::Seconds(30),
          "Time between upstream polls of one task (+-10% jitter). The vendor asks for 30-60s. "
          "A task nobody watches any more keeps its state and poll schedule this long, so a "
          "watcher that reconnects within it, or a Get, costs no upstream request.");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(15),
          "A HEARTBEAT repeats a task's state to its watchers this often while nothing changes.");
ABSL_FLAG(absl::Duration, upstream_timeout, absl::Seconds(10),
          "Total time limit of one upstream request.");
ABSL_FLAG(absl::Duration, upstream_connect_timeout, absl::Seconds(5),
          "Connection time limit of one upstream request.");
ABSL_FLAG(int32_t, max_upstream_qps, 5,
          "At most this many upstream requests in any sliding one-second window, all tasks "
          "together (a request holds its slot until one second after it ends).");
ABSL_FLAG(int32_t, max_inflight, 16, "At most this many upstream requests run at once.");
ABSL_FLAG(absl::Duration, terminal_cache_ttl, absl::Hours(1),
          "How long a completed or failed task is remembered and served without upstream "
          "requests.");
ABSL_FLAG(absl::Duration, max_backoff, absl::Minutes(5),
          "Cap of the per-task backoff after transient upstream errors (poll_interval * 2^n) "
          "and of every 429 pause, a Retry-After longer than this included (the capped "
          "value is logged).");
ABSL_FLAG(int64_t, max_watches, 100000,
          "Open watches beyond this are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_pending_gets, 1000,
          "GetVideoTask calls waiting for an upstream answer beyond this are refused with "
          "RESOURCE_EXHAUSTED (a Get whose caller leaves is dropped from the queue).");
ABSL_FLAG(absl::Duration, slow_watcher_timeout, absl::Seconds(60),
          "A watch stream whose client has not taken a message for this long is ended with "
          "RESOURCE_EXHAUSTED, and reset if the client still does not read for as long again.");
ABSL_FLAG(std::string, redis_url, "",
          "Fleet mode: redis://[[user]:password@]host:port[/db], rediss://... (TLS, see "
          "--redis_ca_file) or unix:PATH of a Redis shared by every sidecar with this API key "
          "(one rate budget, one 429 pause, one poll per task, one state). Empty: single-pod "
          "mode. Redis faults fall back to local limits.");
ABSL_FLAG(std::string, redis_password_file, "",
          "File with the Redis password (a mounted Secret), re-read when it changes; overrides a "
          "password in --redis_url.");
ABSL_FLAG(std::string, redis_ca_file, "",
          "rediss:// only: PEM file of the CAs that sign the Redis server's certificate (a "
          "mounted Secret, re-read when it changes). Empty: the system's CAs. Verification is "
          "always on.");
ABSL_FLAG(std::string, redis_cert_file, "",
          "rediss:// only: PEM client certificate (chain) for a Redis with tls-auth-clients yes; "
          "needs --redis_key_file. Re-read when it changes.");
ABSL_FLAG(std::string, redis_key_file, "",
          "rediss:// only: the unencrypted PEM private key of --redis_cert_file. Re-read when it "
          "changes.");
ABSL_FLAG(std::string, redis_tls_server_name, "",
          "rediss:// only: the name to verify in the Redis server's certificate and to send as "
          "SNI, when it differs from the host in --redis_url. Empty: that host.");
ABSL_FLAG(double, fleet_max_upstream_qps, 0,
          "Fleet mode: at most this many upstream requests per second across every sidecar of "
          "the fleet (set it to the vendor's per-key limit); 0 turns the fleet budget off. The "
          "local --max_upstream_qps and --max_inflight still apply.");
ABSL_FLAG(std::string, fleet_name, "default",
          "Fleet mode: the fleet's name. Sidecars with the same --fleet_name and upstream host "
          "share one budget, pause, leases and states in --redis_url, whichever API key each "
          "holds (a key rotation stays one fleet). Give each vendor account its own name when "
          "several share one Redis and upstream host.");
ABSL_FLAG(absl::Duration, fleet_arrival_margin, absl::Milliseconds(250),
          "Fleet mode: grants of the fleet budget are spaced by (1s + this) / "
          "--fleet_max_upstream_qps, so the vendor sees at most --fleet_max_upstream_qps "
          "requests in any second while the requests' lags (grant to arrival) differ by at "
          "most this; the fleet then spends up to qps / (1 + margin) a second. 0 to 10s.");
ABSL_FLAG(std::string, api_key_previous_file, "",
          "Fleet mode, during an API key rotation: a file with the previous key. Shared states "
          "signed with it (by sidecars not yet on the new key) are still accepted; states are "
          "signed with the current key. Remove it once every sidecar uses the new key.");
ABSL_FLAG(std::string, archive_dir, "",
          "Archive completed videos into this directory (a volume the worker mounts too): a "
          "COMPLETED event then waits for the copy and carries it (task.archive), or "
          "task.archive_error when it could not be made. Empty: off.");
ABSL_FLAG(int64_t, archive_max_bytes, int64_t{2} << 30,
          "Largest video archived (bytes); a larger one gets archive_error.");
ABSL_FLAG(absl::Duration, archive_timeout, absl::Minutes(30),
          "How long a failing video download is retried before COMPLETED is sent with "
          "archive_error.");
ABSL_FLAG(bool, archive_allow_loopback, false,
          "Let the archiver download a video_url that is plain http:// to a loopback host or "
          "resolves to a loopback address (a video host in the pod, tests). Redirects never "
          "reach loopback; private and link-local addresses are refused always.");
ABSL_FLAG(int64_t, archive_min_bytes_per_second, 32 << 10,
          "A video download slower than this on average over 60 s fails and is retried (a "
          "slow host does not hold an archive slot forever); 0: no floor.");
ABSL_FLAG(std::string, archive_url, "",
          "Archive completed videos to a bucket: s3://BUCKET/PREFIX (the object PREFIX/ID.EXT; "
          "AWS S3 or any S3-compatible store). task.archive.uri is then s3://BUCKET/KEY. With "
          "--archive_dir too, that directory also keeps a local copy; without it the download "
          "is staged in $TMPDIR and removed once uploaded. Empty: off.");
ABSL_FLAG(std::string, archive_s3_endpoint, "",
          "The bucket's endpoint, scheme://host[:port] (GCS: https://storage.googleapis.com, "
          "R2: https://ACCOUNT.r2.cloudflarestorage.com). Empty: AWS S3 in "
          "--archive_s3_region. https, or plain http only to loopback.");
ABSL_FLAG(std::string, archive_s3_region, "",
          "The bucket's region for SigV4 (and the AWS endpoint). Empty: AWS_REGION, else "
          "us-east-1 (GCS: auto or us-east-1; R2: auto).");
ABSL_FLAG(bool, archive_s3_path_style, false,
          "Path-style requests (endpoint/BUCKET/KEY) instead of virtual-hosted "
          "(BUCKET.endpoint/KEY): MinIO, Ceph RGW, most on-premises stores.");
ABSL_FLAG(std::string, archive_s3_access_key_id_file, "",
          "File with the access key id (a mounted Secret), re-read at each use; with "
          "--archive_s3_secret_access_key_file. Empty: the AWS chain (AWS_ACCESS_KEY_ID, IRSA, "
          "EKS Pod Identity).");
ABSL_FLAG(std::string, archive_s3_secret_access_key_file, "",
          "File with the secret access key (a mounted Secret), re-read at each use.");
ABSL_FLAG(std::string, archive_s3_session_token_file, "",
          "Optional file with a session token for the key files' temporary credentials.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics listen address (host:port); empty disables it.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM/SIGINT: drain, and exit 0 within this time.");
ABSL_FLAG(std::string, log_format, "text", "Log line format on stderr: text or json.");
ABSL_FLAG(bool, allow_insecure_upstream, false,
          "Allow a plain http:// upstream on a non-loopback host (sends the key in clear "
          "text; logged loudly).");
ABSL_FLAG(absl::Duration, create_dedup_ttl, absl::Hours(24),
          "How long CreateVideoTask remembers a request_id and its outcome (in memory: a "
          "restart forgets them).");
ABSL_FLAG(int64_t, max_creates_per_hour, 0,
          "Spend guard: at most this many new vendor creates in any sliding hour; beyond it "
          "CreateVideoTask is RESOURCE_EXHAUSTED (0: off).");
ABSL_FLAG(bool, allow_remote_create, false,
          "Allow CreateVideoTask when --listen is neither a loopback address nor a unix "
          "socket (anyone who reaches the port can then spend money).");

namespace videotask {
namespace {

// Every flag above, for the VIDEOTASK_<FLAG> environment variables.
constexpr const char* kEnvFlags[] = {
    "listen",           "upstream_url",       "api_key_file",        "poll_interval",
    "heartbeat_interval", "upstream_timeout", "upstream_connect_timeout", "max_upstream_qps",
    "max_inflight",     "terminal_cache_ttl", "max_backoff",         "max_watches",
    "max_pending_gets", "redis_url",          "redis_password_file", "fleet_max_upstream_qps",
    "slow_watcher_timeout", "metrics_listen", "shutdown_grace",      "log_format",
    "allow_insecure_upstream", "archive_dir", "archive_max_bytes", "archive_timeout",
    "archive_allow_loopback", "archive_min_bytes_per_second",
    "fleet_name",       "api_key_previous_file", "fleet_arrival_margin",
    "archive_url",      "archive_s3_endpoint", "archive_s3_region", "archive_s3_path_style",
    "archive_s3_access_key_id_file", "archive_s3_secret_access_key_file",
    "archive_s3_session_token_file",
    "create_dedup_ttl", "max_creates_per_hour", "allow_remote_create",
    "redis_ca_file",    "redis_cert_file",    "redis_key_file",      "redis_tls_server_name"};

}  // namespace

absl::Status ApplyFlagEnvironment() {
  for (const char* name : kEnvFlags) {
    const std::string var = absl::StrCat("VIDEOTASK_", absl::AsciiStrToUpper(name));
    const char* value = std::getenv(var.c_str());
    if (value == nullptr) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    std::string error;
    if (flag == nullptr || !flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("bad value in ", var, ": ", error));
    }
  }
  return absl::OkStatus();
}

SidecarConfig SidecarConfigFromFlags() {
  SidecarConfig config;
  config.listen = absl::GetFlag(FLAGS_listen);
  config.upstream_url = absl::GetFlag(FLAGS_upstream_url);
  config.api_key_file = absl::GetFlag(FLAGS_api_key_file);
  config.allow_insecure_upstream = absl::GetFlag(FLAGS_allow_insecure_upstream);
  config.upstream_timeout = absl::GetFlag(FLAGS_upstream_timeout);
  config.upstream_connect_timeout = absl::GetFlag(FLAGS_upstream_connect_timeout);
  config.hub.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  config.hub.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  config.hub.max_upstream_qps = absl::GetFlag(FLAGS_max_upstream_qps);
  config.hub.max_inflight = absl::GetFlag(FLAGS_max_inflight);
  config.hub.terminal_cache_ttl = absl::GetFlag(FLAGS_terminal_cache_ttl);
  config.hub.backoff_max = absl::GetFlag(FLAGS_max_backoff);
  config.hub.max_watches = absl::GetFlag(FLAGS_max_watches);
  config.hub.max_pending_gets = absl::GetFlag(FLAGS_max_pending_gets);
  config.service.slow_watcher_timeout = absl::GetFlag(FLAGS_slow_watcher_timeout);
  config.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  config.archive_dir = absl::GetFlag(FLAGS_archive_dir);
  config.archive_max_bytes = absl::GetFlag(FLAGS_archive_max_bytes);
  config.archive_timeout = absl::GetFlag(FLAGS_archive_timeout);
  config.archive_allow_loopback = absl::GetFlag(FLAGS_archive_allow_loopback);
  config.archive_min_bytes_per_second = absl::GetFlag(FLAGS_archive_min_bytes_per_second);
  config.archive_url = absl::GetFlag(FLAGS_archive_url);
  config.archive_s3_endpoint = absl::GetFlag(FLAGS_archive_s3_endpoint);
  config.archive_s3_region = absl::GetFlag(FLAGS_archive_s3_region);
  config.archive_s3_path_style = absl::GetFlag(FLAGS_archive_s3_path_style);
  config.archive_s3_access_key_id_file = absl::GetFlag(FLAGS_archive_s3_access_key_id_file);
  config.archive_s3_secret_access_key_file =
      absl::GetFlag(FLAGS_archive_s3_secret_access_key_file);
  config.archive_s3_session_token_file = absl::GetFlag(FLAGS_archive_s3_session_token_file);
  config.redis_url = absl::GetFlag(FLAGS_redis_url);
  config.redis_password_file = absl::GetFlag(FLAGS_redis_password_file);
  config.redis_ca_file = absl::GetFlag(FLAGS_redis_ca_file);
  config.redis_cert_file = absl::GetFlag(FLAGS_redis_cert_file);
  config.redis_key_file = absl::GetFlag(FLAGS_redis_key_file);
  config.redis_tls_server_name = absl::GetFlag(FLAGS_redis_tls_server_name);
  config.fleet_max_upstream_qps = absl::GetFlag(FLAGS_fleet_max_upstream_qps);
  config.create_dedup_ttl = absl::GetFlag(FLAGS_create_dedup_ttl);
  config.max_creates_per_hour = absl::GetFlag(FLAGS_max_creates_per_hour);
  config.allow_remote_create = absl::GetFlag(FLAGS_allow_remote_create);
  config.fleet_name = absl::GetFlag(FLAGS_fleet_name);
  config.fleet_arrival_margin = absl::GetFlag(FLAGS_fleet_arrival_margin);
  config.api_key_previous_file = absl::GetFlag(FLAGS_api_key_previous_file);
  return config;
}

}  // namespace videotask
