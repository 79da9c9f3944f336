// The native step's attention: one query head (or up to eight of one KV head at once) against the
// shared prompt's keys and its row's own slots, in float32 or bfloat16 caches.
//
// Loops over compile-time tile sizes (queries, key blocks, feature vectors) carry `#pragma GCC unroll`:
// without it GCC kept their accumulator arrays in memory, a load and a store per element per pass.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx.h"
#include "simd.h"

namespace latts {

// KV cache elements: float32 or bfloat16 (uint16_t), read as 8 floats and written from floats.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store_kv(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void store_kv(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {  // round to nearest even, as torch converts
    uint32_t u;
    std::memcpy(&u, src + i, 4);
    dst[i] = static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
  }
}

template <typename KV>
inline float dot_kv(const float* q, const KV* k, int64_t hd) {
  __m256 a = _mm256_mul_ps(_mm256_loadu_ps(q), load8(k));
  for (int64_t c = 8; c < hd; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), load8(k + c), a);
  return hsum(a);
}

// scale * q.K_j for keys [0, n) of one segment into scores: eight keys at a time, their eight
// accumulators reduced together (one horizontal reduction per eight keys, not per key).
template <typename KV>
void scores_of(const float* q, const KV* k, int64_t n, int64_t hd, float scale, float* scores) {
  const __m256 sv = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 acc[8];
    #pragma GCC unroll 16
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < hd; c += 8) {
      const __m256 qv = _mm256_loadu_ps(q + c);
      #pragma GCC unroll 16
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(qv, load8(k + (j + i) * hd + c), acc[i]);
    }
    _mm256_storeu_ps(scores + j, _mm256_mul_ps(hsum8(acc), sv));
  }
  for (; j < n; ++j) scores[j] = dot_kv(q, k + j * hd, hd) * scale;
}

// out (+)= sum_j p_j V_j over one segment's n values, in chunks of 64 features.
template <typename KV>
void mix_values(const float* p, const KV* v, int64_t n, int64_t hd, float* out) {
  for (int64_t c0 = 0; c0 < hd; c0 += 64) {
    const int w = static_cast<int>(std::min<int64_t>(64, hd - c0) / 8);
    __m256 acc[8];
    for (int i = 0; i < w; ++i) acc[i] = _mm256_loadu_ps(out + c0 + 8 * i);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const KV* vr = v + j * hd + c0;
      for (int i = 0; i < w; ++i) acc[i] = _mm256_fmadd_ps(pj, load8(vr + 8 * i), acc[i]);
    }
    for (int i = 0; i < w; ++i) _mm256_storeu_ps(out + c0 + 8 * i, acc[i]);
  }
}

// The shared prompt's part of attention for NQ queries at once (the queries of one KV head): every
// key and value is read, and converted from bf16, once for all of them. Keys come transposed in
// blocks of eight (kt [ceil(P / 8), hd, 8], zero-padded): eight keys' feature c are one vector,
// so the scores need no horizontal sums, and a block's keys are one contiguous kilobyte, which the
// hardware prefetcher streams (a plain [hd, P] transpose made 64 streams and stalled on memory).
// KB blocks of eight keys (from jb on) against NQ queries; KB is a compile-time count, so that the
// NQ x KB accumulators stay in registers.
template <int NQ, int KB, typename KV>
inline void score_blocks(const float* const* q, const KV* kt, int64_t jb, int64_t P, int64_t hd, __m256 sv, float* sc,
                         int64_t ld) {
  __m256 acc[KB][NQ];
  #pragma GCC unroll 16
  for (int k = 0; k < KB; ++k)
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) acc[k][i] = _mm256_setzero_ps();
  const KV* base = kt + jb * hd * 8;
  for (int64_t c = 0; c < hd; ++c) {
    __m256 qc[NQ];
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) qc[i] = _mm256_set1_ps(q[i][c]);
    #pragma GCC unroll 16
    for (int k = 0; k < KB; ++k) {
      const __m256 kv = load8(base + (k * hd + c) * 8);
      #pragma GCC unroll 16
      for (int i = 0; i < NQ; ++i) acc[k][i] = _mm256_fmadd_ps(qc[i], kv, acc[k][i]);
    }
  }
  #pragma GCC unroll 16
  for (int k = 0; k < KB; ++k) {
    const int64_t j = (jb + k) * 8;
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m256 v = _mm256_mul_ps(acc[k][i], sv);
      if (j + 8 <= P) {
        _mm256_storeu_ps(sc + i * ld + j, v);
      } else {  // the last, partial block: its padding keys are not keys
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        for (int64_t u = 0; u < P - j; ++u) sc[i * ld + j + u] = tmp[u];
      }
    }
  }
}

