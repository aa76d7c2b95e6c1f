#include "tests/sim/sim_upstream.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace videotask::sim {
namespace {

using json = nlohmann::json;

constexpr char kKey[] = "test-key";

struct Reply {
  int status = -1;  // -1: no HTTP answer
  std::string body;
  std::string content_type;
  std::string retry_after;
  bool has_retry_after = false;

  json Json() const { return json::parse(body, nullptr, false); }
  std::string Status() const {
    json j = Json();
    return j.is_object() && j.contains("status") && j["status"].is_string()
               ? j["status"].get<std::string>()
               : "<" + body.substr(0, 80) + ">";
  }
};

Reply ToReply(const httplib::Result& r) {
  Reply out;
  if (!r) return out;
  out.status = r->status;
  out.body = r->body;
  out.content_type = r->get_header_value("Content-Type");
  out.has_retry_after = r->has_header("Retry-After");
  out.retry_after = r->get_header_value("Retry-After");
  return out;
}

class SimUpstreamTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(SimUpstream::Options()); }

  void Start(SimUpstream::Options options) {
    client_.reset();
    sim_.reset();
    options.api_key = kKey;
    auto sim = SimUpstream::Start(std::move(options));
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    client_ = NewClient();
  }

  std::unique_ptr<httplib::Client> NewClient() {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", sim_->port());
    c->set_keep_alive(true);
    c->set_connection_timeout(5);
    c->set_read_timeout(10);
    c->set_tcp_nodelay(true);
    return c;
  }

  static std::string Path(const std::string& id) {
    return absl::StrCat("/kyyReactApiServer/v1/result/", id);
  }

  Reply Get(const std::string& id, const std::string& key = kKey) {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Authorization", absl::StrCat("Bearer ", key));
    return ToReply(client_->Get(Path(id).c_str(), h));
  }

  std::vector<std::string> Statuses(const std::string& id, int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) out.push_back(Get(id).Status());
    return out;
  }

  Reply Admin(const std::string& method, const std::string& path, const std::string& body = "") {
    if (method == "GET") return ToReply(client_->Get(path.c_str()));
    if (method == "PUT") return ToReply(client_->Put(path.c_str(), body, "application/json"));
    if (method == "POST") return ToReply(client_->Post(path.c_str(), body, "application/json"));
    if (method == "DELETE") return ToReply(client_->Delete(path.c_str()));
    ADD_FAILURE() << method;
    return Reply();
  }

  static TaskScript Script(int queued, int processing, bool fails = false) {
    TaskScript s;
    s.queued_polls = queued;
    s.processing_polls = processing;
    s.fails = fails;
    return s;
  }

  static Fault MakeFault(FaultKind kind, int count = 1) {
    Fault f;
    f.kind = kind;
    f.count = count;
    return f;
  }

  std::unique_ptr<SimUpstream> sim_;
  std::unique_ptr<httplib::Client> client_;
};

using Strings = std::vector<std::string>;

// ---- Lifecycles -----------------------------------------------------------

TEST_F(SimUpstreamTest, LifecycleByPollsCompletes) {
  TaskScript s = Script(2, 3);
  s.model = "videos-pro";
  s.created = 1761635400;
  s.actual_duration = 5.5;
  sim_->SetTask("proj_1", s);
  for (int i = 0; i < 5; ++i) {
    Reply r = Get("proj_1");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.content_type, "application/json");
    json j = r.Json();
    EXPECT_EQ(j["id"], "proj_1");
    EXPECT_EQ(j["object"], "video");
    EXPECT_EQ(j["model"], "videos-pro");
    EXPECT_EQ(j["created"], 1761635400);
    EXPECT_EQ(j["status"], i < 2 ? "queued" : "processing");
    EXPECT_TRUE(j["video_url"].is_null());
    EXPECT_TRUE(j["error"].is_null());
    EXPECT_FALSE(j.contains("actualDuration"));
  }
  for (int i = 0; i < 2; ++i) {  // terminal states stay
    json j = Get("proj_1").Json();
    EXPECT_EQ(j["status"], "completed");
    EXPECT_EQ(j["video_url"], "https://cdn.invalid/videos/proj_1.mp4");
    EXPECT_EQ(j["actualDuration"], 5.5);
    EXPECT_TRUE(j["error"].is_null());
  }
  EXPECT_EQ(sim_->RequestCount("proj_1"), 7);
}

TEST_F(SimUpstreamTest, LifecycleByPollsFails) {
  TaskScript s = Script(1, 1, /*fails=*/true);
  s.error = "prompt rejected";
  sim_->SetTask("proj_f", s);
  EXPECT_EQ(Statuses("proj_f", 2), (Strings{"queued", "processing"}));
  for (int i = 0; i < 2; ++i) {
    json j = Get("proj_f").Json();
    EXPECT_EQ(j["status"], "failed");
    EXPECT_EQ(j["error"], "prompt rejected");
    EXPECT_TRUE(j["video_url"].is_null());
    EXPECT_FALSE(j.contains("actualDuration"));
  }
}

TEST_F(SimUpstreamTest, ZeroPollsAndCustomUrl) {
  TaskScript s = Script(0, 0);
  s.video_url = "https://cdn.invalid/x.mp4";
  sim_->SetTask("now", s);
  json j = Get("now").Json();
  EXPECT_EQ(j["status"], "completed");
  EXPECT_EQ(j["video_url"], "https://cdn.invalid/x.mp4");
  sim_->SetTask("p", Script(0, 2));
  EXPECT_EQ(Statuses("p", 3), (Strings{"processing", "processing", "completed"}));
}

TEST_F(SimUpstreamTest, SetTaskRestartsTheScript) {
  sim_->SetTask("t", Script(1, 0));
  EXPECT_EQ(Statuses("t", 2), (Strings{"queued", "completed"}));
  sim_->SetTask("t", Script(1, 0));
  EXPECT_EQ(Statuses("t", 2), (Strings{"queued", "completed"}));
}

