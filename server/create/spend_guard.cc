#include "server/create/spend_guard.h"

namespace videotask {

std::optional<SpendGuard::Ticket> SpendGuard::Take() {
  const absl::Time now = clock_->Monotonic();
  if (max_ <= 0) return now;
  absl::MutexLock lock(&mu_);
  while (!taken_.empty() && *taken_.begin() + absl::Hours(1) <= now) taken_.erase(taken_.begin());
  if (static_cast<int64_t>(taken_.size()) >= max_) return std::nullopt;
  taken_.insert(now);
  return now;
}

void SpendGuard::GiveBack(Ticket ticket) {
  if (max_ <= 0) return;
  absl::MutexLock lock(&mu_);
  auto it = taken_.find(ticket);
  if (it != taken_.end()) taken_.erase(it);
}

}  // namespace videotask
