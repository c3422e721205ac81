// The operators: schemas (TORCH_LIBRARY) and their kernels, registered for the
// CPU and CUDA dispatch keys. Each works on a whole sequence (one layer, one
// direction); the *_cell_* operators are one step of the same kernels.
//
// Conventions shared by every operator:
//   input [T, N, C] padded, or [R, C] packed with batch_sizes (int64, CPU, [T]).
//   Forward with training=true also returns what backward needs (gates, states,
//   proj_in; see csrc/kernels/cpu/rnn_cpu.h), [0]-sized tensors otherwise.
//   Backward returns [0]-sized tensors for gradients not wanted
//   (need_input_grad, need_weight_grads) or for parameters that are absent.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "rnn_layer.h"

namespace fusedrnn {
namespace {

cpu::CellConfig lstm_config(const OptTensor& w_ch, const OptTensor& w_hr, bool coupled) {
  return cpu::CellConfig{CellKind::kLstm, coupled, w_ch.has_value(), true, w_hr.has_value()};
}
cpu::CellConfig gru_config(bool reset_after) {
  return cpu::CellConfig{CellKind::kGru, false, false, reset_after, false};
}
cpu::CellConfig rnn_config(bool relu) {
  return cpu::CellConfig{relu ? CellKind::kRnnRelu : CellKind::kRnnTanh, false, false, true,
                         false};
}

LayerInputs inputs(cpu::CellConfig cell, const Tensor& input, const OptTensor& batch_sizes,
                   const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                   const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                   const OptTensor& w_ch, const OptTensor& w_hr, bool reverse) {
  return LayerInputs{cell, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
                     reverse};
}

GradInputs grads(const Tensor& grad_output, const OptTensor& grad_h_n, const OptTensor& grad_c_n,
                 const Tensor& output, const Tensor& gates, const Tensor& states,
                 const Tensor& proj_in, bool need_input_grad, bool need_weight_grads) {
  return GradInputs{grad_output, grad_h_n,   grad_c_n, output, Saved{gates, states, proj_in},
                    need_input_grad, need_weight_grads};
}

// A cell step is a sequence of one step: [N, C] is seen as [1, N, C], once
// its arguments are checked to be 2-D, so that the messages speak of the cell
// operator's own arguments.
void check_step_arg(const Tensor& t, const char* name, const char* dims, const char* op) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is required (got None)");
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must have 2 dimensions ", dims, ", got ", t.dim(),
              " (shape ", t.sizes(), ")");
}
Tensor step_view(const Tensor& x, const Tensor& hx, const char* op) {
  check_step_arg(x, "input", "[N, C]", op);
  check_step_arg(hx, "hx", "[N, H]", op);
  return x.unsqueeze(0);
}
Tensor step_view(const Tensor& t, const char* name, const char* dims, const char* op) {
  check_step_arg(t, name, dims, op);
  return t.unsqueeze(0);
}
LayerInputs as_step(LayerInputs in) {
  in.step = true;
  return in;
}

