// CellMath for at::vec::Vectorized, so that cells.h runs on SIMD vectors.
//
// Included only from the per-ISA translation units (see isa_*.cpp), where
// CPU_CAPABILITY names the instruction set this copy is compiled for.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "../cells.h"

namespace fusedrnn {

#if defined(CPU_CAPABILITY_AVX512)
// Every lane of a float vector. With it, the zero-masking forms of the AVX-512
// intrinsics compile to the unmasked instructions, without the undefined
// pass-through operand of the plain forms, through which GCC 12's own headers
// warn (-Wuninitialized) once inlined.
constexpr __mmask16 kAllLanes = 0xFFFF;
#endif

// exp for float vectors, inline: Cody-Waite range reduction x = n ln2 + r,
// |r| <= ln2/2, then the degree-6 Taylor polynomial of e^r (truncation error
// 1.2e-7 relative) and a scaling by 2^n. 2.2 ns per 16 lanes on Zen 5 against
// 3.1 for Sleef's out-of-line expf; the LSTM pointwise pass went from 31 to 24 ns
// per 16 elements. The clamps keep NaN (operand order of min/max), so NaN in
// gives NaN out; -inf gives 0, +inf gives +inf (AVX-512) or FLT_MAX (AVX2).
template <typename V>
inline V exp_float(const V& x) {
  [[maybe_unused]] constexpr float kLog2e = 1.44269504088896341f;
  [[maybe_unused]] constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  [[maybe_unused]] constexpr float c2 = 1.f / 2, c3 = 1.f / 6, c4 = 1.f / 24, c5 = 1.f / 120, c6 = 1.f / 720;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 xv = x;
  const __m512 n = _mm512_maskz_roundscale_ps(kAllLanes, _mm512_mul_ps(xv, _mm512_set1_ps(kLog2e)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xv);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(c6), r, _mm512_set1_ps(c5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return V(_mm512_maskz_scalef_ps(kAllLanes, p, n));
#elif defined(CPU_CAPABILITY_AVX2)
  // Clamp (constant first, so a NaN x is returned) to where 2^n is a normal float.
  __m256 xv = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  xv = _mm256_max_ps(_mm256_set1_ps(-87.3365447505531f), xv);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xv, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xv);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(c6), r, _mm256_set1_ps(c5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return V(_mm256_mul_ps(p, _mm256_castsi256_ps(e)));
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
inline V tanh_float(const V& x) {
  [[maybe_unused]] constexpr float kTwoLog2e = 2.88539008177792682f;
  [[maybe_unused]] constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  [[maybe_unused]] constexpr float c3 = 1.f / 6, c4 = 1.f / 24, c5 = 1.f / 120, c6 = 1.f / 720,
                                   c7 = 1.f / 5040;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 xv = x;
  const __m512 xc = _mm512_maskz_max_ps(
      kAllLanes, _mm512_set1_ps(-9.1f), _mm512_maskz_min_ps(kAllLanes, _mm512_set1_ps(9.1f), xv));
  const __m512 n = _mm512_maskz_roundscale_ps(
      kAllLanes, _mm512_mul_ps(xc, _mm512_set1_ps(kTwoLog2e)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), _mm512_add_ps(xc, xc));
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(c7), r, _mm512_set1_ps(c6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
  const __m512 two_n = _mm512_maskz_scalef_ps(kAllLanes, _mm512_set1_ps(1.f), n);
  const __m512 m = _mm512_fmadd_ps(two_n, p, _mm512_sub_ps(two_n, _mm512_set1_ps(1.f)));
  const __m512 y = _mm512_div_ps(m, _mm512_add_ps(m, _mm512_set1_ps(2.f)));
  return V(_mm512_or_ps(y, _mm512_and_ps(xv, _mm512_set1_ps(-0.f))));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 xv = x;
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-9.1f), _mm256_min_ps(_mm256_set1_ps(9.1f), xv));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kTwoLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), _mm256_add_ps(xc, xc));
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(c7), r, _mm256_set1_ps(c6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  const __m256 two_n = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  const __m256 m = _mm256_fmadd_ps(two_n, p, _mm256_sub_ps(two_n, _mm256_set1_ps(1.f)));
  const __m256 y = _mm256_div_ps(m, _mm256_add_ps(m, _mm256_set1_ps(2.f)));
  return V(_mm256_or_ps(y, _mm256_and_ps(xv, _mm256_set1_ps(-0.f))));
#else
  return x.tanh();
#endif
}

template <typename S>
struct CellMath<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V sigmoid(const V& x) {
    if constexpr (std::is_same_v<S, float>) return V(S(1)) / (V(S(1)) + exp_float(x.neg()));
    else return V(S(1)) / (V(S(1)) + x.neg().exp());
  }
  static V tanh(const V& x) {
    if constexpr (std::is_same_v<S, float>) return tanh_float(x);
    else return x.tanh();
  }
  static V relu(const V& x) { return at::vec::maximum(x, V(S(0))); }
  static V relu_grad(const V& y) { return y.gt(V(S(0))); }
};

}  // namespace fusedrnn
