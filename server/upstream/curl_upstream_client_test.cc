// Integration tests of CurlUpstreamClient over loopback: against the
// simulated upstream (//tests/sim) and, for byte-exact cases, against small
// httplib servers defined here.
#include "server/upstream/curl_upstream_client.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/upstream/api_key.h"
#include "server/base/clock.h"
#include "server/upstream/upstream_client.h"
#include "tests/sim/sim_upstream.h"

namespace videotask {
namespace {

using ::videotask::sim::Fault;
using ::videotask::sim::FaultKind;
using ::videotask::sim::SimUpstream;
using ::videotask::sim::TaskScript;

constexpr char kKey[] = "sk-SECRET-1234";
constexpr char kPath[] = "/kyyReactApiServer/v1";

// Every result any test sees passes through here: the key, the bearer
// header and response bodies must never reach `detail`.
void CheckNoSecrets(const UpstreamResult& r) {
  EXPECT_FALSE(absl::StrContains(r.detail, kKey)) << r.detail;
  EXPECT_FALSE(absl::StrContains(r.detail, "SECRET")) << r.detail;
  EXPECT_FALSE(absl::StrContains(r.detail, "Bearer")) << r.detail;
  EXPECT_FALSE(absl::StrContains(r.detail, "BODYMARK")) << r.detail;
  EXPECT_FALSE(absl::StrContains(r.detail, "<html")) << r.detail;
  EXPECT_FALSE(absl::StrContains(r.code, "SECRET")) << r.code;
}

UpstreamResult Fetch(UpstreamClient& client, const std::string& id) {
  UpstreamResult r = FetchSync(client, id);
  CheckNoSecrets(r);
  return r;
}

std::shared_ptr<ApiKeySource> Key(const std::string& key = kKey) {
  auto src = ApiKeySource::FromValue(key);
  EXPECT_TRUE(src.ok()) << src.status();
  return std::shared_ptr<ApiKeySource>(std::move(*src));
}

std::unique_ptr<CurlUpstreamClient> MakeClient(
    const std::string& base_url,
    std::function<void(CurlUpstreamClient::Options&)> tweak = nullptr,
    std::shared_ptr<ApiKeySource> key = nullptr, Clock* clock = nullptr) {
  CurlUpstreamClient::Options options;
  options.base_url = base_url;
  options.timeout = absl::Seconds(10);
  if (tweak) tweak(options);
  auto client = CurlUpstreamClient::Create(options, key ? key : Key(), clock);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(*client) : nullptr;
}

// A tiny HTTP server on loopback for exact responses.
class RawServer {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

