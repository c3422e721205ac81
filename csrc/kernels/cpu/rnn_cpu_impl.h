// The CPU sequence drivers, compiled once per instruction set (see isa_*.cpp).
//
// Forward, per layer and direction (DESIGN.md, standard path, fused):
//   1. Gx = X W_ih^T + biases for a chunk of steps: one GEMM (chunks keep Gx in
//      cache and bound the scratch to a few MB whatever T is); on the AVX512-BF16
//      dot products, the LSTM and the RNN join it to step 2 instead
//      (InputProjection::joins).
//   2. Per step, one pass over tiles of (rows x hidden units): the recurrent
//      product h W_hh^T is accumulated in registers for all gates of the tile's
//      units, then the cell math of cells.h runs on those registers and writes
//      h, c and (training) the activated gates. No Gh buffer, no second pass.
// Backward (BPTT): per step a pointwise pass (cells.h) gives dGates, one GEMM
// gives the recurrent part of dh; after the loop the weight gradients, dX and
// the biases are large GEMMs and reductions over all rows.
//
// Packed sequences: step t touches only its batch_sizes[t] rows (see SeqLayout).
#pragma once

#include <array>
#include <cstring>

#include "amx.h"
#include "gemm.h"
#include "phases.h"
#include "rnn_cpu.h"

