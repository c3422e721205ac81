// Horizontal sums of 16 float32 vectors, for code compiled with AVX-512 F: the
// in-place dot products of the per-ISA units (gemm.h) and of the bfloat16 dot
// engine (amx_bf16.cpp). Internal linkage, so that no copy compiled with one
// unit's flags serves another's.
#pragma once

#include <immintrin.h>

namespace fusedrnn::cpu {

// Lane q of the result = the sum of the lanes of acc[q] (16 vectors, acc an
// array or a pointer): one transposing reduction, about 3 instructions a sum,
// instead of 16 reductions of about 10. acc is read element by element into a
// copy: handed the caller's accumulators by address, GCC kept them in memory
// around the caller's loop over K (zeroed with rep stos, stored after the
// loop, read back here). The zero-masking forms over every lane compile to the
// unmasked instructions, without the plain forms' undefined pass-through
// operand, through which GCC 12's headers warn (-Wuninitialized) once inlined.
template <typename A>
static inline __attribute__((always_inline)) __m512 hsum16(const A& acc) {
  constexpr __mmask16 kAll = 0xFFFF;
  const __m512 r[16] = {acc[0], acc[1], acc[2],  acc[3],  acc[4],  acc[5],  acc[6],  acc[7],
                        acc[8], acc[9], acc[10], acc[11], acc[12], acc[13], acc[14], acc[15]};
  __m512 s[8];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = r[2 * i], b = r[2 * i + 1];
    s[i] = _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll, a, b),
                         _mm512_maskz_unpackhi_ps(kAll, a, b));
  }
  __m512 w[4];
  for (int q = 0; q < 4; ++q) {
    const __m512 a = s[2 * q], b = s[2 * q + 1];
    w[q] = _mm512_add_ps(_mm512_maskz_shuffle_ps(kAll, a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_maskz_shuffle_ps(kAll, a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  constexpr int kLo = _MM_SHUFFLE(2, 0, 2, 0), kHi = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 y01 = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, w[0], w[1], kLo),
                                   _mm512_maskz_shuffle_f32x4(kAll, w[0], w[1], kHi));
  const __m512 y23 = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, w[2], w[3], kLo),
                                   _mm512_maskz_shuffle_f32x4(kAll, w[2], w[3], kHi));
  return _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, y01, y23, kLo),
                       _mm512_maskz_shuffle_f32x4(kAll, y01, y23, kHi));
}

}  // namespace fusedrnn::cpu
