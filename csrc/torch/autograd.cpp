// Autograd for the forward operators, registered under the Autograd key.
//
// One autograd Function serves all six forward operators. It is in C++ rather
// than Python (torch.library.register_autograd) because the cells run once per
// time step in user loops: measured on the reference machine, a Python autograd
// wrapper cost about 30 us per training call of an LSTMCell at N=1, H=64, where
// torch.nn.LSTMCell's whole call takes 25 us.
//
// The forward saves its inputs and the tensors the kernel saved; the backward
// calls the matching *_backward operator and asks only for the gradients that
// needs_input_grad wants. Under create_graph=True it takes its gradients from
// fusedrnn::differentiable_backward instead, whose result autograd can
// differentiate again (second and higher derivatives). The backward operators
// themselves get the "not implemented" autograd fallback: called on their own,
// they are not differentiable.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/forward_grad.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "rnn_layer.h"

namespace fusedrnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

enum class Op : int64_t {
  kLstm, kGru, kRnn, kLstmCell, kGruCell, kRnnCell
};

// The non-tensor arguments of a forward call. `flag` is coupled (LSTM),
// reset_after (GRU) or relu (RNN).
struct Call {
  Op op;
  bool flag;
  bool reverse;
  bool training;
};

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
Tensor def(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using Tuple2 = std::tuple<Tensor, Tensor>;
using Tuple3 = std::tuple<Tensor, Tensor, Tensor>;
using Tuple4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tuple6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tuple8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tuple9 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Tensor arguments, in this order, of every call (undefined where absent):
enum Arg { kInput, kBatchSizes, kH0, kC0, kWih, kWhh, kBih, kBhh, kWch, kWhr, kNumArgs };

// The outputs of a forward call, and what backward reads besides the inputs:
// the output y and the tensors the kernel saved (undefined where absent).
struct Forward {
  variable_list out;
  Tensor y, gates, states, proj_in;
  std::vector<Tensor> non_differentiable;
};

// Calls the forward operator below the Autograd key.
Forward run_forward(Call call, const Tensor& input, const Tensor& batch_sizes, const Tensor& h0,
                    const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
                    const Tensor& b_hh, const Tensor& w_ch, const Tensor& w_hr) {
  at::AutoDispatchBelowADInplaceOrView guard;
  Forward fw;
  variable_list& out = fw.out;
  Tensor &y = fw.y, &gates = fw.gates, &states = fw.states, &proj_in = fw.proj_in;
  switch (call.op) {
    case Op::kLstm: {
      static auto f = handle<Tuple6(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                    const OptTensor&, const OptTensor&, bool, bool, bool)>(
          "fusedrnn::lstm_forward");
      auto r = f.call(input, opt(batch_sizes), h0, c0, w_ih, w_hh, opt(b_ih), opt(b_hh), opt(w_ch),
                      opt(w_hr), call.flag, call.reverse, call.training);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r),
             std::get<5>(r)};
      y = out[0], gates = out[3], states = out[4], proj_in = out[5];
      fw.non_differentiable = {out[3], out[4], out[5]};
      break;
    }
    case Op::kGru: {
      static auto f = handle<Tuple4(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const OptTensor&, const OptTensor&, bool, bool,
                                    bool)>("fusedrnn::gru_forward");
      auto r = f.call(input, opt(batch_sizes), h0, w_ih, w_hh, opt(b_ih), opt(b_hh), call.flag,
                      call.reverse, call.training);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
      y = out[0], gates = out[2], states = out[3];
      fw.non_differentiable = {out[2], out[3]};
      break;
    }
    case Op::kRnn: {
      static auto f = handle<Tuple2(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const OptTensor&, const OptTensor&, bool, bool)>(
          "fusedrnn::rnn_forward");
      auto r = f.call(input, opt(batch_sizes), h0, w_ih, w_hh, opt(b_ih), opt(b_hh), call.flag,
                      call.reverse);
      out = {std::get<0>(r), std::get<1>(r)};
      y = out[0];
      break;
    }
    case Op::kLstmCell: {
      static auto f = handle<Tuple3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const OptTensor&, const OptTensor&,
                                    const OptTensor&, bool, bool)>("fusedrnn::lstm_cell_forward");
      auto r = f.call(input, h0, c0, w_ih, w_hh, opt(b_ih), opt(b_hh), opt(w_ch), call.flag,
                      call.training);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
      y = out[0], states = out[1], gates = out[2];
      fw.non_differentiable = {out[2]};
      break;
    }
    case Op::kGruCell: {
      static auto f = handle<Tuple3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const OptTensor&, const OptTensor&, bool, bool)>(
          "fusedrnn::gru_cell_forward");
      auto r = f.call(input, h0, w_ih, w_hh, opt(b_ih), opt(b_hh), call.flag, call.training);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
      y = out[0], gates = out[1], states = out[2];
      fw.non_differentiable = {out[1], out[2]};
      break;
    }
    case Op::kRnnCell: {
      static auto f = handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const OptTensor&, const OptTensor&, bool)>(
          "fusedrnn::rnn_cell_forward");
      out = {f.call(input, h0, w_ih, w_hh, opt(b_ih), opt(b_hh), call.flag)};
      y = out[0];
      break;
    }
  }
  return fw;
}