// The shared prompt's part of attention for NQ queries at once (the queries of one KV head): every
// key and value is read, and converted from bf16, once for all of them. Keys come transposed in
// blocks of eight (kt [ceil(P / 8), hd, 8], zero-padded): eight keys' feature c are one vector,
// so the scores need no horizontal sums, and a block's keys are one contiguous kilobyte, which the
// hardware prefetcher streams (a plain [hd, P] transpose made 64 streams and stalled on memory).
template <int NQ, typename KV>
void prefix_scores(const float* const* q, const KV* kt, int64_t P, int64_t hd, float scale, float* sc, int64_t ld) {
  constexpr int KB = NQ >= 8 ? 1 : (NQ >= 4 ? 2 : (NQ >= 2 ? 4 : 8));  // key blocks per pass: >= 8 FMA chains
  const __m256 sv = _mm256_set1_ps(scale);
  const int64_t blocks = (P + 7) / 8;
  int64_t jb = 0;
  for (; jb + KB <= blocks; jb += KB) score_blocks<NQ, KB>(q, kt, jb, P, hd, sv, sc, ld);
  for (; jb < blocks; ++jb) score_blocks<NQ, 1>(q, kt, jb, P, hd, sv, sc, ld);
}

// out[i][c0, c0 + 8W) = sum_j p[i][j] V_j over the prompt's P values, for NQ queries; W compile-time.
template <int NQ, int W, typename KV>
inline void mix_features(const float* p, int64_t ld, const KV* v, int64_t P, int64_t hd, int64_t c0,
                         float* const* out) {
  __m256 acc[NQ][W];
  #pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < W; ++u) acc[i][u] = _mm256_setzero_ps();
  for (int64_t j = 0; j < P; ++j) {
    __m256 vv[W];
    #pragma GCC unroll 16
    for (int u = 0; u < W; ++u) vv[u] = load8(v + j * hd + c0 + 8 * u);
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m256 pij = _mm256_set1_ps(p[i * ld + j]);
      #pragma GCC unroll 16
      for (int u = 0; u < W; ++u) acc[i][u] = _mm256_fmadd_ps(pij, vv[u], acc[i][u]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < W; ++u) _mm256_storeu_ps(out[i] + c0 + 8 * u, acc[i][u]);
}

// out[i] = sum_j p[i][j] V_j over the shared prompt's P values, for NQ queries at once.
template <int NQ, typename KV>
void prefix_mix(const float* p, int64_t ld, const KV* v, int64_t P, int64_t hd, float* const* out) {
  constexpr int W = NQ >= 4 ? 2 : 4;  // vectors of features per pass: at least eight FMA chains
  int64_t c0 = 0;
  for (; c0 + 8 * W <= hd; c0 += 8 * W) mix_features<NQ, W>(p, ld, v, P, hd, c0, out);
  for (; c0 < hd; c0 += 8) mix_features<NQ, 1>(p, ld, v, P, hd, c0, out);
}

// softmax numerators of n scores in place; returns their sum.
inline float exp_in_place(float* sc, int64_t n) {
  __m256 mx8 = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mx8 = _mm256_max_ps(mx8, _mm256_loadu_ps(sc + j));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx8), _mm256_extractf128_ps(mx8, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float mx = _mm_cvtss_f32(m4);
  for (; j < n; ++j) mx = std::max(mx, sc[j]);
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 sum8 = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mv));
    _mm256_storeu_ps(sc + j, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = hsum(sum8);
  for (; j < n; ++j) {
    sc[j] = std::exp(sc[j] - mx);
    sum += sc[j];
  }
  return sum;
}

// Where a query's keys are: the shared prompt (kt transposed, pv) and its row's own slots.
template <typename KV>
struct QueryKeys {
  const float* q;
  const KV* own_k;
  const KV* own_v;
  int64_t n_own;
  float* out;
};

