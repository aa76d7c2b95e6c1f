// The chaos soak at unit level: the poll hub on a SimulatedClock, driven
// through hours of simulated time with a scripted upstream that answers
// after random latencies with random faults (transient errors, 429s with and
// without Retry-After, an absurd Retry-After, 404s once and twice, 401s,
// statuses that flap or go backwards), random watch/Unwatch and Get/CancelGet
// churn, and wall-clock steps of up to two days either way. Checks:
// - every watch's sequence and every Get's answer (sequence_check.h);
// - no event after Unwatch, every Get answered exactly once, every watch
//   ended after Drain;
// - upstream requests: never more than max_upstream_qps started within one
//   second, never more than max_inflight at once;
// - timers run on the monotonic clock: a watch that has its SNAPSHOT hears
//   something at least every heartbeat_interval, and two HEARTBEATs are never
//   closer than heartbeat_interval, whatever the wall clock does.
#include <algorithm>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/hub/poll_hub.h"
#include "tests/soak/sequence_check.h"

namespace videotask::soak {
namespace {

using v1::VideoTask;
using v1::VideoTaskStatus;
using v1::WatchVideoTaskResponse;

struct Violations {
  std::vector<std::string> list;
  void Add(const std::string& v) { list.push_back(v); }
};

// The vendor: scripted lifecycles (like tests/sim), faults, served counts.
class Vendor {
 public:
  explicit Vendor(absl::BitGen* gen) : gen_(gen) {}

  void AddTask(const std::string& id) {
    Script s;
    s.queued = absl::Uniform(*gen_, 0, 5);
    s.processing = absl::Uniform(*gen_, 1, 8);
    s.fails = absl::Bernoulli(*gen_, 0.3);
    tasks_[id] = s;
  }

  // The answer to one request for `id`, chosen now.
  UpstreamResult Answer(const std::string& id) {
    UpstreamResult r;
    auto it = tasks_.find(id);
    const double p = absl::Uniform(*gen_, 0.0, 1.0);
    if (it == tasks_.end() || p < 0.02) {
      ++served_[{id, "404"}];
      r.outcome = UpstreamOutcome::kNotFound;
      r.code = "404";
      return r;
    }
    if (p < 0.025) {
      ++served_[{id, "401"}];
      r.outcome = UpstreamOutcome::kRejected;
      r.code = "401";
      return r;
    }
    if (p < 0.17) {
      r.outcome = UpstreamOutcome::kTransient;  // 5xx, timeouts, bad bodies, unknown statuses
      r.code = absl::Bernoulli(*gen_, 0.5) ? "503" : "timeout";
      r.detail = "simulated";
      return r;
    }
    if (p < 0.21) {
      r.outcome = UpstreamOutcome::kRateLimited;
      r.code = "429";
      const double q = absl::Uniform(*gen_, 0.0, 1.0);
      if (q < 0.4) {
        r.retry_after = absl::Seconds(absl::Uniform(*gen_, 0, 5));
      } else if (q < 0.5) {
        r.retry_after = absl::Hours(24 * 365);  // absurd: capped by backoff_max
      }
      return r;
    }
    std::string status;
    if (p < 0.27) {  // a flap: whatever the script says, an earlier or later state
      status = absl::Bernoulli(*gen_, 0.5) ? "queued" : "processing";
    } else if (p < 0.275) {
      status = absl::Bernoulli(*gen_, 0.5) ? "completed" : "failed";  // contradicting
    } else {
      Script& s = it->second;
      ++s.polls;
      status = s.polls <= s.queued                  ? "queued"
               : s.polls <= s.queued + s.processing ? "processing"
               : s.fails                            ? "failed"
                                                    : "completed";
    }
    ++served_[{id, status}];
    r.outcome = UpstreamOutcome::kOk;
    r.code = "200";
    r.task.set_id(id);
    r.task.set_status(status == "queued"       ? v1::VIDEO_TASK_STATUS_QUEUED
                      : status == "processing" ? v1::VIDEO_TASK_STATUS_PROCESSING
                      : status == "completed"  ? v1::VIDEO_TASK_STATUS_COMPLETED
                                               : v1::VIDEO_TASK_STATUS_FAILED);
    if (status == "completed") r.task.set_video_url("https://cdn.invalid/v.mp4");
    return r;
  }

  bool Finished(const std::string& id) const {
    auto it = tasks_.find(id);
    return it == tasks_.end() ||
           it->second.polls > it->second.queued + it->second.processing;
  }

  ServedFn served() {
    return [this](const std::string& id, const std::string& what) {
      auto it = served_.find({id, what});
      return it == served_.end() ? 0 : it->second;
    };
  }

