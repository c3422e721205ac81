#include "rnn_layer.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/irange.h>

#include <string>

namespace fusedrnn {

namespace {

std::string shape_str(const Tensor& t) { return c10::str(t.sizes()); }

// Every check names the operator and gives the value it got.
#define FRNN_CHECK(cond, ...) TORCH_CHECK((cond), op, ": ", __VA_ARGS__)

void check_same(const Tensor& t, const char* name, const Tensor& input, const char* op) {
  FRNN_CHECK(t.defined(), name, " is required (got None)");
  FRNN_CHECK(t.scalar_type() == input.scalar_type(), name, " must have the dtype of input (",
             input.scalar_type(), "), got ", t.scalar_type());
  FRNN_CHECK(t.device() == input.device(), name, " is on ", t.device(), " but input is on ",
             input.device());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef expected, const char* op) {
  FRNN_CHECK(t.sizes() == expected, name, " must have shape ", expected, ", got ",
             shape_str(t));
}

int64_t checked_mul(int64_t a, int64_t b, const char* op) {
  int64_t r = 0;
  FRNN_CHECK(!__builtin_mul_overflow(a, b, &r), "sizes ", a, " x ", b, " overflow int64");
  return r;
}

}  // namespace

SeqLayout LayerGeometry::layout(bool reverse) const {
  if (!packed) return SeqLayout{T, N, nullptr, nullptr, reverse};
  return SeqLayout{T, N, batch_sizes.data(), offsets.data(), reverse};
}

at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

LayerGeometry check_layer(const LayerInputs& in, const char* op) {
  LayerGeometry g;
  const Tensor& x = in.input;
  FRNN_CHECK(x.defined(), "input is required (got None)");
  const auto dt = x.scalar_type();
  FRNN_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
             "input must be float32, float64, float16 or bfloat16, got ", dt);
  g.packed = in.batch_sizes.has_value();
  if (g.packed) {
    FRNN_CHECK(x.dim() == 2, "input must have 2 dimensions [R, C] when batch_sizes is given, got ",
               x.dim(), " (shape ", shape_str(x), ")");
  } else {
    FRNN_CHECK(x.dim() == 3, "input must have 3 dimensions [T, N, C], got ", x.dim(),
               " (shape ", shape_str(x), ")");
  }
  g.C = x.size(-1);

  const cpu::CellConfig& cell = in.cell;
  const bool lstm = cell.kind == CellKind::kLstm;
  g.G = num_gates(cell.kind, cell.coupled);

  check_same(in.w_ih, "w_ih", x, op);
  check_same(in.w_hh, "w_hh", x, op);
  FRNN_CHECK(in.w_ih.dim() == 2, "w_ih must be 2-D [G*H, C], got shape ", shape_str(in.w_ih));
  FRNN_CHECK(in.w_hh.dim() == 2, "w_hh must be 2-D [G*H, P], got shape ", shape_str(in.w_hh));
  const int64_t GH = in.w_ih.size(0);
  // A cell may have no units (as torch.nn's cells may); a layer may not.
  FRNN_CHECK((GH > 0 || in.step) && GH % g.G == 0, "w_ih must have a ",
             in.step ? "" : "positive ", "multiple of ", g.G, " rows (", g.G,
             " gate blocks), got shape ", shape_str(in.w_ih));
  g.H = GH / g.G;
  check_shape(in.w_ih, "w_ih", {GH, g.C}, op);
  if (in.w_hr.has_value()) {
    FRNN_CHECK(lstm, "w_hr (projection) is only defined for LSTM");
    check_same(*in.w_hr, "w_hr", x, op);
    FRNN_CHECK(in.w_hr->dim() == 2 && in.w_hr->size(0) > 0,
               "w_hr must be 2-D [P, H] with P > 0, got shape ", shape_str(*in.w_hr));
    g.P = in.w_hr->size(0);
    check_shape(*in.w_hr, "w_hr", {g.P, g.H}, op);
  } else {
    g.P = g.H;
  }
  check_shape(in.w_hh, "w_hh", {GH, g.P}, op);
  if (in.b_ih.has_value()) {
    check_same(*in.b_ih, "b_ih", x, op);
    check_shape(*in.b_ih, "b_ih", {GH}, op);
  }
  if (in.b_hh.has_value()) {
    check_same(*in.b_hh, "b_hh", x, op);
    check_shape(*in.b_hh, "b_hh", {GH}, op);
  }
  if (in.w_ch.has_value()) {
    FRNN_CHECK(lstm, "w_ch (peepholes) is only defined for LSTM");
    check_same(*in.w_ch, "w_ch", x, op);
    check_shape(*in.w_ch, "w_ch", {(g.G - 1) * g.H}, op);
  }

