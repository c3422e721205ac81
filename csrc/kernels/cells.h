// The pointwise math of every cell, forward and backward: the one source of truth.
//
// Every function is a template on the value type V, so the same code runs on a
// scalar (float or double, host or CUDA device) and on a SIMD vector (the CPU
// loops instantiate it with at::vec::Vectorized). The activation functions come
// from CellMath<V>, specialised here for scalars and in cpu/vec_math.h for vectors.
//
// Conventions (PyTorch's, so that state_dicts load both ways):
//   LSTM gates i, f, g, o;   coupled LSTM gates f, g, o with i = 1 - f.
//   GRU gates r, z, n.       RNN: one block.
// "Pre-activation" means the sum of the input product, the recurrent product and
// the biases; "gates" are the values after the activation function.
#pragma once

#include <cmath>

#include "common.h"

namespace fusedrnn {

template <typename V>
struct CellMath;

template <>
struct CellMath<float> {
  static FRNN_HD float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
  static FRNN_HD float tanh(float x) { return ::tanhf(x); }
  // NaN-propagating like torch.relu.
  static FRNN_HD float relu(float x) { return x > 0.0f ? x : (x != x ? x : 0.0f); }
  // dy where y > 0 or y is NaN (y is the relu output), else 0: selected, not
  // multiplied by a 0/1 mask, so an infinite or NaN dy at an inactive unit
  // gives 0, as torch's threshold_backward has it.
  static FRNN_HD float relu_backward(float dy, float y) { return y <= 0.0f ? 0.0f : dy; }
};

template <>
struct CellMath<double> {
  static FRNN_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
  static FRNN_HD double tanh(double x) { return ::tanh(x); }
  static FRNN_HD double relu(double x) { return x > 0.0 ? x : (x != x ? x : 0.0); }
  static FRNN_HD double relu_backward(double dy, double y) { return y <= 0.0 ? 0.0 : dy; }
};

// ---------------------------------------------------------------- Elman RNN
// h' = act(p),  p = W_ih x + b_ih + W_hh h + b_hh
template <bool kRelu, typename V>
FRNN_HD V rnn_forward(const V& p) {
  using M = CellMath<V>;
  return kRelu ? M::relu(p) : M::tanh(p);
}

// dp = dh' * act'(p), written with the output h' = act(p).
template <bool kRelu, typename V>
FRNN_HD V rnn_backward(const V& dh, const V& h_new) {
  using M = CellMath<V>;
  return kRelu ? M::relu_backward(dh, h_new) : dh * (V(1) - h_new * h_new);
}

// --------------------------------------------------------------------- LSTM
// c' = f*c + i*g,  h' = o*tanh(c')
// Peepholes (Gers & Schmidhuber 2000, diagonal): i and f look at c, o at c'.
// Coupled gates: i = 1 - f (the pre-activation pi is ignored).
template <bool kPeephole, bool kCoupled, typename V>
FRNN_HD void lstm_forward(V pi, V pf, const V& pg, V po, const V& c, const V& wci,
                          const V& wcf, const V& wco, V& i, V& f, V& g, V& o, V& c_new,
                          V& h_new) {
  using M = CellMath<V>;
  if (kPeephole) {
    if (!kCoupled) pi = pi + wci * c;
    pf = pf + wcf * c;
  }
  f = M::sigmoid(pf);
  i = kCoupled ? V(1) - f : M::sigmoid(pi);
  g = M::tanh(pg);
  c_new = f * c + i * g;
  if (kPeephole) po = po + wco * c_new;
  o = M::sigmoid(po);
  h_new = o * M::tanh(c_new);
}

// dh: dL/dh' (before any projection); dc: dL/dc' from the following step.
// Returns the gradients of the pre-activations (dpi is 0 when coupled), dL/dc
// and the per-element peephole gradients (to be summed over rows and steps).
template <bool kPeephole, bool kCoupled, typename V>
FRNN_HD void lstm_backward(const V& dh, const V& dc, const V& i, const V& f, const V& g,
                           const V& o, const V& c, const V& c_new, const V& wci,
                           const V& wcf, const V& wco, V& dpi, V& dpf, V& dpg, V& dpo,
                           V& dc_prev, V& dwci, V& dwcf, V& dwco) {
  using M = CellMath<V>;
  const V one(1);
  const V tc = M::tanh(c_new);
  dpo = dh * tc * o * (one - o);
  V dct = dc + dh * o * (one - tc * tc);
  if (kPeephole) dct = dct + dpo * wco;
  dpg = dct * i * (one - g * g);
  if (kCoupled) {
    // i = 1 - f: dL/df = dct*c - dct*g
    dpi = V(0);
    dpf = dct * (c - g) * f * (one - f);
  } else {
    dpi = dct * g * i * (one - i);
    dpf = dct * c * f * (one - f);
  }
  dc_prev = dct * f;
  if (kPeephole) {
    if (!kCoupled) dc_prev = dc_prev + dpi * wci;
    dc_prev = dc_prev + dpf * wcf;
    dwci = dpi * c;
    dwcf = dpf * c;
    dwco = dpo * c_new;
  }
}

// ---------------------------------------------------------------------- GRU
// Shared by both reset placements: r, z = sigmoid(pre), h' = (1-z)*n + z*h.
template <typename V>
FRNN_HD V gru_gate(const V& p) {
  return CellMath<V>::sigmoid(p);
}

template <typename V>
FRNN_HD V gru_update(const V& z, const V& n, const V& h) {
  return n + z * (h - n);
}

// reset_after=True (PyTorch, cuDNN): n = tanh(xn + r*hn), hn = W_hn h + b_hn.
template <typename V>
FRNN_HD void gru_forward(const V& pr, const V& pz, const V& xn, const V& hn, const V& h,
                         V& r, V& z, V& n, V& h_new) {
  r = gru_gate(pr);
  z = gru_gate(pz);
  n = CellMath<V>::tanh(xn + r * hn);
  h_new = gru_update(z, n, h);
}

// reset_after=False (Cho et al. 2014): n = tanh(pn), pn = xn + W_hn (r*h) + b_hn.
template <typename V>
FRNN_HD void gru_reset_before_output(const V& pn, const V& z, const V& h, V& n,
                                     V& h_new) {
  n = CellMath<V>::tanh(pn);
  h_new = gru_update(z, n, h);
}

// Gradient through h' = (1-z)*n + z*h and n = tanh(pn): dL/dpn, dL/dpz and the
// direct part of dL/dh.
template <typename V>
FRNN_HD void gru_update_backward(const V& dh, const V& z, const V& n, const V& h, V& dpn,
                                 V& dpz, V& dh_prev) {
  const V one(1);
  dpn = dh * (one - z) * (one - n * n);
  dpz = dh * (h - n) * z * (one - z);
  dh_prev = dh * z;
}

// reset_after=True: the rest of the step's gradient. dpn (from gru_update_backward)
// is the gradient of xn; dhn = dpn*r is the gradient of hn = W_hn h + b_hn.
template <typename V>
FRNN_HD void gru_reset_after_backward(const V& dpn, const V& r, const V& hn, V& dpr,
                                      V& dhn) {
  dpr = dpn * hn * r * (V(1) - r);
  dhn = dpn * r;
}

// reset_after=False: given drh = dL/d(r*h) (= dpn W_hn), the reset gate's
// pre-activation gradient and the part of dL/dh that flows through r*h.
template <typename V>
FRNN_HD void gru_reset_before_backward(const V& drh, const V& r, const V& h, V& dpr,
                                       V& dh_prev) {
  dpr = drh * h * r * (V(1) - r);
  dh_prev = drh * r;
}

}  // namespace fusedrnn
