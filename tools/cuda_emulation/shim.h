// Host emulation of the CUDA kernels (tools/cuda_emulate.sh), force-included
// into the copies of csrc/kernels/cuda/*.cu that the host compiler builds.
//
// Kernels become plain functions. A step-kernel launch runs every (block,
// thread) of the grid one after the other with blockIdx/threadIdx set. That is
// exact for those kernels: within a launch every thread reads what it alone
// writes (or read-only data), so any order of threads gives the same result.
//
// A cooperative launch (the persistent kernels) runs every thread of the grid
// as a fiber on this OS thread: a fiber runs until it reaches
// __syncthreads() or grid_sync() or returns; a block barrier opens when every
// thread of the block waits at it, the grid barrier when every thread of the
// grid does. A barrier that can never open (threads of one block waiting at
// different barriers, or some returned) aborts with a message: on a GPU that
// kernel would hang or be undefined. Dynamic shared memory is a buffer per block
// of exactly the launch's bytes.
// A warp-wide tensor-core operation (mma_16816) is a rendezvous of the warp's 32
// fibers: each lane leaves its fragments, waits until the whole warp has, computes
// its part of D from the full tiles, and waits again before the next one.
//
// FRNN_EMUL_ORDER sets the order in which the threads run. A cooperative launch
// runs in rounds by default: every fiber that can run, each until its next
// barrier, then the barriers that all their threads reached open, so the blocks
// keep step with each other. The orders: "forward" (the default; block by
// block, thread by thread), "reverse", "shuffle" or "shuffle:SEED" (a
// permutation drawn anew for every round, each launch drawing from SEED, 1 by
// default); "blocks" and "blocks-reverse" run one block of a cooperative launch
// at a time, in index order or reversed, each until all its threads wait at the
// grid barrier or are done. A step kernel's threads run in the order's turn
// ("blocks": forward). Where two threads of one barrier interval touch the same
// memory, one of them writing, the result depends on which runs first, and one
// order alone hides the race whenever it runs first the thread that was meant
// to; rounds hide one between blocks whose barriers line up. So the same results
// in every order check that no block barrier is missing, and, with the blocks
// one at a time, that blocks exchange data only across grid barriers.
//
// The emulated device: compute capability 9.0, 16 multiprocessors, 227 KiB of
// shared memory per block, one resident block per multiprocessor for every
// persistent kernel. FRNN_EMUL_COOP_BLOCKS=n makes it a context that runs at
// most n blocks at once while the device still reports 16 multiprocessors: a
// cooperative launch of more blocks fails with
// cudaErrorCooperativeLaunchTooLarge, as the driver's does. A failed
// call leaves its error for cudaGetLastError, which returns and clears it.
#pragma once

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define FRNN_HOST_EMULATION 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#include <vector_types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

inline thread_local uint3 blockIdx, threadIdx;
inline thread_local dim3 blockDim, gridDim;

namespace frnn_emul {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

// The order of FRNN_EMUL_ORDER (see above), read at every launch.
class RunOrder {
 public:
  RunOrder() {
    const char* v = std::getenv("FRNN_EMUL_ORDER");
    const std::string s = v == nullptr ? "" : v;
    if (s.empty() || s == "forward") {
      kind_ = kForward;
    } else if (s == "reverse") {
      kind_ = kReverse;
    } else if (s == "blocks") {
      kind_ = kBlocks;
    } else if (s == "blocks-reverse") {
      kind_ = kBlocksReverse;
    } else if (s == "shuffle" || s.rfind("shuffle:", 0) == 0) {
      kind_ = kShuffle;
      if (s.size() > 8) {
        char* end = nullptr;
        const unsigned long long seed = std::strtoull(s.c_str() + 8, &end, 10);
        if (end == s.c_str() + 8 || *end != '\0')
          fail("FRNN_EMUL_ORDER=shuffle:SEED needs SEED a non-negative integer");
        rng_.seed(seed);
      }
    } else {
      fail("FRNN_EMUL_ORDER must be forward, reverse, shuffle, shuffle:SEED, blocks or "
           "blocks-reverse");
    }
  }

  // Threads in index order, one after the other.
  bool forward() const { return kind_ == kForward || kind_ == kBlocks; }
  // A cooperative launch's blocks one at a time, each up to the grid barrier.
  bool by_block() const { return kind_ == kBlocks || kind_ == kBlocksReverse; }

