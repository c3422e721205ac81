// GRU forward steps, one thread per (row, hidden unit), cell math from cells.h.
//
// reset_after=True (gru_forward_kernel): r and z take both biases, n takes b_in
// outside and b_hn inside r*(.): n = tanh(xn + b_in + r*(hn + b_hn)). Saves
// r, z, n and hn = W_hn h + b_hn (the backward needs hn for dr).
// reset_after=False: the product W_hn (r*h) needs r of every unit, so a step is
// two kernels around that GEMM: rz (r, z and r*h), then n (n and h').
#include "cuda_utils.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kTraining>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gru_forward_kernel(const GruForwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  const A br = load_or_zero(p.b_ih, u) + load_or_zero(p.b_hh, u);
  const A bz = load_or_zero(p.b_ih, H + u) + load_or_zero(p.b_hh, H + u);
  const A b_in = load_or_zero(p.b_ih, 2 * H + u);
  const A b_hn = load_or_zero(p.b_hh, 2 * H + u);

  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    const S* gx = p.gx + i * 3 * H + u;
    const S* gh = p.gh + i * p.ld_gh + u;
    S* hp = p.h + i * H + u;
    const A h = to_acc(*hp);
    const A hn = to_acc(gh[2 * H]) + b_hn;
    A r, z, n, h_new;
    gru_forward(to_acc(gx[0]) + to_acc(gh[0]) + br, to_acc(gx[H]) + to_acc(gh[H]) + bz,
                to_acc(gx[2 * H]) + b_in, hn, h, r, z, n, h_new);
    const S hs = from_acc<S>(h_new);
    *hp = hs;
    p.y[i * H + u] = hs;
    if (kTraining) {
      S* gr = p.gates + i * 4 * H + u;
      gr[0] = from_acc<S>(r);
      gr[H] = from_acc<S>(z);
      gr[2 * H] = from_acc<S>(n);
      gr[3 * H] = from_acc<S>(hn);
    }
  }
}

// reset_before, part 1: r = sigmoid(.), z = sigmoid(.), r*h. Reads the state h,
// does not write it (the n kernel does, after the W_hn product).
template <typename S>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gru_reset_before_forward_rz_kernel(const GruForwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  const A br = load_or_zero(p.b_ih, u) + load_or_zero(p.b_hh, u);
  const A bz = load_or_zero(p.b_ih, H + u) + load_or_zero(p.b_hh, H + u);

  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    const S* gx = p.gx + i * 3 * H + u;
    const S* gh = p.gh + i * p.ld_gh + u;
    const A r = gru_gate(to_acc(gx[0]) + to_acc(gh[0]) + br);
    const A z = gru_gate(to_acc(gx[H]) + to_acc(gh[H]) + bz);
    const A rh = r * to_acc(p.h[i * H + u]);
    p.rh[i * H + u] = from_acc<S>(rh);
    if (p.rh_saved != nullptr) p.rh_saved[i * H + u] = rh;
    p.z[i * p.ld_z + u] = from_acc<S>(z);
    if (p.gates != nullptr) p.gates[i * 3 * H + u] = from_acc<S>(r);
  }
}

// reset_before, part 2: n = tanh(xn + b_in + W_hn (r*h) + b_hn), h' = n + z*(h - n).
template <typename S>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gru_reset_before_forward_n_kernel(const GruForwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  const A bn = load_or_zero(p.b_ih, 2 * H + u) + load_or_zero(p.b_hh, 2 * H + u);

  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    S* hp = p.h + i * H + u;
    const A pn = to_acc(p.gx[i * 3 * H + 2 * H + u]) + to_acc(p.gh[i * p.ld_gh + u]) + bn;
    A n, h_new;
    gru_reset_before_output(pn, to_acc(p.z[i * p.ld_z + u]), to_acc(*hp), n, h_new);
    const S hs = from_acc<S>(h_new);
    *hp = hs;
    p.y[i * H + u] = hs;
    if (p.gates != nullptr) p.gates[i * 3 * H + 2 * H + u] = from_acc<S>(n);
  }
}

}  // namespace

template <typename S>
cudaError_t gru_forward_launch(const GruForwardParams<S>& p, cudaStream_t stream) {
  return bool_switch(p.gates != nullptr, [&](auto kTraining) {
    return launch_step(gru_forward_kernel<S, decltype(kTraining)::value>, p.rows, p.H, p, stream);
  });
}

template <typename S>
cudaError_t gru_reset_before_forward_rz_launch(const GruForwardParams<S>& p,
                                               cudaStream_t stream) {
  return launch_step(gru_reset_before_forward_rz_kernel<S>, p.rows, p.H, p, stream);
}

template <typename S>
cudaError_t gru_reset_before_forward_n_launch(const GruForwardParams<S>& p,
                                              cudaStream_t stream) {
  return launch_step(gru_reset_before_forward_n_kernel<S>, p.rows, p.H, p, stream);
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(gru_forward_launch, GruForwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_forward_rz_launch, GruForwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_forward_n_launch, GruForwardParams)