namespace fusedrnn::cpu {
inline namespace CPU_CAPABILITY {

// The Gx chunk: at least kChunkMinRows rows, so that the packed W_ih streamed
// once per chunk serves many rows, and otherwise about kChunkBytes, so that it
// stays in L2 (1 MB per core on Zen 5) until the steps consume it.
constexpr int64_t kChunkBytes = int64_t{512} << 10;
constexpr int64_t kChunkMinRows = 256;

// Whether a kernel compiled for S and this instruction set can take its
// bfloat16 products from AMX tiles (amx.h): float kernels whose vectors are as
// wide as a result tile (AVX-512), so that a tile's row is one vector.
template <typename S>
constexpr bool kAmxCapable = std::is_same_v<S, float> && Vec<S>::size() == amx::kTileCols;

inline int64_t total_rows(const SeqLayout& seq) { return seq.offset(seq.T); }

inline int64_t max_of(int64_t a, int64_t b) { return a > b ? a : b; }
template <typename... Rest>
inline int64_t max_of(int64_t a, int64_t b, Rest... rest) {
  return max_of(max_of(a, b), rest...);
}

// ---------------------------------------------------------------- packing

// Recurrent weight W [G*H, K] (gate g, unit u at row g*H + u) packed for the
// fused step: panel p covers units [p*U*L, (p+1)*U*L) and holds, for each k,
// the G*U vectors (g, u) contiguously; units >= H are zero.
template <typename S, int G, int U>
constexpr int64_t recurrent_packed_size(int64_t H, int64_t K) {
  constexpr int L = Vec<S>::size();
  return ceil_div<int64_t>(H, U * L) * K * G * U * L;
}

template <typename S, int G, int U>
void pack_recurrent(const S* w, int64_t H, int64_t K, S* dst, const Parallel& par) {
  constexpr int L = Vec<S>::size();
  constexpr int NV = G * U;
  const int64_t npanel = ceil_div<int64_t>(H, U * L);
  par(npanel, grain_for_moves(K * NV * L), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      S* d = dst + p * K * NV * L;
      if ((p + 1) * U * L > H) std::memset(d, 0, K * NV * L * sizeof(S));
      for (int g = 0; g < G; ++g) {
        for (int u = 0; u < U; ++u) {
          // Units base..base+L-1 of gate g: L rows of W, transposed into the
          // panel's columns (g*U + u)*L + l, row stride NV*L.
          const int64_t base = (p * U + u) * L;
          const int64_t rows = std::min<int64_t>(L, H - base);
          if (rows <= 0) continue;
          const S* src = w + (g * H + base) * K;
          for (int64_t k0 = 0; k0 < K; k0 += 256) {
            const int64_t kc = std::min<int64_t>(256, K - k0);
            at::vec::transpose_mxn<S>(src + k0, K, d + k0 * NV * L + (g * U + u) * L, NV * L,
                                      static_cast<int>(rows), static_cast<int>(kc));
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------ fused step

// acc[v] = sum_k a[k] * wp[k*NV + v] for MR rows, then epi(row, panel, acc[row]).
// Over a chunk of K: the sums start from part (unless first) and, unless last, are
// stored back there instead of going to the epilogue, so that chunking K does not
// change them. With kPf, pf_lines lines from pf on are prefetched on the way
// (fma_rows), in a copy of its own.
template <typename S, int MR, int NV, bool kPf, typename Epi>
FRNN_ALWAYS_INLINE inline void recurrent_tile(int64_t K, const S* a, int64_t lda, const S* wp,
                                              int64_t row0, int64_t panel, const Epi& epi, S* part,
                                              bool first, bool last, const char* pf,
                                              int64_t pf_lines) {
  using V = Vec<S>;
  constexpr int L = V::size();
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = first ? V(S(0)) : V::loadu(part + (i * NV + v) * L);
  fma_rows<S, MR, NV, false, kPf>(acc, K, a, lda, 1, wp, NV * L, NV * L, pf, pf_lines);
  if (!last) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v].store(part + (i * NV + v) * L);
    return;
  }
  for (int i = 0; i < MR; ++i) epi(row0 + i, panel, acc[i]);
}

// Packing a weight costs about one move per element; a product that reads the
// weight in place pays instead a horizontal sum per output (transposed weight)
// or nothing (row-major weight). So weights are packed when they serve enough
// rows: `uses` rows of A times this factor must exceed the K of the product.
// Measured on one cell call (RNN, LSTM and GRU cells, 1 thread, Intel Xeon,
// AVX-512, inference, in random order), packed time over in-place time: N=32
// K=128 and N=16 K=64 (rows x 4 = K) 0.81-0.93, N=24 K=128 0.86-0.91, N=48 K=256
// 0.92-1.00, N=64 K=256 0.86-0.91; N=32 K=256 and N=16 K=256 are faster in place.
constexpr int64_t kPackReuse = 6;

inline bool worth_packing(PackPolicy policy, int64_t uses, int64_t K) {
  return policy == PackPolicy::kAlways || (policy == PackPolicy::kAuto && uses * kPackReuse > K);
}

// A bfloat16 weight W [n, K] that serves few rows in all (a cell call, a short
// sequence of a few rows) is read in place (amx::gemm_nt). On the dot engine:
// packing it into tiles moves every element once more than the products read
// it, which a product that reads W in place, at about 150 G multiply-adds/s
// against the tiles' 270, repays only over many rows. The more so for a
// weight that does not stay in L2, whose packing runs at memory speed: at
// most 8 rows, or 64 for a weight of kInPlaceLargeWeight elements or more
// (kDotInPlaceMaxUses). Measured on cell calls (AMD EPYC
// Zen 5, L2 1 MB, 1 thread, bfloat16, per call in place / packed): H=256
// GRUCell and LSTMCell N=1 0.53, N=4 0.73, N=8 0.85-0.90, N=12 1.00-1.02, N=16
// 1.09-1.12; H=512 (W_hh 0.8-1 M elements) N=16 0.92-0.97, N=32 1.07; H=1024
// (3-4 M) N=16 0.42-0.63, N=32 0.69-0.85, N=64 0.88-0.94. FUSEDRNN_CPU_PACK=
// never reads every such weight in place (so that the tests cover the path with
// any rows and steps), always packs them.
//
// A rule of reading in place: the most rows in all, by the weight's size, below
// kInPlaceLargeWeight elements and from it.
constexpr int64_t kInPlaceLargeWeight = int64_t{1} << 21;
using InPlaceRule = int64_t[2];
constexpr InPlaceRule kDotInPlaceMaxUses = {8, 64};

// On AMX tiles, where gemm_nt loads W's rows in place as the tiles' A operand
// (so a weight of any size is read once, at memory speed), up to 32 rows, 64
// from kInPlaceLargeWeight (kTileInPlaceMaxUses). Measured on the Intel Xeon
// (AMX, L2 2 MB; bfloat16 inference, C = H; median of 15 paired rounds, in
// place / packed, 1 thread, then 2 where given), with the operand A laid out
// once for the products that share it (amx::nt_operand): LSTMCell H=256 N=16
// 0.66, N=32 0.83-0.87, 0.73, N=64 1.09; GRUCell H=256 N=32 0.90; RNNCell 1.02;
// LSTMCell H=512 N=32 0.85, N=64 1.03; H=1024 N=32 0.73, N=64 0.98-1.03, 0.99,
// N=128 1.39; GRUCell H=1024 N=64 0.90; RNNCell H=2048 (4 M elements) N=48
// 0.73, N=64 0.79, 0.80; LSTMCell H=2048 N=64 0.73, N=128 1.25. LSTM
// sequences, N x T: H=256 8 x 4 0.79, 0.95; H=1024 16 x 4 0.90; GRU H=256 16 x
// 2 0.73.
constexpr InPlaceRule kTileInPlaceMaxUses = {32, 64};

// Whether a bfloat16 weight serving `uses` rows in all is read in place by
// `rule`: never without bfloat16 products; FUSEDRNN_CPU_PACK never and always
// force either.
inline bool reads_in_place(PackPolicy policy, int64_t uses, int64_t weight_elems,
                           const InPlaceRule& rule) {
  if (amx::in_use() == amx::Engine::kNone || policy == PackPolicy::kAlways) return false;
  if (policy == PackPolicy::kNever) return true;
  return uses <= rule[weight_elems >= kInPlaceLargeWeight ? 1 : 0];
}

inline bool dot_in_place(PackPolicy policy, int64_t uses, int64_t weight_elems) {
  return reads_in_place(policy, uses, weight_elems,
                        amx::in_use() == amx::Engine::kTiles ? kTileInPlaceMaxUses
                                                             : kDotInPlaceMaxUses);
}

// The backward through a bfloat16 weight W [K, N] (C = dG W, dG rounded to
// bfloat16) on AMX or the dot engine: read in place with dot products
// (amx::gemm_nn) where it serves few rows in all, or packed into column tiles
// (amx::pack_kn, then amx::gemm), which moves every element once more than the
// products read it and, for a weight beyond L2, runs at memory speed. In place
// up to 8 rows, and 16 for a weight of kInPlaceLargeWeight elements or more
// (kNnInPlaceMaxUses). Measured on cell calls' backward (Intel Xeon with AMX,
// L2 2 MB; LSTMCell and GRUCell, C = H, bfloat16, median in place / packed, 1
// thread and 2): H=256 N=1 0.52-0.69, N=4 0.92, N=8 0.56-1.03, N=16 0.84-1.34,
// N=32 1.17-1.58; H=1024 N=8 0.44-0.89, N=12 0.99, N=16 0.78-1.04, N=24 1.15, N=32
// 1.15-1.65; H=2048 N=16 0.95-0.97, N=24 1.02-1.03, N=32 1.12-1.18, N=64 1.53.
constexpr InPlaceRule kNnInPlaceMaxUses = {8, 16};

inline bool nn_in_place(PackPolicy policy, int64_t uses, int64_t weight_elems) {
  return reads_in_place(policy, uses, weight_elems, kNnInPlaceMaxUses);
}

// A row-major weight (backward through it) read by one product per step is
// packed once for the pass when the pass has more steps than this.
constexpr int64_t kPackSteps = 4;

// A single step (a cell call, T = 1) takes its products from the BLAS that
// torch uses, where the torch layer offers it (cpu_layer.cpp: MKL on an Intel
// CPU), when it has at least kBlasMinRows rows (kBlasMinRowsThreaded with more
// than one thread) and a recurrent K of at least kBlasMinK. A single step cannot
// reuse a packed weight, and read in place (dot products along K) the products
// run at about 55 G multiply-adds/s, against 70-90 for MKL at these shapes. Per
// product A W^T (A: N x K, W: H x K), 1 thread, Intel Xeon (AVX-512), the faster
// of the kernels' packed and in-place paths against at::mm, in us: N=16 K=256
// H=1024 79 / 75, N=16 K=H=512 71 / 88; N=32 K=H=256 40 / 30, K=256 H=1024 159 /
// 116, K=H=512 141 / 131; N=48 K=H=256 54 / 41; N=64 K=H=256 67 / 52, K=H=512
// 251 / 198; N=128 K=H=256 108 / 93. Whole cell calls, BLAS over own time,
// paired in random order: 1 thread, N=32 0.88-0.93 (RNN, LSTM, GRU at H=256,
// LSTM H=512), N=48-128 0.82-0.97; 2 threads, N=32 1.07-1.20 (the kernels' own
// tasks split a call better than MKL at 32 rows), N=48-128 0.69-0.94; K=64
// (LSTM N=64 and 128, H=64) 1.04-1.13, and RNN N=64 H=128 1.07 at 1 thread.
constexpr int64_t kBlasMinRows = 32;
constexpr int64_t kBlasMinRowsThreaded = 48;
constexpr int64_t kBlasMinK = 128;

// The backward of a single step whose weights (W_ih and W_hh) hold at least
// kBlasBackwardMinWeights elements, more than L2 holds in float32, takes the
// BLAS from any rows: its weight gradients dG^T x and dG^T h are products over
// as few as one row, which write a whole weight each, and dG W_ih and dG W_hh
// read one. Smaller weights keep the rule of the forward: in T=10 cell loops
// (training, BLAS / own, paired, 1 thread) GRUCell H=256 N=1 took 1.11,
// RNNCell 1.05, LSTMCell H=128 N=4 1.11, where LSTMCell H=1024 N=1 took 0.77
// (also with glibc's thresholds fixed). Single calls' backward
// (float32, separate process per shape with glibc's thresholds fixed, median of
// 30, 1 thread, then 2), BLAS / own GEMMs in ms: LSTMCell H=1024 N=1 4.99 /
// 9.60, 2.68 / 5.17; N=16 8.25 / 14.73, 3.66 / 8.46; N=32 11.14 / 22.92;
// GRUCell H=1024 N=4 1.95 / 2.12 (2 threads); RNNCell H=2048 N=16 7.90 /
// 12.72, 3.62 / 6.61; LSTMCell H=512 N=4 0.99 / 1.30, 0.57 / 0.71; N=16 1.67 /
// 2.21, 0.88 / 1.18; H=256 N=1 0.28 / 0.31, 0.19 / 0.22; N=16 0.38 / 0.38 (2
// threads); H=128 N=16 0.17 / 0.19; GRUCell H=256 N=1 0.22 / 0.23; RNNCell
// H=256 N=4 0.11 / 0.10.
constexpr int64_t kBlasBackwardMinWeights = int64_t{1} << 20;
inline int64_t blas_min_rows(const Parallel& par) {
  return par.max_threads > 1 ? kBlasMinRowsThreaded : kBlasMinRows;
}
template <typename S>
int64_t blas_min_rows(const SeqForwardArgs<S>&, const Parallel& par) {
  return blas_min_rows(par);
}
template <typename S>
int64_t blas_min_rows(const SeqBackwardArgs<S>& a, const Parallel& par) {
  const int64_t G = num_gates(a.cell.kind, a.cell.coupled);
  return G * a.H * (a.C + a.P) >= kBlasBackwardMinWeights ? 1 : blas_min_rows(par);
}

// The BLAS a pass uses for its products, or null: its own GEMMs. The BLAS runs
// on the calling thread (with its own threads), so a pass that uses it runs its
// phases on that thread alone (threads_for).
template <typename Args>
auto blas_for(const Args& a, const Parallel& par) -> decltype(a.blas) {
  if (a.blas == nullptr || a.seq.T != 1) return nullptr;
  const bool use = a.blas_policy == BlasPolicy::kAlways ||
                   (a.blas_policy == BlasPolicy::kAuto && a.pack == PackPolicy::kAuto &&
                    a.seq.N >= blas_min_rows(a, par) && a.P >= kBlasMinK);
  return use ? a.blas : nullptr;
}

// Every product below is a set of independent tasks (tasks(), run(task)), so
// that a whole pass can be scheduled as ordered phases in one parallel region
// (phases.h).

// C = A * W^T for a Linear-style weight W [N, K]: packed once, or dot products
// in place (GemmNT, tasks over blocks of columns), or by the BLAS (one task).
template <typename S>
struct WeightT {
  const S* w = nullptr;
  int64_t N = 0, K = 0;
  S* packed = nullptr;
  // Whether plan() packs: `packed` is null in the sizing pass, so a caller that
  // takes more scratch for a packed weight asks this, or the two passes differ.
  bool packs = false;
  BlasGemm<S> blas = nullptr;

  void plan(Arena& arena, PackPolicy policy, const S* w_, int64_t N_, int64_t K_, int64_t uses,
            BlasGemm<S> blas_ = nullptr) {
    w = w_;
    N = N_;
    K = K_;
    blas = blas_;
    packs = !blas && worth_packing(policy, uses, K);
    if (packs) packed = arena.take<S>(packed_b_size<S>(K, N));
  }
  void prepare(const Parallel& par) const {
    if (packed) pack_weight_t<S>(w, N, K, packed, par);
  }
  PanelGemm<S> product(int64_t M, const S* a, int64_t lda, S* c, int64_t ldc, bool accumulate,
                       const S* bias) const {
    constexpr int NR = kGemmNV * Vec<S>::size();
    return PanelGemm<S>(M, N, K, MatA<S>{a, lda, 1}, packed, K * NR, NR, false, c, ldc,
                        accumulate, bias);
  }
  GemmNT<S> in_place(int64_t M, const S* a, int64_t lda, S* c, int64_t ldc, bool accumulate,
                     const S* bias) const {
    return GemmNT<S>(M, N, K, a, lda, w, K, c, ldc, accumulate, bias);
  }
  int64_t tasks(int64_t M) const {
    if (blas) return M > 0 ? 1 : 0;
    return packed ? product(M, nullptr, 0, nullptr, 0, false, nullptr).tasks()
                  : in_place(M, nullptr, 0, nullptr, 0, false, nullptr).tasks();
  }
  void run(int64_t M, const S* a, int64_t lda, S* c, int64_t ldc, bool accumulate,
           const S* bias, int64_t task) const {
    if (blas)
      blas(false, true, M, N, K, a, lda, w, K, c, ldc, accumulate, bias);
    else if (packed)
      product(M, a, lda, c, ldc, accumulate, bias).run(task);
    else
      in_place(M, a, lda, c, ldc, accumulate, bias).run(task);
  }
};

// C = A * W for W [K, N] row-major (backward through a weight): packed once when
// used over many steps, read in place otherwise; or with `amx` (kAmxCapable<S>),
// packed as AMX column tiles for row-major A, or for a weight that serves few
// rows in all (`uses`, nn_in_place), read in place in bfloat16 (amx::gemm_nn).
template <typename S>
struct WeightN {
  // Columns of C per panel of product().
  static constexpr int64_t kPanel = PanelGemm<S>::NR;
  const S* w = nullptr;
  int64_t K = 0, N = 0;
  S* packed = nullptr;
  BlasGemm<S> blas = nullptr;
  amx::bf16* tiles = nullptr;
  const amx::bf16* wb = nullptr;  // W in bfloat16: packed into tiles, or read in place
  // With wb, panels per task: one task per thread (set by prepare()), so that
  // each stages its rows of A once and reads W in runs of many columns.
  mutable int64_t group = 1;

  void plan(Arena& arena, PackPolicy policy, const S* w_, int64_t K_, int64_t N_, int64_t steps,
            BlasGemm<S> blas_ = nullptr, bool amx = false, const amx::bf16* wb_ = nullptr,
            int64_t uses = 0) {
    w = w_;
    K = K_;
    N = N_;
    blas = blas_;
    if (kAmxCapable<S> && amx && wb_) {
      static_assert(kPanel % amx::kTileCols == 0 || !kAmxCapable<S>, "panels of whole tiles");
      wb = wb_;
      blas = nullptr;
      if (!nn_in_place(policy, uses, K * N))
        tiles = arena.take<amx::bf16>(amx::col_tiles(N) * amx::tile_size(K));
      return;
    }
    if (!blas &&
        (policy == PackPolicy::kAlways || (policy == PackPolicy::kAuto && steps > kPackSteps)))
      packed = arena.take<S>(packed_b_size<S>(K, N));
  }
  void prepare(const Parallel& par) const {
    if (packed) pack_weight<S>(w, K, N, packed, par);
    if (wb) group = ceil_div<int64_t>(panels(), std::max(par.max_threads, 1));
    if constexpr (kAmxCapable<S>) {
      if (tiles)
        par(amx::col_tiles(N), grain_for_moves(K * amx::kTileCols), [&](int64_t jb, int64_t je) {
          amx::pack_kn(wb, K, N, N, tiles, amx::tile_size(K), jb, je);
        });
    }
  }
  PanelGemm<S> product(int64_t M, const MatA<S>& A, S* c, int64_t ldc, bool accumulate) const {
    return packed ? PanelGemm<S>(M, N, K, A, packed, K * kPanel, kPanel, false, c, ldc, accumulate)
                  : PanelGemm<S>(M, N, K, A, w, kPanel, N, true, c, ldc, accumulate);
  }
  int64_t tasks(int64_t M) const {
    if (blas) return M > 0 ? 1 : 0;
    if (wb) return M > 0 ? ceil_div<int64_t>(panels(), group) : 0;
    return product(M, MatA<S>{}, nullptr, 0, false).tasks();
  }
  // C (+)= A W, task of tasks(M); A with unit column stride.
  void run(int64_t M, const MatA<S>& A, S* c, int64_t ldc, bool accumulate, int64_t task) const {
    if (wb)
      run_panels(M, A, c, ldc, accumulate, task * group,
                 std::min<int64_t>(panels(), (task + 1) * group));
    else if (blas)
      blas(false, false, M, N, K, A.ptr, A.rs, w, N, c, ldc, accumulate, nullptr);
    else
      product(M, A, c, ldc, accumulate).run(task);
  }
  // All of C (+)= A W from one task (with the BLAS) or the panels [p0, p1).
  void run_panels(int64_t M, const MatA<S>& A, S* c, int64_t ldc, bool accumulate, int64_t p0,
                  int64_t p1) const {
    if (blas) return run(M, A, c, ldc, accumulate, 0);
    if constexpr (kAmxCapable<S>) {
      constexpr int64_t TP = kPanel / amx::kTileCols;
      const int64_t j0 = p0 * TP, j1 = std::min<int64_t>(amx::col_tiles(N), p1 * TP);
      if (tiles) return amx::gemm(M, N, K, A.ptr, A.rs, tiles, c, ldc, accumulate, j0, j1);
      if (wb) return amx::gemm_nn(M, N, K, A.ptr, A.rs, wb, N, c, ldc, accumulate, j0, j1);
    }
    const PanelGemm<S> g = product(M, A, c, ldc, accumulate);
    for (int64_t p = p0; p < p1; ++p) g.run_panel(p);
  }
  int64_t panels() const { return ceil_div<int64_t>(N, kPanel); }
  // Whether W is read in place in bfloat16 (nn_in_place).
  bool in_place() const { return wb != nullptr && tiles == nullptr; }
};

// The weight elements a single step's backward reads in place, for
// backward_threads: all its weights (step_fma and input_fma over its N rows)
// where the recurrent one is read so, else 0.
template <typename S>
int64_t in_place_weights(const WeightN<S>& w, int64_t N, int64_t step_fma, int64_t input_fma) {
  return w.in_place() && N > 0 ? (step_fma + input_fma) / N : 0;
}

// The recurrent product of the forward step, h W^T for the G gate blocks of
// W [G*H, K], handed to the cell's epilogue in registers: fused with the packed
// weight (tasks: panels x blocks of rows), or, for a weight that serves few rows
// in all (worth_packing; in bfloat16 on the dot engine, dot_in_place), dot
// products in place into a scratch [N, G*H] that the epilogue then reads (tasks:
// groups of panels, each the gate columns of its units and then their
// epilogue), or the BLAS into that scratch (one task: the whole product, then
// every epilogue).
template <typename S, int G, int U>
struct Recurrent {
  static constexpr int L = Vec<S>::size();
  static constexpr int NV = G * U;
  static constexpr int MR = tile_rows(NV);
  static constexpr int64_t kRowBlock = 16 * MR;
  const S* w = nullptr;
  int64_t H = 0, K = 0;
  S* packed = nullptr;
  S* gh = nullptr;
  BlasGemm<S> blas = nullptr;
  // Whether the packed product takes K in chunks (run_packed, KChunkPolicy).
  bool k_chunks = true;
  // On AMX: W in bfloat16 (wb), packed as the column tiles of each gate's units,
  // tile (unit block j, gate g) at (j * G + g) * amx::tile_size(kt()), or read
  // in place (tiles null, dot_in_place) with the in-place tasks. A task
  // is a run of panels, one per thread of the pass (step_threads()), so that h
  // is staged once per task.
  const amx::bf16* wb = nullptr;
  amx::bf16* tiles = nullptr;
  int64_t amx_tasks = 1;
  // The input product joined to this one (InputProjection::joins): W_ih [G*H,
  // C] in bfloat16, whose K blocks come first in each tile, and kx = its
  // columns in a staged block, [x | h] (0 when not joined).
  const amx::bf16* wxb = nullptr;
  int64_t C = 0, kx = 0;

  // wb_ (with kAmxCapable<S>) puts the product on AMX tiles; wxb_ ([G*H, C_])
  // joins the input product to it (run() then takes each step's x).
  void plan(Arena& arena, PackPolicy policy, KChunkPolicy chunks, const S* w_, int64_t H_,
            int64_t K_, int64_t N, int64_t uses, BlasGemm<S> blas_ = nullptr,
            const amx::bf16* wb_ = nullptr, const amx::bf16* wxb_ = nullptr, int64_t C_ = 0) {
    w = w_;
    H = H_;
    K = K_;
    blas = blas_;
    k_chunks = chunks == KChunkPolicy::kAlways ||
               (chunks == KChunkPolicy::kAuto && l1_holds_chunk());
    if (kAmxCapable<S> && wb_) {
      static_assert(NV <= amx::kMaxTiles, "one AMX product per panel");
      wb = wb_;
      blas = nullptr;
      if (!wxb_ && dot_in_place(policy, uses, G * H * K)) {
        gh = arena.take<S>(N * G * H);
        return;
      }
      if (wxb_) {
        wxb = wxb_;
        C = C_;
        kx = amx::k_blocks(C) * amx::kTileK;
      }
      tiles = arena.take<amx::bf16>(panels() * U * G * amx::tile_size(kt()));
      return;
    }
    if (!blas && worth_packing(policy, uses, K))
      packed = arena.take<S>(recurrent_packed_size<S, G, U>(H, K));
    else
      gh = arena.take<S>(N * G * H);
  }
  void prepare(const Parallel& par) const {
    if (packed) pack_recurrent<S, G, U>(w, H, K, packed, par);
    if (tiles) {
      const int64_t ts = amx::tile_size(kt()), nj = panels() * U;
      const int64_t hs = kx / amx::kTileK * amx::kTileElems;  // where W_hh's K blocks start
      par(nj, grain_for_moves(G * (C + K) * amx::kTileCols), [&](int64_t jb, int64_t je) {
        for (int g = 0; g < G; ++g) {
          if (wxb) amx::pack(wxb + g * H * C, H, C, C, tiles + g * ts, G * ts, jb, je);
          amx::pack(wb + g * H * K, H, K, K, tiles + g * ts + hs, G * ts, jb, je);
        }
      });
    }
  }
  // The K of the tile products: [x | h] staged, each part in whole K blocks.
  int64_t kt() const { return kx + amx::k_blocks(K) * amx::kTileK; }
  int64_t panels() const { return ceil_div<int64_t>(H, U * L); }
  // In place: panels per task, enough multiply-adds to pay for a thread.
  int64_t panels_per_task(int64_t rows) const {
    return std::max<int64_t>(1, kMinParallelFma / std::max<int64_t>(1, rows * K * NV * L));
  }
  int64_t tasks(int64_t rows) const {
    if (rows <= 0) return 0;
    if (tiles) return amx_tasks;
    if (blas) return 1;
    return packed ? panels() * ceil_div<int64_t>(rows, kRowBlock)
                  : ceil_div<int64_t>(panels(), panels_per_task(rows));
  }
  // Multiply-adds of a step (with the input product where it is joined), to
  // decide whether threads pay off.
  int64_t fma_per_step(int64_t rows) const { return rows * (C + K) * G * H; }

  // Whether the packed weight is read from beyond L2 (kPrefetchMinBytes), so
  // that run() prefetches it, in a copy of its own (see PanelGemm::far).
  bool far() const {
    return panels() * K * NV * L * int64_t{sizeof(S)} > kPrefetchMinBytes;
  }
  template <typename Epi>
  FRNN_NOINLINE void run_far(int64_t rows, const S* a, int64_t lda, const Epi& epi,
                             int64_t task) const {
    run_packed<true>(rows, a, lda, epi, task);
  }
  // The fused product with the packed weight, task: a panel and a block of rows.
  // With k_chunks the row tiles take K in chunks that stay in L1 from one tile
  // to the next (k_chunk), their sums kept between chunks; without, each tile
  // takes all of K in one pass. The sums are the same either way.
  template <bool kFar, typename Epi>
  FRNN_ALWAYS_INLINE void run_packed(int64_t rows, const S* a, int64_t lda, const Epi& epi,
                                     int64_t task) const {
    const int64_t nrb = ceil_div<int64_t>(rows, kRowBlock);
    const int64_t p = task / nrb;
    const int64_t r0 = (task % nrb) * kRowBlock;
    const int64_t r1 = std::min<int64_t>(rows, r0 + kRowBlock);
    const S* wpp = packed + p * K * NV * L;
    const int64_t kstep = k_chunks ? k_chunk<S, MR>(K, NV * L, r1 - r0) : K;
    // The block's sums between chunks of K (kRowBlock rows of NV vectors); with a
    // single chunk (one row tile) it is not touched.
    alignas(64) S part[kRowBlock * NV * L];
    for (int64_t k0 = 0; k0 < K; k0 += kstep) {
      const int64_t kk = std::min<int64_t>(kstep, K - k0);
      const PrefetchNext pf =
          kFar ? PrefetchNext::after_chunk<MR>(wpp, k0, kk, kstep, K, NV * L, K * NV * L, p,
                                               panels(), r1 - r0)
               : PrefetchNext();
      for_row_tiles<MR>(r1 - r0, [&](auto R, int64_t i) FRNN_ALWAYS_INLINE {
        recurrent_tile<S, decltype(R)::value, NV, kFar>(kk, a + (r0 + i) * lda + k0, lda,
                                                        wpp + k0 * NV * L, r0 + i, p, epi,
                                                        part + i * NV * L, k0 == 0, k0 + kk >= K,
                                                        pf.at(i / MR), pf.count(i / MR));
      });
    }
  }

  // x: the step's rows of the input [rows, C], where the input product is joined.
  template <typename Epi>
  void run(int64_t rows, const S* a, int64_t lda, const Epi& epi, int64_t task,
           const amx::bf16* x = nullptr) const {
    using V = Vec<S>;
    if constexpr (kAmxCapable<S>) {
      if (tiles) return run_amx(rows, a, lda, x, epi, task);
    }
    if (packed) {
      if (far()) return run_far(rows, a, lda, epi, task);
      return run_packed<false>(rows, a, lda, epi, task);
    }
    const int64_t GH = G * H;
    int64_t p0 = 0, p1 = panels();
    if (blas) {
      blas(false, true, rows, GH, K, a, lda, w, K, gh, GH, false, nullptr);
    } else {
      const int64_t pp = panels_per_task(rows);
      p0 = task * pp;
      p1 = std::min<int64_t>(panels(), p0 + pp);
      const int64_t u0 = p0 * U * L, u1 = std::min<int64_t>(H, p1 * U * L);
      if constexpr (kAmxCapable<S>) {
        if (wb) {
          // h rounded to bfloat16 as staged blocks' rows, W_hh read in place;
          // on tiles, h laid out once (after the blocks) for all G gates.
          const int64_t TR = amx::kTileRows, nrb = ceil_div(rows, TR), bs = amx::block_size(K);
          const int64_t nts = amx::nt_operand_size(rows, K);
          amx::bf16* st = amx::staging(K, nrb + ceil_div(nts, bs));
          for (int64_t i = 0; i < nrb; ++i)
            amx::stage(a + i * TR * lda, lda, std::min(TR, rows - i * TR), K, st + i * bs);
          amx::bf16* at = nts ? st + nrb * bs : nullptr;
          if (at) amx::nt_operand(st, rows, K, bs / TR, at);
          for (int g = 0; g < G; ++g)
            amx::gemm_nt(rows, u1 - u0, K, st, bs / TR, wb + (g * H + u0) * K, K,
                         gh + g * H + u0, GH, nullptr, 0, amx::col_tiles(u1 - u0), at);
        }
      }
      if (!wb)
        for (int g = 0; g < G; ++g)
          GemmNT<S>(rows, u1 - u0, K, a, lda, w + (g * H + u0) * K, K, gh + g * H + u0, GH, false)
              .run_cols(0, u1 - u0);
    }
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t p = p0; p < p1; ++p) {
        V acc[NV];
        for (int g = 0; g < G; ++g)
          for (int u = 0; u < U; ++u) {
            const int64_t u0 = (p * U + u) * L;
            const int64_t cnt = std::min<int64_t>(L, std::max<int64_t>(0, H - u0));
            acc[g * U + u] = cnt > 0 ? V::loadu(gh + i * GH + g * H + u0, cnt) : V(S(0));
          }
        epi(i, p, acc);
      }
    }
  }

  // Panels [p0, p1) of the task: h (after x, where the input product is
  // joined) staged in bfloat16 once, then per panel and pair of 16-row blocks
  // (each tile of W serving both), the tile products for its NV vectors and the
  // epilogue of each row on the result tiles. Panel by panel, each tile is read
  // from memory once a step: a joined LSTM weight at C=H=256 (1 MB) does not
  // stay in L2 (1 MB on Zen 5) from one pair of blocks to the next (LSTM
  // bfloat16 T=100 C=H=256 inference, 1 thread, against pair by pair: N=64 and
  // N=128 0.98-0.99 of the time, N=16 and N=32 unchanged). The epilogue of a
  // pair and panel runs in among the tile instructions of the next one
  // (amx::Interleave), from the other half of a double buffer.
  template <typename Epi>
  void run_amx(int64_t rows, const S* a, int64_t lda, const amx::bf16* x, const Epi& epi,
               int64_t task) const {
    using V = Vec<S>;
    constexpr int64_t TR = amx::kTileRows, TC = amx::kTileCols, TT = TR * TC;
    const int64_t per = ceil_div<int64_t>(panels(), amx_tasks);
    const int64_t p0 = task * per, p1 = std::min<int64_t>(panels(), p0 + per);
    if (p0 >= p1) return;
    const int64_t K2 = kt();
    const int64_t ts = amx::tile_size(K2), bs = amx::block_size(K2), nrb = ceil_div(rows, TR);
    const auto block_rows = [&](int64_t i) {
      return static_cast<int>(std::min<int64_t>(TR, rows - i * TR));
    };
    amx::bf16* st = amx::staging(K2, nrb);
    for (int64_t i = 0; i < nrb; ++i) {
      if (wxb) amx::stage(x + i * TR * C, C, block_rows(i), C, st + i * bs, K2);
      amx::stage(a + i * TR * lda, lda, block_rows(i), K, st + i * bs + kx, K2);
    }
    // [buffer][block of the pair]: the results of a pair and panel.
    alignas(64) S out[2][2][NV * TT];
    // The pair and panel whose results wait in out[buf] for their epilogue:
    // item j is row j % TR of block i + j / TR.
    struct Done {
      int64_t i, p, items;
      int buf, live;
    } done{0, 0, 0, 0, U};
    // Tile v = g * U + u of panel p holds units below H where u < live(p): the
    // last panel's others are not multiplied (an RNN at H=32 is half of its
    // one panel), and their vectors reach the epilogue as zeros.
    static_assert(U == 1 || U % 2 == 0, "a pair of tiles in one gate, or one unit block a gate");
    const auto live = [&](int64_t p) {
      return static_cast<int>(std::min<int64_t>(U, ceil_div<int64_t>(H - p * U * L, L)));
    };
    auto row = [&](int64_t j) {
      const int64_t h = j / TR, r = j % TR, gr = (done.i + h) * TR + r;
      if (gr >= rows) return;
      V acc[NV];
      for (int v = 0; v < NV; ++v)
        acc[v] = U == 1 || v % U < done.live ? V::loadu(out[done.buf][h] + v * TT + r * TC)
                                             : V(S(0));
      epi(gr, done.p, acc);
    };
    using Row = decltype(row);
    amx::Interleave work;
    work.fn = [](const void* ctx, int64_t j) { (*static_cast<const Row*>(ctx))(j); };
    work.ctx = &row;
    int buf = 0;
    amx::begin();
    for (int64_t p = p0; p < p1; ++p) {
      const amx::bf16* b[NV];
      for (int g = 0; g < G; ++g)
        for (int u = 0; u < U; ++u) b[g * U + u] = tiles + ((p * U + u) * G + g) * ts;
      for (int64_t i = 0; i < nrb; i += 2) {
        const bool pair = i + 1 < nrb;
        work.next = 0;
        S* o0 = out[buf][0];
        const int lu = live(p);
        if (pair) {
          constexpr int halves = (NV + 1) / 2;
          for (int v = 0; v < NV; v += 2) {
            work.end = done.items * (v / 2 + 1) / halves;
            const int nt = U == 1 ? std::min(2, NV - v) : std::clamp(lu - v % U, 0, 2);
            if (nt > 0)
              amx::product2(st + i * bs, st + (i + 1) * bs, kx + K, b + v, nt, o0 + v * TT,
                            out[buf][1] + v * TT, &work, block_rows(i + 1));
          }
        } else {
          work.end = done.items;
          amx::product(st + i * bs, kx + K, b, G == 1 ? lu : NV, o0, &work, block_rows(i));
        }
        for (; work.next < work.end; ++work.next) work.fn(work.ctx, work.next);
        done = Done{i, p, (pair ? 2 : 1) * TR, buf, lu};
        buf ^= 1;
      }
    }
    amx::end();
    for (int64_t j = 0; j < done.items; ++j) row(j);
  }
};

// The vectors of a row of H units as tasks: a task owns its units for all
// rows, so per-unit sums (bias and peephole gradients) need no atomics and stay
// deterministic. f(u0, cnt) handles units [u0, u0 + cnt).
template <typename S>
int64_t unit_tasks(int64_t H) {
  return ceil_div<int64_t>(H, Vec<S>::size());
}
template <typename S, typename F>
inline void run_unit_task(int64_t H, int64_t task, const F& f) {
  constexpr int L = Vec<S>::size();
  const int64_t u0 = task * L;
  f(u0, std::min<int64_t>(L, H - u0));
}

// A single step (a cell call) opens a parallel region for that step alone, and
// the region's start and end (about 7-10 us on 2 cores) must pay off within it.
// Measured on 2 cores (Intel Xeon, AVX-512), one thread against two per call:
// RNNCell N=16 H=128 (0.5M) 39 us / 53 us, N=32 H=128 (1M) 90 / 77, LSTMCell
// N=16 H=128 (2M) 145 / 132, N=16 H=256 (8M) 425 / 298; only small weights with
// many rows (LSTMCell N=64 H=64, 2M: 126 / 136) lose a little above 1M.
constexpr int64_t kMinCallFmaForThreads = int64_t{1} << 20;
// The same for a single step on AMX tiles, which take a quarter of the time or
// less: bfloat16 cells, 2 cores (Intel Xeon), 100 calls, one thread against two,
// inference / training in ms: LSTMCell N=16 H=256 (8M) 18.5 / 24.8 and 114 /
// 95 (the packing of the weights, per call, splits); N=64 (34M) 29.8 / 34.2;
// GRUCell N=64 (25M) 19.8 / 22.7.
constexpr int64_t kMinCallAmxFmaForThreads = int64_t{1} << 26;
// The same for the AVX512-BF16 dot products (about half the float32 products'
// time). Paired in one process on 2 cores (AMD EPYC Zen 5, 100 calls, H=256),
// two threads' time over one thread's: LSTMCell N=64 (34M) 0.80 inference, 0.88
// training; GRUCell N=64 (25M) 0.86, 0.89; below 2^24, LSTMCell N=16 (8M) 0.89,
// 0.94 and GRUCell N=16 (6M) 0.84, 0.93, but RNNCell N=64 (8M) 1.62 in
// inference and N=16 (2M) 1.05, 1.29.
constexpr int64_t kMinCallDotFmaForThreads = int64_t{1} << 24;
// On a core that issues vdpbf16ps at half the Zen 5's rate (amx::dot_half_rate:
// Zen 4) the same products take twice as long, and a second thread pays from
// 2^22. Paired in one process on 2 cores (AMD EPYC Zen 4, 100 calls, bfloat16),
// two threads' time over one thread's, inference unless given: LSTMCell H=256
// N=8 (4M) 0.69-0.71, training 0.86, N=16 (8M) 0.80-0.83, training 0.89; H=128
// N=32 (4M) 0.73, training 0.85; GRUCell H=256 N=16 (6M) 0.73-0.96, training
// 0.89; H=128 N=64 (6M) 0.91-1.00; RNNCell H=256 N=64 (8M) 0.75-0.83, training
// 0.94; H=512 N=16 (8M) 0.71; H=128 N=128 (4M) 0.92, training 1.03. Below it,
// some gain (LSTMCell H=128 N=8 and N=16, 1-2M, 0.82-0.85; GRUCell H=256 N=8,
// 3M, 0.79; RNNCell H=256 N=16, 2M, 0.84-0.90) and some lose much (GRUCell
// H=128 N=16 and N=32, 1.5-3M, 1.6-1.75; RNNCell H=128 N=32, 1M, 1.14; LSTMCell
// H=64 N=16 1.10-1.28).
constexpr int64_t kMinCallDotHalfRateFmaForThreads = int64_t{1} << 22;
// On tiles with the weights read in place (dot_in_place, nn_in_place) a call
// runs at about the memory's speed over its weights, whatever its rows, and a
// second thread reads half of them: it takes one from kMinCallInPlaceWeights
// weight elements, or from kMinCallInPlaceFma multiply-adds. Measured on 2
// cores (Intel Xeon with AMX), median two threads' time over one thread's,
// LSTMCell and GRUCell, C = H, inference and training: H=512 (1.5-2 M weights)
// N=1 0.44-0.76, N=16 0.46-0.75; H=1024 and 2048 0.46-0.86; H=256 N=16 (6-8 M
// multiply-adds) 0.63-0.83, but N=1 0.59-1.13 (LSTMCell training and GRUCell
// inference faster, GRUCell training slower); H=128 N=16 (1.6-2 M) 0.96-1.41.
constexpr int64_t kMinCallInPlaceWeights = int64_t{1} << 20;
constexpr int64_t kMinCallInPlaceFma = int64_t{1} << 22;

// A pass that takes its products from the BLAS (`blas` not null) runs on the
// calling thread: the BLAS brings its own threads.
// in_place_weights: the weight elements a single step reads in place (on
// tiles), or 0.
template <typename S>
inline int threads_for(const Parallel& par, BlasGemm<S> blas, int64_t step_fma, int64_t steps,
                       bool amx = false, int64_t in_place_weights = 0) {
  if (blas) return 1;
  const amx::Engine engine = amx ? amx::in_use() : amx::Engine::kNone;
  if (steps == 1 && engine == amx::Engine::kTiles && in_place_weights > 0)
    return in_place_weights >= kMinCallInPlaceWeights || step_fma >= kMinCallInPlaceFma
               ? par.max_threads
               : 1;
  const int64_t min_dot_fma =
      amx::dot_half_rate() ? kMinCallDotHalfRateFmaForThreads : kMinCallDotFmaForThreads;
  const int64_t min_fma = steps > 1                        ? kMinStepFmaForThreads
                          : engine == amx::Engine::kTiles ? kMinCallAmxFmaForThreads
                          : engine == amx::Engine::kDot   ? min_dot_fma
                                                          : kMinCallFmaForThreads;
  return step_fma >= min_fma ? par.max_threads : 1;
}

// The threads of a backward's BPTT: step_fma, its recurrent product per step;
// a single step (a cell call) adds its input side's input_fma, as step_threads
// does for the forward.
template <typename S>
inline int backward_threads(const Parallel& par, BlasGemm<S> blas, int64_t H, int64_t step_fma,
                            int64_t steps, bool amx, int64_t input_fma,
                            int64_t in_place_weights = 0) {
  if (bptt_on_one_thread(steps, H, step_fma)) return 1;
  return threads_for(par, blas, step_fma + (steps == 1 ? input_fma : 0), steps, amx,
                     in_place_weights);
}

// The threads of a forward pass whose steps run the recurrent products `recs`
// (threads_for on their multiply-adds per step; a single step, a cell call, adds
// its input projection's input_fma, as the call thresholds above count), at most
// as many as the most tasks a step has: an RNN at H=64 is one panel of 64 units,
// and with N=64 one row block, so a second thread only waited (2 threads 0.79 ms
// against 1 thread's 0.52, T=100, AMD Zen 5). AMX products split into that many
// tasks; at most one a panel where they are all the pass runs (the input
// product joined), so that a single panel (LSTM C=512 H=16 N=32 on the dot
// products, 0.61 ms on 2 threads, 0.58 on 1) keeps one thread. A forward
// packs its weights on these threads too (Parallel::at_most), so that a call
// whose steps run on one thread opens no parallel region: packing on both
// threads opens one a call, wakes the other thread and leaves half the packed
// weight in its cache. Measured on bfloat16 cells stepping on one thread (Zen 4
// under a call threshold of 2^24; 2 threads, 100 calls, paired in one process,
// packed on the steps' thread over packed on both): RNNCell H=256 N=16
// 0.73-0.91, N=64 0.94-0.95, GRUCell N=16 0.89-0.93, training 0.97-1.13,
// LSTMCell N=16 0.96-1.00, training 0.96-1.04; packed on both, 2 of 8 processes
// of the LSTMCell's N=16 inference took 2.4 times the time of the others. A
// backward prepares and runs its products after the BPTT on all threads even
// where its BPTT takes one: capped to the BPTT's threads, cell training took
// 1.02-1.24 of the time (LSTMCell N=16 1.11-1.24, RNNCell N=64 1.08-1.09, N=16
// 1.02-1.05, GRUCell H=128 N=8 in float32 1.04).
template <typename S, typename... Rec>
int step_threads(const Parallel& par, BlasGemm<S> blas, int64_t steps, int64_t rows,
                 int64_t input_fma, Rec&... recs) {
  const bool amx = ((recs.tiles != nullptr) || ...);
  const bool bf16 = ((recs.wb != nullptr) || ...);  // on tiles, or in place on the dot engine
  const int64_t fma = (recs.fma_per_step(rows) + ...) + (steps == 1 ? input_fma : 0);
  const int64_t in_place = bf16 && !amx ? fma / std::max<int64_t>(rows, 1) : 0;
  int threads = threads_for(par, blas, fma, steps, bf16, in_place);
  if (!amx)
    threads = static_cast<int>(std::clamp<int64_t>(std::max({recs.tasks(rows)...}), 1, threads));
  else if (((recs.wxb != nullptr) || ...))
    threads = static_cast<int>(std::clamp<int64_t>(std::max({recs.panels()...}), 1, threads));
  ((recs.amx_tasks = std::min<int64_t>(recs.panels(), threads)), ...);
  return threads;
}

// ------------------------------------------------------- shared pieces

template <typename S>
inline void copy_rows(int64_t rows, int64_t n, const S* src, int64_t lds, S* dst,
                      int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * ldd, src + i * lds, n * sizeof(S));
}

template <typename S>
inline void fill_zero(int64_t n, S* dst) {
  std::memset(dst, 0, n * sizeof(S));
}

// cnt lanes of v rounded to bfloat16 at dst, and back: at::vec's conversions
// (those of torch's own copies), one float vector at a time.
FRNN_ALWAYS_INLINE inline void store_bf16(const Vec<float>& v, uint16_t* dst, int64_t cnt) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m256i h = at::vec::cvtfp32_bf16(__m512(v));
  if (cnt == Vec<float>::size()) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
  else _mm256_mask_storeu_epi16(dst, static_cast<__mmask16>((1u << cnt) - 1), h);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m128i h = at::vec::cvtfp32_bf16(__m256(v));
  if (cnt == Vec<float>::size()) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
  } else {
    alignas(16) uint16_t part[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(part), h);
    std::memcpy(dst, part, cnt * sizeof(uint16_t));
  }
#else
  at::vec::convert_float_bfloat16(v, v).store(dst, static_cast<int>(cnt));
#endif
}
FRNN_ALWAYS_INLINE inline Vec<float> load_bf16(const uint16_t* src, int64_t cnt) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m256i h = cnt == Vec<float>::size()
                        ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))
                        : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << cnt) - 1), src);
  __m512 v;
  at::vec::cvtbf16_fp32(h, v);
  return v;