// A query's own slots: their scores after the prompt's in its row of scores, one softmax over both;
// returns 1 / the softmax's sum.
template <typename KV>
inline float own_scores_and_exp(const QueryKeys<KV>& qk, int64_t P, int64_t hd, float scale, float* row) {
  scores_of(qk.q, qk.own_k, qk.n_own, hd, scale, row + P);
  return 1.0f / exp_in_place(row, P + qk.n_own);
}

// out *= inv (a softmax's 1 / sum), hd features.
inline void normalize(float* out, int64_t hd, float inv) {
  const __m256 iv = _mm256_set1_ps(inv);
  for (int64_t c = 0; c < hd; c += 8) _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(out + c), iv));
}

// Its own slots' values added to its output (the prompt's part already there), then normalised.
template <typename KV>
inline void own_values_and_normalize(const QueryKeys<KV>& qk, const float* row, int64_t P, int64_t hd, float inv) {
  mix_values(row + P, qk.own_v, qk.n_own, hd, qk.out);
  normalize(qk.out, hd, inv);
}

// NQ queries of one KV head: scores against the prompt (together) and their own slots, one softmax
// over both, then the values. sc: NQ rows of ld >= P + n_own floats.
template <int NQ, typename KV>
void attend_block(const QueryKeys<KV>* qs, const KV* kt, const KV* pv, int64_t P, int64_t hd, float scale, float* sc,
                  int64_t ld) {
  const float* q[NQ];
  float* out[NQ];
  for (int i = 0; i < NQ; ++i) { q[i] = qs[i].q; out[i] = qs[i].out; }
  prefix_scores<NQ>(q, kt, P, hd, scale, sc, ld);
  float inv[NQ];
  for (int i = 0; i < NQ; ++i) inv[i] = own_scores_and_exp(qs[i], P, hd, scale, sc + i * ld);
  prefix_mix<NQ>(sc, ld, pv, P, hd, out);
  for (int i = 0; i < NQ; ++i) own_values_and_normalize(qs[i], sc + i * ld, P, hd, inv[i]);
}

constexpr int kMaxQueries = 8;  // queries per attention block

template <typename KV>
void attend_queries(const QueryKeys<KV>* qs, int n, const KV* kt, const KV* pv, int64_t P, int64_t hd, float scale,
                    float* sc, int64_t ld) {
  switch (n) {
    case 1: attend_block<1>(qs, kt, pv, P, hd, scale, sc, ld); break;
    case 2: attend_block<2>(qs, kt, pv, P, hd, scale, sc, ld); break;
    case 3: attend_block<3>(qs, kt, pv, P, hd, scale, sc, ld); break;
    case 4: attend_block<4>(qs, kt, pv, P, hd, scale, sc, ld); break;
    case 5: attend_block<5>(qs, kt, pv, P, hd, scale, sc, ld); break;
    case 6: attend_block<6>(qs, kt, pv, P, hd, scale, sc, ld); break;
    case 7: attend_block<7>(qs, kt, pv, P, hd, scale, sc, ld); break;
    default: attend_block<8>(qs, kt, pv, P, hd, scale, sc, ld); break;
  }
}


#if defined(__AVX512BF16__)
// The shared prompt's part of attention in bf16 dot products (AVX512-BF16: one instruction multiplies
// 32 bf16 pairs and accumulates them in 16 float32 lanes), where the KV cache is bf16: twice the fp32
// FMA rate, and no widening of the keys and values on the way. The queries and the softmax's weights
// are rounded to bf16 (round to nearest even, as the cache itself was) and every sum is float32.
// Layouts (made once per prompt, engine/native.py): keys kp [ceil(P / 16), hd / 2, 16, 2] (a block's
// sixteen keys' features c and c + 1 in one vector), values vp [ceil(P / 2), hd, 2] (two keys'
// feature c side by side); padding keys and values are zeros.
constexpr bool kPairAttention = true;
constexpr int64_t kPairKeys = 16;  // keys per block of kp

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// n floats to bf16 (round to nearest even); n even, the pairs read as uint32 by the kernels below.
inline void to_bf16(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), reinterpret_cast<const __m256i&>(b));
  }
  store_kv(dst + i, src + i, n - i);
}