// Checks a timed lifecycle without depending on scheduling: each answer is
// judged by the bounds of the time since the first request it can have seen.
TEST_F(SimUpstreamTest, LifecycleByTime) {
  TaskScript s;
  s.queued_for = absl::Milliseconds(200);
  s.processing_for = absl::Milliseconds(200);
  s.queued_polls = 1000;  // ignored: the durations decide
  s.processing_polls = 1000;
  sim_->SetTask("timed", s);
  const absl::Time before_first = absl::Now();
  ASSERT_EQ(Get("timed").Status(), "queued");
  const absl::Time after_first = absl::Now();
  bool saw_processing = false;
  std::string status;
  int rank = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (status != "completed" && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    const absl::Time sent = absl::Now();
    status = Get("timed").Status();
    const absl::Time got = absl::Now();
    const absl::Duration lo = sent - after_first, hi = got - before_first;
    const int r = status == "queued" ? 0 : status == "processing" ? 1 : status == "completed" ? 2 : -1;
    ASSERT_GE(r, rank) << status;  // never goes back
    rank = r;
    if (status == "queued") {
      EXPECT_LT(lo, absl::Milliseconds(200));
    }
    if (status == "processing") {
      saw_processing = true;
      EXPECT_GE(hi, absl::Milliseconds(200));
      EXPECT_LT(lo, absl::Milliseconds(400));
    }
    if (status == "completed") {
      EXPECT_GE(hi, absl::Milliseconds(400));
    }
  }
  EXPECT_EQ(status, "completed");
  EXPECT_TRUE(saw_processing);
}

TEST_F(SimUpstreamTest, TimedQueueThenProcessingByPolls) {
  TaskScript s;
  s.queued_for = absl::Milliseconds(100);
  s.processing_polls = 2;
  sim_->SetTask("mixed", s);
  EXPECT_EQ(Get("mixed").Status(), "queued");
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(Statuses("mixed", 3), (Strings{"processing", "processing", "completed"}));
}

TEST_F(SimUpstreamTest, HoldsUntilComplete) {
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("h", hold);
  EXPECT_EQ(Statuses("h", 5), Strings(5, "queued"));
  EXPECT_EQ(sim_->TerminalServedAt("h"), absl::InfiniteFuture());
  sim_->Complete("h");
  const absl::Time before = absl::Now();
  json j = Get("h").Json();
  EXPECT_EQ(j["status"], "completed");
  EXPECT_EQ(j["video_url"], "https://cdn.invalid/videos/h.mp4");
  EXPECT_EQ(j["actualDuration"], 8.0);
  const absl::Time served = sim_->TerminalServedAt("h");
  EXPECT_GE(served, before);
  EXPECT_LE(served, absl::Now());
  EXPECT_EQ(Get("h").Status(), "completed");
  EXPECT_EQ(sim_->TerminalServedAt("h"), served);  // the first time only
}

TEST_F(SimUpstreamTest, HoldsUntilFail) {
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("h", hold);
  EXPECT_EQ(Statuses("h", 3), Strings(3, "queued"));
  sim_->Fail("h", "moderation");
  json j = Get("h").Json();
  EXPECT_EQ(j["status"], "failed");
  EXPECT_EQ(j["error"], "moderation");
  EXPECT_TRUE(j["video_url"].is_null());
}

TEST_F(SimUpstreamTest, CompleteOverridesARunningScript) {
  sim_->SetTask("c", Script(100, 100, /*fails=*/true));
  EXPECT_EQ(Get("c").Status(), "queued");
  sim_->Complete("c");
  EXPECT_EQ(Get("c").Status(), "completed");
}

// ---- Keys and ids ---------------------------------------------------------

TEST_F(SimUpstreamTest, WrongOrMissingKeyIs401) {
  sim_->SetTask("k", Script(1, 1));
  for (const std::string& key : {std::string("wrong"), std::string()}) {
    Reply r = Get("k", key);
    EXPECT_EQ(r.status, 401);
    json j = r.Json();
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_TRUE(j.contains("error"));
  }
  // Other schemes and a bare key are refused too.
  httplib::Headers h = {{"Authorization", kKey}};
  EXPECT_EQ(ToReply(client_->Get(Path("k").c_str(), h)).status, 401);
  h = {{"Authorization", absl::StrCat("Basic ", kKey)}};
  EXPECT_EQ(ToReply(client_->Get(Path("k").c_str(), h)).status, 401);
  EXPECT_EQ(sim_->RequestCount("k"), 4);
  // Refused requests do not advance the script.
  EXPECT_EQ(Get("k").Status(), "queued");
}

TEST_F(SimUpstreamTest, UnknownIdIs404) {
  Reply r = Get("nobody");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(r.Json().is_object()) << r.body;
  EXPECT_EQ(sim_->RequestCount("nobody"), 1);
}

TEST_F(SimUpstreamTest, ServeUnknownIdsRunsTheDefaultScript) {
  SimUpstream::Options o;
  o.serve_unknown_ids = true;
  o.default_script = Script(1, 2);
  Start(o);
  EXPECT_EQ(Statuses("any_1", 4), (Strings{"queued", "processing", "processing", "completed"}));
  EXPECT_EQ(Statuses("any_2", 2), (Strings{"queued", "processing"}));
}

// ---- Faults ---------------------------------------------------------------

TEST_F(SimUpstreamTest, RateLimitWithRetryAfter) {
  sim_->SetTask("r", Script(1, 1));
  Fault f = MakeFault(FaultKind::kRateLimit);
  f.retry_after_header = "2";
  sim_->InjectFault("r", f);
  sim_->InjectFault("r", MakeFault(FaultKind::kRateLimit));  // no header
  Fault date = MakeFault(FaultKind::kRateLimit);
  date.retry_after_header = "Wed, 21 Oct 2015 07:28:00 GMT";
  sim_->InjectFault("r", date);
  Reply r = Get("r");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.retry_after, "2");
  EXPECT_TRUE(r.Json().is_object());
  r = Get("r");
  EXPECT_EQ(r.status, 429);
  EXPECT_FALSE(r.has_retry_after);
  r = Get("r");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.retry_after, "Wed, 21 Oct 2015 07:28:00 GMT");
  // Faulted requests were counted but did not advance the script.
  EXPECT_EQ(sim_->RequestCount("r"), 3);
  EXPECT_EQ(Statuses("r", 3), (Strings{"queued", "processing", "completed"}));
}

