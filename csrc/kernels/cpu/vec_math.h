// CellMath for at::vec::Vectorized, so that cells.h runs on SIMD vectors.
//
// Included only from the per-ISA translation units (see isa.h), where
// CPU_CAPABILITY names the instruction set this copy is compiled for.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "../cells.h"

namespace fusedrnn {

template <typename S>
struct CellMath<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V sigmoid(const V& x) { return V(S(1)) / (V(S(1)) + x.neg().exp()); }
  static V tanh(const V& x) { return x.tanh(); }
  static V relu(const V& x) { return at::vec::maximum(x, V(S(0))); }
  static V relu_grad(const V& y) { return y.gt(V(S(0))); }
};

}  // namespace fusedrnn
