#include "server/sidecar.h"

#include <sys/socket.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "httplib.h"
#include "server/upstream/api_key.h"
#include "server/upstream/curl_upstream_client.h"
#include "server/base/log.h"

namespace videotask {
namespace {

struct UrlParts {
  std::string scheme;
  std::string host;
};

absl::StatusOr<UrlParts> ParseUrl(absl::string_view url) {
  UrlParts parts;
  const size_t sep = url.find("://");
  if (sep == absl::string_view::npos) {
    return absl::InvalidArgumentError("--upstream_url must start with https://");
  }
  parts.scheme = std::string(url.substr(0, sep));
  absl::string_view rest = url.substr(sep + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (const size_t at = rest.rfind('@'); at != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "--upstream_url must not carry credentials; use --api_key_file or VIDEOTASK_API_KEY");
  }
  if (absl::StartsWith(rest, "[")) {
    parts.host = std::string(rest.substr(1, rest.find(']') - 1));
  } else {
    parts.host = std::string(rest.substr(0, rest.find(':')));
  }
  if (parts.host.empty()) return absl::InvalidArgumentError("--upstream_url has no host");
  return parts;
}

// "host:port" or "[v6]:port" -> (host, port).
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(absl::string_view flag,
                                                          absl::string_view addr) {
  const size_t colon = addr.rfind(':');
  int port = -1;
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(addr.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be host:port (port 0-65535), got \"", addr, "\""));
  }
  std::string host(addr.substr(0, colon));
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " has no host"));
  }
  return std::make_pair(host, port);
}

std::string Secs(absl::Duration d) { return absl::FormatDuration(d); }

S3ArchiverOptions S3OptionsFrom(const SidecarConfig& c) {
  S3ArchiverOptions o;
  o.url = c.archive_url;
  o.endpoint = c.archive_s3_endpoint;
  o.region = c.archive_s3_region;
  o.path_style = c.archive_s3_path_style;
  o.access_key_id_file = c.archive_s3_access_key_id_file;
  o.secret_access_key_file = c.archive_s3_secret_access_key_file;
  o.session_token_file = c.archive_s3_session_token_file;
  o.timeout = c.archive_timeout;
  return o;
}

// How long Shutdown() lets clients close their connections after the last
// stream has ended.
constexpr absl::Duration kCloseConnections = absl::Milliseconds(200);
// The shutdown grace of a gRPC server that started although Start() failed.
constexpr absl::Duration kFailedStartGrace = absl::Seconds(1);

}  // namespace

absl::Status CreateRefusal(const SidecarConfig& c) {
  if (c.allow_remote_create || absl::StartsWith(c.listen, "unix:")) return absl::OkStatus();
  auto hp = SplitHostPort("listen", c.listen);
  if (hp.ok() && IsLoopbackAddress(hp->first)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "CreateVideoTask spends money and this sidecar listens on ", c.listen,
      ", beyond loopback, where anyone who reaches the port could create videos; start it with "
      "--allow_remote_create to allow that (waiting is unaffected)"));
}

