// latts' CPU kernels (AVX2, fp32): what a small-batch decode step spends its time on besides
// reading weights, each a single call instead of a handful of small torch ops.
//
// q4_linear / q8_linear: fp32 activations times block-quantized weights (GGUF's Q4_1 and Q8_0):
// y[M, N] = x[M, K] @ W[N, K]^T, where W holds blocks of 32 weights along K:
//   q4: W = d * q + m, q in 0..15; qs [N, K/2] uint8, byte j of a block = q[j] | q[j + 16] << 4
//   q8: W = d * q,     q in -128..127; qs [N, K] int8
// with d, m [N, K/32] fp16 (passed as int16). The products are exact in fp32 and only the order of
// the sums differs from a dense fp32 matmul of the dequantized weights, so the result is as exact
// as that matmul, while a decode step reads 4-8x fewer weight bytes.
//
// rms_norm: one pass per row (torch's composite op is ~5 small ops, 15-30 us each call here).
// attend: causal softmax attention of one branch's k new tokens against its KV cache (torch's
// CPU flash attention costs 50-90 us a call at these shapes, mostly set-up).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "attention.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {
using namespace latts;

// The 32 weights of one block as four vectors of 8 (without the scale and offset).
struct Q4 {
  static void unpack(const uint8_t* p, __m256 q[4]) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i lo = _mm_and_si128(v, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
  }
  static constexpr int64_t kBytes = kBlock / 2;
  static constexpr bool kOffset = true;
};

struct Q8 {
  static void unpack(const uint8_t* p, __m256 q[4]) {
    for (int i = 0; i < 4; ++i) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * i));
      q[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    }
  }
  static constexpr int64_t kBytes = kBlock;
  static constexpr bool kOffset = false;
};

inline __m256 dot32(const __m256 q[4], const float* x) {
  const __m256 a = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(q[0], _mm256_loadu_ps(x)));
  const __m256 b = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(q[2], _mm256_loadu_ps(x + 16)));
  return _mm256_add_ps(a, b);
}

// Output rows [n0, n1) for R activation rows (R small: the unpacked block is reused R times).
// For R = 1 four output rows go at once, so that four independent chains hide the FMA latency.
template <typename Fmt, int R, int NR>
void rows(const float* x, const float* sx, int64_t K, const uint8_t* qs, const uint16_t* d,
          const uint16_t* m, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t nb = K / kBlock;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    __m256 acc[NR][R];
    float off[NR][R];
    for (int j = 0; j < NR; ++j)
      for (int r = 0; r < R; ++r) { acc[j][r] = _mm256_setzero_ps(); off[j][r] = 0.f; }
    for (int64_t b = 0; b < nb; ++b) {
      for (int j = 0; j < NR; ++j) {
        __m256 q[4];
        Fmt::unpack(qs + (n + j) * nb * Fmt::kBytes + b * Fmt::kBytes, q);
        const __m256 dv = _mm256_set1_ps(_cvtsh_ss(d[(n + j) * nb + b]));
        for (int r = 0; r < R; ++r) acc[j][r] = _mm256_fmadd_ps(dv, dot32(q, x + r * K + b * kBlock), acc[j][r]);
        if constexpr (Fmt::kOffset) {
          const float mb = _cvtsh_ss(m[(n + j) * nb + b]);
          for (int r = 0; r < R; ++r) off[j][r] += mb * sx[r * nb + b];
        }
      }
    }
    for (int j = 0; j < NR; ++j)
      for (int r = 0; r < R; ++r) y[r * ldy + n + j] = hsum(acc[j][r]) + off[j][r];
  }
  if (n < n1) rows<Fmt, R, 1>(x, sx, K, qs, d, m, y, ldy, n, n1);
}

template <typename Fmt>
torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& qs, const torch::Tensor& d,
                     const torch::Tensor& m) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kFloat32, "x must be 2-D float32");
  const torch::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = qs.size(0), nb = K / kBlock;
  TORCH_CHECK(K % kBlock == 0 && qs.size(1) == nb * Fmt::kBytes && d.size(0) == N && d.size(1) == nb,
              "weight blocks do not match x");
  const float* xp = x.data_ptr<float>();
  std::vector<float> sx;  // per-block sums of x, for the offsets m
  if constexpr (Fmt::kOffset) {
    sx.resize(M * nb);
    for (int64_t i = 0; i < M * nb; ++i) sx[i] = hsum(_mm256_add_ps(
        _mm256_add_ps(_mm256_loadu_ps(xp + i * kBlock), _mm256_loadu_ps(xp + i * kBlock + 8)),
        _mm256_add_ps(_mm256_loadu_ps(xp + i * kBlock + 16), _mm256_loadu_ps(xp + i * kBlock + 24))));
  }
  torch::Tensor y = torch::empty({M, N}, x.options());
  const float* sxp = Fmt::kOffset ? sx.data() : nullptr;
  const uint8_t* qp = reinterpret_cast<const uint8_t*>(qs.data_ptr());
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr<int16_t>());
  const uint16_t* mp = Fmt::kOffset ? reinterpret_cast<const uint16_t*>(m.data_ptr<int16_t>()) : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = 0; r0 < M; r0 += 4) {
      const float* xr = xp + r0 * K;
      const float* sr = sxp ? sxp + r0 * nb : nullptr;
      float* yr = yp + r0 * N;
      switch (std::min<int64_t>(4, M - r0)) {
        case 1: rows<Fmt, 1, 4>(xr, sr, K, qp, dp, mp, yr, N, n0, n1); break;
        case 2: rows<Fmt, 2, 1>(xr, sr, K, qp, dp, mp, yr, N, n0, n1); break;
        case 3: rows<Fmt, 3, 1>(xr, sr, K, qp, dp, mp, yr, N, n0, n1); break;
        default: rows<Fmt, 4, 1>(xr, sr, K, qp, dp, mp, yr, N, n0, n1); break;
      }
    }
  });
  return y;
}

