// Register-blocked GEMM on at::vec for the CPU recurrent kernels.
//
// Why not at::mm: on the reference machine (AMD EPYC Zen 5, AVX-512) MKL's sgemm
// reaches about 90 GFLOP/s, half of what oneDNN's LSTM sustains (about 185), and
// every ATen call costs about 3 us of dispatch, more than a whole oneDNN step at
// N=1, H=64. This micro-kernel (6 x 64 floats on AVX-512) measured 185 GFLOP/s.
//
// C[M, N] (+)= A[M, K] * B[K, N]. A is read in place by broadcast (any strides);
// B is packed into panels of NR = NV*L columns, zero-padded, so the micro-kernel
// only does full-width vector loads of B; C is row-major, stored with a mask on
// the last panel.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "../common.h"
#include "parallel.h"
#include "vec_math.h"
#if defined(CPU_CAPABILITY_AVX512)
#include "hsum512.h"
#endif

namespace fusedrnn::cpu {
inline namespace CPU_CAPABILITY {

template <typename S>
using Vec = at::vec::Vectorized<S>;

#if defined(CPU_CAPABILITY_AVX512) || defined(__aarch64__)
constexpr int kVecRegs = 32;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kVecRegs = 16;
#else
constexpr int kVecRegs = 8;
#endif

// Rows of a tile with NV vector columns: MR*NV accumulators, NV loads of B and
// one broadcast must fit the register file.
constexpr int tile_rows(int nv) {
  const int mr = (kVecRegs - nv - 1) / nv;
  return mr < 1 ? 1 : (mr > 8 ? 8 : mr);
}

// Vector columns of the general GEMM's tile (6 x 4 vectors on AVX-512, 6 x 2 on AVX2).
constexpr int kGemmNV = kVecRegs >= 32 ? 4 : 2;
// K is processed in blocks of kKC so that a packed panel of B (kKC x NR) stays in L2.
constexpr int64_t kKC = 512;
// A task's row tiles all pass over the same panel of B; taken in chunks of K of at
// most this many bytes, the panel stays in L1 (48 KiB on Intel since Ice Lake and
// on AMD Zen 5) from one row tile to the next instead of streaming from L2 for each.
constexpr int64_t kL1PanelBytes = int64_t{32} << 10;

// Whether L1 holds more than a chunk of kL1PanelBytes, or its size is unknown:
// where it does not, a step's recurrent product takes all of K at once
// (KChunkPolicy::kAuto). On the Intel Xeon the chunks took an LSTM step at N=16
// H=256 from 58 to 52 us (ARCHITECTURE.md). Where a chunk fills L1 (32 KiB, AMD
// Zen 4) all of K at once was faster: 4% in the median of 16 LSTM, GRU and RNN
// forwards at N=16-128, H=256-1024, 1 and 2 threads, up to 9%, two within 1%
// (paired builds, 2026-12-07); chunks of 16 KiB there were 2-4% slower than 32.
inline bool l1_holds_chunk() {
  static const bool roomy = [] {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
    const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return l1 <= 0 || l1 > kL1PanelBytes;
#else
    return true;
#endif
  }();
  return roomy;
}

// The most products one chain of FMAs sums in the general GEMM before adding
// into C, whatever the rows (one row tile, which k_chunk leaves whole, too). At
// 512, a weight gradient of a few rows (H=1) summed its T*N rows in chains of
// 512 where wider ones took chains of 128: RNN T=100 N=64 C=8 H=1 float32,
// 30 seeds, median relative error of dW_ih 4.1e-7 and of dW_hh 3.3e-7, against
// 2.7e-7 and 1.4e-7 for the reference in float32; with 128, 2.3e-7 and 2.3e-7.
constexpr int64_t kMaxChain = 128;

// Rows of K per chunk for a panel of `width` values per row over `rows` rows of A:
// all of K when a single row tile reads the panel.
template <typename S, int MR>
constexpr int64_t k_chunk(int64_t K, int64_t width, int64_t rows) {
  if (rows <= MR || K <= 0) return K;
  const int64_t kc = std::max<int64_t>(16, kL1PanelBytes / (width * static_cast<int64_t>(sizeof(S))));
  return ceil_div<int64_t>(K, ceil_div<int64_t>(K, kc));
}

// Values of k that pack_a moves at a time for every tile (see there).
constexpr int64_t kPackAK = 16;

// A packed weight larger than this is read from beyond L2 at every pass, and
// its products prefetch it (PrefetchNext). The hardware's stream prefetcher
// stops at each 4 KiB page, and the first row tile of a chunk of K, which reads
// the chunk from memory, waits for every page of it; the tiles after it read
// the chunk from L1. Measured on the Intel Xeon (L2 2 MB), C = A W^T with W
// packed, 1 thread, against no prefetch: M=16 K=512 N=2048 (4 MB) 1.25-1.27x
// the GFLOP/s, K=384 N=1536 (2.25 MB) 1.20-1.22x, M=64 1.07-1.09x; a weight of
// 1 MB (K=256 N=1024), which stays in L2, gained nothing from it and lost 7%
// to the prefetch instructions. Whole calls (inference / training, runs
// alternating in ABBA order, 6 each, medians of the paired ratios), time
// against no prefetch, 1 thread: LSTM H=512 N=16 T=50 0.89 / 0.93, N=64 T=30
// 0.84 / 0.96; GRU H=512 N=16 0.89 / 0.93; RNN H=1024 N=16 0.86 / 0.90; LSTM
// H=256 (1 MB: no prefetch) 0.98 / 0.99, N=1 H=64 1.02 / 1.01. 2 threads, LSTM
// H=512 N=16: 0.94-1.00 / 0.98-0.99 in two runs. At a panel's end the thread
// that takes the panels from the last down (phases.h) prefetches the panel
// before, not the one it has just done: 2 threads, ABBA, 14 runs each, T=50
// N=16, against the panel after: LSTM H=512 0.99 / 1.00, GRU H=512 0.99 / 1.00,
// RNN H=1024 0.99 / 1.00 (Intel Xeon, 2026-12-06).
constexpr int64_t kPrefetchMinBytes = int64_t{1} << 20;

// The `bytes` of packed weight that the next chunk (or the next panel) of a
// product reads, from `next` on, shared out over the `tiles` row tiles of the
// current chunk: tile t prefetches its share into L2, two lines per value of k,
// while it computes (fma_rows), so that the chunk is in L2
// when its first tile starts. For weights of more than kPrefetchMinBytes.
struct PrefetchNext {
  static constexpr int64_t kLine = 64;
  const char* next = nullptr;
  int64_t lines = 0, per_tile = 0;

  PrefetchNext() = default;
  PrefetchNext(const void* next_, int64_t bytes, int64_t tiles)
      : next(static_cast<const char*>(next_)),
        lines(ceil_div<int64_t>(std::max<int64_t>(bytes, 0), kLine)),
        per_tile(ceil_div<int64_t>(lines, std::max<int64_t>(tiles, 1))) {}
  // After the chunk [k0, k0 + kk) (of at most kstep rows) of panel p of `npanel`
  // packed panels of K rows of `width` values, `panel` pointing at p and the
  // panels `stride` values apart, read by `rows` rows of A in tiles of MR: the
  // panel's next chunk, or after its last the first chunk of panel p + 1, or
  // p - 1 where the thread takes tasks from the last down (claims_from_back):
  // the panel it takes next where a pass's tasks go panel by panel (not where
  // the input projection takes its panels in gate order, nor where a panel has
  // several blocks of rows).
  template <int MR, typename S>
  static PrefetchNext after_chunk(const S* panel, int64_t k0, int64_t kk, int64_t kstep,
                                  int64_t K, int64_t width, int64_t stride, int64_t p,
                                  int64_t npanel, int64_t rows) {
    const int64_t tiles = ceil_div<int64_t>(rows, MR);
    const int64_t bytes = width * int64_t{sizeof(S)};
    if (k0 + kk < K)
      return PrefetchNext(panel + (k0 + kk) * width, std::min(kstep, K - k0 - kk) * bytes, tiles);
    const int64_t q = claims_from_back() ? p - 1 : p + 1;
    if (q < 0 || q >= npanel) return PrefetchNext();
    return PrefetchNext(panel + (q - p) * stride, std::min(kstep, K) * bytes, tiles);
  }
  // Row tile t's first line (at most the end of the region) and count.
  const char* at(int64_t t) const { return next + std::min(t * per_tile, lines) * kLine; }
  int64_t count(int64_t t) const {
    return std::max<int64_t>(0, std::min<int64_t>(per_tile, lines - t * per_tile));
  }
};

// Below this many multiply-adds per chunk of work, threads cost more than they give.
constexpr int64_t kMinParallelFma = int64_t{1} << 18;

template <int R>
using IntC = std::integral_constant<int, R>;

// Calls f(IntC<R>{}, i) over row tiles [i, i+R) covering [0, m): full tiles of MR,
// then at most one tile each of 4, 2 and 1 rows. The tiles, this loop and the
// lambdas that call them are always inlined into the product's task: left to
// GCC, the one-row tile of the recurrent step went out of line (a call per
// panel, the epilogue's captures reloaded each time), and an LSTM at N=1 H=64
// T=1000 took 0.79 ms against 0.765 inlined (1 thread, Intel Xeon).
template <int MR, typename F>
FRNN_ALWAYS_INLINE inline void for_row_tiles(int64_t m, const F& f) {
  int64_t i = 0;
  for (; i + MR <= m; i += MR) f(IntC<MR>{}, i);
  if constexpr (MR > 4) {
    if (m - i >= 4) {
      f(IntC<4>{}, i);
      i += 4;
    }
  }
  if constexpr (MR > 2) {
    if (m - i >= 2) {
      f(IntC<2>{}, i);
      i += 2;
    }
  }
  if constexpr (MR > 1) {
    if (m - i >= 1) f(IntC<1>{}, i);
  }
}

inline int64_t grain_for(int64_t fma_per_item) {
  return std::max<int64_t>(1, kMinParallelFma / std::max<int64_t>(1, fma_per_item));
}

// Packing moves an element in about 0.43 ns (1 MB of float32 W_hh in 0.11 ms on
// one thread, Intel Xeon, AVX-512): a chunk of packing gets a thread of its own
// from this many elements, about 28 us, several times what a parallel region
// costs. Paired A/B, 2 threads, T=100: LSTM and GRU at N=16 H=256 (weights
// packed on both threads) 0.95-0.99 of the time with packing on one; at N=1
// H=64, split into chunks of 2^13 elements, 1.06-1.08.
constexpr int64_t kMinParallelMoves = int64_t{1} << 16;
inline int64_t grain_for_moves(int64_t moves_per_item) {
  return std::max<int64_t>(1, kMinParallelMoves / std::max<int64_t>(1, moves_per_item));
}

// A[M, K] read in place: A(i, k) = ptr[i*rs + k*cs].
template <typename S>
struct MatA {
  const S* ptr;
  int64_t rs;
  int64_t cs;
};

// B[K, N]: B(k, j) = row(k)[j*cs], row(k) = rows ? rows[k] : ptr + k*rs.
// The row table lets a GEMM read the previous hidden state of every row of a
// packed sequence, which lives in two places (the output and h0).
template <typename S>
struct MatB {
  const S* ptr;
  int64_t rs;
  int64_t cs;
  const S* const* rows = nullptr;
  const S* row(int64_t k) const { return rows ? rows[k] : ptr + k * rs; }
};

// Packs B[k0:k0+kc, 0:N] into panels of NR = NV*L columns:
// dst[(p*kc + k)*NR + j] = B(k0 + k, p*NR + j), zero beyond N.
template <typename S, int NV>
void pack_b(const MatB<S>& B, int64_t k0, int64_t kc, int64_t N, S* dst,
            const Parallel& par) {
  using V = Vec<S>;
  constexpr int L = V::size();
  constexpr int NR = NV * L;
  const int64_t npanel = ceil_div<int64_t>(N, NR);
  par(npanel, grain_for_moves(kc * NR), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      S* d = dst + p * kc * NR;
      const int64_t j0 = p * NR;
      const int64_t nj = std::min<int64_t>(NR, N - j0);
      if (B.cs == 1) {
        for (int64_t k = 0; k < kc; ++k, d += NR) {
          const S* src = B.row(k0 + k) + j0;
          for (int v = 0; v < NV; ++v) {
            const int64_t cnt = std::min<int64_t>(L, std::max<int64_t>(0, nj - v * L));
            (cnt > 0 ? V::loadu(src + v * L, cnt) : V(S(0))).store(d + v * L);
          }
        }
      } else if (B.rows == nullptr && B.rs == 1) {
        // B = W^T with W [N, K] row-major: a transpose of the block of W.
        if (nj < NR) std::memset(d, 0, kc * NR * sizeof(S));
        at::vec::transpose_mxn<S>(B.ptr + j0 * B.cs + k0, B.cs, d, NR, static_cast<int>(nj),
                                  static_cast<int>(kc));
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          const S* src = B.row(k0 + k);
          S* dk = d + k * NR;
          for (int64_t j = 0; j < nj; ++j) dk[j] = src[(j0 + j) * B.cs];
          for (int64_t j = nj; j < NR; ++j) dk[j] = S(0);
        }
      }
    }
  });
}

