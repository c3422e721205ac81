// The CPU sequence kernels: one layer, one direction, every cell family.
//
// Arguments are plain structs of pointers (mamba's habit); every array is dense
// row-major with the shape given beside it. S is float or double; the kernels
// compute in S. Outputs share no memory with inputs: the kernels carry the
// states in them (c in c_n from c0, dh and dc in dh0 and dc0 from dh_n and dc_n,
// and for a single step h in h_n, read from h0).
//
// What a training forward saves (`gates`, `states`, `proj_in`), per cell:
//   LSTM                gates [R, G*H]  i, f, g, o after activation (f, g, o coupled)
//                       states [R, H]   c_t
//                       proj_in [R, H]  o*tanh(c_t), only with a projection
//   GRU reset_after     gates [R, 4H]   r, z, n, hn = W_hn h + b_hn
//   GRU reset_before    gates [R, 3H]   r, z, n;   states [R, H]  r*h
//   RNN                 nothing: the output is the activation
// saved_gate_cols() and saves_states() say which; the torch layer sizes the
// tensors from them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common.h"
#include "parallel.h"

namespace fusedrnn::cpu {

struct CellConfig {
  CellKind kind;
  bool coupled;      // LSTM: coupled input-forget gate, i = 1 - f
  bool peephole;     // LSTM: diagonal peepholes w_ch
  bool reset_after;  // GRU: true = PyTorch/cuDNN, false = Cho et al. 2014
  bool projection;   // LSTM: h = W_hr (o*tanh(c)), P != H allowed
};

// When weights are packed for the register-blocked GEMM (kAuto: when they are
// reused enough to pay for it). The others exist so tests cover both paths.
enum class PackPolicy : int { kAuto = 0, kAlways = 1, kNever = 2 };

// Whether each step's product with the packed W_hh takes K in chunks that stay
// in L1 from one row tile to the next, or all of K at once; the same sums
// either way. kAuto: chunks where L1 holds more than one (gemm.h,
// l1_holds_chunk). The others exist for tests and benchmarks.
enum class KChunkPolicy : int { kAuto = 0, kAlways = 1, kNever = 2 };

// Whether a backward runs its products (dX, the weight gradients) beside its
// BPTT (rnn_cpu_impl.h, BackwardProducts): kAuto where the BPTT runs on one
// thread anyway; kAlways wherever the products can (the BPTT then on one
// thread); kNever after the BPTT. The others exist for tests and benchmarks.
enum class OverlapPolicy : int { kAuto = 0, kAlways = 1, kNever = 2 };

// A GEMM of the BLAS that torch itself uses, offered by the torch layer:
// C[M, N] = op(A) op(B) (+ C when accumulate; + bias[N] when bias is given and
// accumulate is not), every matrix row-major with the given leading dimension,
// op(X) = X^T when its flag is set. Called only from the thread that called the
// kernel, outside any parallel region, so that the BLAS may use its own threads.
template <typename S>
using BlasGemm = void (*)(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const S* a,
                          int64_t lda, const S* b, int64_t ldb, S* c, int64_t ldc,
                          bool accumulate, const S* bias);

// When a single step (T = 1, a cell call) takes its products from `blas`:
// kAuto by its shape (rnn_cpu_impl.h, kBlasMinRows), kAlways whenever it is
// given (tests), kNever not at all.
enum class BlasPolicy : int { kNever = 0, kAuto = 1, kAlways = 2 };

// Below this many multiply-adds of recurrent product per step, one thread runs
// the whole pass: the per-phase synchronisation (about 0.3 us) would cost more
// than a second thread gives.
constexpr int64_t kMinStepFmaForThreads = int64_t{1} << 18;

// A backward through time splits each step's dh = dG W_hh over panels of dh's
// columns (and a projection's dr over H). With fewer than this many hidden
// units, a thread's share of a step is too small to pay for the step's
// synchronisation, whatever the rows (measured without projection). Paired, 2
// threads against 1, whole training calls, T=100, AMD Zen 5, AVX-512,
// 2026-12-05: H=64, LSTM N=16-256 1.07-1.13, GRU N=64 1.12, RNN N=128-256
// 1.07-1.13; H=128 and more, LSTM 0.92-0.98, GRU 0.96, RNN 0.94-0.97 (RNN N=16
// H=128 1.03).
constexpr int64_t kMinBackwardWidthForThreads = 128;

// Whether a backward through `steps` steps of H units, step_fma multiply-adds
// of recurrent product a step, runs them on one thread whatever the threads.
constexpr bool bptt_on_one_thread(int64_t steps, int64_t H, int64_t step_fma) {
  return steps > 1 && (H < kMinBackwardWidthForThreads || step_fma < kMinStepFmaForThreads);
}

constexpr int64_t saved_gate_cols(const CellConfig& c, int64_t H) {
  return c.kind == CellKind::kLstm ? num_gates(c.kind, c.coupled) * H
         : c.kind == CellKind::kGru ? (c.reset_after ? 4 : 3) * H
                                    : 0;
}

constexpr bool saves_states(const CellConfig& c) {
  return c.kind == CellKind::kLstm || (c.kind == CellKind::kGru && !c.reset_after);
}

template <typename S>
struct SeqForwardArgs {
  CellConfig cell;
  PackPolicy pack;
  KChunkPolicy k_chunks;
  BlasPolicy blas_policy;
  BlasGemm<S> blas;
  bool training;  // save what backward needs
  SeqLayout seq;
  int64_t C, H, P;  // P = H without projection
  const S* x;       // [R, C]
  const S* h0;      // [N, P]
  const S* c0;      // [N, H]      LSTM only
  const S* w_ih;    // [G*H, C]
  const S* w_hh;    // [G*H, P]
  const S* b_ih;    // [G*H] or null
  const S* b_hh;    // [G*H] or null
  const S* w_ch;    // [(G-1)*H] peepholes i, f, o (f, o coupled) or null
  const S* w_hr;    // [P, H] projection or null
  // bfloat16 operands for AMX tiles (amx.h), float kernels with AVX-512 only:
  // given, the input projection reads x_bf16 and w_ih_bf16 instead of x and
  // w_ih, and the recurrent product w_hh_bf16 instead of w_hh (and h rounded
  // to bfloat16).
  const uint16_t* x_bf16;     // [R, C]
  const uint16_t* w_ih_bf16;  // [G*H, C]
  const uint16_t* w_hh_bf16;  // [G*H, P]
  S* y;             // [R, P]
  S* h_n;           // [N, P]
  S* c_n;           // [N, H]      LSTM only
  S* gates;         // training only, see above
  S* states;        // training only, see above
  S* proj_in;       // training only, see above
  // Float kernels of a bfloat16 call: the saved gates in bfloat16, given
  // instead of gates, the LSTM's saved states likewise, and without a
  // projection the output, given instead of y (each value rounded as torch's
  // conversion rounds it).
  uint16_t* gates_bf16;
  uint16_t* states_bf16;
  uint16_t* y_bf16;  // [R, P]
};

template <typename S>
struct SeqBackwardArgs {
  CellConfig cell;
  PackPolicy pack;
  BlasPolicy blas_policy;
  BlasGemm<S> blas;
  OverlapPolicy overlap;
  SeqLayout seq;
  int64_t C, H, P;
  // What the forward read and saved.
  const S* x;
  const S* h0;
  const S* c0;
  const S* w_ih;
  const S* w_hh;
  const S* b_hh;  // GRU reset_after reads b_hn through the saved hn; kept for symmetry
  const S* w_ch;
  const S* w_hr;
  const S* y;
  const S* gates;
  const S* states;
  const S* proj_in;
  const uint16_t* gates_bf16;   // instead of gates, as the forward saved them
  const uint16_t* states_bf16;  // instead of states (LSTM), likewise
  // Incoming gradients; null means zero.
  const S* dy;    // [R, P]
  const S* dh_n;  // [N, P]
  const S* dc_n;  // [N, H]
  // Outgoing gradients; null means not wanted (dh0 and dc0 are always written).
  S* dx;     // [R, C]
  S* dh0;    // [N, P]
  S* dc0;    // [N, H]  LSTM only
  S* dw_ih;  // [G*H, C]
  S* dw_hh;  // [G*H, P]
  S* db_ih;  // [G*H]
  S* db_hh;  // [G*H]
  S* dw_ch;  // [(G-1)*H]
  S* dw_hr;  // [P, H]
  // Float kernels with AVX-512 only: the products through W_hh and W_ih (dh and
  // dx) and the weight gradients run on AMX tiles (amx.h), their operands
  // rounded to bfloat16; x, w_ih and w_hh are then given (only) in bfloat16.
  bool amx;
  const uint16_t* x_bf16;     // [R, C]
  const uint16_t* w_ih_bf16;  // [G*H, C]
  const uint16_t* w_hh_bf16;  // [G*H, P]
  // With amx and at most amx::kTnChunkK rows: the weight gradients in bfloat16,
  // given instead of dw_ih and dw_hh (rounded once from float32 sums).
  uint16_t* dw_ih_bf16;  // [G*H, C]
  uint16_t* dw_hh_bf16;  // [G*H, P]
};

// Each runs once with arena.base == nullptr to size its scratch (returned in
// arena.used, nothing else touched), then again with a buffer of that size.
template <typename S>
void seq_forward(const SeqForwardArgs<S>& a, Arena& arena, const Parallel& par);
template <typename S>
void seq_backward(const SeqBackwardArgs<S>& a, Arena& arena, const Parallel& par);

// The instruction set the kernels run with: the best of those compiled in that
// ATen also uses (ATen honours ATEN_CPU_CAPABILITY).
const char* active_isa();
// Instruction sets compiled into this build, comma-separated.
const char* compiled_isas();

}  // namespace fusedrnn::cpu
