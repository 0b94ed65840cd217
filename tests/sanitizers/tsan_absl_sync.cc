// ThreadSanitizer support for the Abseil of the system (KVSERVE_SANITIZE=thread only).
//
// Debian's libabsl_synchronization is not built with TSan, so TSan does not see that
// absl::Mutex, absl::CondVar and absl::Notification order memory: every access guarded by an
// absl::Mutex would be reported as a race. This file interposes their out-of-line members (the
// executable's definitions take precedence over the shared library's, for calls from our code and
// from the library alike), calls the library's own implementation through dlsym(RTLD_NEXT), and
// tells TSan about the happens-before edges they create: a release when a mutex is unlocked (or
// released by a wait), an acquire when it is locked (or reacquired), a release on Notify and an
// acquire when a wait for the notification returns.
//
// Linked into every executable of a TSan build (cmake/sanitizers.cmake). No effect otherwise.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}

namespace {

template <typename Fn>
Fn Real(const char* mangled) {
  void* sym = dlsym(RTLD_NEXT, mangled);
  if (sym == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: %s not found in the Abseil library\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(sym);
}

// The mangled names below are those of Abseil 20220623 as Debian builds it (inline namespace
// absl::debian3); the static_assert keeps this file from building against any other version.
static_assert(ABSL_LTS_RELEASE_VERSION == 20220623, "update the mangled names for this Abseil");

#define KVSERVE_REAL(type, name) static const auto real = Real<type>(name)

using MutexFn = void (*)(absl::Mutex*);
using MutexBoolFn = bool (*)(absl::Mutex*);
using MutexCondFn = void (*)(absl::Mutex*, const absl::Condition&);
using MutexCondDurationFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using MutexCondTimeFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using CondVarWaitFn = void (*)(absl::CondVar*, absl::Mutex*);
using CondVarDurationFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);
using CondVarTimeFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Time);
using NotifyFn = void (*)(absl::Notification*);
using NoteWaitFn = void (*)(const absl::Notification*);
using NoteDurationFn = bool (*)(const absl::Notification*, absl::Duration);
using NoteTimeFn = bool (*)(const absl::Notification*, absl::Time);

// absl::Mutex evaluates a Condition inside the library, with the mutex held, on the waiting
// thread or on the one unlocking: each evaluation is modelled as a critical section of its own
// (acquire, evaluate, release), so what it reads is ordered after the last unlock and before the
// next lock.
struct GuardedCondition {
  const absl::Condition* cond;
  absl::Mutex* mu;
};
bool EvalGuarded(GuardedCondition* g) {
  __tsan_acquire(g->mu);
  const bool met = g->cond->Eval();
  __tsan_release(g->mu);  // the library may release the mutex next, unseen
  return met;
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  KVSERVE_REAL(MutexFn, "_ZN4absl7debian35Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}
void Mutex::Unlock() {
  KVSERVE_REAL(MutexFn, "_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}
void Mutex::ReaderLock() {
  KVSERVE_REAL(MutexFn, "_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}
void Mutex::ReaderUnlock() {
  KVSERVE_REAL(MutexFn, "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}
bool Mutex::TryLock() {
  KVSERVE_REAL(MutexBoolFn, "_ZN4absl7debian35Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}
bool Mutex::ReaderTryLock() {
  KVSERVE_REAL(MutexBoolFn, "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}
void Mutex::LockWhen(const Condition& cond) {
  KVSERVE_REAL(MutexCondFn, "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  real(this, wrapped);
  __tsan_acquire(this);
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  KVSERVE_REAL(MutexCondFn, "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  real(this, wrapped);
  __tsan_acquire(this);
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  KVSERVE_REAL(MutexCondDurationFn,
               "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  const bool met = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return met;
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  KVSERVE_REAL(MutexCondTimeFn,
               "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  const bool met = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return met;
}
void Mutex::Await(const Condition& cond) {
  KVSERVE_REAL(MutexCondFn, "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  __tsan_release(this);
  real(this, wrapped);
  __tsan_acquire(this);
}
bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  KVSERVE_REAL(MutexCondDurationFn,
               "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  __tsan_release(this);
  const bool met = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return met;
}
bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  KVSERVE_REAL(MutexCondTimeFn,
               "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  GuardedCondition guarded{&cond, this};
  const Condition wrapped(&EvalGuarded, &guarded);
  __tsan_release(this);
  const bool met = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  KVSERVE_REAL(CondVarWaitFn, "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}
bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  KVSERVE_REAL(CondVarDurationFn,
               "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}
bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  KVSERVE_REAL(CondVarTimeFn, "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

// HasBeenNotified() is inline (an instrumented acquire load of the flag), so Notify() releases
// on the flag's address as well as on the object.
void Notification::Notify() {
  KVSERVE_REAL(NotifyFn, "_ZN4absl7debian312Notification6NotifyEv");
  __tsan_release(this);
  __tsan_release(reinterpret_cast<char*>(this) + sizeof(Mutex));
  real(this);
}
void Notification::WaitForNotification() const {
  KVSERVE_REAL(NoteWaitFn, "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}
bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  KVSERVE_REAL(NoteDurationFn,
               "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}
bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  KVSERVE_REAL(NoteTimeFn,
               "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
