// The projections of the native step: 8-bit activation blocks times GGUF weight blocks, repacked
// for the integer multiply-accumulate (see simd_int8.h), split over a team of threads by outputs.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx.h"
#include "simd.h"
#include "simd_int8.h"
#include "team.h"

namespace latts {

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
// With AVX-512 (and its VNNI) the groups are 16 outputs wide, one 64-byte vector per chunk: the
// same work in half the instructions (Zen 4 runs a 512-bit op as two 256-bit halves, but the
// front end, not the multiply units, limits these loops).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LATTS_ZMM 1
#else
#define LATTS_ZMM 0
#endif

struct Proj {
  Kind kind = kQ4;
  std::vector<uint8_t> qs;
  std::vector<uint16_t> scales;
  const float* bias = nullptr;  // [N] or null
  int64_t N = 0, K = 0, nb = 0;
  int64_t gw = 8;  // outputs per group: 8, or 16 with AVX-512
  int64_t block_bytes() const { return gw * (kind == kQ4 ? 16 : 32); }
  int64_t block_scales() const { return gw * (kind == kQ4 ? 2 : 1); }
};

// qs/d/m as kernels/__init__.py packs them (row-major blocks; byte j of a q4 block = q[j] | q[j + 16] << 4).
inline Proj repack(Kind kind, const uint8_t* qs, const uint16_t* d, const uint16_t* m, int64_t N, int64_t K) {
  Proj p;
  p.kind = kind;
  p.N = N;
  p.K = K;
  p.nb = K / kBlock;
  p.gw = LATTS_ZMM && N % 16 == 0 ? 16 : 8;
  const int64_t nb = p.nb, gw = p.gw, groups = N / gw;
  p.qs.resize(groups * nb * p.block_bytes());
  p.scales.resize(groups * nb * p.block_scales());
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* out = p.qs.data() + (g * nb + b) * p.block_bytes();
      uint16_t* sc = p.scales.data() + (g * nb + b) * p.block_scales();
      for (int64_t n = 0; n < gw; ++n) {
        const int64_t row = g * gw + n;
        sc[n] = d[row * nb + b];
        if (kind == kQ4) {
          sc[gw + n] = m[row * nb + b];
          const uint8_t* src = qs + (row * nb + b) * (kBlock / 2);
          for (int64_t c = 0; c < 4; ++c)
            for (int64_t i = 0; i < 4; ++i) out[c * gw * 4 + n * 4 + i] = src[4 * c + i];  // lo: 4c+i, hi: 16+4c+i
        } else {
          const uint8_t* src = qs + (row * nb + b) * kBlock;
          for (int64_t c = 0; c < 8; ++c)
            for (int64_t i = 0; i < 4; ++i)
              out[c * gw * 4 + n * 4 + i] = LATTS_VNNI ? static_cast<uint8_t>(src[4 * c + i] ^ 0x80) : src[4 * c + i];
        }
      }
    }
  }
  return p;
}

// Activations as 8-bit blocks: rows x K levels, per block a scale and the exact sum. Block-major (block
// b of row t at q[(b * rows + t) * 32], d[b * rows + t]): a projection tile then reads its rows' blocks
// at fixed offsets from one pointer (with a pointer per row the compiler ran out of registers and moved
// pointers through vector registers inside the multiply loop).
struct QAct {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<int32_t> qsum;
  int64_t K = 0, nb = 0, rows = 0;
  void reserve(int64_t rows_, int64_t max_k) {
    rows = rows_;
    q.resize(rows * max_k);
    d.resize(rows * max_k / kBlock);
    s.resize(rows * max_k / kBlock);
    qsum.resize(rows * max_k / kBlock);
  }
  void set_k(int64_t k) { K = k; nb = k / kBlock; }
  void quantize(int64_t t, const float* x) {
    quantize_row(x, K, q.data() + t * kBlock, d.data() + t, s.data() + t, qsum.data() + t, rows);
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
  const int64_t nb = p.nb;
  __m256 acc[RT];
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t rows = a.rows;
  const int8_t* xq = a.q.data() + t0 * kBlock;  // this tile's rows of block b: xq + (b * rows + r) * 32
  const float* xd = a.d.data() + t0;
  const float* xs = a.s.data() + t0;
  const int32_t* xsum = a.qsum.data() + t0;
  const uint8_t* wp = p.qs.data() + g * nb * p.block_bytes();
  const uint16_t* sp = p.scales.data() + g * nb * p.block_scales();
  for (int64_t b = 0; b < nb; ++b, wp += p.block_bytes(), sp += p.block_scales(), xq += rows * kBlock, xd += rows,
                                  xs += rows, xsum += rows) {
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
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * kBlock;
        __m256i s = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) s = dot_u8s8(s, w[c], bcast4(xb + 4 * c));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xd[r])), acc[r]);
        acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[r]), acc[r]);
      }
    } else {
      for (int c = 0; c < 8; ++c) w[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * c));
