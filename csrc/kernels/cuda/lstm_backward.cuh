// LSTM backward step (BPTT): from dL/dh' and dL/dc', the pre-activation
// gradients dG, dL/dc (in place) and the peephole gradients, by cells.h
// (lstm_backward), one thread per (row, hidden unit). The torch layer then runs
// dh = dG W_hh for the previous step.
//
// Peephole gradients are summed over steps into a per-row buffer [N, (G-1)*H]:
// within a launch each (row, unit) belongs to one thread and launches are
// ordered on the stream, so the sums need no atomics and are deterministic;
// the torch layer reduces the rows once after the loop.
//
// Compiled once per element type: lstm_backward_{f32,f64,f16,bf16}.cu define FRNN_ELEMENT
// and include this file, which instantiates the launchers for that type alone.
#pragma once
#ifndef FRNN_ELEMENT
#error "lstm_backward.cuh is included by lstm_backward_<type>.cu, after it defines FRNN_ELEMENT"
#endif

#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kPeephole, bool kCoupled>
struct LstmBackwardUnit {
  using A = acc_t<S>;
  static constexpr int G = kCoupled ? 3 : 4;
  static constexpr int gi = 0, gf = kCoupled ? 0 : 1, gg = kCoupled ? 1 : 2, go = kCoupled ? 2 : 3;
  int64_t u;
  A wci, wcf, wco;

  __device__ LstmBackwardUnit(const LstmBackwardParams<S>& p, int64_t unit) : u(unit) {
    const int64_t H = p.H;
    const A zero(0);
    wci = kPeephole && !kCoupled ? to_acc(p.w_ch[u]) : zero;
    wcf = kPeephole ? to_acc(p.w_ch[(kCoupled ? 0 : H) + u]) : zero;
    wco = kPeephole ? to_acc(p.w_ch[(kCoupled ? H : 2 * H) + u]) : zero;
  }

  // What row i reads from global memory besides the recurrent dL/dh (see
  // LstmForwardUnit::In): dL/dh of the output, the saved gates and cell states,
  // and dL/dc'.
  struct In {
    A dh;
    A gate[G];
    A c_new, c, dc;
  };

  __device__ In load(const LstmBackwardParams<S>& p, int64_t i) const {
    const int64_t H = p.H;
    In in;
    in.dh = to_acc(p.dh[i * p.ld_dh + u]);
    const S* gr = p.gates + i * G * H + u;
#pragma unroll
    for (int g = 0; g < G; ++g) in.gate[g] = to_acc(gr[g * H]);
    in.c_new = to_acc(p.c_new[i * H + u]);
    in.c = to_acc(i < p.split ? p.c_prev[i * H + u] : p.c0[i * H + u]);
    in.dc = p.dc[i * H + u];
    return in;
  }

  __device__ void operator()(const LstmBackwardParams<S>& p, int64_t i) const {
    (*this)(p, i, load(p, i));
  }

  __device__ void operator()(const LstmBackwardParams<S>& p, int64_t i, const In& in) const {
    const int64_t H = p.H, GH = G * H;
    const A zero(0), one(1);
    A dh = in.dh;
    if (p.dh_rec != nullptr) dh += to_acc(p.dh_rec[p.rl.at(i, 1, 0, u)]);
    const A fg = in.gate[gf];
    // Coupled: i = 1 - f from the saved f, as the forward computed it.
    const A ig = kCoupled ? one - fg : in.gate[gi];
    const A gg_ = in.gate[gg];
    const A og = in.gate[go];
    const A c_new = in.c_new;
    const A c = in.c;
    A* dcp = p.dc + i * H + u;
    const A dc = in.dc;
    A dpi, dpf, dpg, dpo, dc_prev, dwi = zero, dwf = zero, dwo = zero;
    lstm_backward<kPeephole, kCoupled>(dh, dc, ig, fg, gg_, og, c, c_new, wci, wcf, wco, dpi,
                                       dpf, dpg, dpo, dc_prev, dwi, dwf, dwo);
    *dcp = dc_prev;
    S* d = p.dG + i * GH + u;
    if (!kCoupled) d[gi * H] = from_acc<S>(dpi);
    d[gf * H] = from_acc<S>(dpf);
    d[gg * H] = from_acc<S>(dpg);
    d[go * H] = from_acc<S>(dpo);
    if (kPeephole && p.dw_ch_rows != nullptr) {
      A* acc = p.dw_ch_rows + i * (G - 1) * H + u;
      if (!kCoupled) acc[0] += dwi;
      acc[(kCoupled ? 0 : H)] += dwf;
      acc[(kCoupled ? H : 2 * H)] += dwo;
    }
    copy_prev_row(p.hprev, p.split, i, u, H);
  }
};