  if (g.packed) {
    const Tensor& bs = *in.batch_sizes;
    FRNN_CHECK(bs.device().is_cpu(), "batch_sizes must be on the CPU, got ", bs.device());
    FRNN_CHECK(bs.scalar_type() == at::kLong, "batch_sizes must be int64, got ",
               bs.scalar_type());
    FRNN_CHECK(bs.dim() == 1 && bs.size(0) > 0, "batch_sizes must be 1-D and non-empty, got shape ",
               shape_str(bs));
    const Tensor bsc = bs.contiguous();
    g.T = bs.size(0);
    const int64_t* b = bsc.data_ptr<int64_t>();
    g.batch_sizes.assign(b, b + g.T);
    g.N = b[0];
    FRNN_CHECK(g.N > 0, "batch_sizes[0] must be positive, got ", g.N);
    int64_t sum = 0;
    for (const auto t : c10::irange(g.T)) {
      FRNN_CHECK(b[t] > 0, "batch_sizes must be positive, got ", b[t], " at step ", t);
      FRNN_CHECK(t == 0 || b[t] <= b[t - 1],
                 "batch_sizes must be non-increasing (sorted sequences), got ", b[t - 1],
                 " then ", b[t], " at step ", t);
      FRNN_CHECK(!__builtin_add_overflow(sum, b[t], &sum),
                 "batch_sizes sum overflows int64 at step ", t);
    }
    FRNN_CHECK(sum == x.size(0), "batch_sizes sum to ", sum, " but input has ", x.size(0),
               " rows");
    g.R = sum;
    g.offsets.resize(g.T + 1);
    g.offsets[0] = 0;
    for (const auto t : c10::irange(g.T)) g.offsets[t + 1] = g.offsets[t] + g.batch_sizes[t];
  } else {
    g.T = x.size(0);
    g.N = x.size(1);
    g.R = checked_mul(g.T, g.N, op);
  }

  const char* h0_name = in.step ? "hx" : "h0";
  const char* c0_name = in.step ? "cx" : "c0";
  check_same(in.h0, h0_name, x, op);
  check_shape(in.h0, h0_name, {g.N, g.P}, op);
  if (lstm) {
    FRNN_CHECK(in.c0.has_value(), c0_name, " is required for LSTM");
    check_same(*in.c0, c0_name, x, op);
    check_shape(*in.c0, c0_name, {g.N, g.H}, op);
  }
  // Every [R, .] array the kernels index: the widest is 4H (GRU's dG).
  checked_mul(g.R, std::max({g.C, g.P, 4 * g.H}), op);
  return g;
}

