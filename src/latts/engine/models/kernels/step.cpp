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
#include <chrono>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "projection.h"
#include "simd.h"
#include "team.h"

namespace {
using namespace latts;

// Where a step's time goes, phase by phase (off unless asked for: benchmarks/step_phases.py). The
// first thread stamps the end of each phase, i.e. after the barrier that closes it, so a phase's
// time includes the wait for the slower thread.
class PhaseClock {
 public:
  enum Phase { kNorm, kQkv, kRope, kAttention, kQuantize, kOut, kNormMlp, kGateUp, kSilu, kDown, kFinalNorm, kLmHead,
               kPhases };
  bool on = false;
  void start(int64_t tid) {
    if (on && tid == 0) last_ = std::chrono::steady_clock::now();
  }
  void mark(int64_t tid, Phase p) {
    if (!on || tid != 0) return;
    const auto now = std::chrono::steady_clock::now();
    seconds_[p] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }
  std::vector<double> take() {  // seconds per phase since the last take
    std::vector<double> out(seconds_, seconds_ + kPhases);
    std::fill(seconds_, seconds_ + kPhases, 0.0);
    return out;
  }

 private:
  double seconds_[kPhases] = {};
  std::chrono::steady_clock::time_point last_;
};

struct Layer {
  Proj qkv, o, gate_up, down;
  const float* norm_attn = nullptr;
  const float* norm_mlp = nullptr;
  const float* qk_norm = nullptr;  // [H + G, hd] or null
  float scale = 1.0f;
};

// ---------------------------------------------------------------------------------------------
// Elementwise pieces.

// Ask for bytes [p, p + n) at once: a phase's rows were mostly written by the other core in the
// phase before, and fetched line by line on demand each costs a full cross-core miss.
inline void prefetch(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < n; off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
}

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
                     const torch::Tensor& own_v, const torch::Tensor& cos, const torch::Tensor& sin,
                     const torch::Tensor& prefix_kp, const torch::Tensor& prefix_vp) {
    TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kLong && tokens.is_contiguous(), "tokens: [B, k] int64");
    const int64_t B = tokens.size(0), kmax = tokens.size(1);
    TORCH_CHECK(start.numel() == B && lengths.numel() == B && start.scalar_type() == torch::kLong &&
                lengths.scalar_type() == torch::kLong, "start, lengths: [B] int64");
    check_cache(prefix_v, prefix_v, own_k, own_v, B);
    const bool pairs = prefix_kp.numel() > 0;  // the prompt in bf16 pairs; else in transposed blocks (kt)
    TORCH_CHECK(pairs || (prefix_kt.dim() == 6 && prefix_kt.is_contiguous() && prefix_kt.size(0) == L_ &&
                          prefix_kt.size(2) == G_ && prefix_kt.size(3) == (prefix_v.size(3) + 7) / 8 &&
                          prefix_kt.size(4) == hd_ && prefix_kt.size(5) == 8 &&
                          prefix_kt.scalar_type() == prefix_v.scalar_type()),
                "prompt keys: [L, 1, G, ceil(P / 8), hd, 8], the cache's dtype");
    TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 && cos.is_contiguous() &&
                sin.is_contiguous() && cos.size(1) == hd_, "rope tables: [positions, hd] float32");
    const int64_t P = prefix_v.size(3), S = own_k.size(3);
    TORCH_CHECK(!pairs || (kPairAttention && prefix_v.scalar_type() == torch::kBFloat16 && prefix_kp.dim() == 7 &&
                           prefix_kp.is_contiguous() && prefix_vp.is_contiguous() &&
                           prefix_kp.sizes() == torch::IntArrayRef({L_, 1, G_, (P + 15) / 16, hd_ / 2, 16, 2}) &&
                           prefix_vp.sizes() == torch::IntArrayRef({L_, 1, G_, (P + 31) / 32 * 16, hd_, 2}) &&
                           prefix_kp.scalar_type() == torch::kBFloat16 && prefix_vp.scalar_type() == torch::kBFloat16),
                "paired prompt keys [L, 1, G, ceil(P / 16), hd / 2, 16, 2] and values [L, 1, G, 16 ceil(P / 32), hd, 2], "
                "bfloat16, on a build with AVX512-BF16");
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
    const Cache c{prefix_kt, prefix_v, own_k, own_v, prefix_kp, prefix_vp, P, pairs};
    const float* cosp = cos.data_ptr<float>();
    const float* sinp = sin.data_ptr<float>();
    float* lp_out = logits.data_ptr<float>();
    run_team([&](int64_t tid, int64_t team, Barrier& barrier) {
      clock_.start(tid);
      for (int64_t l = 0; l < L_; ++l) layer_step(l, tid, team, barrier, w, c, row, pos, cosp, sinp);
      norm_rows(w, norm_, tid, team);
      barrier.wait();
      clock_.mark(tid, PhaseClock::kFinalNorm);
      project(lm_head_, w.act, T, tid, team, lp_out, V_, false);
      if (clock_.on) {  // the lm_head's end, for the phase clock only (the region's end waits anyway)
        barrier.wait();
        clock_.mark(tid, PhaseClock::kLmHead);
      }
    });
    return logits;
  }

  void time_phases(bool on) { clock_.on = on; }
  std::vector<double> phase_seconds() { return clock_.take(); }

 private:
  struct Work {  // a step's activations
    int64_t T;
    std::vector<float> x, h, qkv, attn, gu;
    QAct act;
    std::vector<std::vector<float>> scores;  // per thread: kBlockRows rows of score_ld
    std::vector<std::vector<uint16_t>> rounded;  // per thread: kBlockRows bf16 queries and weights (pair attention)
    std::vector<std::vector<float>> tile_out;  // per thread: kBlockRows outputs of the AMX attention
    int64_t score_ld;
    // rows of the per-thread buffers: the most queries one attention block has (AMX tiles take sixteen)
    static constexpr int64_t kBlockRows = 16;
    Work(int64_t t, const Model& m, int64_t max_keys)
        : T(t), x(t * m.D_), h(t * std::max(m.D_, m.F_)), qkv(t * (m.H_ + 2 * m.G_) * m.hd_), attn(t * m.H_ * m.hd_),
          gu(t * 2 * m.F_), score_ld((max_keys + 16 + 7) / 8 * 8) {  // + 16: a tile of scores past the last key
      act.reserve(t, std::max({m.D_, m.F_, m.H_ * m.hd_}));
      scores.resize(std::max(1, at::get_num_threads()), std::vector<float>(kBlockRows * score_ld));
      rounded.resize(scores.size(), std::vector<uint16_t>(kBlockRows * (score_ld + m.hd_)));
      tile_out.resize(scores.size(), std::vector<float>(kBlockRows * m.hd_));
    }
  };

  struct Cache {
    const torch::Tensor &kt, &pv, &ok, &ov;  // kt: the prompt's keys in transposed blocks, [L, 1, G, P/8, hd, 8]
    const torch::Tensor &kp, &vp;  // the prompt's keys and values paired for bf16 dot products (or empty)
    int64_t P;
    bool pairs;  // attend to the prompt through kp and vp
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
    prefetch(w.x.data() + t0 * D_, (t1 - t0) * D_ * 4);
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
    clock_.mark(tid, PhaseClock::kNorm);
    project(ly.qkv, w.act, T, tid, team, w.qkv.data(), nq, false);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kQkv);
    if (c.pv.scalar_type() == torch::kFloat32) rope_and_store<float>(l, ly, tid, team, w, c, row, pos, cos, sin);
    else rope_and_store<uint16_t>(l, ly, tid, team, w, c, row, pos, cos, sin);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kRope);
    if (c.pv.scalar_type() == torch::kFloat32) attention<float>(l, ly, tid, team, w, c, row, pos);
    else attention<uint16_t>(l, ly, tid, team, w, c, row, pos);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kAttention);
    w.act.set_k(H_ * hd_);
    {
      const auto [t0, t1] = share(T, tid, team);
      prefetch(w.attn.data() + t0 * H_ * hd_, (t1 - t0) * H_ * hd_ * 4);
      for (int64_t t = t0; t < t1; ++t) w.act.quantize(t, w.attn.data() + t * H_ * hd_);
    }
    barrier.wait();
    clock_.mark(tid, PhaseClock::kQuantize);
    project(ly.o, w.act, T, tid, team, w.x.data(), D_, true);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kOut);
    norm_rows(w, ly.norm_mlp, tid, team);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kNormMlp);
    project(ly.gate_up, w.act, T, tid, team, w.gu.data(), 2 * F_, false);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kGateUp);
    w.act.set_k(F_);
    {
      const auto [t0, t1] = share(T, tid, team);
      prefetch(w.gu.data() + t0 * 2 * F_, (t1 - t0) * 2 * F_ * 4);
      for (int64_t t = t0; t < t1; ++t) {
        const float* g = w.gu.data() + t * 2 * F_;
        float* hh = w.h.data() + t * F_;
        for (int64_t i = 0; i < F_; i += 8)
          _mm256_storeu_ps(hh + i, silu_times(_mm256_loadu_ps(g + i), _mm256_loadu_ps(g + F_ + i)));
        w.act.quantize(t, hh);
      }
    }
    barrier.wait();
    clock_.mark(tid, PhaseClock::kSilu);
    project(ly.down, w.act, T, tid, team, w.x.data(), D_, true);
    barrier.wait();
    clock_.mark(tid, PhaseClock::kDown);
  }

  // q/k norms (Qwen3), rotary embedding of q and k heads; k and v heads into the cache.
  template <typename KV>
  void rope_and_store(int64_t l, const Layer& ly, int64_t tid, int64_t team, Work& w, const Cache& c,
                      const std::vector<int64_t>& row, const std::vector<int64_t>& pos, const float* cos,
                      const float* sin) const {
    const int64_t heads = H_ + 2 * G_, nq = heads * hd_;
    const auto [i0, i1] = share(w.T * heads, tid, team);
    prefetch(w.qkv.data() + i0 * hd_, (i1 - i0) * hd_ * 4);
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
    // more: the fewest blocks of at most kMaxQueries whose count over all KV heads the team shares
    // evenly (9 blocks on 2 threads would leave one idle a ninth of the time)
    // queries per block: sixteen where they go through AMX tiles. Every step goes through them when one does
    // (a query's float32 sums in a tile do not depend on the tile's other rows), so that a token's logits are
    // the same bits whatever shares its step: what keeps greedy speculation identical to greedy decoding.
    int64_t most = kMaxQueries;
#if LATTS_AMX
    const bool tiles = c.pairs && std::is_same_v<KV, uint16_t> && amx_attention_fits(hd_) && amx_ready();
    if (tiles) most = kTileQueries;
#endif
    int64_t n_blocks = per_group;
    if (w.T > 2) {
      n_blocks = (per_group + most - 1) / most;
      while ((G_ * n_blocks) % team && n_blocks < per_group) ++n_blocks;
    }
    const int64_t size = (per_group + n_blocks - 1) / n_blocks;
    const KV* kt = reinterpret_cast<const KV*>(c.kt.data_ptr());
    const KV* pv = reinterpret_cast<const KV*>(c.pv.data_ptr());
    const KV* ok = reinterpret_cast<const KV*>(c.ok.data_ptr());
    const KV* ov = reinterpret_cast<const KV*>(c.ov.data_ptr());
    float* sc = w.scores[tid].data();
    const int64_t ld = w.score_ld;
    const auto [i0, i1] = share(G_ * n_blocks, tid, team);
    for (int64_t task = i0; task < i1; ++task) {
      const int64_t g = task / n_blocks, q0 = (task % n_blocks) * size, q1 = std::min(per_group, q0 + size);
      QueryKeys<KV> qs[Work::kBlockRows];
      for (int64_t qi = q0; qi < q1; ++qi) {
        const int64_t t = qi / group, h = g * group + qi % group;
        const int64_t o_off = l * c.ok.stride(0) + row[t] * c.ok.stride(1) + g * c.ok.stride(2);
        qs[qi - q0] = {w.qkv.data() + t * nqkv + h * hd_, ok + o_off, ov + o_off, pos[t] - c.P + 1,
                       w.attn.data() + t * H_ * hd_ + h * hd_};
      }
#if defined(__AVX512BF16__)
      if constexpr (std::is_same_v<KV, uint16_t>) {
        if (c.pairs) {
          const uint16_t* kp = reinterpret_cast<const uint16_t*>(c.kp.data_ptr());
          const uint16_t* vp = reinterpret_cast<const uint16_t*>(c.vp.data_ptr());
#if LATTS_AMX
          if (tiles) {
            amx_attend_block(qs, static_cast<int>(q1 - q0), kp + l * c.kp.stride(0) + g * c.kp.stride(2),
                             vp + l * c.vp.stride(0) + g * c.vp.stride(2), c.P, hd_, ly.scale, sc, ld,
                             w.rounded[tid].data(), w.tile_out[tid].data());
            continue;
          }
#endif
          pair_attend_queries(qs, static_cast<int>(q1 - q0), kp + l * c.kp.stride(0) + g * c.kp.stride(2),
                              vp + l * c.vp.stride(0) + g * c.vp.stride(2), c.P, hd_, ly.scale, sc, ld,
                              w.rounded[tid].data());
          continue;
        }
      }
#endif
      attend_queries<KV>(qs, static_cast<int>(q1 - q0), kt + l * c.kt.stride(0) + g * c.kt.stride(2),
                         pv + l * c.pv.stride(0) + g * c.pv.stride(2), c.P, hd_, ly.scale, sc, ld);
    }
  }

  std::vector<torch::Tensor> keep_;
  mutable PhaseClock clock_;
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
           pybind11::call_guard<pybind11::gil_scoped_release>())
      .def_property_readonly_static("pair_attention", [](pybind11::object) { return kPairAttention; },
                                    "whether this build attends to a bf16 prompt in bf16 dot products (AVX512-BF16)")
      .def("time_phases", [](Model& m, bool on) { m.time_phases(on); },
           "stamp every phase of later steps (off by default: it costs a clock read per phase)")
      .def("phase_seconds", &Model::phase_seconds, "seconds per phase since the last call (PHASES order)");
  module.def("amx", [] {
#if LATTS_AMX
    return amx_permitted();
#else
    return false;
#endif
  }, "whether projections of 16 rows and more run on AMX tiles here (the build and the kernel allow it)");
  module.def("use_amx", [](bool on) {
#if LATTS_AMX
    amx_wanted().store(on);
#else
    (void)on;
#endif
  }, "turn the AMX tiles off (False) or back on: the VNNI path then runs every projection, for comparisons");
  pybind11::class_<Int8Linear>(module, "Int8Linear", "x @ W.T through 8-bit activation blocks (kind 0: q4, 1: q8)")
      .def(pybind11::init<int64_t, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&>())
      .def("__call__", &Int8Linear::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