TEST_F(SimUpstreamTest, ServerErrors) {
  sim_->SetTask("s", Script(1, 1));
  sim_->InjectFault("s", MakeFault(FaultKind::kServerError));
  Fault f500 = MakeFault(FaultKind::kServerError);
  f500.http_status = 500;
  sim_->InjectFault("s", f500);
  Reply r = Get("s");
  EXPECT_EQ(r.status, 503);
  EXPECT_TRUE(r.Json().is_object()) << r.body;
  EXPECT_EQ(Get("s").status, 500);
  EXPECT_EQ(Get("s").Status(), "queued");
}

TEST_F(SimUpstreamTest, MalformedJson) {
  sim_->SetTask("m", Script(1, 1));
  sim_->InjectFault("m", MakeFault(FaultKind::kMalformedJson));
  Reply r = Get("m");
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(r.body.empty());
  EXPECT_TRUE(r.Json().is_discarded()) << r.body;
}

TEST_F(SimUpstreamTest, Html) {
  sim_->SetTask("m", Script(1, 1));
  sim_->InjectFault("m", MakeFault(FaultKind::kHtml));
  Reply r = Get("m");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/html");
  EXPECT_NE(r.body.find("<html>"), std::string::npos);
  EXPECT_TRUE(r.Json().is_discarded());
}

TEST_F(SimUpstreamTest, OversizedBodies) {
  sim_->SetTask("o", Script(1, 1));
  sim_->InjectFault("o", MakeFault(FaultKind::kOversized));  // 2 MiB
  Fault small = MakeFault(FaultKind::kOversized);
  small.body_bytes = 4097;
  sim_->InjectFault("o", small);
  Fault tiny = MakeFault(FaultKind::kOversized);
  tiny.body_bytes = 10;
  sim_->InjectFault("o", tiny);
  Reply r = Get("o");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body.size(), size_t{2} << 20);
  EXPECT_EQ(r.Json()["id"], "o");  // only the size is wrong
  r = Get("o");
  EXPECT_EQ(r.body.size(), 4097u);
  EXPECT_EQ(r.Status(), "processing");
  EXPECT_EQ(Get("o").body.size(), 10u);
}

TEST_F(SimUpstreamTest, UnknownStatus) {
  sim_->SetTask("u", Script(1, 1));
  sim_->InjectFault("u", MakeFault(FaultKind::kUnknownStatus));
  Reply r = Get("u");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Status(), "exploded");
  EXPECT_EQ(r.Json()["id"], "u");
}

TEST_F(SimUpstreamTest, StatusFaultServesAnyStatusWithoutMovingTheScript) {
  sim_->SetTask("f", Script(1, 1));
  EXPECT_EQ(Get("f").Status(), "queued");
  EXPECT_EQ(Get("f").Status(), "processing");
  Fault back = MakeFault(FaultKind::kStatus);
  back.status = "queued";  // backwards
  sim_->InjectFault("f", back);
  Reply r = Get("f");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Status(), "queued");
  EXPECT_EQ(r.Json()["id"], "f");
  Fault done = MakeFault(FaultKind::kStatus);
  done.status = "failed";
  sim_->InjectFault("f", done);
  EXPECT_EQ(sim_->TerminalServedAt("f"), absl::InfiniteFuture());
  EXPECT_EQ(Get("f").Json()["error"], "unsupported reference material");
  // An injected terminal answer is a terminal answer served: the soak's
  // "redirect to loopback" must not pick a task a watcher already saw end.
  const absl::Time failed_at = sim_->TerminalServedAt("f");
  EXPECT_NE(failed_at, absl::InfiniteFuture());
  EXPECT_EQ(Get("f").Status(), "completed");  // the script's own next answer
  EXPECT_EQ(sim_->TerminalServedAt("f"), failed_at);  // the first time only
  EXPECT_EQ(sim_->ServedCount("f", "queued"), 2);
  EXPECT_EQ(sim_->ServedCount("f", "processing"), 1);
  EXPECT_EQ(sim_->ServedCount("f", "failed"), 1);
  EXPECT_EQ(sim_->ServedCount("f", "completed"), 1);
  EXPECT_EQ(sim_->ServedCount("g", "queued"), 0);
}

TEST_F(SimUpstreamTest, TruncatedBodyAndResetGiveNoAnswer) {
  sim_->SetTask("t", Script(1, 1));
  sim_->InjectFault("t", MakeFault(FaultKind::kTruncated));
  sim_->InjectFault("t", MakeFault(FaultKind::kReset));
  // A raw client sees the truncation: a Content-Length it never gets.
  httplib::Client raw("127.0.0.1", sim_->port());
  raw.set_read_timeout(5);
  std::string got;
  size_t promised = 0;
  auto res = raw.Get(Path("t").c_str(), {{"Authorization", absl::StrCat("Bearer ", kKey)}},
                     [&](const httplib::Response& r) {
                       promised = std::stoul(r.get_header_value("Content-Length"));
                       return true;
                     },
                     [&](const char* data, size_t n) {
                       got.append(data, n);
                       return true;
                     });
  EXPECT_FALSE(res);  // the read failed
  EXPECT_GT(promised, 0u);
  EXPECT_LT(got.size(), promised);
  EXPECT_FALSE(got.empty());
  EXPECT_EQ(Get("t").status, -1);  // reset: no HTTP answer at all
  EXPECT_EQ(Get("t").Status(), "queued");  // neither moved the script
  EXPECT_EQ(sim_->RequestCount("t"), 3);
  EXPECT_EQ(sim_->ServedCount("t", "queued"), 1);
  EXPECT_EQ(sim_->ServedCount("t", "completed"), 0);
}

TEST_F(SimUpstreamTest, ServedCountsRefusals) {
  sim_->SetTask("r", Script(1, 1));
  Get("r", "wrong");
  Get("ghost");
  sim_->InjectFault("r", MakeFault(FaultKind::kNotFound));
  Get("r");
  EXPECT_EQ(sim_->ServedCount("r", "401"), 1);
  EXPECT_EQ(sim_->ServedCount("ghost", "404"), 1);
  EXPECT_EQ(sim_->ServedCount("r", "404"), 1);
  EXPECT_EQ(sim_->ServedCount("r", "queued"), 0);
  sim_->ResetCounts();
  EXPECT_EQ(sim_->ServedCount("r", "401"), 0);
}