  explicit RawServer(Handler handler) {
    server_.set_keep_alive_timeout(1);
    server_.set_tcp_nodelay(true);
    server_.Get(R"(/kyyReactApiServer/v1/result/([^/]+))",
                [this, handler](const httplib::Request& req,
                                httplib::Response& res) {
                  {
                    absl::MutexLock lock(&mu_);
                    ++requests_;
                    ports_.insert(req.remote_port);
                  }
                  handler(req, res);
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~RawServer() {
    release_.Notify();
    // httplib's stop() does nothing before the accept loop runs: a server
    // stopped that early would never return from listen_after_bind().
    const absl::Time end = absl::Now() + absl::Seconds(10);
    while (!server_.is_running() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(1));
    server_.stop();
    thread_.join();
  }
  std::string base_url() const {
    return absl::StrCat("http://127.0.0.1:", port_, kPath);
  }
  int requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  size_t distinct_client_ports() {
    absl::MutexLock lock(&mu_);
    return ports_.size();
  }
  // For hanging handlers: released when the server goes away.
  absl::Notification& release() { return release_; }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  absl::Notification release_;
  absl::Mutex mu_;
  int requests_ = 0;
  std::set<int> ports_;
};

std::string TaskBody(const std::string& id, const std::string& status) {
  return absl::StrCat(R"({"id":")", id, R"(","object":"video","created":1761635478,)",
                      R"("model":"videos","status":")", status,
                      R"(","video_url":"https://cdn.example/)", id,
                      R"(.mp4","actualDuration":5.5,"error":null})");
}

// A port nothing listens on.
int ClosedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string TempDir() {
  const char* d = std::getenv("TEST_TMPDIR");
  return d != nullptr ? d : "/tmp";
}

// ---------------------------------------------------------------------------
// Options and helpers

TEST(CurlUpstreamClientTest, CreateValidatesOptions) {
  auto make = [](std::function<void(CurlUpstreamClient::Options&)> tweak) {
    CurlUpstreamClient::Options o;
    tweak(o);
    return CurlUpstreamClient::Create(o, Key(), nullptr).status();
  };
  EXPECT_TRUE(make([](auto&) {}).ok());
  EXPECT_TRUE(make([](auto& o) { o.base_url = "http://127.0.0.1:1/v1/"; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.base_url = "ftp://example.com/v1"; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.base_url = "example.com/v1"; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.base_url = ""; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.base_url = "https://"; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.base_url = "https://h/v1?x=1"; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.base_url = "https://h/v 1"; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.timeout = absl::ZeroDuration(); }).ok());
  EXPECT_FALSE(make([](auto& o) { o.timeout = -absl::Seconds(1); }).ok());
  EXPECT_FALSE(
      make([](auto& o) { o.connect_timeout = absl::ZeroDuration(); }).ok());
  EXPECT_FALSE(make([](auto& o) { o.max_body_bytes = 0; }).ok());
  EXPECT_FALSE(make([](auto& o) { o.ca_file = "/nonexistent/ca.pem"; }).ok());
  EXPECT_FALSE(
      CurlUpstreamClient::Create(CurlUpstreamClient::Options(), nullptr, nullptr)
          .ok());
}

TEST(CurlUpstreamClientTest, ResultUrl) {
  auto client = MakeClient("https://example.com/kyyReactApiServer/v1/");
  EXPECT_EQ(client->ResultUrl("proj_1"),
            "https://example.com/kyyReactApiServer/v1/result/proj_1");
}

TEST(CurlUpstreamClientTest, ParseRetryAfter) {
  const absl::Time now = absl::FromUnixSeconds(1761635478);
  using C = CurlUpstreamClient;
  EXPECT_EQ(C::ParseRetryAfter("7", now), absl::Seconds(7));
  EXPECT_EQ(C::ParseRetryAfter(" 120 ", now), absl::Seconds(120));
  EXPECT_EQ(C::ParseRetryAfter("0", now), absl::ZeroDuration());
  // 2025-10-28T07:11:18Z is `now`; 90 s later:
  EXPECT_EQ(C::ParseRetryAfter("Tue, 28 Oct 2025 07:12:48 GMT", now),
            absl::Seconds(90));
  EXPECT_EQ(C::ParseRetryAfter("Mon, 27 Oct 2025 07:11:18 GMT", now),
            absl::ZeroDuration());  // in the past
  EXPECT_EQ(C::ParseRetryAfter("", now), std::nullopt);
  EXPECT_EQ(C::ParseRetryAfter("soon", now), std::nullopt);
  EXPECT_EQ(C::ParseRetryAfter("-5", now), std::nullopt);
  EXPECT_EQ(C::ParseRetryAfter("1.5", now), std::nullopt);
  EXPECT_EQ(C::ParseRetryAfter("99999999999999999999999", now), std::nullopt);
}

// ---------------------------------------------------------------------------
// Exact responses from a local server

TEST(CurlUpstreamClientRawTest, SendsRequestAsDocumented) {
  absl::Mutex mu;
  std::string auth, ua, path, accept;
  RawServer server([&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    auth = req.get_header_value("Authorization");
    ua = req.get_header_value("User-Agent");
    accept = req.get_header_value("Accept");
    path = req.path;
    res.set_content(TaskBody("proj_1", "queued"), "application/json");
  });
  auto client = MakeClient(server.base_url());
  UpstreamResult r = Fetch(*client, "proj_1");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  absl::MutexLock lock(&mu);
  EXPECT_EQ(auth, absl::StrCat("Bearer ", kKey));
  EXPECT_EQ(ua, "videotask-sidecar/0.1");
  EXPECT_EQ(accept, "application/json");
  EXPECT_EQ(path, "/kyyReactApiServer/v1/result/proj_1");
}

TEST(CurlUpstreamClientRawTest, ReusesConnections) {
  RawServer server([](const httplib::Request& req, httplib::Response& res) {
    res.set_content(TaskBody(req.matches[1], "processing"), "application/json");
  });
  auto client = MakeClient(server.base_url());
  for (int i = 0; i < 4; ++i) {
    UpstreamResult r = Fetch(*client, "proj_reuse");
    ASSERT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  }
  EXPECT_EQ(server.requests(), 4);
  EXPECT_EQ(server.distinct_client_ports(), 1u);
}

TEST(CurlUpstreamClientRawTest, BodyExactlyAtCapPasses) {
  const std::string base = TaskBody("proj_cap", "completed");
  const size_t cap = 4096;
  const std::string exact = base + std::string(cap - base.size(), ' ');
  ASSERT_EQ(exact.size(), cap);
  for (bool chunked : {false, true}) {
    SCOPED_TRACE(chunked ? "chunked" : "content-length");
    RawServer server([&](const httplib::Request&, httplib::Response& res) {
      if (!chunked) {
        res.set_content(exact, "application/json");
        return;
      }
      res.set_chunked_content_provider(
          "application/json", [&](size_t offset, httplib::DataSink& sink) {
            // Several chunks, so the cap is checked across writes.
            const size_t n = std::min<size_t>(1000, exact.size() - offset);
            sink.write(exact.data() + offset, n);
            if (offset + n == exact.size()) sink.done();
            return true;
          });
    });
    auto client = MakeClient(server.base_url(), [&](auto& o) {
      o.max_body_bytes = cap;
    });
    UpstreamResult r = Fetch(*client, "proj_cap");
    EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.code << " " << r.detail;
    EXPECT_EQ(r.code, "200");
    EXPECT_EQ(r.task.video_url(), "https://cdn.example/proj_cap.mp4");
  }
}

TEST(CurlUpstreamClientRawTest, BodyOneOverCapIsTooLarge) {
  const std::string base = TaskBody("proj_cap", "completed");
  const size_t cap = 4096;
  const std::string over = base + std::string(cap + 1 - base.size(), ' ');
  for (bool chunked : {false, true}) {
    SCOPED_TRACE(chunked ? "chunked" : "content-length");
    RawServer server([&](const httplib::Request&, httplib::Response& res) {
      if (!chunked) {
        res.set_content(over, "application/json");
        return;
      }
      res.set_chunked_content_provider(
          "application/json", [&](size_t offset, httplib::DataSink& sink) {
            const size_t n = std::min<size_t>(1000, over.size() - offset);
            sink.write(over.data() + offset, n);
            if (offset + n == over.size()) sink.done();
            return true;
          });
    });
    auto client = MakeClient(server.base_url(), [&](auto& o) {
      o.max_body_bytes = cap;
    });
    UpstreamResult r = Fetch(*client, "proj_cap");
    EXPECT_EQ(r.outcome, UpstreamOutcome::kTransient);
    EXPECT_EQ(r.code, "body_too_large") << r.detail;
  }
}

TEST(CurlUpstreamClientRawTest, StatusCodesAndBodiesNeverInDetail) {
  struct Case {
    int status;
    std::string body;
    UpstreamOutcome want;
  };
  const std::string secret_body =
      R"({"error":"BODYMARK sk-SECRET-1234 Bearer"})";
  for (const Case& c : std::vector<Case>{
           {403, secret_body, UpstreamOutcome::kRejected},
           {401, secret_body, UpstreamOutcome::kRejected},
           {404, secret_body, UpstreamOutcome::kNotFound},
           {429, secret_body, UpstreamOutcome::kRateLimited},
           {500, secret_body, UpstreamOutcome::kTransient},
           {502, "<html>BODYMARK</html>", UpstreamOutcome::kTransient},
           {204, "", UpstreamOutcome::kTransient},
           {302, secret_body, UpstreamOutcome::kTransient},
           {418, secret_body, UpstreamOutcome::kTransient},
           {200, "<html><body>BODYMARK Bad Gateway</body></html>",
            UpstreamOutcome::kTransient},
           {200, R"({"status":"exploded","x":"BODYMARK"})",
            UpstreamOutcome::kTransient},
           {200, R"({"status":"queued","id":"BODYMARK"})",
            UpstreamOutcome::kTransient},
       }) {
    SCOPED_TRACE(c.status);
    RawServer server([&](const httplib::Request&, httplib::Response& res) {
      res.status = c.status;
      if (c.status == 302) res.set_header("Location", "http://127.0.0.1:1/x");
      if (!c.body.empty()) res.set_content(c.body, "application/json");
    });
    auto client = MakeClient(server.base_url());
    UpstreamResult r = Fetch(*client, "proj_codes");
    EXPECT_EQ(r.outcome, c.want) << r.detail;
    EXPECT_EQ(r.code, std::to_string(c.status));
    EXPECT_FALSE(r.detail.empty());
    EXPECT_EQ(server.requests(), 1);  // redirects are not followed
  }
}

TEST(CurlUpstreamClientRawTest, RetryAfterHttpDateUsesClock) {
  SimulatedClock clock(absl::FromUnixSeconds(1761635478));
  RawServer server([](const httplib::Request&, httplib::Response& res) {
    res.status = 429;
    res.set_header("Retry-After", "Tue, 28 Oct 2025 07:12:48 GMT");
  });
  auto client = MakeClient(server.base_url(), nullptr, nullptr, &clock);
  UpstreamResult r = Fetch(*client, "proj_429");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kRateLimited);
  EXPECT_EQ(r.retry_after, absl::Seconds(90));
}

TEST(CurlUpstreamClientRawTest, TimeoutOnHangingResponse) {
  RawServer server([&](const httplib::Request&, httplib::Response& res) {
    server.release().WaitForNotificationWithTimeout(absl::Seconds(30));
    res.set_content(TaskBody("proj_hang", "queued"), "application/json");
  });
  auto client = MakeClient(server.base_url(), [](auto& o) {
    o.timeout = absl::Milliseconds(300);
  });
  const absl::Time start = absl::Now();
  UpstreamResult r = Fetch(*client, "proj_hang");
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.outcome, UpstreamOutcome::kTransient);
  EXPECT_EQ(r.code, "timeout") << r.detail;
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_GE(r.latency, absl::Milliseconds(250));
}

TEST(CurlUpstreamClientRawTest, HangingRequestDoesNotHoldBackOthers) {
  RawServer server([&](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] == "proj_hang") {
      server.release().WaitForNotificationWithTimeout(absl::Seconds(30));
    }
    res.set_content(TaskBody(req.matches[1], "queued"), "application/json");
  });
  auto client = MakeClient(server.base_url());
  absl::Notification hung_done;
  client->Fetch("proj_hang", [&](UpstreamResult r) {
    CheckNoSecrets(r);
    hung_done.Notify();
  });
  for (int i = 0; i < 3; ++i) {
    UpstreamResult r = Fetch(*client, absl::StrCat("proj_other", i));
    EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  }
  EXPECT_FALSE(hung_done.HasBeenNotified());
  client.reset();  // completes the hanging one
  EXPECT_TRUE(hung_done.HasBeenNotified());
}

