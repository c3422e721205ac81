// The persistent path (DESIGN.md): one cooperative launch runs every step of a
// layer and direction (or a chunk of steps) with the block's slice of W_hh
// resident in shared memory for the whole launch, and one barrier between steps
// (two for GRU reset_before, whose W_hn product needs r*h of every unit): the
// grid's, or the block's where the plan puts every unit in one block
// (step_barrier).
//
// Work split: block b owns hidden units [b*U, b*U + U). Forward, it holds the
// G*U rows of W_hh that produce its units' gate pre-activations (row g*U + j of
// the slice is row g*H + b*U + j of W_hh) and computes Gh for its units from the
// previous h of all units (read from global memory, where every block wrote its
// units one barrier earlier; a one-block plan on CUDA cores keeps h in shared
// memory instead: state_in). Backward, it holds the U columns of W_hh of its
// units (slice row j = column b*U + j, transposed) and computes the recurrent
// dL/dh of its units from the previous step's dG of all units. The pointwise
// work of a step is then the standard path's own (row, unit) functor, called for
// the block's units, so both paths share every line of cell math and layout;
// forward, the functor finds Gh in the block's shared memory (gate_product).
//
// The product: for float16 and bfloat16 on sm_80 and later, on tensor cores
// (mma.sync m16n8k16, float accumulation, as cuBLAS does for the standard
// path's GEMMs); for float32, on tensor cores in TF32 (m16n8k8) where the user
// allows TF32 for matmuls (torch.backends.cuda.matmul.allow_tf32, as the
// standard path's cuBLAS GEMMs do), else FMA on CUDA cores; for float64, FMA on
// CUDA cores. Both sum in a fixed order: results are deterministic. The result
// is rounded to the storage type before the pointwise step reads it, as the
// standard path's GEMM output is.
//
// Geometry of a block: kPersistentThreads threads; for the pointwise work,
// thread t serves unit j = t % U and rows t / U, t / U + 256 / U, ... of every
// step.
#pragma once

#include "cuda_utils.cuh"

#include <cstdint>
#include <cstring>
#include <mutex>

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
// Tensor-core product: warps per block, and the 8-row weight tiles one warp
// multiplies with each fragment of the other operand.
constexpr int kWarps = kPersistentThreads / 32;
constexpr int kTileGroup = 4;
// k tiles whose A fragments a warp loads before multiplying any of them: each
// batch is one round trip to L2 (where the other blocks wrote h or dG) or to
// shared memory (where the block staged it), and issue 6's case 1 gives a warp
// 6 k tiles.
constexpr int kMmaBatch = 8;

template <typename S>
constexpr bool kMmaType = std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>;
// Storage types with a tensor-core product, and the k extent of their mma.
template <typename S>
constexpr bool kMmaCapable = kMmaType<S> || std::is_same_v<S, float>;
template <typename S>
constexpr int kMmaK = sizeof(S) == 2 ? 16 : 8;
// The row stride (elements) of a tensor-core operand of K columns in shared
// memory: K rounded to the k tile plus half a tile, so that the 8 rows x 4 words
// of a fragment fall in 32 different banks (a row stride of 4 mod 8 words).
template <typename S>
__host__ __device__ inline int64_t mma_stride(int64_t K) {
  return round_up<int64_t>(K, kMmaK<S>) + kMmaK<S> / 2;
}

#ifndef FRNN_HOST_EMULATION
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char frnn_dynamic_smem[];
  return reinterpret_cast<T*>(frnn_dynamic_smem);
}
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }
#endif

// The barrier between two steps (or two products of a step) of a persistent
// kernel: the grid's; with one block (plan_persistent's plan for a small
// layer), the block's, which orders the block's global writes for its own
// threads as well and costs a fraction of a grid barrier.
__device__ __forceinline__ void step_barrier() {
  if (gridDim.x == 1)
    __syncthreads();
  else
    grid_sync();
}

// The step trace (TracePoint in rnn_cuda.h), kept by the first thread of block
// 0 where the launch has a buffer for it. Without one, every thread passes the
// marks on a branch uniform over the grid; with one, block 0 also meets at a
// block barrier before the unit-work mark, so that the mark is the block's.
__device__ __forceinline__ long long trace_clock() {
#if defined(FRNN_HOST_EMULATION)
  return ::frnn_emul::now_ns();
#else
  return clock64();
#endif
}

__device__ __forceinline__ long long trace_ns() {
#if defined(FRNN_HOST_EMULATION)
  return ::frnn_emul::now_ns();
#else
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#endif
}

struct StepTrace {
  long long* out;  // the first thread of block 0 of a traced launch; else null
  bool block;      // block 0 of a traced launch (the same for every thread of a block)
  int64_t s0, s1;
  bool forward;
  __device__ StepTrace(long long* buf, int64_t first, int64_t end, bool fwd)
      : out(buf != nullptr && blockIdx.x == 0 && threadIdx.x == 0 ? buf : nullptr),
        block(buf != nullptr && blockIdx.x == 0), s0(first), s1(end), forward(fwd) {
    if (out != nullptr) {
      out[0] = trace_ns();
      out[1] = trace_clock();
    }
  }
  __device__ __forceinline__ void mark(int64_t s, TracePoint point) const {
    if (out != nullptr)
      out[kTraceHeader + (forward ? s - s0 : s1 - 1 - s) * kTracePoints + point] = trace_clock();
  }
  // kTraceUnits: once every thread of the block has done its unit work.
  __device__ __forceinline__ void units(int64_t s) const {
    if (block) {
      __syncthreads();
      mark(s, kTraceUnits);
    }
  }
  __device__ void finish() const {
    if (out != nullptr) {
      out[2] = trace_ns();
      out[3] = trace_clock();
    }
  }
};

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