  // The n threads (the grid's, block by block) in this order; shuffled anew at
  // every call.
  const std::vector<size_t>& of(size_t n) { return permute(threads_, n); }
  // The n blocks, in the order by_block runs them.
  const std::vector<size_t>& blocks(size_t n) { return permute(blocks_, n); }

 private:
  const std::vector<size_t>& permute(std::vector<size_t>& perm, size_t n) {
    if (perm.size() != n || kind_ == kShuffle) {
      perm.resize(n);
      std::iota(perm.begin(), perm.end(), size_t{0});
      if (kind_ == kReverse || kind_ == kBlocksReverse) std::reverse(perm.begin(), perm.end());
      if (kind_ == kShuffle) std::shuffle(perm.begin(), perm.end(), rng_);
    }
    return perm;
  }

  enum Kind { kForward, kReverse, kShuffle, kBlocks, kBlocksReverse } kind_ = kForward;
  std::mt19937_64 rng_{1};
  std::vector<size_t> threads_, blocks_;
};

// The index of the i-th (block or thread) of d, x fastest.
inline uint3 index_in(size_t i, dim3 d) {
  return uint3{static_cast<unsigned>(i % d.x), static_cast<unsigned>(i / d.x % d.y),
               static_cast<unsigned>(i / (size_t{d.x} * d.y))};
}

template <typename F>
void launch(dim3 grid, dim3 block, const F& body) {
  if (block.x * block.y * block.z > 1024) std::abort();  // the device limit
  gridDim = grid;
  blockDim = block;
  const size_t nb = size_t{grid.x} * grid.y * grid.z, nt = size_t{block.x} * block.y * block.z;
  const auto run = [&](size_t k) {
    blockIdx = index_in(k / nt, grid);
    threadIdx = index_in(k % nt, block);
    body();
  };
  RunOrder order;
  if (order.forward()) {
    for (size_t k = 0; k < nb * nt; ++k) run(k);
  } else {
    for (const size_t k : order.of(nb * nt)) run(k);
  }
}

// The last error of a runtime call on this thread (cudaGetLastError).
inline thread_local cudaError_t pending_error = cudaSuccess;

inline cudaError_t failed(cudaError_t e) {
  pending_error = e;
  return e;
}

inline cudaError_t last_error() {
  const cudaError_t e = pending_error;
  pending_error = cudaSuccess;
  return e;
}

// A fiber's saved machine state and the switch between two of them. On x86-64
// the switch saves the registers a call must keep (rbx, rbp, r12-r15, MXCSR, the
// x87 control word) on the stack it leaves and restores them from the one it
// enters, in user space, and tells AddressSanitizer, where it is built in, of
// each change of stack. glibc's swapcontext, the switch on other architectures,
// also saves and restores the signal mask, two system calls a switch: the
// emulated tests took 4 times as long with it (320 s against 78 s on an AMD EPYC
// Zen 4).
#if defined(__SANITIZE_ADDRESS__)
inline void asan_start_switch(void** fake_stack, const void* bottom, size_t size) {
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
}
inline void asan_finish_switch(void* fake_stack, const void** bottom, size_t* size) {
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
}
// A stack taken again: the redzones of the frames left on it when its last
// fiber was done are not redzones any more.
inline void asan_unpoison(void* p, size_t size) { ASAN_UNPOISON_MEMORY_REGION(p, size); }
#else
inline void asan_start_switch(void**, const void*, size_t) {}
inline void asan_finish_switch(void*, const void**, size_t*) {}
inline void asan_unpoison(void*, size_t) {}
#endif

#if defined(__x86_64__)
// Saves this context's registers and stack pointer at *save_sp (rdi) and
// continues the one saved at load_sp (rsi). Naked (so never inlined), with
// inline linkage: one definition however many files include this, LTO included.
[[gnu::naked]] inline void switch_stacks([[maybe_unused]] void** save_sp,
                                        [[maybe_unused]] void* load_sp) {
  asm(R"(
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
)");
}

// Whether this thread runs with a shadow stack (CET), which a switch of stacks
// in user space would have to switch too: rdsspq is a no-op where it is off.
inline bool shadow_stack_on() {
  uint64_t ssp = 0;
  asm volatile("rdsspq %0" : "+r"(ssp));
  return ssp != 0;
}

class Context {
 public:
  // Makes the first switch to this context call entry() on the stack
  // [stack, stack + size), with this thread's MXCSR and x87 control word;
  // entry must call entered() first, and never return.
  void start(char* stack, size_t size, void (*entry)()) {
    if (shadow_stack_on())
      fail("this process runs with a shadow stack (CET), which the fibers' switch does not "
           "switch; run the emulation with GLIBC_TUNABLES=glibc.cpu.x86_shstk=off");
    bottom_ = stack;
    size_ = size;
    uint32_t control[2] = {0, 0};
    asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
    void** s = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15});
    *--s = nullptr;                          // entry's return address (entered as if called)
    *--s = reinterpret_cast<void*>(entry);   // where the first switch returns to
    for (int r = 0; r < 6; ++r) *--s = nullptr;  // rbp, rbx, r12-r15
    s -= 1;
    std::memcpy(s, control, sizeof(control));
    sp_ = s;
  }
  // In a started context's entry, first: takes the stack of the context it came
  // from (for a context of this thread's own stack, which start() never saw).
  void entered(Context& from) { asan_finish_switch(nullptr, &from.bottom_, &from.size_); }
  // Switches to next; returns when something switches back. With for_good, this
  // context is never switched to again.
  void switch_to(Context& next, bool for_good = false) {
    asan_start_switch(for_good ? nullptr : &fake_stack_, next.bottom_, next.size_);
    switch_stacks(&sp_, next.sp_);
    asan_finish_switch(fake_stack_, nullptr, nullptr);
  }

 private:
  void* sp_ = nullptr;
  const void* bottom_ = nullptr;
  size_t size_ = 0;
  void* fake_stack_ = nullptr;
};
#else
class Context {
 public:
  void start(char* stack, size_t size, void (*entry)()) {
    getcontext(&ctx_);
    ctx_.uc_stack.ss_sp = stack;
    ctx_.uc_stack.ss_size = size;
    ctx_.uc_link = nullptr;
    makecontext(&ctx_, entry, 0);
    // The stack is makecontext's alone: swapcontext never reads it. Under
    // AddressSanitizer, whose swapcontext clears the shadow of the stack it
    // switches to (a 64 KiB stack: a madvise at every barrier), an empty one
    // keeps the switches as cheap as without it.
    ctx_.uc_stack = stack_t{};
  }
  void entered(Context&) {}
  void switch_to(Context& next, bool = false) { swapcontext(&ctx_, &next.ctx_); }

