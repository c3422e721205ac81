// Elman RNN backward step: dp = (dy + dh) * act'(p), written with the saved
// output h' = act(p) (cells.h rnn_backward), one thread per (row, hidden unit).
// The torch layer then overwrites dh with dG W_hh for the previous step.
#include "cuda_utils.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    rnn_backward_kernel(const RnnBackwardParams<S> p) {
  const int64_t H = p.H;
  const int64_t u = thread_unit();
  if (u >= H) return;
  for (int64_t i = first_row(); i < p.rows; i += row_stride()) {
    const int64_t k = i * H + u;
    const auto dh = to_acc(p.dy[k]) + to_acc(p.dh[k]);
    p.dG[k] = from_acc<S>(rnn_backward<kRelu>(dh, to_acc(p.y[k])));
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
}

}  // namespace

template <typename S>
cudaError_t rnn_backward_launch(const RnnBackwardParams<S>& p, cudaStream_t stream) {
  return bool_switch(p.relu, [&](auto kRelu) {
    return launch_step(rnn_backward_kernel<S, decltype(kRelu)::value>, p.rows, p.H, p, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(rnn_backward_launch, RnnBackwardParams)
