// Both cores in one parallel region, meeting at a spin barrier between the phases of a step.
#pragma once

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>

namespace latts {

// [begin, end) of n items for thread tid of team, in whole multiples of align.
inline std::pair<int64_t, int64_t> share(int64_t n, int64_t tid, int64_t team, int64_t align = 1) {
  const int64_t units = (n + align - 1) / align;
  const int64_t b = units * tid / team * align, e = units * (tid + 1) / team * align;
  return {std::min(b, n), std::min(e, n)};
}

// Both cores in one parallel region, meeting at a barrier between phases.

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
    } else {
      while (gen_.load(std::memory_order_acquire) == gen) _mm_pause();
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
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
    while ((c = chunk.load(std::memory_order_acquire)) == 0) _mm_pause();
    const int64_t team = (want + c - 1) / c;
    body(begin / c, team, *shared.load(std::memory_order_relaxed));
  });
  delete shared.load();
}

}  // namespace latts