 private:
  ucontext_t ctx_;
};
#endif

enum Wait { kRunnable, kWarpBarrier, kBlockBarrier, kGridBarrier, kDone };

struct Fiber {
  Context ctx;
  uint3 block, thread;
  Wait wait = kRunnable;
};

// What a lane brings to a warp-wide mma.
struct Lane {
  uint32_t a[4], b[2];
};

struct Cooperative {
  std::vector<Fiber> fibers;
  std::vector<Lane> lanes;
  Context scheduler;
  Fiber* current = nullptr;
  unsigned threads = 0;  // per block
  // Each block's dynamic shared memory, filled with 0xFF bytes (NaN in every
  // floating type) as a GPU's holds what earlier kernels left: a result that
  // depends on a read before a write goes wrong here rather than reading zeros.
  std::vector<std::vector<unsigned char>> smem;
  const std::function<void()>* body = nullptr;
};

inline thread_local Cooperative* coop = nullptr;
constexpr size_t kFiberStack = size_t{64} << 10;
// The fibers' stacks, kept from one launch to the next on this thread: fresh ones
// cost a page fault for every page a fiber touches, and the persistent kernels'
// emulated tests took 80 s with them against 53 s.
inline thread_local std::vector<std::unique_ptr<char[]>> fiber_stacks;

[[noreturn]] inline void fiber_entry() {
  coop->current->ctx.entered(coop->scheduler);
  (*coop->body)();
  coop->current->wait = kDone;
  coop->current->ctx.switch_to(coop->scheduler, true);
  fail("a finished fiber resumed");
}