// Persistent backward (persistent.cuh): each step, the recurrent dL/dh of the
// block's units from the dG of the step processed just before, then the unit
// functor and a step barrier; after the last step, dL/dh0. With a projection
// (kProj), dL/dh is P wide and block b owns its projection outputs
// [bV, bV + V): it holds their V columns of W_hh (length G*H) and, after them,
// the U columns of W_hr of its units (length P). The recurrent product gives
// dL/dh of its outputs, dL/dh = dy + that goes to dht, a barrier, then
// dL/dh' = dL/dh W_hr for its units (dr) feeds the unit functor.
template <typename S, bool kPeephole, bool kCoupled, bool kProj>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    lstm_persistent_backward_kernel(const LstmPersistentBackward<S> a) {
  using Unit = LstmBackwardUnit<S, kPeephole, kCoupled>;
  constexpr int G = Unit::G;
  const int64_t H = a.base.H, P = kProj ? a.proj_size : H, GH = G * H;
  const int U = a.lay.units;
  const UnitSlot sl = unit_slot(U);
  const bool has_unit = sl.u < H;
  // The outputs of the recurrent product: the block's projection outputs, or units.
  const int V = kProj ? a.lay.proj : U;
  const int64_t q0 = kProj ? static_cast<int64_t>(blockIdx.x) * V : sl.u0;
  const StepTrace trace(a.trace, a.s0, a.s1, false);
  const BlockSmem<S> sm(a.lay);
  load_unit_columns(sm.ws, a.lay.ldw, a.w_hh, P, GH, V, q0);
  if (kProj)
    load_unit_columns(sm.ws + static_cast<int64_t>(V) * a.lay.ldw, a.lay.ldw, a.w_hr, H, P, U,
                      sl.u0);
  const Unit unit(a.base, has_unit ? sl.u : 0);
  __syncthreads();
  // dh[:rows(s), block's outputs] = dG[s] W_hh[:, those]
  const auto recurrent = [&](int64_t s) {
    const StepInfo st = a.seq.step(s);
    column_product(sm, a.lay, 0, V, q0, P, 0, a.base.dG + st.offset * GH, GH, st.rows, GH, a.dh,
                   P, false);
  };
  for (int64_t s = a.s1 - 1; s >= a.s0; --s) {
    trace.mark(s, kTraceBegin);
    if (s - 1 >= a.s0) {
      const StepInfo nx = a.seq.step(s - 1);
      prefetch_unit_slices(a.base.gates + nx.offset * GH, nx.rows, GH, G, H, sl.u0, U, H);
      prefetch_unit_slices(a.base.c_new + nx.offset * H, nx.rows, H, 1, 0, sl.u0, U, H);
      if (kProj)
        prefetch_unit_slices(a.dy + nx.offset * P, nx.rows, P, 1, 0, q0, V, P);
      else
        prefetch_unit_slices(a.base.dh + nx.offset * a.base.ld_dh, nx.rows, a.base.ld_dh, 1, 0,
                             sl.u0, U, H);
    }
    const StepInfo st = a.seq.step(s);
    LstmBackwardParams<S> p = a.base;
    p.rows = st.rows;
    p.split = st.split;
    p.dh = kProj ? a.dr : a.base.dh + st.offset * a.base.ld_dh;
    p.ld_dh = kProj ? H : a.base.ld_dh;
    p.dh_rec = kProj ? nullptr : a.dh;
    p.rl = GhLayout{static_cast<int>(H), 0};
    p.gates = a.base.gates + st.offset * GH;
    p.c_new = a.base.c_new + st.offset * H;
    p.c_prev = st.split > 0 ? a.base.c_new + st.prev_offset * H : nullptr;
    p.dG = a.base.dG + st.offset * GH;
    p.hprev = prev_rows_at(a.base.hprev, st);
    // Without a projection, the row loads go out before the recurrent product, and
    // the product's rows of this step stay in shared memory (recurrent_to_block).
    Preloaded<Unit> pre;
    if (!kProj) preload_rows(unit, p, sl, has_unit, pre);
    if (has_step(a.seq, s + 1)) {
      if (kProj) {
        recurrent(s + 1);
      } else {
        const StepInfo pv = a.seq.step(s + 1);
        p.rl = recurrent_to_block(sm, a.lay, sl, has_unit, a.base.dG + pv.offset * GH, GH, GH,
                                  pv.rows, st.rows, a.dh, H);
        p.dh_rec = sm.gh;
      }
    }
    __syncthreads();
    trace.mark(s, kTraceProduct);
    if (kProj) {
      S* dht = a.dht + (a.dht_rows ? st.offset * P : 0);
      const S* dy = a.dy + st.offset * P;
      for (int64_t o = threadIdx.x; o < st.rows * V; o += blockDim.x) {
        const int64_t n = o / V, q = q0 + o % V;
        if (q < P)
          dht[n * P + q] = from_acc<S>(to_acc(dy[n * P + q]) + to_acc(a.dh[n * P + q]));
      }
      step_barrier();
      column_product(sm, a.lay, V, U, sl.u0, H, 0, dht, P, st.rows, P, a.dr, H, false);
      __syncthreads();
      if (has_unit)
        for (int64_t i = sl.row0; i < st.rows; i += sl.row_step) unit(p, i);
    } else {
      run_rows(unit, p, sl, has_unit, pre, [](int64_t) {});
    }
    trace.units(s);
    step_barrier();
    trace.mark(s, kTraceEnd);
  }
  if (a.s0 == 0) recurrent(0);
  trace.finish();
}

