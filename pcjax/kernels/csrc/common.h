// Shared by pcjax's CPU kernels (XLA FFI handlers built by pcjax/kernels/native.py): SIMD
// vectors, bfloat16 conversion, a parallel loop on XLA's intra-op thread pool.
//
// Portable C++17 with GCC/Clang vector extensions: the compiler maps Vec to the widest SIMD
// registers it has (one AVX-512 register, two AVX2 ones, four NEON ones).

#ifndef PCJAX_KERNELS_CSRC_COMMON_H_
#define PCJAX_KERNELS_CSRC_COMMON_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace pcjax {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;  // f32 lanes of a Vec

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Splat(float x) { return Vec{} + x; }

// The sum of v's lanes, by halving (4 vector adds: a short dependency chain, where a lane-by-lane
// loop is 15 dependent scalar adds).
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

// The lane sums of kLanes vectors at once: lane j of the result is Sum(v[j]). A transpose-and-add
// tree (each level adds the two halves of every lane group of two vectors into one vector):
// 15 vector adds and 30 shuffles for all 16 sums, where 16 Sum() calls take 64 adds.
inline Vec SumEach(const Vec (&v)[kLanes]) {
  static_assert(kLanes == 16, "the shuffle tree below is written for 16 lanes");
  Vec a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // lanes 0-7: 8 partial sums of v[2i], lanes 8-15: of v[2i + 1]
    a[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                                   19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25,
                                   26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)  // 4 lanes per vector: v[4i], ..., v[4i + 3]
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18,
                                   19, 24, 25, 26, 27) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                   22, 23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)  // 2 lanes per vector: v[8i], ..., v[8i + 7]
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20,
                                   21, 24, 25, 28, 29) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22,
                                   23, 26, 27, 30, 31);
  return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                 28, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                 29, 31);
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

// How many threads ParallelFor runs n items on: the calling thread plus helpers from the pool,
// as many threads in all as the pool has (the caller takes one pool thread's place), at most n.
inline int64_t Workers(ffi::ThreadPool& pool, int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), n));
}

// Runs body(i, slot) for i in [0, n) on Workers(pool, n) threads, slot in [0, Workers) naming the
// thread (for per-thread scratch); returns when all n are done. Helpers claim indices from a
// shared counter; one that starts late (its pool busy) finds nothing left and only touches the
// shared state it co-owns.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &body](int64_t slot) {
    int64_t finished = 0;
    for (int64_t i; (i = state->next.fetch_add(1)) < n; ++finished) body(i, slot);
    if (finished == 0) return;
    std::lock_guard<std::mutex> lock(state->mu);
    state->done += finished;
    if (state->done == n) state->cv.notify_all();
  };
  const int64_t helpers = Workers(pool, n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work, t] { work(t + 1); });
  work(0);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == n; });
}

}  // namespace pcjax

#endif  // PCJAX_KERNELS_CSRC_COMMON_H_
