// AMX tiles (Sapphire Rapids and later), where the build targets them: the permission a process needs before
// its first tile instruction, and the configuration every thread loads itself.
//
// Tile state is per thread, and other code on the same threads (oneDNN's AMX matmuls in torch's prefill; the
// projections' and the attention's own layouts here) configures tiles its own way, so every kernel loads its
// configuration before its first tile instruction. The process asks the kernel for the tile data state once
// (arch_prctl). A thread that runs tile instructions without both dies with SIGILL, which is what
// llama.cpp 0.3.36's AMX path does on its OpenMP workers.
#pragma once

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace latts {

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define LATTS_AMX 1
#else
#define LATTS_AMX 0
#endif

#if LATTS_AMX
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline std::atomic<bool>& amx_wanted() {  // on unless turned off (tests and benchmarks compare both paths)
  static std::atomic<bool> on{true};
  return on;
}

// Whether this process may run tile instructions (asked for once; refused by kernels without AMX support).
inline bool amx_permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

inline bool amx_ready() { return amx_wanted().load(std::memory_order_relaxed) && amx_permitted(); }
#endif

}  // namespace latts