int64_t encode(Call c) {
  return static_cast<int64_t>(c.op) << 3 | int64_t{c.flag} << 2 | int64_t{c.reverse} << 1 |
         int64_t{c.training};
}

Call decode(int64_t v) {
  return Call{static_cast<Op>(v >> 3), (v >> 2 & 1) != 0, (v >> 1 & 1) != 0, (v & 1) != 0};
}

// The forward's outputs that have gradients: output, h_n and c_n (LSTM), output
// and h_n (GRU, RNN), h and c (LSTM cell), h (GRU and RNN cells).
int differentiable_outputs(Op op) {
  switch (op) {
    case Op::kLstm: return 3;
    case Op::kLstmCell: case Op::kGru: case Op::kRnn: return 2;
    default: return 1;
  }
}

// The backward under create_graph=True (grad mode on inside backward): the
// gradients from fusedrnn::differentiable_backward, a composition of torch
// operations recorded by autograd, so that they can be differentiated again.
// The backward kernels would give the same values, but nothing to
// differentiate.
variable_list differentiable_backward(Call call, const variable_list& s,
                                      const variable_list& grads,
                                      const std::array<bool, kNumArgs>& need) {
  static auto f = handle<std::vector<Tensor>(
      int64_t, int64_t, const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&,
      const OptTensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
      const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&)>(
      "fusedrnn::differentiable_backward");
  TORCH_CHECK(f.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd),
              "fusedrnn: a backward with create_graph=True needs fusedrnn's Python package, which "
              "implements it (import fusedrnn)");
  std::array<OptTensor, 3> g;
  for (int i = 0; i < differentiable_outputs(call.op); ++i) g[i] = opt(grads[i]);
  int64_t mask = 0;
  for (int i = 0; i < kNumArgs; ++i) mask |= int64_t{need[i]} << i;
  const std::vector<Tensor> r =
      f.call(encode(call), mask, g[0], g[1], g[2], s[kInput], opt(s[kBatchSizes]), s[kH0],
             opt(s[kC0]), s[kWih], s[kWhh], opt(s[kBih]), opt(s[kBhh]), opt(s[kWch]), opt(s[kWhr]));
  variable_list result(1 + kNumArgs);
  for (int i = 0, k = 0; i < kNumArgs; ++i)
    if (need[i]) result[1 + i] = r.at(k++);
  return result;
}