TEST(CurlUpstreamClientRawTest, ConnectErrorOnClosedPort) {
  auto client = MakeClient(
      absl::StrCat("http://127.0.0.1:", ClosedPort(), kPath));
  UpstreamResult r = Fetch(*client, "proj_closed");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kTransient);
  EXPECT_EQ(r.code, "connect_error") << r.detail;
  EXPECT_FALSE(r.detail.empty());
}

TEST(CurlUpstreamClientRawTest, TlsVerificationFailsAgainstPlainServer) {
  // https:// to a plain-HTTP port fails the TLS handshake; never downgraded.
  RawServer server([](const httplib::Request&, httplib::Response& res) {
    res.set_content(TaskBody("proj_tls", "queued"), "application/json");
  });
  std::string url = server.base_url();
  url.replace(0, 4, "https");
  auto client = MakeClient(url);
  UpstreamResult r = Fetch(*client, "proj_tls");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kTransient);
  EXPECT_NE(r.code, "200");
}

TEST(CurlUpstreamClientRawTest, InvalidIdCompletesInlineWithoutNetwork) {
  RawServer server([](const httplib::Request&, httplib::Response& res) {
    res.set_content("{}", "application/json");
  });
  auto client = MakeClient(server.base_url());
  for (const std::string& id :
       {std::string(".."), std::string("../admin"), std::string("a/b"),
        std::string("%2F"), std::string("a b"), std::string("a\n"),
        std::string(""), std::string(129, 'a')}) {
    bool ran = false;
    client->Fetch(id, [&](UpstreamResult r) {
      ran = true;
      CheckNoSecrets(r);
      EXPECT_EQ(r.outcome, UpstreamOutcome::kInvalidArgument);
      EXPECT_EQ(r.code, "invalid_id");
    });
    EXPECT_TRUE(ran) << "not inline: " << id;
  }
  EXPECT_EQ(server.requests(), 0);
}