// acc[i][v] += A(i, k) * B(k, v) over k < K for MR rows and NV vectors of
// columns: A(i, k) = a[i*ars + k*acs], row k of B at b + k*bstride (the last
// vector masked to n_valid columns with kMaskB). With kPf, the first
// (pf_lines + 1) / 2 values of k also prefetch lines 2k and 2k+1 from pf on
// (PrefetchNext), in a loop of their own: with a test in the loop, GCC kept the
// accumulators on the stack (at a third of the speed).
template <typename S, int MR, int NV, bool kMaskB, bool kPf>
FRNN_ALWAYS_INLINE inline void fma_rows(Vec<S> (&acc)[MR][NV], int64_t K, const S* a,
                                        int64_t ars, int64_t acs, const S* b, int64_t bstride,
                                        int64_t n_valid, const char* pf, int64_t pf_lines) {
  using V = Vec<S>;
  constexpr int L = V::size();
  const auto step = [&](int64_t k, const S* bk) FRNN_ALWAYS_INLINE {
    V bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if constexpr (kMaskB)
        bv[v] = V::loadu(bk + v * L, std::min<int64_t>(L, std::max<int64_t>(0, n_valid - v * L)));
      else
        bv[v] = V::loadu(bk + v * L);
    }
    const int64_t ko = k * acs;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V ai(a[i * ars + ko]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = at::vec::fmadd(ai, bv[v], acc[i][v]);
    }
  };
  int64_t k = 0;
  if constexpr (kPf) {
    for (const int64_t k_pf = std::min<int64_t>(K, (pf_lines + 1) / 2); k < k_pf; ++k) {
      __builtin_prefetch(pf + 2 * k * PrefetchNext::kLine, 0, 2);
      __builtin_prefetch(pf + (2 * k + 1) * PrefetchNext::kLine, 0, 2);
      step(k, b + k * bstride);
    }
  }
  for (; k < K; ++k) step(k, b + k * bstride);
}

