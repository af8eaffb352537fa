// Shared by pcjax's CPU kernels (XLA FFI handlers built by pcjax/kernels/native.py): SIMD
// vectors, bfloat16 conversion, a parallel loop on XLA's intra-op thread pool.
//
// Portable C++17 with GCC/Clang vector extensions, no intrinsics: Vec is exactly one SIMD
// register of the target the library is compiled for (-march=native), so register tiles sized by
// kVecRegisters stay in registers: 16 f32 lanes with AVX-512, 8 with AVX/AVX2, 4 otherwise (SSE,
// NEON), the count and width from the compiler's predefined macros.

#ifndef PCJAX_KERNELS_CSRC_COMMON_H_
#define PCJAX_KERNELS_CSRC_COMMON_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace pcjax {

namespace ffi = xla::ffi;

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // f32 lanes of a Vec: one zmm register
constexpr int kVecRegisters = 32;
#elif defined(__AVX__)
constexpr int kLanes = 8;  // one ymm register
constexpr int kVecRegisters = 16;
#elif defined(__aarch64__)
constexpr int kLanes = 4;  // one NEON q register
constexpr int kVecRegisters = 32;
#else
constexpr int kLanes = 4;  // one xmm register (SSE) or a generic 16-byte vector
constexpr int kVecRegisters = 16;
#endif
static_assert(kLanes >= 2 && (kLanes & (kLanes - 1)) == 0, "kLanes: a power of two");

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Splat(float x) { return Vec{} + x; }

// The sum of v's lanes, by halving (log2(kLanes) vector adds: a short dependency chain, where a
// lane-by-lane loop is kLanes - 1 dependent scalar adds).
template <int kWidth>
inline float SumLanes(const float* lanes) {
  if constexpr (kWidth == 1) {
    return lanes[0];
  } else {
    typedef float Half __attribute__((vector_size(kWidth / 2 * sizeof(float))));
    Half lo, hi;
    std::memcpy(&lo, lanes, sizeof(lo));
    std::memcpy(&hi, lanes + kWidth / 2, sizeof(hi));
    const Half half = lo + hi;
    float out[kWidth / 2];
    std::memcpy(out, &half, sizeof(half));
    return SumLanes<kWidth / 2>(out);
  }
}

inline float Sum(Vec v) {
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof(v));
  return SumLanes<kLanes>(lanes);
}

namespace internal {

// One level of SumEach's tree. Going in, each vector holds kLanes / kGroup groups of kGroup
// lanes, every group the partial sums of one original vector; a pair (a, b) becomes one vector
// of groups of kGroup / 2 lanes (a's groups first, then b's), each the two halves of a group
// added. Source lane of output lane i: group q = i / half, from a or b (q / groups_per_vector),
// that vector's group q % groups_per_vector, lane i % half of its first half.
constexpr int FoldSource(int group, int i) {
  const int half = group / 2, per_vector = kLanes / group, q = i / half;
  return q / per_vector * kLanes + q % per_vector * group + i % half;
}

template <int kGroup, int... I>
inline Vec FoldPair(Vec a, Vec b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, FoldSource(kGroup, I)...) +
         __builtin_shufflevector(a, b, (FoldSource(kGroup, I) + kGroup / 2)...);
}

// Folds v[0 .. kGroup) (groups of kGroup lanes) down to v[0] (groups of 1 lane).
template <int kGroup>
inline void FoldLevels(Vec* v) {
  if constexpr (kGroup > 1) {
    for (int i = 0; i < kGroup / 2; ++i)
      v[i] = FoldPair<kGroup>(v[2 * i], v[2 * i + 1], std::make_integer_sequence<int, kLanes>{});
    FoldLevels<kGroup / 2>(v);
  }
}

}  // namespace internal

// The lane sums of kLanes vectors at once: lane j of the result is Sum(v[j]). A transpose-and-add
// tree over log2(kLanes) levels (each adds the two halves of every lane group of two vectors
// into one vector): kLanes - 1 vector adds and 2 (kLanes - 1) shuffles for all kLanes sums,
// where kLanes Sum() calls take kLanes log2(kLanes) adds.
inline Vec SumEach(const Vec (&v)[kLanes]) {
  Vec work[kLanes];
  for (int i = 0; i < kLanes; ++i) work[i] = v[i];
  internal::FoldLevels<kLanes>(work);
  return work[0];
}

struct BF16 {
  uint16_t bits;
};

inline float ToFloat(float x) { return x; }
inline float ToFloat(BF16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline void FromFloat(float x, float* out) { *out = x; }
inline void FromFloat(float x, BF16* out) {  // round to nearest even, as XLA converts
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out->bits = 0x7fc0;  // NaN
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  out->bits = static_cast<uint16_t>(u >> 16);
}

inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline Vec LoadVec(const BF16* p) {
  typedef uint16_t U16Vec __attribute__((vector_size(kLanes * sizeof(uint16_t))));
  U16Vec bits;
  std::memcpy(&bits, p, sizeof(bits));
  const IVec wide = __builtin_convertvector(bits, IVec) << 16;
  Vec v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}

// Asks for [p, p + bytes) to be brought into cache ahead of its use (one hint per 64-byte line).
inline void Prefetch(const void* p, int64_t bytes) {
  const char* begin = static_cast<const char*>(p);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(begin + offset, 0, 3);
}

inline ffi::Error InvalidArgument(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, message);
}

constexpr int64_t kSpinMicros = 200;  // ParallelFor's caller spins this long at most

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Busy-waits until done() or kSpinMicros pass.
template <typename Done>
void SpinUntil(const Done& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (int spin = 0; !done(); ++spin) {
    CpuRelax();
    if (spin % 64 == 63 && std::chrono::steady_clock::now() > deadline) return;
  }
}

// How many threads ParallelFor runs n items on: the calling thread plus helpers from the pool,
// as many threads in all as the pool has (the caller takes one pool thread's place), at most n.
inline int64_t Workers(ffi::ThreadPool& pool, int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), n));
}

// Runs body(i, slot) for i in [0, n) on Workers(pool, n) threads, slot in [0, Workers) naming the
// thread (for per-thread scratch); returns when all n are done. Helpers claim indices from a
// shared counter; one that starts late (its pool busy) finds nothing left and only touches the
// shared state it co-owns. When the caller runs out of items it spins for up to kSpinMicros on
// the helpers' last ones before it sleeps: a decode step's calls last tens of microseconds, about
// what a sleeping thread takes to wake, and between them XLA's own ops let the pool's threads
// fall asleep (smollm2-135m, bf16 decode step on 2 cores: about 30 -> 27 ms).
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &body](int64_t slot) {
    int64_t finished = 0;
    for (int64_t i; (i = state->next.fetch_add(1)) < n; ++finished) body(i, slot);
    if (finished == 0) return;
    if (state->done.fetch_add(finished) + finished == n) {
      std::lock_guard<std::mutex> lock(state->mu);  // the caller may be about to wait
      state->cv.notify_all();
    }
  };
  const int64_t helpers = Workers(pool, n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work, t] { work(t + 1); });
  work(0);
  SpinUntil([&] { return state->done.load() == n; });
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace pcjax

#endif  // PCJAX_KERNELS_CSRC_COMMON_H_
