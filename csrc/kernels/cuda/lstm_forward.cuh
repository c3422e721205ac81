// LSTM forward step: pre-activations = Gx + Gh + b_ih + b_hh, then the cell
// math of cells.h (lstm_forward), one thread per (row, hidden unit).
//
// Writes h' to the output rows (or the projection's input), c' in place in the
// A state, and in training the activated gates and c' (layouts in
// csrc/kernels/cpu/rnn_cpu.h, shared with the CPU path).
//
// Compiled once per element type: lstm_forward_{f32,f64,f16,bf16}.cu define FRNN_ELEMENT
// and include this file, which instantiates the launchers for that type alone.
#pragma once
#ifndef FRNN_ELEMENT
#error "lstm_forward.cuh is included by lstm_forward_<type>.cu, after it defines FRNN_ELEMENT"
#endif

#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename S, bool kPeephole, bool kCoupled, bool kTraining>
struct LstmForwardUnit {
  using A = acc_t<S>;
  static constexpr int G = kCoupled ? 3 : 4;
  static constexpr int gi = 0, gf = kCoupled ? 0 : 1, gg = kCoupled ? 1 : 2, go = kCoupled ? 2 : 3;
  int64_t u;
  A bias[G];
  A wci, wcf, wco;

  __device__ LstmForwardUnit(const LstmForwardParams<S>& p, int64_t unit) : u(unit) {
    const int64_t H = p.H;
#pragma unroll
    for (int g = 0; g < G; ++g)
      bias[g] = load_or_zero(p.b_ih, g * H + u) + load_or_zero(p.b_hh, g * H + u);
    const A zero(0);
    wci = kPeephole && !kCoupled ? to_acc(p.w_ch[u]) : zero;
    wcf = kPeephole ? to_acc(p.w_ch[(kCoupled ? 0 : H) + u]) : zero;
    wco = kPeephole ? to_acc(p.w_ch[(kCoupled ? H : 2 * H) + u]) : zero;
  }

  // What row i reads from global memory before its cell math: Gx of each gate
  // block and the cell state. The persistent path loads it before the step's
  // recurrent product, so that these loads overlap the product.
  struct In {
    A x[G];
    A c;
  };

  __device__ In load(const LstmForwardParams<S>& p, int64_t i) const {
    In in;
    const S* gx = p.gx + i * G * p.H + u;
#pragma unroll
    for (int g = 0; g < G; ++g) in.x[g] = to_acc(gx[g * p.H]);
    in.c = p.c[i * p.H + u];
    return in;
  }

  __device__ void operator()(const LstmForwardParams<S>& p, int64_t i) const {
    (*this)(p, i, load(p, i));
  }

  __device__ void operator()(const LstmForwardParams<S>& p, int64_t i, const In& in) const {
    const int64_t H = p.H, GH = G * H;
    const A zero(0);
    const S* gh = p.gh;
    const GhLayout& gl = p.gl;
    const A pi = kCoupled ? zero : in.x[gi] + to_acc(gh[gl.at(i, G, gi, u)]) + bias[gi];
    const A pf = in.x[gf] + to_acc(gh[gl.at(i, G, gf, u)]) + bias[gf];
    const A pg = in.x[gg] + to_acc(gh[gl.at(i, G, gg, u)]) + bias[gg];
    const A po = in.x[go] + to_acc(gh[gl.at(i, G, go, u)]) + bias[go];
    A* cp = p.c + i * H + u;
    const A c = in.c;
    A ig, fg, gg_, og, c_new, h_new;
    lstm_forward<kPeephole, kCoupled>(pi, pf, pg, po, c, wci, wcf, wco, ig, fg, gg_, og, c_new,
                                      h_new);
    *cp = c_new;
    const S h = from_acc<S>(h_new);
    p.h[i * p.ld_h + u] = h;
    if (p.h_state != nullptr) p.h_state[i * H + u] = h;
    if (kTraining) {
      S* gr = p.gates + i * GH + u;
      if (!kCoupled) gr[gi * H] = from_acc<S>(ig);
      gr[gf * H] = from_acc<S>(fg);
      gr[gg * H] = from_acc<S>(gg_);
      gr[go * H] = from_acc<S>(og);
      p.states[i * H + u] = from_acc<S>(c_new);
    }
  }
};