// C[0:MR, 0:n_valid] (+)= A[0:MR, 0:kc] * B[0:kc, 0:NR], row k of B at
// bp + k*bstride: a packed panel (bstride = NR, zero-padded) or a row-major B read
// in place (bstride = its row stride; kMaskB for a last panel narrower than NR).
// bias (per column, may be null) is added at the store. With kPf, pf_lines
// lines from pf on are prefetched on the way (fma_rows), in a copy of its own.
template <typename S, int MR, int NV, bool kMaskB, bool kPf = false>
FRNN_ALWAYS_INLINE inline void gemm_tile(int64_t kc, const S* a, int64_t ars, int64_t acs,
                                         const S* bp, int64_t bstride, S* c, int64_t ldc,
                                         int64_t n_valid, bool accumulate, const S* bias,
                                         const char* pf = nullptr, int64_t pf_lines = 0) {
  using V = Vec<S>;
  constexpr int L = V::size();
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V(S(0));
  fma_rows<S, MR, NV, kMaskB, kPf>(acc, kc, a, ars, acs, bp, bstride, n_valid, pf, pf_lines);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    S* ci = c + i * ldc;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int64_t col = v * L;
      if (col >= n_valid) break;
      const int64_t cnt = std::min<int64_t>(L, n_valid - col);
      V r = acc[i][v];
      if (bias) r = r + V::loadu(bias + col, cnt);
      if (accumulate) r = r + V::loadu(ci + col, cnt);
      r.store(ci + col, cnt);
    }
  }
}