absl::Status ValidateSidecarConfig(const SidecarConfig& c) {
  if (c.listen.empty()) return absl::InvalidArgumentError("--listen must not be empty");
  // The upper bound keeps the TTL a sane Redis `SET ... PX` (an infinite or
  // huge one overflows it and every fleet claim would fail).
  if (c.create_dedup_ttl < absl::Minutes(1) || c.create_dedup_ttl > absl::Hours(24 * 30)) {
    return absl::InvalidArgumentError(
        "--create_dedup_ttl must be at least 1m and at most 720h (30 days)");
  }
  if (c.max_creates_per_hour < 0) {
    return absl::InvalidArgumentError("--max_creates_per_hour must not be negative (0: off)");
  }
  if (c.create_timeout < absl::Seconds(1) || c.create_max_keys < 1) {
    return absl::InvalidArgumentError("create_timeout must be at least 1s and create_max_keys positive");
  }
  if (absl::StartsWith(c.listen, "unix:")) {
    if (c.listen.size() <= 5) return absl::InvalidArgumentError("--listen unix: needs a path");
  } else if (auto hp = SplitHostPort("listen", c.listen); !hp.ok()) {
    return hp.status();
  }
  if (!c.metrics_listen.empty()) {
    if (auto hp = SplitHostPort("metrics_listen", c.metrics_listen); !hp.ok()) return hp.status();
  }
  absl::StatusOr<UrlParts> url = ParseUrl(c.upstream_url);
  if (!url.ok()) return url.status();
  if (url->scheme != "https" && url->scheme != "http") {
    return absl::InvalidArgumentError("--upstream_url must be an https:// URL");
  }
  if (url->scheme == "http" && !IsLoopbackHost(url->host) && !c.allow_insecure_upstream) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--upstream_url is plain http:// to non-loopback host ", url->host,
        ": the API key would travel in clear text (use https://, or "
        "--allow_insecure_upstream if you really mean it)"));
  }
  if (c.upstream_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--upstream_timeout must be positive");
  }
  if (c.upstream_connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--upstream_connect_timeout must be positive");
  }
  if (c.service.slow_watcher_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--slow_watcher_timeout must be positive");
  }
  if (!c.archive_dir.empty() || !c.archive_url.empty()) {
    FileArchiverOptions archive;
    // With --archive_url alone the downloads go to a staging directory.
    archive.dir = c.archive_dir.empty() ? "staging" : c.archive_dir;
    archive.max_bytes = c.archive_max_bytes;
    archive.timeout = c.archive_timeout;
    archive.allow_loopback = c.archive_allow_loopback;
    archive.min_bytes_per_second = c.archive_min_bytes_per_second;
    if (absl::Status s = ValidateFileArchiverOptions(archive); !s.ok()) return s;
  }
  if (!c.archive_url.empty()) {
    if (absl::Status s = ValidateS3ArchiverOptions(S3OptionsFrom(c)); !s.ok()) return s;
  } else if (!c.archive_s3_endpoint.empty() || !c.archive_s3_region.empty() ||
             c.archive_s3_path_style || !c.archive_s3_access_key_id_file.empty() ||
             !c.archive_s3_secret_access_key_file.empty() ||
             !c.archive_s3_session_token_file.empty()) {
    return absl::InvalidArgumentError("--archive_s3_* flags need --archive_url=s3://BUCKET/PREFIX");
  }
  if (absl::Status s = ValidatePollHubOptions(c.hub); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
  }
  const bool tls_flags = !c.redis_ca_file.empty() || !c.redis_cert_file.empty() ||
                         !c.redis_key_file.empty() || !c.redis_tls_server_name.empty();
  if (!c.redis_url.empty()) {
    auto redis = fleet::RedisUrl::Parse(c.redis_url);
    if (!redis.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--redis_url: ", redis.status().message()));
    }
    if (tls_flags && !redis->tls) {
      return absl::InvalidArgumentError(
          "--redis_ca_file, --redis_cert_file, --redis_key_file and --redis_tls_server_name need "
          "a rediss:// --redis_url (TLS)");
    }
    if (c.redis_cert_file.empty() != c.redis_key_file.empty()) {
      return absl::InvalidArgumentError(
          "--redis_cert_file and --redis_key_file go together (a client certificate and its key)");
    }
  } else if (tls_flags) {
    return absl::InvalidArgumentError(
        "--redis_ca_file, --redis_cert_file, --redis_key_file and --redis_tls_server_name need "
        "a rediss:// --redis_url (fleet mode over TLS)");
  } else if (!c.redis_password_file.empty() || c.fleet_max_upstream_qps != 0 ||
             !c.api_key_previous_file.empty()) {
    return absl::InvalidArgumentError(
        "--redis_password_file, --fleet_max_upstream_qps and --api_key_previous_file need "
        "--redis_url (fleet mode)");
  }
  if (!(c.fleet_max_upstream_qps >= 0) || c.fleet_max_upstream_qps > 1e6) {
    return absl::InvalidArgumentError("--fleet_max_upstream_qps must be in [0, 1000000]");
  }
  if (c.fleet_arrival_margin < absl::ZeroDuration() || c.fleet_arrival_margin > absl::Seconds(10)) {
    return absl::InvalidArgumentError("--fleet_arrival_margin must be in [0, 10s]");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Sidecar>> Sidecar::Start(SidecarConfig config) {
  if (absl::Status s = ValidateSidecarConfig(config); !s.ok()) return s;
  if (config.clock == nullptr) config.clock = RealClock::Get();
  std::unique_ptr<Sidecar> sc(new Sidecar());
  sc->config_ = config;

  absl::StatusOr<std::unique_ptr<ApiKeySource>> key =
      config.api_key_file.empty() ? ApiKeySource::FromEnv(config.api_key_env)
                                  : ApiKeySource::FromFile(config.api_key_file);
  if (!key.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no usable API key (set --api_key_file or ", config.api_key_env, "): ",
        key.status().message()));
  }
  // Fleet mode signs shared states with (a key derived from) the API key and
  // follows the source when it is re-read (a rotation).
  std::shared_ptr<ApiKeySource> key_source = std::move(*key);
  absl::StatusOr<std::string> fleet_key = key_source->Get();
  CurlUpstreamClient::Options copts;
  copts.base_url = config.upstream_url;
  copts.timeout = config.upstream_timeout;
  copts.connect_timeout = config.upstream_connect_timeout;
  // One connection per request the hub may run at once, so no request waits
  // inside libcurl: the hub's rate window then sees true start times.
  copts.max_host_connections = config.hub.max_inflight;
  auto client = CurlUpstreamClient::Create(copts, key_source, config.clock);
  if (!client.ok()) return client.status();
  sc->client_ = std::move(*client);

  // Metrics before the gRPC server (and before the hub, whose teardown logs):
  // a port that is taken fails the start before the gRPC port was ever open.
  if (absl::Status s = sc->StartMetrics(); !s.ok()) return s;


  S3Archiver* s3_archiver = nullptr;
  if (!config.archive_dir.empty() || !config.archive_url.empty()) {
    FileArchiverOptions archive;
    archive.dir = config.archive_dir;
    archive.max_bytes = config.archive_max_bytes;
    archive.timeout = config.archive_timeout;
    archive.allow_loopback = config.archive_allow_loopback;
    archive.min_bytes_per_second = config.archive_min_bytes_per_second;
    LogFields fields = {{"archive_max_bytes", absl::StrCat(config.archive_max_bytes)},
                        {"archive_timeout", absl::FormatDuration(config.archive_timeout)},
                        {"archive_allow_loopback",
                         config.archive_allow_loopback ? "true" : "false"}};
    if (config.archive_url.empty()) {
      auto archiver = FileArchiver::Create(archive, config.clock, &sc->metrics_);
      if (!archiver.ok()) return archiver.status();
      fields.emplace_back("archive_dir", (*archiver)->dir());
      sc->archiver_ = std::move(*archiver);
    } else {
      S3ArchiverOptions s3 = S3OptionsFrom(config);
      s3.env = s3::ProcessEnvironment();
      auto archiver = S3Archiver::Create(std::move(s3), archive, config.clock, &sc->metrics_);
      if (!archiver.ok()) return archiver.status();
      s3_archiver = archiver->get();
      fields.emplace_back("archive_url", s3_archiver->Describe());
      fields.emplace_back("archive_s3_endpoint", config.archive_s3_endpoint.empty()
                                                     ? "aws"
                                                     : config.archive_s3_endpoint);
      fields.emplace_back("archive_s3_region",
                          ResolveS3Region(config.archive_s3_region, s3::ProcessEnvironment()));
      fields.emplace_back("archive_credentials", s3_archiver->CredentialsSource());
      fields.emplace_back(s3_archiver->keeps_local_copy() ? "archive_dir" : "archive_staging_dir",
                          s3_archiver->local_dir());
      sc->archiver_ = std::move(*archiver);
    }
    LogEvent(LogLevel::kInfo, "archive_enabled", fields);
  }
  if (!config.redis_url.empty()) {
    fleet::FleetGateOptions fo;
    fo.redis.url = *fleet::RedisUrl::Parse(config.redis_url);  // validated
    if (!config.redis_password_file.empty()) {
      auto password = fleet::RedisPasswordFile::Open(config.redis_password_file);
      if (!password.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--redis_password_file: ", password.status().message()));
      }
      sc->redis_password_ = std::move(*password);
      fleet::RedisPasswordFile* file = sc->redis_password_.get();
      fo.redis.password = [file] { return file->Get(); };
    }
    if (fo.redis.url.tls) {
      fleet::RedisTlsOptions tls;
      tls.ca_file = config.redis_ca_file;
      tls.cert_file = config.redis_cert_file;
      tls.key_file = config.redis_key_file;
      tls.server_name = config.redis_tls_server_name;
      auto context = fleet::RedisTlsContext::Create(std::move(tls));
      if (!context.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("Redis TLS: ", context.status().message()));
      }
      fo.redis.tls = std::move(*context);
    }
    if (!fleet_key.ok()) return fleet_key.status();
    fo.api_key = *fleet_key;
    fo.current_api_key = [key_source] { return key_source->Get(); };
    fo.fleet_name = config.fleet_name;
    if (!config.api_key_previous_file.empty()) {
      // Read once: it only matters for the length of a rotation.
      auto previous = ApiKeySource::FromFile(config.api_key_previous_file,
                                             ApiKeyFileOptions{nullptr, absl::ZeroDuration()});
      if (!previous.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--api_key_previous_file: ", previous.status().message()));
      }
      absl::StatusOr<std::string> old = (*previous)->Get();
      if (!old.ok()) return old.status();
      fo.accepted_api_keys.push_back(*old);
    }
    fo.upstream_host = ParseUrl(config.upstream_url)->host;
    fo.fleet_qps = config.fleet_max_upstream_qps;
    fo.fleet_arrival_margin = config.fleet_arrival_margin;
    fo.poll_interval = config.hub.poll_interval;
    fo.terminal_cache_ttl = config.hub.terminal_cache_ttl;
    fo.metrics = &sc->metrics_;
    auto gate = fleet::FleetPollGate::Create(std::move(fo));
    if (!gate.ok()) return gate.status();
    sc->gate_ = std::move(*gate);
  }

  auto hub = PollHub::Create(config.hub, sc->client_.get(), config.clock, &sc->metrics_,
                             sc->gate_.get(), sc->archiver_.get());
  if (!hub.ok()) return hub.status();
  sc->hub_ = std::move(*hub);
  PollHub* h = sc->hub_.get();
  sc->metrics_.AddGauge("videotask_active_watches", "Open watches registered with the poll hub.",
                        [h] { return static_cast<double>(h->GetStats().active_watches); });
  sc->metrics_.AddGauge("videotask_watched_tasks", "Tasks with at least one watcher.",
                        [h] { return static_cast<double>(h->GetStats().watched_tasks); });
  sc->metrics_.AddGauge("videotask_cached_tasks",
                        "Tasks in memory: watched, lingering and cached terminal ones.",
                        [h] { return static_cast<double>(h->GetStats().tasks); });
  sc->metrics_.AddGauge("videotask_pending_gets", "GetVideoTask calls waiting for the upstream.",
                        [h] { return static_cast<double>(h->GetStats().pending_gets); });
  const double max_watches = static_cast<double>(config.hub.max_watches);
  sc->metrics_.AddGauge("videotask_max_watches", "The --max_watches limit.",
                        [max_watches] { return max_watches; });
  if (sc->gate_ != nullptr) {
    sc->metrics_.AddGauge("videotask_fleet_follower_tasks",
                          "Watched tasks another sidecar of the fleet polls for this one.",
                          [h] { return static_cast<double>(h->GetStats().following); });
  }
  // Creates: the vendor call with the upstream client's settings, the keys,
  // the spend guard, and the hub's budget shared with polls. In fleet mode
  // keys and spend guard live in the fleet's Redis (never in memory: Redis
  // down means UNAVAILABLE, not a possible second create) and creates take
  // the fleet's budget too.
  CurlUpstreamClient::Options create_opts = copts;
  create_opts.timeout = config.create_timeout;
  sc->vendor_create_ =
      std::make_unique<CurlVendorCreateClient>(create_opts, key_source, config.clock);
  Clock* clock = config.clock;
  UpstreamBudget* create_budget = h;
  if (sc->gate_ != nullptr) {
    fleet::RedisCreateKeyStore::Options ko;
    ko.ttl = config.create_dedup_ttl;
    sc->create_keys_ = std::make_unique<fleet::RedisCreateKeyStore>(
        sc->gate_->client(), sc->gate_->keys(), ko, clock, &sc->metrics_);
    sc->spend_guard_ = std::make_unique<fleet::RedisSpendGuard>(
        sc->gate_->client(), sc->gate_->keys(),
        fleet::RedisSpendGuard::Options{config.max_creates_per_hour, nullptr}, clock);
    sc->create_budget_ = std::make_unique<fleet::FleetCreateBudget>(h, sc->gate_.get());
    create_budget = sc->create_budget_.get();
  } else {
    sc->create_keys_ = std::make_unique<MemoryCreateKeyStore>(
        MemoryCreateKeyStore::Options{config.create_dedup_ttl, config.create_max_keys}, clock);
    sc->spend_guard_ = std::make_unique<MemorySpendGuard>(config.max_creates_per_hour, clock);
  }
  sc->creator_ = std::make_unique<Creator>(CreatorOptions(), sc->vendor_create_.get(),
                                           sc->create_keys_.get(), create_budget,
                                           sc->spend_guard_.get(), clock, &sc->metrics_);
  VideoTaskServiceOptions service_options = config.service;
  service_options.create_refusal = CreateRefusal(config);
  if (!service_options.create_refusal.ok()) {
    LogEvent(LogLevel::kInfo, "create_disabled",
             {{"reason", std::string(service_options.create_refusal.message())}});
  }
  sc->service_ = std::make_unique<VideoTaskServiceImpl>(h, config.clock, &sc->metrics_,
                                                        service_options, sc->creator_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Long-lived streams: ping idle connections so dead peers are noticed,
  // accept client keepalive pings down to 10 s, and allow as many streams
  // on one connection as the sidecar allows watches.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10 * 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // A port another process listens on is an error, not shared (gRPC's
  // default SO_REUSEPORT would split the connections between the two).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(std::min<int64_t>(config.hub.max_watches + 1000,
                                                                 1 << 30)));
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &sc->grpc_port_);
  builder.RegisterService(sc->service_.get());
  sc->server_ = builder.BuildAndStart();
  if (sc->server_ == nullptr || (!absl::StartsWith(config.listen, "unix:") && sc->grpc_port_ == 0)) {
    // A server that started stops like a running one, bounded and drained.
    sc->TearDown(kFailedStartGrace);
    return absl::UnavailableError(absl::StrCat("cannot listen on --listen=", config.listen));
  }
  if (absl::StartsWith(config.listen, "unix:")) {
    sc->target_ = config.listen;
    sc->grpc_port_ = 0;
  } else {
    auto hp = SplitHostPort("listen", config.listen);
    std::string host = hp->first == "0.0.0.0" || hp->first == "::" ? "127.0.0.1" : hp->first;
    if (absl::StrContains(host, ':')) host = absl::StrCat("[", host, "]");
    sc->target_ = absl::StrCat(host, ":", sc->grpc_port_);
  }
  grpc::HealthCheckServiceInterface* health = sc->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  if (s3_archiver != nullptr) {
    s3_archiver->SetCredentialsListener(
        [health](bool ok) { health->SetServingStatus(kArchiveHealthName, ok); });
  }

  LogEvent(LogLevel::kInfo, "sidecar_started",
           {{"listen", config.listen},
            {"grpc_target", sc->target_},
            {"metrics_port", absl::StrCat(sc->metrics_port_)},
            {"upstream_url", config.upstream_url},
            {"api_key_source", config.api_key_file.empty()
                                   ? absl::StrCat("env:", config.api_key_env)
                                   : absl::StrCat("file:", config.api_key_file)},
            {"poll_interval", Secs(config.hub.poll_interval)},
            {"heartbeat_interval", Secs(config.hub.heartbeat_interval)},
            {"upstream_timeout", Secs(config.upstream_timeout)},
            {"max_upstream_qps", absl::StrCat(config.hub.max_upstream_qps)},
            {"max_inflight", absl::StrCat(config.hub.max_inflight)},
            {"max_watches", absl::StrCat(config.hub.max_watches)},
            {"terminal_cache_ttl", Secs(config.hub.terminal_cache_ttl)},
            {"create", service_options.create_refusal.ok() ? "allowed" : "refused"},
            {"create_keys", sc->gate_ != nullptr ? "redis" : "memory"},
            {"create_dedup_ttl", Secs(config.create_dedup_ttl)},
            {"max_creates_per_hour", absl::StrCat(config.max_creates_per_hour)}});
  sc->stopped_ = false;
  if (config.allow_insecure_upstream) {
    auto url = ParseUrl(config.upstream_url);
    if (url.ok() && url->scheme == "http" && !IsLoopbackHost(url->host)) {
      LogEvent(LogLevel::kError, "insecure_upstream",
               {{"upstream_url", config.upstream_url},
                {"warning", "the API key is sent in clear text (--allow_insecure_upstream)"}});
    }
  }
  return sc;
}