// ------------------------------------------------------------------- LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_ch, const OptTensor& w_hr, bool coupled, bool reverse, bool training) {
  const auto r = layer_forward(inputs(lstm_config(w_ch, w_hr, coupled), input, batch_sizes, h0,
                                      c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, reverse),
                               training, "fusedrnn::lstm_forward");
  return {r.output, r.h_n, r.c_n, r.saved.gates, r.saved.states, r.saved.proj_in};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output, const OptTensor& grad_h_n, const OptTensor& grad_c_n,
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_ch, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& states, const Tensor& proj_in, bool coupled, bool reverse,
    bool need_input_grad, bool need_weight_grads) {
  const auto r = layer_backward(
      inputs(lstm_config(w_ch, w_hr, coupled), input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
             w_ch, w_hr, reverse),
      grads(grad_output, grad_h_n, grad_c_n, output, gates, states, proj_in, need_input_grad,
            need_weight_grads),
      "fusedrnn::lstm_backward");
  return {r.grad_input, r.grad_h0,   r.grad_c0,   r.grad_w_ih, r.grad_w_hh,
          r.grad_b_ih,  r.grad_b_hh, r.grad_w_ch, r.grad_w_hr};
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_forward(const Tensor& input, const Tensor& hx,
                                                     const Tensor& cx, const Tensor& w_ih,
                                                     const Tensor& w_hh, const OptTensor& b_ih,
                                                     const OptTensor& b_hh,
                                                     const OptTensor& w_ch, bool coupled,
                                                     bool training) {
  const char* op = "fusedrnn::lstm_cell_forward";
  const auto r = layer_forward(
      as_step(inputs(lstm_config(w_ch, std::nullopt, coupled), step_view(input, hx, op),
                     std::nullopt, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, std::nullopt, false)),
      training, op, true);
  return {r.h_n, r.c_n, r.saved.gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward(
    const Tensor& grad_h, const OptTensor& grad_c, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& w_ch, const Tensor& h, const Tensor& c,
    const Tensor& gates, bool coupled, bool need_input_grad, bool need_weight_grads) {
  const char* op = "fusedrnn::lstm_cell_backward";
  const Tensor x = step_view(input, hx, op);
  const Tensor dh = step_view(grad_h, "grad_h", "[N, H]", op);
  const Tensor h1 = step_view(h, "h", "[N, H]", op);
  const auto r = layer_backward(
      as_step(inputs(lstm_config(w_ch, std::nullopt, coupled), x, std::nullopt, hx, cx, w_ih,
                     w_hh, b_ih, b_hh, w_ch, std::nullopt, false)),
      grads(dh, std::nullopt, grad_c, h1, gates, c, at::empty({0}, input.options()),
            need_input_grad, need_weight_grads),
      op);
  return {r.grad_input.numel() > 0 ? r.grad_input.squeeze(0) : r.grad_input,
          r.grad_h0, r.grad_c0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh, r.grad_w_ch};
}

// -------------------------------------------------------------------- GRU

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, bool reset_after,
    bool reverse, bool training) {
  const auto r = layer_forward(inputs(gru_config(reset_after), input, batch_sizes, h0,
                                      std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt,
                                      std::nullopt, reverse),
                               training, "fusedrnn::gru_forward");
  return {r.output, r.h_n, r.saved.gates, r.saved.states};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const OptTensor& grad_h_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& output, const Tensor& gates,
    const Tensor& states, bool reset_after, bool reverse, bool need_input_grad,
    bool need_weight_grads) {
  const auto r = layer_backward(
      inputs(gru_config(reset_after), input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih,
             b_hh, std::nullopt, std::nullopt, reverse),
      grads(grad_output, grad_h_n, std::nullopt, output, gates, states,
            at::empty({0}, input.options()), need_input_grad, need_weight_grads),
      "fusedrnn::gru_backward");
  return {r.grad_input, r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

std::tuple<Tensor, Tensor, Tensor> gru_cell_forward(const Tensor& input, const Tensor& hx,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    bool reset_after, bool training) {
  const char* op = "fusedrnn::gru_cell_forward";
  const auto r = layer_forward(
      as_step(inputs(gru_config(reset_after), step_view(input, hx, op), std::nullopt, hx,
                     std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt, false)),
      training, op, true);
  return {r.h_n, r.saved.gates, r.saved.states};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward(
    const Tensor& grad_h, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& h,
    const Tensor& gates, const Tensor& states, bool reset_after, bool need_input_grad,
    bool need_weight_grads) {
  const char* op = "fusedrnn::gru_cell_backward";
  const Tensor x = step_view(input, hx, op);
  const Tensor dh = step_view(grad_h, "grad_h", "[N, H]", op);
  const Tensor h1 = step_view(h, "h", "[N, H]", op);
  const auto r = layer_backward(
      as_step(inputs(gru_config(reset_after), x, std::nullopt, hx, std::nullopt, w_ih, w_hh,
                     b_ih, b_hh, std::nullopt, std::nullopt, false)),
      grads(dh, std::nullopt, std::nullopt, h1, gates, states, at::empty({0}, input.options()),
            need_input_grad, need_weight_grads),
      op);
  return {r.grad_input.numel() > 0 ? r.grad_input.squeeze(0) : r.grad_input,
          r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

// -------------------------------------------------------------------- RNN

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const OptTensor& batch_sizes,
                                       const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                       const OptTensor& b_ih, const OptTensor& b_hh, bool relu,
                                       bool reverse) {
  const auto r = layer_forward(inputs(rnn_config(relu), input, batch_sizes, h0, std::nullopt,
                                      w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt,
                                      reverse),
                               false, "fusedrnn::rnn_forward");
  return {r.output, r.h_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const Tensor& grad_output, const OptTensor& grad_h_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& output, bool relu, bool reverse,
    bool need_input_grad, bool need_weight_grads) {
  const Tensor none = at::empty({0}, input.options());
  const auto r = layer_backward(
      inputs(rnn_config(relu), input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
             std::nullopt, std::nullopt, reverse),
      grads(grad_output, grad_h_n, std::nullopt, output, none, none, none, need_input_grad,
            need_weight_grads),
      "fusedrnn::rnn_backward");
  return {r.grad_input, r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

Tensor rnn_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                        bool relu) {
  const char* op = "fusedrnn::rnn_cell_forward";
  return layer_forward(
             as_step(inputs(rnn_config(relu), step_view(input, hx, op), std::nullopt, hx,
                            std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt,
                            false)),
             false, op, true)
      .h_n;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward(
    const Tensor& grad_h, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& h, bool relu,
    bool need_input_grad, bool need_weight_grads) {
  const char* op = "fusedrnn::rnn_cell_backward";
  const Tensor x = step_view(input, hx, op);
  const Tensor dh = step_view(grad_h, "grad_h", "[N, H]", op);
  const Tensor h1 = step_view(h, "h", "[N, H]", op);
  const Tensor none = at::empty({0}, input.options());
  const auto r = layer_backward(
      as_step(inputs(rnn_config(relu), x, std::nullopt, hx, std::nullopt, w_ih, w_hh, b_ih,
                     b_hh, std::nullopt, std::nullopt, false)),
      grads(dh, std::nullopt, std::nullopt, h1, none, none, none, need_input_grad,
            need_weight_grads),
      op);
  return {r.grad_input.numel() > 0 ? r.grad_input.squeeze(0) : r.grad_input,
          r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

// ---------------------------------------------------------- both directions

// One layer, both directions (layer_forward_bidirectional): the output holds
// each direction's once, and the autograd function saves that (autograd.cpp).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
lstm_bidirectional_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                           const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_ch,
                           const OptTensor& w_hr, const Tensor& w_ih_reverse,
                           const Tensor& w_hh_reverse, const OptTensor& b_ih_reverse,
                           const OptTensor& b_hh_reverse, const OptTensor& w_ch_reverse,
                           const OptTensor& w_hr_reverse, bool coupled, bool training) {
  const auto r = layer_forward_bidirectional(
      inputs(lstm_config(w_ch, w_hr, coupled), input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
             w_ch, w_hr, false),
      inputs(lstm_config(w_ch_reverse, w_hr_reverse, coupled), input, batch_sizes, h0, c0,
             w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse,
             true),
      training, "fusedrnn::lstm_bidirectional_forward");
  return {r.output,          r.h_n,           r.c_n,
          r.saved[0].gates,  r.saved[0].states, r.saved[0].proj_in,
          r.saved[1].gates,  r.saved[1].states, r.saved[1].proj_in};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bidirectional_forward(
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ih_reverse,
    const Tensor& w_hh_reverse, const OptTensor& b_ih_reverse, const OptTensor& b_hh_reverse,
    bool reset_after, bool training) {
  const auto r = layer_forward_bidirectional(
      inputs(gru_config(reset_after), input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
             std::nullopt, std::nullopt, false),
      inputs(gru_config(reset_after), input, batch_sizes, h0, std::nullopt, w_ih_reverse,
             w_hh_reverse, b_ih_reverse, b_hh_reverse, std::nullopt, std::nullopt, true),
      training, "fusedrnn::gru_bidirectional_forward");
  return {r.output, r.h_n, r.saved[0].gates, r.saved[0].states, r.saved[1].gates,
          r.saved[1].states};
}

std::tuple<Tensor, Tensor> rnn_bidirectional_forward(
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ih_reverse,
    const Tensor& w_hh_reverse, const OptTensor& b_ih_reverse, const OptTensor& b_hh_reverse,
    bool relu) {
  const auto r = layer_forward_bidirectional(
      inputs(rnn_config(relu), input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
             std::nullopt, std::nullopt, false),
      inputs(rnn_config(relu), input, batch_sizes, h0, std::nullopt, w_ih_reverse, w_hh_reverse,
             b_ih_reverse, b_hh_reverse, std::nullopt, std::nullopt, true),
      false, "fusedrnn::rnn_bidirectional_forward");
  return {r.output, r.h_n};
}

// Their backward: both directions' (layer_backward_bidirectional), at once on
// the CPU where cpu_directions_at_once says so. grad_input is the sum of the
// directions', grad_h0 (and grad_c0) [2, N, P]; then the forward direction's
// weight gradients and the reverse's, [0] where not wanted.
BidirectionalGradInputs bidirectional_grads(const Tensor& grad_output, const OptTensor& grad_h_n,
                                            const OptTensor& grad_c_n, const Tensor& output,
                                            Saved forward, Saved reverse, bool need_input_grad,
                                            bool need_weight_grads,
                                            bool need_weight_grads_reverse) {
  return BidirectionalGradInputs{grad_output,     grad_h_n,
                                 grad_c_n,        output,
                                 {forward, reverse}, need_input_grad,
                                 {need_weight_grads, need_weight_grads_reverse}};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor, Tensor, Tensor, Tensor>
lstm_bidirectional_backward(
    const Tensor& grad_output, const OptTensor& grad_h_n, const OptTensor& grad_c_n,
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_ch, const OptTensor& w_hr, const Tensor& w_ih_reverse,
    const Tensor& w_hh_reverse, const OptTensor& b_ih_reverse, const OptTensor& b_hh_reverse,
    const OptTensor& w_ch_reverse, const OptTensor& w_hr_reverse, const Tensor& output,
    const Tensor& gates, const Tensor& states, const Tensor& proj_in, const Tensor& gates_reverse,
    const Tensor& states_reverse, const Tensor& proj_in_reverse, bool coupled,
    bool need_input_grad, bool need_weight_grads, bool need_weight_grads_reverse) {
  const auto r = layer_backward_bidirectional(
      inputs(lstm_config(w_ch, w_hr, coupled), input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
             w_ch, w_hr, false),
      inputs(lstm_config(w_ch_reverse, w_hr_reverse, coupled), input, batch_sizes, h0, c0,
             w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse,
             true),
      bidirectional_grads(grad_output, grad_h_n, grad_c_n, output, {gates, states, proj_in},
                          {gates_reverse, states_reverse, proj_in_reverse}, need_input_grad,
                          need_weight_grads, need_weight_grads_reverse),
      "fusedrnn::lstm_bidirectional_backward");
  const GradResult &f = r.direction[0], &b = r.direction[1];
  return {r.grad_input,  r.grad_h0,     r.grad_c0,     f.grad_w_ih, f.grad_w_hh,
          f.grad_b_ih,   f.grad_b_hh,   f.grad_w_ch,   f.grad_w_hr, b.grad_w_ih,
          b.grad_w_hh,   b.grad_b_ih,   b.grad_b_hh,   b.grad_w_ch, b.grad_w_hr};
}

using BidirectionalGrads4 =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// GRU and RNN: grad_input, grad_h0, then per direction w_ih, w_hh, b_ih, b_hh.
BidirectionalGrads4 four_parameter_grads(const BidirectionalGradResult& r) {
  const GradResult &f = r.direction[0], &b = r.direction[1];
  return {r.grad_input,  r.grad_h0,    f.grad_w_ih, f.grad_w_hh, f.grad_b_ih,
          f.grad_b_hh,   b.grad_w_ih,  b.grad_w_hh, b.grad_b_ih, b.grad_b_hh};
}

BidirectionalGrads4 gru_bidirectional_backward(
    const Tensor& grad_output, const OptTensor& grad_h_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ih_reverse,
    const Tensor& w_hh_reverse, const OptTensor& b_ih_reverse, const OptTensor& b_hh_reverse,
    const Tensor& output, const Tensor& gates, const Tensor& states, const Tensor& gates_reverse,
    const Tensor& states_reverse, bool reset_after, bool need_input_grad,
    bool need_weight_grads, bool need_weight_grads_reverse) {
  const Tensor none = at::empty({0}, input.options());
  return four_parameter_grads(layer_backward_bidirectional(
      inputs(gru_config(reset_after), input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
             std::nullopt, std::nullopt, false),
      inputs(gru_config(reset_after), input, batch_sizes, h0, std::nullopt, w_ih_reverse,
             w_hh_reverse, b_ih_reverse, b_hh_reverse, std::nullopt, std::nullopt, true),
      bidirectional_grads(grad_output, grad_h_n, std::nullopt, output, {gates, states, none},
                          {gates_reverse, states_reverse, none}, need_input_grad,
                          need_weight_grads, need_weight_grads_reverse),
      "fusedrnn::gru_bidirectional_backward"));
}

BidirectionalGrads4 rnn_bidirectional_backward(
    const Tensor& grad_output, const OptTensor& grad_h_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ih_reverse,
    const Tensor& w_hh_reverse, const OptTensor& b_ih_reverse, const OptTensor& b_hh_reverse,
    const Tensor& output, bool relu, bool need_input_grad, bool need_weight_grads,
    bool need_weight_grads_reverse) {
  const Tensor none = at::empty({0}, input.options());
  return four_parameter_grads(layer_backward_bidirectional(
      inputs(rnn_config(relu), input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
             std::nullopt, std::nullopt, false),
      inputs(rnn_config(relu), input, batch_sizes, h0, std::nullopt, w_ih_reverse, w_hh_reverse,
             b_ih_reverse, b_hh_reverse, std::nullopt, std::nullopt, true),
      bidirectional_grads(grad_output, grad_h_n, std::nullopt, output, {none, none, none},
                          {none, none, none}, need_input_grad, need_weight_grads,
                          need_weight_grads_reverse),
      "fusedrnn::rnn_bidirectional_backward"));
}

// The checks of the forward operator `op` alone, for the compositions that
// compute in its place (fusedrnn/_composite.py): a bad call gets the operator's
// words whichever path runs. `flag`: coupled (LSTM), reset_after (GRU) or relu.
void check_forward(c10::string_view op, const Tensor& input, const OptTensor& batch_sizes,
                   const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                   const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_ch,
                   const OptTensor& w_hr, bool flag) {
  const std::string name = "fusedrnn::" + std::string(op);
  const bool step =
      op == "lstm_cell_forward" || op == "gru_cell_forward" || op == "rnn_cell_forward";
  cpu::CellConfig cell;
  if (op == "lstm_forward" || op == "lstm_cell_forward") {
    cell = lstm_config(w_ch, w_hr, flag);
  } else if (op == "gru_forward" || op == "gru_cell_forward") {
    cell = gru_config(flag);
  } else {
    TORCH_CHECK(op == "rnn_forward" || op == "rnn_cell_forward",
                "fusedrnn::check_forward: no forward operator ", op);
    cell = rnn_config(flag);
  }
  LayerInputs in = inputs(cell, step ? step_view(input, h0, name.c_str()) : input, batch_sizes,
                          h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, false);
  in.step = step;
  check_layer(in, name.c_str());
}

// Autocast: the forward operators run in the autocast dtype on CPU and CUDA (the
// kernels still accumulate in float32 and keep the cell state in float32), as
// torch.nn's LSTM and RNN do on CPU (README: where nn.GRU and the GRU and LSTM
// cells differ there). Casts every eligible floating input (autocast's own rule:
// float32 on the autocast device; float64 is left alone), then calls the
// operator again with autocast off.
template <c10::DeviceType kDevice>
void autocast_forward(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  constexpr auto key =
      kDevice == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA : c10::DispatchKey::AutocastCPU;
  const at::ScalarType to = at::autocast::get_autocast_dtype(kDevice);
  const size_t n = op.schema().arguments().size();
  for (size_t i = stack->size() - n; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor()) v = at::autocast::cached_cast(to, v.toTensor(), kDevice);
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  op.callBoxed(stack);
}

// The batch size of a packed sequence (batch_sizes[0]) as an operator, so that
// torch.compile sees one data-dependent size instead of breaking the graph.
c10::SymInt packed_batch_size(const Tensor& batch_sizes) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.numel() > 0 && batch_sizes.is_cpu() &&
                  batch_sizes.scalar_type() == at::kLong,
              "fusedrnn::packed_batch_size: batch_sizes must be a non-empty 1-D int64 CPU tensor, "
              "got shape ", batch_sizes.sizes(), " dtype ", batch_sizes.scalar_type(), " on ",
              batch_sizes.device());
  return c10::SymInt(batch_sizes.contiguous().data_ptr<int64_t>()[0]);
}

}  // namespace

TORCH_LIBRARY(fusedrnn, m) {
  m.def("packed_batch_size(Tensor batch_sizes) -> SymInt");
  m.def(
      "lstm_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, Tensor? w_hr, bool coupled, "
      "bool reverse, bool training) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "
      "Tensor states, Tensor proj_in)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_ch, Tensor? w_hr, Tensor output, Tensor gates, Tensor states, "
      "Tensor proj_in, bool coupled, bool reverse, bool need_input_grad, bool need_weight_grads) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_ch, Tensor grad_w_hr)");
  m.def(
      "lstm_cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, bool coupled, bool training) -> (Tensor h, "
      "Tensor c, Tensor gates)");
  m.def(
      "lstm_cell_backward(Tensor grad_h, Tensor? grad_c, Tensor input, Tensor hx, Tensor cx, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, Tensor h, Tensor c, "
      "Tensor gates, bool coupled, bool need_input_grad, bool need_weight_grads) -> (Tensor "
      "grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor "
      "grad_b_ih, Tensor grad_b_hh, Tensor grad_w_ch)");
  m.def(
      "gru_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool reset_after, bool reverse, bool training) -> (Tensor "
      "output, Tensor h_n, Tensor gates, Tensor states)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor? grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor output, Tensor "
      "gates, Tensor states, bool reset_after, bool reverse, bool need_input_grad, bool "
      "need_weight_grads) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor "
      "grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def(
      "gru_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, bool reset_after, bool training) -> (Tensor h, Tensor gates, Tensor "
      "states)");
  m.def(
      "gru_cell_backward(Tensor grad_h, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor h, Tensor gates, Tensor states, bool reset_after, "
      "bool need_input_grad, bool need_weight_grads) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor? grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor output, bool "
      "relu, bool reverse, bool need_input_grad, bool need_weight_grads) -> (Tensor grad_input, "
      "Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def(
      "rnn_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, bool relu) -> Tensor h");
  m.def(
      "rnn_cell_backward(Tensor grad_h, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor h, bool relu, bool need_input_grad, bool "
      "need_weight_grads) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor "
      "grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  // One layer, both directions: h0 [2, N, P] (c0 [2, N, H]), the forward
  // direction's parameters, then the reverse's; output [.., 2P], h_n [2, N, P]
  // (c_n [2, N, H]), then each direction's saved tensors as the one-direction
  // operators return them.
  m.def(
      "lstm_bidirectional_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, Tensor? w_hr, "
      "Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor? b_ih_reverse, Tensor? b_hh_reverse, "
      "Tensor? w_ch_reverse, Tensor? w_hr_reverse, bool coupled, bool training) -> (Tensor "
      "output, Tensor h_n, Tensor c_n, Tensor gates, Tensor states, Tensor proj_in, Tensor "
      "gates_reverse, Tensor states_reverse, Tensor proj_in_reverse)");
  m.def(
      "gru_bidirectional_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, "
      "Tensor? b_ih_reverse, Tensor? b_hh_reverse, bool reset_after, bool training) -> (Tensor "
      "output, Tensor h_n, Tensor gates, Tensor states, Tensor gates_reverse, Tensor "
      "states_reverse)");
  m.def(
      "rnn_bidirectional_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, "
      "Tensor? b_ih_reverse, Tensor? b_hh_reverse, bool relu) -> (Tensor output, Tensor h_n)");
  // Their backward: the forward's arguments (but training), its output and
  // each direction's saved tensors; grad_input is both directions' sum, grad_h0
  // (grad_c0) [2, N, P]; then each direction's weight gradients, [0] where not
  // wanted (need_weight_grads, need_weight_grads_reverse).
  m.def(
      "lstm_bidirectional_backward(Tensor grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, Tensor? w_hr, Tensor w_ih_reverse, "
      "Tensor w_hh_reverse, Tensor? b_ih_reverse, Tensor? b_hh_reverse, Tensor? w_ch_reverse, "
      "Tensor? w_hr_reverse, Tensor output, Tensor gates, Tensor states, Tensor proj_in, "
      "Tensor gates_reverse, Tensor states_reverse, Tensor proj_in_reverse, bool coupled, "
      "bool need_input_grad, bool need_weight_grads, bool need_weight_grads_reverse) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_ch, Tensor grad_w_hr, "
      "Tensor grad_w_ih_reverse, Tensor grad_w_hh_reverse, Tensor grad_b_ih_reverse, "
      "Tensor grad_b_hh_reverse, Tensor grad_w_ch_reverse, Tensor grad_w_hr_reverse)");
  m.def(
      "gru_bidirectional_backward(Tensor grad_output, Tensor? grad_h_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor? b_ih_reverse, Tensor? b_hh_reverse, "
      "Tensor output, Tensor gates, Tensor states, Tensor gates_reverse, Tensor states_reverse, "
      "bool reset_after, bool need_input_grad, bool need_weight_grads, "
      "bool need_weight_grads_reverse) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_ih_reverse, "
      "Tensor grad_w_hh_reverse, Tensor grad_b_ih_reverse, Tensor grad_b_hh_reverse)");
  m.def(
      "rnn_bidirectional_backward(Tensor grad_output, Tensor? grad_h_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor? b_ih_reverse, Tensor? b_hh_reverse, "
      "Tensor output, bool relu, bool need_input_grad, bool need_weight_grads, "
      "bool need_weight_grads_reverse) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_ih_reverse, "
      "Tensor grad_w_hh_reverse, Tensor grad_b_ih_reverse, Tensor grad_b_hh_reverse)");
  m.def(
      "check_forward(str op, Tensor input, Tensor? batch_sizes, Tensor h0, Tensor? c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, Tensor? w_hr, "
      "bool flag) -> ()");
  // The backward of a forward operator with create_graph=True (autograd.cpp):
  // the gradients of the arguments in the bit mask `need`, differentiable
  // themselves. Implemented in Python (fusedrnn/_composite.py) as a
  // composition of torch operations.
  m.def(
      "differentiable_backward(int call, int need, Tensor? grad_output, Tensor? grad_h_n, "
      "Tensor? grad_c_n, Tensor input, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_ch, Tensor? w_hr) -> Tensor[]");
}

// The same kernels serve both keys: layer_forward/backward pick the device code
// (and say clearly when a build has no CUDA).
#define FUSEDRNN_REGISTER_KERNELS(m)                  \
  m.impl("packed_batch_size", &packed_batch_size);   \
  m.impl("lstm_forward", &lstm_forward);             \
  m.impl("lstm_backward", &lstm_backward);           \
  m.impl("lstm_cell_forward", &lstm_cell_forward);   \
  m.impl("lstm_cell_backward", &lstm_cell_backward); \
  m.impl("gru_forward", &gru_forward);               \
  m.impl("gru_backward", &gru_backward);             \
  m.impl("gru_cell_forward", &gru_cell_forward);     \
  m.impl("gru_cell_backward", &gru_cell_backward);   \
  m.impl("rnn_forward", &rnn_forward);               \
  m.impl("rnn_backward", &rnn_backward);             \
  m.impl("rnn_cell_forward", &rnn_cell_forward);     \
  m.impl("rnn_cell_backward", &rnn_cell_backward);   \
  m.impl("lstm_bidirectional_forward", &lstm_bidirectional_forward); \
  m.impl("gru_bidirectional_forward", &gru_bidirectional_forward);   \
  m.impl("rnn_bidirectional_forward", &rnn_bidirectional_forward);   \
  m.impl("lstm_bidirectional_backward", &lstm_bidirectional_backward); \
  m.impl("gru_bidirectional_backward", &gru_bidirectional_backward);   \
  m.impl("rnn_bidirectional_backward", &rnn_bidirectional_backward);

// It reads only sizes, dtypes and devices (and batch_sizes, a CPU tensor), so it
// runs on any tensors, those of the functorch transforms included.
TORCH_LIBRARY_IMPL(fusedrnn, CompositeImplicitAutograd, m) {
  m.impl("check_forward", &check_forward);
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { FUSEDRNN_REGISTER_KERNELS(m) }
TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) { FUSEDRNN_REGISTER_KERNELS(m) }

#define FUSEDRNN_REGISTER_AUTOCAST(m, device)                                          \
  for (const char* name : {"lstm_forward", "lstm_cell_forward", "gru_forward",         \
                           "gru_cell_forward", "rnn_forward", "rnn_cell_forward",      \
                           "lstm_bidirectional_forward", "gru_bidirectional_forward",  \
                           "rnn_bidirectional_forward"})                               \
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&autocast_forward<device>>());

TORCH_LIBRARY_IMPL(fusedrnn, AutocastCPU, m) { FUSEDRNN_REGISTER_AUTOCAST(m, c10::DeviceType::CPU) }
TORCH_LIBRARY_IMPL(fusedrnn, AutocastCUDA, m) { FUSEDRNN_REGISTER_AUTOCAST(m, c10::DeviceType::CUDA) }

}  // namespace fusedrnn
