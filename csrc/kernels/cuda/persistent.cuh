// The persistent path (DESIGN.md): one cooperative launch runs every step of a
// layer and direction (or a chunk of steps) with the block's slice of W_hh
// resident in shared memory for the whole launch, and one grid-wide barrier
// between steps (two for GRU reset_before, whose W_hn product needs r*h of every
// unit).
//
// Work split: block b owns hidden units [b*U, b*U + U). Forward, it holds the
// G*U rows of W_hh that produce its units' gate pre-activations (row g*U + j of
// the slice is row g*H + b*U + j of W_hh) and computes Gh for its units from the
// previous h of all units (read from global memory, where every block wrote its
// units one barrier earlier). Backward, it holds the U columns of W_hh of its
// units (slice row j = column b*U + j, transposed) and computes the recurrent
// dL/dh of its units from the previous step's dG of all units. The pointwise
// work of a step is then the standard path's own (row, unit) functor, called for
// the block's units, so both paths share every line of cell math and layout.
//
// The product is exact in the compute type (FMA on CUDA cores, float for the
// 16-bit types, no TF32), in a fixed order: results are deterministic. Its
// result is rounded to the storage type before the pointwise step reads it, as
// the standard path's GEMM output is.
//
// Geometry of a block: kPersistentThreads threads; thread t serves unit
// j = t % U and rows t / U, t / U + 256 / U, ... of every step.
#pragma once

#include "cuda_utils.cuh"

#ifndef FRNN_HOST_EMULATION
#include <cooperative_groups.h>
#endif

namespace fusedrnn::cuda {

constexpr int kPersistentThreads = 256;
// Outputs of one product per thread, held in registers: a product of a block
// has at most N * (rows of its weight slice) <= kMaxAcc * kPersistentThreads
// outputs.
constexpr int kMaxAcc = 8;
// Bytes of the staged operand (the previous h, or the previous dG) per pass:
// N rows of kc columns.
constexpr int64_t kStageBytes = int64_t{8} << 10;

#ifndef FRNN_HOST_EMULATION
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char frnn_dynamic_smem[];
  return reinterpret_cast<T*>(frnn_dynamic_smem);
}
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }
#endif

// This thread's place in its block (see the header comment).
struct UnitSlot {
  int64_t u0;  // first unit of the block
  int j;       // unit within the block
  int64_t u;   // hidden unit u0 + j (a thread with u >= H has no unit)
  int row0, row_step;
};

__device__ __forceinline__ UnitSlot unit_slot(int U) {
  UnitSlot s;
  s.u0 = static_cast<int64_t>(blockIdx.x) * U;
  s.j = static_cast<int>(threadIdx.x) % U;
  s.u = s.u0 + s.j;
  s.row0 = static_cast<int>(threadIdx.x) / U;
  s.row_step = static_cast<int>(blockDim.x) / U;
  return s;
}

// Forward slice: ws[(g*U + j)*ldw + k] = w[(g*H + u0 + j)*H + k] for gate blocks
// g < gates, k < H; zero rows for units past H.
template <typename S>
__device__ void load_gate_rows(S* ws, int ldw, const S* w, int64_t H, int gates, int U,
                               int64_t u0) {
  const int64_t n = static_cast<int64_t>(gates) * U * H;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const int64_t mb = e / H, k = e % H;
    const int64_t g = mb / U, u = u0 + mb % U;
    ws[mb * ldw + k] = u < H ? w[(g * H + u) * H + k] : from_acc<S>(acc_t<S>(0));
  }
}

// Backward slice: ws[j*ldw + k] = w[k*H + u0 + j] for k < K (the rows of W_hh
// the recurrent gradient passes through); zero for units past H.
template <typename S>
__device__ void load_unit_columns(S* ws, int ldw, const S* w, int64_t H, int64_t K, int U,
                                  int64_t u0) {
  const int64_t n = K * U;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const int64_t k = e / U, j = e % U, u = u0 + j;
    ws[j * ldw + k] = u < H ? w[k * H + u] : from_acc<S>(acc_t<S>(0));
  }
}