// KB blocks of sixteen keys (from jb on) against NQ queries (bf16 pairs); scores scaled into sc.
template <int NQ, int KB>
inline void pair_score_blocks(const uint32_t* const* q, const uint16_t* kp, int64_t jb, int64_t P, int64_t hd,
                              __m512 sv, float* sc, int64_t ld) {
  __m512 acc[KB][NQ];
  #pragma GCC unroll 16
  for (int k = 0; k < KB; ++k)
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) acc[k][i] = _mm512_setzero_ps();
  const int64_t h2 = hd / 2;
  const uint16_t* base = kp + jb * hd * kPairKeys;
  for (int64_t c = 0; c < h2; ++c) {
    __m512bh qc[NQ];
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) qc[i] = as_bh(_mm512_set1_epi32(static_cast<int>(q[i][c])));
    #pragma GCC unroll 16
    for (int k = 0; k < KB; ++k) {
      const __m512bh kv = as_bh(_mm512_loadu_si512(base + (k * h2 + c) * 2 * kPairKeys));
      #pragma GCC unroll 16
      for (int i = 0; i < NQ; ++i) acc[k][i] = _mm512_dpbf16_ps(acc[k][i], qc[i], kv);
    }
  }
  #pragma GCC unroll 16
  for (int k = 0; k < KB; ++k) {
    const int64_t j = (jb + k) * kPairKeys;
    const __mmask16 keep = j + kPairKeys <= P ? 0xFFFF : static_cast<__mmask16>((1u << (P - j)) - 1);
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) _mm512_mask_storeu_ps(sc + i * ld + j, keep, _mm512_mul_ps(acc[k][i], sv));
  }
}

template <int NQ>
void pair_prefix_scores(const uint32_t* const* q, const uint16_t* kp, int64_t P, int64_t hd, float scale, float* sc,
                        int64_t ld) {
  constexpr int KB = NQ >= 4 ? 2 : (NQ >= 2 ? 4 : 8);  // key blocks per pass: >= 8 accumulation chains
  const __m512 sv = _mm512_set1_ps(scale);
  const int64_t blocks = (P + kPairKeys - 1) / kPairKeys;
  int64_t jb = 0;
  for (; jb + KB <= blocks; jb += KB) pair_score_blocks<NQ, KB>(q, kp, jb, P, hd, sv, sc, ld);
  for (; jb < blocks; ++jb) pair_score_blocks<NQ, 1>(q, kp, jb, P, hd, sv, sc, ld);
}

// out[i][c0, c0 + 16W) = sum_j p[i][j] V_j over the prompt's P2 pairs of values, for NQ queries.
template <int NQ, int W>
inline void pair_mix_features(const uint32_t* const* p, const uint16_t* vp, int64_t P2, int64_t hd, int64_t c0,
                              float* const* out) {
  __m512 acc[NQ][W];
  #pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < W; ++u) acc[i][u] = _mm512_setzero_ps();
  for (int64_t j = 0; j < P2; ++j) {
    __m512bh vv[W];
    #pragma GCC unroll 16
    for (int u = 0; u < W; ++u) vv[u] = as_bh(_mm512_loadu_si512(vp + (j * hd + c0 + 16 * u) * 2));
    #pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m512bh pij = as_bh(_mm512_set1_epi32(static_cast<int>(p[i][j])));
      #pragma GCC unroll 16
      for (int u = 0; u < W; ++u) acc[i][u] = _mm512_dpbf16_ps(acc[i][u], pij, vv[u]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < W; ++u) _mm512_storeu_ps(out[i] + c0 + 16 * u, acc[i][u]);
}

template <int NQ>
void pair_prefix_mix(const uint32_t* const* p, const uint16_t* vp, int64_t P, int64_t hd, float* const* out) {
  constexpr int W = NQ > 6 ? 2 : 4;  // vectors of 16 features per pass: the accumulators fit in registers
  const int64_t P2 = (P + 1) / 2;
  int64_t c0 = 0;
  for (; c0 + 16 * W <= hd; c0 += 16 * W) pair_mix_features<NQ, W>(p, vp, P2, hd, c0, out);
  for (; c0 < hd; c0 += 16) pair_mix_features<NQ, 1>(p, vp, P2, hd, c0, out);
}

// Sixteen vectors' sums in one vector: lane k = the sum of a[k]'s lanes (a transposing tree of adds).
inline __m512 hsum16(const __m512 a[16]) {
  __m512 t[8], u[4];
  #pragma GCC unroll 16
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] of a = a[2i], b = a[2i + 1]
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: the lane's part of the sums of a[4i .. 4i + 3]
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
  const __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD));
}

