// Unit tests of csrc/kernels/cells.h, the cell math shared by the CPU loops and
// the CUDA kernels (torch-free; run by ctest).
//
// For S = float and S = double, with W the next wider type (double, long double):
//   - every forward function in S against its equations written out again here
//     and evaluated in W;
//   - every backward function in S against central finite differences of the
//     forward functions evaluated in W, for a scalar loss dL = <cotangents, outputs>.
// Inputs are random (fixed seed) in the range where the gates are neither
// saturated nor linear, plus a few fixed edge cases.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <type_traits>

#include "cells.h"

namespace fusedrnn {
// The finite differences for S = double run in long double.
template <>
struct CellMath<long double> {
  static long double sigmoid(long double x) { return 1.0L / (1.0L + std::exp(-x)); }
  static long double tanh(long double x) { return std::tanh(x); }
  static long double relu(long double x) { return x > 0 ? x : (x != x ? x : 0.0L); }
  static long double relu_backward(long double dy, long double y) { return y <= 0 ? 0.0L : dy; }
};
}  // namespace fusedrnn

namespace {

using namespace fusedrnn;

template <typename S>
using Wide = std::conditional_t<std::is_same<S, float>::value, double, long double>;

int g_failures = 0;
int g_checks = 0;

template <typename S>
const char* type_name() {
  return std::is_same<S, float>::value ? "float" : "double";
}

// Forward values: a few ulps of S (expf/tanhf are within 2 ulps; a handful of
// operations follow).
template <typename S>
long double forward_tol() {
  return 32.0L * std::numeric_limits<S>::epsilon();
}
// Gradients: rounding of S through the backward formulas, plus the truncation
// and rounding error of the central difference in W.
template <typename S>
long double backward_tol() {
  return std::is_same<S, float>::value ? 2e-5L : 1e-10L;
}

void check(const std::string& what, long double got, long double want, long double tol) {
  ++g_checks;
  const long double err = std::fabs(got - want);
  if (!(err <= tol * (1.0L + std::fabs(want)))) {
    ++g_failures;
    if (g_failures <= 30)
      std::printf("FAIL %s: got %.12Lg, want %.12Lg (error %.3Lg, tolerance %.3Lg)\n", what.c_str(),
                  got, want, err, tol * (1.0L + std::fabs(want)));
  }
}

// Central difference of f at x[k] (x in W), step relative to the magnitude.
template <typename W, int K, typename F>
W central_diff(const F& f, W (&x)[K], int k) {
  const W step = std::is_same<W, double>::value ? W(1e-5) : W(1e-7);
  const W h = step * (1 + std::fabs(x[k]));
  const W saved = x[k];
  x[k] = saved + h;
  const W fp = f(x);
  x[k] = saved - h;
  const W fm = f(x);
  x[k] = saved;
  return (fp - fm) / (2 * h);
}

template <typename W>
W ref_sigmoid(W x) {
  return W(1) / (W(1) + std::exp(-x));
}

struct Rng {
  std::mt19937_64 gen{20240611};
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(gen);
  }
};

// ------------------------------------------------------------- activations

template <typename S>
void test_activations() {
  using W = Wide<S>;
  using M = CellMath<S>;
  const std::string t = type_name<S>();
  const double points[] = {-40, -9.5, -3, -1, -0.25, 0, 1e-3, 0.5, 2, 7, 40};
  for (double p : points) {
    const S x = S(p);
    const W xw = W(x);
    check(t + " sigmoid(" + std::to_string(p) + ")", M::sigmoid(x), ref_sigmoid<W>(xw),
          forward_tol<S>());
    check(t + " tanh(" + std::to_string(p) + ")", M::tanh(x), std::tanh(xw), forward_tol<S>());
    check(t + " relu(" + std::to_string(p) + ")", M::relu(x), xw > 0 ? xw : W(0), 0);
    check(t + " relu_backward(2, relu(" + std::to_string(p) + "))", M::relu_backward(S(2), M::relu(x)),
          xw > 0 ? 2 : 0, 0);
    const S inf = std::numeric_limits<S>::infinity();
    ++g_checks;
    if (M::relu_backward(inf, M::relu(x)) != (xw > 0 ? inf : S(0))) {
      ++g_failures;
      std::printf("FAIL %s relu_backward(inf, relu(%g)) is not %s\n", t.c_str(), p, xw > 0 ? "inf" : "0");
    }
  }
  // torch.relu propagates NaN, and its backward (threshold_backward) zeroes the
  // gradient only where the output is <= 0 (an infinite or NaN one too): at a
  // NaN output it passes.
  const S nan = std::numeric_limits<S>::quiet_NaN();
  ++g_checks;
  if (!std::isnan(M::relu(nan))) {
    ++g_failures;
    std::printf("FAIL %s relu(NaN) is not NaN\n", t.c_str());
  }
  check(t + " relu_backward(2, NaN)", M::relu_backward(S(2), nan), 2, 0);
  ++g_checks;
  if (M::relu_backward(nan, S(0)) != S(0)) {
    ++g_failures;
    std::printf("FAIL %s relu_backward(NaN, 0) is not 0\n", t.c_str());
  }
}