// Forward slice: ws[(g*U + j)*ldw + k] = w[(g*H + u0 + j)*K + k] for gate blocks
// g < gates, k < K (w is [gates*H, K]); zero rows for units past H.
template <typename S>
__device__ void load_gate_rows(S* ws, int ldw, const S* w, int64_t H, int64_t K, int gates,
                               int U, int64_t u0) {
  const int64_t n = static_cast<int64_t>(gates) * U * K;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const int64_t mb = e / K, k = e % K;
    const int64_t g = mb / U, u = u0 + mb % U;
    ws[mb * ldw + k] = u < H ? w[(g * H + u) * K + k] : from_acc<S>(acc_t<S>(0));
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

// Elements of the other operand a thread loads before storing any of them when
// the CUDA-core product stages it in shared memory.
constexpr int kCopyBatch = 8;

// Threads that share one output of the CUDA-core product: with fewer outputs
// than threads, the idle threads split K too (a power of two up to kMaxSplit).
constexpr int kMaxSplit = 32;

__host__ __device__ inline int fma_split(int outputs, int threads) {
  int ks = 1;
  while (ks < kMaxSplit && outputs * ks * 2 <= threads) ks *= 2;
  return ks;
}

// The CUDA-core product (block_product): accumulated in the compute type. The
// outputs go to the threads in turn, fma_split threads to each when there are
// fewer outputs than threads (thread t: output t / ks, every ks-th k from
// t % ks); each thread sums its k of a staged pass in four chains, adds them to
// its partial sum in a fixed order, and the ks partial sums of an output are
// added pairwise in a fixed order (part: one value per thread), so results are
// deterministic. emit is called by the one thread that holds the sum. x
// (global memory, or the block's shared state) is staged through xs (shared,
// rows x ldxs) kc columns at a time (all of K in one pass where the plan found
// room); rows * M <= kMaxAcc * blockDim.x.
template <typename S, typename Emit>
__device__ void block_product_fma(const S* ws, int ldw, int m0, int M, int64_t kw0, const S* x,
                                  int64_t ldx, int64_t rows, int64_t K, S* xs, int kc, int ldxs,
                                  acc_t<S>* part, const Emit& emit) {
  using A = acc_t<S>;
  const int nout = static_cast<int>(rows) * M;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  const int ks = fma_split(nout, nth), lanes = nth / ks, r = tid % ks;
  A acc[kMaxAcc];
#pragma unroll
  for (int q = 0; q < kMaxAcc; ++q) acc[q] = A(0);
  for (int64_t kb = 0; kb < K; kb += kc) {
    const int kw = static_cast<int>(K - kb < kc ? K - kb : kc);
    // Element e = n*kw + k of the pass, for e = tid, tid + nth, ...: n and k
    // stepped without a division per element; kCopyBatch loads issued before
    // their stores, so that a batch waits for one round trip to memory, not
    // one per element.
    const int total = static_cast<int>(rows) * kw, dn = nth / kw, dk = nth % kw;
    int n = tid / kw, k = tid % kw;
    for (int e0 = tid; e0 < total; e0 += kCopyBatch * nth) {
      S v[kCopyBatch];
      int at[kCopyBatch];
#pragma unroll
      for (int j = 0; j < kCopyBatch; ++j) {
        at[j] = n * ldxs + k;
        if (e0 + j * nth < total) v[j] = x[n * ldx + kb + k];
        n += dn;
        k += dk;
        if (k >= kw) {
          k -= kw;
          ++n;
        }
      }
#pragma unroll
      for (int j = 0; j < kCopyBatch; ++j)
        if (e0 + j * nth < total) xs[at[j]] = v[j];
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kMaxAcc; ++q) {
      const int o = tid / ks + q * lanes;
      if (o < nout) {
        const S* xr = xs + (o / M) * ldxs;
        const S* wr = ws + static_cast<int64_t>(m0 + o % M) * ldw + kw0 + kb;
        // Four independent chains, so that a thread is not waiting on one FMA
        // after another.
        A p0(0), p1(0), p2(0), p3(0);
        int j = r;
        for (; j + 3 * ks < kw; j += 4 * ks) {
          p0 += to_acc(xr[j]) * to_acc(wr[j]);
          p1 += to_acc(xr[j + ks]) * to_acc(wr[j + ks]);
          p2 += to_acc(xr[j + 2 * ks]) * to_acc(wr[j + 2 * ks]);
          p3 += to_acc(xr[j + 3 * ks]) * to_acc(wr[j + 3 * ks]);
        }
        for (; j < kw; j += ks) p0 += to_acc(xr[j]) * to_acc(wr[j]);
        acc[q] += (p0 + p1) + (p2 + p3);
      }
    }
    __syncthreads();
  }
  if (ks == 1) {
#pragma unroll
    for (int q = 0; q < kMaxAcc; ++q) {
      const int o = tid + q * nth;
      if (o < nout) emit(o / M, o % M, acc[q]);
    }
    return;
  }
  // nout * ks <= nth: one output per thread, its ks partial sums in part.
  part[tid] = acc[0];
  for (int w = ks / 2; w > 0; w /= 2) {
    __syncthreads();
    if (r < w) part[tid] += part[tid + w];
  }
  const int o = tid / ks;
  if (r == 0 && o < nout) emit(o / M, o % M, part[tid]);
}

// The 16 bits of a 16-bit value.
template <typename S>
__device__ __forceinline__ uint32_t bits16(S v) {
  uint16_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

// p[0], p[1] packed low to high, each replaced by 0 at or past `avail` elements;
// one 32-bit load where `aligned` (p 4-byte aligned) and both are there.
template <typename S>
__device__ __forceinline__ uint32_t load_pair(const S* p, int64_t avail, bool aligned) {
  if (aligned && avail >= 2) return *reinterpret_cast<const uint32_t*>(p);
  const uint32_t lo = avail > 0 ? bits16(p[0]) : 0u;
  const uint32_t hi = avail > 1 ? bits16(p[1]) : 0u;
  return lo | (hi << 16);
}

// d += a b for one warp: a 16x16 tile of A (row-major), b a 16x8 tile of B
// (column-major), d 16x8 in float, in the fragment layouts of the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"): with
// g = lane / 4 and t = lane % 4, a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]} (pairs low to high),
// d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}. Every lane of the warp
// calls it together.
template <typename S>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
#if defined(FRNN_HOST_EMULATION)
  ::frnn_emul::mma_16816<S>(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<S, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // plan_persistent never chooses tensor cores below sm_80
#endif
}

// x rounded to TF32 (to nearest, ties away from zero), as a .b32 operand.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(FRNN_HOST_EMULATION)
  return ::frnn_emul::to_tf32(x);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  uint32_t r;
  memcpy(&r, &x, sizeof(r));
  return r;
#endif
}

// d += a b for one warp in TF32: a 16x8 tile of A, b an 8x8 tile of B, in the
// PTX ISA layouts ("Matrix Fragments for mma.m16n8k8", .tf32): a = {A[g][t],
// A[g+8][t], A[g][t+4], A[g+8][t+4]}, b = {B[t][g], B[t+4][g]}, d as for
// mma_16816.
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4],
                                              const uint32_t (&b)[2]) {
#if defined(FRNN_HOST_EMULATION)
  ::frnn_emul::mma_1688_tf32(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// The tensor-core operation of a storage type. A lane's A fragment is
// {X[g][c], X[g+8][c], X[g][c+kHalf], X[g+8][c+kHalf]} and its B fragment
// {W[g][c], W[g][c+kHalf]} with c = col(t), elements of the 16-bit types in
// pairs (c, c+1): both layouts above in one form. load masks the elements at
// or past `avail`; load_full is for a k tile wholly below K, with the pair
// 4-byte aligned (kPairs: the load needs that).
template <typename S>
struct MmaOp {
  static constexpr int kHalf = 8;
  static constexpr bool kPairs = true;
  static __device__ __forceinline__ int col(int t) { return 2 * t; }
  static __device__ __forceinline__ uint32_t load(const S* p, int64_t avail, bool aligned) {
    return load_pair(p, avail, aligned);
  }
  static __device__ __forceinline__ uint32_t load_full(const S* p) {
    return *reinterpret_cast<const uint32_t*>(p);
  }
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    mma_16816<S>(d, a, b);
  }
};
template <>
struct MmaOp<float> {
  static constexpr int kHalf = 4;
  static constexpr bool kPairs = false;
  static __device__ __forceinline__ int col(int t) { return t; }
  static __device__ __forceinline__ uint32_t load(const float* p, int64_t avail, bool) {
    return avail > 0 ? to_tf32(*p) : 0u;
  }
  static __device__ __forceinline__ uint32_t load_full(const float* p) { return to_tf32(*p); }
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    mma_1688_tf32(d, a, b);
  }
};

