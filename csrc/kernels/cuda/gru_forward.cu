// GRU forward steps, one thread per (row, hidden unit), cell math from cells.h.
//
// reset_after=True (GruForwardUnit): r and z take both biases, n takes b_in
// outside and b_hn inside r*(.): n = tanh(xn + b_in + r*(hn + b_hn)). Saves
// r, z, n and hn = W_hn h + b_hn (the backward needs hn for dr).
// reset_after=False: the product W_hn (r*h) needs r of every unit, so a step is
// two passes around that product: rz (r, z and r*h), then n (n and h').
#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kTraining>
struct GruForwardUnit {
  using A = acc_t<S>;
  int64_t u;
  A br, bz, b_in, b_hn;

  __device__ GruForwardUnit(const GruForwardParams<S>& p, int64_t unit) : u(unit) {
    const int64_t H = p.H;
    br = load_or_zero(p.b_ih, u) + load_or_zero(p.b_hh, u);
    bz = load_or_zero(p.b_ih, H + u) + load_or_zero(p.b_hh, H + u);
    b_in = load_or_zero(p.b_ih, 2 * H + u);
    b_hn = load_or_zero(p.b_hh, 2 * H + u);
  }

  // What row i reads from global memory before its cell math (see
  // LstmForwardUnit::In): Gx of r, z, n and the state h.
  struct In {
    A x[3];
    A h;
  };

  __device__ In load(const GruForwardParams<S>& p, int64_t i) const {
    In in;
    const S* gx = p.gx + i * 3 * p.H + u;
#pragma unroll
    for (int g = 0; g < 3; ++g) in.x[g] = to_acc(gx[g * p.H]);
    in.h = to_acc(p.h_in[i * p.H + u]);
    return in;
  }

  __device__ void operator()(const GruForwardParams<S>& p, int64_t i) const {
    (*this)(p, i, load(p, i));
  }

  __device__ void operator()(const GruForwardParams<S>& p, int64_t i, const In& in) const {
    const int64_t H = p.H;
    const S* gh = p.gh;
    const GhLayout& gl = p.gl;
    const A hn = to_acc(gh[gl.at(i, 3, 2, u)]) + b_hn;
    A r, z, n, h_new;
    gru_forward(in.x[0] + to_acc(gh[gl.at(i, 3, 0, u)]) + br,
                in.x[1] + to_acc(gh[gl.at(i, 3, 1, u)]) + bz, in.x[2] + b_in, hn, in.h, r, z, n,
                h_new);
    const S hs = from_acc<S>(h_new);
    p.h[i * H + u] = hs;
    p.y[i * H + u] = hs;
    if (kTraining) {
      S* gr = p.gates + i * 4 * H + u;
      gr[0] = from_acc<S>(r);
      gr[H] = from_acc<S>(z);
      gr[2 * H] = from_acc<S>(n);
      gr[3 * H] = from_acc<S>(hn);
    }
  }
};

// reset_before, part 1: r = sigmoid(.), z = sigmoid(.), r*h. Reads the state,
// does not write it (part 2 does, after the W_hn product).
template <typename S>
struct GruRzUnit {
  using A = acc_t<S>;
  int64_t u;
  A br, bz;

  __device__ GruRzUnit(const GruForwardParams<S>& p, int64_t unit) : u(unit) {
    const int64_t H = p.H;
    br = load_or_zero(p.b_ih, u) + load_or_zero(p.b_hh, u);
    bz = load_or_zero(p.b_ih, H + u) + load_or_zero(p.b_hh, H + u);
  }

  __device__ void operator()(const GruForwardParams<S>& p, int64_t i) const {
    const int64_t H = p.H;
    const S* gx = p.gx + i * 3 * H + u;
    const A r = gru_gate(to_acc(gx[0]) + to_acc(p.gh[p.gl.at(i, 2, 0, u)]) + br);
    p.rh[i * H + u] = from_acc<S>(r * to_acc(p.h_in[i * H + u]));
    if (p.gates != nullptr) p.gates[i * 3 * H + u] = from_acc<S>(r);
    const A z = gru_gate(to_acc(gx[H]) + to_acc(p.gh[p.gl.at(i, 2, 1, u)]) + bz);
    p.z[i * p.ld_z + u] = from_acc<S>(z);
  }
};

