// Elman RNN backward step: dp = (dy + dh) * act'(p), written with the saved
// output h' = act(p) (cells.h rnn_backward), one thread per (row, hidden unit).
// The torch layer then overwrites dh with dG W_hh for the previous step.
#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kRelu>
struct RnnBackwardUnit {
  int64_t u;
  __device__ RnnBackwardUnit(const RnnBackwardParams<S>&, int64_t unit) : u(unit) {}

  // What row i reads from global memory besides the recurrent dL/dh (see
  // LstmForwardUnit::In): dL/dy and the output h'.
  struct In {
    acc_t<S> dy, y;
  };

  __device__ In load(const RnnBackwardParams<S>& p, int64_t i) const {
    const int64_t k = i * p.H + u;
    return In{to_acc(p.dy[k]), to_acc(p.y[k])};
  }

  __device__ void operator()(const RnnBackwardParams<S>& p, int64_t i) const {
    (*this)(p, i, load(p, i));
  }

  __device__ void operator()(const RnnBackwardParams<S>& p, int64_t i, const In& in) const {
    const auto dh = in.dy + to_acc(p.dh[p.dl.at(i, 1, 0, u)]);
    p.dG[i * p.H + u] = from_acc<S>(rnn_backward<kRelu>(dh, in.y));
    copy_prev_row(p.hprev, p.split, i, u, p.H);
  }
};

// Persistent backward (persistent.cuh): dh of the block's units = dG[s+1] W_hh,
// the unit pass, one barrier per step; after the last step dL/dh0.
template <typename S, bool kRelu>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    rnn_persistent_backward_kernel(const RnnPersistentBackward<S> a) {
  const int64_t H = a.base.H;
  const int U = a.lay.units;
  const UnitSlot sl = unit_slot(U);
  const bool has_unit = sl.u < H;
  const StepTrace trace(a.trace, a.s0, a.s1, false);
  const BlockSmem<S> sm(a.lay);
  load_unit_columns(sm.ws, a.lay.ldw, a.w_hh, H, H, U, sl.u0);
  using Unit = RnnBackwardUnit<S, kRelu>;
  const Unit unit(a.base, has_unit ? sl.u : 0);
  __syncthreads();
  const auto recurrent = [&](int64_t s) {
    const StepInfo st = a.seq.step(s);
    column_product(sm, a.lay, 0, U, sl.u0, H, 0, a.base.dG + st.offset * H, H, st.rows, H, a.dh,
                   H, false);
  };
  for (int64_t s = a.s1 - 1; s >= a.s0; --s) {
    trace.mark(s, kTraceBegin);
    if (s - 1 >= a.s0) {
      const StepInfo nx = a.seq.step(s - 1);
      prefetch_unit_slices(a.base.y + nx.offset * H, nx.rows, H, 1, 0, sl.u0, U, H);
      prefetch_unit_slices(a.base.dy + nx.offset * H, nx.rows, H, 1, 0, sl.u0, U, H);
    }
    const StepInfo st = a.seq.step(s);
    RnnBackwardParams<S> p = a.base;
    p.rows = st.rows;
    p.split = st.split;
    p.dy = a.base.dy + st.offset * H;
    p.dh = a.dh;
    p.dl = GhLayout{static_cast<int>(H), 0};
    p.y = a.base.y + st.offset * H;
    p.dG = a.base.dG + st.offset * H;
    p.hprev = prev_rows_at(a.base.hprev, st);
    Preloaded<Unit> pre;
    preload_rows(unit, p, sl, has_unit, pre);
    if (has_step(a.seq, s + 1)) {
      const StepInfo pv = a.seq.step(s + 1);
      p.dl = recurrent_to_block(sm, a.lay, sl, has_unit, a.base.dG + pv.offset * H, H, H, pv.rows,
                                st.rows, a.dh, H);
      p.dh = sm.gh;
    }
    __syncthreads();
    trace.mark(s, kTraceProduct);
    run_rows(unit, p, sl, has_unit, pre, [](int64_t) {});
    trace.units(s);
    step_barrier();
    trace.mark(s, kTraceEnd);
  }
  if (a.s0 == 0) recurrent(0);
  trace.finish();
}

template <typename S, typename F>
cudaError_t with_persistent_backward_kernel(const RnnBackwardParams<S>& p, const F& f) {
  return bool_switch(p.relu, [&](auto kRelu) {
    return f(rnn_persistent_backward_kernel<S, decltype(kRelu)::value>);
  });
}

}  // namespace

template <typename S>
cudaError_t rnn_backward_launch(const RnnBackwardParams<S>& p, cudaStream_t stream) {
  if (!p.dl.valid()) return cudaErrorInvalidValue;
  return bool_switch(p.relu, [&](auto kRelu) {
    using Unit = RnnBackwardUnit<S, decltype(kRelu)::value>;
    return launch_step(step_kernel<Unit, RnnBackwardParams<S>>, p.rows, p.H, p, stream);
  });
}

template <typename S>
cudaError_t rnn_persistent_backward_plan(const RnnPersistentBackward<S>& a,
                                         PersistentPlan& plan) {
  return with_persistent_backward_kernel(a.base, [&](auto kernel) {
    return plan_persistent<S>(kernel, a.seq.N, a.base.H, 1, a.base.H, 1, 1, 0, 0, a.tf32, a.stage,
                              a.grid, plan);
  });
}

template <typename S>
cudaError_t rnn_persistent_backward_launch(const RnnPersistentBackward<S>& a,
                                           const PersistentPlan& plan, cudaStream_t stream) {
  return with_persistent_backward_kernel(a.base, [&](auto kernel) {
    RnnPersistentBackward<S> b = a;
    b.lay = plan.lay;
    return launch_persistent(kernel, plan, b, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(rnn_backward_launch, RnnBackwardParams)
FRNN_INSTANTIATE_PERSISTENT(rnn_persistent_backward, RnnPersistentBackward)