torch::Tensor q4_linear(const torch::Tensor& x, const torch::Tensor& qs, const torch::Tensor& d,
                        const torch::Tensor& m) {
  return linear<Q4>(x, qs, d, m);
}

torch::Tensor q8_linear(const torch::Tensor& x, const torch::Tensor& qs, const torch::Tensor& d) {
  return linear<Q8>(x, qs, d, d);
}


torch::Tensor rms_norm(const torch::Tensor& x_in, const c10::optional<torch::Tensor>& weight, double eps) {
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32, "x must be float32");
  const torch::Tensor x = x_in.contiguous();
  const int64_t D = x.size(-1), rows = x.numel() / D;
  TORCH_CHECK(D % 8 == 0, "rms_norm needs a multiple of 8 features");
  const float* w = weight.has_value() ? weight->data_ptr<float>() : nullptr;
  torch::Tensor y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * D;
    float* yr = yp + r * D;
    __m256 ss = _mm256_setzero_ps();
    for (int64_t i = 0; i < D; i += 8) ss = _mm256_fmadd_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(xr + i), ss);
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(hsum(ss) / static_cast<float>(D) + static_cast<float>(eps)));
    for (int64_t i = 0; i < D; i += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + i), inv);
      if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
      _mm256_storeu_ps(yr + i, v);
    }
  }
  return y;
}

// One query row against keys [0, n): softmax(scale * q.K^T) V into out (hd a multiple of 8), with the
// native step's pieces (attention.h).
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t hd, float scale,
                float* scores, float* out) {
  scores_of(q, K, n, hd, scale, scores);
  const __m256 inv = _mm256_set1_ps(1.0f / exp_in_place(scores, n));
  std::memset(out, 0, hd * sizeof(float));
  mix_values(scores, V, n, hd, out);
  for (int64_t c = 0; c < hd; c += 8) _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(out + c), inv));
}

// q [G, R, hd] (R = query heads per KV head x k tokens, row = head * k + token), keys and values
// [G, S, hd] with S >= end (rows of the cache); token i of the k new ones (at position end - k + i)
// sees keys [0, end - k + i]. Returns [G, R, hd].
torch::Tensor attend(const torch::Tensor& q_in, const torch::Tensor& keys, const torch::Tensor& values,
                     int64_t k, int64_t end, double scale) {
  TORCH_CHECK(q_in.scalar_type() == torch::kFloat32 && keys.scalar_type() == torch::kFloat32 &&
              values.scalar_type() == torch::kFloat32, "attend works in float32");
  const torch::Tensor q = q_in.contiguous();
  const int64_t G = q.size(0), R = q.size(1), hd = q.size(2);
  TORCH_CHECK(hd % 8 == 0 && R % k == 0 && keys.size(0) == G && keys.size(1) >= end && keys.size(2) == hd &&
              keys.stride(2) == 1 && keys.stride(1) == hd && values.strides() == keys.strides(),
              "attend: q, keys and values do not fit together");
  torch::Tensor out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t gstride = keys.stride(0);
  at::parallel_for(0, G * R, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> scores(end);
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t g = row / R, n = end - k + (row % R) % k + 1;
      attend_row(qp + row * hd, kp + g * gstride, vp + g * gstride, n, hd, static_cast<float>(scale),
                 scores.data(), op + row * hd);
    }
  });
  return out;
}

}  // namespace

void register_step(pybind11::module& module);  // step.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  register_step(module);
  module.def("q4_linear", &q4_linear, "x @ W.T for Q4_1-style blocks (x float32 [M, K])");
  module.def("q8_linear", &q8_linear, "x @ W.T for Q8_0-style blocks (x float32 [M, K])");
  module.def("rms_norm", &rms_norm, "RMS norm over the last dimension (float32), weight optional");
  module.def("attend", &attend, "causal attention of k new tokens of one branch against its cache");
}
