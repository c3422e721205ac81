// Elman RNN forward step: h' = act(Gx + Gh + b_ih + b_hh), act = tanh or relu
// (cells.h rnn_forward), one thread per (row, hidden unit). Saves nothing: the
// backward reads the activation from the output.
#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kRelu>
struct RnnForwardUnit {
  using A = acc_t<S>;
  int64_t u;
  A bias;
  __device__ RnnForwardUnit(const RnnForwardParams<S>& p, int64_t unit)
      : u(unit), bias(load_or_zero(p.b_ih, unit) + load_or_zero(p.b_hh, unit)) {}

  // What row i reads from global memory before its cell math (see
  // LstmForwardUnit::In): its Gx.
  struct In {
    acc_t<S> x;
  };

  __device__ In load(const RnnForwardParams<S>& p, int64_t i) const {
    return In{to_acc(p.gx[i * p.H + u])};
  }

  __device__ void operator()(const RnnForwardParams<S>& p, int64_t i) const {
    (*this)(p, i, load(p, i));
  }

  __device__ void operator()(const RnnForwardParams<S>& p, int64_t i, const In& in) const {
    const int64_t k = i * p.H + u;
    const S h = from_acc<S>(rnn_forward<kRelu>(in.x + to_acc(p.gh[p.gl.at(i, 1, 0, u)]) + bias));
    p.h[k] = h;
    p.y[k] = h;
  }
};

// Persistent forward (persistent.cuh): Gh of the block's units, the unit pass,
// one barrier per step.
template <typename S, bool kRelu>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    rnn_persistent_forward_kernel(const RnnPersistentForward<S> a) {
  const int64_t H = a.base.H, N = a.seq.N;
  const int U = a.lay.units;
  const UnitSlot sl = unit_slot(U);
  const bool has_unit = sl.u < H;
  const StepTrace trace(a.trace, a.s0, a.s1, true);
  const BlockSmem<S> sm(a.lay);
  load_gate_rows(sm.ws, a.lay.ldw, a.w_hh, H, H, 1, U, sl.u0);
  S* const hbuf = state_in(sm, a.hbuf, 2 * N * H);
  using Unit = RnnForwardUnit<S, kRelu>;
  const Unit unit(a.base, has_unit ? sl.u : 0);
  __syncthreads();
  for (int64_t s = a.s0; s < a.s1; ++s) {
    trace.mark(s, kTraceBegin);
    const StepInfo st = a.seq.step(s);
    if (s + 1 < a.s1) {
      const StepInfo nx = a.seq.step(s + 1);
      prefetch_unit_slices(a.gx + (nx.offset - a.gx_row0) * H, nx.rows, H, 1, 0, sl.u0, U, H);
    }
    const S* h = hbuf + (s & 1) * N * H;
    S* h_next = hbuf + ((s + 1) & 1) * N * H;
    RnnForwardParams<S> p = a.base;
    p.rows = st.rows;
    p.gx = a.gx + (st.offset - a.gx_row0) * H;
    p.h = h_next;
    p.y = a.base.y + st.offset * H;
    Preloaded<Unit> pre;
    preload_rows(unit, p, sl, has_unit, pre);
    p.gl = gate_product(sm, a.lay, sl, 0, 1, h, H, st.rows, H);
    p.gh = sm.gh;
    __syncthreads();
    trace.mark(s, kTraceProduct);
    run_rows(unit, p, sl, has_unit, pre, [&](int64_t i) {
      if (last_step_of_row(a.seq, s, i)) a.h_n[i * H + sl.u] = h_next[i * H + sl.u];
    });
    trace.units(s);
    step_barrier();
    trace.mark(s, kTraceEnd);
  }
  state_out(sm, a.hbuf, 2 * N * H);
  trace.finish();
}

template <typename S, typename F>
cudaError_t with_persistent_forward_kernel(const RnnForwardParams<S>& p, const F& f) {
  return bool_switch(p.relu, [&](auto kRelu) {
    return f(rnn_persistent_forward_kernel<S, decltype(kRelu)::value>);
  });
}

}  // namespace

template <typename S>
cudaError_t rnn_forward_launch(const RnnForwardParams<S>& p, cudaStream_t stream) {
  if (!p.gl.valid()) return cudaErrorInvalidValue;
  return bool_switch(p.relu, [&](auto kRelu) {
    using Unit = RnnForwardUnit<S, decltype(kRelu)::value>;
    return launch_step(step_kernel<Unit, RnnForwardParams<S>>, p.rows, p.H, p, stream);
  });
}

template <typename S>
cudaError_t rnn_persistent_forward_plan(const RnnPersistentForward<S>& a, PersistentPlan& plan) {
  return with_persistent_forward_kernel(a.base, [&](auto kernel) {
    return plan_persistent<S>(kernel, a.seq.N, a.base.H, 1, a.base.H, 1, 1, 0, a.base.H, a.tf32,
                              a.stage, a.grid, plan);
  });
}

template <typename S>
cudaError_t rnn_persistent_forward_launch(const RnnPersistentForward<S>& a,
                                          const PersistentPlan& plan, cudaStream_t stream) {
  return with_persistent_forward_kernel(a.base, [&](auto kernel) {
    RnnPersistentForward<S> b = a;
    b.lay = plan.lay;
    return launch_persistent(kernel, plan, b, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(rnn_forward_launch, RnnForwardParams)
FRNN_INSTANTIATE_PERSISTENT(rnn_persistent_forward, RnnPersistentForward)
