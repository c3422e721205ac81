// The CUDA pointwise kernels of the standard path (DESIGN.md): one launch per
// time step (two for GRU reset_before) between the GEMMs, which the torch layer
// (csrc/torch/rnn_cuda.cpp) runs through ATen into preallocated buffers.
//
// Torch-free: this header is included by host C++ (the torch layer, compiled by
// the host compiler) and by the .cu files; it needs only the CUDA runtime and the
// fp16/bf16 headers.
//
// Legend: T steps, N batch, C input size, H hidden size, P projection size
// (P = H without projection), G gate blocks, R rows of a time-major sequence
// (R = T*N padded, R = sum(batch_sizes) packed).
//
// One call works on the `rows` active rows of one step (rows <= N):
//   - [N, .] arrays (states carried from step to step) are indexed by row 0..rows-1;
//     rows >= `rows` are not touched, so a row that is not active yet (reverse
//     direction of a packed sequence) keeps its initial state.
//   - [rows, .] arrays point at the step's first row of an [R, .] array (or at a
//     scratch buffer); every one is dense with the row stride its comment gives.
//   - "split" (backward): rows below it continue the previously processed step,
//     the others start from h0/c0 (see SeqLayout in ../common.h).
// Element type S is float, double, __half or __nv_bfloat16 (storage); the math
// runs in A = acc_t<S> (float for the 16-bit types) through cells.h. The cell
// state and the gradients carried from step to step (c, dc) are kept in A; what
// a training forward saves for the backward (gates, c', r*h) is stored in S.
//
// Launchers turn runtime flags (null pointers, cell variants) into template
// constants, launch on `stream`, and return cudaGetLastError(); they launch
// nothing when rows or H is 0. Instantiated for the four element types only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "../common.h"

