// One decode (or verify) step of the whole layer stack in one native call.
//
// A small-batch step on a CPU is a few milliseconds of arithmetic spread over hundreds of small
// operations; run as torch ops, their dispatch and set-up cost more than the arithmetic. Here a
// step is one call: both cores enter once (a torch parallel region) and meet at a spin barrier
// between the phases of each layer — norms and activation quantization, the fused q/k/v
// projection, q/k norms and rotary embedding, the K/V write, attention against the shared prompt
// and each row's own slots, the output projection and residual, the gated MLP, and finally the
// lm_head at every real token.
//
// Rows may be ragged (a verify where rows propose different numbers of drafts): row b's first
// lengths[b] tokens are real, at positions start[b] + i; padding is skipped entirely. The KV cache
// is latts' layout (engine/kv_cache.py): the prompt's K/V once, [L, 1, G, P, hd], and each row's
// own slots [L, rows, G, S, hd] (slot j = position P + j), float32 or bfloat16.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "simd.h"
#include "simd_int8.h"

namespace {
using namespace latts;

enum Kind : int64_t { kQ4 = 0, kQ8 = 1 };

// A projection y = x W^T (+ bias) with W [N, K] in blocks of 32 along K, repacked for the kernel:
// outputs in groups of 8, and for each group and block the 8 rows' weights interleaved four bytes
// at a time, so that one 32-byte vector holds 4 consecutive weights of each of the 8 outputs. One
// u8 x s8 multiply-accumulate of that vector with 4 activation bytes broadcast then feeds 8
// outputs at once, and a block's scales apply to 8 outputs in one vector operation.
//   q4: per (group, block) 128 bytes; byte 4n + i of chunk c (c < 4) holds output n's levels
//       4c + i (low nibble) and 16 + 4c + i (high nibble); scales: 8 d then 8 m (fp16)
//   q8: per (group, block) 256 bytes; byte 4n + i of chunk c holds output n's weight 4c + i; 8 d.
//       With VNNI the weights are stored plus 128 (unsigned), and 128 x the activation block's
//       level sum is taken off the dot product; AVX2's 16-bit pair sums could overflow there, so
//       it keeps the signed weights and moves their signs onto the activations instead.
struct Proj {
  Kind kind = kQ4;
  std::vector<uint8_t> qs;
  std::vector<uint16_t> scales;
  const float* bias = nullptr;  // [N] or null
  int64_t N = 0, K = 0, nb = 0;
  int64_t block_bytes() const { return kind == kQ4 ? 128 : 256; }
  int64_t block_scales() const { return kind == kQ4 ? 16 : 8; }
};

// qs/d/m as kernels/__init__.py packs them (row-major blocks; byte j of a q4 block = q[j] | q[j + 16] << 4).
Proj repack(Kind kind, const uint8_t* qs, const uint16_t* d, const uint16_t* m, int64_t N, int64_t K) {
  Proj p;
  p.kind = kind;
  p.N = N;
  p.K = K;
  p.nb = K / kBlock;
  const int64_t nb = p.nb, groups = N / 8;
  p.qs.resize(groups * nb * p.block_bytes());
  p.scales.resize(groups * nb * p.block_scales());
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* out = p.qs.data() + (g * nb + b) * p.block_bytes();
      uint16_t* sc = p.scales.data() + (g * nb + b) * p.block_scales();
      for (int64_t n = 0; n < 8; ++n) {
        const int64_t row = g * 8 + n;
        sc[n] = d[row * nb + b];
        if (kind == kQ4) {
          sc[8 + n] = m[row * nb + b];
          const uint8_t* src = qs + (row * nb + b) * (kBlock / 2);
          for (int64_t c = 0; c < 4; ++c)
            for (int64_t i = 0; i < 4; ++i) out[c * 32 + n * 4 + i] = src[4 * c + i];  // lo: 4c+i, hi: 16+4c+i
        } else {
          const uint8_t* src = qs + (row * nb + b) * kBlock;
          for (int64_t c = 0; c < 8; ++c)
            for (int64_t i = 0; i < 4; ++i)
              out[c * 32 + n * 4 + i] = LATTS_VNNI ? static_cast<uint8_t>(src[4 * c + i] ^ 0x80) : src[4 * c + i];
        }
      }
    }
  }
  return p;
}

// [begin, end) of n items for thread tid of team, in whole multiples of align.
inline std::pair<int64_t, int64_t> share(int64_t n, int64_t tid, int64_t team, int64_t align = 1) {
  const int64_t units = (n + align - 1) / align;
  const int64_t b = units * tid / team * align, e = units * (tid + 1) / team * align;
  return {std::min(b, n), std::min(e, n)};
}

