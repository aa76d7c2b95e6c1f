#include "server/base/metrics.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace videotask {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<uint64_t>(std::llround(std::max(v, 0.0) * 1e6)),
                        std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t acc = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    acc += buckets_[i].load(std::memory_order_relaxed);
    out[i] = acc;
  }
  return out;
}

double Histogram::sum() const { return sum_micros_.load() / 1e6; }
uint64_t Histogram::count() const { return count_.load(); }

Counter* MetricsRegistry::GetCounter(const std::string& name, const std::string& help,
                                     const std::string& labels) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "counter";
  auto& c = f.counters[labels];
  if (!c) c = std::make_unique<Counter>();
  return c.get();
}

Histogram* MetricsRegistry::GetHistogram(const std::string& name, const std::string& help,
                                         std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "histogram";
  if (!f.histogram) f.histogram = std::make_unique<Histogram>(std::move(bounds));
  return f.histogram.get();
}

void MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                               std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "gauge";
  f.gauge = std::move(read);
}

std::string MetricsRegistry::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n# TYPE ", name, " ", f.type, "\n");
    if (f.type == "counter") {
      for (const auto& [labels, c] : f.counters) {
        absl::StrAppend(&out, name, labels.empty() ? "" : absl::StrCat("{", labels, "}"), " ",
                        c->value(), "\n");
      }
    } else if (f.type == "gauge") {
      absl::StrAppend(&out, name, " ", f.gauge(), "\n");
    } else if (f.histogram) {
      const auto counts = f.histogram->CumulativeCounts();
      const auto& bounds = f.histogram->bounds();
      for (size_t i = 0; i < bounds.size(); ++i) {
        absl::StrAppend(&out, name, "_bucket{le=\"", bounds[i], "\"} ", counts[i], "\n");
      }
      absl::StrAppend(&out, name, "_bucket{le=\"+Inf\"} ", counts.back(), "\n");
      absl::StrAppend(&out, name, "_sum ", f.histogram->sum(), "\n");
      absl::StrAppend(&out, name, "_count ", f.histogram->count(), "\n");
    }
  }
  return out;
}

}  // namespace videotask