 private:
  struct Script {
    int queued = 1, processing = 1, polls = 0;
    bool fails = false;
  };
  absl::BitGen* gen_;
  std::map<std::string, Script> tasks_;
  std::map<std::pair<std::string, std::string>, int> served_;
};

// Holds each request until its simulated end; records starts for the rate
// checks.
class LaggingUpstream : public UpstreamClient {
 public:
  LaggingUpstream(SimulatedClock* clock, Vendor* vendor, absl::BitGen* gen, int max_inflight,
                  Violations* v)
      : clock_(clock), vendor_(vendor), gen_(gen), max_inflight_(max_inflight), v_(v) {}

  void Fetch(const std::string& id, Callback done) override {
    const absl::Time now = clock_->Monotonic();
    starts_.push_back(now);
    const double p = absl::Uniform(*gen_, 0.0, 1.0);
    const absl::Duration latency = p < 0.7   ? absl::Milliseconds(absl::Uniform(*gen_, 5, 300))
                                   : p < 0.95 ? absl::Milliseconds(absl::Uniform(*gen_, 300, 3000))
                                              : absl::Seconds(10);  // a hang until the timeout
    UpstreamResult r;
    if (latency >= absl::Seconds(10)) {
      r.outcome = UpstreamOutcome::kTransient;
      r.code = "timeout";
    } else {
      r = vendor_->Answer(id);
    }
    r.latency = latency;
    pending_.push_back({now + latency, id, std::move(r), std::move(done)});
    if (static_cast<int>(pending_.size()) > max_inflight_) {
      v_->Add(absl::StrCat(pending_.size(), " requests in flight (max_inflight ", max_inflight_, ")"));
    }
  }

  absl::Time NextEnd() const {
    absl::Time t = absl::InfiniteFuture();
    for (const Pending& p : pending_) t = std::min(t, p.end);
    return t;
  }

  // Delivers the answers whose time has come (all of them with `all`).
  void DeliverDue(bool all = false) {
    const absl::Time now = clock_->Monotonic();
    while (true) {
      auto it = std::min_element(pending_.begin(), pending_.end(),
                                 [](const Pending& a, const Pending& b) { return a.end < b.end; });
      if (it == pending_.end() || (!all && it->end > now)) return;
      Pending p = std::move(*it);
      pending_.erase(it);
      std::move(p.done)(std::move(p.result));
    }
  }

  const std::vector<absl::Time>& starts() const { return starts_; }

 private:
  struct Pending {
    absl::Time end;
    std::string id;
    UpstreamResult result;
    Callback done;
  };
  SimulatedClock* clock_;
  Vendor* vendor_;
  absl::BitGen* gen_;
  const int max_inflight_;
  Violations* v_;
  std::deque<Pending> pending_;
  std::vector<absl::Time> starts_;
};

class CheckedSink : public WatchSink {
 public:
  CheckedSink(const std::string& id, ServedFn served, SimulatedClock* clock,
              absl::Duration heartbeat, Violations* v)
      : id_(id), check_(id, true, std::move(served)), clock_(clock), heartbeat_(heartbeat), v_(v) {}

  void OnEvent(std::shared_ptr<const TaskEvent> event) override {
    const absl::Time now = clock_->Monotonic();
    if (closed_) v_->Add(absl::StrCat("watch ", id_, ": an event after Unwatch returned"));
    check_.OnMessage(event->response);
    WatchVideoTaskResponse parsed;
    if (!parsed.ParseFromString(event->serialized) ||
        parsed.SerializeAsString() != event->response.SerializeAsString()) {
      v_->Add(absl::StrCat("watch ", id_, ": serialized event differs"));
    }
    if (event->response.type() == WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT) {
      if (last_heartbeat_ != absl::InfinitePast() && now - last_heartbeat_ < heartbeat_) {
        v_->Add(absl::StrCat("watch ", id_, ": HEARTBEATs ", absl::FormatDuration(now - last_heartbeat_),
                             " apart (interval ", absl::FormatDuration(heartbeat_), ")"));
      }
      last_heartbeat_ = now;
    }
    last_event_ = now;
    ++events_;
    if (event->terminal()) ended_ = true;
  }
  void OnError(const absl::Status& status) override {
    if (closed_) v_->Add(absl::StrCat("watch ", id_, ": an error after Unwatch returned"));
    check_.OnEnd(status);
    ended_ = true;
  }
  // This side stopped the watch (Unwatch).
  void Close() {
    closed_ = true;
    if (!ended_) check_.OnEnd(absl::CancelledError("unwatched"));
    ended_ = true;
  }
  // Stalled: has a SNAPSHOT, not ended, silent beyond the heartbeat interval.
  void CheckAlive(absl::Time now) {
    if (ended_ || !check_.snapshotted() || stalled_) return;
    if (now - last_event_ > heartbeat_) {
      stalled_ = true;
      v_->Add(absl::StrCat("watch ", id_, ": nothing for ", absl::FormatDuration(now - last_event_),
                           " (heartbeat ", absl::FormatDuration(heartbeat_), ")"));
    }
  }
  bool ended() const { return ended_; }
  int events() const { return events_; }
  const SequenceCheck& check() const { return check_; }