// Persistent forward (persistent.cuh): each step, Gh of the block's units from
// the previous h of all units, then the unit functor, and a step barrier.
// With a projection (kProj), h is P wide and each step takes a second product
// and barrier: block b also holds V rows of W_hr, projection outputs
// [bV, bV + V) (length H), after its G*U gate rows of W_hh (length P); the unit
// functor writes h' of its units (hr), and after the barrier h = h' W_hr^T for
// its projection outputs goes to the output rows, the next h and h_n.
template <typename S, bool kPeephole, bool kCoupled, bool kTraining, bool kProj>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    lstm_persistent_forward_kernel(const LstmPersistentForward<S> a) {
  using Unit = LstmForwardUnit<S, kPeephole, kCoupled, kTraining>;
  constexpr int G = Unit::G;
  const int64_t H = a.base.H, P = kProj ? a.proj_size : H, GH = G * H, N = a.seq.N;
  const int U = a.lay.units, V = a.lay.proj;
  const UnitSlot sl = unit_slot(U);
  const bool has_unit = sl.u < H;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * V;
  const StepTrace trace(a.trace, a.s0, a.s1, true);
  const BlockSmem<S> sm(a.lay);
  load_gate_rows(sm.ws, a.lay.ldw, a.w_hh, H, P, G, U, sl.u0);
  if (kProj)
    load_gate_rows(sm.ws + static_cast<int64_t>(G) * U * a.lay.ldw, a.lay.ldw, a.w_hr, P, H, 1,
                   V, p0);
  S* const hbuf = state_in(sm, a.hbuf, 2 * N * P);
  const Unit unit(a.base, has_unit ? sl.u : 0);
  __syncthreads();
  for (int64_t s = a.s0; s < a.s1; ++s) {
    trace.mark(s, kTraceBegin);
    const StepInfo st = a.seq.step(s);
    if (s + 1 < a.s1) {
      const StepInfo nx = a.seq.step(s + 1);
      prefetch_unit_slices(a.gx + (nx.offset - a.gx_row0) * GH, nx.rows, GH, G, H, sl.u0, U, H);
    }
    const S* h = hbuf + (s & 1) * N * P;
    S* h_next = hbuf + ((s + 1) & 1) * N * P;
    S* hr = !kProj ? nullptr : a.hr != nullptr ? a.hr : a.hr_rows + st.offset * H;
    LstmForwardParams<S> p = a.base;
    p.rows = st.rows;
    p.gx = a.gx + (st.offset - a.gx_row0) * GH;
    p.h = kProj ? hr : a.base.h + st.offset * a.base.ld_h;
    p.ld_h = kProj ? H : a.base.ld_h;
    p.h_state = kProj ? nullptr : h_next;
    if (kTraining) {
      p.gates = a.base.gates + st.offset * GH;
      p.states = a.base.states + st.offset * H;
    }
    Preloaded<Unit> pre;
    preload_rows(unit, p, sl, has_unit, pre);
    p.gl = gate_product(sm, a.lay, sl, 0, G, h, P, st.rows, P);
    p.gh = sm.gh;
    __syncthreads();
    trace.mark(s, kTraceProduct);
    run_rows(unit, p, sl, has_unit, pre, [&](int64_t i) {
      if (!kProj && last_step_of_row(a.seq, s, i)) a.h_n[i * H + sl.u] = h_next[i * H + sl.u];
    });
    if (!kProj) trace.units(s);
    step_barrier();
    if (kProj) {
      S* y = a.y + st.offset * P;
      block_product(sm, a.lay, G * U, V, 0, hr, H, st.rows, H,
                    [&](int64_t n, int m, acc_t<S> v) {
                      const int64_t q = p0 + m;
                      if (q < P) {
                        const S hv = from_acc<S>(v);
                        y[n * P + q] = hv;
                        h_next[n * P + q] = hv;
                        if (last_step_of_row(a.seq, s, n)) a.h_n[n * P + q] = hv;
                      }
                    });
      trace.units(s);
      step_barrier();
    }
    trace.mark(s, kTraceEnd);
  }
  state_out(sm, a.hbuf, 2 * N * P);
  trace.finish();
}

// f(kernel) with the persistent kernel of a's variant.
template <typename S, typename F>
cudaError_t with_persistent_forward_kernel(const LstmPersistentForward<S>& a, const F& f) {
  return bool_switch(a.base.w_ch != nullptr, [&](auto kPeephole) {
    return bool_switch(a.base.coupled, [&](auto kCoupled) {
      return bool_switch(a.base.gates != nullptr, [&](auto kTraining) {
        return bool_switch(a.w_hr != nullptr, [&](auto kProj) {
          return f(lstm_persistent_forward_kernel<S, decltype(kPeephole)::value,
                                                  decltype(kCoupled)::value,
                                                  decltype(kTraining)::value,
                                                  decltype(kProj)::value>);
        });
      });
    });
  });
}

}  // namespace

template <typename S>
cudaError_t lstm_persistent_forward_plan(const LstmPersistentForward<S>& a, PersistentPlan& plan) {
  const int G = a.base.coupled ? 3 : 4;
  const bool proj = a.w_hr != nullptr;
  return with_persistent_forward_kernel(a, [&](auto kernel) {
    const int64_t P = proj ? a.proj_size : 0;
    return plan_persistent<S>(kernel, a.seq.N, a.base.H, G, std::max(a.base.H, P), G, G, P,
                              proj ? P : a.base.H, a.tf32, a.stage, a.grid, plan);
  });
}

template <typename S>
cudaError_t lstm_persistent_forward_launch(const LstmPersistentForward<S>& a,
                                           const PersistentPlan& plan, cudaStream_t stream) {
  return with_persistent_forward_kernel(a, [&](auto kernel) {
    LstmPersistentForward<S> b = a;
    b.lay = plan.lay;
    return launch_persistent(kernel, plan, b, stream);
  });
}

template <typename S>
cudaError_t lstm_forward_launch(const LstmForwardParams<S>& p, cudaStream_t stream) {
  if (!p.gl.valid()) return cudaErrorInvalidValue;
  return bool_switch(p.w_ch != nullptr, [&](auto kPeephole) {
    return bool_switch(p.coupled, [&](auto kCoupled) {
      return bool_switch(p.gates != nullptr, [&](auto kTraining) {
        using Unit = LstmForwardUnit<S, decltype(kPeephole)::value, decltype(kCoupled)::value,
                                     decltype(kTraining)::value>;
        return launch_step(step_kernel<Unit, LstmForwardParams<S>>, p.rows, p.H, p, stream);
      });
    });
  });
}

}  // namespace fusedrnn::cuda

FRNN_INSTANTIATE_LAUNCH(lstm_forward_launch, LstmForwardParams)
FRNN_INSTANTIATE_PERSISTENT(lstm_persistent_forward, LstmPersistentForward)