TEST(CurlUpstreamClientRawTest, KeySourceFailureIsRejectedWithoutRequest) {
  class Failing : public ApiKeySource {
   public:
    absl::StatusOr<std::string> Get() override {
      return absl::FailedPreconditionError("cannot read API key file /k/key");
    }
  };
  RawServer server([](const httplib::Request&, httplib::Response& res) {
    res.set_content("{}", "application/json");
  });
  auto client = MakeClient(server.base_url(), nullptr,
                           std::make_shared<Failing>());
  UpstreamResult r = Fetch(*client, "proj_key");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kRejected);
  EXPECT_TRUE(absl::StartsWith(r.detail, "API key unavailable: ")) << r.detail;
  EXPECT_TRUE(absl::StrContains(r.detail, "/k/key"));
  EXPECT_EQ(server.requests(), 0);
}

TEST(CurlUpstreamClientRawTest, FetchFromCallback) {
  RawServer server([](const httplib::Request& req, httplib::Response& res) {
    res.set_content(TaskBody(req.matches[1], "queued"), "application/json");
  });
  auto client = MakeClient(server.base_url());
  absl::Notification done;
  std::atomic<int> count{0};
  std::function<void(UpstreamResult)> step = [&](UpstreamResult r) {
    EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
    if (count.fetch_add(1) + 1 < 3) {
      client->Fetch("proj_chain", [&](UpstreamResult r) { step(std::move(r)); });
    } else {
      done.Notify();
    }
  };
  client->Fetch("proj_chain", [&](UpstreamResult r) { step(std::move(r)); });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(count.load(), 3);
}