struct LayerFunction : public torch::autograd::Function<LayerFunction> {
  // Absent arguments are passed as nullopt: not autograd inputs, no edge.
  static variable_list forward(AutogradContext* ctx, Call call, Tensor input,
                               OptTensor batch_sizes_, Tensor h0, OptTensor c0_, Tensor w_ih,
                               Tensor w_hh, OptTensor b_ih_, OptTensor b_hh_, OptTensor w_ch_,
                               OptTensor w_hr_) {
    const Tensor batch_sizes = def(batch_sizes_), c0 = def(c0_), b_ih = def(b_ih_),
                 b_hh = def(b_hh_), w_ch = def(w_ch_), w_hr = def(w_hr_);
    Forward fw = run_forward(call, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr);
    if (!fw.non_differentiable.empty()) ctx->mark_non_differentiable(fw.non_differentiable);
    // Gradients of outputs that were not used stay undefined instead of being
    // zero-filled: the saved gates and states are outputs too, and filling a
    // gradient as large as them cost about a tenth of an LSTM backward.
    ctx->set_materialize_grads(false);
    ctx->saved_data["call"] = encode(call);
    ctx->save_for_backward({input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, fw.y,
                            fw.gates, fw.states, fw.proj_in});
    return std::move(fw.out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Call call = decode(ctx->saved_data["call"].toInt());
    const Op op = call.op;
    const bool flag = call.flag, reverse = call.reverse, training = call.training;
    const bool saves = op != Op::kRnn && op != Op::kRnnCell;
    TORCH_CHECK(!saves || training,
                "fusedrnn: the forward ran with training=False, so it saved nothing for backward; "
                "call it with training=True when gradients are needed");
    const variable_list s = ctx->get_saved_variables();
    const Tensor &input = s[kInput], &h0 = s[kH0], &c0 = s[kC0], &w_ih = s[kWih], &w_hh = s[kWhh];
    const Tensor &y = s[10], &gates = s[11], &states = s[12], &proj_in = s[13];
    const auto bs = opt(s[kBatchSizes]);
    const auto b_ih = opt(s[kBih]), b_hh = opt(s[kBhh]), w_ch = opt(s[kWch]), w_hr = opt(s[kWhr]);

    // needs_input_grad counts only the arguments that were present.
    std::array<bool, kNumArgs> need{};
    for (int i = 0, edge = 0; i < kNumArgs; ++i)
      if (s[i].defined()) need[i] = ctx->needs_input_grad(edge++);
    if (at::GradMode::is_enabled()) return differentiable_backward(call, s, grads, need);
    const bool need_x = need[kInput];
    const bool need_w = need[kWih] || need[kWhh] || need[kBih] || need[kBhh] || need[kWch] || need[kWhr];
    const Tensor dy = grads[0].defined() ? grads[0] : at::zeros_like(y);

    std::array<Tensor, kNumArgs> g;  // gradients by Arg, undefined when not computed
    switch (op) {
      case Op::kLstm: {
        static auto f = handle<Tuple9(const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                                      const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const OptTensor&, const OptTensor&,
                                      const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const Tensor&, bool, bool, bool, bool)>(
            "fusedrnn::lstm_backward");
        auto r = f.call(dy, opt(grads[1]), opt(grads[2]), input, bs, h0, c0, w_ih, w_hh, b_ih, b_hh,
                        w_ch, w_hr, y, gates, states, proj_in, flag, reverse, need_x, need_w);
        g = {std::get<0>(r), Tensor(), std::get<1>(r), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), std::get<6>(r), std::get<7>(r), std::get<8>(r)};
        break;
      }
      case Op::kGru: {
        static auto f = handle<Tuple6(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
                                      const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                      const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
                                      bool, bool, bool, bool)>("fusedrnn::gru_backward");
        auto r = f.call(dy, opt(grads[1]), input, bs, h0, w_ih, w_hh, b_ih, b_hh, y, gates, states,
                        flag, reverse, need_x, need_w);
        g = {std::get<0>(r), Tensor(), std::get<1>(r), Tensor(), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), Tensor(), Tensor()};
        break;
      }
      case Op::kRnn: {
        static auto f = handle<Tuple6(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
                                      const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                      const OptTensor&, const Tensor&, bool, bool, bool, bool)>(
            "fusedrnn::rnn_backward");
        auto r = f.call(dy, opt(grads[1]), input, bs, h0, w_ih, w_hh, b_ih, b_hh, y, flag, reverse,
                        need_x, need_w);
        g = {std::get<0>(r), Tensor(), std::get<1>(r), Tensor(), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), Tensor(), Tensor()};
        break;
      }
      case Op::kLstmCell: {
        static auto f = handle<Tuple8(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                      const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                                      const Tensor&, bool, bool, bool)>("fusedrnn::lstm_cell_backward");
        auto r = f.call(dy, opt(grads[1]), input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, y, states,
                        gates, flag, need_x, need_w);
        g = {std::get<0>(r), Tensor(), std::get<1>(r), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), std::get<6>(r), std::get<7>(r), Tensor()};
        break;
      }
      case Op::kGruCell: {
        static auto f = handle<Tuple6(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                                      const Tensor&, const Tensor&, bool, bool, bool)>(
            "fusedrnn::gru_cell_backward");
        auto r = f.call(dy, input, h0, w_ih, w_hh, b_ih, b_hh, y, gates, states, flag, need_x, need_w);
        g = {std::get<0>(r), Tensor(), std::get<1>(r), Tensor(), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), Tensor(), Tensor()};
        break;
      }
      case Op::kRnnCell: {
        static auto f = handle<Tuple6(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                                      bool, bool, bool)>("fusedrnn::rnn_cell_backward");
        auto r = f.call(dy, input, h0, w_ih, w_hh, b_ih, b_hh, y, flag, need_x, need_w);
        g = {std::get<0>(r), Tensor(), std::get<1>(r), Tensor(), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), Tensor(), Tensor()};
        break;
      }
    }
    variable_list result(1 + kNumArgs);  // the Call argument gets no gradient
    for (int i = 0; i < kNumArgs; ++i)
      if (need[i] && g[i].defined()) result[1 + i] = g[i];
    return result;
  }
};

