// GRU backward steps (BPTT), one thread per (row, hidden unit), cell math from
// cells.h. dh holds the recurrent dL/dh' on entry; these kernels replace it by
// the part of dL/dh that does not pass through W_hh (z*dh', and for
// reset_before r*dL/d(r*h)); the torch layer then adds the GEMM part.
//
// The previous state h of row i is the previous step's output (i < split) or h0.
#include "cuda_utils.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S>
__device__ __forceinline__ acc_t<S> prev_h(const GruBackwardParams<S>& p, int64_t i, int64_t u) {
  return to_acc(i < p.split ? p.h_prev[i * p.H + u] : p.h0[i * p.H + u]);
}

// reset_after: dG (r, z, hn, xn) [rows, 4H]. The first three line up with W_hh's
// rows, so the recurrent product is one GEMM; xn is the input side of n.
template <typename S>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gru_backward_kernel(const GruBackwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    S* dhp = p.dh + i * H + u;
    const A dh = to_acc(p.dy[i * H + u]) + to_acc(*dhp);
    const S* g = p.gates + i * 4 * H + u;
    A dpn, dpz, dh_prev, dpr, dhn;
    gru_update_backward(dh, to_acc(g[H]), to_acc(g[2 * H]), prev_h(p, i, u), dpn, dpz, dh_prev);
    gru_reset_after_backward(dpn, to_acc(g[0]), to_acc(g[3 * H]), dpr, dhn);
    S* d = p.dG + i * 4 * H + u;
    d[0] = from_acc<S>(dpr);
    d[H] = from_acc<S>(dpz);
    d[2 * H] = from_acc<S>(dhn);
    d[3 * H] = from_acc<S>(dpn);
    *dhp = from_acc<S>(dh_prev);
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
}

// reset_before, part 1: dG z and n [rows, 3H] (r, z, n), dh = z*dh'.
template <typename S>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gru_reset_before_backward_zn_kernel(const GruBackwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    S* dhp = p.dh + i * H + u;
    const A dh = to_acc(p.dy[i * H + u]) + to_acc(*dhp);
    const S* g = p.gates + i * 3 * H + u;
    A dpn, dpz, dh_prev;
    gru_update_backward(dh, to_acc(g[H]), to_acc(g[2 * H]), prev_h(p, i, u), dpn, dpz, dh_prev);
    S* d = p.dG + i * 3 * H + u;
    d[H] = from_acc<S>(dpz);
    d[2 * H] = from_acc<S>(dpn);
    *dhp = from_acc<S>(dh_prev);
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
}

// reset_before, part 2, after drh = dG_n W_hn: dG r, dh += r*drh.
template <typename S>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gru_reset_before_backward_r_kernel(const GruBackwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    S* dhp = p.dh + i * H + u;
    A dpr, dh_r;
    gru_reset_before_backward(to_acc(p.drh[i * H + u]), to_acc(p.gates[i * 3 * H + u]),
                              prev_h(p, i, u), dpr, dh_r);
    p.dG[i * 3 * H + u] = from_acc<S>(dpr);
    *dhp = from_acc<S>(to_acc(*dhp) + dh_r);
  }
}

}  // namespace

template <typename S>
cudaError_t gru_backward_launch(const GruBackwardParams<S>& p, cudaStream_t stream) {
  return launch_step(gru_backward_kernel<S>, p.rows, p.H, p, stream);
}

template <typename S>
cudaError_t gru_reset_before_backward_zn_launch(const GruBackwardParams<S>& p,
                                                cudaStream_t stream) {
  return launch_step(gru_reset_before_backward_zn_kernel<S>, p.rows, p.H, p, stream);
}

template <typename S>
cudaError_t gru_reset_before_backward_r_launch(const GruBackwardParams<S>& p,
                                               cudaStream_t stream) {
  return launch_step(gru_reset_before_backward_r_kernel<S>, p.rows, p.H, p, stream);
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(gru_backward_launch, GruBackwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_backward_zn_launch, GruBackwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_backward_r_launch, GruBackwardParams)