// reset_before, part 2: n = tanh(xn + b_in + W_hn (r*h) + b_hn), h' = n + z*(h - n).
template <typename S>
struct GruNUnit {
  using A = acc_t<S>;
  int64_t u;
  A bn;

  __device__ GruNUnit(const GruForwardParams<S>& p, int64_t unit) : u(unit) {
    bn = load_or_zero(p.b_ih, 2 * p.H + u) + load_or_zero(p.b_hh, 2 * p.H + u);
  }

  __device__ void operator()(const GruForwardParams<S>& p, int64_t i) const {
    const int64_t H = p.H;
    const A pn = to_acc(p.gx[i * 3 * H + 2 * H + u]) + to_acc(p.gh[p.gl.at(i, 1, 0, u)]) + bn;
    A n, h_new;
    gru_reset_before_output(pn, to_acc(p.z[i * p.ld_z + u]), to_acc(p.h_in[i * H + u]), n,
                            h_new);
    const S hs = from_acc<S>(h_new);
    p.h[i * H + u] = hs;
    p.y[i * H + u] = hs;
    if (p.gates != nullptr) p.gates[i * 3 * H + 2 * H + u] = from_acc<S>(n);
  }
};

// Persistent forward (persistent.cuh). reset_after: one product (r, z, hn rows)
// and one barrier per step. reset_before: the r, z product, part 1, a barrier
// (r*h of every unit is then in global memory), the W_hn product, part 2, a
// barrier.
template <typename S, bool kResetAfter, bool kTraining>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    gru_persistent_forward_kernel(const GruPersistentForward<S> a) {
  const int64_t H = a.base.H, N = a.seq.N;
  const int U = a.lay.units;
  const UnitSlot sl = unit_slot(U);
  const bool has_unit = sl.u < H;
  const int64_t uu = has_unit ? sl.u : 0;
  const StepTrace trace(a.trace, a.s0, a.s1, true);
  const BlockSmem<S> sm(a.lay);
  load_gate_rows(sm.ws, a.lay.ldw, a.w_hh, H, H, 3, U, sl.u0);
  S* const hbuf = state_in(sm, a.hbuf, 2 * N * H);
  const GruForwardUnit<S, kTraining> unit_after(a.base, uu);
  const GruRzUnit<S> unit_rz(a.base, uu);
  const GruNUnit<S> unit_n(a.base, uu);
  __syncthreads();
  // Gh of the block's units for gate blocks g0.. (in shared memory), into p.
  const auto product = [&](GruForwardParams<S>& p, int g0, int gates, const S* x, int64_t rows) {
    p.gl = gate_product(sm, a.lay, sl, g0, gates, x, H, rows, H);
    p.gh = sm.gh;
    __syncthreads();
  };
  for (int64_t s = a.s0; s < a.s1; ++s) {
    trace.mark(s, kTraceBegin);
    const StepInfo st = a.seq.step(s);
    if (s + 1 < a.s1) {
      const StepInfo nx = a.seq.step(s + 1);
      prefetch_unit_slices(a.gx + (nx.offset - a.gx_row0) * 3 * H, nx.rows, 3 * H, 3, H, sl.u0,
                           U, H);
    }
    const S* h = hbuf + (s & 1) * N * H;
    S* h_next = hbuf + ((s + 1) & 1) * N * H;
    GruForwardParams<S> p = a.base;
    p.rows = st.rows;
    p.gx = a.gx + (st.offset - a.gx_row0) * 3 * H;
    p.h_in = h;
    p.h = h_next;
    p.y = a.base.y + st.offset * H;
    if (kResetAfter) {
      if (kTraining) p.gates = a.base.gates + st.offset * 4 * H;
      Preloaded<GruForwardUnit<S, kTraining>> pre;
      preload_rows(unit_after, p, sl, has_unit, pre);
      product(p, 0, 3, h, st.rows);
      trace.mark(s, kTraceProduct);
      run_rows(unit_after, p, sl, has_unit, pre, [](int64_t) {});
    } else {
      product(p, 0, 2, h, st.rows);
      trace.mark(s, kTraceProduct);
      S* rh = a.rh_rows != nullptr ? a.rh_rows + st.offset * H : a.rh;
      p.rh = rh;
      if (kTraining) {
        p.gates = a.base.gates + st.offset * 3 * H;
        p.z = p.gates + H;
      }
      if (has_unit)
        for (int64_t i = sl.row0; i < st.rows; i += sl.row_step) unit_rz(p, i);
      step_barrier();
      product(p, 2, 1, rh, st.rows);
      if (has_unit)
        for (int64_t i = sl.row0; i < st.rows; i += sl.row_step) unit_n(p, i);
    }
    if (has_unit)
      for (int64_t i = sl.row0; i < st.rows; i += sl.row_step)
        if (last_step_of_row(a.seq, s, i)) a.h_n[i * H + sl.u] = h_next[i * H + sl.u];
    trace.units(s);
    step_barrier();
    trace.mark(s, kTraceEnd);
  }
  state_out(sm, a.hbuf, 2 * N * H);
  trace.finish();
}

