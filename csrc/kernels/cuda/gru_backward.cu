// GRU backward steps (BPTT), one thread per (row, hidden unit), cell math from
// cells.h. dh holds the recurrent dL/dh' on entry; these passes replace it by
// the part of dL/dh that does not pass through W_hh (z*dh', and for
// reset_before r*dL/d(r*h)); the torch layer then adds the GEMM part.
//
// The previous state h of row i is the previous step's output (i < split) or h0.
#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S>
__device__ __forceinline__ acc_t<S> prev_h(const GruBackwardParams<S>& p, int64_t i, int64_t u) {
  return to_acc(i < p.split ? p.h_prev[i * p.H + u] : p.h0[i * p.H + u]);
}

// reset_after: dG (r, z, hn, xn) [rows, 4H]. The first three line up with W_hh's
// rows, so the recurrent product is one GEMM; xn is the input side of n.
template <typename S>
struct GruBackwardUnit {
  using A = acc_t<S>;
  int64_t u;
  __device__ GruBackwardUnit(const GruBackwardParams<S>&, int64_t unit) : u(unit) {}

  // What row i reads from global memory besides dL/dh (see LstmForwardUnit::In):
  // dL/dy, the saved r, z, n, hn and the previous state h.
  struct In {
    A dy;
    A g[4];
    A h;
  };

  __device__ In load(const GruBackwardParams<S>& p, int64_t i) const {
    const int64_t H = p.H;
    In in;
    in.dy = to_acc(p.dy[i * H + u]);
    const S* g = p.gates + i * 4 * H + u;
#pragma unroll
    for (int k = 0; k < 4; ++k) in.g[k] = to_acc(g[k * H]);
    in.h = prev_h(p, i, u);
    return in;
  }

  __device__ void operator()(const GruBackwardParams<S>& p, int64_t i) const {
    (*this)(p, i, load(p, i));
  }

  __device__ void operator()(const GruBackwardParams<S>& p, int64_t i, const In& in) const {
    const int64_t H = p.H;
    S* dhp = p.dh + p.dl.at(i, 1, 0, u);
    const A dh = in.dy + to_acc(*dhp);
    A dpn, dpz, dh_prev, dpr, dhn;
    gru_update_backward(dh, in.g[1], in.g[2], in.h, dpn, dpz, dh_prev);
    gru_reset_after_backward(dpn, in.g[0], in.g[3], dpr, dhn);
    S* d = p.dG + i * 4 * H + u;
    d[0] = from_acc<S>(dpr);
    d[H] = from_acc<S>(dpz);
    d[2 * H] = from_acc<S>(dhn);
    d[3 * H] = from_acc<S>(dpn);
    *dhp = from_acc<S>(dh_prev);
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
};

// reset_before, part 1: dG z and n [rows, 3H] (r, z, n), dh = z*dh'.
template <typename S>
struct GruZnBackwardUnit {
  using A = acc_t<S>;
  int64_t u;
  __device__ GruZnBackwardUnit(const GruBackwardParams<S>&, int64_t unit) : u(unit) {}

  __device__ void operator()(const GruBackwardParams<S>& p, int64_t i) const {
    const int64_t H = p.H;
    S* dhp = p.dh + p.dl.at(i, 1, 0, u);
    const A dh = to_acc(p.dy[i * H + u]) + to_acc(*dhp);
    const S* g = p.gates + i * 3 * H + u;
    A dpn, dpz, dh_prev;
    gru_update_backward(dh, to_acc(g[H]), to_acc(g[2 * H]), prev_h(p, i, u), dpn, dpz, dh_prev);
    S* d = p.dG + i * 3 * H + u;
    d[H] = from_acc<S>(dpz);
    d[2 * H] = from_acc<S>(dpn);
    *dhp = from_acc<S>(dh_prev);
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
};

// reset_before, part 2, after drh = dG_n W_hn: dG r, dh += r*drh.
template <typename S>
struct GruRBackwardUnit {
  using A = acc_t<S>;
  int64_t u;
  __device__ GruRBackwardUnit(const GruBackwardParams<S>&, int64_t unit) : u(unit) {}