inline void wait_at(Wait w) {
  if (coop == nullptr) {
    if (w == kGridBarrier) fail("grid_sync() outside a cooperative launch");
    return;  // __syncthreads() in a sequentially emulated step kernel: no other thread runs
  }
  Fiber* f = coop->current;
  f->wait = w;
  f->ctx.switch_to(coop->scheduler);
}

template <typename F>
void launch_cooperative(dim3 grid, dim3 block, size_t smem_bytes, const F& body) {
  const unsigned nb = grid.x * grid.y * grid.z, nt = block.x * block.y * block.z;
  if (nt > 1024 || nb == 0 || nb > 16) fail("cooperative launch beyond the emulated device");
  if (coop != nullptr) fail("cooperative launch from inside a cooperative launch");
  Cooperative c;
  c.threads = nt;
  c.smem.assign(nb, std::vector<unsigned char>(smem_bytes, 0xFF));
  const std::function<void()> fn = [&] { body(); };
  c.body = &fn;
  c.fibers.resize(static_cast<size_t>(nb) * nt);
  c.lanes.resize(c.fibers.size());
  while (fiber_stacks.size() < c.fibers.size()) fiber_stacks.emplace_back(new char[kFiberStack]);
  for (size_t k = 0; k < c.fibers.size(); ++k) {
    Fiber& f = c.fibers[k];
    f.block = index_in(k / nt, grid);
    f.thread = index_in(k % nt, block);
    asan_unpoison(fiber_stacks[k].get(), kFiberStack);
    f.ctx.start(fiber_stacks[k].get(), kFiberStack, fiber_entry);
  }
  coop = &c;
  gridDim = grid;
  blockDim = block;
  RunOrder order;
  // Runs the runnable fibers of blocks [b0, b1) in the order's turn, each to its
  // next barrier.
  const auto run = [&](unsigned b0, unsigned b1) {
    for (const size_t k : order.of(c.fibers.size())) {
      Fiber& f = c.fibers[k];
      if (k / nt < b0 || k / nt >= b1 || f.wait != kRunnable) continue;
      c.current = &f;
      blockIdx = f.block;
      threadIdx = f.thread;
      c.scheduler.switch_to(f.ctx);
    }
  };
  // Opens the warp and block barriers of block b where all their threads wait;
  // whether it opened one.
  const auto open = [&](unsigned b) {
    Fiber* fb = &c.fibers[static_cast<size_t>(b) * nt];
    unsigned at_block = 0, block_done = 0;
    for (unsigned t = 0; t < nt; ++t) {
      at_block += fb[t].wait == kBlockBarrier;
      block_done += fb[t].wait == kDone;
    }
    bool opened = false;
    for (unsigned w = 0; w + 32 <= nt; w += 32) {
      unsigned at_warp = 0;
      for (unsigned l = 0; l < 32; ++l) at_warp += fb[w + l].wait == kWarpBarrier;
      if (at_warp == 32) {
        for (unsigned l = 0; l < 32; ++l) fb[w + l].wait = kRunnable;
        opened = true;
      }
    }
    if (at_block == nt) {
      for (unsigned t = 0; t < nt; ++t) fb[t].wait = kRunnable;
      opened = true;
    } else if (at_block > 0 && at_block + block_done == nt) {
      fail("__syncthreads() that some threads of the block never reach");
    }
    return opened;
  };
  for (;;) {
    if (order.by_block()) {
      for (const size_t k : order.blocks(nb)) {
        const unsigned b = static_cast<unsigned>(k);
        do {
          run(b, b + 1);
        } while (open(b));
      }
    } else {
      bool opened;
      do {
        run(0, nb);
        opened = false;
        for (unsigned b = 0; b < nb; ++b) opened = open(b) || opened;
      } while (opened);
    }
    size_t done = 0, at_grid = 0;
    for (const Fiber& f : c.fibers) {
      done += f.wait == kDone;
      at_grid += f.wait == kGridBarrier;
    }
    if (done == c.fibers.size()) break;
    if (at_grid + done != c.fibers.size()) fail("threads of one block wait at different barriers");
    if (done > 0) fail("grid_sync() that some threads of the grid never reach");
    for (Fiber& f : c.fibers) f.wait = kRunnable;
  }
  coop = nullptr;
}