// How the tensor-core product of `rows` x M outputs is shared out (the kernel's
// block_product_mma and the host's sizing of its reduction buffer): tasks of one
// 16-row tile of X against kTileGroup 8-row weight tiles, `slices` warps a task
// when there are fewer tasks than warps (each a slice of K), and the float
// partial sums of a slice as [16 * row_tiles][ldr]. ldr is 8 words past a
// multiple of 32, so that the float2 stores of a warp's tile (rows g and g+8,
// columns 2t and 2t+1) fall in 32 different banks in each half-warp.
struct MmaShape {
  int row_tiles, col_tiles, groups, tasks, slices, ldr;
  int64_t slice_floats;
  __host__ __device__ MmaShape(int64_t rows, int64_t M)
      : row_tiles(static_cast<int>(ceil_div<int64_t>(rows, 16))),
        col_tiles(static_cast<int>(ceil_div<int64_t>(M, 8))),
        groups(ceil_div(col_tiles, kTileGroup)),
        tasks(row_tiles * groups),
        slices(tasks >= kWarps ? 1 : kWarps / (tasks > 0 ? tasks : 1)),
        ldr(groups * kTileGroup * 8 + 8),
        slice_floats(int64_t{row_tiles} * 16 * ldr) {}
};

// Floats of the reduction buffer for every tensor-core product of at most
// `rows` rows and M outputs a row: the slices of a product hold at most
// max(tasks, kWarps) tiles of 16 rows by 8 * kTileGroup + 8 floats (MmaShape),
// and a smaller product has no more tasks.
inline int64_t mma_reduction_floats(int64_t rows, int64_t M) {
  const MmaShape sh(rows, M);
  return std::max<int64_t>(sh.tasks, kWarps) * 16 * (8 * kTileGroup + 8);
}

// The k tiles [k_begin, k_end) of one warp's task: acc[c] += the 16-row tile
// of X (rows x_lo and x_hi of this lane, zero where the row is not there)
// times weight tile c (shared rows wrow0 + 8c of ws, from column kw0; c below
// ct_left). The A fragments of kMmaBatch k tiles are loaded first, so that
// their loads (global, or staged in shared memory) are in flight together.
// kFull: every tile of the range lies below K and the pairs are aligned, so no
// element is masked.
template <bool kFull, typename S>
__device__ __forceinline__ void mma_k_tiles(float (&acc)[kTileGroup][4], const S* ws, int ldw,
                                            int wrow0, int ct_left, int64_t kw0, const S* x_lo,
                                            const S* x_hi, bool lo_ok, bool hi_ok,
                                            int64_t k_begin, int64_t k_end, int64_t K,
                                            bool x_aligned, bool w_aligned, int t) {
  using Op = MmaOp<S>;
  constexpr int kK = kMmaK<S>, kHalf = Op::kHalf;
  for (int64_t kb = k_begin; kb < k_end; kb += kMmaBatch) {
    uint32_t a[kMmaBatch][4];
#pragma unroll
    for (int j = 0; j < kMmaBatch; ++j) {
      const bool in = kb + j < k_end, lo = in && lo_ok, hi = in && hi_ok;
      if constexpr (kFull) {
        const int k = static_cast<int>(kb + j) * kK + Op::col(t);
        a[j][0] = lo ? Op::load_full(x_lo + k) : 0u;
        a[j][1] = hi ? Op::load_full(x_hi + k) : 0u;
        a[j][2] = lo ? Op::load_full(x_lo + k + kHalf) : 0u;
        a[j][3] = hi ? Op::load_full(x_hi + k + kHalf) : 0u;
      } else {
        const int64_t k = (kb + j) * kK + Op::col(t), k2 = k + kHalf;
        a[j][0] = lo ? Op::load(x_lo + k, K - k, x_aligned) : 0u;
        a[j][1] = hi ? Op::load(x_hi + k, K - k, x_aligned) : 0u;
        a[j][2] = lo ? Op::load(x_lo + k2, K - k2, x_aligned) : 0u;
        a[j][3] = hi ? Op::load(x_hi + k2, K - k2, x_aligned) : 0u;
      }
    }
#pragma unroll
    for (int j = 0; j < kMmaBatch; ++j) {
      if (kb + j >= k_end) break;
#pragma unroll
      for (int c = 0; c < kTileGroup; ++c) {
        if (c < ct_left) {
          if constexpr (kFull) {
            const S* wr = ws + (wrow0 + c * 8) * ldw + static_cast<int>(kw0) +
                          static_cast<int>(kb + j) * kK + Op::col(t);
            const uint32_t b[2] = {Op::load_full(wr), Op::load_full(wr + kHalf)};
            Op::run(acc[c], a[j], b);
          } else {
            const int64_t k = (kb + j) * kK + Op::col(t), k2 = k + kHalf;
            const S* wr = ws + static_cast<int64_t>(wrow0 + c * 8) * ldw + kw0 + k;
            const uint32_t b[2] = {Op::load(wr, K - k, w_aligned),
                                   Op::load(wr + kHalf, K - k2, w_aligned)};
            Op::run(acc[c], a[j], b);
          }
        }
      }
    }
  }
}