// out(n, m) = sum_{k < K} x[n*ldx + k] * ws[(m0 + m)*ldw + kw0 + k] for n < rows,
// m < M, accumulated in the compute type in increasing k; emit(n, m, out) is
// called once per output by the thread that computed it. x (global) is staged
// through xs (shared, rows x ldxs) kc columns at a time. Called by every thread
// of the block (it synchronises the block); rows * M <= kMaxAcc * blockDim.x.
template <typename S, typename Emit>
__device__ void block_product(const S* ws, int ldw, int m0, int M, int64_t kw0, const S* x,
                              int64_t ldx, int64_t rows, int64_t K, S* xs, int kc, int ldxs,
                              const Emit& emit) {
  using A = acc_t<S>;
  const int64_t nout = rows * M;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  A acc[kMaxAcc];
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) acc[q] = A(0);
  for (int64_t kb = 0; kb < K; kb += kc) {
    const int64_t kw = K - kb < kc ? K - kb : kc;
    for (int64_t e = tid; e < rows * kw; e += nth) {
      const int64_t n = e / kw, k = e % kw;
      xs[n * ldxs + k] = x[n * ldx + kb + k];
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kMaxAcc; ++q) {
      const int64_t o = tid + static_cast<int64_t>(q) * nth;
      if (o < nout) {
        const S* xr = xs + (o / M) * ldxs;
        const S* wr = ws + (m0 + o % M) * static_cast<int64_t>(ldw) + kw0 + kb;
        A a = acc[q];
        for (int64_t k = 0; k < kw; ++k) a += to_acc(xr[k]) * to_acc(wr[k]);
        acc[q] = a;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) {
    const int64_t o = tid + static_cast<int64_t>(q) * nth;
    if (o < nout) emit(o / M, static_cast<int>(o % M), acc[q]);
  }
}

// The shared-memory layout of a block: the weight slice, then the staging area.
template <typename S>
struct BlockSmem {
  S* ws;
  S* xs;
  __device__ explicit BlockSmem(const PersistentLayout& lay) {
    ws = dynamic_smem<S>();
    xs = ws + static_cast<int64_t>(lay.w_rows) * lay.ldw;
  }
};

// The previously processed step, when there is one.
__device__ __forceinline__ bool has_step(const SeqLayout& seq, int64_t s) {
  return s >= 0 && s < seq.T;
}

// The last step of row i is the one after which it is no longer active
// (forward direction: the next step has fewer rows; reverse: only the final step).
__device__ __forceinline__ bool last_step_of_row(const SeqLayout& seq, int64_t s, int64_t i) {
  return s + 1 == seq.T || i >= seq.step(s + 1).rows;
}

// ------------------------------------------------------------------ host side

// Chooses U and the shared-memory layout for `kernel` on the current device, or
// says why the persistent path cannot run it (plan.why). w_rows_per_unit: rows
// of the weight slice per unit (forward G, backward 1); K: their length;
// out_per_unit: the largest product's outputs per unit and row.
template <typename S, typename Kernel>
cudaError_t plan_persistent(Kernel kernel, int64_t N, int64_t H, int w_rows_per_unit, int64_t K,
                            int out_per_unit, PersistentPlan& plan) {
  plan = PersistentPlan{};
  int dev = 0, sms = 0, smem_max = 0, coop = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (err != cudaSuccess) return err;
  if (coop == 0) {
    plan.why = "the device does not support cooperative launches";
    return cudaSuccess;
  }
  constexpr int64_t elem = sizeof(S);
  const int64_t pad = elem >= 4 ? 1 : 2;  // rows one bank apart
  const int64_t ldw = K + pad;
  const int64_t kc = std::max<int64_t>(16, std::min<int64_t>(K, kStageBytes / (N * elem)));
  const int64_t ldx = std::min(kc, K) + pad;
  PersistentPlan spare;
  for (int U = 1; U <= 32; U *= 2) {
    if (N * out_per_unit * U > int64_t{kMaxAcc} * kPersistentThreads) break;
    const int64_t w_rows = int64_t{w_rows_per_unit} * U;
    const int64_t smem = (w_rows * ldw + N * ldx) * elem;
    if (smem > smem_max) break;
    const int64_t blocks = ceil_div<int64_t>(H, U);
    err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    int per_sm = 0;
    if (err == cudaSuccess)
      err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(kernel),
                                                          kPersistentThreads, static_cast<size_t>(smem));
    if (err != cudaSuccess) return err;
    PersistentPlan p;
    p.blocks = static_cast<int>(blocks);
    p.smem = static_cast<size_t>(smem);
    p.lay.units = U;
    p.lay.w_rows = static_cast<int>(w_rows);
    p.lay.ldw = static_cast<int>(ldw);
    p.lay.kc = static_cast<int>(kc);
    p.lay.ldx = static_cast<int>(ldx);
    if (blocks <= sms && blocks <= int64_t{per_sm} * sms) {
      plan = p;
      return cudaSuccess;
    }
    if (spare.blocks == 0 && blocks <= int64_t{per_sm} * sms) spare = p;
  }
  if (spare.blocks != 0) {
    plan = spare;
    return cudaSuccess;
  }
  plan.why = "the weight slices do not fit on the device's multiprocessors at this size";
  return cudaSuccess;
}

// The one cooperative launch of every persistent kernel.
template <typename Args>
inline cudaError_t launch_persistent(void (*kernel)(Args), const PersistentPlan& plan,
                                     const Args& a, cudaStream_t stream) {
  if (plan.blocks <= 0) return cudaErrorInvalidConfiguration;
  void* params[] = {const_cast<Args*>(&a)};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(plan.blocks), dim3(kPersistentThreads), params, plan.smem, stream);
}

}  // namespace fusedrnn::cuda
