// Host emulation of the CUDA kernels (tools/cuda_emulate.sh), force-included
// into the copies of csrc/kernels/cuda/*.cu that the host compiler builds.
//
// Kernels become plain functions. A step-kernel launch runs every (block,
// thread) of the grid one after the other with blockIdx/threadIdx set. That is
// exact for those kernels: within a launch every thread reads what it alone
// writes (or read-only data), so any order of threads gives the same result.
//
// A cooperative launch (the persistent kernels) runs every thread of the grid
// as a fiber (ucontext) on this OS thread: a fiber runs until it reaches
// __syncthreads() or grid_sync() or returns; a block barrier opens when every
// thread of the block waits at it, the grid barrier when every thread of the
// grid does. A barrier that can never open (threads of one block waiting at
// different barriers, or some returned) aborts with a message: on a GPU that
// kernel would hang or be undefined. Dynamic shared memory is a buffer per block.
// The emulated device: 16 multiprocessors, 227 KiB of shared memory per block,
// one resident block per multiprocessor for every persistent kernel.
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
#include <vector_types.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

inline thread_local uint3 blockIdx, threadIdx;
inline thread_local dim3 blockDim, gridDim;

namespace frnn_emul {

template <typename F>
void launch(dim3 grid, dim3 block, const F& body) {
  if (block.x * block.y * block.z > 1024) std::abort();  // the device limit
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              blockIdx = uint3{bx, by, bz};
              threadIdx = uint3{tx, ty, tz};
              body();
            }
}

inline cudaError_t last_error() { return cudaSuccess; }

enum Wait { kRunnable, kBlockBarrier, kGridBarrier, kDone };

struct Fiber {
  ucontext_t ctx;
  uint3 block, thread;
  Wait wait = kRunnable;
};

struct Cooperative {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  unsigned threads = 0;  // per block
  std::vector<std::vector<unsigned char>> smem;
  const std::function<void()>* body = nullptr;
};

inline thread_local Cooperative* coop = nullptr;
constexpr size_t kFiberStack = size_t{64} << 10;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

inline void fiber_entry() {
  (*coop->body)();
  coop->current->wait = kDone;
}

inline void wait_at(Wait w) {
  if (coop == nullptr) {
    if (w == kGridBarrier) fail("grid_sync() outside a cooperative launch");
    return;  // __syncthreads() in a sequentially emulated step kernel: no other thread runs
  }
  Fiber* f = coop->current;
  f->wait = w;
  swapcontext(&f->ctx, &coop->scheduler);
}

template <typename F>
void launch_cooperative(dim3 grid, dim3 block, size_t smem_bytes, const F& body) {
  const unsigned nb = grid.x * grid.y * grid.z, nt = block.x * block.y * block.z;
  if (nt > 1024 || nb == 0 || nb > 16) fail("cooperative launch beyond the emulated device");
  Cooperative c;
  c.threads = nt;
  c.smem.assign(nb, std::vector<unsigned char>(smem_bytes + 16));
  const std::function<void()> fn = [&] { body(); };
  c.body = &fn;
  c.fibers.resize(static_cast<size_t>(nb) * nt);
  std::vector<std::unique_ptr<char[]>> stacks(c.fibers.size());
  for (size_t k = 0; k < c.fibers.size(); ++k) {
    Fiber& f = c.fibers[k];
    const unsigned b = static_cast<unsigned>(k / nt), t = static_cast<unsigned>(k % nt);
    f.block = uint3{b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
    f.thread = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    stacks[k].reset(new char[kFiberStack]);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks[k].get();
    f.ctx.uc_stack.ss_size = kFiberStack;
    f.ctx.uc_link = &c.scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  Cooperative* outer = coop;
  coop = &c;
  gridDim = grid;
  blockDim = block;
  for (;;) {
    for (Fiber& f : c.fibers) {
      if (f.wait != kRunnable) continue;
      c.current = &f;
      blockIdx = f.block;
      threadIdx = f.thread;
      swapcontext(&c.scheduler, &f.ctx);
    }
    size_t done = 0, at_grid = 0;
    bool opened = false;
    for (unsigned b = 0; b < nb; ++b) {
      unsigned at_block = 0, block_done = 0;
      for (unsigned t = 0; t < nt; ++t) {
        const Wait w = c.fibers[static_cast<size_t>(b) * nt + t].wait;
        at_block += w == kBlockBarrier;
        block_done += w == kDone;
        at_grid += w == kGridBarrier;
      }
      done += block_done;
      if (at_block == nt) {
        for (unsigned t = 0; t < nt; ++t) c.fibers[static_cast<size_t>(b) * nt + t].wait = kRunnable;
        opened = true;
      } else if (at_block > 0 && at_block + block_done == nt) {
        fail("__syncthreads() that some threads of the block never reach");
      }
    }
    if (done == c.fibers.size()) break;
    if (opened) continue;
    if (at_grid + done != c.fibers.size()) fail("threads of one block wait at different barriers");
    if (done > 0) fail("grid_sync() that some threads of the grid never reach");
    for (Fiber& f : c.fibers) f.wait = kRunnable;
  }
  coop = outer;
}

inline unsigned char* block_smem() {
  if (coop == nullptr) fail("dynamic shared memory outside a cooperative launch");
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  return coop->smem[b].data();
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
    default: return cudaErrorInvalidValue;
  }
}

inline cudaError_t func_set_attribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }

inline cudaError_t occupancy(int* blocks, const void*, int, size_t) {
  *blocks = 1;
  return cudaSuccess;
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
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor(...) ::frnn_emul::occupancy(__VA_ARGS__)
#define cudaStreamIsCapturing(...) ::frnn_emul::stream_is_capturing(__VA_ARGS__)