// 16 bytes from global to shared memory: asynchronous on sm_80 and later
// (cp.async, through L2 only), where copy_wait waits for this thread's copies.
__device__ __forceinline__ void copy16(void* smem, const void* gmem) {
#if defined(FRNN_HOST_EMULATION)
  ::frnn_emul::copy16(smem, gmem);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}

__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(FRNN_HOST_EMULATION)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Elements of S in 16 bytes: the piece stage_rows copies.
template <typename S>
constexpr int kStageVec = 16 / static_cast<int>(sizeof(S));

// Whether stage_rows can copy x (rows of K, ldx apart) in whole 16-byte pieces.
template <typename S>
__device__ __forceinline__ bool stageable(const S* x, int64_t ldx, int64_t K) {
  return K % kStageVec<S> == 0 && ldx % kStageVec<S> == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

// xs[n*ldxs + k] = x[n*ldx + k] for n < rows, k < K (x in global memory, xs in
// shared memory; stageable(x, ldx, K), ldxs a multiple of the piece) in 16-byte
// pieces: a warp's copies take whole lines, instead of the 16 bytes of each of
// 8 rows that a fragment load takes, and all of a thread's copies are in flight
// together. Called by every thread of the block; the caller synchronises the
// block before reading xs.
template <typename S>
__device__ void stage_rows(S* xs, int ldxs, const S* x, int64_t ldx, int64_t rows, int64_t K) {
  constexpr int kVec = kStageVec<S>;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  const int per_row = static_cast<int>(K / kVec), total = static_cast<int>(rows) * per_row;
  for (int e = tid; e < total; e += nth) {
    const int n = e / per_row, c = (e - n * per_row) * kVec;
    copy16(xs + n * ldxs + c, x + n * ldx + c);
  }
  copy_wait();
}

// The tensor-core product (block_product): D = X W^T with X (rows x K, global
// memory or staged in shared memory) as the A operand in 16-row tiles, and the
// weight rows (shared) as the B operand in 8-row tiles
// (MmaOp<S>: k tiles of kMmaK<S>), shared out as MmaShape says. Each warp
// writes its float partial sums to red ([slice][row][output]); after a block
// barrier, the outputs are summed over the slices in order and emitted. Reads
// weight rows up to 7 past m0 + M (their outputs are dropped) and masks every
// column at or past K in both operands. Called by every thread of the block.
template <typename S, typename Emit>
__device__ void block_product_mma(const S* ws, int ldw, int m0, int M, int64_t kw0, const S* x,
                                  int64_t ldx, int64_t rows, int64_t K, float* red,
                                  const Emit& emit) {
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const MmaShape sh(rows, M);
  constexpr int kK = kMmaK<S>;
  const int64_t ksteps = ceil_div<int64_t>(K, kK);
  const bool x_aligned = (ldx % 2 == 0) && (reinterpret_cast<uintptr_t>(x) % 4 == 0);
  const bool w_aligned = kw0 % 2 == 0 && ldw % 2 == 0;
  // The k tiles wholly below K, where the pairs need no alignment or are aligned.
  const int64_t k_full = !MmaOp<S>::kPairs || (x_aligned && w_aligned) ? K / kK : 0;
  for (int w = warp; w < sh.tasks * sh.slices; w += kWarps) {
    const int task = w % sh.tasks, slice = w / sh.tasks;
    const int rt = task / sh.groups, ct0 = (task % sh.groups) * kTileGroup;
    const int64_t n_lo = int64_t{rt} * 16 + g, n_hi = n_lo + 8;
    const bool lo_ok = n_lo < rows, hi_ok = n_hi < rows;
    const S* x_lo = x + (lo_ok ? n_lo : 0) * ldx;
    const S* x_hi = x + (hi_ok ? n_hi : 0) * ldx;
    float acc[kTileGroup][4] = {};
    const int64_t k_begin = slice * ksteps / sh.slices, k_end = (slice + 1) * ksteps / sh.slices;
    const int wrow0 = m0 + ct0 * 8 + g, ct_left = sh.col_tiles - ct0;
    if (k_end <= k_full)
      mma_k_tiles<true>(acc, ws, ldw, wrow0, ct_left, kw0, x_lo, x_hi, lo_ok, hi_ok, k_begin,
                        k_end, K, x_aligned, w_aligned, t);
    else
      mma_k_tiles<false>(acc, ws, ldw, wrow0, ct_left, kw0, x_lo, x_hi, lo_ok, hi_ok, k_begin,
                         k_end, K, x_aligned, w_aligned, t);
    float* r = red + slice * sh.slice_floats;
#pragma unroll
    for (int c = 0; c < kTileGroup; ++c) {
      const int m = (ct0 + c) * 8 + 2 * t;
      if (c < ct_left) {
        *reinterpret_cast<float2*>(r + n_lo * sh.ldr + m) = float2{acc[c][0], acc[c][1]};
        *reinterpret_cast<float2*>(r + n_hi * sh.ldr + m) = float2{acc[c][2], acc[c][3]};
      }
    }
  }
  __syncthreads();
  // rows * M fits an int: rows <= N and N * M * sizeof(float) fit the shared memory.
  for (int o = tid; o < static_cast<int>(rows) * M; o += nth) {
    const int n = o / M, m = o % M;
    float v = red[n * sh.ldr + m];
    for (int s = 1; s < sh.slices; ++s) v += red[s * sh.slice_floats + n * sh.ldr + m];
    emit(n, m, v);
  }
  __syncthreads();
}

// The shared-memory layout of a block: the weight slice, then the staging area
// and the partial sums (CUDA-core product) or the reduction buffer (tensor-core
// product), then the block's recurrent product for its unit functor (forward
// Gh; backward dL/dh).
template <typename S>
struct BlockSmem {
  S* ws;
  S* xs;
  acc_t<S>* part;
  float* red;
  S* gh;
  S* hbuf;   // the forward state's two halves where the plan keeps them here, else null
  S* stage;  // the tensor-core product's staged operand where the plan has one, else null
  __device__ explicit BlockSmem(const PersistentLayout& lay) {
    ws = dynamic_smem<S>();
    xs = ws + static_cast<int64_t>(lay.w_rows) * lay.ldw;
    part = reinterpret_cast<acc_t<S>*>(dynamic_smem<unsigned char>() + lay.part_off);
    red = reinterpret_cast<float*>(xs);
    gh = reinterpret_cast<S*>(dynamic_smem<unsigned char>() + lay.gh_off);
    hbuf = lay.h_off > 0 ? reinterpret_cast<S*>(dynamic_smem<unsigned char>() + lay.h_off)
                         : nullptr;
    stage = lay.xs_off > 0 ? reinterpret_cast<S*>(dynamic_smem<unsigned char>() + lay.xs_off)
                           : nullptr;
  }
};

// The forward state's two halves [2, N, width] for the steps of a launch: in
// shared memory where the plan keeps them there (one block: the unit functor
// writes h' and the next step's product reads it without a trip to L2), copied
// in from global memory (hbuf, where the previous launch of the layer left them)
// at the start and back at the end (state_out); else global memory itself. The
// copies are the block's own; the kernel's first block barrier follows the
// copy in, and state_out is called after the last step's barrier.
template <typename S>
__device__ S* state_in(const BlockSmem<S>& sm, S* hbuf, int64_t n) {
  if (sm.hbuf == nullptr) return hbuf;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) sm.hbuf[e] = hbuf[e];
  return sm.hbuf;
}