void Sidecar::Drain() {
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus("", false);
    server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  }
  // Stuck streams are cut after a second instead of holding up shutdown.
  if (service_ != nullptr) service_->Drain();
  if (creator_ != nullptr) creator_->Shutdown();  // ends creates' waits
  if (hub_ != nullptr) hub_->Drain();
}

absl::Status Sidecar::StartMetrics() {
  if (config_.metrics_listen.empty()) return absl::OkStatus();
  auto hp = SplitHostPort("metrics_listen", config_.metrics_listen);
  metrics_server_ = std::make_unique<httplib::Server>();
  MetricsRegistry* registry = &metrics_;
  metrics_server_->Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  httplib::Server* ms = metrics_server_.get();
  ms->new_task_queue = [] { return new httplib::ThreadPool(2); };
  // SO_REUSEADDR only: httplib's default SO_REUSEPORT would let a second
  // process bind a port that is taken.
  ms->set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  if (hp->second == 0) {
    metrics_port_ = ms->bind_to_any_port(hp->first);
  } else {
    metrics_port_ = ms->bind_to_port(hp->first, hp->second) ? hp->second : -1;
  }
  if (metrics_port_ <= 0) {
    metrics_port_ = 0;
    metrics_server_.reset();  // nothing is bound
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --metrics_listen=", config_.metrics_listen));
  }
  metrics_thread_ = std::thread([ms, done = &metrics_done_] {
    ms->listen_after_bind();
    done->store(true);
  });
  return absl::OkStatus();
}

