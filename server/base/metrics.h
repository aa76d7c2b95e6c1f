// Metrics: a small Prometheus registry (counters, gauges, histograms) and
// its text exposition format. Components increment what they own; the
// metrics HTTP server renders the registry on each scrape.
//
// Thread-safe. Counters and histograms are created once (by name and label
// set) and stay valid for the registry's lifetime; increments are lock-free.
#ifndef VIDEOTASK_SERVER_BASE_METRICS_H_
#define VIDEOTASK_SERVER_BASE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace videotask {

class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative counts per bound (+Inf last), sum and count.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const;
  uint64_t count() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};
};

class MetricsRegistry {
 public:
  // `labels` is a Prometheus label set without braces, e.g. `code="200"`.
  // The same (name, labels) always returns the same object.
  Counter* GetCounter(const std::string& name, const std::string& help,
                      const std::string& labels = "");
  Histogram* GetHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds);
  // A gauge whose value is read at render time.
  void AddGauge(const std::string& name, const std::string& help,
                std::function<double()> read);

  // Prometheus text exposition format, version 0.0.4.
  std::string Render() const;

 private:
  struct Family {
    std::string help;
    std::string type;
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::unique_ptr<Histogram> histogram;
    std::function<double()> gauge;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_METRICS_H_