// ---------------------------------------------------------------------------
// Against the simulated upstream

class SimTest : public ::testing::Test {
 protected:
  void SetUp() override { StartSim(SimUpstream::Options()); }

  void StartSim(SimUpstream::Options options) {
    options.api_key = kKey;
    sim_.reset();
    auto sim = SimUpstream::Start(std::move(options));
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
  }

  std::unique_ptr<CurlUpstreamClient> Client(
      std::function<void(CurlUpstreamClient::Options&)> tweak = nullptr,
      std::shared_ptr<ApiKeySource> key = nullptr) {
    return MakeClient(sim_->base_url(), std::move(tweak), std::move(key),
                      &clock_);
  }

  SimulatedClock clock_;
  std::unique_ptr<SimUpstream> sim_;
};

// libcurl would re-send a request whose reused keep-alive connection died
// before an answer: the vendor would count both while the hub counted one
// (found by the chaos soak: the vendor saw more than --max_upstream_qps).
// The request is never sent twice; it is a transient failure instead.
TEST_F(SimTest, ARequestIsNeverSentTwiceOnADeadConnection) {
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("resent", hold);
  auto client = Client();
  UpstreamResult first = FetchSync(*client, "resent");  // opens the connection
  ASSERT_EQ(first.outcome, UpstreamOutcome::kOk) << first.detail;
  Fault reset;
  reset.kind = FaultKind::kReset;
  sim_->InjectFault("resent", reset);
  UpstreamResult second = FetchSync(*client, "resent");  // reuses it: reset
  EXPECT_EQ(sim_->RequestCount("resent"), 2) << "the request was sent twice";
  EXPECT_EQ(second.outcome, UpstreamOutcome::kTransient);
  EXPECT_EQ(second.code, "connection_lost") << second.detail;
  UpstreamResult third = FetchSync(*client, "resent");  // a new connection
  EXPECT_EQ(third.outcome, UpstreamOutcome::kOk) << third.detail;
}

TEST_F(SimTest, LifecycleFieldsMapped) {
  TaskScript script;
  script.queued_polls = 1;
  script.processing_polls = 1;
  script.model = "videos-pro";
  script.created = 1761635400;
  script.video_url = "https://cdn.invalid/out.mp4";
  script.actual_duration = 8.5;
  sim_->SetTask("proj_life", script);
  auto client = Client();

  UpstreamResult r = Fetch(*client, "proj_life");
  ASSERT_EQ(r.outcome, UpstreamOutcome::kOk) << r.code << " " << r.detail;
  EXPECT_EQ(r.code, "200");
  EXPECT_EQ(r.task.id(), "proj_life");
  EXPECT_EQ(r.task.status(), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(r.task.model(), "videos-pro");
  EXPECT_EQ(r.task.create_time().seconds(), 1761635400);
  EXPECT_EQ(r.task.observe_time().seconds(), absl::ToUnixSeconds(clock_.Now()));
  EXPECT_EQ(r.task.video_url(), "");

  r = Fetch(*client, "proj_life");
  ASSERT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  EXPECT_EQ(r.task.status(), v1::VIDEO_TASK_STATUS_PROCESSING);

  r = Fetch(*client, "proj_life");
  ASSERT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  EXPECT_EQ(r.task.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(r.task.video_url(), "https://cdn.invalid/out.mp4");
  EXPECT_EQ(r.task.actual_duration().seconds(), 8);
  EXPECT_EQ(r.task.actual_duration().nanos(), 500000000);
  EXPECT_EQ(r.task.error(), "");
  EXPECT_EQ(sim_->RequestCount("proj_life"), 3);
}

TEST_F(SimTest, FailedTaskCarriesError) {
  TaskScript script;
  script.queued_polls = 0;
  script.processing_polls = 0;
  script.fails = true;
  script.error = "unsupported reference material";
  sim_->SetTask("proj_fail", script);
  auto client = Client();
  UpstreamResult r;
  for (int i = 0; i < 4; ++i) {
    r = Fetch(*client, "proj_fail");
    ASSERT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
    if (r.task.status() == v1::VIDEO_TASK_STATUS_FAILED) break;
  }
  EXPECT_EQ(r.task.status(), v1::VIDEO_TASK_STATUS_FAILED);
  EXPECT_EQ(r.task.error(), "unsupported reference material");
  EXPECT_EQ(r.task.video_url(), "");
}

TEST_F(SimTest, NotFound) {
  auto client = Client();
  UpstreamResult r = Fetch(*client, "proj_unknown");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kNotFound);
  EXPECT_EQ(r.code, "404");
}

TEST_F(SimTest, WrongKeyIsRejected) {
  sim_->SetTask("proj_k", TaskScript());
  auto client = Client(nullptr, Key("sk-SECRET-WRONG-9999"));
  UpstreamResult r = Fetch(*client, "proj_k");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kRejected);
  EXPECT_EQ(r.code, "401");
  EXPECT_FALSE(absl::StrContains(r.detail, "WRONG"));
}

