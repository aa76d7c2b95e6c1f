// ThreadSanitizer annotations for Debian's uninstrumented Abseil
// (--config=tsan). TSan cannot see inside libabsl_synchronization.so, so
// without this every field guarded by an absl::Mutex looks racy. The linker
// routes our code's calls to absl::Mutex, CondVar and Notification through
// these wrappers (-Wl,--wrap, see BUILD.bazel), which tell TSan about the
// happens-before edge each one makes (__tsan_acquire/__tsan_release on the
// object's address) and then call the real function. Abseil evaluates
// absl::Condition functions inside Unlock and the waiting calls, where TSan
// cannot tell the mutex is held, so memory accesses inside those calls are
// ignored: a race inside a Condition function goes unseen. Calls made inside
// other uninstrumented libraries (gRPC) stay invisible.
//
// The mangled names are those of Debian bookworm's Abseil (inline namespace
// debian3); a different Abseil fails the link, loudly.
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin();
void __tsan_ignore_thread_end();

using absl::CondVar;
using absl::Condition;
using absl::Duration;
using absl::Mutex;
using absl::Notification;
using absl::Time;

#define VOID_LOCK(sym)                   \
  void __real_##sym(Mutex* mu);          \
  void __wrap_##sym(Mutex* mu) {         \
    __real_##sym(mu);                    \
    __tsan_acquire(mu);                  \
  }
#define VOID_UNLOCK(sym)                 \
  void __real_##sym(Mutex* mu);          \
  void __wrap_##sym(Mutex* mu) {         \
    __tsan_release(mu);                  \
    __tsan_ignore_thread_begin();        \
    __real_##sym(mu);                    \
    __tsan_ignore_thread_end();          \
  }
#define BOOL_TRYLOCK(sym)                \
  bool __real_##sym(Mutex* mu);          \
  bool __wrap_##sym(Mutex* mu) {         \
    const bool ok = __real_##sym(mu);    \
    if (ok) __tsan_acquire(mu);          \
    return ok;                           \
  }
// Lock-and-wait calls: the mutex is held on return.
#define LOCK_WHEN(sym)                                   \
  void __real_##sym(Mutex* mu, const Condition& c);      \
  void __wrap_##sym(Mutex* mu, const Condition& c) {     \
    __tsan_ignore_thread_begin();                        \
    __real_##sym(mu, c);                                 \
    __tsan_ignore_thread_end();                          \
    __tsan_acquire(mu);                                  \
  }
// Calls that release the held mutex while waiting and hold it again on
// return.
#define WAIT_COND(sym, T)                                          \
  bool __real_##sym(Mutex* mu, const Condition& c, T t);           \
  bool __wrap_##sym(Mutex* mu, const Condition& c, T t) {          \
    __tsan_release(mu);                                            \
    __tsan_ignore_thread_begin();                                  \
    const bool ok = __real_##sym(mu, c, t);                        \
    __tsan_ignore_thread_end();                                    \
    __tsan_acquire(mu);                                            \
    return ok;                                                     \
  }

VOID_LOCK(_ZN4absl7debian35Mutex4LockEv)
VOID_LOCK(_ZN4absl7debian35Mutex10ReaderLockEv)
VOID_UNLOCK(_ZN4absl7debian35Mutex6UnlockEv)
VOID_UNLOCK(_ZN4absl7debian35Mutex12ReaderUnlockEv)
BOOL_TRYLOCK(_ZN4absl7debian35Mutex7TryLockEv)
BOOL_TRYLOCK(_ZN4absl7debian35Mutex13ReaderTryLockEv)
LOCK_WHEN(_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE)
LOCK_WHEN(_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE)
WAIT_COND(_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE, Duration)
WAIT_COND(_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE, Time)

void __real__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(Mutex* mu, const Condition& c);
void __wrap__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(Mutex* mu, const Condition& c) {
  __tsan_release(mu);
  __tsan_ignore_thread_begin();
  __real__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(mu, c);
  __tsan_ignore_thread_end();
  __tsan_acquire(mu);
}

// LockWhenWith*: the mutex is held on return whatever the result.
bool __real__ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    Mutex* mu, const Condition& c, Duration d);
bool __wrap__ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    Mutex* mu, const Condition& c, Duration d) {
  __tsan_ignore_thread_begin();
  const bool ok =
      __real__ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(mu, c, d);
  __tsan_ignore_thread_end();
  __tsan_acquire(mu);
  return ok;
}
bool __real__ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(
    Mutex* mu, const Condition& c, Time t);
bool __wrap__ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(
    Mutex* mu, const Condition& c, Time t) {
  __tsan_ignore_thread_begin();
  const bool ok =
      __real__ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(mu, c, t);
  __tsan_ignore_thread_end();
  __tsan_acquire(mu);
  return ok;
}

// CondVar waits release and re-take the mutex.
void __real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(CondVar* cv, Mutex* mu);
void __wrap__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(CondVar* cv, Mutex* mu) {
  __tsan_release(mu);
  __real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(cv, mu);
  __tsan_acquire(mu);
}
bool __real__ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(
    CondVar* cv, Mutex* mu, Duration d);
bool __wrap__ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(
    CondVar* cv, Mutex* mu, Duration d) {
  __tsan_release(mu);
  const bool r = __real__ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(cv, mu, d);
  __tsan_acquire(mu);
  return r;
}
bool __real__ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(
    CondVar* cv, Mutex* mu, Time t);
bool __wrap__ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(
    CondVar* cv, Mutex* mu, Time t) {
  __tsan_release(mu);
  const bool r = __real__ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(cv, mu, t);
  __tsan_acquire(mu);
  return r;
}

// Notification: Notify() happens before every wait that returns true.
void __real__ZN4absl7debian312Notification6NotifyEv(Notification* n);
void __wrap__ZN4absl7debian312Notification6NotifyEv(Notification* n) {
  __tsan_release(n);
  __real__ZN4absl7debian312Notification6NotifyEv(n);
}
void __real__ZNK4absl7debian312Notification19WaitForNotificationEv(const Notification* n);
void __wrap__ZNK4absl7debian312Notification19WaitForNotificationEv(const Notification* n) {
  __real__ZNK4absl7debian312Notification19WaitForNotificationEv(n);
  __tsan_acquire(const_cast<Notification*>(n));
}
bool __real__ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(
    const Notification* n, Duration d);
bool __wrap__ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(
    const Notification* n, Duration d) {
  const bool r =
      __real__ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(n, d);
  if (r) __tsan_acquire(const_cast<Notification*>(n));
  return r;
}
bool __real__ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE(
    const Notification* n, Time t);
bool __wrap__ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE(
    const Notification* n, Time t) {
  const bool r =
      __real__ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE(n, t);
  if (r) __tsan_acquire(const_cast<Notification*>(n));
  return r;
}

// Suppressions, read by TSan at start-up. Only races whose stack passes
// through a library Debian ships uninstrumented, where TSan sees memory
// accesses (through its interceptors: memmove, close, ...) but not the locks
// that order them:
//   - Abseil's deadlock detector (absl::Mutex debug mode, on in Debian's
//     build), guarded by Abseil's internal spin lock;
//   - cpp-httplib's thread pool and sockets (the simulated upstream, the
//     metrics endpoint), whose queue lock lives in the library.
// Tests that run gRPC are not in tests/tsan/targets: gRPC's pollers and
// Abseil's Status/Cord reference counts (both uninstrumented) make reports
// that no narrow suppression removes.
const char* __tsan_default_suppressions() {
  return "race:libabsl_graphcycles_internal.so\n"
         "race:libcpp-httplib.so\n";
}

}  // extern "C"
