// CellMath for at::vec::Vectorized, so that cells.h runs on SIMD vectors.
//
// Included only from the per-ISA translation units (see isa_*.cpp), where
// CPU_CAPABILITY names the instruction set this copy is compiled for.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "../cells.h"
#include "parallel.h"

namespace fusedrnn {
// Each instruction set's copy of the helpers below is its own: under one name
// in every copy (FloatOps::set1(float) is the same symbol for AVX2 and
// AVX-512), a copy the compiler left out of line would be merged by the
// linker into one that serves every instruction set.
inline namespace CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)
// Every lane of a float vector. With it, the zero-masking forms of the AVX-512
// intrinsics compile to the unmasked instructions, without the undefined
// pass-through operand of the plain forms, through which GCC 12's own headers
// warn (-Wuninitialized) once inlined.
constexpr __mmask16 kAllLanes = 0xFFFF;

// The float vector operations exp_float and tanh_float are written in, for this
// instruction set. min and max return b where either is NaN.
struct FloatOps {
  using R = __m512;
  // scale(a, n) = a * 2^n for integral n (scalef saturates to 0 and inf).
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static R min(R a, R b) { return _mm512_maskz_min_ps(kAllLanes, a, b); }
  static R max(R a, R b) { return _mm512_maskz_max_ps(kAllLanes, a, b); }
  static R bit_or(R a, R b) { return _mm512_or_ps(a, b); }
  static R bit_and(R a, R b) { return _mm512_and_ps(a, b); }
  static R round(R a) {
    return _mm512_maskz_roundscale_ps(kAllLanes, a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static R scale(R a, R n) { return _mm512_maskz_scalef_ps(kAllLanes, a, n); }
  static R scale_normal(R a, R n) { return scale(a, n); }
};
#elif defined(CPU_CAPABILITY_AVX2)
struct FloatOps {
  using R = __m256;
  // scale(a, n) = a * 2^n for integral |n| <= 252, as a * 2^h * 2^(n-h) with
  // h = n/2: each factor is a normal float built in the exponent field, the
  // first product is exact for a near 1, and the second rounds once, into the
  // subnormals, to 0 or to inf, as scalef does.
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R bit_or(R a, R b) { return _mm256_or_ps(a, b); }
  static R bit_and(R a, R b) { return _mm256_and_ps(a, b); }
  static R round(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R scale(R a, R n) {
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h = _mm256_srai_epi32(ni, 1);
    return _mm256_mul_ps(_mm256_mul_ps(a, pow2(h)), pow2(_mm256_sub_epi32(ni, h)));
  }
  // scale(a, n) for integral n with 2^n a normal float, in one step.
  static R scale_normal(R a, R n) { return _mm256_mul_ps(a, pow2(_mm256_cvtps_epi32(n))); }
  // 2^k for integral -126 <= k <= 127.
  static R pow2(__m256i k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
  }
};
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// Cody-Waite reduction t = n ln2 + r, |r| <= ln2/2, of t = x * k (k a power of two
// or one): n = round(t log2e) and r, both from x.
FRNN_ALWAYS_INLINE inline void reduce_ln2(FloatOps::R x, float k, FloatOps::R& n, FloatOps::R& r) {
  using O = FloatOps;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  n = O::round(O::mul(x, O::set1(k * kLog2e)));
  r = O::fnmadd(n, O::set1(kLn2Hi), k == 1.f ? x : O::mul(x, O::set1(k)));
  r = O::fnmadd(n, O::set1(kLn2Lo), r);
}
#endif

// exp for float vectors, inline: Cody-Waite range reduction x = n ln2 + r,
// |r| <= ln2/2, then the degree-6 Taylor polynomial of e^r (truncation error
// 1.2e-7 relative) and a scaling by 2^n. 2.2 ns per 16 lanes on Zen 5 against
// 3.1 for Sleef's out-of-line expf; the LSTM pointwise pass went from 31 to 24 ns
// per 16 elements. x is clamped first: the reduction holds only for moderate x
// (at |x| = 1e15 n ln2 no longer cancels x and r is garbage). The clamp is
// [-104, 89], beyond which e^x rounds to 0 or overflows, so results keep their
// accuracy over the float range, subnormals included (sigmoid(x) = 1 / (1 +
// e^-x) is a subnormal for x in [-88.7, -87.3] and 0 below, where e^-x
// overflows, as torch's). The clamps keep NaN (operand order of min/max), so
// NaN in gives NaN out; -inf gives 0, +inf gives +inf.
template <typename V>
FRNN_ALWAYS_INLINE inline V exp_float(const V& x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  using O = FloatOps;
  // Constant first, so that a NaN x is returned.
  const O::R xv = O::max(O::set1(-104.f), O::min(O::set1(89.f), x));
  O::R n, r;
  reduce_ln2(xv, 1.f, n, r);
  O::R p = O::fmadd(O::set1(1.f / 720), r, O::set1(1.f / 120));
  p = O::fmadd(p, r, O::set1(1.f / 24));
  p = O::fmadd(p, r, O::set1(1.f / 6));
  p = O::fmadd(p, r, O::set1(1.f / 2));
  p = O::fmadd(p, r, O::set1(1.f));
  p = O::fmadd(p, r, O::set1(1.f));
  return V(O::scale(p, n));
#else
  return x.exp();
#endif
}

// tanh for float vectors: tanh(x) = m / (m + 2) with m = e^2x - 1, x clamped to
// [-9.1, 9.1] (beyond 9.02, tanh rounds to +-1), and m without cancellation: with
// 2x = n ln2 + r (Cody-Waite, |r| <= ln2/2), m = 2^n (e^r - 1) + (2^n - 1), where
// e^r - 1 = r + r^2 (1/2 + r/6 + ... + r^5/5040) (truncation error 2e-8
// relative). Measured against tanh in double over every float in [-12, 12]: at
// most 2.5 ulp (the series-and-blend form it replaces: 3.7), at 2.9 ns per 16
// lanes on Zen 5 (that form: 3.7; Sleef's tanhf: 18.6). The sign of x is or-ed
// in, so tanh(-0) = -0; NaN gives NaN (the clamps return it), +-inf gives +-1.
template <typename V>
FRNN_ALWAYS_INLINE inline V tanh_float(const V& x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  using O = FloatOps;
  const O::R xv = x;
  const O::R xc = O::max(O::set1(-9.1f), O::min(O::set1(9.1f), xv));
  O::R n, r;
  reduce_ln2(xc, 2.f, n, r);
  O::R p = O::fmadd(O::set1(1.f / 5040), r, O::set1(1.f / 720));
  p = O::fmadd(p, r, O::set1(1.f / 120));
  p = O::fmadd(p, r, O::set1(1.f / 24));
  p = O::fmadd(p, r, O::set1(1.f / 6));
  p = O::fmadd(p, r, O::set1(0.5f));
  p = O::fmadd(p, O::mul(r, r), r);
  const O::R two_n = O::scale_normal(O::set1(1.f), n);
  const O::R m = O::fmadd(two_n, p, O::sub(two_n, O::set1(1.f)));
  const O::R y = O::div(m, O::add(m, O::set1(2.f)));
  return V(O::bit_or(y, O::bit_and(xv, O::set1(-0.f))));
#else
  return x.tanh();
#endif
}

}  // namespace CPU_CAPABILITY

template <typename S>
struct CellMath<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  FRNN_ALWAYS_INLINE static V sigmoid(const V& x) {
    if constexpr (std::is_same_v<S, float>) return V(S(1)) / (V(S(1)) + exp_float(x.neg()));
    else return V(S(1)) / (V(S(1)) + x.neg().exp());
  }
  FRNN_ALWAYS_INLINE static V tanh(const V& x) {
    if constexpr (std::is_same_v<S, float>) return tanh_float(x);
    else return x.tanh();
  }
  static V relu(const V& x) { return at::vec::maximum(x, V(S(0))); }
  static V relu_backward(const V& dy, const V& y) { return V::blendv(dy, V(S(0)), y <= V(S(0))); }
};

}  // namespace fusedrnn
