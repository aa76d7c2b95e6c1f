#include "server/create/memory_create_key_store.h"

#include "absl/strings/str_cat.h"

namespace videotask {

MemoryCreateKeyStore::MemoryCreateKeyStore(Options options, Clock* clock)
    : options_(options), clock_(clock) {}

void MemoryCreateKeyStore::ExpireLocked(absl::Time now) {
  while (!expiry_.empty() && expiry_.begin()->first <= now) {
    entries_.erase(expiry_.begin()->second);
    expiry_.erase(expiry_.begin());
  }
}

std::optional<CreateRecord> MemoryCreateKeyStore::LookupLocked(const std::string& key) {
  ExpireLocked(clock_->Monotonic());
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second.record;
}

absl::StatusOr<std::optional<CreateRecord>> MemoryCreateKeyStore::Claim(
    const std::string& key, const std::string& fingerprint) {
  absl::MutexLock lock(&mu_);
  if (std::optional<CreateRecord> held = LookupLocked(key)) return held;
  if (static_cast<int64_t>(entries_.size()) >= options_.max_keys) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the sidecar remembers ", options_.max_keys,
                     " request_ids already (--create_dedup_ttl); nothing was sent"));
  }
  Entry& e = entries_[key];
  e.record.state = CreateRecord::State::kPending;
  e.record.fingerprint = fingerprint;
  return std::optional<CreateRecord>();
}

absl::Status MemoryCreateKeyStore::Record(const std::string& key, CreateRecord outcome) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.record.state != CreateRecord::State::kPending) {
    return absl::FailedPreconditionError("Record without a pending claim");
  }
  if (outcome.state == CreateRecord::State::kPending) {
    return absl::InvalidArgumentError("Record needs an outcome");
  }
  outcome.fingerprint = it->second.record.fingerprint;
  it->second.record = std::move(outcome);
  it->second.expires = clock_->Monotonic() + options_.ttl;
  expiry_.insert({it->second.expires, key});
  settled_.SignalAll();
  return absl::OkStatus();
}

absl::Status MemoryCreateKeyStore::Release(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.record.state != CreateRecord::State::kPending) {
    return absl::FailedPreconditionError("Release without a pending claim");
  }
  entries_.erase(it);
  settled_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<CreateRecord>> MemoryCreateKeyStore::Lookup(const std::string& key) {
  absl::MutexLock lock(&mu_);
  return LookupLocked(key);
}

absl::StatusOr<std::optional<CreateRecord>> MemoryCreateKeyStore::AwaitSettled(
    const std::string& key, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  while (true) {
    std::optional<CreateRecord> held = LookupLocked(key);
    if (!held.has_value() || held->state != CreateRecord::State::kPending) return held;
    const absl::Duration left = deadline - clock_->Monotonic();
    if (left <= absl::ZeroDuration()) return held;
    if (deadline == absl::InfiniteFuture()) {
      settled_.Wait(&mu_);
    } else if (settled_.WaitWithTimeout(&mu_, left)) {
      // Timed out on the real clock: a simulated clock may not have moved,
      // so the deadline decides, checked on the next turn; stop here.
      return LookupLocked(key);
    }
  }
}

int64_t MemoryCreateKeyStore::size() {
  absl::MutexLock lock(&mu_);
  ExpireLocked(clock_->Monotonic());
  return static_cast<int64_t>(entries_.size());
}

}  // namespace videotask