#elif defined(CPU_CAPABILITY_AVX2)
  __m128i h;
  if (cnt == Vec<float>::size()) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  } else {
    alignas(16) uint16_t part[8] = {};
    std::memcpy(part, src, cnt * sizeof(uint16_t));
    h = _mm_load_si128(reinterpret_cast<const __m128i*>(part));
  }
  __m256 v;
  at::vec::cvtbf16_fp32(h, v);
  return v;
#else
  const auto v = Vec<at::BFloat16>::loadu(src, static_cast<int16_t>(cnt));
  return std::get<0>(at::vec::convert_bfloat16_float(v));
#endif
}

// Rows a kernel writes or reads in S, or for the float kernels of a bfloat16
// call in bfloat16 (SeqForwardArgs::gates_bf16 and y_bf16). T is S, or const S
// to read them.
template <typename S, typename T = S>
struct Rows16 {
  using B = std::conditional_t<std::is_const_v<T>, const uint16_t, uint16_t>;
  T* f = nullptr;
  B* b = nullptr;
  explicit operator bool() const { return f != nullptr || b != nullptr; }
  // The rows from element `at` on.
  Rows16 from(int64_t at) const { return {f ? f + at : nullptr, b ? b + at : nullptr}; }
  FRNN_ALWAYS_INLINE void store(const Vec<S>& v, int64_t at, int64_t cnt) const {
    if constexpr (std::is_same_v<S, float>) {
      if (b) return store_bf16(v, b + at, cnt);
    }
    v.store(f + at, cnt);
  }
  FRNN_ALWAYS_INLINE Vec<S> load(int64_t at, int64_t cnt) const {
    if constexpr (std::is_same_v<S, float>) {
      if (b) return load_bf16(b + at, cnt);
    }
    return Vec<S>::loadu(f + at, cnt);
  }
};

// Rows a training forward saves (gates, states), from element `at` on (none
// otherwise); a backward reads them as Rows16<S, const S>{f, b}.
template <typename S>
Rows16<S> saved_rows(const SeqForwardArgs<S>& a, S* f, uint16_t* b, int64_t at) {
  return a.training ? Rows16<S>{f, b}.from(at) : Rows16<S>{};
}

// The output y from element `at` on.
template <typename S>
Rows16<S> output_rows(const SeqForwardArgs<S>& a, int64_t at) {
  return Rows16<S>{a.y, a.y_bf16}.from(at);
}

// h_n[b] = y at the last step that row b is active (t = 0 in reverse).
template <typename S>
void gather_final(const SeqLayout& seq, const Rows16<S>& y, int64_t P, S* h_n) {
  for (int64_t b = 0; b < seq.N; ++b) {
    int64_t t_last = 0;
    if (!seq.reverse) {
      // batch_sizes is non-increasing: find the last t with batch_sizes[t] > b.
      int64_t lo = 0, hi = seq.T;  // invariant: bs[lo] > b, answer in [lo, hi)
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (seq.rows(mid) > b) lo = mid; else hi = mid;
      }
      t_last = lo;
    }
    const int64_t at = (seq.offset(t_last) + b) * P;
    if (y.f) {
      std::memcpy(h_n + b * P, y.f + at, P * sizeof(S));
      continue;
    }
    constexpr int64_t L = Vec<S>::size();
    for (int64_t k = 0; k < P; k += L) {
      const int64_t cnt = std::min<int64_t>(L, P - k);
      y.load(at + k, cnt).store(h_n + b * P + k, cnt);
    }
  }
}

// Row table of the recurrent input of every row (the previous step's output or
// h0), so that dW_hh = dG^T Hprev is one GEMM over all rows.
template <typename S>
void previous_rows(const SeqLayout& seq, const S* y, const S* h0, int64_t P,
                   const S** rows) {
  for (int64_t s = 0; s < seq.T; ++s) {
    const StepInfo st = seq.step(s);
    for (int64_t i = 0; i < st.rows; ++i)
      rows[st.offset + i] = i < st.split ? y + (st.prev_offset + i) * P : h0 + i * P;
  }
}