// A query's own slots in bf16 dot products, as the prompt's part: its own keys and values are rows of
// hd bf16 ([slot, hd], written a token at a time), so the scores take sixteen keys per pass with one
// transposing sum, and the values two slots per pass, interleaved feature by feature. Needs hd % 32 == 0
// (else, and for a last odd slot or fewer than sixteen keys, the float32 kernels do the rest).
inline bool pair_own_fits(int64_t hd) { return hd % 32 == 0; }

// scale * q.K_j for the own slots j < n: qb the query in bf16, q the same query in float32.
inline void pair_own_scores(const uint16_t* qb, const float* q, const uint16_t* k, int64_t n, int64_t hd, float scale,
                            float* scores) {
  const __m512 sv = _mm512_set1_ps(scale);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < hd; c += 32) {
      const __m512bh qv = as_bh(_mm512_loadu_si512(qb + c));
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], qv, as_bh(_mm512_loadu_si512(k + (j + i) * hd + c)));
    }
    _mm512_storeu_ps(scores + j, _mm512_mul_ps(hsum16(acc), sv));
  }
  if (j < n) scores_of(q, k + j * hd, n - j, hd, scale, scores + j);
}

// out += sum_j p_j V_j over the own slots j < n: pb the weights p in bf16 (pairs as uint32).
inline void pair_own_values(const float* p, const uint32_t* pb, const uint16_t* v, int64_t n, int64_t hd, float* out) {
  const int64_t pairs = n / 2;
  // unpacklo/hi interleave two slots' features within 128-bit lanes: lo accumulates features 8L + 0..3
  // of lane L, hi 8L + 4..7; these indices put sixteen features back in order
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int64_t c0 = 0; pairs && c0 < hd; c0 += 32) {
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    for (int64_t i = 0; i < pairs; ++i) {
      const __m512i a = _mm512_loadu_si512(v + 2 * i * hd + c0), b = _mm512_loadu_si512(v + (2 * i + 1) * hd + c0);
      const __m512bh w = as_bh(_mm512_set1_epi32(static_cast<int>(pb[i])));
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(a, b)), w);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(a, b)), w);
    }
    _mm512_storeu_ps(out + c0, _mm512_add_ps(_mm512_loadu_ps(out + c0), _mm512_permutex2var_ps(lo, first, hi)));
    _mm512_storeu_ps(out + c0 + 16,
                     _mm512_add_ps(_mm512_loadu_ps(out + c0 + 16), _mm512_permutex2var_ps(lo, second, hi)));
  }
  if (n & 1) mix_values(p + n - 1, v + (n - 1) * hd, 1, hd, out);
}

// Where a query's bf16 weights of its own slots start in its scratch row (after the prompt's pairs).
inline int64_t own_weights_at(int64_t P) { return (P + 1) & ~int64_t{1}; }

// One query whose prompt scores are in row: its own slots' scores, one softmax over both, and the weights in
// bf16 pairs after its rounded query in qrow (hd values, then the weights); returns 1 / the softmax's sum.
inline float pair_weights(const QueryKeys<uint16_t>& qk, int64_t P, int64_t hd, float scale, float* row, uint16_t* qrow) {
  uint16_t* pb = qrow + hd;
  float inv;
  if (pair_own_fits(hd)) {
    pair_own_scores(qrow, qk.q, qk.own_k, qk.n_own, hd, scale, row + P);
    inv = 1.0f / exp_in_place(row, P + qk.n_own);
    to_bf16(row + P, qk.n_own & ~int64_t{1}, pb + own_weights_at(P));
  } else {
    inv = own_scores_and_exp(qk, P, hd, scale, row);
  }
  to_bf16(row, P & ~int64_t{1}, pb);
  if (P & 1) {  // the last pair: the last weight and a zero one (its value is padding)
    store_kv(pb + P - 1, row + P - 1, 1);
    pb[P] = 0;
  }
  return inv;
}

// Its own slots' values added to a query's output (the prompt's part already there), then normalised.
inline void pair_own_and_normalize(const QueryKeys<uint16_t>& qk, int64_t P, int64_t hd, const float* row,
                                   const uint16_t* qrow, float inv) {
  if (!pair_own_fits(hd)) {
    own_values_and_normalize(qk, row, P, hd, inv);
    return;
  }
  const uint32_t* own_w = reinterpret_cast<const uint32_t*>(qrow + hd + own_weights_at(P));
  pair_own_values(row + P, own_w, qk.own_v, qk.n_own, hd, qk.out);
  normalize(qk.out, hd, inv);
}