// --------------------------------------------------------------------- RNN

template <typename S, bool kRelu>
void test_rnn(Rng& rng) {
  using W = Wide<S>;
  const std::string t = std::string(type_name<S>()) + (kRelu ? " rnn relu" : " rnn tanh");
  for (int trial = 0; trial < 200; ++trial) {
    S p = S(rng.uniform(-3, 3));
    if (kRelu && std::fabs(p) < S(0.05)) p += S(0.1);  // away from the kink
    const S dh = S(rng.uniform(-2, 2));
    const S h_new = rnn_forward<kRelu>(p);
    const W pw = W(p);
    check(t + " forward", h_new, kRelu ? (pw > 0 ? pw : W(0)) : std::tanh(pw), forward_tol<S>());
    W x[1] = {pw};
    const auto loss = [&](W (&v)[1]) { return W(dh) * rnn_forward<kRelu>(v[0]); };
    check(t + " backward dp", rnn_backward<kRelu>(dh, h_new), central_diff(loss, x, 0),
          backward_tol<S>());
  }
}

// -------------------------------------------------------------------- LSTM

// Inputs: pi, pf, pg, po, c, wci, wcf, wco.
enum LstmIn { kPi, kPf, kPg, kPo, kC, kWci, kWcf, kWco, kLstmIn };

template <typename S, bool kPeephole, bool kCoupled>
void test_lstm(Rng& rng) {
  using W = Wide<S>;
  const std::string t = std::string(type_name<S>()) + " lstm" + (kPeephole ? " peephole" : "") +
                        (kCoupled ? " coupled" : "");
  for (int trial = 0; trial < 200; ++trial) {
    S in[kLstmIn];
    for (int k = 0; k < kLstmIn; ++k) in[k] = S(rng.uniform(-2, 2));
    const S dh = S(rng.uniform(-2, 2)), dc = S(rng.uniform(-2, 2));

    // Forward in S against the equations in W.
    S i, f, g, o, c_new, h_new;
    lstm_forward<kPeephole, kCoupled>(in[kPi], in[kPf], in[kPg], in[kPo], in[kC], in[kWci],
                                      in[kWcf], in[kWco], i, f, g, o, c_new, h_new);
    {
      W w[kLstmIn];
      for (int k = 0; k < kLstmIn; ++k) w[k] = W(in[k]);
      const W pk = kPeephole ? W(1) : W(0);
      const W fw = ref_sigmoid<W>(w[kPf] + pk * w[kWcf] * w[kC]);
      const W iw = kCoupled ? W(1) - fw : ref_sigmoid<W>(w[kPi] + pk * w[kWci] * w[kC]);
      const W gw = std::tanh(w[kPg]);
      const W cw = fw * w[kC] + iw * gw;
      const W ow = ref_sigmoid<W>(w[kPo] + pk * w[kWco] * cw);
      check(t + " forward i", i, iw, forward_tol<S>());
      check(t + " forward f", f, fw, forward_tol<S>());
      check(t + " forward g", g, gw, forward_tol<S>());
      check(t + " forward o", o, ow, forward_tol<S>());
      check(t + " forward c'", c_new, cw, forward_tol<S>());
      check(t + " forward h'", h_new, ow * std::tanh(cw), forward_tol<S>());
    }

    // Backward in S against finite differences of the W forward.
    S dpi, dpf, dpg, dpo, dc_prev, dwci = 0, dwcf = 0, dwco = 0;
    lstm_backward<kPeephole, kCoupled>(dh, dc, i, f, g, o, in[kC], c_new, in[kWci], in[kWcf],
                                       in[kWco], dpi, dpf, dpg, dpo, dc_prev, dwci, dwcf, dwco);
    W x[kLstmIn];
    for (int k = 0; k < kLstmIn; ++k) x[k] = W(in[k]);
    const auto loss = [&](W (&v)[kLstmIn]) {
      W iw, fw, gw, ow, cw, hw;
      lstm_forward<kPeephole, kCoupled>(v[kPi], v[kPf], v[kPg], v[kPo], v[kC], v[kWci], v[kWcf],
                                        v[kWco], iw, fw, gw, ow, cw, hw);
      return W(dh) * hw + W(dc) * cw;
    };
    const S got[kLstmIn] = {dpi, dpf, dpg, dpo, dc_prev, dwci, dwcf, dwco};
    const char* names[kLstmIn] = {"dpi", "dpf", "dpg", "dpo", "dc", "dwci", "dwcf", "dwco"};
    for (int k = 0; k < kLstmIn; ++k)
      check(t + " backward " + names[k], got[k], central_diff(loss, x, k), backward_tol<S>());
  }
}

// --------------------------------------------------------------------- GRU

enum GruIn { kPr, kPz, kXn, kHn, kH, kGruIn };