// Gx = X W_ih^T + bias, chunk by chunk. Owns the weight and the buffer.
// With the bfloat16 operands of the arguments (kAmxCapable<S>), the product
// runs on AMX tiles, kAmxTaskRows rows per task; on the dot engine, where W_ih
// serves few rows in all (dot_in_place), it reads W_ih in place instead, with
// the same tasks.
//
// The tasks of the packed product go in the order of the units their columns
// feed (`order`: its panels sorted by unit, then gate), not gate block by gate
// block. A step's recurrent tasks are panels of units taken from both ends
// (phases.h), so each of two threads then also computes the Gx columns that its
// own units read, and they stay in its cache instead of crossing to the other
// core once per chunk. Paired A/B against gate order (Intel Xeon, T=100 H=256,
// float32 inference, 2 threads): LSTM N=16 0.94-0.98, N=64 0.94-0.96, GRU N=16
// 0.96. One thread keeps gate order, the packed weight read in its memory order
// (by unit: LSTM N=64 1.02).
template <typename S>
struct InputProjection {
  // On AMX or the dot engine a task is a block of kAmxTaskRows rows; where
  // there are fewer than kAmxMinRowTasks of them (a cell call, a short
  // sequence), a block of rows and a group of kAmxTaskColTiles column tiles,
  // so that the threads share the product (one block of a cell call left a
  // second thread idle: GRUCell N=64 H=256, bfloat16, 2 threads as slow as 1).
  static constexpr int64_t kAmxTaskRows = 64, kAmxMinRowTasks = 4, kAmxTaskColTiles = 8;
  int64_t C = 0, GH = 0, H = 0, max_rows = 0;
  // The product joined to the recurrent one (see joins()): no Gx, no tasks;
  // a step's pre-activations are its recurrent sums plus the biases.
  bool joined = false;
  const S* x = nullptr;
  WeightT<S> w;
  int64_t* order = nullptr;  // [panels of W_ih], with more than one gate block
  const amx::bf16* xb = nullptr;
  const amx::bf16* wb = nullptr;
  amx::bf16* tiles = nullptr;  // W_ih packed (amx.h)
  bool in_place = false;       // W_ih read in place, on tiles or the dot engine (dot_in_place)
  // In place on tiles: all rows of x laid out once (amx::nt_operand) for the
  // tasks, which would otherwise each lay out their block of rows again.
  amx::bf16* xt = nullptr;
  int64_t xt_rows = 0;
  S* bias = nullptr;  // [GH], folded biases
  S* gx = nullptr;    // [max_rows, GH]

  // The cells whose recurrent product can take the input one call this with
  // join = joins(a, GH, par), and then pass Recurrent::plan W_ih (wxb_) and run() the
  // step's x (step_x()).
  void plan(Arena& arena, const SeqForwardArgs<S>& a, int64_t GH_, BlasGemm<S> blas,
            bool join = false) {
    const SeqLayout& seq = a.seq;
    x = a.x;
    C = a.C;
    GH = GH_;
    H = a.H;
    joined = join;
    max_rows = joined ? total_rows(seq)
                      : max_of(seq.N, kChunkMinRows, kChunkBytes / static_cast<int64_t>(GH * sizeof(S)));
    max_rows = std::max<int64_t>(1, std::min<int64_t>(max_rows, total_rows(seq)));
    if (kAmxCapable<S> && a.x_bf16) {
      xb = a.x_bf16;
      wb = a.w_ih_bf16;
      in_place = !joined && dot_in_place(a.pack, total_rows(seq), GH * C);
      if (!joined && !in_place)
        tiles = arena.take<amx::bf16>(amx::col_tiles(GH) * amx::tile_size(C));
      const int64_t nts = in_place ? amx::nt_operand_size(total_rows(seq), C) : 0;
      if (nts) {
        xt = arena.take<amx::bf16>(nts);
        xt_rows = total_rows(seq);
      }
    } else {
      w.plan(arena, a.pack, a.w_ih, GH, C, total_rows(seq), blas);
      if (w.packs && GH > H) order = arena.take<int64_t>(panels());
    }
    bias = arena.take<S>(GH);
    if (!joined) gx = arena.take<S>(max_rows * GH);
  }
  // Whether the input product joins the recurrent one, K = C + H in one tile
  // product per step ([x | h] against [W_ih | W_hh]), with no Gx written by a
  // separate GEMM and read back by the steps. On the dot engine a step's
  // products run at 259-277 G multiply-adds/s (AVX512-BF16, Zen 5, peak about
  // 275) and the separate GEMM, with its epilogue, at about 245 (LSTM bfloat16
  // T=100 N=64 C=H=256 inference, one thread: 16.0 ms apart, 14.8 joined). On
  // AMX tiles (Intel Xeon, 2 MB of L2 a core, T=100, paired, joined over apart)
  // the Gx the separate GEMM writes in float32 costs more than its tiles save:
  // LSTM C=H=256 inference N=16 0.70 of the time, N=32 0.69, N=64 0.70 (0.64
  // at 2 threads), training N=64 0.83 (0.79), RNN N=16 0.91. But a step of one
  // block of 16 rows reads each tile of the joined weight once, and one larger
  // than the L2 then comes from L3 every step: at N=16, 1 thread, C=512 H=256
  // (1.5 MB joined) 0.77, C=768 (2 MB) 0.89, C=1024 (2.6 MB) 1.21, C=256 H=512
  // T=50 (3 MB) 1.26; at N=32 the last two 0.83 and 0.87; at N=8 C=H=256 0.81
  // (RNN 0.87, N=12 0.75), C=768 1.48; at C=H=1024 (16 MB joined, T=30) N=32
  // 0.87, N=64 0.68. With threads, each multiplies its own panels, a share of
  // the joined weight: at 2 threads (paired, 3-5 rounds; two unchanged shapes
  // paired alike gave 1.00 and 0.65, the spread of this machine) C=1024 N=16
  // 0.69-0.73 in three runs, C=512 N=8 0.77 in two, C=768 N=8 0.89, but H=512
  // C=1024 N=16 (192 KB a row a thread) 1.9 and C=H=1024 N=8 1.46. So on
  // tiles a step of at least 8 rows joins where each thread's share of the
  // joined weight is at most kJoinTileBytesPerRow a row of the step, and one of
  // kJoinTileRows rows or more joins whatever the weight.
  // Not where a gate's units fill their 16-wide tiles less well than the GEMM's
  // columns do: the joined product pads each gate's H to a multiple of 16 over C as
  // well, and more than H/16 of padding (LSTM H=40: 48 a gate, 20% more work over C)
  // would cost more than the join saved at H=256 (about 8%). Nor, on the dot engine,
  // below a block of 16 rows a step, where the step's products, a few rows against
  // each vector of W, run far below the rate of the GEMM over all steps' rows
  // (Zen 5, T=50, one thread, joined against apart: LSTM C=1024 H=256 N=1 1.37 ms
  // against 0.53, N=4 1.48 against 1.22, N=8 0.96-1.08 of the time over LSTM and RNN
  // shapes; N=24 and 40 joined 1.02-1.14x faster); but from 4 rows where the core
  // issues a 512-bit vdpbf16ps once a cycle, half the Zen 5's rate
  // (amx::dot_half_rate: Zen 4), and runs of 4 rows keep up with the GEMM's (Zen 4,
  // paired, joined over apart, T=100 C=H=256 unless given, 1 thread: LSTM inference
  // N=8 0.91, N=10 H=128 0.94, N=12 0.96, N=8 training 0.98, RNN N=8 inference 0.96,
  // training 0.99; T=50: C=1024 1.00, H=512 0.94; T=30 C=H=1024 1.00, and 0.93 at 2
  // threads; N=8 0.93 at 2; N=6 LSTM inference 0.93, training 0.97, RNN 0.95; N=4
  // LSTM inference 0.95 (0.89 at 2 threads), training 1.01, RNN 0.98, T=50 C=1024
  // 0.99; but N=2 1.08). Nor where W_ih is read in place (dot_in_place): a few rows
  // in all. Nor on the float32 products, where the separate GEMM runs at the rate of
  // the steps' products: [W_ih | W_hh] joined on the packed panels (Intel Xeon,
  // T=100, inference, paired, joined over apart) was LSTM C=H=256 N=16 1.09 at 1
  // thread and 0.93 at 2, N=64 1.00, C=H=128 N=16 1.00, RNN C=H=256 N=16 1.00.
  static constexpr int64_t kJoinTileMinRows = 8;
  static constexpr int64_t kJoinDotHalfRateMinRows = 4;
  static constexpr int64_t kJoinTileRows = 32;
  static constexpr int64_t kJoinTileBytesPerRow = int64_t{128} << 10;
  static bool joins(const SeqForwardArgs<S>& a, int64_t GH, const Parallel& par) {
    if (!(kAmxCapable<S> && a.x_bf16)) return false;
    const amx::Engine engine = amx::in_use();
    if (engine == amx::Engine::kNone ||
        amx::col_tiles(a.H) * amx::kTileCols * 16 > a.H * 17 ||
        a.seq.N < (engine != amx::Engine::kDot ? kJoinTileMinRows
                   : amx::dot_half_rate() ? kJoinDotHalfRateMinRows
                                          : amx::kTileRows) ||
        dot_in_place(a.pack, total_rows(a.seq), GH * a.C))
      return false;
    const int64_t joined = (a.C + a.P) * GH;
    const int64_t threads = threads_for<S>(par, nullptr, a.seq.N * joined, a.seq.T, true);
    return engine == amx::Engine::kDot || a.seq.N >= kJoinTileRows ||
           joined * static_cast<int64_t>(sizeof(amx::bf16)) <=
               kJoinTileBytesPerRow * a.seq.N * threads;
  }
  int64_t panels() const { return ceil_div<int64_t>(GH, PanelGemm<S>::NR); }
  void prepare(const Parallel& par) const {
    if (xt) {
      const int64_t R = xt_rows, ts = amx::tile_size(C);
      par(ceil_div<int64_t>(R, amx::kTileRows), grain_for_moves(C * amx::kTileRows),
          [&](int64_t b0, int64_t b1) {
            const int64_t r0 = b0 * amx::kTileRows;
            amx::nt_operand(xb + r0 * C, std::min(R, b1 * amx::kTileRows) - r0, C, C, xt + b0 * ts);
          });
    }
    if (joined || in_place) return;
    if (order) order_panels(par.max_threads > 1);
    if (!tiles) return w.prepare(par);
    const int64_t ts = amx::tile_size(C);
    par(amx::col_tiles(GH), grain_for_moves(C * amx::kTileCols),
        [&](int64_t jb, int64_t je) { amx::pack(wb, GH, C, C, tiles, ts, jb, je); });
  }
  // Multiply-adds of `rows` rows (none of its own where joined).
  int64_t fma(int64_t rows) const { return joined ? 0 : rows * C * GH; }
  int64_t amx_col_groups(int64_t rows) const {
    return ceil_div<int64_t>(rows, kAmxTaskRows) >= kAmxMinRowTasks
               ? 1
               : ceil_div<int64_t>(amx::col_tiles(GH), kAmxTaskColTiles);
  }
  int64_t tasks(int64_t rows) const {
    if (joined) return 0;
    return tiles || in_place ? ceil_div<int64_t>(rows, kAmxTaskRows) * amx_col_groups(rows)
                             : w.tasks(rows);
  }
  // Panels by (unit, gate) of their first column, or in gate order. The
  // panels that start in a gate block are in unit order already, so by unit is
  // a merge of those runs.
  void order_panels(bool by_unit) const {
    constexpr int64_t NR = PanelGemm<S>::NR, kMaxGates = 4;
    const int64_t G = GH / H;
    if (!by_unit || G > kMaxGates) {
      for (int64_t i = 0; i < panels(); ++i) order[i] = i;
      return;
    }
    int64_t next[kMaxGates], end[kMaxGates];
    for (int64_t g = 0; g < G; ++g) {
      next[g] = ceil_div<int64_t>(g * H, NR);
      end[g] = ceil_div<int64_t>((g + 1) * H, NR);
    }
    const auto unit = [&](int64_t g) { return next[g] * NR - g * H; };
    for (int64_t i = 0; i < panels(); ++i) {
      int64_t best = -1;
      for (int64_t g = 0; g < G; ++g)
        if (next[g] < end[g] && (best < 0 || unit(g) < unit(best))) best = g;
      order[i] = next[best]++;
    }
  }
  void run(int64_t row0, int64_t rows, int64_t task) const {
    if (order) {
      const PanelGemm<S> g = w.product(rows, x + row0 * C, C, gx, GH, false, bias);
      return g.run(task % g.nmb * g.npanel + order[task / g.nmb]);
    }
    if (!tiles && !in_place) return w.run(rows, x + row0 * C, C, gx, GH, false, bias, task);
    if constexpr (kAmxCapable<S>) {
      const int64_t groups = amx_col_groups(rows), r0 = task / groups * kAmxTaskRows;
      const int64_t j0 = task % groups * kAmxTaskColTiles;
      const int64_t j1 = groups > 1 ? std::min<int64_t>(amx::col_tiles(GH), j0 + kAmxTaskColTiles)
                                    : amx::col_tiles(GH);
      const int64_t m = std::min<int64_t>(kAmxTaskRows, rows - r0);
      const amx::bf16* xr = xb + (row0 + r0) * C;
      if (in_place) {
        const int64_t g0 = row0 + r0;
        const amx::bf16* at =
            xt && g0 % amx::kTileRows == 0 ? xt + g0 / amx::kTileRows * amx::tile_size(C) : nullptr;
        amx::gemm_nt(m, GH, C, xr, C, wb, C, gx + r0 * GH, GH, bias, j0, j1, at);
      } else {
        amx::gemm(m, GH, C, xr, C, tiles, gx + r0 * GH, GH, bias, j0, j1);
      }
    }
  }
  // What the epilogue adds to the recurrent sums of global row r, in the chunk
  // that starts at row0: its pre-activations, or where joined the biases.
  const S* row(int64_t r, int64_t row0) const { return joined ? bias : gx + (r - row0) * GH; }
  // The input rows of a step that starts at global row r, for a joined product.
  const amx::bf16* step_x(int64_t r) const { return joined ? xb + r * C : nullptr; }
};

// bias[j] = b_ih[j] + b_hh[j] for j in [j0, j1) (either may be null).
template <typename S>
void fold_bias(S* bias, const S* b_ih, const S* b_hh, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) bias[j] = (b_ih ? b_ih[j] : S(0)) + (b_hh ? b_hh[j] : S(0));
}

// The recurrent state, double-buffered: step s reads buffer s%2 and writes the
// other. Rows never active before a step (reverse direction, packed) read h0,
// which both buffers hold until first written. A single step (every row active)
// reads h0 and writes h_n in place.
template <typename S>
struct HiddenState {
  S* buf = nullptr;
  const S* h0 = nullptr;
  S* h_n = nullptr;
  int64_t N = 0, P = 0;
  bool single = false;
  void plan(Arena& arena, const SeqLayout& seq, int64_t P_) {
    N = seq.N;
    P = P_;
    single = seq.T == 1;
    if (!single) buf = arena.take<S>(2 * N * P);
  }
  void init(const S* h0_, S* h_n_) {
    h0 = h0_;
    h_n = h_n_;
    if (single) return;
    std::memcpy(buf, h0, N * P * sizeof(S));
    std::memcpy(buf + N * P, h0, N * P * sizeof(S));
  }
  const S* prev(int64_t s) const { return single ? h0 : buf + (s & 1) * N * P; }
  S* next(int64_t s) const { return single ? h_n : buf + ((s + 1) & 1) * N * P; }
  // h_n from the output y [R, P] (a single step has written it already).
  void finish(const SeqLayout& seq, const Rows16<S>& y) const {
    if (!single) gather_final(seq, y, P, h_n);
  }
};

// A phase of a pass: the input projection of a chunk of steps (k < 0) or the
// k-th part of step s. row0/rows: the chunk's rows (forward).
struct PhaseRef {
  int64_t s, row0, rows;
  int k;
};

// The phases of a pass, laid out in the arena, and their runner.
struct Schedule {
  PhaseRef* refs = nullptr;
  int64_t* starts = nullptr;
  std::atomic<int64_t>* claims = nullptr;
  int64_t n = 0;

  void plan(Arena& arena, int64_t max_phases) {
    refs = arena.take<PhaseRef>(max_phases);
    starts = arena.take<int64_t>(max_phases + 1);
    claims = arena.take<std::atomic<int64_t>>(max_phases);
  }
  void push(int64_t s, int k, int64_t row0 = 0, int64_t rows = 0) { refs[n++] = PhaseRef{s, row0, rows, k}; }

  // Forward: for each chunk of Gx, its projection then `parts` phases per step.
  void forward(const SeqLayout& seq, int64_t chunk_rows, int parts) {
    for (int64_t s0 = 0; s0 < seq.T;) {
      const Chunk c = next_chunk(seq, s0, chunk_rows);
      push(c.s0, -1, c.row0, c.rows);
      for (int64_t s = c.s0; s < c.s1; ++s)
        for (int k = 0; k < parts; ++k) push(s, k, c.row0, c.rows);
      s0 = c.s1;
    }
  }
  // Backward: `parts` phases per step, steps in reverse processing order.
  void backward(const SeqLayout& seq, int parts) {
    for (int64_t s = seq.T - 1; s >= 0; --s)
      for (int k = 0; k < parts; ++k) push(s, k);
  }
  // Backward, one phase per step, then one (s = -1) after the last.
  void backward_steps(const SeqLayout& seq) {
    for (int64_t s = seq.T - 1; s >= -1; --s) push(s, 0);
  }
  static int64_t max_forward(const SeqLayout& seq, int parts) { return seq.T * (parts + 1); }
  static int64_t max_backward(const SeqLayout& seq, int parts) { return seq.T * parts; }
  static int64_t max_backward_steps(const SeqLayout& seq) { return seq.T + 1; }

  // count(ref) tasks per phase, run(ref, task).
  template <typename Count, typename Run>
  void run(const Count& count, const Run& run_task, int threads, const Parallel& par) const {
    run_phases(
        n, [&](int64_t p) { return count(refs[p]); },
        [&](int64_t p, int64_t t) { run_task(refs[p], t); }, threads, starts, claims, par);
  }
};