TEST_F(SimTest, FaultsClassified) {
  sim_->SetTask("proj_f", TaskScript());
  auto client = Client();
  struct Case {
    std::string name;
    Fault fault;
    UpstreamOutcome want;
    std::string code;
  };
  auto fault = [](FaultKind kind) {
    Fault f;
    f.kind = kind;
    return f;
  };
  Fault f403 = fault(FaultKind::kServerError);
  f403.http_status = 403;
  Fault f500 = fault(FaultKind::kServerError);
  f500.http_status = 500;
  Fault f503 = fault(FaultKind::kServerError);
  f503.http_status = 503;
  Fault f401 = fault(FaultKind::kUnauthorized);
  Fault f404 = fault(FaultKind::kNotFound);
  Fault oversized = fault(FaultKind::kOversized);
  oversized.body_bytes = 2 << 20;
  for (const Case& c : std::vector<Case>{
           {"403", f403, UpstreamOutcome::kRejected, "403"},
           {"401", f401, UpstreamOutcome::kRejected, "401"},
           {"404", f404, UpstreamOutcome::kNotFound, "404"},
           {"500", f500, UpstreamOutcome::kTransient, "500"},
           {"503", f503, UpstreamOutcome::kTransient, "503"},
           {"malformed", fault(FaultKind::kMalformedJson),
            UpstreamOutcome::kTransient, "200"},
           {"html", fault(FaultKind::kHtml), UpstreamOutcome::kTransient, "200"},
           {"unknown status", fault(FaultKind::kUnknownStatus),
            UpstreamOutcome::kTransient, "200"},
           {"oversized", oversized, UpstreamOutcome::kTransient,
            "body_too_large"},
       }) {
    SCOPED_TRACE(c.name);
    sim_->InjectFault("proj_f", c.fault);
    UpstreamResult r = Fetch(*client, "proj_f");
    EXPECT_EQ(r.outcome, c.want) << r.code << " " << r.detail;
    EXPECT_EQ(r.code, c.code) << r.detail;
    EXPECT_FALSE(r.detail.empty());
    if (c.code == "200") {
      EXPECT_TRUE(absl::StrContains(r.detail, "malformed")) << r.detail;
    }
  }
  // The faults are used up: the script answers again.
  UpstreamResult r = Fetch(*client, "proj_f");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
}

TEST_F(SimTest, RateLimitedRetryAfter) {
  sim_->SetTask("proj_rl", TaskScript());
  auto client = Client();
  auto fetch_with = [&](const std::string& header) {
    Fault f;
    f.kind = FaultKind::kRateLimit;
    f.retry_after_header = header;
    sim_->InjectFault("proj_rl", f);
    UpstreamResult r = Fetch(*client, "proj_rl");
    EXPECT_EQ(r.outcome, UpstreamOutcome::kRateLimited) << r.detail;
    EXPECT_EQ(r.code, "429");
    return r.retry_after;
  };
  EXPECT_EQ(fetch_with("7"), absl::Seconds(7));
  // An HTTP date 2 minutes after the client's clock.
  const std::string date = absl::FormatTime(
      "%a, %d %b %Y %H:%M:%S GMT", clock_.Now() + absl::Minutes(2),
      absl::UTCTimeZone());
  EXPECT_EQ(fetch_with(date), absl::Minutes(2));
  EXPECT_EQ(fetch_with(""), std::nullopt);
  EXPECT_EQ(fetch_with("whenever"), std::nullopt);
}

