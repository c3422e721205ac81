// LSTM backward step (BPTT): from dL/dh' and dL/dc', the pre-activation
// gradients dG, dL/dc (in place) and the peephole gradients, by cells.h
// (lstm_backward), one thread per (row, hidden unit). The torch layer then runs
// dh = dG W_hh for the previous step.
//
// Peephole gradients are summed over steps into a per-row buffer [N, (G-1)*H]:
// within a launch each (row, unit) belongs to one thread and launches are
// ordered on the stream, so the sums need no atomics and are deterministic;
// the torch layer reduces the rows once after the loop.
#include "cuda_utils.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kPeephole, bool kCoupled>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    lstm_backward_kernel(const LstmBackwardParams<S> p) {
  using A = acc_t<S>;
  constexpr int G = kCoupled ? 3 : 4;
  constexpr int gi = 0, gf = kCoupled ? 0 : 1, gg = kCoupled ? 1 : 2, go = kCoupled ? 2 : 3;
  const int64_t H = p.H, GH = G * H;
  const int64_t u = thread_unit();
  if (u >= H) return;

  const A zero(0), one(1);
  const A wci = kPeephole && !kCoupled ? to_acc(p.w_ch[u]) : zero;
  const A wcf = kPeephole ? to_acc(p.w_ch[(kCoupled ? 0 : H) + u]) : zero;
  const A wco = kPeephole ? to_acc(p.w_ch[(kCoupled ? H : 2 * H) + u]) : zero;

  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    A dh = to_acc(p.dh[i * p.ld_dh + u]);
    if (p.dh_rec != nullptr) dh += to_acc(p.dh_rec[i * H + u]);
    const S* gr = p.gates + i * GH + u;
    const A fg = to_acc(gr[gf * H]);
    // Coupled: i = 1 - f from the saved f, as the forward computed it.
    const A ig = kCoupled ? one - fg : to_acc(gr[gi * H]);
    const A gg_ = to_acc(gr[gg * H]);
    const A og = to_acc(gr[go * H]);
    const A c_new = p.c_new[i * H + u];
    const A c = i < p.split ? p.c_prev[i * H + u] : to_acc(p.c0[i * H + u]);
    A* dcp = p.dc + i * H + u;
    const A dc = *dcp;
    A dpi, dpf, dpg, dpo, dc_prev, dwi = zero, dwf = zero, dwo = zero;
    lstm_backward<kPeephole, kCoupled>(dh, dc, ig, fg, gg_, og, c, c_new, wci, wcf, wco, dpi,
                                       dpf, dpg, dpo, dc_prev, dwi, dwf, dwo);
    *dcp = dc_prev;
    S* d = p.dG + i * GH + u;
    if (!kCoupled) d[gi * H] = from_acc<S>(dpi);
    d[gf * H] = from_acc<S>(dpf);
    d[gg * H] = from_acc<S>(dpg);
    d[go * H] = from_acc<S>(dpo);
    if (kPeephole && p.dw_ch_rows != nullptr) {
      A* acc = p.dw_ch_rows + i * (G - 1) * H + u;
      if (!kCoupled) acc[0] += dwi;
      acc[(kCoupled ? 0 : H)] += dwf;
      acc[(kCoupled ? H : 2 * H)] += dwo;
    }
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
}

}  // namespace

template <typename S>
cudaError_t lstm_backward_launch(const LstmBackwardParams<S>& p, cudaStream_t stream) {
  return bool_switch(p.w_ch != nullptr, [&](auto kPeephole) {
    return bool_switch(p.coupled, [&](auto kCoupled) {
      return launch_step(
          lstm_backward_kernel<S, decltype(kPeephole)::value, decltype(kCoupled)::value>, p.rows,
          p.H, p, stream);
    });
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(lstm_backward_launch, LstmBackwardParams)
