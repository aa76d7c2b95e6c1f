#include "server/create/spend_guard.h"

namespace videotask {

absl::StatusOr<std::optional<SpendGuard::Ticket>> MemorySpendGuard::Take() {
  const absl::Time now = clock_->Monotonic();
  if (max_ <= 0) return std::optional<Ticket>(Ticket{now, ""});
  absl::MutexLock lock(&mu_);
  while (!taken_.empty() && *taken_.begin() + absl::Hours(1) <= now) taken_.erase(taken_.begin());
  if (static_cast<int64_t>(taken_.size()) >= max_) return std::optional<Ticket>();
  taken_.insert(now);
  return std::optional<Ticket>(Ticket{now, ""});
}

void MemorySpendGuard::GiveBack(const Ticket& ticket) {
  if (max_ <= 0) return;
  absl::MutexLock lock(&mu_);
  auto it = taken_.find(ticket.taken);
  if (it != taken_.end()) taken_.erase(it);
}

}  // namespace videotask
