// Shared by the CPU attention kernel's paths (ragged_paged_attention.cc, attention_cascade.h):
// the step's shapes and operands, work items, per-thread scratch, the vector exp, and the
// rows-in-lanes online softmax over one kv tile (LoadTile, FoldTile).

#ifndef PCJAX_KERNELS_CSRC_ATTENTION_TILES_H_
#define PCJAX_KERNELS_CSRC_ATTENTION_TILES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace pcjax {
namespace attention {

// Each SIMD vector of kLanes f32 holds kLanes q rows; a kv tile is kLanes tokens.
constexpr int64_t kMaxRows = 128;  // q rows per work item (kMaxVecs row vectors)
constexpr int64_t kMaxVecs = kMaxRows / kLanes;
constexpr int64_t kMaxHeadDim = 512;
constexpr float kMasked = -1e30f;   // finite, so a fully masked tile never makes inf - inf

inline Vec Max(Vec a, Vec b) { return a > b ? a : b; }
inline Vec Min(Vec a, Vec b) { return a < b ? a : b; }

// exp(x) lane-wise: Cephes' expf (ln 2 range reduction in two parts, degree-5 polynomial,
// ~1 ulp), inputs clamped so results stay normal.
inline Vec Exp(Vec x) {
  x = Max(Min(x, Splat(88.0f)), Splat(-87.0f));
  const Vec y = x * 1.44269504088896341f;
  const IVec n_int = __builtin_convertvector(y + (y < 0.0f ? Splat(-0.5f) : Splat(0.5f)), IVec);
  const Vec n = __builtin_convertvector(n_int, Vec);  // round(y)
  const Vec r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  Vec p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  Vec scale;
  const IVec bits = (n_int + 127) << 23;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

struct Shape {
  int64_t num_tokens, num_heads, num_kv_heads, head_dim;
  int64_t num_pages, page_size, num_seqs, pages_per_seq;
  int64_t group() const { return num_heads / num_kv_heads; }
};

struct Options {
  float sm_scale;
  int64_t sliding_window;  // <= 0: none
  float soft_cap;          // <= 0: none
};

template <typename T>
struct Operands {
  const T* q;  // [T, N, H]
  const T* k;  // [NP, P, K, H]
  const T* v;
  const int32_t* page_table;  // [B, M]
  const int32_t* kv_lens;     // [B]
  const int32_t* cu_q_lens;   // [B + 1]
  T* out;                     // [T, N, H]
};

struct WorkItem {
  int32_t seq;                // sequence b
  int32_t kv_head, kv_heads;  // kv heads kv_head .. kv_head + kv_heads - 1
  int32_t first, count;       // query tokens first .. first + count - 1 of the sequence
  int32_t shared = 0;         // kv positions [0, shared) come from the cascade's partial states
  int32_t chunks = 0;         // ... in that many chunks,
  int64_t partials = -1;      // at this offset of the partial-state buffer (see PartialIndex)
};

constexpr int64_t kFewRows = 4;   // rows per kv head up to which decode runs AttendFewRows
constexpr int kPrefetchTiles = 2;  // how far ahead the K/V rows of a tile are prefetched

template <int kChunks>
struct FewRowsState {  // one kv head's rows: q (pre-scaled), output accumulators, max, sum
  Vec q[kFewRows][kChunks];
  Vec out[kFewRows][kChunks];
  float m[kFewRows], l[kFewRows];
};

// Per-thread scratch, sized once per call. Row vector v of the item holds, in lane r, the row
// (token first + (v_in_head * kLanes + r) / G, head kv_head * G + (...) % G) of its kv head.
struct Scratch {
  std::vector<Vec> q_t, out_t;  // [vecs][H]: q (pre-scaled) and output accumulators, transposed
  std::vector<Vec> m, l;        // [vecs]: running max and sum
  std::vector<IVec> pos;        // [vecs]: each lane's query position (-1: an unused lane)
  std::vector<float> k_tile, v_tile;  // [kLanes][H]: the tile's K and V rows of one kv head
  std::vector<FewRowsState<64 / kLanes>> few_rows_64;    // per kv head of an item, head_dim 64
  std::vector<FewRowsState<128 / kLanes>> few_rows_128;  // head_dim 128
  template <int kHeadDim>
  std::vector<FewRowsState<kHeadDim / kLanes>>& few_rows() {
    static_assert(kHeadDim == 64 || kHeadDim == 128, "few-rows scratch for head_dim 64 or 128");
    if constexpr (kHeadDim == 64) return few_rows_64;
    else return few_rows_128;
  }
  explicit Scratch(int64_t head_dim)
      : q_t(kMaxVecs * head_dim),
        out_t(kMaxVecs * head_dim),
        m(kMaxVecs),
        l(kMaxVecs),
        pos(kMaxVecs),
        k_tile(kLanes * head_dim),
        v_tile(kLanes * head_dim) {}
};

// Copies rows [0, n) of a tile (row stride `stride`) to dst[kLanes][H] as f32; rows n.. are 0.
template <typename T>
void LoadTile(const T* src, int64_t stride, int64_t n, int64_t H, float* dst) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t h = 0; h < H; ++h) dst[j * H + h] = ToFloat(src[j * stride + h]);
  std::fill(dst + n * H, dst + kLanes * H, 0.0f);
}

// Folds one tile (kv positions t0 .. t0 + n - 1, K/V rows k[kLanes][H], v[kLanes][H]) into one
// row vector's online softmax. kHeadDim > 0 fixes head_dim at compile time.
template <int kHeadDim>
void FoldTile(int64_t H_runtime, const Options& opt, const float* k, const float* v, int64_t t0,
              int64_t n, const Vec* q_t, IVec pos, Vec& m, Vec& l, Vec* out_t) {
  const int64_t H = kHeadDim > 0 ? kHeadDim : H_runtime;
  Vec s[kLanes] = {};  // s[j]: the rows' scores against kv token t0 + j
  for (int64_t h = 0; h < H; ++h) {
    const Vec q = q_t[h];
    for (int j = 0; j < kLanes; ++j) s[j] += q * k[j * H + h];
  }
  const IVec lo = opt.sliding_window > 0 ? pos - static_cast<int32_t>(opt.sliding_window - 1)
                                         : IVec{} + 0;
  Vec tile_max = Splat(kMasked);
  for (int j = 0; j < kLanes; ++j) {
    if (opt.soft_cap > 0.0f)
      for (int r = 0; r < kLanes; ++r) s[j][r] = opt.soft_cap * std::tanh(s[j][r] / opt.soft_cap);
    const int32_t kv_pos = static_cast<int32_t>(t0 + j);
    const IVec visible = (kv_pos <= pos) & (kv_pos >= lo) & (IVec{} + (j < n ? -1 : 0));
    s[j] = visible ? s[j] : Splat(kMasked);
    tile_max = Max(tile_max, s[j]);
  }
  const Vec new_max = Max(m, tile_max);
  const Vec alpha = Exp(m - new_max);
  Vec sum = {};
  for (int j = 0; j < kLanes; ++j) {
    s[j] = s[j] > kMasked ? Exp(s[j] - new_max) : Splat(0.0f);  // s[j] is now p[j]
    sum += s[j];
  }
  l = l * alpha + sum;
  m = new_max;
  for (int64_t h = 0; h < H; ++h) {
    Vec acc = out_t[h] * alpha;
    for (int j = 0; j < kLanes; ++j) acc += s[j] * v[j * H + h];
    out_t[h] = acc;
  }
}

}  // namespace attention
}  // namespace pcjax

#endif  // PCJAX_KERNELS_CSRC_ATTENTION_TILES_H_