template <typename S>
float element(uint32_t pair, int i) {
  const uint16_t v = static_cast<uint16_t>(pair >> (16 * i));
  S x;
  std::memcpy(&x, &v, sizeof(v));
  if constexpr (std::is_same_v<S, __half>)
    return __half2float(x);
  else
    return __bfloat162float(x);
}

// The warp-wide rendezvous of an mma: leaves this lane's fragments, waits until
// every lane of the warp has, calls f(the warp's 32 lanes, this lane), and waits
// again, so that no lane overwrites its fragments before all have read them.
template <typename F>
void warp_rendezvous(const uint32_t (&a)[4], const uint32_t (&b)[2], const F& f) {
  if (coop == nullptr) fail("mma outside a cooperative launch");
  if (coop->threads % 32 != 0) fail("mma in a block that is not whole warps");
  const size_t me = static_cast<size_t>(coop->current - coop->fibers.data());
  const unsigned lane = static_cast<unsigned>(me % coop->threads) % 32;
  Lane& mine = coop->lanes[me];
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  wait_at(kWarpBarrier);
  f(&coop->lanes[me - lane], lane);
  wait_at(kWarpBarrier);
}

// d[i] += sum_k A[row_i][k] B[k][col_i] over the calling lane's accumulator
// fragment (rows g, g, g+8, g+8 and columns 2t, 2t+1, 2t, 2t+1), summed in float
// in increasing k.
template <int K>
void accumulate(float (&d)[4], const float (&A)[16][K], const float (&B)[K][8], unsigned lane) {
  const unsigned g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float s = d[i];
    for (int k = 0; k < K; ++k) s += A[row][k] * B[k][col];
    d[i] = s;
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} for the calling lane, in the
// fragment layouts of the PTX ISA (see mma_16816 in persistent.cuh).
template <typename S>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  warp_rendezvous(a, b, [&](const Lane* warp, unsigned lane) {
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
      const unsigned g = l / 4, t = l % 4;
      for (int i = 0; i < 2; ++i) {
        A[g][2 * t + i] = element<S>(warp[l].a[0], i);
        A[g + 8][2 * t + i] = element<S>(warp[l].a[1], i);
        A[g][2 * t + 8 + i] = element<S>(warp[l].a[2], i);
        A[g + 8][2 * t + 8 + i] = element<S>(warp[l].a[3], i);
        B[2 * t + i][g] = element<S>(warp[l].b[0], i);
        B[2 * t + 8 + i][g] = element<S>(warp[l].b[1], i);
      }
    }
    accumulate<16>(d, A, B, lane);
  });
}

inline float bits_float(uint32_t v) {
  float x;
  std::memcpy(&x, &v, sizeof(x));
  return x;
}

