// Elman RNN forward step: h' = act(Gx + Gh + b_ih + b_hh), act = tanh or relu
// (cells.h rnn_forward), one thread per (row, hidden unit). Saves nothing: the
// backward reads the activation from the output.
#include "cuda_utils.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    rnn_forward_kernel(const RnnForwardParams<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  const A bias = load_or_zero(p.b_ih, u) + load_or_zero(p.b_hh, u);
  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    const int64_t k = i * H + u;
    const S h = from_acc<S>(rnn_forward<kRelu>(to_acc(p.gx[k]) + to_acc(p.gh[k]) + bias));
    p.h[k] = h;
    p.y[k] = h;
  }
}

}  // namespace

template <typename S>
cudaError_t rnn_forward_launch(const RnnForwardParams<S>& p, cudaStream_t stream) {
  return bool_switch(p.relu, [&](auto kRelu) {
    return launch_step(rnn_forward_kernel<S, decltype(kRelu)::value>, p.rows, p.H, p, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(rnn_forward_launch, RnnForwardParams)
