// 8-bit activations times block-quantized weights, in integers: what a decode step's projections run on.
//
// Activations are quantized once per projection input to blocks of 32 int8 with an fp32 scale (and
// the quantized block's sum, for the Q4_1 offset). Weight blocks are GGUF's: Q4 = d * q + m with q in
// 0..15 (Q4_1; Q4_0 is m = -8d) and Q8 = d * q with q in -128..127. A block's dot product is exact in
// int32; the scales multiply in fp32. llama.cpp's CPU backend computes the same way (its Q8_1
// activations), so this path's error is the peer's.
//
// The u8 x s8 multiply-accumulate is AVX-512 VNNI's (or AVX-VNNI's) vpdpbusd where the compiler
// targets it (-march=native) and AVX2's maddubs + madd elsewhere (exact too: |pair sums| < 2^15).
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "simd.h"

namespace latts {

#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define LATTS_VNNI 1  // u8 x s8 products accumulate in int32 without intermediate saturation
#else
#define LATTS_VNNI 0
#endif

// acc + the sums of u8 x s8 products in groups of 4 bytes (eight int32 lanes).
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else  // exact as long as a pair's sum fits int16: |u| <= 128, |s| <= 127
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// A Q4 weight block's 32 levels (0..15) as bytes in the activations' order (byte j = q[j] | q[j+16] << 4).
inline __m256i q4_levels(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
}

inline float hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return static_cast<float>(_mm_cvtsi128_si32(s));
}

// One row of K floats as K/32 blocks: int8 levels q (round to nearest, |q| <= 127), scale d
// (x ~ d * q), the sum of its levels qsum, and s = d * qsum, the sum of the quantized block. Block b
// goes to q + b * stride * 32 and d, s, qsum [b * stride] (stride: the rows a block-major buffer holds).
// Q4_1's offsets multiply s, not the exact sum: then a product's error is sum(w * (xq - x)) over
// the centred weights, whose signs cancel the rounding errors; with the exact sum the error would
// be sum((w - m) * (xq - x)) over the all-positive d * q (4x the mean KL on the default model).
inline void quantize_row(const float* x, int64_t K, int8_t* q, float* d, float* s, int32_t* qsum, int64_t stride = 1) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < K / kBlock; ++b, q += stride * kBlock, d += stride, s += stride, qsum += stride) {
    const float* xb = x + b * kBlock;
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                      _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float m = _mm_cvtss_f32(m4);
    *d = m / 127.0f;
    const __m256 inv = _mm256_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], inv));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], inv));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], inv));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], inv));
    *qsum = static_cast<int32_t>(hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3))));
    *s = *d * static_cast<float>(*qsum);
    i0 = _mm256_packs_epi32(i0, i1);  // lanes interleaved by 128-bit halves; undone below
    i2 = _mm256_packs_epi32(i2, i3);
    i0 = _mm256_packs_epi16(i0, i2);
    i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), i0);
  }
}

}  // namespace latts