  __device__ void operator()(const GruBackwardParams<S>& p, int64_t i) const {
    const int64_t H = p.H;
    S* dhp = p.dh + p.dl.at(i, 1, 0, u);
    A dpr, dh_r;
    gru_reset_before_backward(to_acc(p.drh[i * H + u]), to_acc(p.gates[i * 3 * H + u]),
                              prev_h(p, i, u), dpr, dh_r);
    p.dG[i * 3 * H + u] = from_acc<S>(dpr);
    *dhp = from_acc<S>(to_acc(*dhp) + dh_r);
  }
};

// Persistent backward (persistent.cuh). The block holds the columns of its
// units of all 3H rows of W_hh, and its units' slice of the state dh [N, U] in
// shared memory for the whole launch (read from a.dh first, written back
// last): only its own products and unit functors touch it. Each step: dh +=
// dG[s+1] (r, z, hn columns; r, z for reset_before) times those columns, then
// the unit pass (reset_after: its row loads issued before the product);
// reset_before also a barrier, drh = dG_n[s] W_hn for its units, part 2. After
// the last step, the same product gives dL/dh0.
template <typename S, bool kResetAfter>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    gru_persistent_backward_kernel(const GruPersistentBackward<S> a) {
  const int64_t H = a.base.H, N = a.seq.N, ldg = kResetAfter ? 4 * H : 3 * H;
  const int64_t K = kResetAfter ? 3 * H : 2 * H;  // dG columns through W_hh in one product
  const int U = a.lay.units;
  const UnitSlot sl = unit_slot(U);
  const bool has_unit = sl.u < H;
  const int64_t uu = has_unit ? sl.u : 0;
  const StepTrace trace(a.trace, a.s0, a.s1, false);
  const BlockSmem<S> sm(a.lay);
  load_unit_columns(sm.ws, a.lay.ldw, a.w_hh, H, 3 * H, U, sl.u0);
  S* dhb = sm.gh;
  const GhLayout dl{U, static_cast<int>(sl.u0)};
  const int64_t units = H - sl.u0 < U ? H - sl.u0 : U;
  for (int64_t e = threadIdx.x; e < N * U; e += blockDim.x)
    dhb[e] = e % U < units ? a.dh[(e / U) * H + sl.u0 + e % U] : from_acc<S>(acc_t<S>(0));
  using UnitAfter = GruBackwardUnit<S>;
  const UnitAfter unit_after(a.base, uu);
  const GruZnBackwardUnit<S> unit_zn(a.base, uu);
  const GruRBackwardUnit<S> unit_r(a.base, uu);
  __syncthreads();
  // dhb[:rows] += dG[step rows, 0 : K] W_hh[0 : K, block's units]
  const auto recurrent = [&](const StepInfo& st) {
    block_product(sm, a.lay, 0, U, 0, a.base.dG + st.offset * ldg, ldg, st.rows, K,
                  [&](int64_t n, int m, acc_t<S> v) {
                    S* o = dhb + n * U + m;
                    *o = from_acc<S>(to_acc(*o) + v);
                  });
  };
  for (int64_t s = a.s1 - 1; s >= a.s0; --s) {
    trace.mark(s, kTraceBegin);
    if (s - 1 >= a.s0) {
      const StepInfo nx = a.seq.step(s - 1);
      prefetch_unit_slices(a.base.gates + nx.offset * ldg, nx.rows, ldg,
                           static_cast<int>(ldg / H), H, sl.u0, U, H);
      prefetch_unit_slices(a.base.dy + nx.offset * H, nx.rows, H, 1, 0, sl.u0, U, H);
    }
    const StepInfo st = a.seq.step(s);
    GruBackwardParams<S> p = a.base;
    p.rows = st.rows;
    p.split = st.split;
    p.dy = a.base.dy + st.offset * H;
    p.dh = dhb;
    p.dl = dl;
    p.gates = a.base.gates + st.offset * ldg;
    p.h_prev = st.split > 0 ? a.base.h_prev + st.prev_offset * H : nullptr;
    p.dG = a.base.dG + st.offset * ldg;
    p.hprev = prev_rows_at(a.base.hprev, st);
    Preloaded<UnitAfter> pre;
    if (kResetAfter) preload_rows(unit_after, p, sl, has_unit, pre);
    if (has_step(a.seq, s + 1)) recurrent(a.seq.step(s + 1));
    __syncthreads();
    trace.mark(s, kTraceProduct);
    if (kResetAfter) {
      run_rows(unit_after, p, sl, has_unit, pre, [](int64_t) {});
    } else {
      if (has_unit)
        for (int64_t i = sl.row0; i < st.rows; i += sl.row_step) unit_zn(p, i);
      step_barrier();
      column_product(sm, a.lay, 0, U, sl.u0, H, 2 * H, p.dG + 2 * H, ldg, st.rows, H, a.rh, H,
                     false);
      __syncthreads();
      p.drh = a.rh;
      if (has_unit)
        for (int64_t i = sl.row0; i < st.rows; i += sl.row_step) unit_r(p, i);
    }
    trace.units(s);
    step_barrier();
    trace.mark(s, kTraceEnd);
  }
  if (a.s0 == 0) recurrent(a.seq.step(0));
  __syncthreads();
  for (int64_t e = threadIdx.x; e < N * U; e += blockDim.x)
    if (e % U < units) a.dh[(e / U) * H + sl.u0 + e % U] = dhb[e];
  trace.finish();
}

template <typename S, typename F>
cudaError_t with_persistent_backward_kernel(const GruPersistentBackward<S>& a, const F& f) {
  return bool_switch(a.reset_after, [&](auto kResetAfter) {
    return f(gru_persistent_backward_kernel<S, decltype(kResetAfter)::value>);
  });
}

}  // namespace

template <typename S>
cudaError_t gru_backward_launch(const GruBackwardParams<S>& p, cudaStream_t stream) {
  if (!p.dl.valid()) return cudaErrorInvalidValue;
  return launch_step(step_kernel<GruBackwardUnit<S>, GruBackwardParams<S>>, p.rows, p.H, p,
                     stream);
}

template <typename S>
cudaError_t gru_reset_before_backward_zn_launch(const GruBackwardParams<S>& p,
                                                cudaStream_t stream) {
  if (!p.dl.valid()) return cudaErrorInvalidValue;
  return launch_step(step_kernel<GruZnBackwardUnit<S>, GruBackwardParams<S>>, p.rows, p.H, p,
                     stream);
}

template <typename S>
cudaError_t gru_reset_before_backward_r_launch(const GruBackwardParams<S>& p,
                                               cudaStream_t stream) {
  if (!p.dl.valid()) return cudaErrorInvalidValue;
  return launch_step(step_kernel<GruRBackwardUnit<S>, GruBackwardParams<S>>, p.rows, p.H, p,
                     stream);
}

template <typename S>
cudaError_t gru_persistent_backward_plan(const GruPersistentBackward<S>& a, PersistentPlan& plan) {
  return with_persistent_backward_kernel(a, [&](auto kernel) {
    return plan_persistent<S>(kernel, a.seq.N, a.base.H, 1, 3 * a.base.H, 1, 1, 0, 0, a.tf32,
                              a.stage, a.grid, plan);
  });
}

template <typename S>
cudaError_t gru_persistent_backward_launch(const GruPersistentBackward<S>& a,
                                           const PersistentPlan& plan, cudaStream_t stream) {
  return with_persistent_backward_kernel(a, [&](auto kernel) {
    GruPersistentBackward<S> b = a;
    b.lay = plan.lay;
    return launch_persistent(kernel, plan, b, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(gru_backward_launch, GruBackwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_backward_zn_launch, GruBackwardParams)
FRNN_INSTANTIATE_LAUNCH(gru_reset_before_backward_r_launch, GruBackwardParams)
FRNN_INSTANTIATE_PERSISTENT(gru_persistent_backward, GruPersistentBackward)
