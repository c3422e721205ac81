// The torch side of one recurrent layer in one direction: argument checks,
// output allocation and the device-independent contract of every operator.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../kernels/cpu/rnn_cpu.h"

namespace fusedrnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The tensors and flags a forward operator receives, after the checks.
struct LayerInputs {
  cpu::CellConfig cell;
  Tensor input;  // [T, N, C] padded, [R, C] packed
  OptTensor batch_sizes;
  Tensor h0;     // [N, P]
  OptTensor c0;  // [N, H]
  Tensor w_ih, w_hh;
  OptTensor b_ih, b_hh, w_ch, w_hr;
  bool reverse = false;
  bool step = false;  // a cell operator's step: messages call the states hx and cx
};

// Sizes derived once from the inputs.
struct LayerGeometry {
  int64_t T = 0, N = 0, R = 0, C = 0, H = 0, P = 0, G = 0;
  bool packed = false;
  std::vector<int64_t> batch_sizes;  // [T] when packed, empty when padded
  std::vector<int64_t> offsets;      // [T + 1] when packed, empty when padded
  SeqLayout layout(bool reverse) const;
};

// The saved tensors of a training forward (see kernels/cpu/rnn_cpu.h); empty
// ([0]) when the forward ran for inference or the cell saves no such tensor.
struct Saved {
  Tensor gates, states, proj_in;
};

struct ForwardResult {
  Tensor output, h_n, c_n;
  Saved saved;
};

struct GradInputs {
  Tensor grad_output;
  OptTensor grad_h_n, grad_c_n;
  Tensor output;
  Saved saved;
  bool need_input_grad = true;
  bool need_weight_grads = true;
};

// Empty ([0]) where not wanted or where the parameter does not exist.
struct GradResult {
  Tensor grad_input, grad_h0, grad_c0;
  Tensor grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_ch, grad_w_hr;
};

// Validates everything a caller of torch.ops.fusedrnn.* can get wrong, with the
// actual values in the message. `op` names the operator in messages.
LayerGeometry check_layer(const LayerInputs& in, const char* op);
void check_grads(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                 const char* op);

// The dtype the kernels compute in (float for the 16-bit types).
at::ScalarType compute_dtype(at::ScalarType t);

// cell: a single step whose caller keeps only the new state (the *_cell ops):
// `output` is h_n itself, seen as [1, N, P], instead of a second tensor.
ForwardResult layer_forward(const LayerInputs& in, bool training, const char* op,
                            bool cell = false);
GradResult layer_backward(const LayerInputs& in, const GradInputs& gi, const char* op);

// Both directions of a layer (fwd.reverse false, bwd.reverse true) over the
// same input: output [.., 2P] (the forward direction's P columns, then the
// reverse's), h_n [2, N, P], c_n [2, N, H] (LSTM; [0] otherwise) and each
// direction's saved tensors. `op` names the operator in messages. On the CPU
// the directions may run at once (cpu_directions_at_once).
struct BidirectionalResult {
  Tensor output, h_n, c_n;
  Saved saved[2];
};
BidirectionalResult layer_forward_bidirectional(const LayerInputs& fwd, const LayerInputs& bwd,
                                                bool training, const char* op);

// Its backward: grad_output and output [.., 2P], grad_h_n [2, N, P], grad_c_n
// [2, N, H], each direction's saved tensors and whether its weights' gradients
// are wanted. grad_input is the sum of the directions', grad_h0 and grad_c0 are
// stacked; each direction's weight gradients are in direction[d] (its
// grad_input, grad_h0 and grad_c0 are those parts).
struct BidirectionalGradInputs {
  Tensor grad_output;
  OptTensor grad_h_n, grad_c_n;
  Tensor output;
  Saved saved[2];
  bool need_input_grad = true;
  bool need_weight_grads[2] = {true, true};
};
struct BidirectionalGradResult {
  Tensor grad_input, grad_h0, grad_c0;
  GradResult direction[2];
};
BidirectionalGradResult layer_backward_bidirectional(const LayerInputs& fwd,
                                                     const LayerInputs& bwd,
                                                     const BidirectionalGradInputs& gi,
                                                     const char* op);

// An uninitialised contiguous tensor for a layer's outputs, saved tensors and
// gradients: on CPU, large ones come in 2 MiB pages where the system offers them
// (cpu_memory.cpp); elsewhere at::empty.
Tensor layer_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

// Device implementations: inputs contiguous and checked, outputs allocated.
void cpu_layer_forward(const LayerInputs& in, const LayerGeometry& g, bool training,
                       ForwardResult& out);
void cpu_layer_backward(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                        GradResult& out);
// Whether the CPU runs the two directions of a bidirectional layer of these
// sizes at once, one thread each, in its forward or its backward.
bool cpu_directions_at_once(const LayerInputs& in, const LayerGeometry& g, bool backward);
#ifdef FUSEDRNN_WITH_CUDA
void cuda_layer_forward(const LayerInputs& in, const LayerGeometry& g, bool training,
                        ForwardResult& out);
void cuda_layer_backward(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                         GradResult& out);
#endif

}  // namespace fusedrnn