template <typename S>
__device__ void state_out(const BlockSmem<S>& sm, S* hbuf, int64_t n) {
  if (sm.hbuf == nullptr) return;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) hbuf[e] = sm.hbuf[e];
}

// out(n, m) = sum_{k < K} x[n*ldx + k] * ws[(m0 + m)*ldw + kw0 + k] for n < rows,
// m < M; emit(n, m, out) is called once per output, by some thread of the
// block. x is in global memory, or (CUDA-core product only: the tensor-core
// product may stage it with copies from global memory) the block's shared
// state. Called by every thread of the block (it synchronises the block).
template <typename S, typename Emit>
__device__ void block_product(const BlockSmem<S>& sm, const PersistentLayout& lay, int m0, int M,
                              int64_t kw0, const S* x, int64_t ldx, int64_t rows, int64_t K,
                              const Emit& emit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(FRNN_HOST_EMULATION)
  // Code for sm_80 or later: plan_persistent always picks tensor cores for the
  // 16-bit types there, so their CUDA-core product is not compiled.
  constexpr bool kMmaOnly = kMmaType<S>;
#else
  constexpr bool kMmaOnly = false;
#endif
  if constexpr (kMmaCapable<S>) {
    if (kMmaOnly || lay.mma) {
      // x staged in shared memory where the plan has room for it and its rows
      // are whole 16-byte pieces (all threads take the same branch: the
      // conditions are the block's).
      const int64_t ldxs = mma_stride<S>(K);
      const bool staged =
          sm.stage != nullptr && rows * ldxs <= lay.xs_elems && stageable(x, ldx, K);
      if (staged) {
        stage_rows(sm.stage, static_cast<int>(ldxs), x, ldx, rows, K);
        __syncthreads();
      }
      block_product_mma(sm.ws, lay.ldw, m0, M, kw0, staged ? sm.stage : x, staged ? ldxs : ldx,
                        rows, K, sm.red, emit);
      return;
    }
  }
  if constexpr (!kMmaOnly)
    block_product_fma(sm.ws, lay.ldw, m0, M, kw0, x, ldx, rows, K, sm.xs, lay.kc, lay.ldx,
                      sm.part, emit);
}

// The Gh of the block's units for gate blocks g0 <= g < g0 + gates: the product
// of x (rows x K) with those weight rows (forward slice), rounded to S as the
// standard path's GEMM output is, into sm.gh [rows, gates*U]; returns its
// layout for the unit functor. The block's threads see it after a __syncthreads.
template <typename S>
__device__ GhLayout gate_product(const BlockSmem<S>& sm, const PersistentLayout& lay,
                                 const UnitSlot& sl, int g0, int gates, const S* x,
                                 int64_t ldx, int64_t rows, int64_t K) {
  const int U = lay.units, M = gates * U;
  S* gh = sm.gh;
  block_product(sm, lay, g0 * U, M, 0, x, ldx, rows, K,
                [&](int64_t n, int m, acc_t<S> v) { gh[n * M + m] = from_acc<S>(v); });
  return GhLayout{U, static_cast<int>(sl.u0)};
}