// C (+)= A * B (+ bias[col]) over panels of NR columns of B: panel p starts at
// bp + p*panel_stride and its row k at + k*bstride (see gemm_tile). Packed B:
// panel_stride = kc*NR, bstride = NR. Row-major B in place: panel_stride = NR,
// bstride = row stride, direct = true (the last panel is read with a mask).
// The work is split into tasks (a block of rows x one panel) that run(task)
// does independently, so that callers can schedule them (see phases.h).
template <typename S, int NV = kGemmNV>
struct PanelGemm {
  static constexpr int L = Vec<S>::size();
  static constexpr int NR = NV * L;
  static constexpr int MR = tile_rows(NV);
  int64_t M, N, kc;
  MatA<S> A;
  const S* bp;
  int64_t panel_stride, bstride;
  bool direct;
  S* c;
  int64_t ldc;
  bool accumulate;
  const S* bias;
  // A packed by pack_a (its row tiles contiguous), or null: A read in place.
  const S* apack = nullptr;
  int64_t npanel = 0, mc = 0, nmb = 0;

  PanelGemm(int64_t M_, int64_t N_, int64_t kc_, const MatA<S>& A_, const S* bp_,
            int64_t panel_stride_, int64_t bstride_, bool direct_, S* c_, int64_t ldc_,
            bool accumulate_, const S* bias_ = nullptr)
      : M(M_), N(N_), kc(kc_), A(A_), bp(bp_), panel_stride(panel_stride_), bstride(bstride_),
        direct(direct_), c(c_), ldc(ldc_), accumulate(accumulate_), bias(bias_) {
    if (M <= 0 || N <= 0) return;
    npanel = ceil_div<int64_t>(N, NR);
    // Rows per block: the block of A (MC x kc) stays in L2 while the panels of B pass.
    const int64_t mc_cap = std::max<int64_t>(
        MR, (int64_t{192} << 10) / (sizeof(S) * std::max<int64_t>(kc, 1)) / MR * MR);
    mc = std::min<int64_t>(round_up<int64_t>(M, MR), mc_cap);
    nmb = ceil_div<int64_t>(M, mc);
  }
  int64_t tasks() const { return nmb * npanel; }
  int64_t fma_per_task() const { return mc * kc * NR; }
  // Smaller blocks of rows, so that there are at least `min_tasks` tasks, where
  // there are fewer: each block is read once per panel, so with few panels a
  // smaller block costs little, and the tasks spread over the threads.
  void spread_rows(int64_t min_tasks) {
    if (tasks() == 0 || tasks() >= min_tasks) return;
    mc = std::max<int64_t>(MR, round_up<int64_t>(ceil_div<int64_t>(M, ceil_div(min_tasks, npanel)), MR));
    nmb = ceil_div<int64_t>(M, mc);
  }
  // Every block of rows of panel p: columns [p*NR, p*NR + NR) of C.
  void run_panel(int64_t p) const {
    for (int64_t mb = 0; mb < nmb; ++mb) run(mb * npanel + p);
  }

