// Both cores in one parallel region, meeting at a barrier between the phases of a step.
#pragma once

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <utility>

namespace latts {

// [begin, end) of n items for thread tid of team, in whole multiples of align.
inline std::pair<int64_t, int64_t> share(int64_t n, int64_t tid, int64_t team, int64_t align = 1) {
  const int64_t units = (n + align - 1) / align;
  const int64_t b = units * tid / team * align, e = units * (tid + 1) / team * align;
  return {std::min(b, n), std::min(e, n)};
}

// How long a thread spins for its partner before it sleeps, in TSC cycles (about 1.5 ms). On a quiet machine
// a partner is never that late, and sleeping sooner cost measurably (a wake-up is tens of microseconds: a B=1
// step 5-20% slower with a 200 us limit, docs/measurement-history.md); a partner the scheduler took off its
// core is gone for milliseconds, and the spinner then gives its core away instead of burning it. While other
// processes hold cores the engine runs its forwards on one thread anyway (latts.engine.models.threads).
constexpr uint64_t kSpinCycles = uint64_t{1} << 22;

inline void futex_wait(std::atomic<int>* word, int expected) {
  syscall(SYS_futex, reinterpret_cast<int*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

inline void futex_wake_all(std::atomic<int>* word) {
  syscall(SYS_futex, reinterpret_cast<int*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// True once pred() holds, spinning at most kSpinCycles (false: it did not hold in time).
template <typename Pred>
inline bool spin_until(const Pred& pred) {
  const uint64_t until = __rdtsc() + kSpinCycles;
  do {
    for (int i = 0; i < 16; ++i) {
      if (pred()) return true;
      _mm_pause();
    }
  } while (__rdtsc() < until);
  return pred();
}

// The threads of a team meet here between phases: a bounded spin, then a futex sleep until the last one
// arrives (it wakes the sleepers only when there are any, so a quiet machine makes no system call).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&gen_);
      return;
    }
    if (spin_until([&] { return gen_.load(std::memory_order_acquire) != gen; })) return;
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (gen_.load(std::memory_order_seq_cst) == gen) futex_wait(&gen_, gen);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
  std::atomic<int> sleepers_{0};
};

// Run body(tid, team, barrier) on every thread of one torch parallel region. The region may get
// fewer threads than asked (torch then hands one thread several indices): the first thread
// publishes the chunk size, so that every thread knows the team before the first barrier.
template <typename Body>
void run_team(const Body& body) {
  const int64_t want = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  if (want == 1) {
    Barrier barrier(1);
    body(0, 1, barrier);
    return;
  }
  std::atomic<int64_t> chunk{0};
  std::atomic<Barrier*> shared{nullptr};
  at::parallel_for(0, want, 1, [&](int64_t begin, int64_t end) {
    if (begin == 0) {
      const int64_t team = (want + (end - begin) - 1) / (end - begin);
      shared.store(new Barrier(static_cast<int>(team)), std::memory_order_relaxed);
      chunk.store(end - begin, std::memory_order_release);
    }
    int64_t c;
    while (!spin_until([&] { return chunk.load(std::memory_order_acquire) != 0; })) sched_yield();
    c = chunk.load(std::memory_order_acquire);
    const int64_t team = (want + c - 1) / c;
    body(begin / c, team, *shared.load(std::memory_order_relaxed));
  });
  delete shared.load();
}

}  // namespace latts