TEST_F(SimUpstreamTest, NotFoundAndUnauthorizedFaults) {
  sim_->SetTask("n", Script(1, 1));
  sim_->InjectFault("n", MakeFault(FaultKind::kNotFound));
  sim_->InjectFault("n", MakeFault(FaultKind::kUnauthorized));
  EXPECT_EQ(Get("n").status, 404);
  EXPECT_EQ(Get("n").status, 401);  // though the key is right
  EXPECT_EQ(Get("n").Status(), "queued");
}

TEST_F(SimUpstreamTest, SlowAnswersAfterTheDelay) {
  sim_->SetTask("s", Script(1, 1));
  Fault f = MakeFault(FaultKind::kSlow);
  f.delay = absl::Milliseconds(250);
  sim_->InjectFault("s", f);
  const absl::Time start = absl::Now();
  Reply r = Get("s");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Status(), "queued");  // a normal answer, from the script
  EXPECT_EQ(Get("s").Status(), "processing");
}

TEST_F(SimUpstreamTest, SlowOnAnUnknownIdIsStill404) {
  Fault f = MakeFault(FaultKind::kSlow);
  f.delay = absl::Milliseconds(10);
  sim_->InjectFault("", f);
  EXPECT_EQ(Get("ghost").status, 404);
}

TEST_F(SimUpstreamTest, HangWithAShortDelayEnds) {
  sim_->SetTask("h", Script(1, 1));
  Fault f = MakeFault(FaultKind::kHang);
  f.delay = absl::Milliseconds(200);
  sim_->InjectFault("h", f);
  const absl::Time start = absl::Now();
  Reply r = Get("h");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_GE(r.status, 500);
}

TEST_F(SimUpstreamTest, HangIsReleasedWhenTheServerStops) {
  sim_->SetTask("h", Script(1, 1));
  sim_->InjectFault("h", MakeFault(FaultKind::kHang, /*count=*/-1));  // 1 h each
  constexpr int kN = 3;
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  const int port = sim_->port();
  for (int i = 0; i < kN; ++i) {
    threads.emplace_back([&, port] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(60);
      httplib::Headers h = {{"Authorization", absl::StrCat("Bearer ", kKey)}};
      c.Get(Path("h").c_str(), h);
      ++finished;
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (sim_->RequestCount("h") < kN && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(sim_->RequestCount("h"), kN);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(finished, 0);
  const absl::Time start = absl::Now();
  client_.reset();
  sim_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  for (auto& t : threads) t.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_EQ(finished, kN);
}

TEST_F(SimUpstreamTest, FaultCountsAndScopes) {
  sim_->SetTask("a", Script(1, 1));
  sim_->SetTask("b", Script(1, 1));
  sim_->InjectFault("a", MakeFault(FaultKind::kServerError, 2));
  EXPECT_EQ(Get("b").Status(), "queued");  // another id: no fault
  EXPECT_EQ(Get("a").status, 503);
  EXPECT_EQ(Get("a").status, 503);
  EXPECT_EQ(Get("a").Status(), "queued");  // consumed
  // "" applies to any id, in order with the others.
  sim_->InjectFault("", MakeFault(FaultKind::kNotFound, 1));
  EXPECT_EQ(Get("b").status, 404);
  EXPECT_EQ(Get("a").Status(), "processing");
  // -1 lasts until ClearFaults().
  sim_->InjectFault("", MakeFault(FaultKind::kServerError, -1));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Get(i % 2 ? "a" : "b").status, 503);
  sim_->ClearFaults();
  EXPECT_EQ(Get("a").Status(), "completed");
  EXPECT_EQ(Get("b").Status(), "processing");
  // count 0 answers nothing.
  sim_->InjectFault("a", MakeFault(FaultKind::kServerError, 0));
  EXPECT_EQ(Get("a").status, 200);
}

TEST_F(SimUpstreamTest, FaultsPrecedeTheUnknownId404) {
  sim_->InjectFault("ghost", MakeFault(FaultKind::kRateLimit));
  EXPECT_EQ(Get("ghost").status, 429);
  EXPECT_EQ(Get("ghost").status, 404);
}

// ---- Counts ---------------------------------------------------------------

TEST_F(SimUpstreamTest, CountsTimesAndReset) {
  sim_->SetTask("a", Script(1, 1));
  const absl::Time start = absl::Now();
  Get("a");
  Get("a");
  Get("b");  // 404s count too
  Get("a", "wrong");
  const absl::Time end = absl::Now();
  EXPECT_EQ(sim_->RequestCount("a"), 3);
  EXPECT_EQ(sim_->RequestCount("b"), 1);
  EXPECT_EQ(sim_->RequestCount("c"), 0);
  EXPECT_EQ(sim_->TotalRequests(), 4);
  std::vector<absl::Time> times = sim_->RequestTimes();
  ASSERT_EQ(times.size(), 4u);
  for (size_t i = 0; i < times.size(); ++i) {
    EXPECT_GE(times[i], start);
    EXPECT_LE(times[i], end);
    if (i > 0) {
      EXPECT_GE(times[i], times[i - 1]);
    }
  }
  // Admin requests are not counted.
  Admin("GET", "/_sim/counts");
  EXPECT_EQ(sim_->TotalRequests(), 4);
  sim_->ResetCounts();
  EXPECT_EQ(sim_->RequestCount("a"), 0);
  EXPECT_EQ(sim_->TotalRequests(), 0);
  EXPECT_TRUE(sim_->RequestTimes().empty());
  // Resetting counts does not restart scripts.
  EXPECT_EQ(Get("a").Status(), "completed");
  EXPECT_EQ(sim_->RequestCount("a"), 1);
}

// ---- Connections ----------------------------------------------------------

TEST_F(SimUpstreamTest, KeepAliveReusesOneConnection) {
  sim_->SetTask("k", Script(1, 1));
  std::atomic<int> sockets{0};
  client_->set_socket_options([&](socket_t) { ++sockets; });
  for (int i = 0; i < 10; ++i) ASSERT_EQ(Get("k").status, 200);
  Get("k", "wrong");  // error answers keep the connection too
  Get("missing");
  EXPECT_EQ(Get("k").status, 200);
  EXPECT_EQ(sockets, 1);
}

TEST_F(SimUpstreamTest, StopsQuicklyWithIdleKeepAliveConnections) {
  sim_->SetTask("k", Script(1, 1));
  ASSERT_EQ(Get("k").status, 200);  // client_ keeps its connection open
  auto other = NewClient();
  ASSERT_EQ(ToReply(other->Get("/_sim/counts")).status, 200);
  // Waiting for the idle connections would take a read timeout (5 s) or
  // the keep-alive timeout (30 s).
  const absl::Time start = absl::Now();
  sim_.reset();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500));
}