template <typename S, typename F>
cudaError_t with_persistent_forward_kernel(const GruPersistentForward<S>& a, const F& f) {
  return bool_switch(a.reset_after, [&](auto kResetAfter) {
    return bool_switch(a.base.gates != nullptr, [&](auto kTraining) {
      return f(gru_persistent_forward_kernel<S, decltype(kResetAfter)::value,
                                             decltype(kTraining)::value>);
    });
  });
}

}  // namespace

template <typename S>
cudaError_t gru_forward_launch(const GruForwardParams<S>& p, cudaStream_t stream) {
  if (!p.gl.valid()) return cudaErrorInvalidValue;
  return bool_switch(p.gates != nullptr, [&](auto kTraining) {
    using Unit = GruForwardUnit<S, decltype(kTraining)::value>;
    return launch_step(step_kernel<Unit, GruForwardParams<S>>, p.rows, p.H, p, stream);
  });
}

template <typename S>
cudaError_t gru_reset_before_forward_rz_launch(const GruForwardParams<S>& p,
                                               cudaStream_t stream) {
  if (!p.gl.valid()) return cudaErrorInvalidValue;
  return launch_step(step_kernel<GruRzUnit<S>, GruForwardParams<S>>, p.rows, p.H, p, stream);
}

template <typename S>
cudaError_t gru_reset_before_forward_n_launch(const GruForwardParams<S>& p,
                                              cudaStream_t stream) {
  if (!p.gl.valid()) return cudaErrorInvalidValue;
  return launch_step(step_kernel<GruNUnit<S>, GruForwardParams<S>>, p.rows, p.H, p, stream);
}

template <typename S>
cudaError_t gru_persistent_forward_plan(const GruPersistentForward<S>& a, PersistentPlan& plan) {
  return with_persistent_forward_kernel(a, [&](auto kernel) {
    return plan_persistent<S>(kernel, a.seq.N, a.base.H, 3, a.base.H, 3, 3, 0, a.base.H,
                              a.tf32, a.stage, a.grid, plan);
  });
}

template <typename S>
cudaError_t gru_persistent_forward_launch(const GruPersistentForward<S>& a,
                                          const PersistentPlan& plan, cudaStream_t stream) {
  return with_persistent_forward_kernel(a, [&](auto kernel) {
    GruPersistentForward<S> b = a;
    b.lay = plan.lay;
    return launch_persistent(kernel, plan, b, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(gru_forward_launch, GruForwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_forward_rz_launch, GruForwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_forward_n_launch, GruForwardParams)
FRNN_INSTANTIATE_PERSISTENT(gru_persistent_forward, GruPersistentForward)