// Whether a tensor carries a forward-mode tangent at some open dual level (the
// levels are numbered from 0 and open and close as a stack).
bool has_tangent(std::initializer_list<const Tensor*> tensors) {
  for (uint64_t level = 0; torch::autograd::ForwardADLevel::try_get_by_idx(level); ++level)
    for (const Tensor* t : tensors)
      if (t->defined() && t->_fw_grad(level).defined()) return true;
  return false;
}

variable_list apply(Call call, const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                    const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_ch,
                    const OptTensor& w_hr) {
  // A tangent would otherwise be dropped without a word where no input requires
  // grad (under no_grad, or in torch.func.jvp): the Function below has no
  // forward-mode derivative.
  const Tensor none;
  const auto p = [&](const OptTensor& t) { return t.has_value() ? &*t : &none; };
  TORCH_CHECK(!has_tangent({&input, &h0, p(c0), &w_ih, &w_hh, p(b_ih), p(b_hh), p(w_ch), p(w_hr)}),
              "fusedrnn: the operators have no forward-mode derivative (torch.func.jvp, "
              "torch.autograd.forward_ad); the modules and fusedrnn.functional compute it through "
              "a composition of torch operations");
  // Without a graph to record (no_grad, or no input requires grad) the call
  // goes straight to the operator: a cell step in a user loop pays no
  // autograd bookkeeping.
  const auto needs = [](const OptTensor& t) { return t.has_value() && t->requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(input.requires_grad() || h0.requires_grad() || w_ih.requires_grad() ||
        w_hh.requires_grad() || needs(c0) || needs(b_ih) || needs(b_hh) || needs(w_ch) ||
        needs(w_hr)))
    return run_forward(call, input, def(batch_sizes), h0, def(c0), w_ih, w_hh, def(b_ih),
                       def(b_hh), def(w_ch), def(w_hr))
        .out;
  return LayerFunction::apply(call, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr);
}

Tuple6 lstm_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                    const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                    const OptTensor& b_hh, const OptTensor& w_ch, const OptTensor& w_hr, bool coupled,
                    bool reverse, bool training) {
  auto o = apply({Op::kLstm, coupled, reverse, training}, input, batch_sizes, h0, c0, w_ih, w_hh,
                 b_ih, b_hh, w_ch, w_hr);
  return {o[0], o[1], o[2], o[3], o[4], o[5]};
}

Tuple4 gru_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                   const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                   const OptTensor& b_hh, bool reset_after, bool reverse, bool training) {
  auto o = apply({Op::kGru, reset_after, reverse, training}, input, batch_sizes, h0, std::nullopt,
                 w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt);
  return {o[0], o[1], o[2], o[3]};
}

Tuple2 rnn_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                   const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                   const OptTensor& b_hh, bool relu, bool reverse) {
  auto o = apply({Op::kRnn, relu, reverse, false}, input, batch_sizes, h0, std::nullopt, w_ih, w_hh,
                 b_ih, b_hh, std::nullopt, std::nullopt);
  return {o[0], o[1]};
}

Tuple3 lstm_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& cx,
                         const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                         const OptTensor& b_hh, const OptTensor& w_ch, bool coupled, bool training) {
  auto o = apply({Op::kLstmCell, coupled, false, training}, input, std::nullopt, hx, cx, w_ih, w_hh,
                 b_ih, b_hh, w_ch, std::nullopt);
  return {o[0], o[1], o[2]};
}

Tuple3 gru_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                        bool reset_after, bool training) {
  auto o = apply({Op::kGruCell, reset_after, false, training}, input, std::nullopt, hx,
                 std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt);
  return {o[0], o[1], o[2]};
}

Tensor rnn_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                        bool relu) {
  return apply({Op::kRnnCell, relu, false, false}, input, std::nullopt, hx, std::nullopt, w_ih,
               w_hh, b_ih, b_hh, std::nullopt, std::nullopt)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("gru_forward", &gru_forward);
  m.impl("rnn_forward", &rnn_forward);
  m.impl("lstm_cell_forward", &lstm_cell_forward);
  m.impl("gru_cell_forward", &gru_cell_forward);
  m.impl("rnn_cell_forward", &rnn_cell_forward);
  for (const char* name : {"lstm_backward", "gru_backward", "rnn_backward", "lstm_cell_backward",
                           "gru_cell_backward", "rnn_cell_backward"})
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fusedrnn