namespace {

// The output and the gradients of the outputs of D directions (1 or 2):
// grad_output and output [.., D P], grad_h_n [N, P] and grad_c_n [N, H], with a
// leading dimension of 2 for two directions. For a cell step, grad_h and h
// [N, H], seen as one step [1, N, H].
void check_output_grads(const Tensor& x, const LayerGeometry& g, int64_t D,
                        const Tensor& grad_output, const Tensor& output,
                        const OptTensor& grad_h_n, const OptTensor& grad_c_n, bool step,
                        const char* op) {
  const auto shape = [&](std::vector<int64_t> s) {
    if (D == 2) s.insert(s.begin(), 2);
    return s;
  };
  const std::vector<int64_t> out_shape = g.packed ? std::vector<int64_t>{g.R, D * g.P}
                                                  : std::vector<int64_t>{g.T, g.N, D * g.P};
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_output, step ? "grad_h" : "grad_output"},
                                std::pair<const Tensor&, const char*>{output, step ? "h" : "output"}}) {
    check_same(t, name, x, op);
    if (step) {
      FRNN_CHECK(t.sizes().slice(1) == at::IntArrayRef(out_shape).slice(1), name, " must have shape ",
                 at::IntArrayRef(out_shape).slice(1), ", got ", t.sizes().slice(1));
    } else {
      check_shape(t, name, out_shape, op);
    }
  }
  if (grad_h_n.has_value()) {
    check_same(*grad_h_n, "grad_h_n", x, op);
    check_shape(*grad_h_n, "grad_h_n", shape({g.N, g.P}), op);
  }
  if (grad_c_n.has_value()) {
    check_same(*grad_c_n, "grad_c_n", x, op);
    check_shape(*grad_c_n, "grad_c_n", shape({g.N, g.H}), op);
  }
}

}  // namespace

void check_grads(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                 const char* op) {
  const Tensor& x = in.input;
  check_output_grads(x, g, 1, gi.grad_output, gi.output, gi.grad_h_n, gi.grad_c_n, in.step, op);
  const int64_t gate_cols = cpu::saved_gate_cols(in.cell, g.H);
  if (gate_cols > 0) {
    check_same(gi.saved.gates, "gates", x, op);
    check_shape(gi.saved.gates, "gates", {g.R, gate_cols}, op);
  }
  // LSTM and GRU take a states argument (the LSTM cell's is its c) and read it
  // typed, [0]-sized when the cell saves none.
  const Tensor& s = gi.saved.states;
  const char* states_name = in.step && in.cell.kind == CellKind::kLstm ? "c" : "states";
  if (in.cell.kind == CellKind::kLstm || in.cell.kind == CellKind::kGru)
    check_same(s, states_name, x, op);
  if (cpu::saves_states(in.cell)) check_shape(s, states_name, {g.R, g.H}, op);
  if (in.w_hr.has_value()) {
    check_same(gi.saved.proj_in, "proj_in", x, op);
    check_shape(gi.saved.proj_in, "proj_in", {g.R, g.H}, op);
  }
}

namespace {

Tensor contig(const Tensor& t) {
  return t.is_contiguous() ? t : layer_empty(t.sizes(), t.options()).copy_(t);
}
OptTensor contig(const OptTensor& t) {
  return t.has_value() ? OptTensor(contig(*t)) : std::nullopt;
}

LayerInputs contiguous_inputs(const LayerInputs& in) {
  LayerInputs c = in;
  c.input = contig(in.input);
  c.h0 = contig(in.h0);
  c.c0 = contig(in.c0);
  c.w_ih = contig(in.w_ih);
  c.w_hh = contig(in.w_hh);
  c.b_ih = contig(in.b_ih);
  c.b_hh = contig(in.b_hh);
  c.w_ch = contig(in.w_ch);
  c.w_hr = contig(in.w_hr);
  return c;
}

Tensor empty0(const Tensor& like) { return at::empty({0}, like.options()); }

void dispatch_forward(const LayerInputs& in, const LayerGeometry& g, bool training,
                      ForwardResult& out, const char* op) {
  if (in.input.is_cpu()) return cpu_layer_forward(in, g, training, out);
#ifdef FUSEDRNN_WITH_CUDA
  if (in.input.is_cuda()) return cuda_layer_forward(in, g, training, out);
#endif
  TORCH_CHECK(false, op, ": no kernel for device ", in.input.device(),
              in.input.is_cuda() ? " (fusedrnn was built without CUDA; see backend_info())" : "");
}

void dispatch_backward(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                       GradResult& out, const char* op) {
  if (in.input.is_cpu()) return cpu_layer_backward(in, g, gi, out);
#ifdef FUSEDRNN_WITH_CUDA
  if (in.input.is_cuda()) return cuda_layer_backward(in, g, gi, out);
#endif
  TORCH_CHECK(false, op, ": no kernel for device ", in.input.device(),
              in.input.is_cuda() ? " (fusedrnn was built without CUDA; see backend_info())" : "");
}

}  // namespace

