// LSTM forward step: pre-activations = Gx + Gh + b_ih + b_hh, then the cell
// math of cells.h (lstm_forward), one thread per (row, hidden unit).
//
// Writes h' to the output rows (or the projection's input), c' in place in the
// A state, and in training the activated gates and c' (layouts in
// csrc/kernels/cpu/rnn_cpu.h, shared with the CPU path).
#include "cuda_utils.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kPeephole, bool kCoupled, bool kTraining>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    lstm_forward_kernel(const LstmForwardParams<S> p) {
  using A = acc_t<S>;
  constexpr int G = kCoupled ? 3 : 4;
  constexpr int gi = 0, gf = kCoupled ? 0 : 1, gg = kCoupled ? 1 : 2, go = kCoupled ? 2 : 3;
  const int64_t H = p.H, GH = G * H;
  const int64_t u = thread_unit();
  if (u >= H) return;

  // Per-unit constants, loaded once for all of this thread's rows.
  A bias[G];
#pragma unroll
  for (int g = 0; g < G; ++g)
    bias[g] = load_or_zero(p.b_ih, g * H + u) + load_or_zero(p.b_hh, g * H + u);
  const A zero(0);
  const A wci = kPeephole && !kCoupled ? to_acc(p.w_ch[u]) : zero;
  const A wcf = kPeephole ? to_acc(p.w_ch[(kCoupled ? 0 : H) + u]) : zero;
  const A wco = kPeephole ? to_acc(p.w_ch[(kCoupled ? H : 2 * H) + u]) : zero;

  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    const S* gx = p.gx + i * GH + u;
    const S* gh = p.gh + i * GH + u;
    const A pi = kCoupled ? zero : to_acc(gx[gi * H]) + to_acc(gh[gi * H]) + bias[gi];
    const A pf = to_acc(gx[gf * H]) + to_acc(gh[gf * H]) + bias[gf];
    const A pg = to_acc(gx[gg * H]) + to_acc(gh[gg * H]) + bias[gg];
    const A po = to_acc(gx[go * H]) + to_acc(gh[go * H]) + bias[go];
    A* cp = p.c + i * H + u;
    const A c = *cp;
    A ig, fg, gg_, og, c_new, h_new;
    lstm_forward<kPeephole, kCoupled>(pi, pf, pg, po, c, wci, wcf, wco, ig, fg, gg_, og, c_new,
                                      h_new);
    *cp = c_new;
    const S h = from_acc<S>(h_new);
    p.h[i * p.ld_h + u] = h;
    if (p.h_state != nullptr) p.h_state[i * H + u] = h;
    if (kTraining) {
      S* gr = p.gates + i * GH + u;
      if (!kCoupled) gr[gi * H] = from_acc<S>(ig);
      gr[gf * H] = from_acc<S>(fg);
      gr[gg * H] = from_acc<S>(gg_);
      gr[go * H] = from_acc<S>(og);
      p.states[i * H + u] = c_new;
    }
  }
}

}  // namespace

template <typename S>
cudaError_t lstm_forward_launch(const LstmForwardParams<S>& p, cudaStream_t stream) {
  return bool_switch(p.w_ch != nullptr, [&](auto kPeephole) {
    return bool_switch(p.coupled, [&](auto kCoupled) {
      return bool_switch(p.gates != nullptr, [&](auto kTraining) {
        constexpr bool kP = decltype(kPeephole)::value, kC = decltype(kCoupled)::value,
                       kT = decltype(kTraining)::value;
        return launch_step(lstm_forward_kernel<S, kP, kC, kT>, p.rows, p.H, p, stream);
      });
    });
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(lstm_forward_launch, LstmForwardParams)