TEST_F(SimTest, OversizedBodyWithinCapPasses) {
  // The sim's normal answer is small: a tight cap that still fits passes.
  sim_->SetTask("proj_cap", TaskScript());
  auto client = Client([](auto& o) { o.max_body_bytes = 4096; });
  UpstreamResult r = Fetch(*client, "proj_cap");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  Fault f;
  f.kind = FaultKind::kOversized;
  f.body_bytes = 4097;
  sim_->InjectFault("proj_cap", f);
  r = Fetch(*client, "proj_cap");
  EXPECT_EQ(r.code, "body_too_large") << r.detail;
}

TEST_F(SimTest, TimeoutOnHang) {
  sim_->SetTask("proj_hang", TaskScript());
  Fault f;
  f.kind = FaultKind::kHang;
  f.delay = absl::Seconds(20);
  sim_->InjectFault("proj_hang", f);
  auto client = Client([](auto& o) { o.timeout = absl::Milliseconds(300); });
  const absl::Time start = absl::Now();
  UpstreamResult r = Fetch(*client, "proj_hang");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kTransient);
  EXPECT_EQ(r.code, "timeout") << r.detail;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(SimTest, InvalidIdsMakeNoRequest) {
  auto client = Client();
  for (const std::string& id :
       {std::string(".."), std::string("../admin"), std::string("a/b"),
        std::string("%2F"), std::string(" "), std::string("x\ny"),
        std::string(""), std::string(1000, 'a'), std::string("\xc3\xa9")}) {
    UpstreamResult r = Fetch(*client, id);
    EXPECT_EQ(r.outcome, UpstreamOutcome::kInvalidArgument);
    EXPECT_EQ(r.code, "invalid_id");
  }
  EXPECT_EQ(sim_->TotalRequests(), 0);
}

TEST_F(SimTest, ManyConcurrentFetches) {
  SimUpstream::Options options;
  options.serve_unknown_ids = true;
  StartSim(options);
  auto client = Client();
  constexpr int kN = 500;
  absl::Mutex mu;
  int done = 0, ok = 0;
  std::vector<int> calls(kN, 0);
  // From several threads at once.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kN; i += 4) {
        client->Fetch(absl::StrCat("proj_many_", i), [&, i](UpstreamResult r) {
          CheckNoSecrets(r);
          absl::MutexLock lock(&mu);
          ++calls[i];
          ++done;
          if (r.outcome == UpstreamOutcome::kOk &&
              r.task.id() == absl::StrCat("proj_many_", i)) {
            ++ok;
          }
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  absl::MutexLock lock(&mu);
  ASSERT_TRUE(mu.AwaitWithTimeout(
      absl::Condition(+[](int* d) { return *d == kN; }, &done),
      absl::Seconds(60)))
      << done;
  EXPECT_EQ(ok, kN);
  for (int i = 0; i < kN; ++i) EXPECT_EQ(calls[i], 1) << i;
}

TEST_F(SimTest, DestructorCompletesInFlightOnce) {
  sim_->SetTask("proj_dtor", TaskScript());
  Fault f;
  f.kind = FaultKind::kHang;
  f.count = -1;
  sim_->InjectFault("proj_dtor", f);
  auto client = Client([](auto& o) {
    o.timeout = absl::Seconds(60);
    o.max_host_connections = 4;  // the rest wait inside libcurl
  });
  constexpr int kN = 20;
  absl::Mutex mu;
  std::vector<int> calls(kN, 0);
  std::vector<std::string> details(kN);
  for (int i = 0; i < kN; ++i) {
    client->Fetch("proj_dtor", [&, i](UpstreamResult r) {
      CheckNoSecrets(r);
      absl::MutexLock lock(&mu);
      ++calls[i];
      details[i] = r.detail;
      EXPECT_EQ(r.outcome, UpstreamOutcome::kTransient);
    });
  }
  // Wait until requests are on the wire.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (sim_->RequestCount("proj_dtor") < 4 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GE(sim_->RequestCount("proj_dtor"), 4);
  const absl::Time start = absl::Now();
  client.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  absl::MutexLock lock(&mu);
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(calls[i], 1) << i;
    EXPECT_EQ(details[i], "client shutting down") << i;
  }
}

TEST_F(SimTest, KeyRotationViaFile) {
  sim_->SetTask("proj_rot", TaskScript());
  const std::string path = absl::StrCat(TempDir(), "/rot_key_", ::getpid());
  {
    std::ofstream f(path, std::ios::trunc);
    f << "sk-SECRET-old\n";
  }
  ApiKeyFileOptions manual;
  manual.check_interval = absl::ZeroDuration();  // checked by Refresh() below
  auto src = ApiKeySource::FromFile(path, manual);
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource* key = src->get();
  auto client = Client(nullptr, std::shared_ptr<ApiKeySource>(std::move(*src)));
  UpstreamResult r = Fetch(*client, "proj_rot");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kRejected) << r.detail;

  {
    std::ofstream f(path + ".new", std::ios::trunc);
    f << kKey << "\n";
  }
  ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
  key->Refresh();
  r = Fetch(*client, "proj_rot");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.code << " " << r.detail;
}