namespace {

// A forward whose inputs are checked and made contiguous and whose results are
// allocated; run_prepared() computes them.
struct PreparedForward {
  LayerGeometry g;
  LayerInputs in;
  ForwardResult out;
};

PreparedForward prepare_forward(const LayerInputs& in0, bool training, const char* op, bool cell) {
  PreparedForward p{check_layer(in0, op), contiguous_inputs(in0), {}};
  const LayerGeometry& g = p.g;
  const LayerInputs& in = p.in;
  const auto opts = in.input.options();
  const bool lstm = in.cell.kind == CellKind::kLstm;

  // The [0]-sized results that no operator of this cell returns (ops.cpp) share
  // one tensor: c_n but for LSTM; RNN's saved tensors; the LSTM cell's states
  // (its c_n serves) and proj_in (it has no projection); GRU's proj_in.
  const bool rnn = in.cell.kind == CellKind::kRnnTanh || in.cell.kind == CellKind::kRnnRelu;
  Tensor shared;
  const auto unreturned = [&] {
    if (!shared.defined()) shared = empty0(in.input);
    return shared;
  };
  ForwardResult& out = p.out;
  out.h_n = at::empty({g.N, g.P}, opts);
  out.output = cell ? out.h_n.view({1, g.N, g.P})
               : g.packed ? layer_empty({g.R, g.P}, opts)
                          : layer_empty({g.T, g.N, g.P}, opts);
  out.c_n = lstm ? at::empty({g.N, g.H}, opts) : unreturned();
  const int64_t gate_cols = cpu::saved_gate_cols(in.cell, g.H);
  out.saved.gates = training && gate_cols > 0 ? layer_empty({g.R, gate_cols}, opts)
                    : rnn                     ? unreturned()
                                              : empty0(in.input);
  out.saved.states = training && cpu::saves_states(in.cell) ? layer_empty({g.R, g.H}, opts)
                     : rnn || (lstm && cell)                ? unreturned()
                                                            : empty0(in.input);
  out.saved.proj_in = training && in.w_hr.has_value() ? layer_empty({g.R, g.H}, opts)
                      : lstm && !cell                 ? empty0(in.input)
                                                      : unreturned();
  return p;
}

void run_prepared(PreparedForward& p, bool training, const char* op) {
  if (p.g.R == 0 || p.g.H == 0) {  // no step, no row or no unit: the state passes through
    p.out.h_n.copy_(p.in.h0);
    if (p.in.cell.kind == CellKind::kLstm) p.out.c_n.copy_(*p.in.c0);
    return;
  }
  dispatch_forward(p.in, p.g, training, p.out, op);
}

// A backward whose inputs and gradients are checked (the layer's by
// check_layer, giving g) and made contiguous and whose results are allocated;
// run_prepared() computes them.
struct PreparedBackward {
  LayerGeometry g;
  LayerInputs in;
  GradInputs gi;
  GradResult out;
};

PreparedBackward prepare_backward(const LayerInputs& in0, const LayerGeometry& g,
                                  const GradInputs& gi0, const char* op) {
  check_grads(in0, g, gi0, op);
  PreparedBackward p{g, contiguous_inputs(in0), gi0, {}};
  const LayerInputs& in = p.in;
  GradInputs& gi = p.gi;
  gi.grad_output = contig(gi0.grad_output);
  gi.grad_h_n = contig(gi0.grad_h_n);
  gi.grad_c_n = contig(gi0.grad_c_n);
  gi.output = contig(gi0.output);
  gi.saved.gates = contig(gi0.saved.gates);
  gi.saved.states = contig(gi0.saved.states);
  gi.saved.proj_in = contig(gi0.saved.proj_in);

  const auto like = [&](const OptTensor& t, bool want) {
    return want && t.has_value() ? layer_empty(t->sizes(), t->options()) : empty0(in.input);
  };
  GradResult& out = p.out;
  out.grad_input = like(in.input, gi.need_input_grad);
  out.grad_h0 = at::empty_like(in.h0);
  out.grad_c0 = in.cell.kind == CellKind::kLstm ? at::empty_like(*in.c0) : empty0(in.input);
  const bool w = gi.need_weight_grads;
  out.grad_w_ih = like(in.w_ih, w);
  out.grad_w_hh = like(in.w_hh, w);
  out.grad_b_ih = like(in.b_ih, w);
  out.grad_b_hh = like(in.b_hh, w);
  out.grad_w_ch = like(in.w_ch, w);
  out.grad_w_hr = like(in.w_hr, w);
  return p;
}

void run_prepared(PreparedBackward& p, const char* op) {
  GradResult& out = p.out;
  if (p.g.R == 0 || p.g.H == 0) {
    // Nothing ran: the states passed through, the parameters had no effect.
    const GradInputs& gi = p.gi;
    out.grad_h0 = gi.grad_h_n.has_value() ? gi.grad_h_n->clone() : at::zeros_like(p.in.h0);
    if (p.in.cell.kind == CellKind::kLstm)
      out.grad_c0 = gi.grad_c_n.has_value() ? gi.grad_c_n->clone() : at::zeros_like(*p.in.c0);
    for (Tensor* t : {&out.grad_input, &out.grad_w_ih, &out.grad_w_hh, &out.grad_b_ih,
                      &out.grad_b_hh, &out.grad_w_ch, &out.grad_w_hr})
      t->zero_();
    return;
  }
  dispatch_backward(p.in, p.g, p.gi, out, op);
}

}  // namespace