// As attend_block, with the prompt's part in bf16 dot products (and its own slots, where hd % 32 == 0).
// scratch: NQ x (ld + hd) bf16 values for the rounded queries and weights.
template <int NQ>
void pair_attend_block(const QueryKeys<uint16_t>* qs, const uint16_t* kp, const uint16_t* vp, int64_t P, int64_t hd,
                       float scale, float* sc, int64_t ld, uint16_t* scratch) {
  const uint32_t* q[NQ];
  const uint32_t* p[NQ];
  float* out[NQ];
  for (int i = 0; i < NQ; ++i) {
    uint16_t* qb = scratch + i * (ld + hd);
    to_bf16(qs[i].q, hd, qb);
    q[i] = reinterpret_cast<const uint32_t*>(qb);
    p[i] = reinterpret_cast<const uint32_t*>(qb + hd);
    out[i] = qs[i].out;
  }
  pair_prefix_scores<NQ>(q, kp, P, hd, scale, sc, ld);
  float inv[NQ];
  for (int i = 0; i < NQ; ++i) inv[i] = pair_weights(qs[i], P, hd, scale, sc + i * ld, scratch + i * (ld + hd));
  pair_prefix_mix<NQ>(p, vp, P, hd, out);
  for (int i = 0; i < NQ; ++i) pair_own_and_normalize(qs[i], P, hd, sc + i * ld, scratch + i * (ld + hd), inv[i]);
}

inline void pair_attend_queries(const QueryKeys<uint16_t>* qs, int n, const uint16_t* kp, const uint16_t* vp,
                                int64_t P, int64_t hd, float scale, float* sc, int64_t ld, uint16_t* scratch) {
  switch (n) {
    case 1: pair_attend_block<1>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    case 2: pair_attend_block<2>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    case 3: pair_attend_block<3>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    case 4: pair_attend_block<4>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    case 5: pair_attend_block<5>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    case 6: pair_attend_block<6>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    case 7: pair_attend_block<7>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
    default: pair_attend_block<8>(qs, kp, vp, P, hd, scale, sc, ld, scratch); break;
  }
}
#if LATTS_AMX
// Up to sixteen queries of one KV head against the prompt on AMX tiles: the scores of sixteen queries x
// sixteen keys in one tile (two bf16 products of 32 features for hd = 64), the weighted values of sixteen
// queries x sixteen features per tile over 32 keys at a time; float32 sums throughout. The queries and the
// weights are rounded to bf16 as in pair_attend_block, their own slots and the softmax are its own, and the
// kp/vp layouts are its, so this is the same arithmetic in another order of float32 sums. Needs
// hd % 32 == 0, vp padded with zeros to a multiple of 32 keys, sc rows of ld >= P + 16 and scratch rows of
// ld + hd for sixteen queries (rows past n are left as they are: each tile row is its own query).
constexpr int kTileQueries = 16;

inline bool amx_attention_fits(int64_t hd) { return hd % 32 == 0 && hd <= 128; }

inline void configure_attention_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  _tile_loadconfig(&c);
}

// Scores of the queries (bf16 rows of scratch, row_bytes apart) against the prompt's key blocks, unscaled:
// tiles 0..CH-1 hold the queries' features in chunks of 32 for the whole pass, tile 6 a key block's chunk,
// tile 7 the sixteen scores of each query.
template <int CH>
inline void amx_prompt_scores(const uint16_t* scratch, int64_t row_bytes, const uint16_t* kp, int64_t P, int64_t hd,
                              float* sc, int64_t ld) {
  _tile_loadd(0, scratch, row_bytes);
  if constexpr (CH > 1) _tile_loadd(1, scratch + 32, row_bytes);
  if constexpr (CH > 2) _tile_loadd(2, scratch + 64, row_bytes);
  if constexpr (CH > 3) _tile_loadd(3, scratch + 96, row_bytes);
  const int64_t blocks = (P + kPairKeys - 1) / kPairKeys;
  constexpr int64_t chunk = 16 * 2 * kPairKeys;  // one chunk of 32 features of a block of keys, in bf16 values
  for (int64_t jb = 0; jb < blocks; ++jb) {
    const uint16_t* base = kp + jb * hd * kPairKeys;
    _tile_zero(7);
    _tile_loadd(6, base, 64);
    _tile_dpbf16ps(7, 0, 6);
    if constexpr (CH > 1) { _tile_loadd(6, base + chunk, 64); _tile_dpbf16ps(7, 1, 6); }
    if constexpr (CH > 2) { _tile_loadd(6, base + 2 * chunk, 64); _tile_dpbf16ps(7, 2, 6); }
    if constexpr (CH > 3) { _tile_loadd(6, base + 3 * chunk, 64); _tile_dpbf16ps(7, 3, 6); }
    _tile_stored(7, sc + jb * kPairKeys, ld * 4);
  }
}