// The key file hangs (a FIFO without a writer blocks open(), like a hung
// mount) while its check runs: requests go on with the last good key.
TEST_F(SimTest, HungKeyFileDoesNotStallRequests) {
  sim_->SetTask("proj_hung", TaskScript());
  const std::string dir = absl::StrCat(TempDir(), "/hung_key_", ::getpid());
  ::mkdir(dir.c_str(), 0700);
  const std::string path = dir + "/key";
  {
    std::ofstream f(path, std::ios::trunc);
    f << kKey << "\n";
  }
  ApiKeyFileOptions manual;
  manual.check_interval = absl::ZeroDuration();
  auto src = ApiKeySource::FromFile(path, manual);
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource* key = src->get();
  auto client = Client(nullptr, std::shared_ptr<ApiKeySource>(std::move(*src)));
  ASSERT_EQ(::mkfifo((dir + "/fifo").c_str(), 0600), 0);
  ASSERT_EQ(std::rename((dir + "/fifo").c_str(), path.c_str()), 0);

  // The check hangs on a thread of its own, as the source's checker does.
  absl::Notification checked;
  std::thread checker([&] {
    key->Refresh();
    checked.Notify();
  });
  // Unblocks every open() of the FIFO (the check's, and a request's if it
  // read the file itself) until `done`, bounded; true if one was waiting.
  auto release_until = [&](const std::function<bool()>& done) {
    bool released = false;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!done() && absl::Now() < deadline) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        ::close(fd);
        released = true;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    return released;
  };

  // Requests below must really run while the check hangs: wait (bounded)
  // until a thread of this process is blocked in open(), per /proc.
  auto blocked_in_open = [] {
    const pid_t self = static_cast<pid_t>(::syscall(SYS_gettid));
    DIR* d = ::opendir("/proc/self/task");
    if (d == nullptr) return false;
    bool found = false;
    while (struct dirent* e = ::readdir(d)) {
      const pid_t tid = static_cast<pid_t>(std::atol(e->d_name));
      if (e->d_name[0] == '.' || tid == self) continue;
      std::ifstream f(absl::StrCat("/proc/self/task/", tid, "/syscall"));
      long nr = -1;
      if (f >> nr && nr == SYS_openat) found = true;
    }
    ::closedir(d);
    return found;
  };
  const absl::Time hang_deadline = absl::Now() + absl::Seconds(10);
  while (!blocked_in_open() && absl::Now() < hang_deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_TRUE(blocked_in_open()) << "the check never blocked in open()";

  for (int i = 0; i < 3; ++i) {
    absl::Notification fetched;
    UpstreamResult r;
    client->Fetch("proj_hung", [&](UpstreamResult result) {
      r = std::move(result);
      fetched.Notify();
    });
    const bool prompt = fetched.WaitForNotificationWithTimeout(absl::Seconds(5));
    EXPECT_TRUE(prompt) << "a request waited for the key file";
    if (!prompt) release_until([&] { return fetched.HasBeenNotified(); });
    fetched.WaitForNotification();
    CheckNoSecrets(r);
    EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.code << " " << r.detail;
    if (!prompt) break;
  }
  EXPECT_FALSE(checked.HasBeenNotified()) << "the check did not hang";
  EXPECT_TRUE(release_until([&] { return checked.HasBeenNotified(); }));
  checker.join();
  ASSERT_EQ(::unlink(path.c_str()), 0);  // so that nothing can hang on it now
  EXPECT_EQ(key->Get().value_or(""), kKey);  // the last good key
}

TEST_F(SimTest, SlowButWithinTimeout) {
  sim_->SetTask("proj_slow", TaskScript());
  Fault f;
  f.kind = FaultKind::kSlow;
  f.delay = absl::Milliseconds(200);
  sim_->InjectFault("proj_slow", f);
  RealClock real;
  auto client = MakeClient(sim_->base_url(), [](auto& o) {
    o.timeout = absl::Seconds(5);
  }, nullptr, &real);
  UpstreamResult r = Fetch(*client, "proj_slow");
  EXPECT_EQ(r.outcome, UpstreamOutcome::kOk) << r.detail;
  EXPECT_GE(r.latency, absl::Milliseconds(150));
}

}  // namespace
}  // namespace videotask