ForwardResult layer_forward(const LayerInputs& in0, bool training, const char* op, bool cell) {
  PreparedForward p = prepare_forward(in0, training, op, cell);
  run_prepared(p, training, op);
  return std::move(p.out);
}

namespace {

// The two directions of a bidirectional layer as one-direction layers: each
// direction's state rows of h0 (and c0), after the check that there are two,
// and its name in messages.
struct Directions {
  LayerInputs in[2];
  std::string names[2];
};

Directions split_directions(const LayerInputs& fwd, const LayerInputs& bwd, const char* op) {
  TORCH_INTERNAL_ASSERT(!fwd.reverse && bwd.reverse && !fwd.step && !bwd.step);
  const bool lstm = fwd.cell.kind == CellKind::kLstm;
  const auto per_direction = [&](const Tensor& t, const char* name, const char* shape) {
    FRNN_CHECK(t.dim() == 3 && t.size(0) == 2, name, " must have shape ", shape,
               ", one state per direction, got ", shape_str(t));
  };
  per_direction(fwd.h0, "h0", "[2, N, P]");
  if (lstm) {
    FRNN_CHECK(fwd.c0.has_value(), "c0 is required for LSTM");
    per_direction(*fwd.c0, "c0", "[2, N, H]");
  }
  Directions d{{fwd, bwd},
               {std::string(op) + " (forward direction)",
                std::string(op) + " (reverse direction: the *_reverse arguments)"}};
  for (int i = 0; i < 2; ++i) {
    d.in[i].h0 = fwd.h0.select(0, i);
    if (lstm) d.in[i].c0 = fwd.c0->select(0, i);
  }
  return d;
}

void check_same_widths(const LayerGeometry& f, const LayerGeometry& r, const char* op) {
  FRNN_CHECK(f.H == r.H && f.P == r.P,
             "both directions must have the same hidden size and state width, got H=", f.H,
             " P=", f.P, " forward and H=", r.H, " P=", r.P, " reverse");
}

// Runs run(0) and run(1): on the CPU at once, one thread each, where
// cpu_directions_at_once says so. The caller's thread-local state (inference
// mode, the dispatch keys excluded below autograd) holds on the thread of either
// direction: the 16-bit conversions there write into the results.
template <typename F>
void for_both_directions(const LayerInputs& in, const LayerGeometry& g, bool backward,
                         const F& run) {
  if (in.input.is_cpu() && cpu_directions_at_once(in, g, backward)) {
    const at::ThreadLocalState caller;
    at::parallel_for(0, 2, 1, [&](int64_t b, int64_t e) {
      const at::ThreadLocalStateGuard guard(caller);
      for (int64_t d = b; d < e; ++d) run(static_cast<int>(d));
    });
  } else {
    for (int d = 0; d < 2; ++d) run(d);
  }
}

}  // namespace