template <typename S, typename F>
cudaError_t with_persistent_backward_kernel(const LstmPersistentBackward<S>& a, const F& f) {
  return bool_switch(a.base.w_ch != nullptr, [&](auto kPeephole) {
    return bool_switch(a.base.coupled, [&](auto kCoupled) {
      return bool_switch(a.w_hr != nullptr, [&](auto kProj) {
        return f(lstm_persistent_backward_kernel<S, decltype(kPeephole)::value,
                                                 decltype(kCoupled)::value,
                                                 decltype(kProj)::value>);
      });
    });
  });
}

}  // namespace

template <typename S>
cudaError_t lstm_backward_launch(const LstmBackwardParams<S>& p, cudaStream_t stream) {
  if (p.dh_rec != nullptr && !p.rl.valid()) return cudaErrorInvalidValue;
  return bool_switch(p.w_ch != nullptr, [&](auto kPeephole) {
    return bool_switch(p.coupled, [&](auto kCoupled) {
      using Unit = LstmBackwardUnit<S, decltype(kPeephole)::value, decltype(kCoupled)::value>;
      return launch_step(step_kernel<Unit, LstmBackwardParams<S>>, p.rows, p.H, p, stream);
    });
  });
}

template <typename S>
cudaError_t lstm_persistent_backward_plan(const LstmPersistentBackward<S>& a,
                                          PersistentPlan& plan) {
  const int G = a.base.coupled ? 3 : 4;
  const bool proj = a.w_hr != nullptr;
  return with_persistent_backward_kernel(a, [&](auto kernel) {
    const int64_t P = proj ? a.proj_size : 0;
    return plan_persistent<S>(kernel, a.seq.N, a.base.H, 1, std::max(G * a.base.H, P), 1,
                              proj ? 0 : 1, P, 0, a.tf32, a.stage, a.grid, plan);
  });
}

template <typename S>
cudaError_t lstm_persistent_backward_launch(const LstmPersistentBackward<S>& a,
                                            const PersistentPlan& plan, cudaStream_t stream) {
  return with_persistent_backward_kernel(a, [&](auto kernel) {
    LstmPersistentBackward<S> b = a;
    b.lay = plan.lay;
    return launch_persistent(kernel, plan, b, stream);
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(lstm_backward_launch, LstmBackwardParams)
FRNN_INSTANTIATE_PERSISTENT(lstm_persistent_backward, LstmPersistentBackward)