// Backward, the recurrent dL/dh of the block's units from the dG rows of the
// step processed before (x: from_rows rows of ldx, K columns through the
// block's W_hh columns, slice rows 0..U-1), for the unit functor of the step
// with `rows` rows: rows below `rows` into sm.gh [rows, U]; the others (rows
// that begin at the functor's step in processing order: reverse direction,
// packed) to dh [N, H], where they stay as dL/dh0. Rows in [from_rows, rows)
// (sequences that end at the functor's step) take dL/dh_n from dh, each by the
// thread whose unit functor reads it. Returns the layout for the functor; the
// block's threads see it after a __syncthreads.
template <typename S>
__device__ GhLayout recurrent_to_block(const BlockSmem<S>& sm, const PersistentLayout& lay,
                                       const UnitSlot& sl, bool has_unit, const S* x,
                                       int64_t ldx, int64_t K, int64_t from_rows,
                                       int64_t rows, S* dh, int64_t H) {
  const int U = lay.units;
  S* block = sm.gh;
  block_product(sm, lay, 0, U, 0, x, ldx, from_rows, K, [&](int64_t n, int m, acc_t<S> v) {
    const S d = from_acc<S>(v);
    if (n < rows)
      block[n * U + m] = d;
    else if (sl.u0 + m < H)
      dh[n * H + sl.u0 + m] = d;
  });
  if (has_unit)
    for (int64_t i = sl.row0; i < rows; i += sl.row_step)
      if (i >= from_rows) block[i * U + sl.j] = dh[i * H + sl.u];
  return GhLayout{U, static_cast<int>(sl.u0)};
}

// out[n*ld_out + q0 + m] = (out +) the product of x (rows x K) with the weight
// rows m0 <= m0 + m < m0 + M of the block (columns of a weight: backward slice),
// for outputs q0 + m < Q.
template <typename S>
__device__ void column_product(const BlockSmem<S>& sm, const PersistentLayout& lay, int m0,
                               int M, int64_t q0, int64_t Q, int64_t kw0, const S* x,
                               int64_t ldx, int64_t rows, int64_t K, S* out, int64_t ld_out,
                               bool add) {
  block_product(sm, lay, m0, M, kw0, x, ldx, rows, K, [&](int64_t n, int m, acc_t<S> v) {
    const int64_t q = q0 + m;
    if (q < Q) {
      S* o = out + n * ld_out + q;
      *o = from_acc<S>(add ? to_acc(*o) + v : v);
    }
  });
}

// Asks L2 for a line (a hint: nothing changes if it is not taken). Under the
// host emulation it reads one byte, so that an address out of bounds faults there.
__device__ __forceinline__ void prefetch_l2(const void* p) {
#if defined(FRNN_HOST_EMULATION)
  (void)*static_cast<const volatile unsigned char*>(p);
#elif defined(__CUDA_ARCH__)
  asm volatile("prefetch.L2 [%0];\n" ::"l"(p));
#endif
}

// Prefetches into L2 the block's slice of rows [0, rows) of a [rows, ld] array:
// in each row, `gates` blocks of columns gate_stride apart, of each the U units
// from u0 (those below H). For the next step's inputs that no step of the launch
// writes (forward: Gx; backward: the saved gates and states, dL/dy): issued
// before this step's product, they come from memory while the product, the cell
// math and the barrier run, instead of after the barrier. Only addresses of the
// slice's elements are touched.
template <typename S>
__device__ void prefetch_unit_slices(const S* base, int64_t rows, int64_t ld, int gates,
                                     int64_t gate_stride, int64_t u0, int U, int64_t H) {
  constexpr uintptr_t kLine = 128;
  const int64_t cnt = H - u0 < U ? H - u0 : U;
  if (cnt <= 0) return;
  const int64_t n = rows * gates;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const S* p = base + (e / gates) * ld + (e % gates) * gate_stride + u0;
    const uintptr_t last = reinterpret_cast<uintptr_t>(p + cnt - 1);
    for (uintptr_t a = reinterpret_cast<uintptr_t>(p); a <= last; a = (a | (kLine - 1)) + 1)
      prefetch_l2(reinterpret_cast<const void*>(a));
  }
}

// The unit functor over this thread's rows of a step, in two halves: preload
// issues the global loads of its first kPreRows rows (Unit::In: Gx, the cell
// state) before the step's recurrent product, so that they overlap it; run then
// does the cell math of every row (loading the rows past kPreRows itself) and
// calls after(i) for each. Unrolled, so that the preloaded values stay in
// registers.
constexpr int kPreRows = 2;

template <class Unit>
struct Preloaded {
  typename Unit::In in[kPreRows];
};

template <class Unit, class P>
__device__ __forceinline__ void preload_rows(const Unit& unit, const P& p, const UnitSlot& sl,
                                             bool has_unit, Preloaded<Unit>& pre) {
#pragma unroll
  for (int k = 0; k < kPreRows; ++k) {
    const int64_t i = sl.row0 + int64_t{k} * sl.row_step;
    if (has_unit && i < p.rows) pre.in[k] = unit.load(p, i);
  }
}

template <class Unit, class P, class After>
__device__ __forceinline__ void run_rows(const Unit& unit, const P& p, const UnitSlot& sl,
                                         bool has_unit, const Preloaded<Unit>& pre,
                                         const After& after) {
  if (!has_unit) return;
#pragma unroll
  for (int k = 0; k < kPreRows; ++k) {
    const int64_t i = sl.row0 + int64_t{k} * sl.row_step;
    if (i < p.rows) {
      unit(p, i, pre.in[k]);
      after(i);
    }
  }
  for (int64_t i = sl.row0 + int64_t{kPreRows} * sl.row_step; i < p.rows; i += sl.row_step) {
    unit(p, i);
    after(i);
  }
}

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

// Raises, never lowers, the dynamic shared memory `kernel` may launch with on the
// current device to at least `smem`. The limit belongs to the kernel, not to a
// launch: a smaller plan must not take back what a larger one, planned before and
// launched after it (another host thread, a captured CUDA graph replayed later),
// relies on. Serialised, so that two raises cannot interleave into a lower value.
inline cudaError_t raise_dynamic_smem(const void* kernel, int64_t smem) {
  static std::mutex lock;
  const std::lock_guard<std::mutex> guard(lock);
  cudaFuncAttributes fa{};
  const cudaError_t err = cudaFuncGetAttributes(&fa, kernel);
  if (err != cudaSuccess || fa.maxDynamicSharedSizeBytes >= smem) return err;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(smem));
}

