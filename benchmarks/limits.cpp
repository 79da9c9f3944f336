// This machine's ceilings for a decode step, measured with plain loops (benchmarks/limits.py builds and runs
// this): int8 multiply-adds per second through AVX2's vpmaddubsw, AVX-512/AVX VNNI's vpdpbusd and AMX's
// tdpbssd, and read bandwidth, each on a given number of threads (an OpenMP team, every thread its own work).
#include <torch/extension.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <vector>

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename Body>
double timed(int threads, const Body& body) {
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  body(omp_get_thread_num());
  return seconds_since(t0);
}

// Multiply-adds per second of u8 x s8 -> int16 pairs -> int32 (AVX2), 8 independent chains per thread.
double avx2_macs(int threads, int64_t iters) {
#if defined(__AVX2__)
  std::vector<int32_t> sink(threads * 8);
  const double s = timed(threads, [&](int tid) {
    __m256i acc[8], us[8];
    for (int i = 0; i < 8; ++i) { acc[i] = _mm256_set1_epi32(i); us[i] = _mm256_set1_epi8(static_cast<char>(3 + i)); }
    const __m256i w = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    for (int64_t it = 0; it < iters; ++it) {
      // the products must be computed every time (not hoisted out of the loop, nor shared by the chains)
      asm volatile("" : "+x"(us[0]), "+x"(us[1]), "+x"(us[2]), "+x"(us[3]), "+x"(us[4]), "+x"(us[5]), "+x"(us[6]),
                   "+x"(us[7]));
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(us[i], w), one));
    }
    for (int i = 0; i < 8; ++i) sink[tid * 8 + i] = _mm256_extract_epi32(acc[i], 0);
  });
  return 32.0 * 8 * iters * threads / s;
#else
  return 0.0;
#endif
}

// Multiply-adds per second of vpdpbusd on the widest vectors the build has, 8 independent chains per thread.
double vnni_macs(int threads, int64_t iters) {
#if defined(__AVX512VNNI__)
  std::vector<int32_t> sink(threads * 8);
  const double s = timed(threads, [&](int tid) {
    __m512i acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm512_set1_epi32(i);
    const __m512i u = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
    for (int64_t it = 0; it < iters; ++it)
      for (int i = 0; i < 8; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], u, w);
    for (int i = 0; i < 8; ++i) sink[tid * 8 + i] = _mm_cvtsi128_si32(_mm512_castsi512_si128(acc[i]));
  });
  return 64.0 * 8 * iters * threads / s;
#elif defined(__AVXVNNI__)
  std::vector<int32_t> sink(threads * 8);
  const double s = timed(threads, [&](int tid) {
    __m256i acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_set1_epi32(i);
    const __m256i u = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-2);
    for (int64_t it = 0; it < iters; ++it)
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], u, w);
    for (int i = 0; i < 8; ++i) sink[tid * 8 + i] = _mm256_extract_epi32(acc[i], 0);
  });
  return 32.0 * 8 * iters * threads / s;
#else
  return 0.0;
#endif
}

// Multiply-adds per second of AMX tdpbssd (16 x 16 x 64 a tile), four independent accumulator tiles per thread;
// 0 where the build or the kernel has no AMX. Every thread asks for nothing but loads its own tile config.
double amx_macs(int threads, int64_t iters) {
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0.0;
  struct alignas(64) Config { uint8_t palette = 1, start = 0, reserved[14] = {}; uint16_t colsb[16] = {}; uint8_t rows[16] = {}; };
  std::vector<int8_t> data(threads * 16 * 64 * 2, 1);
  const double s = timed(threads, [&](int tid) {
    Config c;
    for (int t = 0; t < 8; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
    _tile_loadconfig(&c);
    const int8_t* a = data.data() + tid * 2048;
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + 1024, 64);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t it = 0; it < iters; ++it) {
      _tile_dpbssd(0, 4, 5);
      _tile_dpbssd(1, 4, 5);
      _tile_dpbssd(2, 4, 5);
      _tile_dpbssd(3, 4, 5);
    }
    alignas(64) int32_t out[256];
    _tile_stored(0, out, 64);
    _tile_release();
  });
  return 16.0 * 16 * 64 * 4 * iters * threads / s;
#else
  return 0.0;
#endif
}

// Bytes per second read by `threads` threads, each summing its own part of a buffer of `bytes`.
double read_bandwidth(int threads, int64_t bytes, int repeats) {
  const int64_t n = bytes / 8;
  std::vector<int64_t> buf(n, 1);
  std::vector<int64_t> sink(threads);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    best = std::min(best, timed(threads, [&](int tid) {
      const int64_t lo = n * tid / threads, hi = n * (tid + 1) / threads;
      __m256i acc = _mm256_setzero_si256(), acc2 = _mm256_setzero_si256();
      for (int64_t i = lo; i + 8 <= hi; i += 8) {
        acc = _mm256_add_epi64(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf.data() + i)));
        acc2 = _mm256_add_epi64(acc2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf.data() + i + 4)));
      }
      sink[tid] = _mm256_extract_epi64(_mm256_add_epi64(acc, acc2), 0);
    }));
  }
  return static_cast<double>(bytes) / best;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("avx2_macs", &avx2_macs);
  m.def("vnni_macs", &vnni_macs);
  m.def("amx_macs", &amx_macs);
  m.def("read_bandwidth", &read_bandwidth);
}