namespace fusedrnn {

// float16 and bfloat16 compute and accumulate in float (DESIGN.md, precision).
template <>
struct AccType<__half> {
  using type = float;
};
template <>
struct AccType<__nv_bfloat16> {
  using type = float;
};

namespace cuda {

// The sm_XY targets this build's kernels were compiled for, from
// __CUDA_ARCH_LIST__: comma-separated numbers, e.g. "80,90".
std::string compiled_archs();

// The recurrent input of each row, gathered for dW_hh = dG^T Hprev when the rows'
// previous states are not one contiguous block (packed sequences):
// out[i] = i < split ? prev[i] : init[i], each row `width` wide. out null: skip.
template <typename S>
struct PrevRows {
  const S* prev = nullptr;  // [split, width]  the previous step's outputs
  const S* init = nullptr;  // [N, width]      h0
  S* out = nullptr;         // [rows, width]
  int64_t width = 0;
};

// The gather of step st, from `all` whose prev and out point at row 0 of the
// output and of the [R, width] gather buffer.
template <typename S>
FRNN_HD PrevRows<S> prev_rows_at(const PrevRows<S>& all, const StepInfo& st) {
  PrevRows<S> pr;
  if (all.out == nullptr) return pr;
  pr.prev = st.split > 0 ? all.prev + st.prev_offset * all.width : nullptr;
  pr.init = all.init;
  pr.out = all.out + st.offset * all.width;
  pr.width = all.width;
  return pr;
}

// Where a step finds the recurrent product (forward Gh = h W_hh^T, `gates` gate
// blocks a row; backward the recurrent dL/dh, one block): the
// element of row i, gate block g and hidden unit u is gh[at(i, gates, g, u)].
// The standard path's [rows, gates*H] buffer has gate = H, u0 = 0; the
// persistent path hands each block the Gh of its own units in shared memory,
// [rows, gates*U] (gate = U, u0 = the block's first unit).
struct GhLayout {
  int gate = 0, u0 = 0;  // at most H, or the block's units (up to 256)
  FRNN_HD int64_t at(int64_t i, int gates, int g, int64_t u) const {
    return (i * gates + g) * gate + (u - u0);
  }
  // Set at all (a launcher refuses a step whose layout was left out).
  FRNN_HD bool valid() const { return gate > 0; }
};

// ------------------------------------------------------------------- LSTM

template <typename S>
struct LstmForwardParams {
  using A = acc_t<S>;
  int64_t rows = 0, H = 0;
  bool coupled = false;      // gate blocks f, g, o (i = 1 - f)
  const S* gx = nullptr;     // [rows, G*H]  X W_ih^T (no bias)
  const S* gh = nullptr;     // h W_hh^T (no bias), laid out as gl says
  GhLayout gl;
  const S* b_ih = nullptr;   // [G*H] or null
  const S* b_hh = nullptr;   // [G*H] or null
  const S* w_ch = nullptr;   // [(G-1)*H] peepholes i, f, o (f, o coupled) or null
  A* c = nullptr;            // [N, H]  in: c, out: c' (same element, same thread)
  S* h = nullptr;            // [rows, ld_h]  o*tanh(c'): the output rows, or the
  int64_t ld_h = 0;          //   projection's input (proj_in or a scratch)
  S* h_state = nullptr;      // [N, H] second copy of h' (no projection) or null
  S* gates = nullptr;        // [rows, G*H] activated gates (training) or null
  S* states = nullptr;       // [rows, H]   c' rounded to S (training); set iff gates is
};

template <typename S>
struct LstmBackwardParams {
  using A = acc_t<S>;
  int64_t rows = 0, H = 0;
  bool coupled = false;
  // dL/dh' = dh[i] + dh_rec[i] (dh_rec null: dh alone, as with a projection,
  // where the torch layer has already folded both into dh = (dy + dh_rec) W_hr).
  const S* dh = nullptr;      // [rows, ld_dh]
  int64_t ld_dh = 0;
  const S* dh_rec = nullptr;  // recurrent part (no projection), laid out as rl says
  GhLayout rl;                //   (one gate block), or null
  const S* gates = nullptr;   // [rows, G*H] saved activated gates
  const S* c_new = nullptr;   // [rows, H]   saved c' of this step
  const S* c_prev = nullptr;  // [split, H]  saved c' of the previously processed step
  const S* c0 = nullptr;      // [N, H]      initial cell state (rows >= split)
  int64_t split = 0;
  const S* w_ch = nullptr;    // [(G-1)*H] or null
  A* dc = nullptr;            // [N, H] in: dL/dc', out: dL/dc
  S* dG = nullptr;            // [rows, G*H] pre-activation gradients (di is 0 coupled)
  A* dw_ch_rows = nullptr;    // [N, (G-1)*H] per-row sums of the peephole gradients
                              //   (added to; the torch layer sums the rows) or null
  PrevRows<S> hprev;          // width P
};

template <typename S>
cudaError_t lstm_forward_launch(const LstmForwardParams<S>& p, cudaStream_t stream);
template <typename S>
cudaError_t lstm_backward_launch(const LstmBackwardParams<S>& p, cudaStream_t stream);

// -------------------------------------------------------------------- GRU

// reset_after=True (PyTorch, cuDNN): one kernel per step.
//   gx [rows, 3H] (r, z, n of X W_ih^T), gh [rows, 3H] (of h W_hh^T), no biases.
// reset_before (Cho et al. 2014): the rz kernel (r, z, r*h), the product
//   W_hn (r*h), then the n kernel (n, h').
template <typename S>
struct GruForwardParams {
  using A = acc_t<S>;
  int64_t rows = 0, H = 0;
  const S* gx = nullptr;     // [rows, 3H]
  const S* gh = nullptr;     // laid out as gl says: gate blocks r, z, n (reset_after),
  GhLayout gl;               //   r, z (rz kernel), or the one of (r*h) W_hn^T (n kernel)
  const S* b_ih = nullptr;   // [3H] or null
  const S* b_hh = nullptr;   // [3H] or null
  const S* h_in = nullptr;   // [N, H] the state h
  S* h = nullptr;            // [N, H] out: h' (n kernel / reset_after); h_in itself on the
                             //   standard path (each element read and written by one thread)
  S* y = nullptr;            // [rows, H] output rows: h'
  S* gates = nullptr;        // [rows, 4H] r, z, n, hn (reset_after) or [rows, 3H] r, z, n
                             //   (reset_before), training; or null
  // reset_before only
  S* z = nullptr;            // [rows, ld_z] z from the rz kernel to the n kernel
  int64_t ld_z = 0;          //   (inside gates when training)
  S* rh = nullptr;           // [rows, H] r*h, the input of the W_hn product
};

template <typename S>
struct GruBackwardParams {
  int64_t rows = 0, H = 0;
  const S* dy = nullptr;      // [rows, H] incoming output gradient
  S* dh = nullptr;            // [N, H] in: recurrent dL/dh', out: the part of dL/dh that
                              //   does not go through W_hh (the torch layer adds the rest);
  GhLayout dl;                //   laid out as dl says (the persistent path: the block's slice)
  const S* gates = nullptr;   // [rows, 4H] (reset_after) or [rows, 3H]
  const S* h_prev = nullptr;  // [split, H] the previous step's outputs
  const S* h0 = nullptr;      // [N, H]
  int64_t split = 0;
  S* dG = nullptr;            // [rows, 4H] r, z, hn, xn (reset_after) or [rows, 3H] r, z, n
  const S* drh = nullptr;     // [rows, H] dL/d(r*h) = dpn W_hn (reset_before r kernel)
  PrevRows<S> hprev;          // width H
};

template <typename S>
cudaError_t gru_forward_launch(const GruForwardParams<S>& p, cudaStream_t stream);
template <typename S>
cudaError_t gru_reset_before_forward_rz_launch(const GruForwardParams<S>& p, cudaStream_t stream);
template <typename S>
cudaError_t gru_reset_before_forward_n_launch(const GruForwardParams<S>& p, cudaStream_t stream);

// reset_after: dG (r, z, hn, xn), dh = direct part; the torch layer then adds
// dG[:, :3H] W_hh into dh.
template <typename S>
cudaError_t gru_backward_launch(const GruBackwardParams<S>& p, cudaStream_t stream);
// reset_before, first kernel: dG z and n, dh = direct part (and hprev).
template <typename S>
cudaError_t gru_reset_before_backward_zn_launch(const GruBackwardParams<S>& p,
                                                cudaStream_t stream);
// reset_before, after drh = dG_n W_hn: dG r, dh += drh*r; then the torch layer
// adds dG[:, :2H] W_hh[:2H] into dh.
template <typename S>
cudaError_t gru_reset_before_backward_r_launch(const GruBackwardParams<S>& p,
                                               cudaStream_t stream);

// -------------------------------------------------------------------- RNN

template <typename S>
struct RnnForwardParams {
  int64_t rows = 0, H = 0;
  bool relu = false;
  const S* gx = nullptr;    // [rows, H]
  const S* gh = nullptr;    // laid out as gl says (one gate block)
  GhLayout gl;
  const S* b_ih = nullptr;  // [H] or null
  const S* b_hh = nullptr;  // [H] or null
  S* h = nullptr;           // [N, H] state, out: h'
  S* y = nullptr;           // [rows, H] output rows: h'
};

template <typename S>
struct RnnBackwardParams {
  int64_t rows = 0, H = 0;
  bool relu = false;
  int64_t split = 0;
  const S* dy = nullptr;   // [rows, H]
  const S* dh = nullptr;   // recurrent dL/dh', laid out as dl says ([N, H] on the standard
  GhLayout dl;             //   path, where the torch layer overwrites it after)
  const S* y = nullptr;    // [rows, H] this step's outputs h' = act(p)
  S* dG = nullptr;         // [rows, H] dL/dp
  PrevRows<S> hprev;       // width H
};

template <typename S>
cudaError_t rnn_forward_launch(const RnnForwardParams<S>& p, cudaStream_t stream);
template <typename S>
cudaError_t rnn_backward_launch(const RnnBackwardParams<S>& p, cudaStream_t stream);

// ------------------------------------------------------- persistent path

// One cooperative launch runs the steps [s0, s1) of a layer and direction
// (persistent.cuh has the algorithm). The torch layer asks for a plan first
// (which says why, when the persistent path cannot run the layer on this device)
// and launches with it.
struct PersistentLayout {
  int units = 0;   // U: hidden units per block
  int w_rows = 0;  // rows of the block's resident weight slice (allocated)
  int ldw = 0;     // their stride in shared memory (elements)
  int kc = 0;      // columns of the other operand staged per pass (CUDA-core product)
  int ldx = 0;     // stride of the staged rows
  int mma = 0;     // 1: the product runs on tensor cores (16-bit types, sm_80+)
  int proj = 0;    // V: projection outputs per block (LSTM with a projection)
  int part_off = 0;  // byte offset of the CUDA-core product's partial sums, one per thread
  int h_off = 0;     // forward in one block: byte offset of the state's two halves [2, N, width]
                     // in shared memory (0: the state stays in global memory, PersistentArgs::hbuf)
  int gh_off = 0;  // byte offset of the block's recurrent product (forward Gh [rows, gates*U];
                   // backward dL/dh [rows, U]) in shared memory
  int xs_off = 0;    // tensor-core product: byte offset of its other operand staged in shared
                     // memory (0: its A fragments come from global memory), of
  int xs_elems = 0;  //   at most xs_elems elements (rows x mma_stride(K))
};

// How plan_persistent spreads a layer's hidden units over blocks
// (FUSEDRNN_PERSISTENT_GRID): one of these, or a power of two from 1 to 256
// (a block's threads): exactly that many units a block, or the plan declines.
enum PersistentGrid : int {
  kGridAuto = 0,   // one block where the layer's product per step is small, else slices
  kGridOne = -1,   // one block holding every unit, or the plan declines the layer
  kGridMany = -2,  // slices of at most 32 units, one block each
};

// The step trace of a persistent launch (PersistentArgs::trace; the torch
// layer's FUSEDRNN_PERSISTENT_TRACE, bench/persistent_trace.py): int64 values,
// written by the first thread of block 0. The header: the global timer (ns) and
// the multiprocessor's clock (clock64) at the kernel's start, then both at its
// end, from which a reader converts clocks to time. Then, for each step of the
// launch in the order processed (forward s0 up, backward s1 - 1 down), the clock
// at kTracePoints points: the step begins; the step's (first) recurrent product
// is done and the block synchronised after it (where a step has no product, the
// first block barrier); every thread of the block has done its unit work (for
// steps with two barriers, the middle barrier and the second product fall in
// this phase), so the block enters the step's last barrier; it leaves that
// barrier.
enum TracePoint : int { kTraceBegin = 0, kTraceProduct, kTraceUnits, kTraceEnd, kTracePoints };
constexpr int kTraceHeader = 4;

struct PersistentPlan {
  int blocks = 0;
  size_t smem = 0;  // dynamic shared memory per block (bytes)
  PersistentLayout lay;
  const char* why = nullptr;  // set when the persistent path cannot run the layer
};

// P is the family's step parameter struct: `base` holds what every step shares
// (H, flags, biases, peepholes, the state buffers) and the row-0 pointers of the
// [R, .] arrays (outputs, saved tensors, dG, the hprev gather), which the kernel
// moves to each step's rows as the standard path's host loop does.
template <typename S, typename P>
struct PersistentArgs {
  P base;
  SeqLayout seq;            // batch_sizes and offsets in device memory (null: padded)
  int64_t s0 = 0, s1 = 0;   // the processed steps of this launch
  PersistentLayout lay;
  const S* w_hh = nullptr;  // [G*H, H]
  // forward
  const S* gx = nullptr;    // X W_ih^T of the rows from gx_row0 on, [., G*H]
  int64_t gx_row0 = 0;
  S* hbuf = nullptr;        // [2, N, H]: step s reads half s%2, writes the other;
                            //   both halves start as h0
  S* h_n = nullptr;         // [N, H] each row's last h'
  // backward
  S* dh = nullptr;          // [N, H] the recurrent dL/dh (at the end dL/dh0)
  // GRU reset_before: r*h [N, H] for the W_hn product (forward; in training the
  // saved states rows, whose base is then `rh_rows` with rh null), and
  // dL/d(r*h) [N, H] (backward)
  S* rh = nullptr;
  S* rh_rows = nullptr;
  bool reset_after = true;  // GRU: which kernels
  bool tf32 = false;        // float32 products may run in TF32
  bool stage = true;        // the tensor-core product may stage its other operand in shared
                            //   memory where the plan has room (FUSEDRNN_PERSISTENT_STAGE)
  int grid = kGridAuto;     // PersistentGrid, or units per block: how the plan spreads them
  long long* trace = nullptr;  // [kTraceHeader + (s1 - s0) * kTracePoints] or null: no trace
  // LSTM with a projection (w_hr set): the state is h = h' W_hr^T, P wide
  // (hbuf [2, N, P], h_n and dh [N, P]).
  const S* w_hr = nullptr;  // [P, H]
  int64_t proj_size = 0;    // P
  S* y = nullptr;           // forward: [R, P] the outputs
  S* hr = nullptr;          // forward: [N, H] h' of a step (inference), or with hr null
  S* hr_rows = nullptr;     //   the saved proj_in rows [R, H] (training)
  const S* dy = nullptr;    // backward: [R, P] dL/dy
  S* dht = nullptr;         // backward: dL/dh = dy + the recurrent part, [N, P], or the
  bool dht_rows = false;    //   rows [R, P] (dht_rows; dW_hr needs them)
  S* dr = nullptr;          // backward: [N, H] dL/dh' = dL/dh W_hr
};

template <typename S>
using LstmPersistentForward = PersistentArgs<S, LstmForwardParams<S>>;
template <typename S>
using LstmPersistentBackward = PersistentArgs<S, LstmBackwardParams<S>>;
template <typename S>
using GruPersistentForward = PersistentArgs<S, GruForwardParams<S>>;
template <typename S>
using GruPersistentBackward = PersistentArgs<S, GruBackwardParams<S>>;
template <typename S>
using RnnPersistentForward = PersistentArgs<S, RnnForwardParams<S>>;
template <typename S>
using RnnPersistentBackward = PersistentArgs<S, RnnBackwardParams<S>>;

// plan: for a.seq.N rows and the cell flags on the current device; launch with
// that plan (it sets a.lay).
template <typename S>
cudaError_t lstm_persistent_forward_plan(const LstmPersistentForward<S>& a, PersistentPlan& plan);
template <typename S>
cudaError_t lstm_persistent_forward_launch(const LstmPersistentForward<S>& a,
                                           const PersistentPlan& plan, cudaStream_t stream);
template <typename S>
cudaError_t lstm_persistent_backward_plan(const LstmPersistentBackward<S>& a, PersistentPlan& plan);
template <typename S>
cudaError_t lstm_persistent_backward_launch(const LstmPersistentBackward<S>& a,
                                            const PersistentPlan& plan, cudaStream_t stream);
template <typename S>
cudaError_t gru_persistent_forward_plan(const GruPersistentForward<S>& a, PersistentPlan& plan);
template <typename S>
cudaError_t gru_persistent_forward_launch(const GruPersistentForward<S>& a,
                                          const PersistentPlan& plan, cudaStream_t stream);
template <typename S>
cudaError_t gru_persistent_backward_plan(const GruPersistentBackward<S>& a, PersistentPlan& plan);
template <typename S>
cudaError_t gru_persistent_backward_launch(const GruPersistentBackward<S>& a,
                                           const PersistentPlan& plan, cudaStream_t stream);
template <typename S>
cudaError_t rnn_persistent_forward_plan(const RnnPersistentForward<S>& a, PersistentPlan& plan);
template <typename S>
cudaError_t rnn_persistent_forward_launch(const RnnPersistentForward<S>& a,
                                          const PersistentPlan& plan, cudaStream_t stream);
template <typename S>
cudaError_t rnn_persistent_backward_plan(const RnnPersistentBackward<S>& a, PersistentPlan& plan);
template <typename S>
cudaError_t rnn_persistent_backward_launch(const RnnPersistentBackward<S>& a,
                                           const PersistentPlan& plan, cudaStream_t stream);

// Whether `stream` is capturing a CUDA graph (the persistent path copies the
// packed layout to the device, which a capture cannot hold).
cudaError_t stream_is_capturing(cudaStream_t stream, bool& capturing);

// Waits for all work on the current device (the step traces, before they are read).
cudaError_t device_synchronize();

// cudaGetLastError(): the last error of a runtime call on this thread, which it clears.
cudaError_t take_last_error();

// `steps` step barriers of the persistent kernels in one cooperative launch of
// `blocks` blocks (barrier_probe.cu), and the most blocks such a launch can have.
cudaError_t grid_barrier_probe_launch(int blocks, int64_t steps, cudaStream_t stream);
cudaError_t grid_barrier_probe_max_blocks(int& blocks);

}  // namespace cuda
}  // namespace fusedrnn