// The BPTT of BackwardProducts, on one thread, after task `task` of the `tasks`
// of the phase that completes step ph.s's dG: the tasks run in order there, so
// the last one completes it, and the steps done (from the last) are published.
inline void publish_step(std::atomic<int64_t>* steps_done, const SeqLayout& seq,
                         const PhaseRef& ph, int64_t task, int64_t tasks) {
  if (steps_done && task == tasks - 1) steps_done->store(seq.T - ph.s, std::memory_order_release);
}

// Backpropagation through time for a cell whose recurrent input is its output
// (P = H: RNN, GRU reset_after, LSTM without projection), one phase per step.
// The task of a panel of units first takes their dh from the dG of the step
// processed before, dh = dG W_hh into dh_state (dh_state += with `accumulate`,
// for a cell whose pointwise pass left its own part of dh there), then runs the
// pointwise pass of those units at this step, pointwise(st, u0, cnt) for each
// vector of them. That pass reads the dh of its own units only, so the team
// meets once per step, not twice (a product phase and a pointwise phase), and
// the dh it reads was written by the same task. The phase after the last step
// leaves dh0 in dh_state. With the BLAS a phase is one task, every panel.
template <typename S, typename Pointwise>
void bptt_by_panels(const SeqLayout& seq, const WeightN<S>& whh, const S* dG, int64_t ldg,
                    S* dh_state, bool accumulate, Schedule& sched, const Pointwise& pointwise,
                    int threads, const Parallel& par,
                    std::atomic<int64_t>* steps_done = nullptr) {
  constexpr int64_t L = Vec<S>::size();
  constexpr int64_t NR = WeightN<S>::kPanel;
  const int64_t H = whh.N;
  // On AMX, a task per thread, so that each stages dG once per step for all its
  // panels.
  const int64_t per = whh.blas ? whh.panels()
                      : whh.wb ? ceil_div<int64_t>(whh.panels(), std::max(threads, 1))
                               : 1;
  const int64_t tasks = ceil_div<int64_t>(whh.panels(), per);
  sched.backward_steps(seq);
  sched.run(
      [&](const PhaseRef&) -> int64_t { return tasks; },
      [&](const PhaseRef& ph, int64_t task) {
        const int64_t p0 = task * per, p1 = std::min<int64_t>(whh.panels(), p0 + per);
        if (ph.s + 1 < seq.T) {
          const StepInfo before = seq.step(ph.s + 1);
          whh.run_panels(before.rows, MatA<S>{dG + before.offset * ldg, ldg, 1}, dh_state, H,
                         accumulate, p0, p1);
        }
        if (ph.s < 0) return;
        const StepInfo st = seq.step(ph.s);
        const int64_t u1 = std::min<int64_t>(H, p1 * NR);
        for (int64_t u0 = p0 * NR; u0 < u1; u0 += L) pointwise(st, u0, std::min<int64_t>(L, u1 - u0));
        publish_step(steps_done, seq, ph, task, tasks);
      },
      threads, par);
}

// dX and db_ih from dG. Columns [col, col+n) of dG belong to rows [wrow, wrow+n)
// of W_ih; GRU reset_after stores its input-side n gradient apart from the
// recurrent one, so it passes two blocks.
struct GateBlock {
  int64_t col, wrow, n;
};

// With a.amx, dX takes its products from AMX tiles: the block's rows of W_ih
// packed into `tiles` (dx_tiles()), then tasks of kAmxTaskRows rows; or, where
// W_ih serves few rows (nn_in_place; tiles null), from W_ih read in place, tasks
// of column tiles.
template <typename S>
amx::bf16* dx_tiles(Arena& arena, const SeqBackwardArgs<S>& a, int64_t max_block) {
  if (!(kAmxCapable<S> && a.amx && a.dx)) return nullptr;
  if (nn_in_place(a.pack, total_rows(a.seq), max_block * a.C)) return nullptr;
  return arena.take<amx::bf16>(amx::col_tiles(a.C) * amx::tile_size(max_block));
}

// dsum: the column sums of dG (accumulated by the pointwise passes).
template <typename S>
void input_side_grads(const SeqBackwardArgs<S>& a, const S* dG, int64_t ldg, const S* dsum,
                      const GateBlock* blocks, int nblocks, S* scratch, BlasGemm<S> blas,
                      const Parallel& par, amx::bf16* tiles = nullptr) {
  constexpr int64_t kAmxTaskRows = 64;
  const int64_t R = total_rows(a.seq);
  for (int b = 0; b < nblocks; ++b) {
    const GateBlock& g = blocks[b];
    if constexpr (kAmxCapable<S>) {
      if (a.dx && a.amx && !tiles) {
        par(amx::col_tiles(a.C), grain_for(R * g.n * amx::kTileCols), [&](int64_t jb, int64_t je) {
          amx::gemm_nn(R, a.C, g.n, dG + g.col, ldg, a.w_ih_bf16 + g.wrow * a.C, a.C, a.dx, a.C,
                       b > 0, jb, je);
        });
        if (a.db_ih) std::memcpy(a.db_ih + g.wrow, dsum + g.col, g.n * sizeof(S));
        continue;
      }
      if (a.dx && tiles) {
        const int64_t ts = amx::tile_size(g.n), nj = amx::col_tiles(a.C);
        par(nj, grain_for_moves(g.n * amx::kTileCols), [&](int64_t jb, int64_t je) {
          amx::pack_kn(a.w_ih_bf16 + g.wrow * a.C, g.n, a.C, a.C, tiles, ts, jb, je);
        });
        par(ceil_div(R, kAmxTaskRows), grain_for(kAmxTaskRows * a.C * g.n), [&](int64_t tb, int64_t te) {
          for (int64_t t = tb; t < te; ++t) {
            const int64_t r0 = t * kAmxTaskRows;
            amx::gemm(std::min(kAmxTaskRows, R - r0), a.C, g.n, dG + r0 * ldg + g.col, ldg, tiles,
                      a.dx + r0 * a.C, a.C, b > 0, 0, nj);
          }
        });
        if (a.db_ih) std::memcpy(a.db_ih + g.wrow, dsum + g.col, g.n * sizeof(S));
        continue;
      }
    }
    if (a.dx && blas)
      blas(false, false, R, a.C, g.n, dG + g.col, ldg, a.w_ih + g.wrow * a.C, a.C, a.dx, a.C,
           b > 0, nullptr);
    else if (a.dx)
      gemm<S>(R, a.C, g.n, MatA<S>{dG + g.col, ldg, 1}, MatB<S>{a.w_ih + g.wrow * a.C, a.C, 1},
              a.dx, a.C, b > 0, scratch, par);
    if (a.db_ih) std::memcpy(a.db_ih + g.wrow, dsum + g.col, g.n * sizeof(S));
  }
}

// Columns [col, col+n) of dG and the weight gradients they give: dG^T X, rows
// [ih_row, ih_row+n) of dW_ih (ih_row < 0: none), and dG^T hh for hh [R, K] (the
// recurrent inputs), rows [hh_row, hh_row+n) of dW_hh (hh_row < 0: none). Both
// are one gemm_multi, which packs the block's dG^T once for the two; or two
// products of the BLAS (hh then a plain matrix, not a row table).
template <typename S>
struct WeightGradBlock {
  int64_t col, n, ih_row, hh_row;
  MatB<S> hh;
  int64_t K;
};

// Whether the weight gradients are wanted, in float32 or (AMX) in bfloat16.
template <typename S>
bool wants_dw_ih(const SeqBackwardArgs<S>& a) { return a.dw_ih || a.dw_ih_bf16; }
template <typename S>
bool wants_dw_hh(const SeqBackwardArgs<S>& a) { return a.dw_hh || a.dw_hh_bf16; }

// With a.amx, the weight gradients take their products from AMX tiles: X and
// the blocks' recurrent inputs packed (over all R rows) into these, each only
// where its gradient is wanted, then tasks of 16 rows of dG^T, each staged
// once for both products.
struct WeightGradTiles {
  bool on = false;
  amx::bf16* x = nullptr;
  amx::bf16* hh = nullptr;
};

template <typename S>
WeightGradTiles weight_grad_tiles(Arena& arena, const SeqBackwardArgs<S>& a, int64_t max_k) {
  if (!(kAmxCapable<S> && a.amx)) return {};
  const int64_t ts = amx::tile_size(total_rows(a.seq));
  WeightGradTiles t;
  t.on = true;
  if (wants_dw_ih(a)) t.x = arena.take<amx::bf16>(amx::col_tiles(a.C) * ts);
  if (wants_dw_hh(a)) t.hh = arena.take<amx::bf16>(amx::col_tiles(max_k) * ts);
  return t;
}

template <typename S>
void weight_grads_amx(const SeqBackwardArgs<S>& a, const S* dG, int64_t ldg,
                      const WeightGradBlock<S>* blocks, int nblocks, const WeightGradTiles& t,
                      const Parallel& par) {
  if constexpr (kAmxCapable<S>) {
    const int64_t R = total_rows(a.seq), ts = amx::tile_size(R);
    bool x_packed = false;
    const WeightGradBlock<S>* hh_packed = nullptr;
    for (int b = 0; b < nblocks; ++b) {
      const WeightGradBlock<S>& g = blocks[b];
      amx::TnProduct prods[2];
      int n = 0;
      if (wants_dw_ih(a) && g.ih_row >= 0) {
        if (!x_packed)
          par(amx::col_tiles(a.C), grain_for_moves(R * amx::kTileCols), [&](int64_t jb, int64_t je) {
            amx::pack_kn(a.x_bf16, R, a.C, a.C, t.x, ts, jb, je);
          });
        x_packed = true;
        prods[n++] = a.dw_ih_bf16
                         ? amx::TnProduct{a.C, t.x, nullptr, a.C, a.dw_ih_bf16 + g.ih_row * a.C}
                         : amx::TnProduct{a.C, t.x, a.dw_ih + g.ih_row * a.C, a.C};
      }
      if (wants_dw_hh(a) && g.hh_row >= 0) {
        const bool same = hh_packed && hh_packed->hh.ptr == g.hh.ptr &&
                          hh_packed->hh.rows == g.hh.rows && hh_packed->K == g.K;
        if (!same)
          par(amx::col_tiles(g.K), grain_for_moves(R * amx::kTileCols), [&](int64_t jb, int64_t je) {
            if (g.hh.rows)
              amx::pack_kn(g.hh.rows, R, g.K, t.hh, ts, jb, je);
            else
              amx::pack_kn(g.hh.ptr, R, g.K, g.hh.rs, t.hh, ts, jb, je);
          });
        hh_packed = &g;
        prods[n++] = a.dw_hh_bf16
                         ? amx::TnProduct{g.K, t.hh, nullptr, g.K, a.dw_hh_bf16 + g.hh_row * g.K}
                         : amx::TnProduct{g.K, t.hh, a.dw_hh + g.hh_row * g.K, g.K};
      }
      if (n == 0) continue;
      par(amx::col_tiles(g.n), grain_for(amx::kTileRows * R * (a.C + g.K)),
          [&](int64_t ib, int64_t ie) { amx::gemm_tn(g.n, R, dG + g.col, ldg, prods, n, ib, ie); });
    }
  }
}

template <typename S>
void weight_grads(const SeqBackwardArgs<S>& a, const S* dG, int64_t ldg,
                  const WeightGradBlock<S>* blocks, int nblocks, S* scratch, BlasGemm<S> blas,
                  const Parallel& par, const WeightGradTiles& tiles = {}) {
  if (tiles.on) return weight_grads_amx(a, dG, ldg, blocks, nblocks, tiles, par);
  const int64_t R = total_rows(a.seq);
  for (int b = 0; b < nblocks; ++b) {
    const WeightGradBlock<S>& g = blocks[b];
    if (blas) {
      if (a.dw_ih && g.ih_row >= 0)
        blas(true, false, g.n, a.C, R, dG + g.col, ldg, a.x, a.C, a.dw_ih + g.ih_row * a.C, a.C,
             false, nullptr);
      if (a.dw_hh && g.hh_row >= 0)
        blas(true, false, g.n, g.K, R, dG + g.col, ldg, g.hh.ptr, g.hh.rs,
             a.dw_hh + g.hh_row * g.K, g.K, false, nullptr);
      continue;
    }
    Product<S> prods[2];
    int n = 0;
    if (a.dw_ih && g.ih_row >= 0)
      prods[n++] = Product<S>{MatB<S>{a.x, a.C, 1}, a.C, a.dw_ih + g.ih_row * a.C, a.C};
    if (a.dw_hh && g.hh_row >= 0) prods[n++] = Product<S>{g.hh, g.K, a.dw_hh + g.hh_row * g.K, g.K};
    if (n > 0) gemm_multi<S>(g.n, R, MatA<S>{dG + g.col, 1, ldg}, prods, n, false, scratch, par);
  }
}

// dst[0:cnt] += v: the per-unit sums (bias and peephole gradients) that the
// task owning those units adds once per step.
template <typename S>
inline void add_into(S* dst, const Vec<S>& v, int64_t cnt) {
  (Vec<S>::loadu(dst, cnt) + v).store(dst, cnt);
}

// The longest chain of additions in the per-unit sums: they sum a step's rows
// (sum_rows) and the steps (StepSums) in chains of kSumChain, then the sums of
// those in chains of kSumChain again.
constexpr int64_t kSumChain = 16;

// K per-unit sums over a step's rows [0, rows): f(i, s) handles row i and adds
// its K terms into s[0..K), which sum_rows returns. A cell's bias gradient at
// N=1024 float32 (20-100 seeds, median relative error over torch.nn's):
// 0.95-1.3, and 3.3-5.6 with one chain over all rows. f must inline
// (FRNN_ALWAYS_INLINE) so that s stays in registers: bfloat16 LSTM training was
// 5% slower where it did not.
template <int K, typename S, typename F>
FRNN_ALWAYS_INLINE inline std::array<Vec<S>, K> sum_rows(int64_t rows, const F& f) {
  using V = Vec<S>;
  std::array<V, K> total, mid, s;
  total.fill(V(S(0)));
  for (int64_t i2 = 0; i2 < rows; i2 += kSumChain * kSumChain) {
    const int64_t e2 = std::min(rows, i2 + kSumChain * kSumChain);
    mid.fill(V(S(0)));
    for (int64_t i1 = i2; i1 < e2; i1 += kSumChain) {
      const int64_t e1 = std::min(e2, i1 + kSumChain);
      s.fill(V(S(0)));
      for (int64_t i = i1; i < e1; ++i) f(i, s.data());
      for (int k = 0; k < K; ++k) mid[k] = mid[k] + s[k];
    }
    for (int k = 0; k < K; ++k) total[k] = total[k] + mid[k];
  }
  return total;
}

// Per-unit sums over the steps into total[0, width): a step's sums go into a
// first level, which folds into a second at every kSumChain-th time index, which
// folds into total at every kSumChain^2-th. The task that owns a column adds
// into it at every step, so the folds need no synchronisation. Float32, 10
// seeds, median relative error of the bias gradient over torch.nn's: GRU T=5000
// N=4 H=16 0.95 and RNN T=10000 N=1 H=16 1.24, against 6.8 and 12 with every
// step added into total (T=100 N=16 H=32: GRU 1.28 and RNN 1.14, against 1.78
// and 2.09).
template <typename S>
struct StepSums {
  S* total = nullptr;
  S* level[2] = {};
  int64_t width = 0;

  void plan(Arena& arena, S* total_, int64_t width_) {
    total = total_;
    width = width_;
    for (S*& l : level) l = arena.take<S>(width);
  }
  void zero() const {
    fill_zero(width, total);
    for (S* l : level) fill_zero(width, l);
  }
  // Adds step t's sums v into columns [col, col + cnt).
  void add(int64_t t, int64_t col, const Vec<S>& v, int64_t cnt) const {
    using V = Vec<S>;
    S* const p0 = level[0] + col;
    const V s0 = V::loadu(p0, cnt) + v;
    if (t % kSumChain != 0) return s0.store(p0, cnt);
    V(S(0)).store(p0, cnt);
    S* const p1 = level[1] + col;
    const V s1 = V::loadu(p1, cnt) + s0;
    if (t % (kSumChain * kSumChain) != 0) return s1.store(p1, cnt);
    V(S(0)).store(p1, cnt);
    add_into(total + col, s1, cnt);
  }
  // Once every step is added: total += the levels.
  void finish() const {
    for (int64_t j = 0; j < width; ++j) total[j] += level[1][j] + level[0][j];
  }
};

template <typename S>
inline const S* prev_state_row(const SeqBackwardArgs<S>& a, const StepInfo& st, int64_t i,
                               const S* saved, const S* init, int64_t width) {
  return i < st.split ? saved + (st.prev_offset + i) * width : init + i * width;
}

// The recurrent input of every row, for dW_hh = dG^T Hprev: h0 itself for a
// single step, otherwise the row table filled by previous_rows.
template <typename S>
inline MatB<S> recurrent_inputs(const SeqBackwardArgs<S>& a, const S* const* hrows, int64_t P) {
  return a.seq.T == 1 ? MatB<S>{a.h0, P, 1} : MatB<S>{nullptr, 0, 1, hrows};
}

