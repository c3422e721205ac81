// One parallel region for a whole sequence: ordered phases of independent tasks.
//
// A forward or backward pass is a chain of phases (the input projection of a
// chunk of steps, then for each step the recurrent product, its projection,
// ...). Forking and joining the thread team for every phase cost 13% of the
// samples at 2 threads on the reference machine (libgomp's barriers, LSTM
// T=100 N=16 H=256). Here the team is forked once: each thread goes through
// the phases in order, claims tasks of a phase until none is left (see
// run_phases for the order), and starts a task of phase p once every task of
// the phases before it has finished. Completed tasks are counted; while a task
// of phase p waits, only tasks of earlier phases can complete (every one of them
// was claimed before), so reaching the count of those tasks means all of them
// are done. Any number of participating threads, one included, finishes the
// work: a team smaller than asked for (nested parallelism, a busy pool running
// the chunks in turn) cannot deadlock it (tests/cpp/test_phases.cpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <new>
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
  int spins = 0;
  while (done.load(std::memory_order_acquire) < target) {
    if (spins < kSpins) {
      cpu_relax();
      ++spins;
    } else {
      std::this_thread::yield();
    }
  }
}

// Sets claims_from_back() for its lifetime.
struct ClaimsFromBack {
  const bool was;
  explicit ClaimsFromBack(bool back) : was(claims_from_back()) { claims_from_back() = back; }
  ~ClaimsFromBack() { claims_from_back() = was; }
  ClaimsFromBack(const ClaimsFromBack&) = delete;
  ClaimsFromBack& operator=(const ClaimsFromBack&) = delete;
};

// Runs phases 0..P-1 in order, phase p being count(p) tasks run(p, i). With
// threads <= 1 it is a plain loop. `starts` is scratch for P + 1 offsets,
// `claims` for P.
//
// A phase's tasks are claimed from both ends: the participant that starts at
// thread index 1 takes them from the last down, every other one from the first
// up, a run of them per fetch_add (the word counts claims from the front in its
// low half and from the back in its high half; a claim holds the tasks that the
// counts before it did not yet cover). In a pass whose steps have the same tasks
// (the panels of a weight, the units of a state), each of two threads so keeps
// its end of the weight and of the state in its own cache from step to step,
// and only the tasks where they meet change hands; a single shared counter
// handed the panels out in whatever order the threads arrived. Paired A/B in
// random order (Intel Xeon, 2 cores): 2-thread forward 5-8% faster (LSTM, GRU,
// RNN at N=16 H=256, LSTM N=128 H=256, RNN N=64 H=512), backward about 1%.
// A claim takes a quarter of what it saw left for two threads (1 / (2 x the
// team)), down to a single task, so the threads still meet within a task of
// each other, with half the claims and completion counts, each a cache line
// taken from the other core: LSTM T=100 N=16 H=256 float32, 2 threads, 0.97 of
// the time in inference and 0.98 in training against a task per claim, GRU
// 0.99.
template <typename Count, typename Run>
void run_phases(int64_t P, const Count& count, const Run& run, int threads, int64_t* starts,
                std::atomic<int64_t>* claims, const Parallel& par) {
  if (threads <= 1 || par.max_threads <= 1) {
    const ClaimsFromBack claiming(false);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = count(p);
      for (int64_t i = 0; i < n; ++i) run(p, i);
    }
    return;
  }
  starts[0] = 0;
  for (int64_t p = 0; p < P; ++p) {
    starts[p + 1] = starts[p] + count(p);
    new (&claims[p]) std::atomic<int64_t>(0);
  }
  constexpr int64_t kBack = int64_t{1} << 32;
  // On a line of its own: the claims would otherwise take from the waiting
  // threads the line they spin on.
  alignas(64) std::atomic<int64_t> done{0};
  par(threads, 1, [&](int64_t first, int64_t) {
    const bool back = first == 1;
    const ClaimsFromBack claiming(back);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = starts[p + 1] - starts[p];
      int64_t want = std::max<int64_t>(1, n / (2 * threads));
      for (;;) {
        const int64_t before =
            claims[p].fetch_add(back ? want * kBack : want, std::memory_order_relaxed);
        const int64_t from_front = before & (kBack - 1), from_back = before >> 32;
        const int64_t left = n - from_front - from_back;
        if (left <= 0) break;
        const int64_t got = std::min(want, left);
        wait_for(done, starts[p]);
        for (int64_t j = 0; j < got; ++j) run(p, back ? n - 1 - from_back - j : from_front + j);
        done.fetch_add(got, std::memory_order_acq_rel);
        want = std::max<int64_t>(1, (left - got) / (2 * threads));
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fusedrnn::cpu