  // Whether B is a packed weight read from beyond L2 (kPrefetchMinBytes), which
  // run() prefetches, in a copy of its own (run_far): with the prefetching tiles
  // inline beside the plain ones, the plain ones were no longer inlined, and an
  // LSTM call at T=100 N=1 H=64 took 1.14x the time.
  bool far() const {
    return !direct && !apack && npanel * panel_stride * int64_t{sizeof(S)} > kPrefetchMinBytes;
  }
  void run(int64_t task) const {
    if (far()) return run_far(task);
    run_tiles<false>(task);
  }
  FRNN_NOINLINE void run_far(int64_t task) const { run_tiles<true>(task); }

  template <bool kFar>
  FRNN_ALWAYS_INLINE void run_tiles(int64_t task) const {
    const int64_t mb = task / npanel;
    const int64_t p = task % npanel;
    const int64_t m0 = mb * mc;
    const int64_t m1 = std::min<int64_t>(M, m0 + mc);
    const int64_t n_valid = std::min<int64_t>(NR, N - p * NR);
    const S* bpp = bp + p * panel_stride;
    const S* bias_p = bias ? bias + p * NR : nullptr;
    const bool masked = direct && n_valid < NR;
    // One chain of FMAs sums at most kMaxChain products; longer K goes through C
    // chunk by chunk. The weight gradients' K is every row of the sequence (T*N):
    // summed in a single float32 chain, their error grew with T*N, 3-10x that of
    // per-step sums at T*N >= 4200.
    const int64_t kstep = std::min(k_chunk<S, MR>(kc, NR, m1 - m0), kMaxChain);
    // At least one pass, so that kc = 0 (an input of size 0) still writes C = bias.
    int64_t k0 = 0;
    do {
      const int64_t kk = std::min<int64_t>(kstep, kc - k0);
      const bool acc_k = accumulate || k0 > 0;
      const S* bias_k = k0 == 0 ? bias_p : nullptr;
      const S* bk = bpp + k0 * bstride;
      // The packed B is contiguous from chunk to chunk and from panel to panel.
      const PrefetchNext pf =
          kFar ? PrefetchNext::after_chunk<MR>(bpp, k0, kk, kstep, kc, NR, panel_stride, p,
                                               npanel, m1 - m0)
               : PrefetchNext();
      for_row_tiles<MR>(m1 - m0, [&](auto R, int64_t i) FRNN_ALWAYS_INLINE {
        constexpr int kR = decltype(R)::value;
        const int64_t m = m0 + i;
        S* cm = c + m * ldc + p * NR;
        if (apack)
          gemm_tile<S, kR, NV, false>(kk, apack + m * kc + k0 * kR, 1, kR, bk, bstride, cm, ldc,
                                      n_valid, acc_k, bias_k);
        else if (masked)
          gemm_tile<S, kR, NV, true>(kk, A.ptr + m * A.rs + k0 * A.cs, A.rs, A.cs, bk, bstride,
                                     cm, ldc, n_valid, acc_k, bias_k);
        else
          gemm_tile<S, kR, NV, false, kFar>(kk, A.ptr + m * A.rs + k0 * A.cs, A.rs, A.cs, bk,
                                            bstride, cm, ldc, n_valid, acc_k, bias_k,
                                            pf.at(i / MR), pf.count(i / MR));
      });
      k0 += kk;
    } while (k0 < kc);
  }
  void run_all(const Parallel& par) const {
    par(tasks(), grain_for(fma_per_task()), [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) run(t);
    });
  }
};

// Packs A[0:M, 0:kc] for PanelGemm: the row tile of R rows at row i (the tiles
// of for_row_tiles) goes to dst + i*kc as [kc][R], so that a tile reads its R
// values of each k from one place. For an A read along a large stride (A = dG^T
// in the weight gradients: a cache line per k, 4 KiB apart, which all fall in
// the same few sets of L1) this costs M*kc moves against M*kc*N multiply-adds.
// The moves go kPackAK values of k at a time across all the tiles of a task,
// so that the kPackAK lines of a k block serve every tile they hold before
// they leave L1.
template <typename S, int MR>
void pack_a(const MatA<S>& A, int64_t M, int64_t kc, S* dst, const Parallel& par) {
  const int64_t ntiles = ceil_div<int64_t>(M, MR);
  par(ntiles, grain_for_moves(kc * MR), [&](int64_t tb, int64_t te) {
    const int64_t m0 = tb * MR, m1 = std::min<int64_t>(M, te * MR);
    for (int64_t kb = 0; kb < kc; kb += kPackAK) {
      const int64_t ke = std::min<int64_t>(kc, kb + kPackAK);
      for_row_tiles<MR>(m1 - m0, [&](auto Rc, int64_t i) {
        constexpr int R = decltype(Rc)::value;
        const int64_t row = m0 + i;
        S* d = dst + row * kc + kb * R;
        const S* a = A.ptr + row * A.rs;
        for (int64_t k = kb; k < ke; ++k, d += R) {
          const S* ak = a + k * A.cs;
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) d[r] = ak[r * A.rs];
        }
      });
    }
  });
}