// The products of a backward after its BPTT: dX, db_ih and the weight
// gradients. Where the BPTT runs on one thread whatever the threads
// (bptt_on_one_thread; or everywhere with OverlapPolicy::kAlways), the
// products run beside it: the steps go in chunks (about kKC rows; at most kMaxChunks, and their parts of
// the weight gradients no larger than dG), and the other threads take a chunk's
// products (its rows of dX, its part of the weight gradients) once the BPTT is
// past it; the thread of the BPTT joins them when it is done. (Leaving the
// chunks not yet taken then to all threads, one chunk after the other, took
// 0.95-1.00 of the products-after time at 2 threads and N=16 where this takes
// 0.79-0.92.) Each chunk's part of a weight gradient is a sum of its own, added
// in chunk order at the end, so the results do not depend on the threads: one
// thread runs the same chunks after its BPTT.
template <typename S>
struct BackwardProducts {
  static constexpr int64_t kMaxChunks = 16;
  // Threads beside the BPTT: a chunk's product is a task of one thread, and
  // there are at most 2 kMaxChunks of them.
  static constexpr int kMaxParticipants = 8;
  bool chunked = false;
  int64_t steps_per_chunk = 0, nchunks = 0;
  int64_t ih_rows = 0, hh_rows = 0, hh_cols = 0;
  S* parts_ih = nullptr;  // [nchunks - 1][ih_rows, C]: the parts of chunks 1..
  S* parts_hh = nullptr;  // [nchunks - 1][hh_rows, hh_cols]
  S* scratch = nullptr;   // gemm_multi scratch of each participant
  int64_t scratch_size = 0;
  int participants = 1;
  // dX = the blocks' columns of dG times their rows of W_ih (packed once unless
  // PackPolicy::kNever).
  static constexpr int kMaxBlocks = 2;
  GateBlock blocks[kMaxBlocks] = {};
  WeightN<S> w_ih[kMaxBlocks];
  int nblocks = 0;

  // bptt_H, step_fma: what the caller gives backward_threads. blocks: dX's
  // (input_side_grads). ih_rows and hh_rows: the rows of dW_ih and dW_hh (and
  // of dG's widest weight-gradient block at most); hh_cols: dW_hh's columns.
  void plan(Arena& arena, const SeqBackwardArgs<S>& a, BlasGemm<S> blas, int64_t bptt_H,
            int64_t step_fma, const GateBlock* blocks_, int nblocks_, int64_t ih_rows_,
            int64_t hh_rows_, int64_t hh_cols_, const Parallel& par) {
    const SeqLayout& seq = a.seq;
    const bool wanted = a.overlap == OverlapPolicy::kAlways ||
                        (a.overlap == OverlapPolicy::kAuto && bptt_on_one_thread(seq.T, bptt_H, step_fma));
    if (seq.T <= 1 || blas || a.amx || !wanted || !(a.dx || a.dw_ih || a.dw_hh)) return;
    ih_rows = ih_rows_;
    hh_rows = hh_rows_;
    hh_cols = hh_cols_;
    const int64_t part = (a.dw_ih ? ih_rows * a.C : 0) + (a.dw_hh ? hh_rows * hh_cols : 0);
    const int64_t max_chunks =
        part > 0 ? std::min<int64_t>(kMaxChunks, 1 + total_rows(seq) * ih_rows / part) : kMaxChunks;
    steps_per_chunk = std::max(ceil_div<int64_t>(kKC, std::max<int64_t>(seq.N, 1)),
                               ceil_div<int64_t>(seq.T, max_chunks));
    nchunks = ceil_div<int64_t>(seq.T, steps_per_chunk);
    if (nchunks < 2) return;
    chunked = true;
    if (a.dw_ih) parts_ih = arena.take<S>((nchunks - 1) * ih_rows * a.C);
    if (a.dw_hh) parts_hh = arena.take<S>((nchunks - 1) * hh_rows * hh_cols);
    const int64_t kinds = (a.dx ? 1 : 0) + (a.dw_ih || a.dw_hh ? 1 : 0);
    participants = static_cast<int>(
        std::clamp<int64_t>(par.max_threads, 1, std::min<int64_t>(nchunks * kinds, kMaxParticipants)));
    // gemm_multi's: a block of packed B (X or the recurrent inputs) and one of
    // packed dG^T.
    scratch_size = packed_b_size<S>(kKC, std::max(a.C, hh_cols)) + ih_rows * kKC;
    scratch = arena.take<S>(participants * scratch_size);
    nblocks = nblocks_;
    const PackPolicy pack = a.pack == PackPolicy::kNever ? PackPolicy::kNever : PackPolicy::kAlways;
    for (int b = 0; b < nblocks; ++b) {
      blocks[b] = blocks_[b];
      if (a.dx) w_ih[b].plan(arena, pack, a.w_ih + blocks[b].wrow * a.C, blocks[b].n, a.C, nchunks);
    }
  }

  // Chunk c (in the order the BPTT finishes them, the last steps first): its
  // steps [lo, hi) and rows [r0, r1).
  struct Chunk {
    int64_t lo, hi, r0, r1;
  };
  Chunk chunk(const SeqLayout& seq, int64_t c) const {
    const int64_t hi = seq.T - c * steps_per_chunk, lo = std::max<int64_t>(0, hi - steps_per_chunk);
    Chunk k{lo, hi, INT64_MAX, 0};
    for (int64_t s = lo; s < hi; ++s) {
      const StepInfo st = seq.step(s);
      k.r0 = std::min(k.r0, st.offset);
      k.r1 = std::max(k.r1, st.offset + st.rows);
    }
    return k;
  }

  static MatB<S> from_row(const MatB<S>& b, int64_t r0) {
    return b.rows ? MatB<S>{nullptr, 0, b.cs, b.rows + r0} : MatB<S>{b.ptr + r0 * b.rs, b.rs, b.cs};
  }

  // bptt(steps_done): the BPTT on one thread, publishing its steps done.
  template <typename Bptt>
  void run(const SeqBackwardArgs<S>& a, const Bptt& bptt, const S* dG, int64_t ldg,
           const S* dsum, const WeightGradBlock<S>* wg, int nwg, const Parallel& par) const {
    const SeqLayout& seq = a.seq;
    for (int b = 0; b < nblocks; ++b) w_ih[b].prepare(par);
    const int kinds = (a.dx ? 1 : 0) + (a.dw_ih || a.dw_hh ? 1 : 0);
    const int64_t ntasks = nchunks * kinds;
    // Task t: chunk t / kinds, its dX rows or its part of the weight gradients.
    const Parallel serial{par.run, 1};
    const auto product = [&](int64_t t, S* task_scratch) {
      const int64_t c = t / kinds;
      const Chunk k = chunk(seq, c);
      const int64_t rows = k.r1 - k.r0;
      if (a.dx && t % kinds == 0) {
        for (int b = 0; b < nblocks; ++b)
          w_ih[b]
              .product(rows, MatA<S>{dG + k.r0 * ldg + blocks[b].col, ldg, 1}, a.dx + k.r0 * a.C,
                       a.C, b > 0)
              .run_all(serial);
        return;
      }
      S* dw_ih = a.dw_ih ? (c == 0 ? a.dw_ih : parts_ih + (c - 1) * ih_rows * a.C) : nullptr;
      S* dw_hh = a.dw_hh ? (c == 0 ? a.dw_hh : parts_hh + (c - 1) * hh_rows * hh_cols) : nullptr;
      for (int b = 0; b < nwg; ++b) {
        const WeightGradBlock<S>& g = wg[b];
        Product<S> prods[2];
        int n = 0;
        if (dw_ih && g.ih_row >= 0)
          prods[n++] = Product<S>{MatB<S>{a.x + k.r0 * a.C, a.C, 1}, a.C, dw_ih + g.ih_row * a.C,
                                  a.C};
        if (dw_hh && g.hh_row >= 0)
          prods[n++] = Product<S>{from_row(g.hh, k.r0), g.K, dw_hh + g.hh_row * g.K, g.K};
        if (n > 0)
          gemm_multi<S>(g.n, rows, MatA<S>{dG + k.r0 * ldg + g.col, 1, ldg}, prods, n, false,
                        task_scratch, serial);
      }
    };
    alignas(64) std::atomic<int64_t> steps_done{0};
    alignas(64) std::atomic<int64_t> next{0};
    std::atomic<bool> bptt_taken{false};
    // The participant that takes the BPTT runs it, then takes chunks with the
    // others; each waits until the BPTT is past its chunk (which runs on
    // another thread then: whoever arrives first takes it). Run in turn or
    // nested, the first runs the BPTT and nobody waits.
    par(participants, 1, [&](int64_t first, int64_t) {
      if (!bptt_taken.exchange(true, std::memory_order_acq_rel)) bptt(&steps_done);
      for (;;) {
        const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
        if (t >= ntasks) break;
        wait_for(steps_done, seq.T - chunk(seq, t / kinds).lo);
        product(t, scratch + first * scratch_size);
      }
    });
    for (int b = 0; b < nblocks; ++b)
      if (a.db_ih) std::memcpy(a.db_ih + blocks[b].wrow, dsum + blocks[b].col, blocks[b].n * sizeof(S));
    const auto sum_parts = [&](S* dst, const S* parts, int64_t size) {
      par(size, grain_for_moves(nchunks), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          S v = dst[i];
          for (int64_t c = 0; c + 1 < nchunks; ++c) v += parts[c * size + i];
          dst[i] = v;
        }
      });
    };
    if (a.dw_ih) sum_parts(a.dw_ih, parts_ih, ih_rows * a.C);
    if (a.dw_hh) sum_parts(a.dw_hh, parts_hh, hh_rows * hh_cols);
  }
};

// ------------------------------------------------------------------- LSTM

template <typename S, bool kPeephole, bool kCoupled>
void lstm_forward_seq(const SeqForwardArgs<S>& a, Arena& arena, const Parallel& par) {
  using V = Vec<S>;
  constexpr int G = kCoupled ? 3 : 4;
  constexpr int U = 1;
  constexpr int L = V::size();
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, P = a.P, GH = G * H;
  const bool proj = a.w_hr != nullptr;
  // Phases per step: the fused recurrent pass; with a projection also
  // y = r W_hr^T and the copy of y into the recurrent state.
  enum { kRec, kProj, kCopy };
  const int parts = proj ? 3 : 1;

  const int64_t R = total_rows(seq);
  InputProjection<S> xproj;
  const bool join = InputProjection<S>::joins(a, GH, par);
  xproj.plan(arena, a, GH, blas, join);
  Recurrent<S, G, U> rec;
  rec.plan(arena, a.pack, a.k_chunks, a.w_hh, H, P, N, R, blas, a.w_hh_bf16,
           join ? a.w_ih_bf16 : nullptr, a.C);
  WeightT<S> whr;
  if (proj) whr.plan(arena, a.pack, a.w_hr, P, H, R, blas);
  HiddenState<S> hs;
  hs.plan(arena, seq, P);
  S* c_state = a.c_n;  // updated in place from c0
  S* r_scratch = proj && !a.training ? arena.take<S>(N * H) : nullptr;
  Schedule sched;
  sched.plan(arena, Schedule::max_forward(seq, parts));
  if (arena.sizing()) return;

  const int threads = step_threads(par, blas, seq.T, N, xproj.fma(N), rec);
  const Parallel prep = par.at_most(threads);
  xproj.prepare(prep);
  fold_bias(xproj.bias, a.b_ih, a.b_hh, 0, GH);
  rec.prepare(prep);
  if (proj) whr.prepare(prep);
  hs.init(a.h0, a.h_n);
  std::memcpy(c_state, a.c0, N * H * sizeof(S));

  // Peephole vector blocks: i, f, o (f, o when coupled).
  const S* wci = kPeephole && !kCoupled ? a.w_ch : nullptr;
  const S* wcf = kPeephole ? a.w_ch + (kCoupled ? 0 : H) : nullptr;
  const S* wco = kPeephole ? a.w_ch + (kCoupled ? H : 2 * H) : nullptr;
  constexpr int gi = 0, gf = kCoupled ? 0 : 1, gg = kCoupled ? 1 : 2, go = kCoupled ? 2 : 3;

  // Where h' = o*tanh(c') of step st goes: the output, or the projection's input.
  auto hout_of = [&](const StepInfo& st) {
    return proj ? Rows16<S>{a.training ? a.proj_in + st.offset * H : r_scratch}
                : output_rows(a, st.offset * P);
  };
  const int64_t ldo = proj ? H : P;

  sched.forward(seq, xproj.max_rows, parts);
  sched.run(
      [&](const PhaseRef& ph) -> int64_t {
        if (ph.k < 0) return xproj.tasks(ph.rows);
        const int64_t rows = seq.step(ph.s).rows;
        return ph.k == kRec ? rec.tasks(rows) : ph.k == kProj ? whr.tasks(rows) : 1;
      },
      [&](const PhaseRef& ph, int64_t task) {
        if (ph.k < 0) return xproj.run(ph.row0, ph.rows, task);
        const int64_t s = ph.s;
        const StepInfo st = seq.step(s);
        S* hn = hs.next(s);
        const Rows16<S> hout = hout_of(st);
        if (ph.k == kProj) return whr.run(st.rows, hout.f, H, a.y + st.offset * P, P, false, nullptr, task);
        if (ph.k == kCopy) return copy_rows(st.rows, P, a.y + st.offset * P, P, hn, P);
        const Rows16<S> gates = saved_rows(a, a.gates, a.gates_bf16, st.offset * GH);
        const Rows16<S> cells = saved_rows(a, a.states, a.states_bf16, st.offset * H);
        auto epi = [&, hout](int64_t i, int64_t p, const V* acc) FRNN_ALWAYS_INLINE {
          const int64_t u0 = p * L;
          const int64_t cnt = std::min<int64_t>(L, H - u0);
          const S* gx = xproj.row(st.offset + i, ph.row0) + u0;
          const V pi = kCoupled ? V(S(0)) : acc[gi] + V::loadu(gx + gi * H, cnt);
          const V pf = acc[gf] + V::loadu(gx + gf * H, cnt);
          const V pg = acc[gg] + V::loadu(gx + gg * H, cnt);
          const V po = acc[go] + V::loadu(gx + go * H, cnt);
          S* cp = c_state + i * H + u0;
          const V c = V::loadu(cp, cnt);
          const V zero(S(0));
          const V vci = kPeephole && !kCoupled ? V::loadu(wci + u0, cnt) : zero;
          const V vcf = kPeephole ? V::loadu(wcf + u0, cnt) : zero;
          const V vco = kPeephole ? V::loadu(wco + u0, cnt) : zero;
          V ig, fg, gg_, og, c_new, h_new;
          fusedrnn::lstm_forward<kPeephole, kCoupled>(pi, pf, pg, po, c, vci, vcf, vco, ig, fg,
                                                      gg_, og, c_new, h_new);
          c_new.store(cp, cnt);
          hout.store(h_new, i * ldo + u0, cnt);
          if (!proj) h_new.store(hn + i * P + u0, cnt);
          if (gates) {
            const int64_t gr = i * GH + u0;
            if (!kCoupled) gates.store(ig, gr + gi * H, cnt);
            gates.store(fg, gr + gf * H, cnt);
            gates.store(gg_, gr + gg * H, cnt);
            gates.store(og, gr + go * H, cnt);
            cells.store(c_new, i * H + u0, cnt);
          }
        };
        rec.run(st.rows, hs.prev(s), P, epi, task, xproj.step_x(st.offset));
      },
      threads, par);
  hs.finish(seq, output_rows(a, 0));
}