struct Layer {
  Proj qkv, o, gate_up, down;
  const float* norm_attn = nullptr;
  const float* norm_mlp = nullptr;
  const float* qk_norm = nullptr;  // [H + G, hd] or null
  float scale = 1.0f;
};

// Activations as 8-bit blocks: rows x K levels, per block a scale and the exact sum.
struct QAct {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<int32_t> qsum;
  int64_t K = 0, nb = 0;
  void reserve(int64_t rows, int64_t max_k) {
    q.resize(rows * max_k);
    d.resize(rows * max_k / kBlock);
    s.resize(rows * max_k / kBlock);
    qsum.resize(rows * max_k / kBlock);
  }
  void set_k(int64_t k) { K = k; nb = k / kBlock; }
  void quantize(int64_t t, const float* x) {
    quantize_row(x, K, q.data() + t * K, d.data() + t * nb, s.data() + t * nb, qsum.data() + t * nb);
  }
};

// ---------------------------------------------------------------------------------------------
// The projections: 8 outputs x RT activation rows per tile; a block's unpacked weights are reused
// for every row of the tile.

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

constexpr int64_t kPrefetch = 1024;  // bytes of weights ahead

template <Kind F, int RT>
void tile(const Proj& p, const QAct& a, int64_t t0, int64_t g, float* y, int64_t ldy, bool add) {
  const int64_t nb = p.nb, K = p.K;
  __m256 acc[RT];
  for (int r = 0; r < RT; ++r) acc[r] = _mm256_setzero_ps();
  const int8_t* xq = a.q.data() + t0 * K;
  const float* xd = a.d.data() + t0 * nb;
  const float* xs = a.s.data() + t0 * nb;
  const int32_t* xsum = a.qsum.data() + t0 * nb;
  const uint8_t* wp = p.qs.data() + g * nb * p.block_bytes();
  const uint16_t* sp = p.scales.data() + g * nb * p.block_scales();
  for (int64_t b = 0; b < nb; ++b, wp += p.block_bytes(), sp += p.block_scales()) {
    // the weights stream from memory once per step: ask for them well ahead of the multiplies
    for (int64_t off = 0; off < p.block_bytes(); off += 64) _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetch + off), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(sp + kPrefetch / 4), _MM_HINT_T0);
    __m256i w[8];
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp)));
    if constexpr (F == kQ4) {
      const __m256i mask = _mm256_set1_epi8(0x0F);
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * c));
        w[c] = _mm256_and_si256(v, mask);
        w[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      }
      const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 8)));
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * K + b * kBlock;
        __m256i s = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) s = dot_u8s8(s, w[c], bcast4(xb + 4 * c));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b])), acc[r]);
        acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[r * nb + b]), acc[r]);
      }
    } else {
      for (int c = 0; c < 8; ++c) w[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * c));
#if LATTS_VNNI
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * K + b * kBlock;
        __m256i s = _mm256_set1_epi32(-128 * xsum[r * nb + b]);  // the weights' +128, taken off
        for (int c = 0; c < 8; ++c) s = dot_u8s8(s, w[c], bcast4(xb + 4 * c));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b])), acc[r]);
      }
#else
      __m256i wabs[8];
      for (int c = 0; c < 8; ++c) wabs[c] = _mm256_sign_epi8(w[c], w[c]);
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * K + b * kBlock;
        __m256i s = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) s = dot_u8s8(s, wabs[c], _mm256_sign_epi8(bcast4(xb + 4 * c), w[c]));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b])), acc[r]);
      }
      (void)xsum;
#endif
    }
  }
  const __m256 bias = p.bias ? _mm256_loadu_ps(p.bias + g * 8) : _mm256_setzero_ps();
  for (int r = 0; r < RT; ++r) {
    float* out = y + (t0 + r) * ldy + g * 8;
    __m256 v = _mm256_add_ps(acc[r], bias);
    if (add) v = _mm256_add_ps(v, _mm256_loadu_ps(out));
    _mm256_storeu_ps(out, v);
  }
}