#if LATTS_VNNI
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * kBlock;
        __m256i s = _mm256_set1_epi32(-128 * xsum[r]);  // the weights' +128, taken off
        for (int c = 0; c < 8; ++c) s = dot_u8s8(s, w[c], bcast4(xb + 4 * c));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xd[r])), acc[r]);
      }
#else
      __m256i wabs[8];
      for (int c = 0; c < 8; ++c) wabs[c] = _mm256_sign_epi8(w[c], w[c]);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * kBlock;
        __m256i s = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) s = dot_u8s8(s, wabs[c], _mm256_sign_epi8(bcast4(xb + 4 * c), w[c]));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(xd[r])), acc[r]);
      }
      (void)xsum;
#endif
    }
  }
  const __m256 bias = p.bias ? _mm256_loadu_ps(p.bias + g * 8) : _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r) {
    float* out = y + (t0 + r) * ldy + g * 8;
    __m256 v = _mm256_add_ps(acc[r], bias);
    if (add) v = _mm256_add_ps(v, _mm256_loadu_ps(out));
    _mm256_storeu_ps(out, v);
  }
}

#if LATTS_ZMM
// tile() with groups of 16 outputs in 512-bit vectors (q4, and q8 with its +128 offset).
// s + the u8 x s8 products of w with the 4 bytes at x broadcast, the broadcast folded into the
// instruction's memory operand (GCC loads it into a register first: one more instruction a multiply).
inline __m512i dpbusd_bcast(__m512i s, __m512i w, const int8_t* x) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(s) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(x)));
  return s;
}

// acc + one row's int32 block dot products s (16 outputs) at the block's scales: the weights' dw times the
// activations' xd, plus Q4's offsets mw times the quantized block's sum xs. The VNNI and the AMX tiles both
// apply it, in this order, so they give the same bits.
template <Kind F>
inline __m512 add_scaled_block(__m512 acc, __m512i s, __m512 dw, __m512 mw, float xd, float xs) {
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xd)), acc);
  if constexpr (F == kQ4) acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs), acc);
  return acc;
}

// RT rows of 16 outputs (group g) + bias into y, or added to what y holds.
template <int RT>
inline void store_rows16(const __m512* acc, const Proj& p, int64_t t0, int64_t g, float* y, int64_t ldy, bool add) {
  const __m512 bias = p.bias ? _mm512_loadu_ps(p.bias + g * 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int r = 0; r < RT; ++r) {
    float* out = y + (t0 + r) * ldy + g * 16;
    __m512 v = _mm512_add_ps(acc[r], bias);
    if (add) v = _mm512_add_ps(v, _mm512_loadu_ps(out));
    _mm512_storeu_ps(out, v);
  }
}