template <typename S, bool kPeephole, bool kCoupled>
void lstm_backward_seq(const SeqBackwardArgs<S>& a, Arena& arena, const Parallel& par) {
  using V = Vec<S>;
  constexpr int G = kCoupled ? 3 : 4;
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, P = a.P, GH = G * H, R = total_rows(seq);
  const bool proj = a.w_hr != nullptr;
  // Phases per step with a projection: dht = dy + dh, dr = dht W_hr, the
  // pointwise pass, dh = dG W_hh. Without, one (bptt_by_panels).
  enum { kDht, kDr, kPointwise, kRec };

  S* dG = arena.take<S>(R * GH);
  S* dsum = arena.take<S>(GH);
  StepSums<S> bias_sums, peephole_sums;
  bias_sums.plan(arena, dsum, GH);
  if (kPeephole && a.dw_ch) peephole_sums.plan(arena, a.dw_ch, (G - 1) * H);
  WeightN<S> whh;
  whh.plan(arena, a.pack, a.w_hh, GH, P, seq.T, blas, a.amx, a.w_hh_bf16, R);
  WeightN<S> whr;
  if (proj) whr.plan(arena, a.pack, a.w_hr, P, H, seq.T, blas);
  S* dh_state = a.dh0;  // dh and dc flow back in place, from dh_n and dc_n
  S* dc_state = a.dc0;
  S* dht = proj ? arena.take<S>(R * P) : nullptr;
  S* dr = proj ? arena.take<S>(N * H) : nullptr;
  const S** hrows = wants_dw_hh(a) && seq.T > 1 ? arena.take<const S*>(R) : nullptr;
  S* scratch = arena.take<S>(gemm_scratch_size<S>(max_of(a.C, P, H, GH)));
  amx::bf16* xtiles = dx_tiles(arena, a, GH);
  const WeightGradTiles wtiles = weight_grad_tiles(arena, a, P);
  Schedule sched;
  sched.plan(arena, proj ? Schedule::max_backward(seq, 4) : Schedule::max_backward_steps(seq));
  const GateBlock all{0, 0, GH};
  BackwardProducts<S> products;
  // The recurrent product's multiply-adds a step, for the BPTT's threads.
  const int64_t step_fma = N * GH * P;
  products.plan(arena, a, blas, H, step_fma, &all, 1, GH, GH, P, par);
  if (arena.sizing()) return;

  whh.prepare(par);
  if (proj) whr.prepare(par);
  if (a.dh_n) std::memcpy(dh_state, a.dh_n, N * P * sizeof(S)); else fill_zero(N * P, dh_state);
  if (a.dc_n) std::memcpy(dc_state, a.dc_n, N * H * sizeof(S)); else fill_zero(N * H, dc_state);
  bias_sums.zero();
  if (peephole_sums.total) peephole_sums.zero();

  const S* wci = kPeephole && !kCoupled ? a.w_ch : nullptr;
  const S* wcf = kPeephole ? a.w_ch + (kCoupled ? 0 : H) : nullptr;
  const S* wco = kPeephole ? a.w_ch + (kCoupled ? H : 2 * H) : nullptr;
  // The columns of w_ci, w_cf and w_co in dw_ch.
  constexpr int pci = 0, pcf = kCoupled ? 0 : 1, pco = kCoupled ? 1 : 2;
  constexpr int gi = 0, gf = kCoupled ? 0 : 1, gg = kCoupled ? 1 : 2, go = kCoupled ? 2 : 3;
  const Rows16<S, const S> gates{a.gates, a.gates_bf16};
  const Rows16<S, const S> states{a.states, a.states_bf16};

  // The pointwise pass of units [u0, u0 + cnt) at step st: dG and dc from dh
  // (dy + dh_state, or dr with a projection) and dc_state.
  auto pointwise = [&](const StepInfo& st, int64_t u0, int64_t cnt) {
    const S* dy = a.dy + st.offset * P;
    const V zero(S(0));
    const V vci = kPeephole && !kCoupled ? V::loadu(wci + u0, cnt) : zero;
    const V vcf = kPeephole ? V::loadu(wcf + u0, cnt) : zero;
    const V vco = kPeephole ? V::loadu(wco + u0, cnt) : zero;
    // The sums of dG's four gates, then of the three peephole gradients.
    constexpr int kSums = kPeephole ? 7 : 4;
    const auto sum = sum_rows<kSums, S>(st.rows, [&](int64_t i, V* s) FRNN_ALWAYS_INLINE {
      const int64_t r = st.offset + i;
      const V dh = proj ? V::loadu(dr + i * H + u0, cnt)
                        : V::loadu(dy + i * P + u0, cnt) + V::loadu(dh_state + i * P + u0, cnt);
      const int64_t g = r * GH + u0;
      const V ig = kCoupled ? zero : gates.load(g + gi * H, cnt);
      const V fg = gates.load(g + gf * H, cnt);
      const V gg_ = gates.load(g + gg * H, cnt);
      const V og = gates.load(g + go * H, cnt);
      const V c_new = states.load(r * H + u0, cnt);
      const V c = i < st.split ? states.load((st.prev_offset + i) * H + u0, cnt)
                               : V::loadu(a.c0 + i * H + u0, cnt);
      S* dcp = dc_state + i * H + u0;
      const V dc = V::loadu(dcp, cnt);
      V dpi, dpf, dpg, dpo, dc_prev, dwi = zero, dwf = zero, dwo = zero;
      fusedrnn::lstm_backward<kPeephole, kCoupled>(dh, dc, kCoupled ? V(S(1)) - fg : ig, fg, gg_,
                                                   og, c, c_new, vci, vcf, vco, dpi, dpf, dpg, dpo,
                                                   dc_prev, dwi, dwf, dwo);
      S* d = dG + r * GH + u0;
      if (!kCoupled) dpi.store(d + gi * H, cnt);
      dpf.store(d + gf * H, cnt);
      dpg.store(d + gg * H, cnt);
      dpo.store(d + go * H, cnt);
      dc_prev.store(dcp, cnt);
      s[0] = s[0] + dpi;
      s[1] = s[1] + dpf;
      s[2] = s[2] + dpg;
      s[3] = s[3] + dpo;
      if constexpr (kPeephole) {
        s[4] = s[4] + dwi;
        s[5] = s[5] + dwf;
        s[6] = s[6] + dwo;
      }
    });
    if (!kCoupled) bias_sums.add(st.t, gi * H + u0, sum[0], cnt);
    bias_sums.add(st.t, gf * H + u0, sum[1], cnt);
    bias_sums.add(st.t, gg * H + u0, sum[2], cnt);
    bias_sums.add(st.t, go * H + u0, sum[3], cnt);
    if constexpr (kPeephole) {
      if (peephole_sums.total) {
        if (!kCoupled) peephole_sums.add(st.t, pci * H + u0, sum[4], cnt);
        peephole_sums.add(st.t, pcf * H + u0, sum[5], cnt);
        peephole_sums.add(st.t, pco * H + u0, sum[6], cnt);
      }
    }
  };
  // The BPTT, publishing its steps done (steps_done) on one thread: a step's
  // dG is complete after its pointwise phase, or its one phase without a
  // projection.
  const auto steps = [&](int threads, std::atomic<int64_t>* steps_done) {
    if (!proj)
      return bptt_by_panels(seq, whh, dG, GH, dh_state, false, sched, pointwise, threads, par,
                            steps_done);
    sched.backward(seq, 4);
    sched.run(
        [&](const PhaseRef& ph) -> int64_t {
          const int64_t rows = seq.step(ph.s).rows;
          switch (ph.k) {
            case kDr: return whr.tasks(rows);
            case kPointwise: return unit_tasks<S>(H);
            case kRec: return whh.tasks(rows);
            default: return 1;
          }
        },
        [&](const PhaseRef& ph, int64_t task) {
          const StepInfo st = seq.step(ph.s);
          const int64_t rows = st.rows;
          switch (ph.k) {
            case kDht: {
              const S* dy = a.dy + st.offset * P;
              S* d = dht + st.offset * P;
              for (int64_t i = 0; i < rows; ++i)
                for (int64_t j = 0; j < P; ++j) d[i * P + j] = dy[i * P + j] + dh_state[i * P + j];
              return;
            }
            case kDr:
              return whr.run(rows, MatA<S>{dht + st.offset * P, P, 1}, dr, H, false, task);
            case kPointwise:
              run_unit_task<S>(H, task, [&](int64_t u0, int64_t cnt) { pointwise(st, u0, cnt); });
              return publish_step(steps_done, seq, ph, task, unit_tasks<S>(H));
            default:
              return whh.run(rows, MatA<S>{dG + st.offset * GH, GH, 1}, dh_state, P, false, task);
          }
        },
        threads, par);
  };
  const auto bptt = [&](int threads, std::atomic<int64_t>* steps_done) {
    steps(threads, steps_done);
    bias_sums.finish();
    if (peephole_sums.total) peephole_sums.finish();
  };

  if (hrows) previous_rows(seq, a.y, a.h0, P, hrows);
  const WeightGradBlock<S> wg{0, GH, 0, 0, recurrent_inputs(a, hrows, P), P};
  if (products.chunked) {
    products.run(a, [&](std::atomic<int64_t>* done) { bptt(1, done); }, dG, GH, dsum, &wg, 1, par);
  } else {
    const int64_t input_fma = N * a.C * GH;
    bptt(backward_threads(par, blas, H, step_fma, seq.T, a.amx, input_fma,
                          in_place_weights(whh, N, step_fma, input_fma)),
         nullptr);
    input_side_grads(a, dG, GH, dsum, &all, 1, scratch, blas, par, xtiles);
    weight_grads(a, dG, GH, &wg, 1, scratch, blas, par, wtiles);
  }
  if (a.db_hh) std::memcpy(a.db_hh, dsum, GH * sizeof(S));
  if (proj && a.dw_hr)
    gemm<S>(P, H, R, MatA<S>{dht, 1, P}, MatB<S>{a.proj_in, H, 1}, a.dw_hr, H, false, scratch,
            par);
}

// -------------------------------------------------------------------- GRU

// reset_after=True: one fused pass per step over the gates r, z, n.
template <typename S>
void gru_forward_seq(const SeqForwardArgs<S>& a, Arena& arena, const Parallel& par) {
  using V = Vec<S>;
  constexpr int G = 3, U = 1;
  constexpr int L = V::size();
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, GH = G * H;

  InputProjection<S> xproj;
  xproj.plan(arena, a, GH, blas);
  Recurrent<S, G, U> rec;
  rec.plan(arena, a.pack, a.k_chunks, a.w_hh, H, H, N, total_rows(seq), blas, a.w_hh_bf16);
  S* b_hn = arena.take<S>(H);
  HiddenState<S> hs;
  hs.plan(arena, seq, H);
  Schedule sched;
  sched.plan(arena, Schedule::max_forward(seq, 1));
  if (arena.sizing()) return;

  const int threads = step_threads(par, blas, seq.T, N, xproj.fma(N), rec);
  const Parallel prep = par.at_most(threads);
  xproj.prepare(prep);
  // r and z take both biases in Gx; n takes b_in there and b_hn inside r*(...).
  fold_bias(xproj.bias, a.b_ih, a.b_hh, 0, 2 * H);
  fold_bias(xproj.bias, a.b_ih, static_cast<const S*>(nullptr), 2 * H, 3 * H);
  fold_bias(b_hn, a.b_hh ? a.b_hh + 2 * H : nullptr, static_cast<const S*>(nullptr), 0, H);
  rec.prepare(prep);
  hs.init(a.h0, a.h_n);

  sched.forward(seq, xproj.max_rows, 1);
  sched.run(
      [&](const PhaseRef& ph) -> int64_t {
        return ph.k < 0 ? xproj.tasks(ph.rows) : rec.tasks(seq.step(ph.s).rows);
      },
      [&](const PhaseRef& ph, int64_t task) {
        if (ph.k < 0) return xproj.run(ph.row0, ph.rows, task);
        const int64_t s = ph.s;
        const StepInfo st = seq.step(s);
        const S* hp = hs.prev(s);
        S* hn_state = hs.next(s);
        const Rows16<S> y = output_rows(a, st.offset * H);
        const Rows16<S> gates = saved_rows(a, a.gates, a.gates_bf16, st.offset * 4 * H);
        auto epi = [&, y](int64_t i, int64_t p, const V* acc) FRNN_ALWAYS_INLINE {
          const int64_t u0 = p * L;
          const int64_t cnt = std::min<int64_t>(L, H - u0);
          const S* gx = xproj.row(st.offset + i, ph.row0) + u0;
          const V h = V::loadu(hp + i * H + u0, cnt);
          const V hn = acc[2] + V::loadu(b_hn + u0, cnt);
          V r, z, n, h_new;
          fusedrnn::gru_forward(acc[0] + V::loadu(gx, cnt), acc[1] + V::loadu(gx + H, cnt),
                                V::loadu(gx + 2 * H, cnt), hn, h, r, z, n, h_new);
          y.store(h_new, i * H + u0, cnt);
          h_new.store(hn_state + i * H + u0, cnt);
          if (gates) {
            const int64_t gr = i * 4 * H + u0;
            gates.store(r, gr, cnt);
            gates.store(z, gr + H, cnt);
            gates.store(n, gr + 2 * H, cnt);
            gates.store(hn, gr + 3 * H, cnt);
          }
        };
        rec.run(st.rows, hp, H, epi, task);
      },
      threads, par);
  hs.finish(seq, output_rows(a, 0));
}

// reset_after=False: r and z first (fused with their recurrent product), then
// n from W_hn (r*h), a second product that needs every unit's r.
template <typename S>
void gru_reset_before_forward_seq(const SeqForwardArgs<S>& a, Arena& arena,
                                  const Parallel& par) {
  using V = Vec<S>;
  constexpr int L = V::size();
  constexpr int U1 = 2, U2 = 4;
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, GH = 3 * H;
  enum { kRz, kN };

  InputProjection<S> xproj;
  xproj.plan(arena, a, GH, blas);
  Recurrent<S, 2, U1> rec_rz;
  rec_rz.plan(arena, a.pack, a.k_chunks, a.w_hh, H, H, N, total_rows(seq), blas, a.w_hh_bf16);
  Recurrent<S, 1, U2> rec_n;
  rec_n.plan(arena, a.pack, a.k_chunks, a.w_hh ? a.w_hh + 2 * H * H : nullptr, H, H, N,
             total_rows(seq), blas, a.w_hh_bf16 ? a.w_hh_bf16 + 2 * H * H : nullptr);
  HiddenState<S> hs;
  hs.plan(arena, seq, H);
  // z lives in the saved gates when they are S, in scratch otherwise (the n
  // pass reads it back unrounded).
  const bool z_saved = a.training && !a.gates_bf16;
  S* z_scratch = z_saved ? nullptr : arena.take<S>(N * H);
  S* rh_scratch = a.training ? nullptr : arena.take<S>(N * H);
  Schedule sched;
  sched.plan(arena, Schedule::max_forward(seq, 2));
  if (arena.sizing()) return;

  const int threads = step_threads(par, blas, seq.T, N, xproj.fma(N), rec_rz, rec_n);
  const Parallel prep = par.at_most(threads);
  xproj.prepare(prep);
  fold_bias(xproj.bias, a.b_ih, a.b_hh, 0, GH);  // b_hn is outside r*(.) here
  rec_rz.prepare(prep);
  rec_n.prepare(prep);
  hs.init(a.h0, a.h_n);

  sched.forward(seq, xproj.max_rows, 2);
  sched.run(
      [&](const PhaseRef& ph) -> int64_t {
        if (ph.k < 0) return xproj.tasks(ph.rows);
        const int64_t rows = seq.step(ph.s).rows;
        return ph.k == kRz ? rec_rz.tasks(rows) : rec_n.tasks(rows);
      },
      [&](const PhaseRef& ph, int64_t task) {
        if (ph.k < 0) return xproj.run(ph.row0, ph.rows, task);
        const int64_t s = ph.s;
        const StepInfo st = seq.step(s);
        const S* hp = hs.prev(s);
        const Rows16<S> gates = saved_rows(a, a.gates, a.gates_bf16, st.offset * GH);
        // r*h lives in the saved states when training, in scratch otherwise.
        S* zd = z_saved ? gates.f + H : z_scratch;
        const int64_t ldz = z_saved ? GH : H;
        S* rh = a.training ? a.states + st.offset * H : rh_scratch;
        if (ph.k == kRz) {
          auto epi_rz = [&](int64_t i, int64_t p, const V* acc) FRNN_ALWAYS_INLINE {
            const S* gx = xproj.row(st.offset + i, ph.row0);
            for (int u = 0; u < U1; ++u) {
              const int64_t u0 = (p * U1 + u) * L;
              if (u0 >= H) break;
              const int64_t cnt = std::min<int64_t>(L, H - u0);
              const V r = fusedrnn::gru_gate(acc[u] + V::loadu(gx + u0, cnt));
              const V z = fusedrnn::gru_gate(acc[U1 + u] + V::loadu(gx + H + u0, cnt));
              (r * V::loadu(hp + i * H + u0, cnt)).store(rh + i * H + u0, cnt);
              z.store(zd + i * ldz + u0, cnt);
              if (gates) gates.store(r, i * GH + u0, cnt);
              if (gates && !z_saved) gates.store(z, i * GH + H + u0, cnt);
            }
          };
          return rec_rz.run(st.rows, hp, H, epi_rz, task);
        }
        S* hn_state = hs.next(s);
        const Rows16<S> y = output_rows(a, st.offset * H);
        auto epi_n = [&, y](int64_t i, int64_t p, const V* acc) FRNN_ALWAYS_INLINE {
          const S* gx = xproj.row(st.offset + i, ph.row0);
          for (int u = 0; u < U2; ++u) {
            const int64_t u0 = (p * U2 + u) * L;
            if (u0 >= H) break;
            const int64_t cnt = std::min<int64_t>(L, H - u0);
            V n, h_new;
            fusedrnn::gru_reset_before_output(acc[u] + V::loadu(gx + 2 * H + u0, cnt),
                                              V::loadu(zd + i * ldz + u0, cnt),
                                              V::loadu(hp + i * H + u0, cnt), n, h_new);
            y.store(h_new, i * H + u0, cnt);
            h_new.store(hn_state + i * H + u0, cnt);
            if (gates) gates.store(n, i * GH + 2 * H + u0, cnt);
          }
        };
        rec_n.run(st.rows, rh, H, epi_n, task);
      },
      threads, par);
  hs.finish(seq, output_rows(a, 0));
}

// dG layout [R, 4H]: (r, z, hn, xn). The first three match W_hh's rows, so the
// recurrent product is one GEMM; xn is the input-side gradient of n.
template <typename S>
void gru_backward_seq(const SeqBackwardArgs<S>& a, Arena& arena, const Parallel& par) {
  using V = Vec<S>;
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, R = total_rows(seq), ldg = 4 * H;

  S* dG = arena.take<S>(R * ldg);
  S* dsum = arena.take<S>(ldg);
  StepSums<S> bias_sums;
  bias_sums.plan(arena, dsum, ldg);
  WeightN<S> whh;
  whh.plan(arena, a.pack, a.w_hh, 3 * H, H, seq.T, blas, a.amx, a.w_hh_bf16, R);
  S* dh_state = a.dh0;  // dh flows back in place, from dh_n
  const S** hrows = wants_dw_hh(a) && seq.T > 1 ? arena.take<const S*>(R) : nullptr;
  S* scratch = arena.take<S>(gemm_scratch_size<S>(max_of(a.C, H, 4 * H)));
  amx::bf16* xtiles = dx_tiles(arena, a, 2 * H);
  const WeightGradTiles wtiles = weight_grad_tiles(arena, a, H);
  Schedule sched;
  sched.plan(arena, Schedule::max_backward_steps(seq));
  const GateBlock blocks[2] = {{0, 0, 2 * H}, {3 * H, 2 * H, H}};
  BackwardProducts<S> products;
  // The recurrent product's multiply-adds a step, for the BPTT's threads.
  const int64_t step_fma = N * 3 * H * H;
  products.plan(arena, a, blas, H, step_fma, blocks, 2, 3 * H, 3 * H, H, par);
  if (arena.sizing()) return;

  whh.prepare(par);
  if (a.dh_n) std::memcpy(dh_state, a.dh_n, N * H * sizeof(S)); else fill_zero(N * H, dh_state);
  bias_sums.zero();

  // dh_prev's direct part (through z) stays in dh_state; the product adds the rest.
  const Rows16<S, const S> gates{a.gates, a.gates_bf16};
  auto pointwise = [&](const StepInfo& st, int64_t u0, int64_t cnt) {
    const S* dy = a.dy + st.offset * H;
    const auto sum = sum_rows<4, S>(st.rows, [&](int64_t i, V* s) FRNN_ALWAYS_INLINE {
      const int64_t r = st.offset + i;
      S* dhp = dh_state + i * H + u0;
      const V dh = V::loadu(dy + i * H + u0, cnt) + V::loadu(dhp, cnt);
      const int64_t g = r * 4 * H + u0;
      const V h = V::loadu(prev_state_row(a, st, i, a.y, a.h0, H) + u0, cnt);
      V dpn, dpz, dh_prev, dpr, dhn;
      fusedrnn::gru_update_backward(dh, gates.load(g + H, cnt), gates.load(g + 2 * H, cnt), h, dpn,
                                    dpz, dh_prev);
      fusedrnn::gru_reset_after_backward(dpn, gates.load(g, cnt), gates.load(g + 3 * H, cnt), dpr,
                                         dhn);
      S* d = dG + r * ldg + u0;
      dpr.store(d, cnt);
      dpz.store(d + H, cnt);
      dhn.store(d + 2 * H, cnt);
      dpn.store(d + 3 * H, cnt);
      dh_prev.store(dhp, cnt);
      s[0] = s[0] + dpr;
      s[1] = s[1] + dpz;
      s[2] = s[2] + dhn;
      s[3] = s[3] + dpn;
    });
    for (int k = 0; k < 4; ++k) bias_sums.add(st.t, k * H + u0, sum[k], cnt);
  };
  if (hrows) previous_rows(seq, a.y, a.h0, H, hrows);
  // r and z: one dG for both sides; n: the recurrent (col 2H) and the input
  // (col 3H) gradients apart.
  const MatB<S> hprev = recurrent_inputs(a, hrows, H);
  const WeightGradBlock<S> wg[3] = {{0, 2 * H, 0, 0, hprev, H},
                                    {2 * H, H, -1, 2 * H, hprev, H},
                                    {3 * H, H, 2 * H, -1, hprev, H}};
  const auto bptt = [&](int threads, std::atomic<int64_t>* steps_done) {
    bptt_by_panels(seq, whh, dG, ldg, dh_state, true, sched, pointwise, threads, par, steps_done);
    bias_sums.finish();
  };
  if (products.chunked) {
    products.run(a, [&](std::atomic<int64_t>* done) { bptt(1, done); }, dG, ldg, dsum, wg, 3, par);
  } else {
    const int64_t input_fma = N * a.C * 3 * H;
    bptt(backward_threads(par, blas, H, step_fma, seq.T, a.amx, input_fma,
                          in_place_weights(whh, N, step_fma, input_fma)),
         nullptr);
    input_side_grads(a, dG, ldg, dsum, blocks, 2, scratch, blas, par, xtiles);
    weight_grads(a, dG, ldg, wg, 3, scratch, blas, par, wtiles);
  }
  if (a.db_hh) std::memcpy(a.db_hh, dsum, 3 * H * sizeof(S));
}