inline void amx_attend_block(const QueryKeys<uint16_t>* qs, int n, const uint16_t* kp, const uint16_t* vp, int64_t P,
                             int64_t hd, float scale, float* sc, int64_t ld, uint16_t* scratch, float* outbuf) {
  configure_attention_tiles();
  const int64_t row_bytes = (ld + hd) * 2;
  for (int i = 0; i < n; ++i) to_bf16(qs[i].q, hd, scratch + i * (ld + hd));
  switch (hd / 32) {
    case 1: amx_prompt_scores<1>(scratch, row_bytes, kp, P, hd, sc, ld); break;
    case 2: amx_prompt_scores<2>(scratch, row_bytes, kp, P, hd, sc, ld); break;
    case 3: amx_prompt_scores<3>(scratch, row_bytes, kp, P, hd, sc, ld); break;
    default: amx_prompt_scores<4>(scratch, row_bytes, kp, P, hd, sc, ld); break;
  }
  const __m512 sv = _mm512_set1_ps(scale);
  const int64_t padded = (P + 31) / 32 * 32;
  float inv[kTileQueries];
  for (int i = 0; i < n; ++i) {
    float* row = sc + i * ld;
    int64_t j = 0;
    for (; j + 16 <= P; j += 16) _mm512_storeu_ps(row + j, _mm512_mul_ps(_mm512_loadu_ps(row + j), sv));
    if (j < P) {
      const __mmask16 m = static_cast<__mmask16>((1u << (P - j)) - 1);
      _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), sv));
    }
    uint16_t* pb = scratch + i * (ld + hd) + hd;
    std::memset(pb + P, 0, (padded - P) * sizeof(uint16_t));  // the last key chunk's padding weighs nothing
    inv[i] = pair_weights(qs[i], P, hd, scale, row, scratch + i * (ld + hd));
  }
  // values: tile 4 the weights of 32 keys, tiles 0..3 sixteen features each (64 at a time)
  for (int64_t f0 = 0; f0 < hd; f0 += 64) {
    const int tiles = static_cast<int>(std::min<int64_t>(4, (hd - f0) / 16));
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t kc = 0; kc < padded / 32; ++kc) {
      _tile_loadd(4, scratch + hd + kc * 32, row_bytes);
      const uint16_t* v = vp + (kc * 16 * hd + f0) * 2;
      _tile_loadd(5, v, hd * 4);
      _tile_dpbf16ps(0, 4, 5);
      if (tiles > 1) { _tile_loadd(6, v + 32, hd * 4); _tile_dpbf16ps(1, 4, 6); }
      if (tiles > 2) { _tile_loadd(7, v + 64, hd * 4); _tile_dpbf16ps(2, 4, 7); }
      if (tiles > 3) { _tile_loadd(5, v + 96, hd * 4); _tile_dpbf16ps(3, 4, 5); }
    }
    _tile_stored(0, outbuf + f0, hd * 4);
    if (tiles > 1) _tile_stored(1, outbuf + f0 + 16, hd * 4);
    if (tiles > 2) _tile_stored(2, outbuf + f0 + 32, hd * 4);
    if (tiles > 3) _tile_stored(3, outbuf + f0 + 48, hd * 4);
  }
  for (int i = 0; i < n; ++i) {
    std::memcpy(qs[i].out, outbuf + i * hd, hd * sizeof(float));
    pair_own_and_normalize(qs[i], P, hd, sc + i * ld, scratch + i * (ld + hd), inv[i]);
  }
}
#endif
#else
constexpr bool kPairAttention = false;
#endif

}  // namespace latts
