// Threading and scratch memory handed to the CPU kernels by the torch layer.
//
// The kernels stay free of ATen's runtime: the torch layer passes a
// parallel-for (at::parallel_for underneath) and a preallocated buffer. The
// per-ISA translation units use no std containers, so that no out-of-line
// instantiation compiled for one instruction set can be picked by the linker for
// code that runs on another.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

// For the epilogue lambdas of the fused step: inlined, their accumulators stay
// in registers instead of being passed through memory.
#if defined(__GNUC__)
#define FRNN_ALWAYS_INLINE __attribute__((always_inline))
#define FRNN_NOINLINE __attribute__((noinline))
#else
#define FRNN_ALWAYS_INLINE
#define FRNN_NOINLINE
#endif

namespace fusedrnn::cpu {

// Whether this thread takes the tasks of its passes from the last down
// (run_phases, phases.h): a product's prefetch then fetches the panel before
// the one it ends, not the one after it (PrefetchNext::after_chunk). One flag
// for every instruction set's copy of the kernels; always inlined, as Arena::take.
FRNN_ALWAYS_INLINE inline bool& claims_from_back() {
  thread_local bool back = false;
  return back;
}

struct Parallel {
  using Body = void (*)(const void* ctx, int64_t begin, int64_t end);
  // Runs body over [0, n) in chunks of at least `grain` items, possibly on
  // several threads; returns when all chunks are done.
  void (*run)(int64_t n, int64_t grain, const void* ctx, Body body);
  int max_threads;

  // The same, on at most `threads` threads. Always inlined, as Arena::take.
  FRNN_ALWAYS_INLINE Parallel at_most(int threads) const {
    return Parallel{run, threads < max_threads ? threads : max_threads};
  }

  template <typename F>
  void operator()(int64_t n, int64_t grain, const F& f) const {
    if (n <= 0) return;
    if (max_threads <= 1 || n <= grain) {
      f(int64_t{0}, n);
      return;
    }
    run(n, grain, &f, [](const void* ctx, int64_t b, int64_t e) {
      (*static_cast<const F*>(ctx))(b, e);
    });
  }
};

// Bump allocator over one buffer. With base == nullptr it only counts, so a
// kernel can be run once to size its workspace and once to do the work.
struct Arena {
  char* base = nullptr;
  size_t used = 0;
  size_t capacity = 0;  // bytes at base: what the sizing pass counted

  // Throws rather than hand out memory past capacity: a plan whose second pass
  // takes more than its sizing pass counted is a bug, not a reason to corrupt
  // the heap. Always inlined: an out-of-line copy, under the same name in every
  // instruction set's unit, could be one compiled with AVX-512 flags serving
  // them all.
  template <typename S>
  FRNN_ALWAYS_INLINE S* take(int64_t count) {
    constexpr size_t kAlign = 64;
    used = (used + kAlign - 1) / kAlign * kAlign;
    S* p = base ? reinterpret_cast<S*>(base + used) : nullptr;
    used += static_cast<size_t>(count > 0 ? count : 0) * sizeof(S);
    if (base && used > capacity)
      throw std::logic_error(
          "fusedrnn: internal error: a CPU kernel's scratch outgrew its sizing pass");
    return p;
  }
  bool sizing() const { return base == nullptr; }
};

}  // namespace fusedrnn::cpu