template <typename S>
void test_gru_reset_after(Rng& rng) {
  using W = Wide<S>;
  const std::string t = std::string(type_name<S>()) + " gru reset_after";
  for (int trial = 0; trial < 200; ++trial) {
    S in[kGruIn];
    for (int k = 0; k < kGruIn; ++k) in[k] = S(rng.uniform(-2, 2));
    const S dh = S(rng.uniform(-2, 2));
    S r, z, n, h_new;
    gru_forward(in[kPr], in[kPz], in[kXn], in[kHn], in[kH], r, z, n, h_new);
    {
      const W rw = ref_sigmoid<W>(W(in[kPr])), zw = ref_sigmoid<W>(W(in[kPz]));
      const W nw = std::tanh(W(in[kXn]) + rw * W(in[kHn]));
      check(t + " forward r", r, rw, forward_tol<S>());
      check(t + " forward z", z, zw, forward_tol<S>());
      check(t + " forward n", n, nw, forward_tol<S>());
      check(t + " forward h'", h_new, (1 - zw) * nw + zw * W(in[kH]), forward_tol<S>());
      check(t + " gru_gate", gru_gate(in[kPr]), rw, forward_tol<S>());
      check(t + " gru_update", gru_update(z, n, in[kH]),
            (1 - W(z)) * W(n) + W(z) * W(in[kH]), forward_tol<S>());
    }
    S dpn, dpz, dh_prev, dpr, dhn;
    gru_update_backward(dh, z, n, in[kH], dpn, dpz, dh_prev);
    gru_reset_after_backward(dpn, r, in[kHn], dpr, dhn);
    W x[kGruIn];
    for (int k = 0; k < kGruIn; ++k) x[k] = W(in[k]);
    const auto loss = [&](W (&v)[kGruIn]) {
      W rw, zw, nw, hw;
      gru_forward(v[kPr], v[kPz], v[kXn], v[kHn], v[kH], rw, zw, nw, hw);
      return W(dh) * hw;
    };
    // hn = W_hn h + b_hn is an input of its own here: dh_prev is the direct part.
    const S got[kGruIn] = {dpr, dpz, dpn, dhn, dh_prev};
    const char* names[kGruIn] = {"dpr", "dpz", "dxn", "dhn", "dh"};
    for (int k = 0; k < kGruIn; ++k)
      check(t + " backward " + names[k], got[k], central_diff(loss, x, k), backward_tol<S>());
  }
}

// reset_before: pn = xn + w_n * (r*h) with a scalar stand-in w_n for W_hn, so
// that gru_reset_before_backward is exercised through the chain rule.
enum GruRbIn { kRbPr, kRbPz, kRbXn, kRbH, kGruRbIn };

template <typename S>
void test_gru_reset_before(Rng& rng) {
  using W = Wide<S>;
  const std::string t = std::string(type_name<S>()) + " gru reset_before";
  for (int trial = 0; trial < 200; ++trial) {
    S in[kGruRbIn];
    for (int k = 0; k < kGruRbIn; ++k) in[k] = S(rng.uniform(-2, 2));
    const S w_n = S(rng.uniform(-1.5, 1.5));
    const S dh = S(rng.uniform(-2, 2));
    const S r = gru_gate(in[kRbPr]), z = gru_gate(in[kRbPz]);
    const S pn = in[kRbXn] + w_n * (r * in[kRbH]);
    S n, h_new;
    gru_reset_before_output(pn, z, in[kRbH], n, h_new);
    check(t + " forward n", n, std::tanh(W(pn)), forward_tol<S>());
    check(t + " forward h'", h_new, (1 - W(z)) * std::tanh(W(pn)) + W(z) * W(in[kRbH]),
          forward_tol<S>());

    S dpn, dpz, dh_direct, dpr, dh_r;
    gru_update_backward(dh, z, n, in[kRbH], dpn, dpz, dh_direct);
    gru_reset_before_backward(dpn * w_n, r, in[kRbH], dpr, dh_r);
    W x[kGruRbIn];
    for (int k = 0; k < kGruRbIn; ++k) x[k] = W(in[k]);
    const auto loss = [&](W (&v)[kGruRbIn]) {
      const W rw = gru_gate(v[kRbPr]), zw = gru_gate(v[kRbPz]);
      W nw, hw;
      gru_reset_before_output(v[kRbXn] + W(w_n) * (rw * v[kRbH]), zw, v[kRbH], nw, hw);
      return W(dh) * hw;
    };
    const S got[kGruRbIn] = {dpr, dpz, dpn, S(dh_direct + dh_r)};
    const char* names[kGruRbIn] = {"dpr", "dpz", "dxn", "dh"};
    for (int k = 0; k < kGruRbIn; ++k)
      check(t + " backward " + names[k], got[k], central_diff(loss, x, k), backward_tol<S>());
  }
}

template <typename S>
void test_all(Rng& rng) {
  test_activations<S>();
  test_rnn<S, false>(rng);
  test_rnn<S, true>(rng);
  test_lstm<S, false, false>(rng);
  test_lstm<S, true, false>(rng);
  test_lstm<S, false, true>(rng);
  test_lstm<S, true, true>(rng);
  test_gru_reset_after<S>(rng);
  test_gru_reset_before<S>(rng);
}

}  // namespace

int main() {
  Rng rng;
  test_all<float>(rng);
  test_all<double>(rng);
  std::printf("cells.h: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