TEST_F(SimUpstreamTest, AWorkerStillServesWhileAnotherHangs) {
  SimUpstream::Options o;
  o.threads = 2;
  Start(o);
  sim_->SetTask("h", Script(1, 1));
  sim_->SetTask("k", Script(1, 1));
  Fault f = MakeFault(FaultKind::kHang);
  f.delay = absl::Seconds(3);  // far above the bound below, for a loaded machine
  sim_->InjectFault("h", f);
  const int port = sim_->port();
  std::thread hung([port] {
    httplib::Client c("127.0.0.1", port);
    httplib::Headers h = {{"Authorization", absl::StrCat("Bearer ", kKey)}};
    c.Get(Path("h").c_str(), h);
  });
  while (sim_->RequestCount("h") < 1) absl::SleepFor(absl::Milliseconds(5));
  // One worker hangs; the other still serves (on a fresh connection).
  const absl::Time start = absl::Now();
  client_->set_keep_alive(false);
  EXPECT_EQ(Get("k").status, 200);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500)) << "served after the hang";
  hung.join();
}

TEST_F(SimUpstreamTest, PortInUseIsAnError) {
  SimUpstream::Options o;
  o.port = sim_->port();
  auto second = SimUpstream::Start(o);
  EXPECT_FALSE(second.ok());
  EXPECT_EQ(sim_->base_url(),
            absl::StrCat("http://127.0.0.1:", sim_->port(), "/kyyReactApiServer/v1"));
}

// ---- Admin endpoints ------------------------------------------------------

TEST_F(SimUpstreamTest, AdminPutTask) {
  Reply r = Admin("PUT", "/_sim/tasks/proj_x", R"({
      "queued_polls": 1, "processing_polls": 2, "fails": false, "advances": true,
      "video_url": "https://cdn.invalid/v.mp4", "actual_duration": 6.5,
      "model": "videos-hd", "created": 1761635000})");
  EXPECT_EQ(r.status, 204) << r.body;
  EXPECT_EQ(Statuses("proj_x", 3), (Strings{"queued", "processing", "processing"}));
  json j = Get("proj_x").Json();
  EXPECT_EQ(j["status"], "completed");
  EXPECT_EQ(j["video_url"], "https://cdn.invalid/v.mp4");
  EXPECT_EQ(j["actualDuration"], 6.5);
  EXPECT_EQ(j["model"], "videos-hd");
  EXPECT_EQ(j["created"], 1761635000);

  // An empty body takes the defaults: queued 1, processing 1, completed.
  EXPECT_EQ(Admin("PUT", "/_sim/tasks/d").status, 204);
  EXPECT_EQ(Statuses("d", 3), (Strings{"queued", "processing", "completed"}));

  EXPECT_EQ(Admin("PUT", "/_sim/tasks/f", R"({"queued_polls":0,"processing_polls":0,
      "fails":true,"error":"nope"})").status, 204);
  j = Get("f").Json();
  EXPECT_EQ(j["status"], "failed");
  EXPECT_EQ(j["error"], "nope");

  EXPECT_EQ(Admin("PUT", "/_sim/tasks/t", R"({"queued_for_ms":100,"processing_for_ms":0,
      "processing_polls":0})").status, 204);
  EXPECT_EQ(Get("t").Status(), "queued");
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(Get("t").Status(), "completed");
}

TEST_F(SimUpstreamTest, AdminCompleteAndFail) {
  ASSERT_EQ(Admin("PUT", "/_sim/tasks/c", R"({"advances": false})").status, 204);
  ASSERT_EQ(Admin("PUT", "/_sim/tasks/f", R"({"advances": false})").status, 204);
  ASSERT_EQ(Admin("PUT", "/_sim/tasks/g", R"({"advances": false})").status, 204);
  EXPECT_EQ(Statuses("c", 3), Strings(3, "queued"));
  EXPECT_EQ(Admin("POST", "/_sim/tasks/c/complete").status, 204);
  EXPECT_EQ(Get("c").Status(), "completed");
  EXPECT_EQ(Admin("POST", "/_sim/tasks/f/fail", R"({"error": "content policy"})").status, 204);
  json j = Get("f").Json();
  EXPECT_EQ(j["status"], "failed");
  EXPECT_EQ(j["error"], "content policy");
  EXPECT_EQ(Admin("POST", "/_sim/tasks/g/fail").status, 204);  // body optional
  j = Get("g").Json();
  EXPECT_EQ(j["status"], "failed");
  EXPECT_TRUE(j["error"].is_string());
}