// The layer's recurrent multiply-adds per step (the batch in whole 16-row tiles
// on tensor cores) up to which plan_persistent
// (PersistentGrid kGridAuto) runs it in one block: there a step ends at a block
// barrier instead of a grid barrier (0.75-0.99 us measured on an H200,
// bench/results/gpu-nvidia-h200/persistent-floor.md), and one multiprocessor
// does all of the product. Predictions, not measurements (bench/PERSISTENT.md,
// v5): about 2^20 multiply-adds take one multiprocessor 0.5 us on tensor cores
// (its shared memory feeds B fragments for about 1024 a clock at N = 16), about
// 2^14 take it 0.5 us on CUDA cores (two shared-memory reads a multiply-add).
constexpr double kOneBlockMacsMma = 1048576.0;
constexpr double kOneBlockMacsFma = 16384.0;

// Chooses U and the shared-memory layout for `kernel` on the current device, or
// says why the persistent path cannot run it (plan.why). w_rows_per_unit: rows
// of the weight slice per unit (forward G, backward 1); K: the longest row the
// block holds; out_per_unit: the largest product's outputs per unit and row;
// gh_per_unit: the values per unit and row of the recurrent product the block
// keeps in shared memory for its unit functor (forward: G, the most gate blocks
// of one gate_product; backward 1, or 0 where it goes to global memory);
// proj_rows: the rows of a second weight, shared out among the blocks (the LSTM
// projection's P, whose products have ceil(P / blocks) outputs per row; 0
// without one); state_width: forward, the width of the state h (H, or P with a
// projection), whose two halves a one-block plan keeps in shared memory where
// they fit (backward 0); tf32: float32 may multiply in TF32; stage: the
// tensor-core product may stage its other operand (N rows of K) in shared
// memory where there is room; grid: PersistentGrid, or the units per block.
// Slices: the fewest units per block (a power of two up to 32) that the device
// runs at once in one block per multiprocessor. One block: every unit (U the
// power of two at or above H, at most a block's threads), where the product per
// step is small (kOneBlockMacs*) or the caller asks for it.
template <typename S, typename Kernel>
cudaError_t plan_persistent(Kernel kernel, int64_t N, int64_t H, int w_rows_per_unit, int64_t K,
                            int out_per_unit, int gh_per_unit, int64_t proj_rows,
                            int64_t state_width, bool tf32, bool stage, int grid,
                            PersistentPlan& plan) {
  plan = PersistentPlan{};
  int dev = 0, sms = 0, smem_max = 0, coop = 0, major = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  // The code that runs: compiled (or JIT-compiled from PTX) for sm_80 or later
  // holds the tensor-core product.
  cudaFuncAttributes fa{};
  if (err == cudaSuccess) err = cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(kernel));
  if (err != cudaSuccess) return err;
  if (coop == 0) {
    plan.why = "the device does not support cooperative launches";
    return cudaSuccess;
  }
  constexpr int64_t elem = sizeof(S);
  const bool mma =
      (kMmaType<S> || (std::is_same_v<S, float> && tf32)) && major >= 8 && fa.ptxVersion >= 80;
  // Tensor cores: K rounded to the k tile plus half a tile, so that the 8 rows x
  // 4 words of a B fragment fall in 32 different banks (a row stride of 4 mod 8
  // words). CUDA cores: rows one bank apart.
  const int64_t pad = elem >= 4 ? 1 : 2;
  const int64_t ldw = mma ? mma_stride<S>(K) : K + pad;
  const int64_t part_bytes = int64_t{kPersistentThreads} * int64_t{sizeof(acc_t<S>)};

  // The plan of U units a block over `blocks` blocks: true when it fits the
  // product's outputs and the shared memory (else why_not says which not).
  static const char* const kTooManyOutputs =
      "a batch of this many rows on CUDA cores (the product of a block holds at most 2048 "
      "outputs: rows x gates x units)";
  static const char* const kTooLittleSmem =
      "the weight slice of one hidden unit and the block's buffers do not fit in its shared "
      "memory";
  const char* why_not = nullptr;
  // state: a one-block plan of the CUDA-core product may keep the state h in
  // shared memory (its staging reads rows of h conflict-free). h stays in
  // global memory for the tensor-core product: stage_rows copies from global
  // memory only (cp.async), and its A fragments read straight from unpadded
  // rows would meet 8-way bank conflicts.
  auto layout = [&](int U, int64_t blocks, PersistentPlan& p, bool state) -> bool {
    const int64_t V = ceil_div<int64_t>(proj_rows, blocks);
    const int64_t max_m = std::max<int64_t>(int64_t{out_per_unit} * U, V);  // a product's outputs
    if (!mma && N * max_m > int64_t{kMaxAcc} * kPersistentThreads) {
      why_not = kTooManyOutputs;
      return false;
    }
    // The tensor-core product reads up to 7 weight rows past a product's last.
    const int64_t w_rows = int64_t{w_rows_per_unit} * U + V + (mma ? 8 : 0);
    const int64_t w_bytes = w_rows * ldw * elem, gh_bytes = N * gh_per_unit * U * elem;
    // CUDA cores: all of K staged in one pass where it fits, else passes of
    // kStageBytes; the partial sums after the staging area.
    int64_t kc = 0, ldx = 0, part_off = 0, gh_off = 0, xs_off = 0, xs_elems = 0;
    if (mma) {
      gh_off = round_up<int64_t>(w_bytes + mma_reduction_floats(N, max_m) * int64_t{sizeof(float)},
                                 16);
      // The other operand staged (N rows of the longest K) where it fits and
      // that K is whole 16-byte pieces (the products' other K and row strides,
      // multiples of H or P, mostly are too; block_product checks each).
      const int64_t elems = N * mma_stride<S>(K);
      if (stage && K % kStageVec<S> == 0 &&
          round_up<int64_t>(gh_off + elems * elem, 16) + gh_bytes <= smem_max) {
        xs_off = gh_off;
        xs_elems = elems;
        gh_off = round_up<int64_t>(xs_off + elems * elem, 16);
      }
    } else {
      kc = K;
      ldx = K + pad;
      part_off = round_up<int64_t>(w_bytes + N * ldx * elem, 16);
      if (round_up<int64_t>(part_off + part_bytes, 16) + gh_bytes > smem_max) {
        kc = std::max<int64_t>(16, std::min<int64_t>(K, kStageBytes / (N * elem)));
        ldx = std::min(kc, K) + pad;
        part_off = round_up<int64_t>(w_bytes + N * ldx * elem, 16);
      }
      gh_off = round_up<int64_t>(part_off + part_bytes, 16);
    }
    int64_t smem = gh_off + gh_bytes, h_off = 0;
    const int64_t state_bytes = 2 * N * state_width * elem;
    if (state && !mma && blocks == 1 && state_bytes > 0 &&
        round_up<int64_t>(smem, 16) + state_bytes <= smem_max) {
      h_off = round_up<int64_t>(smem, 16);
      smem = h_off + state_bytes;
    }
    if (smem > smem_max) {
      why_not = kTooLittleSmem;
      return false;
    }
    p = PersistentPlan{};
    p.blocks = static_cast<int>(blocks);
    p.smem = static_cast<size_t>(smem);
    p.lay.units = U;
    p.lay.w_rows = static_cast<int>(w_rows);
    p.lay.ldw = static_cast<int>(ldw);
    p.lay.kc = static_cast<int>(kc);
    p.lay.ldx = static_cast<int>(ldx);
    p.lay.mma = mma ? 1 : 0;
    p.lay.proj = static_cast<int>(V);
    p.lay.part_off = static_cast<int>(part_off);
    p.lay.gh_off = static_cast<int>(gh_off);
    p.lay.h_off = static_cast<int>(h_off);
    p.lay.xs_off = static_cast<int>(xs_off);
    p.lay.xs_elems = static_cast<int>(xs_elems);
    return true;
  };
  // Blocks of the plan p that the device holds at once, one a multiprocessor at most.
  auto resident = [&](const PersistentPlan& p, int64_t& per_sm) -> cudaError_t {
    cudaError_t e = raise_dynamic_smem(reinterpret_cast<const void*>(kernel), p.smem);
    int n = 0;
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, reinterpret_cast<const void*>(kernel),
                                                        kPersistentThreads, p.smem);
    per_sm = n;
    return e;
  };

  if (grid > 0) {  // grid units a block
    const int64_t blocks = ceil_div<int64_t>(H, grid);
    PersistentPlan p;
    if (!layout(grid, blocks, p, true)) {
      plan.why = why_not == kTooManyOutputs
                     ? "the units per block that FUSEDRNN_PERSISTENT_GRID asks for give the "
                       "CUDA-core product more than its 2048 outputs at this batch"
                     : "the weights and the batch-sized buffers of the units per block that "
                       "FUSEDRNN_PERSISTENT_GRID asks for do not fit in a block's shared memory "
                       "at this batch";
      return cudaSuccess;
    }
    int64_t per_sm = 0;
    err = resident(p, per_sm);
    if (err != cudaSuccess) return err;
    if (blocks <= per_sm * sms) {
      plan = p;
      return cudaSuccess;
    }
    plan.why = "the units per block that FUSEDRNN_PERSISTENT_GRID asks for make more blocks than "
               "the device holds at once";
    return cudaSuccess;
  }

  // Tensor cores multiply whole 16-row tiles of the batch.
  const double macs = static_cast<double>(mma ? round_up<int64_t>(N, 16) : N) *
                      (static_cast<double>(w_rows_per_unit) * static_cast<double>(H) +
                       static_cast<double>(proj_rows)) *
                      static_cast<double>(K);
  const bool one_block =
      grid == kGridOne || (grid == kGridAuto && H > 1 &&
                           macs <= (mma ? kOneBlockMacsMma : kOneBlockMacsFma));
  if (one_block) {
    int U = 1;
    while (U < H) U *= 2;
    PersistentPlan p;
    int64_t per_sm = 0;
    // With the state in shared memory, then (should that not be resident) without.
    for (const bool state : {true, false}) {
      if (U > kPersistentThreads || !layout(U, 1, p, state)) break;
      err = resident(p, per_sm);
      if (err != cudaSuccess) return err;
      if (per_sm >= 1) {
        plan = p;
        return cudaSuccess;
      }
      if (p.lay.h_off == 0) break;
    }
    if (grid == kGridOne) {
      plan.why = U > kPersistentThreads
                     ? "one block (FUSEDRNN_PERSISTENT_GRID=one) holds at most 256 hidden units"
                 : why_not == kTooManyOutputs
                     ? "one block (FUSEDRNN_PERSISTENT_GRID=one) of this many rows and units "
                       "has more than the 2048 outputs a CUDA-core product holds"
                 : why_not == kTooLittleSmem
                     ? "one block (FUSEDRNN_PERSISTENT_GRID=one) cannot hold the weights of every "
                       "hidden unit in its shared memory"
                     : "one block (FUSEDRNN_PERSISTENT_GRID=one) of this layer does not fit on a "
                       "multiprocessor";
      return cudaSuccess;
    }
  }

  PersistentPlan spare;
  const char* why = "more blocks than the device holds at once at this hidden size";
  for (int U = 1; U <= 32; U *= 2) {
    const int64_t blocks = ceil_div<int64_t>(H, U);
    PersistentPlan p;
    if (!layout(U, blocks, p, true)) {
      if (U == 1) why = why_not;
      break;
    }
    int64_t per_sm = 0;
    err = resident(p, per_sm);
    if (err != cudaSuccess) return err;
    if (blocks <= sms && blocks <= per_sm * sms) {
      plan = p;
      return cudaSuccess;
    }
    if (spare.blocks == 0 && blocks <= per_sm * sms) spare = p;
  }
  if (spare.blocks != 0) {
    plan = spare;
    return cudaSuccess;
  }
  plan.why = why;
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