template <Kind F, int RT>
void tile16(const Proj& p, const QAct& a, int64_t t0, int64_t g, float* y, int64_t ldy, bool add) {
  const int64_t nb = p.nb;
  __m512 acc[RT];
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t rows = a.rows;
  const int8_t* xq = a.q.data() + t0 * kBlock;  // this tile's rows of block b: xq + (b * rows + r) * 32
  const float* xd = a.d.data() + t0;
  const float* xs = a.s.data() + t0;
  const int32_t* xsum = a.qsum.data() + t0;
  const uint8_t* wp = p.qs.data() + g * nb * p.block_bytes();
  const uint16_t* sp = p.scales.data() + g * nb * p.block_scales();
  for (int64_t b = 0; b < nb; ++b, wp += p.block_bytes(), sp += p.block_scales(), xq += rows * kBlock, xd += rows,
                                  xs += rows, xsum += rows) {
    for (int64_t off = 0; off < p.block_bytes(); off += 64) _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetch + off), _MM_HINT_T0);
    __m512i w[8];
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp)));
    if constexpr (F == kQ4) {
      const __m512i mask = _mm512_set1_epi8(0x0F);
      for (int c = 0; c < 4; ++c) {
        const __m512i v = _mm512_loadu_si512(wp + 64 * c);
        w[c] = _mm512_and_si512(v, mask);
        w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
      }
      const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + 16)));
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * kBlock;
        __m512i s = _mm512_setzero_si512();
        for (int c = 0; c < 8; ++c) s = dpbusd_bcast(s, w[c], xb + 4 * c);
        acc[r] = add_scaled_block<F>(acc[r], s, dw, mw, xd[r], xs[r]);
      }
    } else {
      for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(wp + 64 * c);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const int8_t* xb = xq + r * kBlock;
        __m512i s = _mm512_set1_epi32(-128 * xsum[r]);  // the weights' +128, taken off
        for (int c = 0; c < 8; ++c) s = dpbusd_bcast(s, w[c], xb + 4 * c);
        acc[r] = add_scaled_block<F>(acc[r], s, dw, dw, xd[r], 0.0f);
      }
    }
  }
  store_rows16<RT>(acc, p, t0, g, y, ldy, add);
}

// Rows [t_first, T) of output group g in tiles of 8, 4 and the rest.
template <Kind F>
void rows16(const Proj& p, const QAct& a, int64_t t_first, int64_t T, int64_t g, float* y, int64_t ldy, bool add) {
  int64_t t = t_first;
  for (; t + 8 <= T; t += 8) tile16<F, 8>(p, a, t, g, y, ldy, add);
  if (T - t > 4) { tile16<F, 4>(p, a, t, g, y, ldy, add); t += 4; }
  for (; t + 4 <= T; t += 4) tile16<F, 4>(p, a, t, g, y, ldy, add);
  switch (T - t) {
    case 1: tile16<F, 1>(p, a, t, g, y, ldy, add); break;
    case 2: tile16<F, 2>(p, a, t, g, y, ldy, add); break;
    case 3: tile16<F, 3>(p, a, t, g, y, ldy, add); break;
    default: break;
  }
}

template <Kind F>
void project_groups16(const Proj& p, const QAct& a, int64_t T, int64_t g0, int64_t g1, float* y, int64_t ldy,
                      bool add) {
  for (int64_t g = g0; g < g1; ++g) rows16<F>(p, a, 0, T, g, y, ldy, add);
}
#endif

#if LATTS_AMX && LATTS_ZMM
// AMX: a tile multiply of 16 activation rows x one block of 32 inputs x 16 outputs (8192 multiply-adds in
// one instruction), then the block's scales applied in fp32 as the VNNI tiles apply them, so the results
// are the same bits. The weights feed the tile as repack() left them: a 16-output group's block is the B
// tile's eight rows of 16 x 4 bytes (q8 directly; q4 after splitting the nibbles, as the VNNI path does).
//
// Every call loads its tile configuration first (see amx.h).
inline void configure_tiles() {
  TileConfig c;
  c.rows[0] = 16; c.colsb[0] = kBlock;  // A: 16 activation rows x one block of int8
  c.rows[1] = 8; c.colsb[1] = 64;       // B: the block's 32 inputs in fours x 16 outputs
  c.rows[2] = 16; c.colsb[2] = 64;      // C: 16 rows x 16 int32
  _tile_loadconfig(&c);
}