TEST_F(SimUpstreamTest, AdminFaultsOfEveryKind) {
  sim_->SetTask("a", Script(1000, 1));
  struct Case {
    std::string body;
    int status;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"id":"a","kind":"rate_limit","retry_after":"7"})", 429},
           {R"({"id":"a","kind":"server_error"})", 503},
           {R"({"id":"a","kind":"server_error","http_status":502})", 502},
           {R"({"id":"a","kind":"malformed_json"})", 200},
           {R"({"id":"a","kind":"html"})", 200},
           {R"({"id":"a","kind":"oversized","body_bytes":5000})", 200},
           {R"({"id":"a","kind":"unknown_status"})", 200},
           {R"({"id":"a","kind":"not_found"})", 404},
           {R"({"id":"a","kind":"unauthorized"})", 401},
           {R"({"id":"a","kind":"slow","delay_ms":50})", 200},
           {R"({"id":"a","kind":"hang","delay_ms":50})", 504},
           {R"({"id":"a","kind":"status","status":"failed"})", 200},
           {R"({"id":"a","kind":"truncated"})", -1},
           {R"({"id":"a","kind":"reset"})", -1},
       }) {
    SCOPED_TRACE(c.body);
    Reply admin = Admin("POST", "/_sim/faults", c.body);
    ASSERT_EQ(admin.status, 204) << admin.body;
    Reply r = Get("a");
    EXPECT_EQ(r.status, c.status);
    if (c.body.find("rate_limit") != std::string::npos) {
      EXPECT_EQ(r.retry_after, "7");
    }
    if (c.body.find("oversized") != std::string::npos) {
      EXPECT_EQ(r.body.size(), 5000u);
    }
    if (c.body.find("unknown_status") != std::string::npos) {
      EXPECT_EQ(r.Status(), "exploded");
    }
    if (c.body.find("html") != std::string::npos) {
      EXPECT_EQ(r.content_type, "text/html");
    }
    if (c.body.find("malformed") != std::string::npos) {
      EXPECT_TRUE(r.Json().is_discarded());
    }
    if (c.body.find("slow") != std::string::npos) {
      EXPECT_EQ(r.Status(), "queued");
    }
    if (c.body.find("\"status\"") != std::string::npos) {
      EXPECT_EQ(r.Status(), "failed");
    }
    EXPECT_EQ(Get("a").Status(), "queued");  // count 1 by default
  }
  // Any id, several times, then DELETE clears.
  ASSERT_EQ(Admin("POST", "/_sim/faults", R"({"kind":"server_error","count":-1})").status, 204);
  sim_->SetTask("b", Script(1, 1));
  EXPECT_EQ(Get("a").status, 503);
  EXPECT_EQ(Get("b").status, 503);
  EXPECT_EQ(Get("b").status, 503);
  EXPECT_EQ(Admin("DELETE", "/_sim/faults").status, 204);
  EXPECT_EQ(Get("b").Status(), "queued");
  ASSERT_EQ(Admin("POST", "/_sim/faults", R"({"id":"b","kind":"html","count":2})").status, 204);
  EXPECT_EQ(Get("b").content_type, "text/html");
  EXPECT_EQ(Get("b").content_type, "text/html");
  EXPECT_EQ(Get("b").Status(), "processing");
}

TEST_F(SimUpstreamTest, AdminCountsAndReset) {
  sim_->SetTask("a", Script(1, 1));
  Get("a");
  Get("a");
  Get("zz");
  Reply r = Admin("GET", "/_sim/counts");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(r.Json(), json::parse(R"({"total":3,"tasks":{"a":2,"zz":1}})"));
  EXPECT_EQ(Admin("POST", "/_sim/reset").status, 204);
  EXPECT_EQ(Admin("GET", "/_sim/counts").Json(), json::parse(R"({"total":0,"tasks":{}})"));
  EXPECT_EQ(sim_->TotalRequests(), 0);
  EXPECT_EQ(Get("a").Status(), "completed");  // scripts keep their place
}

TEST_F(SimUpstreamTest, AdminBadInputIs400) {
  struct Case {
    std::string method, path, body;
  };
  for (const Case& c : std::vector<Case>{
           {"PUT", "/_sim/tasks/x", "not json"},
           {"PUT", "/_sim/tasks/x", "[1,2]"},
           {"PUT", "/_sim/tasks/x", "42"},
           {"PUT", "/_sim/tasks/x", R"({"queued_polls":"3"})"},
           {"PUT", "/_sim/tasks/x", R"({"queued_polls":-1})"},
           {"PUT", "/_sim/tasks/x", R"({"queued_polls":1.5})"},
           {"PUT", "/_sim/tasks/x", R"({"processing_polls":1e30})"},
           {"PUT", "/_sim/tasks/x", R"({"queued_for_ms":-5})"},
           {"PUT", "/_sim/tasks/x", R"({"fails":"yes"})"},
           {"PUT", "/_sim/tasks/x", R"({"advances":1})"},
           {"PUT", "/_sim/tasks/x", R"({"video_url":5})"},
           {"PUT", "/_sim/tasks/x", R"({"actual_duration":"8"})"},
           {"PUT", "/_sim/tasks/x", R"({"created":"today"})"},
           {"POST", "/_sim/tasks/x/fail", "{"},
           {"POST", "/_sim/tasks/x/fail", R"({"error":3})"},
           {"POST", "/_sim/faults", ""},
           {"POST", "/_sim/faults", "{}"},
           {"POST", "/_sim/faults", R"({"kind":"meteor"})"},
           {"POST", "/_sim/faults", R"({"kind":5})"},
           {"POST", "/_sim/faults", R"({"kind":"hang","count":0})"},
           {"POST", "/_sim/faults", R"({"kind":"hang","count":-2})"},
           {"POST", "/_sim/faults", R"({"kind":"hang","count":"1"})"},
           // Above INT64_MAX: read as -1 ("until cleared") before the fix.
           {"POST", "/_sim/faults", R"({"kind":"hang","count":18446744073709551615})"},
           {"PUT", "/_sim/tasks/x", R"({"queued_polls":18446744073709551615})"},
           {"POST", "/_sim/faults", R"({"kind":"server_error","http_status":42})"},
           {"POST", "/_sim/faults", R"({"kind":"server_error","http_status":600})"},
           {"POST", "/_sim/faults", R"({"kind":"oversized","body_bytes":-1})"},
           {"POST", "/_sim/faults", R"({"kind":"oversized","body_bytes":1e12})"},
           {"POST", "/_sim/faults", R"({"kind":"slow","delay_ms":-1})"},
           {"POST", "/_sim/faults", R"({"kind":"slow","delay_ms":"fast"})"},
           {"POST", "/_sim/faults", R"({"kind":"rate_limit","retry_after":2})"},
           {"POST", "/_sim/faults", "{\"kind\":\"rate_limit\",\"retry_after\":\"2\\r\\nX: y\"}"},
           {"POST", "/_sim/faults", R"({"kind":"rate_limit","id":7})"},
           {"POST", "/_sim/faults", R"({"kind":"status","status":2})"},
       }) {
    SCOPED_TRACE(c.method + " " + c.path + " " + c.body);
    Reply r = Admin(c.method, c.path, c.body);
    EXPECT_EQ(r.status, 400);
    json j = r.Json();
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << r.body;
  }
  // Nothing was changed by the refused requests.
  EXPECT_EQ(Get("x").status, 404);
  // Unknown admin paths are 404 with a JSON body.
  Reply r = Admin("GET", "/_sim/nothing");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(r.Json().is_object()) << r.body;
}

