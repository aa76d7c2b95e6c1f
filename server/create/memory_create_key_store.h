// MemoryCreateKeyStore: the CreateKeyStore of one sidecar, in its memory.
//
// Guarantees: Claim is atomic (one mutex); outcomes are kept for `ttl` from
// when they were recorded (measured on the clock's Monotonic() reading, so
// wall clock steps change nothing) and then forgotten; at most `max_keys`
// keys are held: a new key beyond that is RESOURCE_EXHAUSTED (a key that is
// still remembered is never evicted early, since that could create twice).
// A restart forgets every key. AwaitSettled waits on a condition variable;
// its deadline is turned into a timeout on the clock's reading when called.
#ifndef VIDEOTASK_SERVER_CREATE_MEMORY_CREATE_KEY_STORE_H_
#define VIDEOTASK_SERVER_CREATE_MEMORY_CREATE_KEY_STORE_H_

#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/base/clock.h"
#include "server/create/create_key_store.h"

namespace videotask {

class MemoryCreateKeyStore : public CreateKeyStore {
 public:
  struct Options {
    absl::Duration ttl = absl::Hours(24);
    int64_t max_keys = 100000;
  };
  // `clock` must outlive the store.
  MemoryCreateKeyStore(Options options, Clock* clock);

  absl::StatusOr<std::optional<CreateRecord>> Claim(const std::string& key,
                                                    const std::string& fingerprint) override;
  absl::Status Record(const std::string& key, CreateRecord outcome) override;
  absl::Status Release(const std::string& key) override;
  absl::StatusOr<std::optional<CreateRecord>> Lookup(const std::string& key) override;
  absl::StatusOr<std::optional<CreateRecord>> AwaitSettled(const std::string& key,
                                                           absl::Time deadline) override;

  int64_t size();  // keys held (pending and remembered)

 private:
  struct Entry {
    CreateRecord record;
    absl::Time expires = absl::InfiniteFuture();  // finite once recorded
  };
  // Forgets outcomes whose TTL has run out.
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<CreateRecord> LookupLocked(const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  Clock* const clock_;
  absl::Mutex mu_;
  absl::CondVar settled_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<absl::Time, std::string>> expiry_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_MEMORY_CREATE_KEY_STORE_H_