template <Kind F>
void amx_tile16(const Proj& p, const QAct& a, int64_t t0, int64_t g, float* y, int64_t ldy, bool add) {
  constexpr int RT = 16;
  const int64_t nb = p.nb, rows = a.rows;
  alignas(64) uint8_t wtile[8 * 64];
  alignas(64) int32_t ctile[RT * 16];
  __m512 acc[RT];
#pragma GCC unroll 16
  for (int r = 0; r < RT; ++r) acc[r] = _mm512_setzero_ps();
  const int8_t* xq = a.q.data() + t0 * kBlock;
  const float* xd = a.d.data() + t0;
  const float* xs = a.s.data() + t0;
  const int32_t* xsum = a.qsum.data() + t0;
  const uint8_t* wp = p.qs.data() + g * nb * p.block_bytes();
  const uint16_t* sp = p.scales.data() + g * nb * p.block_scales();
  for (int64_t b = 0; b < nb; ++b, wp += p.block_bytes(), sp += p.block_scales(), xq += rows * kBlock, xd += rows,
                                  xs += rows, xsum += rows) {
    for (int64_t off = 0; off < p.block_bytes(); off += 64) _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetch + off), _MM_HINT_T0);
    _tile_loadd(0, xq, kBlock);
    if constexpr (F == kQ4) {
      const __m512i mask = _mm512_set1_epi8(0x0F);
      for (int c = 0; c < 4; ++c) {
        const __m512i v = _mm512_loadu_si512(wp + 64 * c);
        _mm512_store_si512(wtile + 64 * c, _mm512_and_si512(v, mask));
        _mm512_store_si512(wtile + 64 * (c + 4), _mm512_and_si512(_mm512_srli_epi16(v, 4), mask));
      }
      _tile_loadd(1, wtile, 64);
    } else {
      _tile_loadd(1, wp, 64);  // the weights plus 128, unsigned (see repack)
    }
    _tile_zero(2);
    _tile_dpbsud(2, 0, 1);  // signed activations x unsigned weight bytes
    _tile_stored(2, ctile, 64);
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp)));
    if constexpr (F == kQ4) {
      const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + 16)));
#pragma GCC unroll 16
      for (int r = 0; r < RT; ++r)
        acc[r] = add_scaled_block<F>(acc[r], _mm512_load_si512(ctile + 16 * r), dw, mw, xd[r], xs[r]);
    } else {
#pragma GCC unroll 16
      for (int r = 0; r < RT; ++r) {  // the weights' +128, taken off
        const __m512i s = _mm512_add_epi32(_mm512_load_si512(ctile + 16 * r), _mm512_set1_epi32(-128 * xsum[r]));
        acc[r] = add_scaled_block<F>(acc[r], s, dw, dw, xd[r], 0.0f);
      }
    }
  }
  store_rows16<RT>(acc, p, t0, g, y, ldy, add);
}

// Every 16 rows of T through the tiles, the rest through the VNNI tiles.
template <Kind F>
void amx_project_groups(const Proj& p, const QAct& a, int64_t T, int64_t g0, int64_t g1, float* y, int64_t ldy,
                        bool add) {
  configure_tiles();
  const int64_t full = T / 16 * 16;
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t t = 0; t < full; t += 16) amx_tile16<F>(p, a, t, g, y, ldy, add);
    rows16<F>(p, a, full, T, g, y, ldy, add);
  }
}
#endif

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
inline void project(const Proj& p, const QAct& a, int64_t T, int64_t tid, int64_t team, float* y, int64_t ldy, bool add) {
  const auto [g0, g1] = share(p.N / p.gw, tid, team);
  // the activations were quantized by both cores: fetch them at once, not a cross-core miss at a time
  for (int64_t off = 0; off < a.rows * a.K; off += 64) _mm_prefetch(reinterpret_cast<const char*>(a.q.data()) + off, _MM_HINT_T0);
#if LATTS_AMX && LATTS_ZMM
  if (p.gw == 16 && T >= 16 && amx_ready()) {
    if (p.kind == kQ4) amx_project_groups<kQ4>(p, a, T, g0, g1, y, ldy, add);
    else amx_project_groups<kQ8>(p, a, T, g0, g1, y, ldy, add);
    return;
  }
#endif
#if LATTS_ZMM
  if (p.gw == 16) {
    if (p.kind == kQ4) project_groups16<kQ4>(p, a, T, g0, g1, y, ldy, add);
    else project_groups16<kQ8>(p, a, T, g0, g1, y, ldy, add);
    return;
  }
#endif
  if (p.kind == kQ4) project_groups<kQ4>(p, a, T, g0, g1, y, ldy, add);
  else project_groups<kQ8>(p, a, T, g0, g1, y, ldy, add);
}

}  // namespace latts