// dG layout [R, 3H]: (r, z, n), the same for the input and the recurrent side.
template <typename S>
void gru_reset_before_backward_seq(const SeqBackwardArgs<S>& a, Arena& arena,
                                   const Parallel& par) {
  using V = Vec<S>;
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, R = total_rows(seq), GH = 3 * H;
  // Phases per step: z and n, d(r*h) = dpn W_hn, r and the rest of dh,
  // dh += [dpr dpz] W_h(rz).
  enum { kUpdate, kDrh, kReset, kRec };

  S* dG = arena.take<S>(R * GH);
  S* dsum = arena.take<S>(GH);
  StepSums<S> bias_sums;
  bias_sums.plan(arena, dsum, GH);
  WeightN<S> wrz, wn;
  wrz.plan(arena, a.pack, a.w_hh, 2 * H, H, seq.T, blas, a.amx, a.w_hh_bf16, R);
  wn.plan(arena, a.pack, a.w_hh ? a.w_hh + 2 * H * H : nullptr, H, H, seq.T, blas, a.amx,
          a.w_hh_bf16 ? a.w_hh_bf16 + 2 * H * H : nullptr, R);
  S* dh_state = a.dh0;  // dh flows back in place, from dh_n
  S* drh = arena.take<S>(N * H);
  const S** hrows = wants_dw_hh(a) && seq.T > 1 ? arena.take<const S*>(R) : nullptr;
  S* scratch = arena.take<S>(gemm_scratch_size<S>(max_of(a.C, H, GH)));
  amx::bf16* xtiles = dx_tiles(arena, a, GH);
  const WeightGradTiles wtiles = weight_grad_tiles(arena, a, H);
  Schedule sched;
  sched.plan(arena, Schedule::max_backward(seq, 4));
  const GateBlock all{0, 0, GH};
  BackwardProducts<S> products;
  // The recurrent product's multiply-adds a step, for the BPTT's threads.
  const int64_t step_fma = N * GH * H;
  products.plan(arena, a, blas, H, step_fma, &all, 1, GH, GH, H, par);
  if (arena.sizing()) return;

  wrz.prepare(par);
  wn.prepare(par);
  if (a.dh_n) std::memcpy(dh_state, a.dh_n, N * H * sizeof(S)); else fill_zero(N * H, dh_state);
  bias_sums.zero();
  const Rows16<S, const S> gates{a.gates, a.gates_bf16};

  // The BPTT, publishing its steps done (steps_done) on one thread: a step's
  // dG is complete after its reset phase.
  const auto bptt = [&](int threads, std::atomic<int64_t>* steps_done) {
    sched.backward(seq, 4);
    sched.run(
        [&](const PhaseRef& ph) -> int64_t {
          const int64_t rows = seq.step(ph.s).rows;
          switch (ph.k) {
            case kDrh: return wn.tasks(rows);
            case kRec: return wrz.tasks(rows);
            default: return unit_tasks<S>(H);
          }
        },
        [&](const PhaseRef& ph, int64_t task) {
          const StepInfo st = seq.step(ph.s);
          const int64_t rows = st.rows;
          const S* dy = a.dy + st.offset * H;
          switch (ph.k) {
            case kUpdate:
              return run_unit_task<S>(H, task, [&](int64_t u0, int64_t cnt) {
                const auto sum = sum_rows<2, S>(rows, [&](int64_t i, V* s) FRNN_ALWAYS_INLINE {
                  const int64_t r = st.offset + i;
                  S* dhp = dh_state + i * H + u0;
                  const V dh = V::loadu(dy + i * H + u0, cnt) + V::loadu(dhp, cnt);
                  const int64_t g = r * GH + u0;
                  const V h = V::loadu(prev_state_row(a, st, i, a.y, a.h0, H) + u0, cnt);
                  V dpn, dpz, dh_prev;
                  fusedrnn::gru_update_backward(dh, gates.load(g + H, cnt),
                                                gates.load(g + 2 * H, cnt), h, dpn, dpz, dh_prev);
                  S* d = dG + r * GH + u0;
                  dpz.store(d + H, cnt);
                  dpn.store(d + 2 * H, cnt);
                  dh_prev.store(dhp, cnt);
                  s[0] = s[0] + dpz;
                  s[1] = s[1] + dpn;
                });
                bias_sums.add(st.t, H + u0, sum[0], cnt);
                bias_sums.add(st.t, 2 * H + u0, sum[1], cnt);
              });
            case kDrh:
              return wn.run(rows, MatA<S>{dG + st.offset * GH + 2 * H, GH, 1}, drh, H, false, task);
            case kReset:
              run_unit_task<S>(H, task, [&](int64_t u0, int64_t cnt) {
                const auto sum = sum_rows<1, S>(rows, [&](int64_t i, V* s) FRNN_ALWAYS_INLINE {
                  const int64_t r = st.offset + i;
                  S* dhp = dh_state + i * H + u0;
                  const V h = V::loadu(prev_state_row(a, st, i, a.y, a.h0, H) + u0, cnt);
                  V dpr, dh_prev;
                  fusedrnn::gru_reset_before_backward(V::loadu(drh + i * H + u0, cnt),
                                                      gates.load(r * GH + u0, cnt), h, dpr,
                                                      dh_prev);
                  dpr.store(dG + r * GH + u0, cnt);
                  (V::loadu(dhp, cnt) + dh_prev).store(dhp, cnt);
                  s[0] = s[0] + dpr;
                });
                bias_sums.add(st.t, u0, sum[0], cnt);
              });
              return publish_step(steps_done, seq, ph, task, unit_tasks<S>(H));
            default:
              return wrz.run(rows, MatA<S>{dG + st.offset * GH, GH, 1}, dh_state, H, true, task);
          }
        },
        threads, par);
    bias_sums.finish();
  };

  if (hrows) previous_rows(seq, a.y, a.h0, H, hrows);
  // r and z read the previous state, n the reset state r*h (saved as states).
  const WeightGradBlock<S> wg[2] = {{0, 2 * H, 0, 0, recurrent_inputs(a, hrows, H), H},
                                    {2 * H, H, 2 * H, 2 * H, MatB<S>{a.states, H, 1}, H}};
  if (products.chunked) {
    products.run(a, [&](std::atomic<int64_t>* done) { bptt(1, done); }, dG, GH, dsum, wg, 2, par);
  } else {
    const int64_t input_fma = N * a.C * GH;
    bptt(backward_threads(par, blas, H, step_fma, seq.T, a.amx, input_fma,
                          in_place_weights(wrz, N, step_fma, input_fma)),
         nullptr);
    input_side_grads(a, dG, GH, dsum, &all, 1, scratch, blas, par, xtiles);
    weight_grads(a, dG, GH, wg, 2, scratch, blas, par, wtiles);
  }
  if (a.db_hh) std::memcpy(a.db_hh, dsum, GH * sizeof(S));
}

// -------------------------------------------------------------------- RNN

template <typename S, bool kRelu>
void rnn_forward_seq(const SeqForwardArgs<S>& a, Arena& arena, const Parallel& par) {
  using V = Vec<S>;
  constexpr int U = 4;
  constexpr int L = V::size();
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H;

  InputProjection<S> xproj;
  const bool join = InputProjection<S>::joins(a, H, par);
  xproj.plan(arena, a, H, blas, join);
  Recurrent<S, 1, U> rec;
  rec.plan(arena, a.pack, a.k_chunks, a.w_hh, H, H, N, total_rows(seq), blas, a.w_hh_bf16,
           join ? a.w_ih_bf16 : nullptr, a.C);
  HiddenState<S> hs;
  hs.plan(arena, seq, H);
  Schedule sched;
  sched.plan(arena, Schedule::max_forward(seq, 1));
  if (arena.sizing()) return;

  const int threads = step_threads(par, blas, seq.T, N, xproj.fma(N), rec);
  const Parallel prep = par.at_most(threads);
  xproj.prepare(prep);
  fold_bias(xproj.bias, a.b_ih, a.b_hh, 0, H);
  rec.prepare(prep);
  hs.init(a.h0, a.h_n);

  sched.forward(seq, xproj.max_rows, 1);
  sched.run(
      [&](const PhaseRef& ph) -> int64_t {
        return ph.k < 0 ? xproj.tasks(ph.rows) : rec.tasks(seq.step(ph.s).rows);
      },
      [&](const PhaseRef& ph, int64_t task) {
        if (ph.k < 0) return xproj.run(ph.row0, ph.rows, task);
        const int64_t s = ph.s;
        const StepInfo st = seq.step(s);
        S* hn_state = hs.next(s);
        const Rows16<S> y = output_rows(a, st.offset * H);
        auto epi = [&, y](int64_t i, int64_t p, const V* acc) FRNN_ALWAYS_INLINE {
          const S* gx = xproj.row(st.offset + i, ph.row0);
          for (int u = 0; u < U; ++u) {
            const int64_t u0 = (p * U + u) * L;
            if (u0 >= H) break;
            const int64_t cnt = std::min<int64_t>(L, H - u0);
            const V h_new = fusedrnn::rnn_forward<kRelu>(acc[u] + V::loadu(gx + u0, cnt));
            y.store(h_new, i * H + u0, cnt);
            h_new.store(hn_state + i * H + u0, cnt);
          }
        };
        rec.run(st.rows, hs.prev(s), H, epi, task, xproj.step_x(st.offset));
      },
      threads, par);
  hs.finish(seq, output_rows(a, 0));
}

template <typename S, bool kRelu>
void rnn_backward_seq(const SeqBackwardArgs<S>& a, Arena& arena, const Parallel& par) {
  using V = Vec<S>;
  const SeqLayout& seq = a.seq;
  const auto blas = blas_for(a, par);
  const int64_t N = seq.N, H = a.H, R = total_rows(seq);

  S* dG = arena.take<S>(R * H);
  S* dsum = arena.take<S>(H);
  StepSums<S> bias_sums;
  bias_sums.plan(arena, dsum, H);
  WeightN<S> whh;
  whh.plan(arena, a.pack, a.w_hh, H, H, seq.T, blas, a.amx, a.w_hh_bf16, R);
  S* dh_state = a.dh0;  // dh flows back in place, from dh_n
  const S** hrows = wants_dw_hh(a) && seq.T > 1 ? arena.take<const S*>(R) : nullptr;
  S* scratch = arena.take<S>(gemm_scratch_size<S>(max_of(a.C, H)));
  amx::bf16* xtiles = dx_tiles(arena, a, H);
  const WeightGradTiles wtiles = weight_grad_tiles(arena, a, H);
  Schedule sched;
  sched.plan(arena, Schedule::max_backward_steps(seq));
  const GateBlock all{0, 0, H};
  BackwardProducts<S> products;
  // The recurrent product's multiply-adds a step, for the BPTT's threads.
  const int64_t step_fma = N * H * H;
  products.plan(arena, a, blas, H, step_fma, &all, 1, H, H, H, par);
  if (arena.sizing()) return;

  whh.prepare(par);
  if (a.dh_n) std::memcpy(dh_state, a.dh_n, N * H * sizeof(S)); else fill_zero(N * H, dh_state);
  bias_sums.zero();

  auto pointwise = [&](const StepInfo& st, int64_t u0, int64_t cnt) {
    const auto sum = sum_rows<1, S>(st.rows, [&](int64_t i, V* s) FRNN_ALWAYS_INLINE {
      const int64_t r = st.offset + i;
      const V dh = V::loadu(a.dy + r * H + u0, cnt) + V::loadu(dh_state + i * H + u0, cnt);
      const V dp = fusedrnn::rnn_backward<kRelu>(dh, V::loadu(a.y + r * H + u0, cnt));
      dp.store(dG + r * H + u0, cnt);
      s[0] = s[0] + dp;
    });
    bias_sums.add(st.t, u0, sum[0], cnt);
  };
  if (hrows) previous_rows(seq, a.y, a.h0, H, hrows);
  const WeightGradBlock<S> wg{0, H, 0, 0, recurrent_inputs(a, hrows, H), H};
  const auto bptt = [&](int threads, std::atomic<int64_t>* steps_done) {
    bptt_by_panels(seq, whh, dG, H, dh_state, false, sched, pointwise, threads, par, steps_done);
    bias_sums.finish();
  };
  if (products.chunked) {
    products.run(a, [&](std::atomic<int64_t>* done) { bptt(1, done); }, dG, H, dsum, &wg, 1, par);
  } else {
    const int64_t input_fma = N * a.C * H;
    bptt(backward_threads(par, blas, H, step_fma, seq.T, a.amx, input_fma,
                          in_place_weights(whh, N, step_fma, input_fma)),
         nullptr);
    input_side_grads(a, dG, H, dsum, &all, 1, scratch, blas, par, xtiles);
    weight_grads(a, dG, H, &wg, 1, scratch, blas, par, wtiles);
  }
  if (a.db_hh) std::memcpy(a.db_hh, dsum, H * sizeof(S));
}

// ------------------------------------------------------------- dispatch

template <typename F>
inline void bool_switch(bool b, const F& f) {
  if (b) f(std::true_type{}); else f(std::false_type{});
}

template <typename S>
void seq_forward_isa(const SeqForwardArgs<S>& a, Arena& arena, const Parallel& par) {
  const CellConfig& c = a.cell;
  switch (c.kind) {
    case CellKind::kLstm:
      bool_switch(c.peephole, [&](auto kPeep) {
        bool_switch(c.coupled, [&](auto kCoupled) {
          lstm_forward_seq<S, decltype(kPeep)::value, decltype(kCoupled)::value>(a, arena, par);
        });
      });
      break;
    case CellKind::kGru:
      if (c.reset_after) gru_forward_seq<S>(a, arena, par);
      else gru_reset_before_forward_seq<S>(a, arena, par);
      break;
    case CellKind::kRnnTanh:
      rnn_forward_seq<S, false>(a, arena, par);
      break;
    case CellKind::kRnnRelu:
      rnn_forward_seq<S, true>(a, arena, par);
      break;
  }
}

template <typename S>
void seq_backward_isa(const SeqBackwardArgs<S>& a, Arena& arena, const Parallel& par) {
  const CellConfig& c = a.cell;
  switch (c.kind) {
    case CellKind::kLstm:
      bool_switch(c.peephole, [&](auto kPeep) {
        bool_switch(c.coupled, [&](auto kCoupled) {
          lstm_backward_seq<S, decltype(kPeep)::value, decltype(kCoupled)::value>(a, arena, par);
        });
      });
      break;
    case CellKind::kGru:
      if (c.reset_after) gru_backward_seq<S>(a, arena, par);
      else gru_reset_before_backward_seq<S>(a, arena, par);
      break;
    case CellKind::kRnnTanh:
      rnn_backward_seq<S, false>(a, arena, par);
      break;
    case CellKind::kRnnRelu:
      rnn_backward_seq<S, true>(a, arena, par);
      break;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fusedrnn::cpu

#define FUSEDRNN_INSTANTIATE_CPU_ISA(S)                                                   \
  template void fusedrnn::cpu::CPU_CAPABILITY::seq_forward_isa<S>(                         \
      const fusedrnn::cpu::SeqForwardArgs<S>&, fusedrnn::cpu::Arena&,                      \
      const fusedrnn::cpu::Parallel&);                                                     \
  template void fusedrnn::cpu::CPU_CAPABILITY::seq_backward_isa<S>(                        \
      const fusedrnn::cpu::SeqBackwardArgs<S>&, fusedrnn::cpu::Arena&,                     \
      const fusedrnn::cpu::Parallel&);