BidirectionalResult layer_forward_bidirectional(const LayerInputs& fwd, const LayerInputs& bwd,
                                                bool training, const char* op) {
  const Directions d = split_directions(fwd, bwd, op);
  PreparedForward p[2] = {prepare_forward(d.in[0], training, d.names[0].c_str(), false),
                          prepare_forward(d.in[1], training, d.names[1].c_str(), false)};
  check_same_widths(p[0].g, p[1].g, op);
  for_both_directions(p[0].in, p[0].g, false,
                      [&](int i) { run_prepared(p[i], training, d.names[i].c_str()); });
  BidirectionalResult r;
  r.output = at::cat({p[0].out.output, p[1].out.output}, -1);
  r.h_n = at::stack({p[0].out.h_n, p[1].out.h_n});
  r.c_n = fwd.cell.kind == CellKind::kLstm ? at::stack({p[0].out.c_n, p[1].out.c_n})
                                           : empty0(fwd.input);
  for (int i = 0; i < 2; ++i) r.saved[i] = p[i].out.saved;
  return r;
}

BidirectionalGradResult layer_backward_bidirectional(const LayerInputs& fwd,
                                                     const LayerInputs& bwd,
                                                     const BidirectionalGradInputs& gi,
                                                     const char* op) {
  const Directions d = split_directions(fwd, bwd, op);
  const LayerGeometry g = check_layer(d.in[0], d.names[0].c_str());
  const LayerGeometry g_reverse = check_layer(d.in[1], d.names[1].c_str());
  check_same_widths(g, g_reverse, op);
  const Tensor& x = fwd.input;
  check_output_grads(x, g, 2, gi.grad_output, gi.output, gi.grad_h_n, gi.grad_c_n, false, op);
  const auto row = [](const OptTensor& t, int i) {
    return t.has_value() ? OptTensor(t->select(0, i)) : std::nullopt;
  };
  GradInputs per[2];
  for (int i = 0; i < 2; ++i)
    per[i] = GradInputs{gi.grad_output.narrow(-1, i * g.P, g.P),
                        row(gi.grad_h_n, i),
                        row(gi.grad_c_n, i),
                        gi.output.narrow(-1, i * g.P, g.P),
                        gi.saved[i],
                        gi.need_input_grad,
                        gi.need_weight_grads[i]};
  PreparedBackward p[2] = {prepare_backward(d.in[0], g, per[0], d.names[0].c_str()),
                           prepare_backward(d.in[1], g_reverse, per[1], d.names[1].c_str())};
  for_both_directions(p[0].in, g, true, [&](int i) { run_prepared(p[i], d.names[i].c_str()); });
  BidirectionalGradResult r;
  for (int i = 0; i < 2; ++i) r.direction[i] = std::move(p[i].out);
  GradResult& f = r.direction[0];
  r.grad_input = gi.need_input_grad ? f.grad_input.add_(r.direction[1].grad_input) : f.grad_input;
  r.grad_h0 = at::stack({f.grad_h0, r.direction[1].grad_h0});
  r.grad_c0 = fwd.cell.kind == CellKind::kLstm ? at::stack({f.grad_c0, r.direction[1].grad_c0})
                                                : empty0(x);
  return r;
}

GradResult layer_backward(const LayerInputs& in, const GradInputs& gi, const char* op) {
  PreparedBackward p = prepare_backward(in, check_layer(in, op), gi, op);
  run_prepared(p, op);
  return std::move(p.out);
}

}  // namespace fusedrnn