template <typename S, int NV = kGemmNV>
void gemm_panels(int64_t M, int64_t N, int64_t kc, const MatA<S>& A, const S* bp,
                 int64_t panel_stride, int64_t bstride, bool direct, S* c, int64_t ldc,
                 bool accumulate, const Parallel& par, const S* bias = nullptr) {
  PanelGemm<S, NV>(M, N, kc, A, bp, panel_stride, bstride, direct, c, ldc, accumulate, bias)
      .run_all(par);
}

// Elements of packed B for a K x N matrix (the whole K, for weights packed once).
template <typename S, int NV = kGemmNV>
constexpr int64_t packed_b_size(int64_t K, int64_t N) {
  return K * round_up<int64_t>(N, NV * Vec<S>::size());
}

// Scratch elements gemm() needs for M and N up to n: a block of packed B and
// one of packed A.
template <typename S>
constexpr int64_t gemm_scratch_size(int64_t n) {
  return packed_b_size<S>(kKC, n) + n * kKC;
}

// Below this many rows of A, a row-major B is read in place rather than packed:
// packing costs K*N moves, which only pay off when reused over many rows.
constexpr int64_t kDirectRows = 64;

// One product of gemm_multi: C[M, N] (+)= A[M, K] * B[K, N].
template <typename S>
struct Product {
  MatB<S> B;
  int64_t N;
  S* c;
  int64_t ldc;
};

// A weight gradient's rows (G*H) in blocks for at least this many tasks: at
// H=64 (256 rows of dG^T, one panel of 64 columns) the blocks sized for L2 made
// 3 tasks, which 2 threads ran in the time of 2. In 8, whole training calls on
// 2 threads took 0.91-0.97 of the time (paired, T=100, N=16-64, H=32-128, LSTM,
// GRU, RNN; LSTM H=128 1.00), on one thread 0.99-1.03 (AMD Zen 5, 2026-12-05).
// The count does not depend on the threads, nor do the results.
constexpr int64_t kMinProductTasks = 8;

// The products of one A with several B (the weight gradients dG^T X and dG^T Hprev).
// A row-major B with few rows of A is read in place; otherwise B is packed in
// blocks of kKC rows into scratch, and an A read across rows (A.cs > 1, a
// transposed matrix) is packed once per block for all the products (see pack_a).
template <typename S>
void gemm_multi(int64_t M, int64_t K, const MatA<S>& A, const Product<S>* prods, int nprods,
                bool accumulate, S* scratch, const Parallel& par) {
  constexpr int NR = kGemmNV * Vec<S>::size();
  if (M <= 0) return;
  int64_t max_n = 0;
  for (int j = 0; j < nprods; ++j) {
    const Product<S>& q = prods[j];
    max_n = std::max(max_n, q.N);
    if (K <= 0 && !accumulate) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t col = 0; col < q.N; ++col) q.c[i * q.ldc + col] = S(0);
    }
  }
  if (K <= 0 || max_n <= 0) return;
  const auto direct = [&](const Product<S>& q) {
    return q.B.rows == nullptr && q.B.cs == 1 && M < kDirectRows;
  };
  bool packs = false;
  for (int j = 0; j < nprods; ++j) {
    if (prods[j].N <= 0) continue;
    if (direct(prods[j]))
      gemm_panels<S>(M, prods[j].N, K, A, prods[j].B.ptr, NR, prods[j].B.rs, true, prods[j].c,
                     prods[j].ldc, accumulate, par);
    else
      packs = true;
  }
  if (!packs) return;
  S* apack = A.cs != 1 ? scratch + packed_b_size<S>(kKC, max_n) : nullptr;
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min<int64_t>(kKC, K - k0);
    const MatA<S> Ak{A.ptr + k0 * A.cs, A.rs, A.cs};
    if (apack) pack_a<S, PanelGemm<S>::MR>(Ak, M, kc, apack, par);
    for (int j = 0; j < nprods; ++j) {
      const Product<S>& q = prods[j];
      if (q.N <= 0 || direct(q)) continue;
      pack_b<S, kGemmNV>(q.B, k0, kc, q.N, scratch, par);
      PanelGemm<S> g(M, q.N, kc, Ak, scratch, kc * NR, NR, false, q.c, q.ldc,
                     accumulate || k0 > 0);
      g.apack = apack;
      g.spread_rows(kMinProductTasks);
      g.run_all(par);
    }
  }
}

// C[M, N] (+)= A[M, K] * B[K, N] (gemm_multi with one product).
template <typename S>
void gemm(int64_t M, int64_t N, int64_t K, const MatA<S>& A, const MatB<S>& B, S* c,
          int64_t ldc, bool accumulate, S* scratch, const Parallel& par) {
  const Product<S> q{B, N, c, ldc};
  gemm_multi<S>(M, K, A, &q, 1, accumulate, scratch, par);
}