// ---- The video host -------------------------------------------------------

std::string ExpectedVideo(const std::string& id, size_t n) {
  std::string out(n, '\0');
  VideoBytes(id, 0, out.data(), n);
  return out;
}

TEST(VideoBytesTest, AnyRangeMatchesTheWholeStream) {
  const std::string all = ExpectedVideo("v1", 1000);
  for (size_t off : {0, 1, 7, 8, 9, 500, 999}) {
    for (size_t n : {0, 1, 3, 8, 17}) {
      if (off + n > all.size()) continue;
      std::string part(n, '\0');
      VideoBytes("v1", off, part.data(), n);
      EXPECT_EQ(part, all.substr(off, n)) << off << " " << n;
    }
  }
  EXPECT_NE(ExpectedVideo("v2", 64), all.substr(0, 64));
}

TEST_F(SimUpstreamTest, VideoHostServesGeneratedBytesAndCountsKeys) {
  VideoScript v;
  v.size_bytes = 300000;
  sim_->SetVideo("v", v);
  Reply r = ToReply(client_->Get("/videos/v.mp4"));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "video/mp4");
  EXPECT_EQ(r.body, ExpectedVideo("v", 300000));
  EXPECT_EQ(sim_->VideoAuthorizationCount(), 0);
  // Unscripted ids get the default video (1 MiB); a key sent is counted.
  Reply d = ToReply(client_->Get("/videos/other", {{"Authorization", "Bearer x"}}));
  ASSERT_EQ(d.status, 200);
  EXPECT_EQ(d.body, ExpectedVideo("other", 1 << 20));
  EXPECT_EQ(sim_->VideoAuthorizationCount(), 1);
  EXPECT_EQ(sim_->VideoRequestCount("v"), 1);
  EXPECT_EQ(sim_->VideoRequestCount("other"), 1);
  EXPECT_EQ(sim_->TotalRequests(), 0);  // not upstream requests
  EXPECT_EQ(Admin("GET", "/_sim/video_counts").Json(),
            json::parse(R"({"total":2,"authorization":1,"videos":{"v":1,"other":1}})"));
  EXPECT_EQ(Admin("POST", "/_sim/reset").status, 204);
  EXPECT_EQ(sim_->VideoAuthorizationCount(), 0);
  EXPECT_EQ(sim_->VideoRequestCount("v"), 0);
  // Chunked, another type.
  v.chunked = true;
  v.content_type = "video/webm";
  sim_->SetVideo("v", v);
  r = ToReply(client_->Get("/videos/v"));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "video/webm");
  EXPECT_EQ(r.body, ExpectedVideo("v", 300000));
}

TEST_F(SimUpstreamTest, VideoFaultsAndRedirects) {
  ASSERT_EQ(Admin("PUT", "/_sim/videos/t",
                  R"({"size_bytes":200000,"fault":"truncated","fault_count":1})")
                .status,
            204);
  EXPECT_EQ(ToReply(client_->Get("/videos/t.mp4")).status, -1);  // cut short
  Reply ok = ToReply(client_->Get("/videos/t.mp4"));            // the fault answered one request
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, ExpectedVideo("t", 200000));
  ASSERT_EQ(
      Admin("PUT", "/_sim/videos/w", R"({"size_bytes":1000,"fault":"wrong_length"})").status,
      204);
  EXPECT_EQ(ToReply(client_->Get("/videos/w.mp4")).status, -1);
  ASSERT_EQ(Admin("PUT", "/_sim/videos/n", R"({"fault":"not_found"})").status, 204);
  EXPECT_EQ(ToReply(client_->Get("/videos/n.mp4")).status, 404);
  ASSERT_EQ(
      Admin("PUT", "/_sim/videos/e", R"({"fault":"server_error","fault_count":2})").status,
      204);
  EXPECT_EQ(ToReply(client_->Get("/videos/e.mp4")).status, 503);
  EXPECT_EQ(ToReply(client_->Get("/videos/e.mp4")).status, 503);
  EXPECT_EQ(ToReply(client_->Get("/videos/e.mp4")).status, 200);
  // Two hops on the sim itself, then the video.
  ASSERT_EQ(Admin("PUT", "/_sim/videos/r", R"({"size_bytes":10,"redirect_hops":2})").status, 204);
  httplib::Result first = client_->Get("/videos/r.mp4");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 302);
  EXPECT_EQ(first->get_header_value("Location"),
            absl::StrCat("http://127.0.0.1:", sim_->port(), "/videos/r.mp4?hop=1"));
  client_->set_follow_location(true);
  Reply followed = ToReply(client_->Get("/videos/r.mp4"));
  EXPECT_EQ(followed.status, 200);
  EXPECT_EQ(followed.body, ExpectedVideo("r", 10));
  EXPECT_EQ(sim_->VideoRequestCount("r"), 4);
  client_->set_follow_location(false);
  ASSERT_EQ(Admin("PUT", "/_sim/videos/x",
                  R"({"redirect_location":"http://video.invalid/x.mp4"})").status, 204);
  httplib::Result away = client_->Get("/videos/x.mp4");
  ASSERT_TRUE(away);
  EXPECT_EQ(away->status, 302);
  EXPECT_EQ(away->get_header_value("Location"), "http://video.invalid/x.mp4");
  for (const char* bad : {"[]", R"({"size_bytes":-1})", R"({"fault":"meteor"})",
                          R"({"fault_count":-2})", R"({"redirect_hops":"2"})",
                          R"({"chunk_delay_ms":-1})", R"({"chunked":1})",
                          "{\"content_type\":\"a\\r\\nX: y\"}"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(Admin("PUT", "/_sim/videos/x", bad).status, 400);
  }
}

TEST_F(SimUpstreamTest, SlowVideoIsReleasedWhenTheSimStops) {
  VideoScript v;
  v.size_bytes = 10 << 20;
  v.chunk_delay = absl::Hours(1);
  sim_->SetVideo("slow", v);
  std::thread t([port = sim_->port()] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30);
    c.Get("/videos/slow.mp4");
  });
  while (sim_->VideoRequestCount("slow") == 0) absl::SleepFor(absl::Milliseconds(5));
  const absl::Time start = absl::Now();
  sim_.reset();
  t.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST_F(SimUpstreamTest, VideoUrlsOnSim) {
  SimUpstream::Options o;
  o.video_urls_on_sim = true;
  Start(o);
  sim_->SetTask("done", Script(0, 0));
  Reply r = Get("done");
  ASSERT_EQ(r.Status(), "completed");
  EXPECT_EQ(r.Json()["video_url"], sim_->VideoUrl("done"));
  EXPECT_EQ(sim_->VideoUrl("done"),
            absl::StrCat("http://127.0.0.1:", sim_->port(), "/videos/done.mp4"));
}

}  // namespace
}  // namespace videotask::sim