// cvt.rna.tf32.f32: the 13 low mantissa bits rounded off, to nearest with ties
// away from zero (NaN and infinity kept).
inline uint32_t to_tf32(float x) {
  uint32_t v;
  std::memcpy(&v, &x, sizeof(v));
  if ((v & 0x7f800000u) == 0x7f800000u) return v;
  return (v + 0x1000u) & ~0x1fffu;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 for the calling lane (see
// mma_1688_tf32 in persistent.cuh).
inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  warp_rendezvous(a, b, [&](const Lane* warp, unsigned lane) {
    float A[16][8], B[8][8];
    for (unsigned l = 0; l < 32; ++l) {
      const unsigned g = l / 4, t = l % 4;
      A[g][t] = bits_float(warp[l].a[0]);
      A[g + 8][t] = bits_float(warp[l].a[1]);
      A[g][t + 4] = bits_float(warp[l].a[2]);
      A[g + 8][t + 4] = bits_float(warp[l].a[3]);
      B[t][g] = bits_float(warp[l].b[0]);
      B[t + 4][g] = bits_float(warp[l].b[1]);
    }
    accumulate<8>(d, A, B, lane);
  });
}

inline unsigned char* block_smem() {
  if (coop == nullptr) fail("dynamic shared memory outside a cooperative launch");
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  return coop->smem[b].data();
}

// A 16-byte copy from global to shared memory (cp.async on the device): both
// addresses 16-byte aligned, the destination in this block's shared memory and
// the source in none, or the device would fault or read the wrong space.
inline void copy16(void* dst, const void* src) {
  const auto in = [](const void* p, const std::vector<unsigned char>& buf) {
    const auto* c = static_cast<const unsigned char*>(p);
    return c >= buf.data() && c < buf.data() + buf.size();
  };
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    fail("a 16-byte copy to shared memory with an address that is not 16-byte aligned");
  const unsigned char* mine = block_smem();
  const auto& bufs = coop->smem;
  bool dst_mine = false;
  for (const auto& buf : bufs) {
    if (in(src, buf)) fail("a 16-byte copy to shared memory from shared memory");
    if (buf.data() == mine) dst_mine = in(dst, buf);
  }
  if (!dst_mine) fail("a 16-byte copy to shared memory outside the block's shared memory");
  std::memcpy(dst, src, 16);
}

inline cudaError_t get_device(int* d) {
  *d = 0;
  return cudaSuccess;
}

inline cudaError_t device_attribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = 16; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 227 * 1024; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *v = 1; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

// The dynamic shared memory each kernel may launch with (cudaFuncAttribute
// MaxDynamicSharedMemorySize), 48 KiB until raised, as on a device; a cooperative
// launch above it fails like one.
inline std::map<const void*, int>& dynamic_smem_limits() {
  static std::map<const void*, int> limits;
  return limits;
}

inline int dynamic_smem_limit(const void* f) {
  const auto it = dynamic_smem_limits().find(f);
  return it == dynamic_smem_limits().end() ? 48 * 1024 : it->second;
}

inline cudaError_t func_set_attribute(const void* f, cudaFuncAttribute a, int v) {
  if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (v < 0 || v > 227 * 1024) return failed(cudaErrorInvalidValue);
    dynamic_smem_limits()[f] = v;
  }
  return cudaSuccess;
}

inline cudaError_t func_get_attributes(cudaFuncAttributes* a, const void* f) {
  *a = cudaFuncAttributes{};
  a->ptxVersion = 90;
  a->binaryVersion = 90;
  a->maxDynamicSharedSizeBytes = dynamic_smem_limit(f);
  return cudaSuccess;
}

// Why the device would refuse a cooperative launch of `blocks` blocks of kernel
// f with smem bytes of dynamic shared memory (the error, also left for
// cudaGetLastError), or cudaSuccess.
inline cudaError_t cooperative_refusal(int blocks, size_t smem, const void* f) {
  if (smem > static_cast<size_t>(dynamic_smem_limit(f))) return failed(cudaErrorInvalidValue);
  const char* v = std::getenv("FRNN_EMUL_COOP_BLOCKS");
  if (v == nullptr || v[0] == '\0') return cudaSuccess;
  char* end = nullptr;
  const long most = std::strtol(v, &end, 10);
  if (v[0] < '0' || v[0] > '9' || *end != '\0') fail("FRNN_EMUL_COOP_BLOCKS must be a non-negative integer");
  return blocks > most ? failed(cudaErrorCooperativeLaunchTooLarge) : cudaSuccess;
}

inline cudaError_t occupancy(int* blocks, const void*, int, size_t) {
  *blocks = 1;
  return cudaSuccess;
}

// The step trace's clocks (persistent.cuh): both the host's steady clock in ns.
inline long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline cudaError_t stream_is_capturing(cudaStream_t, cudaStreamCaptureStatus* s) {
  *s = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

}  // namespace frnn_emul

inline void __syncthreads() { ::frnn_emul::wait_at(::frnn_emul::kBlockBarrier); }
inline void grid_sync() { ::frnn_emul::wait_at(::frnn_emul::kGridBarrier); }
template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(::frnn_emul::block_smem());
}

#define cudaGetLastError() ::frnn_emul::last_error()
#define cudaGetDevice(...) ::frnn_emul::get_device(__VA_ARGS__)
#define cudaDeviceGetAttribute(...) ::frnn_emul::device_attribute(__VA_ARGS__)
#define cudaFuncSetAttribute(...) ::frnn_emul::func_set_attribute(__VA_ARGS__)
#define cudaFuncGetAttributes(...) ::frnn_emul::func_get_attributes(__VA_ARGS__)
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor(...) ::frnn_emul::occupancy(__VA_ARGS__)
#define cudaStreamIsCapturing(...) ::frnn_emul::stream_is_capturing(__VA_ARGS__)
#define cudaDeviceSynchronize() cudaSuccess
