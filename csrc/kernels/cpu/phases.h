// One parallel region for a whole sequence: ordered phases of independent tasks.
//
// A forward or backward pass is a chain of phases (the input projection of a
// chunk of steps, then for each step the recurrent product, its projection,
// ...). Forking and joining the thread team for every phase cost 13% of the
// samples at 2 threads on the reference machine (libgomp's barriers, LSTM
// T=100 N=16 H=256). Here the team is forked once: tasks are claimed from a
// shared counter, and a task of phase p starts once every task of the phases
// before it has finished. Completed tasks are counted; while a task of phase p
// waits, only tasks of earlier phases can complete, so reaching the count of
// those tasks means all of them are done. Any number of participating threads,
// one included, finishes the work: a team smaller than asked for (nested
// parallelism, a busy pool) cannot deadlock it.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "parallel.h"

namespace fusedrnn::cpu {
inline namespace CPU_CAPABILITY {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waits until done >= target: spins briefly (a phase usually ends within
// microseconds), then yields, so that a waiting thread does not take the core
// from the thread it waits for when the machine is oversubscribed.
inline void wait_for(const std::atomic<int64_t>& done, int64_t target) {
  constexpr int kSpins = 4096;
  for (int i = 0; done.load(std::memory_order_acquire) < target; ++i) {
    if (i < kSpins)
      cpu_relax();
    else
      std::this_thread::yield();
  }
}

// Runs phases 0..P-1 in order, phase p being count(p) tasks run(p, i). With
// threads <= 1 it is a plain loop. `starts` is scratch for P + 1 offsets.
template <typename Count, typename Run>
void run_phases(int64_t P, const Count& count, const Run& run, int threads, int64_t* starts,
                const Parallel& par) {
  if (threads <= 1 || par.max_threads <= 1) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = count(p);
      for (int64_t i = 0; i < n; ++i) run(p, i);
    }
    return;
  }
  starts[0] = 0;
  for (int64_t p = 0; p < P; ++p) starts[p + 1] = starts[p] + count(p);
  const int64_t total = starts[P];
  // On lines of their own: every claim would otherwise take from the waiting
  // threads the line they spin on.
  alignas(64) std::atomic<int64_t> next{0};
  alignas(64) std::atomic<int64_t> done{0};
  par(threads, 1, [&](int64_t, int64_t) {
    int64_t p = 0;
    for (;;) {
      const int64_t g = next.fetch_add(1, std::memory_order_relaxed);
      if (g >= total) break;
      while (starts[p + 1] <= g) ++p;
      wait_for(done, starts[p]);
      run(p, g - starts[p]);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fusedrnn::cpu