// Packs W^T for C = A * W^T, W [N, K] row-major (a Linear weight), whole K.
template <typename S>
void pack_weight_t(const S* w, int64_t N, int64_t K, S* dst, const Parallel& par) {
  pack_b<S, kGemmNV>(MatB<S>{w, 1, K}, 0, K, N, dst, par);
}

// Packs W for C = A * W, W [K, N] row-major, whole K.
template <typename S>
void pack_weight(const S* w, int64_t K, int64_t N, S* dst, const Parallel& par) {
  pack_b<S, kGemmNV>(MatB<S>{w, N, 1}, 0, K, N, dst, par);
}

// C (+)= A * W (+ bias) for a weight packed whole by pack_weight or pack_weight_t.
template <typename S>
void gemm_weight(int64_t M, int64_t N, int64_t K, const MatA<S>& A, const S* packed,
                 S* c, int64_t ldc, bool accumulate, const Parallel& par,
                 const S* bias = nullptr) {
  constexpr int NR = kGemmNV * Vec<S>::size();
  gemm_panels<S>(M, N, K, A, packed, K * NR, NR, false, c, ldc, accumulate, par, bias);
}

// Horizontal sums of L accumulators at once: out[q] = sum of the lanes of acc[q].
// One transposing reduction (about 3 instructions per sum on AVX-512) instead of
// L separate reductions (about 10 each). acc: the caller's array itself, read
// element by element (hsum16 says why).
template <typename S, typename A>
FRNN_ALWAYS_INLINE inline Vec<S> hsum_lanes(const A& acc) {
  using V = Vec<S>;
  constexpr int L = V::size();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<S, float>) {
    return V(hsum16(acc));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<S, float>) {
    const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 a = _mm256_hadd_ps(h01, h23), b = _mm256_hadd_ps(h45, h67);
    // a = [s0 s1 s2 s3 | s0' s1' s2' s3'] (low and high 128-bit halves), b likewise for 4..7
    return V(_mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31)));
  }
#endif
  alignas(64) S out[L];
  for (int q = 0; q < L; ++q)
    out[q] = at::vec::vec_reduce_all<S>([](V& x, V& y) { return x + y; }, acc[q]);
  return V::loadu(out);
}

// C[M, N] (+)= A[M, K] * W[N, K]^T (+ bias) with A and W read in place (both
// contiguous along K): dot products along K, no packing. For products used
// once (a single step), where packing W would cost as much as the product.
// A tile is MR rows of A by NW rows of W, MR*NW accumulators reduced L at a
// time by hsum_lanes; sum i*NW + j is C[i, j].
template <typename S, int MR, int NW>
inline void gemm_nt_tile(int64_t K, const S* a, int64_t lda, const S* w, int64_t ldw, S* c,
                         int64_t ldc, int64_t nw_valid, bool accumulate, const S* bias) {
  using V = Vec<S>;
  constexpr int L = V::size();
  constexpr int NA = MR * NW;
  constexpr int NG = (NA + L - 1) / L;
  // Rows of W beyond nw_valid re-read the last valid row; their sums are dropped.
  const S* wr[NW];
#pragma GCC unroll 16
  for (int j = 0; j < NW; ++j) wr[j] = w + std::min<int64_t>(j, nw_valid - 1) * ldw;
  // The masked tail of K (zeros past K, none where L divides K) starts the
  // sums, then whole vectors in one loop: a count on every load, or the tail
  // after the loop, kept the accumulators in memory.
  const int64_t k_full = K / L * L;
  V acc[NA];
  {
    const int64_t cnt = K - k_full;
    V wv[NW];
#pragma GCC unroll 16
    for (int j = 0; j < NW; ++j) wv[j] = V::loadu(wr[j] + k_full, cnt);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V av = V::loadu(a + i * lda + k_full, cnt);
#pragma GCC unroll 16
      for (int j = 0; j < NW; ++j) acc[i * NW + j] = av * wv[j];
    }
  }
  for (int64_t k = 0; k < k_full; k += L) {
    V wv[NW];
#pragma GCC unroll 16
    for (int j = 0; j < NW; ++j) wv[j] = V::loadu(wr[j] + k);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V av = V::loadu(a + i * lda + k);
#pragma GCC unroll 16
      for (int j = 0; j < NW; ++j) acc[i * NW + j] = at::vec::fmadd(av, wv[j], acc[i * NW + j]);
    }
  }
  alignas(64) S sums[NG * L];
  if constexpr (NA == L) {
    hsum_lanes<S>(acc).store(sums);
  } else {
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      V part[L];
#pragma GCC unroll 16
      for (int q = 0; q < L; ++q) part[q] = g * L + q < NA ? acc[g * L + q] : V(S(0));
      hsum_lanes<S>(part).store(sums + g * L);
    }
  }
  for (int i = 0; i < MR; ++i) {
    S* ci = c + i * ldc;
    for (int j = 0; j < nw_valid && j < NW; ++j) {
      S r = sums[i * NW + j];
      if (bias) r += bias[j];
      if (accumulate) r += ci[j];
      ci[j] = r;
    }
  }
}