void Sidecar::StopMetrics() {
  if (metrics_server_ == nullptr) return;
  // httplib's stop() does nothing until the accept loop runs; wait for it
  // (or for the thread to have ended) so the socket is closed for sure.
  while (!metrics_server_->is_running() && !metrics_done_.load()) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  metrics_server_->stop();
  if (metrics_thread_.joinable()) metrics_thread_.join();
  metrics_server_.reset();
}

void Sidecar::Shutdown(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  TearDown(grace);
  LogEvent(LogLevel::kInfo, "sidecar_stopped");
}

void Sidecar::TearDown(absl::Duration grace) {
  if (torn_down_) return;
  torn_down_ = true;
  const absl::Time end = absl::Now() + std::max(grace, absl::ZeroDuration());
  if (server_ != nullptr) {
    Drain();
    // Drain() has ended every watch; let their UNAVAILABLE reach the clients
    // before connections close, within the grace.
    while (service_ != nullptr && service_->open_streams() > 0 && absl::Now() < end) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    // Idle client connections would hold Shutdown until the deadline; no
    // stream is left to protect, so give them only a moment.
    server_->Shutdown(absl::ToChronoTime(std::min(end, absl::Now() + kCloseConnections)));
    server_->Wait();
  }
  // The hub stops scheduling and stops calling the gate and the archiver;
  // then the client, the archiver and the gate complete what is outstanding
  // while the hub still exists (the hub applies it locally, never to the
  // fleet: an aborted archive must not become the fleet's state); the hub
  // itself goes last (~Sidecar). The gate goes last of the three: nothing
  // late can reach it.
  if (hub_ != nullptr) hub_->Shutdown();
  client_.reset();    // completes requests in flight; their results find the hub
  archiver_.reset();  // aborts downloads; their callbacks still find the hub
  // No create runs any more (the gRPC server has stopped); the fleet's key
  // store, spend guard and budget use the gate's Redis client: before it.
  creator_.reset();
  create_budget_.reset();
  spend_guard_.reset();
  create_keys_.reset();
  gate_.reset();      // completes pending admissions while the hub exists
  StopMetrics();
}

Sidecar::~Sidecar() {
  Shutdown(absl::ZeroDuration());
  TearDown(absl::ZeroDuration());  // what a Start that failed halfway left
  // Destroy the server and service before the hub they point to.
  server_.reset();
  service_.reset();  // waits for running creates
  creator_.reset();
  spend_guard_.reset();
  create_keys_.reset();
  vendor_create_.reset();
  hub_.reset();
}

}  // namespace videotask