// y[t, 8 g0 : 8 g1] (+)= x[t] . W[8 g0 : 8 g1] for every row t < T.
template <Kind F>
void project_groups(const Proj& p, const QAct& a, int64_t T, int64_t g0, int64_t g1, float* y, int64_t ldy, bool add) {
  for (int64_t g = g0; g < g1; ++g) {
    int64_t t = 0;
#ifdef __AVX512VL__  // 32 vector registers: eight rows' accumulators beside a block's eight weight vectors
    for (; t + 8 <= T; t += 8) tile<F, 8>(p, a, t, g, y, ldy, add);
    if (T - t > 4) { tile<F, 4>(p, a, t, g, y, ldy, add); t += 4; }
#endif
    for (; t + 4 <= T; t += 4) tile<F, 4>(p, a, t, g, y, ldy, add);
    switch (T - t) {
      case 1: tile<F, 1>(p, a, t, g, y, ldy, add); break;
      case 2: tile<F, 2>(p, a, t, g, y, ldy, add); break;
      case 3: tile<F, 3>(p, a, t, g, y, ldy, add); break;
      default: break;
    }
  }
}

// Thread tid's share of y = x W^T (+ y when add), split by output groups.
void project(const Proj& p, const QAct& a, int64_t T, int64_t tid, int64_t team, float* y, int64_t ldy, bool add) {
  const auto [g0, g1] = share(p.N / 8, tid, team);
  if (p.kind == kQ4) project_groups<kQ4>(p, a, T, g0, g1, y, ldy, add);
  else project_groups<kQ8>(p, a, T, g0, g1, y, ldy, add);
}

// ---------------------------------------------------------------------------------------------
// Elementwise pieces.

inline void rms_norm_row(const float* x, const float* w, int64_t D, float eps, float* y) {
  __m256 ss = _mm256_setzero_ps();
  for (int64_t i = 0; i < D; i += 8) ss = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i), ss);
  const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(hsum(ss) / static_cast<float>(D) + eps));
  for (int64_t i = 0; i < D; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
    if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
    _mm256_storeu_ps(y + i, v);
  }
}

// x * cos + roll(x, hd/2) * signed_sin (HF's rotate-half convention), in place; hd/2 a multiple of 8.
inline void rotate(float* x, const float* cos, const float* sin, int64_t hd, float* tmp) {
  const int64_t half = hd / 2;
  for (int64_t c = 0; c < hd; c += 8) {
    const __m256 rolled = _mm256_loadu_ps(x + (c + half) % hd);
    _mm256_storeu_ps(tmp + c, _mm256_fmadd_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(cos + c),
                                              _mm256_mul_ps(rolled, _mm256_loadu_ps(sin + c))));
  }
  std::memcpy(x, tmp, hd * sizeof(float));
}