// C[M, N] (+)= A[M, K] * W[N, K]^T as independent tasks over blocks of columns
// (rows of W), so that a single step's products can be spread over threads.
template <typename S>
struct GemmNT {
  static constexpr int L = Vec<S>::size();
  int64_t M, N, K;
  const S* a;
  int64_t lda;
  const S* w;
  int64_t ldw;
  S* c;
  int64_t ldc;
  bool accumulate;
  const S* bias;
  // Columns per tile: L rows of W for one row of A (a GEMV), L/4 otherwise;
  // columns per task: whole tiles, enough multiply-adds to pay for a thread.
  int64_t nw = 0, cols = 0;

  GemmNT(int64_t M_, int64_t N_, int64_t K_, const S* a_, int64_t lda_, const S* w_,
         int64_t ldw_, S* c_, int64_t ldc_, bool accumulate_, const S* bias_ = nullptr)
      : M(M_), N(N_), K(K_), a(a_), lda(lda_), w(w_), ldw(ldw_), c(c_), ldc(ldc_),
        accumulate(accumulate_), bias(bias_) {
    nw = M == 1 ? L : (M < 4 ? L / 2 : L / 4);
    const int64_t fma_per_col = std::max<int64_t>(1, M * K);
    cols = round_up<int64_t>(std::max<int64_t>(nw, kMinParallelFma / fma_per_col), nw);
  }
  int64_t tasks() const { return M > 0 && N > 0 ? ceil_div<int64_t>(N, cols) : 0; }
  void run(int64_t task) const { run_cols(task * cols, std::min<int64_t>(N, (task + 1) * cols)); }

  // The last 5 to 7 rows over nw columns: one or two tiles of 3 to 6 rows. Out
  // of line: inlined, the extra tiles cost the loop over 4-row tiles 5-18% (LSTM,
  // GRU and RNN cells, N = 16 and 32).
  FRNN_NOINLINE void last_rows(int64_t rows, const S* ai, const S* wj, S* ci, int64_t valid,
                               const S* bj) const {
    constexpr int NW = L / 4;
    if (rows == 5) {
      gemm_nt_tile<S, 5, NW>(K, ai, lda, wj, ldw, ci, ldc, valid, accumulate, bj);
    } else if (rows == 6) {
      gemm_nt_tile<S, 6, NW>(K, ai, lda, wj, ldw, ci, ldc, valid, accumulate, bj);
    } else {
      gemm_nt_tile<S, 4, NW>(K, ai, lda, wj, ldw, ci, ldc, valid, accumulate, bj);
      gemm_nt_tile<S, 3, NW>(K, ai + 4 * lda, lda, wj, ldw, ci + 4 * ldc, ldc, valid, accumulate,
                             bj);
    }
  }

  // Columns [c0, c1), c0 a multiple of nw.
  void run_cols(int64_t c0, int64_t c1) const {
    for (int64_t j0 = c0; j0 < c1; j0 += nw) {
      const int64_t valid = std::min<int64_t>(nw, c1 - j0);
      const S* bj = bias ? bias + j0 : nullptr;
      const S* wj = w + j0 * ldw;
      int64_t i = 0;
      if (M == 1) {
        gemm_nt_tile<S, 1, L>(K, a, lda, wj, ldw, c + j0, ldc, valid, accumulate, bj);
        continue;
      }
      if (M >= 4) {
        // Tiles of 4 rows; 5 to 7 rows left go to last_rows, not to the tiles of
        // 2 and 1 rows below, which span more rows of W than nw and compute sums
        // that are dropped (RNN cell, H=256, 1 thread: N=5 41% faster, N=7 34%,
        // N=9 24-30%, LSTM cell N=13 17%, GRU cell N=17 16-20%; N=16 and 32 unchanged).
        for (; i + 4 <= M; i += 4) {
          if (M - i > 4 && M - i < 8) break;
          gemm_nt_tile<S, 4, L / 4>(K, a + i * lda, lda, wj, ldw, c + i * ldc + j0, ldc, valid,
                                    accumulate, bj);
        }
        if (i < M) last_rows(M - i, a + i * lda, wj, c + i * ldc + j0, valid, bj);
        continue;
      }
      // Fewer than 4 rows: two or one at a time, over the same nw columns.
      for (; i + 2 <= M; i += 2)
        for (int64_t jj = 0; jj < valid; jj += L / 2)
          gemm_nt_tile<S, 2, L / 2>(K, a + i * lda, lda, wj + jj * ldw, ldw, c + i * ldc + j0 + jj,
                                    ldc, std::min<int64_t>(L / 2, valid - jj), accumulate,
                                    bj ? bj + jj : nullptr);
      for (; i < M; ++i)
        gemm_nt_tile<S, 1, L>(K, a + i * lda, lda, wj, ldw, c + i * ldc + j0, ldc, valid,
                              accumulate, bj);
    }
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace fusedrnn::cpu