// ---- Creates ----------------------------------------------------------------

namespace videotask::sim {
namespace {

class SimCreateTest : public SimUpstreamTest {
 protected:
  Reply Create(const std::string& family, const std::string& body,
               const std::string& key = kKey) {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Authorization", absl::StrCat("Bearer ", key));
    return ToReply(client_->Post(absl::StrCat("/kyyReactApiServer/v1/", family, "/videos").c_str(),
                                 h, body, "application/json"));
  }
};

TEST_F(SimCreateTest, BothShapesCreateAPollableTaskAndTheBodyIsRecordedAsSent) {
  const std::string body = R"({"model":"videos","prompt":"a cat","duration":10})";
  Reply a = Create("videos", body);
  ASSERT_EQ(a.status, 200);
  json ja = json::parse(a.body);
  EXPECT_EQ(ja["code"], "0");
  const std::string pid = ja["data"]["projectId"];
  EXPECT_EQ(Get(pid).Status(), "queued");
  Reply b = Create("kyyvideo2", R"({"model":"kyyvideo2_fast","prompt":"p","duration":5})");
  ASSERT_EQ(b.status, 200);
  json jb = json::parse(b.body);
  EXPECT_EQ(jb["object"], "video");
  EXPECT_EQ(jb["status"], "queued");
  EXPECT_EQ(jb["model"], "kyyvideo2_fast");
  EXPECT_EQ(Get(jb["id"]).Status(), "queued");
  std::vector<ReceivedCreate> creates = sim_->Creates();
  ASSERT_EQ(creates.size(), 2u);
  EXPECT_EQ(creates[0].body, body);
  EXPECT_EQ(creates[0].id, pid);
  EXPECT_EQ(creates[1].family, "kyyvideo2");
  EXPECT_EQ(sim_->CreatedCount(), 2);
  Reply listed = Admin("GET", "/_sim/creates");
  EXPECT_EQ(json::parse(listed.body)["creates"][0]["body"], body);
}

TEST_F(SimCreateTest, RefusalsInBothShapesAndTheKey) {
  Reply a = Create("videos", R"({"model":"videos"})");
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(json::parse(a.body)["code"], "400");
  EXPECT_EQ(Create("sora", "[1]").status, 400);
  EXPECT_EQ(Create("sora", R"({"prompt":"p"})", "wrong").status, 401);
  EXPECT_EQ(sim_->CreatedCount(), 0);
  EXPECT_EQ(sim_->Creates().size(), 3u);
}

TEST_F(SimCreateTest, FaultScripts) {
  const std::string body = R"({"prompt":"p"})";
  ASSERT_EQ(Admin("POST", "/_sim/create_faults",
                  R"({"kind":"rate_limit","retry_after":"2","family":"sora"})").status, 204);
  ASSERT_EQ(Admin("POST", "/_sim/create_faults", R"({"kind":"server_error"})").status, 204);
  ASSERT_EQ(Admin("POST", "/_sim/create_faults",
                  R"({"kind":"server_error","http_status":500})").status, 204);
  ASSERT_EQ(Admin("POST", "/_sim/create_faults",
                  R"({"kind":"refuse","message":"no such model"})").status, 204);
  ASSERT_EQ(Admin("POST", "/_sim/create_faults", R"({"kind":"no_id"})").status, 204);
  EXPECT_EQ(Create("veo", body).status, 503) << "the sora fault waits for sora";
  Reply limited = Create("sora", body);
  EXPECT_EQ(limited.status, 429);
  EXPECT_EQ(Create("sora", body).status, 500);
  Reply refused = Create("sora", body);
  EXPECT_EQ(refused.status, 400);
  EXPECT_NE(refused.body.find("no such model"), std::string::npos);
  Reply no_id = Create("sora", body);
  EXPECT_EQ(no_id.status, 200);
  EXPECT_EQ(json::parse(no_id.body).count("id"), 0u);
  EXPECT_EQ(sim_->CreatedCount(), 1) << "only no_id created one";
  // Dropped after creating: no answer, one task.
  ASSERT_EQ(Admin("POST", "/_sim/create_faults", R"({"kind":"accepted_then_dropped"})").status,
            204);
  Reply dropped = Create("sora", body);
  EXPECT_EQ(dropped.status, -1) << dropped.body;
  EXPECT_EQ(sim_->CreatedCount(), 2);
  EXPECT_EQ(sim_->Creates().back().answer, "dropped");
  EXPECT_FALSE(sim_->Creates().back().id.empty());
  // Dropped before creating.
  ASSERT_EQ(Admin("POST", "/_sim/create_faults", R"({"kind":"reset"})").status, 204);
  client_ = NewClient();
  EXPECT_EQ(Create("sora", body).status, -1);
  EXPECT_EQ(sim_->CreatedCount(), 2);
  client_ = NewClient();
  EXPECT_EQ(Create("sora", body).status, 200);
  EXPECT_EQ(Admin("POST", "/_sim/create_faults", R"({"kind":"truncated"})").status, 400);
  EXPECT_EQ(Admin("POST", "/_sim/faults", R"({"kind":"no_id"})").status, 400);
  Admin("POST", "/_sim/reset");
  EXPECT_TRUE(sim_->Creates().empty());
}

}  // namespace
}  // namespace videotask::sim