inline __m256 silu_times(__m256 g, __m256 u) {
  const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
  return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

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
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < hd; c += 8) {
      const __m256 qv = _mm256_loadu_ps(q + c);
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
template <int NQ, typename KV>
void prefix_scores(const float* const* q, const KV* kt, int64_t P, int64_t hd, float scale, float* sc, int64_t ld) {
  constexpr int KB = NQ >= 8 ? 1 : (NQ >= 4 ? 2 : (NQ >= 2 ? 4 : 8));  // key blocks per pass: >= 8 FMA chains
  const __m256 sv = _mm256_set1_ps(scale);
  const int64_t blocks = (P + 7) / 8;
  for (int64_t jb = 0; jb < blocks; jb += KB) {
    const int kb_n = static_cast<int>(std::min<int64_t>(KB, blocks - jb));
    __m256 acc[KB][NQ];
    for (int k = 0; k < KB; ++k)
      for (int i = 0; i < NQ; ++i) acc[k][i] = _mm256_setzero_ps();
    const KV* base = kt + jb * hd * 8;
    for (int64_t c = 0; c < hd; ++c) {
      __m256 qc[NQ];
      for (int i = 0; i < NQ; ++i) qc[i] = _mm256_set1_ps(q[i][c]);
      for (int k = 0; k < kb_n; ++k) {
        const __m256 kv = load8(base + (k * hd + c) * 8);
        for (int i = 0; i < NQ; ++i) acc[k][i] = _mm256_fmadd_ps(qc[i], kv, acc[k][i]);
      }
    }
    for (int k = 0; k < kb_n; ++k) {
      const int64_t j = (jb + k) * 8;
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
}

// out[i] = sum_j p[i][j] V_j over the shared prompt's P values, for NQ queries at once.
template <int NQ, typename KV>
void prefix_mix(const float* p, int64_t ld, const KV* v, int64_t P, int64_t hd, float* const* out) {
  constexpr int W = NQ >= 4 ? 2 : 4;  // vectors of features per pass: at least eight FMA chains
  for (int64_t c0 = 0; c0 < hd; c0 += 8 * W) {
    const int w = static_cast<int>(std::min<int64_t>(8 * W, hd - c0) / 8);
    __m256 acc[NQ][W];
    for (int i = 0; i < NQ; ++i)
      for (int u = 0; u < W; ++u) acc[i][u] = _mm256_setzero_ps();
    for (int64_t j = 0; j < P; ++j) {
      __m256 vv[W];
      for (int u = 0; u < w; ++u) vv[u] = load8(v + j * hd + c0 + 8 * u);
      for (int i = 0; i < NQ; ++i) {
        const __m256 pij = _mm256_set1_ps(p[i * ld + j]);
        for (int u = 0; u < w; ++u) acc[i][u] = _mm256_fmadd_ps(pij, vv[u], acc[i][u]);
      }
    }
    for (int i = 0; i < NQ; ++i)
      for (int u = 0; u < w; ++u) _mm256_storeu_ps(out[i] + c0 + 8 * u, acc[i][u]);
  }
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
  for (int i = 0; i < NQ; ++i) {
    scores_of(q[i], qs[i].own_k, qs[i].n_own, hd, scale, sc + i * ld + P);
    inv[i] = 1.0f / exp_in_place(sc + i * ld, P + qs[i].n_own);
  }
  prefix_mix<NQ>(sc, ld, pv, P, hd, out);
  for (int i = 0; i < NQ; ++i) {
    mix_values(sc + i * ld + P, qs[i].own_v, qs[i].n_own, hd, out[i]);
    const __m256 iv = _mm256_set1_ps(inv[i]);
    for (int64_t c = 0; c < hd; c += 8) _mm256_storeu_ps(out[i] + c, _mm256_mul_ps(_mm256_loadu_ps(out[i] + c), iv));
  }
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

// ---------------------------------------------------------------------------------------------
// Both cores in one parallel region, meeting at a barrier between phases.

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
    } else {
      while (gen_.load(std::memory_order_acquire) == gen) _mm_pause();
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Run body(tid, team, barrier) on every thread of one torch parallel region. The region may get
// fewer threads than asked (torch then hands one thread several indices): the first thread
// publishes the chunk size, so that every thread knows the team before the first barrier.
template <typename Body>
void run_team(const Body& body) {
  const int64_t want = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  if (want == 1) {
    Barrier barrier(1);
    body(0, 1, barrier);
    return;
  }
  std::atomic<int64_t> chunk{0};
  std::atomic<Barrier*> shared{nullptr};
  at::parallel_for(0, want, 1, [&](int64_t begin, int64_t end) {
    if (begin == 0) {
      const int64_t team = (want + (end - begin) - 1) / (end - begin);
      shared.store(new Barrier(static_cast<int>(team)), std::memory_order_relaxed);
      chunk.store(end - begin, std::memory_order_release);
    }
    int64_t c;
    while ((c = chunk.load(std::memory_order_acquire)) == 0) _mm_pause();
    const int64_t team = (want + c - 1) / c;
    body(begin / c, team, *shared.load(std::memory_order_relaxed));
  });
  delete shared.load();
}

// ---------------------------------------------------------------------------------------------

// A projection from the tensors kernels/__init__.py packs (qs, d, m as fp16 bits; m empty for q8).
Proj from_tensors(int64_t kind, const torch::Tensor& qs, const torch::Tensor& d, const torch::Tensor& m, int64_t N,
                  int64_t K) {
  TORCH_CHECK(kind == kQ4 || kind == kQ8, "unknown weight format");
  TORCH_CHECK(N % 8 == 0 && K % kBlock == 0, "weights need a multiple of 8 outputs and of 32 inputs");
  const int64_t nb = K / kBlock;
  TORCH_CHECK(qs.is_contiguous() && qs.size(0) == N && qs.size(1) == (kind == kQ4 ? nb * 16 : nb * kBlock),
              "weight blocks [", N, ", ...] do not match the shape");
  TORCH_CHECK(d.is_contiguous() && d.numel() == N * nb && d.scalar_type() == torch::kInt16, "scales: [N, K/32] fp16 bits");
  const uint16_t* mp = nullptr;
  if (kind == kQ4) {
    TORCH_CHECK(m.is_contiguous() && m.numel() == N * nb && m.scalar_type() == torch::kInt16, "offsets: [N, K/32] fp16 bits");
    mp = reinterpret_cast<const uint16_t*>(m.data_ptr<int16_t>());
  }
  return repack(static_cast<Kind>(kind), reinterpret_cast<const uint8_t*>(qs.data_ptr()),
                reinterpret_cast<const uint16_t*>(d.data_ptr<int16_t>()), mp, N, K);
}


class Model {
 public:
  // tensors: per layer qkv, o, gate_up, down (each qs, d, m, bias), norm_attn, norm_mlp, qk_norm;
  // then embed, norm and the lm_head (qs, d, m, bias). Empty tensors stand for "none".
  // kinds: each projection's Kind, in the same order. dims: L, H, G, hd, D, F, V. floats: eps, then
  // each layer's attention scale.
  Model(std::vector<torch::Tensor> tensors, std::vector<int64_t> kinds, std::vector<int64_t> dims,
        std::vector<double> floats)
      : keep_(std::move(tensors)) {
    TORCH_CHECK(dims.size() == 7, "dims: L, H, G, hd, D, F, V");
    L_ = dims[0]; H_ = dims[1]; G_ = dims[2]; hd_ = dims[3]; D_ = dims[4]; F_ = dims[5]; V_ = dims[6];
    eps_ = static_cast<float>(floats.at(0));
    TORCH_CHECK(keep_.size() == static_cast<size_t>(L_ * 19 + 6) && kinds.size() == static_cast<size_t>(L_ * 4 + 1),
                "tensors/kinds do not match the layer count");
    TORCH_CHECK(D_ % kBlock == 0 && F_ % kBlock == 0 && (H_ * hd_) % kBlock == 0 && hd_ % 16 == 0,
                "dimensions must be multiples of 32 (head_dim of 16)");
    size_t i = 0, k = 0;
    const int64_t qkv_n = (H_ + 2 * G_) * hd_;
    for (int64_t l = 0; l < L_; ++l) {
      Layer layer;
      layer.qkv = proj(i, kinds[k++], qkv_n, D_);
      layer.o = proj(i, kinds[k++], D_, H_ * hd_);
      layer.gate_up = proj(i, kinds[k++], 2 * F_, D_);
      layer.down = proj(i, kinds[k++], D_, F_);
      layer.norm_attn = floats_of(keep_[i++], D_);
      layer.norm_mlp = floats_of(keep_[i++], D_);
      layer.qk_norm = keep_[i].numel() ? floats_of(keep_[i], (H_ + G_) * hd_) : nullptr;
      ++i;
      layer.scale = static_cast<float>(floats.at(1 + l));
      layers_.push_back(layer);
    }
    embed_ = keep_[i++];
    TORCH_CHECK(embed_.dim() == 2 && embed_.size(1) == D_ && embed_.is_contiguous() &&
                (embed_.scalar_type() == torch::kFloat32 || embed_.scalar_type() == torch::kBFloat16),
                "embed must be a contiguous [V, D] float32 or bfloat16 table");
    norm_ = floats_of(keep_[i++], D_);
    lm_head_ = proj(i, kinds[k++], V_, D_);
  }

  // logits [T, V] for the real tokens (row-major over rows, then tokens) of a step.
  torch::Tensor step(const torch::Tensor& tokens, const torch::Tensor& start, const torch::Tensor& lengths,
                     const torch::Tensor& prefix_kt, const torch::Tensor& prefix_v, const torch::Tensor& own_k,
                     const torch::Tensor& own_v, const torch::Tensor& cos, const torch::Tensor& sin) {
    TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kLong && tokens.is_contiguous(), "tokens: [B, k] int64");
    const int64_t B = tokens.size(0), kmax = tokens.size(1);
    TORCH_CHECK(start.numel() == B && lengths.numel() == B && start.scalar_type() == torch::kLong &&
                lengths.scalar_type() == torch::kLong, "start, lengths: [B] int64");
    check_cache(prefix_v, prefix_v, own_k, own_v, B);
    TORCH_CHECK(prefix_kt.dim() == 6 && prefix_kt.is_contiguous() && prefix_kt.size(0) == L_ && prefix_kt.size(2) == G_ &&
                prefix_kt.size(3) == (prefix_v.size(3) + 7) / 8 && prefix_kt.size(4) == hd_ && prefix_kt.size(5) == 8 &&
                prefix_kt.scalar_type() == prefix_v.scalar_type(),
                "prompt keys: [L, 1, G, ceil(P / 8), hd, 8], the cache's dtype");
    TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 && cos.is_contiguous() &&
                sin.is_contiguous() && cos.size(1) == hd_, "rope tables: [positions, hd] float32");
    const int64_t P = prefix_v.size(3), S = own_k.size(3);
    // the real tokens, flattened
    std::vector<int64_t> tok, row, pos;
    const int64_t* tp = tokens.data_ptr<int64_t>();
    const int64_t* sp = start.contiguous().data_ptr<int64_t>();
    const torch::Tensor lc = lengths.contiguous();
    const int64_t* lp = lc.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(lp[b] >= 0 && lp[b] <= kmax, "lengths out of range");
      for (int64_t i = 0; i < lp[b]; ++i) {
        const int64_t t = tp[b * kmax + i], p = sp[b] + i;
        TORCH_CHECK(t >= 0 && t < embed_.size(0), "token id out of range");
        TORCH_CHECK(p >= P && p - P < S && p < cos.size(0), "position outside the cache or the rope tables");
        tok.push_back(t); row.push_back(b); pos.push_back(p);
      }
    }
    const int64_t T = static_cast<int64_t>(tok.size());
    torch::Tensor logits = torch::empty({T, V_}, torch::kFloat32);
    if (T == 0) return logits;
    Work w(T, *this, P + S);
    for (int64_t t = 0; t < T; ++t) embed_row(tok[t], w.x.data() + t * D_);
    const Cache c{prefix_kt, prefix_v, own_k, own_v, P};
    const float* cosp = cos.data_ptr<float>();
    const float* sinp = sin.data_ptr<float>();
    float* lp_out = logits.data_ptr<float>();
    run_team([&](int64_t tid, int64_t team, Barrier& barrier) {
      for (int64_t l = 0; l < L_; ++l) layer_step(l, tid, team, barrier, w, c, row, pos, cosp, sinp);
      norm_rows(w, norm_, tid, team);
      barrier.wait();
            project(lm_head_, w.act, T, tid, team, lp_out, V_, false);
    });
    return logits;
  }

 private:
  struct Work {  // a step's activations
    int64_t T;
    std::vector<float> x, h, qkv, attn, gu;
    QAct act;
    std::vector<std::vector<float>> scores;  // per thread: kMaxQueries rows of score_ld
    int64_t score_ld;
    Work(int64_t t, const Model& m, int64_t max_keys)
        : T(t), x(t * m.D_), h(t * std::max(m.D_, m.F_)), qkv(t * (m.H_ + 2 * m.G_) * m.hd_), attn(t * m.H_ * m.hd_),
          gu(t * 2 * m.F_), score_ld((max_keys + 15) / 8 * 8) {
      act.reserve(t, std::max({m.D_, m.F_, m.H_ * m.hd_}));
      scores.resize(std::max(1, at::get_num_threads()), std::vector<float>(kMaxQueries * score_ld));
    }
  };

  struct Cache {
    const torch::Tensor &kt, &pv, &ok, &ov;  // kt: the prompt's keys in transposed blocks, [L, 1, G, P/8, hd, 8]
    int64_t P;
  };

  Proj proj(size_t& i, int64_t kind, int64_t N, int64_t K) {
    const torch::Tensor &qs = keep_[i], &d = keep_[i + 1], &m = keep_[i + 2], &bias = keep_[i + 3];
    i += 4;
    Proj p = from_tensors(kind, qs, d, m, N, K);
    if (bias.numel()) p.bias = floats_of(bias, N);
    return p;
  }

  static const float* floats_of(const torch::Tensor& t, int64_t n) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.numel() == n, "expected ", n, " float32 values");
    return t.data_ptr<float>();
  }

  void check_cache(const torch::Tensor& pk, const torch::Tensor& pv, const torch::Tensor& ok, const torch::Tensor& ov,
                   int64_t B) const {
    for (const torch::Tensor* t : {&pk, &pv, &ok, &ov}) {
      TORCH_CHECK(t->dim() == 5 && t->size(0) == L_ && t->size(2) == G_ && t->size(4) == hd_ && t->stride(4) == 1 &&
                  t->stride(3) == hd_ && t->scalar_type() == pk.scalar_type(), "KV cache: [L, rows, G, n, hd], one dtype");
    }
    TORCH_CHECK(pk.scalar_type() == torch::kFloat32 || pk.scalar_type() == torch::kBFloat16, "KV cache: float32 or bfloat16");
    TORCH_CHECK(ok.size(1) >= B && pk.strides() == pv.strides() && ok.strides() == ov.strides(), "KV cache rows");
  }

  void embed_row(int64_t t, float* x) const {
    if (embed_.scalar_type() == torch::kFloat32) {
      std::memcpy(x, embed_.data_ptr<float>() + t * D_, D_ * sizeof(float));
    } else {
      const uint16_t* e = reinterpret_cast<const uint16_t*>(embed_.data_ptr<at::BFloat16>()) + t * D_;
      for (int64_t i = 0; i < D_; i += 8) _mm256_storeu_ps(x + i, load8(e + i));
    }
  }

  // RMS norm of the residual rows into 8-bit activations (rows shared among the team).
  void norm_rows(Work& w, const float* weight, int64_t tid, int64_t team) const {
    w.act.set_k(D_);
    const auto [t0, t1] = share(w.T, tid, team);
    for (int64_t t = t0; t < t1; ++t) {
      rms_norm_row(w.x.data() + t * D_, weight, D_, eps_, w.h.data() + t * D_);
      w.act.quantize(t, w.h.data() + t * D_);
    }
  }

  void layer_step(int64_t l, int64_t tid, int64_t team, Barrier& barrier, Work& w, const Cache& c,
                  const std::vector<int64_t>& row, const std::vector<int64_t>& pos, const float* cos,
                  const float* sin) const {
    const Layer& ly = layers_[l];
    const int64_t T = w.T, nq = (H_ + 2 * G_) * hd_;
    norm_rows(w, ly.norm_attn, tid, team);
    barrier.wait();
    {
            project(ly.qkv, w.act, T, tid, team, w.qkv.data(), nq, false);
    }
    barrier.wait();
    if (c.pv.scalar_type() == torch::kFloat32) rope_and_store<float>(l, ly, tid, team, w, c, row, pos, cos, sin);
    else rope_and_store<uint16_t>(l, ly, tid, team, w, c, row, pos, cos, sin);
    barrier.wait();
    if (c.pv.scalar_type() == torch::kFloat32) attention<float>(l, ly, tid, team, w, c, row, pos);
    else attention<uint16_t>(l, ly, tid, team, w, c, row, pos);
    barrier.wait();
    w.act.set_k(H_ * hd_);
    {
      const auto [t0, t1] = share(T, tid, team);
      for (int64_t t = t0; t < t1; ++t) w.act.quantize(t, w.attn.data() + t * H_ * hd_);
    }
    barrier.wait();
    {
            project(ly.o, w.act, T, tid, team, w.x.data(), D_, true);
    }
    barrier.wait();
    norm_rows(w, ly.norm_mlp, tid, team);
    barrier.wait();
    {
            project(ly.gate_up, w.act, T, tid, team, w.gu.data(), 2 * F_, false);
    }
    barrier.wait();
    w.act.set_k(F_);
    {
      const auto [t0, t1] = share(T, tid, team);
      for (int64_t t = t0; t < t1; ++t) {
        const float* g = w.gu.data() + t * 2 * F_;
        float* hh = w.h.data() + t * F_;
        for (int64_t i = 0; i < F_; i += 8)
          _mm256_storeu_ps(hh + i, silu_times(_mm256_loadu_ps(g + i), _mm256_loadu_ps(g + F_ + i)));
        w.act.quantize(t, hh);
      }
    }
    barrier.wait();
    {
            project(ly.down, w.act, T, tid, team, w.x.data(), D_, true);
    }
    barrier.wait();
  }

  // q/k norms (Qwen3), rotary embedding of q and k heads; k and v heads into the cache.
  template <typename KV>
  void rope_and_store(int64_t l, const Layer& ly, int64_t tid, int64_t team, Work& w, const Cache& c,
                      const std::vector<int64_t>& row, const std::vector<int64_t>& pos, const float* cos,
                      const float* sin) const {
    const int64_t heads = H_ + 2 * G_, nq = heads * hd_;
    const auto [i0, i1] = share(w.T * heads, tid, team);
    float tmp[512];
    KV* ok = reinterpret_cast<KV*>(c.ok.data_ptr());
    KV* ov = reinterpret_cast<KV*>(c.ov.data_ptr());
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / heads, h = i % heads;
      float* x = w.qkv.data() + t * nq + h * hd_;
      if (h < H_ + G_) {
        if (ly.qk_norm) rms_norm_row(x, ly.qk_norm + h * hd_, hd_, eps_, x);
        rotate(x, cos + pos[t] * hd_, sin + pos[t] * hd_, hd_, tmp);
      }
      if (h >= H_) {  // a key or value head: into row's slot
        const bool is_k = h < H_ + G_;
        const int64_t g = is_k ? h - H_ : h - H_ - G_;
        const torch::Tensor& dst = is_k ? c.ok : c.ov;
        KV* base = is_k ? ok : ov;
        store_kv(base + l * dst.stride(0) + row[t] * dst.stride(1) + g * dst.stride(2) + (pos[t] - c.P) * hd_, x, hd_);
      }
    }
  }

  // Attention as tasks of up to kMaxQueries queries of one KV head (a token's heads of that group,
  // then the next token's), spread over the team.
  template <typename KV>
  void attention(int64_t l, const Layer& ly, int64_t tid, int64_t team, Work& w, const Cache& c,
                 const std::vector<int64_t>& row, const std::vector<int64_t>& pos) const {
    const int64_t nqkv = (H_ + 2 * G_) * hd_, group = H_ / G_, per_group = w.T * group;
    // one or two tokens: a task per head (the team's threads then share the work evenly and each
    // reads its head's keys once); more: blocks of up to kMaxQueries, each key read once per block
    const int64_t size = w.T <= 2 ? 1 : (per_group + (per_group + kMaxQueries - 1) / kMaxQueries - 1) /
                                            ((per_group + kMaxQueries - 1) / kMaxQueries);
    const int64_t n_blocks = (per_group + size - 1) / size;
    const KV* kt = reinterpret_cast<const KV*>(c.kt.data_ptr());
    const KV* pv = reinterpret_cast<const KV*>(c.pv.data_ptr());
    const KV* ok = reinterpret_cast<const KV*>(c.ok.data_ptr());
    const KV* ov = reinterpret_cast<const KV*>(c.ov.data_ptr());
    float* sc = w.scores[tid].data();
    const int64_t ld = w.score_ld;
    const auto [i0, i1] = share(G_ * n_blocks, tid, team);
    for (int64_t task = i0; task < i1; ++task) {
      const int64_t g = task / n_blocks, q0 = (task % n_blocks) * size, q1 = std::min(per_group, q0 + size);
      QueryKeys<KV> qs[kMaxQueries];
      for (int64_t qi = q0; qi < q1; ++qi) {
        const int64_t t = qi / group, h = g * group + qi % group;
        const int64_t o_off = l * c.ok.stride(0) + row[t] * c.ok.stride(1) + g * c.ok.stride(2);
        qs[qi - q0] = {w.qkv.data() + t * nqkv + h * hd_, ok + o_off, ov + o_off, pos[t] - c.P + 1,
                       w.attn.data() + t * H_ * hd_ + h * hd_};
      }
      attend_queries<KV>(qs, static_cast<int>(q1 - q0), kt + l * c.kt.stride(0) + g * c.kt.stride(2),
                         pv + l * c.pv.stride(0) + g * c.pv.stride(2), c.P, hd_, ly.scale, sc, ld);
    }
  }

  std::vector<torch::Tensor> keep_;
  std::vector<Layer> layers_;
  torch::Tensor embed_;
  const float* norm_ = nullptr;
  Proj lm_head_;
  int64_t L_, H_, G_, hd_, D_, F_, V_;
  float eps_;
};