 private:
  const std::string id_;
  SequenceCheck check_;
  SimulatedClock* clock_;
  const absl::Duration heartbeat_;
  Violations* v_;
  bool closed_ = false;
  bool ended_ = false;
  bool stalled_ = false;
  int events_ = 0;
  absl::Time last_event_ = absl::InfinitePast();
  absl::Time last_heartbeat_ = absl::InfinitePast();
};

struct RunStats {
  int64_t watches = 0, events = 0, gets = 0, get_cancels = 0, unwatches = 0, wall_steps = 0,
          requests = 0, terminal_watches = 0;
  absl::Duration simulated;
};

RunStats RunSoak(uint64_t seed, absl::Duration simulated, Violations* v) {
  absl::BitGen gen(std::seed_seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  SimulatedClock clock;
  Vendor vendor(&gen);
  PollHubOptions o;
  o.poll_interval = absl::Seconds(2);
  o.poll_jitter = 0.1;
  o.heartbeat_interval = absl::Seconds(1);
  o.max_upstream_qps = 5;
  o.max_inflight = 3;
  o.terminal_cache_ttl = absl::Seconds(20);
  o.backoff_max = absl::Seconds(10);
  o.max_pending_gets = 25;
  LaggingUpstream upstream(&clock, &vendor, &gen, o.max_inflight, v);
  MetricsRegistry metrics;
  auto hub_or = PollHub::CreateForTest(o, &upstream, &clock, &metrics, seed);
  EXPECT_TRUE(hub_or.ok()) << hub_or.status();
  if (!hub_or.ok()) return {};
  std::unique_ptr<PollHub> hub = std::move(*hub_or);

  RunStats stats;
  std::vector<std::string> live;
  int next_task = 0;
  auto new_task = [&] {
    const std::string id = absl::StrCat("t", next_task++);
    vendor.AddTask(id);
    live.push_back(id);
  };
  for (int i = 0; i < 30; ++i) new_task();
  auto pick_id = [&]() -> std::string {
    if (absl::Bernoulli(gen, 0.03)) return absl::StrCat("ghost", absl::Uniform(gen, 0, 50));
    return live[absl::Uniform<size_t>(gen, 0, live.size())];
  };

  struct OpenWatch {
    std::shared_ptr<CheckedSink> sink;
    PollHub::WatchId wid;
    absl::Time unwatch_at;
  };
  std::vector<OpenWatch> watches;
  std::vector<std::shared_ptr<CheckedSink>> all_sinks;
  struct OpenGet {
    PollHub::GetId gid;
    absl::Time cancel_at;
    std::shared_ptr<int> answers;
  };
  std::vector<OpenGet> gets;
  std::vector<std::shared_ptr<int>> all_gets;

  const absl::Time start = clock.Monotonic();
  const absl::Time end = start + simulated;
  absl::Time next_churn = start;
  int stuck = 0;
  while (clock.Monotonic() < end && v->list.size() < 20) {
    const absl::Time next =
        std::min({hub->NextWakeup(), upstream.NextEnd(), next_churn, end});
    const absl::Time before = clock.Monotonic();
    clock.AdvanceTo(next);
    if (clock.Monotonic() == before && ++stuck > 10000) {
      v->Add("the hub wants to run again and again without time passing");
      break;
    }
    if (clock.Monotonic() > before) stuck = 0;
    const absl::Time now = clock.Monotonic();
    upstream.DeliverDue();
    hub->RunDue();

    if (now >= next_churn) {
      next_churn = now + absl::Milliseconds(absl::Uniform(gen, 1, 150));
      const double r = absl::Uniform(gen, 0.0, 1.0);
      if (r < 0.45) {
        const std::string id = pick_id();
        auto sink = std::make_shared<CheckedSink>(id, vendor.served(), &clock, o.heartbeat_interval, v);
        all_sinks.push_back(sink);
        absl::StatusOr<PollHub::WatchId> wid = hub->Watch(id, sink);
        ++stats.watches;
        if (!wid.ok()) {
          sink->OnError(wid.status());
        } else {
          const absl::Time unwatch_at =
              absl::Bernoulli(gen, 0.4) ? absl::InfiniteFuture()
                                        : now + absl::Milliseconds(absl::Uniform(gen, 0, 60000));
          watches.push_back({sink, *wid, unwatch_at});
        }
      } else if (r < 0.75) {
        const std::string id = pick_id();
        auto answers = std::make_shared<int>(0);
        all_gets.push_back(answers);
        ServedFn served = vendor.served();
        const PollHub::GetId gid =
            hub->Get(id, [id, served, answers, v](absl::StatusOr<VideoTask> got) {
              ++*answers;
              for (const std::string& s :
                   CheckGet(id, true, served, got.status(), got.ok() ? &*got : nullptr)) {
                v->Add(s);
              }
            });
        ++stats.gets;
        if (gid != 0 && absl::Bernoulli(gen, 0.4)) {
          gets.push_back({gid, now + absl::Milliseconds(absl::Uniform(gen, 0, 5000)), answers});
        }
      } else if (r < 0.78) {
        // The wall clock is stepped (NTP, VM resume, `date -s`): nothing
        // may change.
        const absl::Duration step = absl::Seconds(absl::Uniform(gen, 1, 2 * 86400));
        clock.StepWall(absl::Bernoulli(gen, 0.5) ? step : -step);
        ++stats.wall_steps;
      } else if (r < 0.80) {
        // Task turnover: finished tasks leave the pool.
        for (size_t i = 0; i < live.size();) {
          if (vendor.Finished(live[i]) && absl::Bernoulli(gen, 0.5)) {
            live.erase(live.begin() + i);
            new_task();
          } else {
            ++i;
          }
        }
      }
    }
    // Unwatches and Get cancels that are due.
    for (size_t i = 0; i < watches.size();) {
      if (watches[i].sink->ended() && watches[i].unwatch_at == absl::InfiniteFuture()) {
        watches.erase(watches.begin() + i);
      } else if (watches[i].unwatch_at <= now) {
        hub->Unwatch(watches[i].wid);
        watches[i].sink->Close();
        ++stats.unwatches;
        watches.erase(watches.begin() + i);
      } else {
        ++i;
      }
    }
    for (size_t i = 0; i < gets.size();) {
      if (*gets[i].answers > 0) {
        gets.erase(gets.begin() + i);
      } else if (gets[i].cancel_at <= now) {
        hub->CancelGet(gets[i].gid);
        ++stats.get_cancels;
        if (*gets[i].answers != 1) v->Add("a cancelled Get was not answered at once");
        gets.erase(gets.begin() + i);
      } else {
        ++i;
      }
    }
    for (OpenWatch& w : watches) w.sink->CheckAlive(now);
  }

  // Drain: every watch ends, every Get is answered; then the upstream's
  // callbacks all run before the hub goes.
  hub->Drain();
  upstream.DeliverDue(/*all=*/true);
  hub->RunDue();
  for (const auto& sink : all_sinks) {
    if (!sink->ended()) v->Add("a watch still open after Drain");
    stats.events += sink->events();
    if (sink->check().terminal()) ++stats.terminal_watches;
    for (const std::string& s : sink->check().violations()) v->Add(s);
  }
  for (const auto& answers : all_gets) {
    if (*answers != 1) v->Add(absl::StrCat("a Get answered ", *answers, " times"));
  }

  // The rate cap, by request starts on the monotonic clock.
  const std::vector<absl::Time>& starts = upstream.starts();
  stats.requests = starts.size();
  size_t j = 0;
  for (size_t i = 0; i < starts.size(); ++i) {
    while (starts[i] - starts[j] >= absl::Seconds(1)) ++j;
    if (static_cast<int>(i - j + 1) > o.max_upstream_qps) {
      v->Add(absl::StrCat(i - j + 1, " requests started within one second at +",
                          absl::FormatDuration(starts[j] - start)));
      break;
    }
  }
  stats.simulated = clock.Monotonic() - start;
  hub.reset();
  return stats;
}

TEST(PollHubSoakTest, RandomFaultsChurnAndWallStepsKeepEveryRule) {
  for (uint64_t seed : {1, 2, 3, 4}) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Violations v;
    const RunStats s = RunSoak(seed, absl::Minutes(30), &v);
    std::cout << "seed " << seed << ": " << absl::FormatDuration(s.simulated) << " simulated, "
              << s.requests << " upstream requests, " << s.watches << " watches ("
              << s.terminal_watches << " to the end, " << s.unwatches << " unwatched), "
              << s.events << " events, " << s.gets << " gets (" << s.get_cancels
              << " cancelled), " << s.wall_steps << " wall-clock steps\n";
    EXPECT_GT(s.requests, 1000);
    EXPECT_GT(s.terminal_watches, 100);
    EXPECT_GT(s.wall_steps, 100);
    for (const std::string& line : v.list) ADD_FAILURE() << line;
  }
}

}  // namespace
}  // namespace videotask::soak
