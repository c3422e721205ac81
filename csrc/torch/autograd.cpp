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

// The output and saved tensors of one direction's forward.
struct Saved3 {
  Tensor y, gates, states, proj_in;
};

void check_saved(Call call) {
  const bool saves = call.op != Op::kRnn && call.op != Op::kRnnCell;
  TORCH_CHECK(!saves || call.training,
              "fusedrnn: the forward ran with training=False, so it saved nothing for backward; "
              "call it with training=True when gradients are needed");
}

// One direction's gradients from its backward operator, by Arg (undefined
// where not computed). s: the forward's arguments by Arg; grads: those of its
// differentiable outputs (undefined where unused).
std::array<Tensor, kNumArgs> direction_backward(Call call, const variable_list& s,
                                                const Saved3& saved, const variable_list& grads,
                                                bool need_x, bool need_w) {
  const Op op = call.op;
  const bool flag = call.flag, reverse = call.reverse;
  const Tensor &input = s[kInput], &h0 = s[kH0], &c0 = s[kC0], &w_ih = s[kWih], &w_hh = s[kWhh];
  const Tensor &y = saved.y, &gates = saved.gates, &states = saved.states, &proj_in = saved.proj_in;
  const auto bs = opt(s[kBatchSizes]);
  const auto b_ih = opt(s[kBih]), b_hh = opt(s[kBhh]), w_ch = opt(s[kWch]), w_hr = opt(s[kWhr]);
  const auto grad = [&](size_t i) { return i < grads.size() ? opt(grads[i]) : std::nullopt; };
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
      auto r = f.call(dy, grad(1), grad(2), input, bs, h0, c0, w_ih, w_hh, b_ih, b_hh,
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
      auto r = f.call(dy, grad(1), input, bs, h0, w_ih, w_hh, b_ih, b_hh, y, gates, states,
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
      auto r = f.call(dy, grad(1), input, bs, h0, w_ih, w_hh, b_ih, b_hh, y, flag, reverse,
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
      auto r = f.call(dy, grad(1), input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, y, states,
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
  return g;
}

// An input made under torch.inference_mode (features of a frozen model, say)
// cannot be saved for backward as it is: one that does not require grad is
// saved as a copy (torch's advice for it), so that a model trains on it
// (torch.nn's modules do only with batch_first=True). Parameters made under
// inference_mode still get torch's error.
variable_list savable(variable_list tensors) {
  for (Tensor& t : tensors)
    if (t.defined() && t.is_inference() && !t.requires_grad()) t = t.clone();
  return tensors;
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
    ctx->save_for_backward(savable({input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
                                    fw.y, fw.gates, fw.states, fw.proj_in}));
    return std::move(fw.out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Call call = decode(ctx->saved_data["call"].toInt());
    check_saved(call);
    const variable_list s = ctx->get_saved_variables();

    // needs_input_grad counts only the arguments that were present.
    std::array<bool, kNumArgs> need{};
    for (int i = 0, edge = 0; i < kNumArgs; ++i)
      if (s[i].defined()) need[i] = ctx->needs_input_grad(edge++);
    if (at::GradMode::is_enabled()) return differentiable_backward(call, s, grads, need);
    const bool need_x = need[kInput];
    const bool need_w = need[kWih] || need[kWhh] || need[kBih] || need[kBhh] || need[kWch] || need[kWhr];
    const std::array<Tensor, kNumArgs> g =
        direction_backward(call, s, Saved3{s[10], s[11], s[12], s[13]}, grads, need_x, need_w);
    variable_list result(1 + kNumArgs);  // the Call argument gets no gradient
    for (int i = 0; i < kNumArgs; ++i)
      if (need[i] && g[i].defined()) result[1 + i] = g[i];
    return result;
  }
};

// A tangent would otherwise be dropped without a word where no input requires
// grad (under no_grad, or in torch.func.jvp): the Functions have no
// forward-mode derivative. Returns whether a graph is to be recorded: without
// one (no_grad, or no input requires grad) a call goes straight to the
// operator, so that a cell step in a user loop pays no autograd bookkeeping.
bool records_graph(c10::ArrayRef<OptTensor> tensors) {
  std::vector<const Tensor*> present;
  bool wants_grad = false;
  for (const OptTensor& t : tensors)
    if (t.has_value() && t->defined()) {
      present.push_back(&*t);
      wants_grad = wants_grad || t->requires_grad();
    }
  for (uint64_t level = 0; torch::autograd::ForwardADLevel::try_get_by_idx(level); ++level)
    for (const Tensor* t : present)
      TORCH_CHECK(!t->_fw_grad(level).defined(),
                  "fusedrnn: the operators have no forward-mode derivative (torch.func.jvp, "
                  "torch.autograd.forward_ad); the modules and fusedrnn.functional compute it "
                  "through a composition of torch operations");
  return wants_grad && at::GradMode::is_enabled();
}

variable_list apply(Call call, const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                    const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_ch,
                    const OptTensor& w_hr) {
  if (!records_graph({input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr}))
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

// ------------------------------------------------------------ both directions

// The tensor arguments of a bidirectional call (the *_bidirectional_forward
// operators): those of Arg, h0 and c0 holding both directions' states, then
// the reverse direction's parameters.
constexpr int kParams = kNumArgs - kWih;  // parameters a direction: w_ih .. w_hr
constexpr int kWihR = kNumArgs, kWhhR = kWihR + 1, kBihR = kWihR + 2, kBhhR = kWihR + 3,
              kWchR = kWihR + 4, kWhrR = kWihR + 5, kNumBiArgs = kWihR + kParams;

struct BiForward {
  variable_list out;
  Tensor y;
  Saved3 saved[2];  // y left undefined: the directions' outputs are columns of y
  std::vector<Tensor> non_differentiable;
};

// Calls the bidirectional operator below the Autograd key; a: by BiArg.
BiForward run_bidirectional(Call call, const std::array<Tensor, kNumBiArgs>& a) {
  at::AutoDispatchBelowADInplaceOrView guard;
  BiForward fw;
  variable_list& out = fw.out;
  const auto o = [&](int i) { return opt(a[i]); };
  switch (call.op) {
    case Op::kLstm: {
      static auto f = handle<Tuple9(
          const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
          const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
          const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
          const OptTensor&, bool, bool)>("fusedrnn::lstm_bidirectional_forward");
      auto r = f.call(a[kInput], o(kBatchSizes), a[kH0], a[kC0], a[kWih], a[kWhh], o(kBih),
                      o(kBhh), o(kWch), o(kWhr), a[kWihR], a[kWhhR], o(kBihR), o(kBhhR),
                      o(kWchR), o(kWhrR), call.flag, call.training);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r),
             std::get<5>(r), std::get<6>(r), std::get<7>(r), std::get<8>(r)};
      fw.saved[0] = Saved3{Tensor(), out[3], out[4], out[5]};
      fw.saved[1] = Saved3{Tensor(), out[6], out[7], out[8]};
      fw.non_differentiable = {out[3], out[4], out[5], out[6], out[7], out[8]};
      break;
    }
    case Op::kGru: {
      static auto f = handle<Tuple6(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const OptTensor&, const OptTensor&,
                                    const Tensor&, const Tensor&, const OptTensor&,
                                    const OptTensor&, bool, bool)>(
          "fusedrnn::gru_bidirectional_forward");
      auto r = f.call(a[kInput], o(kBatchSizes), a[kH0], a[kWih], a[kWhh], o(kBih), o(kBhh),
                      a[kWihR], a[kWhhR], o(kBihR), o(kBhhR), call.flag, call.training);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r),
             std::get<5>(r)};
      fw.saved[0] = Saved3{Tensor(), out[2], out[3], Tensor()};
      fw.saved[1] = Saved3{Tensor(), out[4], out[5], Tensor()};
      fw.non_differentiable = {out[2], out[3], out[4], out[5]};
      break;
    }
    case Op::kRnn: {
      static auto f = handle<Tuple2(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const OptTensor&, const OptTensor&,
                                    const Tensor&, const Tensor&, const OptTensor&,
                                    const OptTensor&, bool)>("fusedrnn::rnn_bidirectional_forward");
      auto r = f.call(a[kInput], o(kBatchSizes), a[kH0], a[kWih], a[kWhh], o(kBih), o(kBhh),
                      a[kWihR], a[kWhhR], o(kBihR), o(kBhhR), call.flag);
      out = {std::get<0>(r), std::get<1>(r)};
      break;
    }
    default:
      TORCH_INTERNAL_ASSERT(false, "a bidirectional call of a cell");
  }
  fw.y = out[0];
  return fw;
}

// Direction d's arguments by Arg, from a bidirectional call's by BiArg: its
// state (row d of h0 and c0) and its parameters.
variable_list direction_args(const variable_list& a, int d) {
  variable_list s(kNumArgs);
  s[kInput] = a[kInput];
  s[kBatchSizes] = a[kBatchSizes];
  s[kH0] = a[kH0].select(0, d);
  if (a[kC0].defined()) s[kC0] = a[kC0].select(0, d);
  for (int i = 0; i < kParams; ++i) s[kWih + i] = a[(d == 0 ? int{kWih} : kWihR) + i];
  return s;
}

// Both directions' gradients by BiArg (undefined where not computed) from the
// bidirectional backward operator. a: the forward's arguments by BiArg, then its
// output and each direction's saved tensors (gates, states, proj_in); grads:
// those of its differentiable outputs.
std::array<Tensor, kNumBiArgs> bidirectional_backward(Call call, const variable_list& a,
                                                      const variable_list& grads, bool need_x,
                                                      const bool need_w[2]) {
  const Tensor& y = a[kNumBiArgs];
  const auto o = [&](int i) { return a[i].defined() ? c10::IValue(a[i]) : c10::IValue(); };
  const auto grad = [&](size_t i) {
    return i < grads.size() && grads[i].defined() ? c10::IValue(grads[i]) : c10::IValue();
  };
  const auto saved = [&](int d, int k) { return c10::IValue(a[kNumBiArgs + 1 + 3 * d + k]); };
  const auto find = [](const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  };
  torch::jit::Stack st{grads[0].defined() ? grads[0] : at::zeros_like(y)};
  const auto push = [&](std::initializer_list<c10::IValue> v) {
    st.insert(st.end(), v.begin(), v.end());
  };
  const bool lstm = call.op == Op::kLstm;
  switch (call.op) {
    case Op::kLstm: {
      static const auto op = find("fusedrnn::lstm_bidirectional_backward");
      push({grad(1), grad(2), a[kInput], o(kBatchSizes), a[kH0], a[kC0], a[kWih], a[kWhh],
            o(kBih), o(kBhh), o(kWch), o(kWhr), a[kWihR], a[kWhhR], o(kBihR), o(kBhhR),
            o(kWchR), o(kWhrR), y, saved(0, 0), saved(0, 1), saved(0, 2), saved(1, 0),
            saved(1, 1), saved(1, 2), call.flag, need_x, need_w[0], need_w[1]});
      op.callBoxed(&st);
      break;
    }
    case Op::kGru: {
      static const auto op = find("fusedrnn::gru_bidirectional_backward");
      push({grad(1), a[kInput], o(kBatchSizes), a[kH0], a[kWih], a[kWhh], o(kBih), o(kBhh),
            a[kWihR], a[kWhhR], o(kBihR), o(kBhhR), y, saved(0, 0), saved(0, 1), saved(1, 0),
            saved(1, 1), call.flag, need_x, need_w[0], need_w[1]});
      op.callBoxed(&st);
      break;
    }
    case Op::kRnn: {
      static const auto op = find("fusedrnn::rnn_bidirectional_backward");
      push({grad(1), a[kInput], o(kBatchSizes), a[kH0], a[kWih], a[kWhh], o(kBih), o(kBhh),
            a[kWihR], a[kWhhR], o(kBihR), o(kBhhR), y, call.flag, need_x, need_w[0],
            need_w[1]});
      op.callBoxed(&st);
      break;
    }
    default:
      TORCH_INTERNAL_ASSERT(false, "a bidirectional call of a cell");
  }
  std::array<Tensor, kNumBiArgs> g;
  size_t k = 0;
  g[kInput] = st.at(k++).toTensor();
  g[kH0] = st.at(k++).toTensor();
  if (lstm) g[kC0] = st.at(k++).toTensor();
  const int params = lstm ? kParams : kBhh - kWih + 1;
  for (int d = 0; d < 2; ++d)
    for (int i = 0; i < params; ++i)
      g[(d == 0 ? int{kWih} : kWihR) + i] = st.at(k++).toTensor();
  return g;
}

// Both directions of a layer: the output, saved once, serves both backward
// operators (each reads its own columns), where two one-direction calls would
// save each direction's output besides the concatenation that the next layer
// saves as its input.
struct BidirectionalFunction : public torch::autograd::Function<BidirectionalFunction> {
  static variable_list forward(AutogradContext* ctx, Call call, Tensor input,
                               OptTensor batch_sizes, Tensor h0, OptTensor c0, Tensor w_ih,
                               Tensor w_hh, OptTensor b_ih, OptTensor b_hh, OptTensor w_ch,
                               OptTensor w_hr, Tensor w_ih_r, Tensor w_hh_r, OptTensor b_ih_r,
                               OptTensor b_hh_r, OptTensor w_ch_r, OptTensor w_hr_r) {
    const std::array<Tensor, kNumBiArgs> a = {
        input,  def(batch_sizes), h0,     def(c0),     w_ih,        w_hh,
        def(b_ih), def(b_hh),     def(w_ch), def(w_hr), w_ih_r,      w_hh_r,
        def(b_ih_r), def(b_hh_r), def(w_ch_r), def(w_hr_r)};
    BiForward fw = run_bidirectional(call, a);
    if (!fw.non_differentiable.empty()) ctx->mark_non_differentiable(fw.non_differentiable);
    ctx->set_materialize_grads(false);
    ctx->saved_data["call"] = encode(call);
    variable_list saved(a.begin(), a.end());
    saved.push_back(fw.y);
    for (const Saved3& d : fw.saved) {
      saved.push_back(d.gates);
      saved.push_back(d.states);
      saved.push_back(d.proj_in);
    }
    ctx->save_for_backward(savable(std::move(saved)));
    return std::move(fw.out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Call call = decode(ctx->saved_data["call"].toInt());
    check_saved(call);
    const variable_list a = ctx->get_saved_variables();
    const Tensor& y = a[kNumBiArgs];
    const c10::SymInt P = a[kH0].sym_size(-1);  // symbolic under torch.compile
    std::array<bool, kNumBiArgs> need{};
    for (int i = 0, edge = 0; i < kNumBiArgs; ++i)
      if (a[i].defined()) need[i] = ctx->needs_input_grad(edge++);

    // Each direction's gradients by Arg: of its output columns, h_n and c_n
    // rows; from its backward operator, or differentiable under create_graph.
    // A direction none of whose arguments is wanted (its parameters frozen, or
    // torch.autograd.grad asking for the other's) does not run. Where both run
    // without create_graph, the bidirectional backward operator runs them.
    std::array<bool, kNumArgs> nd[2]{};
    bool need_w[2] = {false, false}, runs[2];
    for (int d = 0; d < 2; ++d) {
      nd[d][kInput] = need[kInput];
      nd[d][kH0] = need[kH0];
      nd[d][kC0] = need[kC0];
      for (int i = 0; i < kParams; ++i) {
        nd[d][kWih + i] = need[(d == 0 ? int{kWih} : kWihR) + i];
        need_w[d] = need_w[d] || nd[d][kWih + i];
      }
      runs[d] = need_w[d] || need[kInput] || need[kH0] || need[kC0];
    }
    variable_list result(1 + kNumBiArgs);  // the Call argument gets no gradient
    if (runs[0] && runs[1] && !at::GradMode::is_enabled()) {
      const std::array<Tensor, kNumBiArgs> g =
          bidirectional_backward(call, a, grads, need[kInput], need_w);
      for (int i = 0; i < kNumBiArgs; ++i)
        if (need[i] && g[i].defined()) result[1 + i] = g[i];
      return result;
    }
    std::array<Tensor, kNumArgs> g[2];
    for (int d = 0; d < 2; ++d) {
      if (!runs[d]) continue;
      const Call cd{call.op, call.flag, d == 1, call.training};
      const variable_list s = direction_args(a, d);
      variable_list gd(differentiable_outputs(call.op));
      if (grads[0].defined()) gd[0] = grads[0].narrow_symint(-1, P * d, P);
      for (size_t i = 1; i < gd.size(); ++i)
        if (grads[i].defined()) gd[i] = grads[i].select(0, d);
      if (at::GradMode::is_enabled()) {
        const variable_list r = differentiable_backward(cd, s, gd, nd[d]);
        for (int i = 0; i < kNumArgs; ++i) g[d][i] = r[1 + i];
      } else {
        const int base = kNumBiArgs + 1 + 3 * d;
        const Saved3 saved{y.narrow_symint(-1, P * d, P), a[base], a[base + 1], a[base + 2]};
        g[d] = direction_backward(cd, s, saved, gd, nd[d][kInput], need_w[d]);
      }
    }
    const auto both = [&](int i) { return g[0][i].defined() && g[1][i].defined(); };
    if (need[kInput] && both(kInput)) result[1 + kInput] = g[0][kInput] + g[1][kInput];
    if (need[kH0] && both(kH0)) result[1 + kH0] = at::stack({g[0][kH0], g[1][kH0]});
    if (need[kC0] && both(kC0)) result[1 + kC0] = at::stack({g[0][kC0], g[1][kC0]});
    for (int d = 0; d < 2; ++d)
      for (int i = 0; i < kParams; ++i) {
        const int arg = (d == 0 ? int{kWih} : kWihR) + i;
        if (need[arg] && g[d][kWih + i].defined()) result[1 + arg] = g[d][kWih + i];
      }
    return result;
  }
};

variable_list apply_bidirectional(Call call, const std::array<OptTensor, kNumBiArgs>& a) {
  if (!records_graph(a)) {
    std::array<Tensor, kNumBiArgs> t;
    for (int i = 0; i < kNumBiArgs; ++i) t[i] = def(a[i]);
    return run_bidirectional(call, t).out;
  }
  return BidirectionalFunction::apply(call, *a[kInput], a[kBatchSizes], *a[kH0], a[kC0], *a[kWih],
                                      *a[kWhh], a[kBih], a[kBhh], a[kWch], a[kWhr], *a[kWihR],
                                      *a[kWhhR], a[kBihR], a[kBhhR], a[kWchR], a[kWhrR]);
}

Tuple9 lstm_bidirectional_forward(const Tensor& input, const OptTensor& batch_sizes,
                                  const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                  const OptTensor& w_ch, const OptTensor& w_hr,
                                  const Tensor& w_ih_r, const Tensor& w_hh_r,
                                  const OptTensor& b_ih_r, const OptTensor& b_hh_r,
                                  const OptTensor& w_ch_r, const OptTensor& w_hr_r, bool coupled,
                                  bool training) {
  auto o = apply_bidirectional({Op::kLstm, coupled, false, training},
                               {input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
                                w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ch_r, w_hr_r});
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8]};
}