// One projection through 8-bit activations, packed once: the step's kernel on its own (tests, tuning).
class Int8Linear {
 public:
  Int8Linear(int64_t kind, const torch::Tensor& qs, const torch::Tensor& d, const torch::Tensor& m)
      : p_(from_tensors(kind, qs, d, m, qs.size(0), d.size(1) * kBlock)) {}

  torch::Tensor forward(const torch::Tensor& x_in) const {
    TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kFloat32 && x_in.size(1) == p_.K,
                "x must be float32 [rows, ", p_.K, "]");
    const torch::Tensor x = x_in.contiguous();
    const int64_t T = x.size(0);
    QAct a;
    a.reserve(T, p_.K);
    a.set_k(p_.K);
    for (int64_t t = 0; t < T; ++t) a.quantize(t, x.data_ptr<float>() + t * p_.K);
    torch::Tensor y = torch::empty({T, p_.N}, x.options());
    float* yp = y.data_ptr<float>();
    run_team([&](int64_t tid, int64_t team, Barrier&) { project(p_, a, T, tid, team, yp, p_.N, false); });
    return y;
  }

 private:
  Proj p_;
};

}  // namespace

void register_step(pybind11::module& module) {
  pybind11::class_<Model>(module, "Model", "a model's weights as the native decode step reads them")
      .def(pybind11::init<std::vector<torch::Tensor>, std::vector<int64_t>, std::vector<int64_t>, std::vector<double>>())
      .def("step", &Model::step, "logits [T, V] of the real tokens of one decode/verify step",
           pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<Int8Linear>(module, "Int8Linear", "x @ W.T through 8-bit activation blocks (kind 0: q4, 1: q8)")
      .def(pybind11::init<int64_t, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&>())
      .def("__call__", &Int8Linear::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