Tuple6 gru_bidirectional_forward(const Tensor& input, const OptTensor& batch_sizes,
                                 const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                 const Tensor& w_ih_r, const Tensor& w_hh_r,
                                 const OptTensor& b_ih_r, const OptTensor& b_hh_r,
                                 bool reset_after, bool training) {
  auto o = apply_bidirectional({Op::kGru, reset_after, false, training},
                               {input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                                std::nullopt, std::nullopt, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                                std::nullopt, std::nullopt});
  return {o[0], o[1], o[2], o[3], o[4], o[5]};
}

Tuple2 rnn_bidirectional_forward(const Tensor& input, const OptTensor& batch_sizes,
                                 const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                 const Tensor& w_ih_r, const Tensor& w_hh_r,
                                 const OptTensor& b_ih_r, const OptTensor& b_hh_r, bool relu) {
  auto o = apply_bidirectional({Op::kRnn, relu, false, false},
                               {input, batch_sizes, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                                std::nullopt, std::nullopt, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                                std::nullopt, std::nullopt});
  return {o[0], o[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("gru_forward", &gru_forward);
  m.impl("rnn_forward", &rnn_forward);
  m.impl("lstm_cell_forward", &lstm_cell_forward);
  m.impl("gru_cell_forward", &gru_cell_forward);
  m.impl("rnn_cell_forward", &rnn_cell_forward);
  m.impl("lstm_bidirectional_forward", &lstm_bidirectional_forward);
  m.impl("gru_bidirectional_forward", &gru_bidirectional_forward);
  m.impl("rnn_bidirectional_forward", &rnn_bidirectional_forward);
  for (const char* name : {"lstm_backward", "gru_backward", "rnn_backward", "lstm_cell_backward",
                           "gru_cell_backward", "rnn_cell_backward", "lstm_bidirectional_backward",
                           "gru_bidirectional_backward", "rnn_bidirectional_backward"})
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fusedrnn
