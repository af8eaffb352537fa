// y = x @ w.T for a skinny x (a decode step's few rows): an XLA FFI handler (skinny_matmul.py).
//
// x is f[M, K] with M <= kMaxRows, w is f[N, K] (torch's [out, in] layout, as pcjax stores
// weights), y is f32 or x's dtype [M, N]; x and w share one dtype, float32 or bfloat16, and
// the sums are f32. Such a product only streams w once from memory, so it should run at memory
// speed; XLA:CPU's dot instead repacks or transposes w on every call, which doubles the traffic.
//
// Work: x is converted once to f32 rows padded to whole vectors; items are blocks of output
// rows (rows of w), split over XLA's intra-op thread pool. A register tile is kO rows of w
// against kM rows of x: kO * kM accumulators, kO loaded w vectors and one x vector, sized to fit
// the target's vector registers (kVecRegisters) so nothing spills. A tile of w rows is streamed
// from memory once, for its first kM rows of x; further groups of x rows (M > kM) reread it from
// L1, where it still sits (kO rows of K values: a few KB). Every group prefetches the w rows
// kPrefetchTiles tiles ahead, so memory keeps streaming while the later groups compute: with
// prefetches in the first group only, an 8-row product (two groups of 4 on AVX2) computed and
// loaded in turns (smollm2-135m's decode projections in f32, B = 8: 25.5 -> 22.2 ms).
//
// bfloat16 on a CPU with AVX512-BF16 (Zen 4, Sapphire Rapids) takes its own path (BlockDot):
// x stays bfloat16 and each vdpbf16ps multiplies 32 bfloat16 pairs into 16 f32 sums, where the
// portable path converts every w vector to f32 first and needs two FMAs for the same work. The
// portable path is bound by that arithmetic, not by memory: for 8 rows on one Zen 4 core it
// reads about 6 GB/s of bfloat16 weights from L2 against 20 GB/s for vdpbf16ps (and from DRAM
// 5.9 against 10.0 GB/s). Products are exact and sums f32 either way; vdpbf16ps treats
// subnormal inputs as zero.

#include <algorithm>
#include <cstdint>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pcjax {
namespace {

constexpr int64_t kMaxRows = 16;     // rows of x
constexpr int64_t kRowsPerItem = 96;  // rows of w per work item
constexpr int64_t kPrefetchTiles = 2;  // how many tiles of w rows ahead the loads are prefetched

// The register tile for kM rows of x: as many w rows kO (at most kMaxO) as keep the kO * kM
// accumulators, kO w vectors and one x vector within the vector registers. 16 registers (AVX2):
// 4 x 3, 2 x 4, 1 x 6; 32 (AVX-512, NEON): 4 x 6, 2 x 6, 1 x 6.
constexpr int kMaxO = 6;
constexpr int TileO(int m) { return std::min(kMaxO, (kVecRegisters - 1) / (m + 1)); }
// Rows of x per tile: 4, and 8 rows run as two tiles over the same w rows (the second reads
// them from L1). On a Zen 4 core, 8 rows in 4 x 6 tiles compute 1.4x as fast as in one 8 x 3
// tile (f32, w in L2), and read 10.8 against 9.6 GB/s from DRAM: fewer loads per FMA.
constexpr int kTileRows = 4;
static_assert(TileO(kTileRows) >= 3 && TileO(1) >= 1, "register tiles for this target");

template <typename T>
struct Operands {
  const float* x;  // [kMaxRows, K_padded] f32, zero past the data
  const T* w;      // [N, K]
  int64_t rows, padded_k, n, k;
};

// y[m, o] for rows o of w in [o, o + live) (live <= kO; w_rows holds them, the last repeated to
// fill kO) against rows m in [m0, m0 + kM) of x, writing those m < a.rows.
template <int kM, int kO, typename T, typename Out>
void Tile(const Operands<T>& a, const T* const (&w_rows)[kO], int64_t o, int64_t live, int64_t m0,
          Out* y) {
  static_assert(kO * kM + kO + 1 <= kVecRegisters, "the tile fits the vector registers");
  constexpr int64_t kLineElements = 64 / sizeof(T);  // one prefetch per cache line
  // Integer arithmetic: the address may lie past w's end, where a prefetch is a no-op.
  const uintptr_t ahead_bytes = kPrefetchTiles * kO * a.k * sizeof(T);
  const int64_t vec_k = a.k / kLanes * kLanes;
  const float* x = a.x + m0 * a.padded_k;
  Vec acc[kO][kM] = {};
  for (int64_t i = 0; i < vec_k; i += kLanes) {
    if (i % kLineElements == 0)
      for (int r = 0; r < kO; ++r)
        __builtin_prefetch(
            reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(w_rows[r] + i) + ahead_bytes),
            0, 3);
    Vec w_vec[kO];
    for (int r = 0; r < kO; ++r) w_vec[r] = LoadVec(w_rows[r] + i);
    for (int m = 0; m < kM; ++m) {
      const Vec x_vec = LoadVec(x + m * a.padded_k + i);
      for (int r = 0; r < kO; ++r) acc[r][m] += x_vec * w_vec[r];
    }
  }
  // Lane sums, kLanes accumulators per SumEach.
  constexpr int kParts = kO * kM, kGroups = (kParts + kLanes - 1) / kLanes;
  float sums[kGroups * kLanes];
  for (int g = 0; g < kGroups; ++g) {
    Vec parts[kLanes] = {};
    for (int p = 0; p < kLanes && g * kLanes + p < kParts; ++p)
      parts[p] = acc[(g * kLanes + p) / kM][(g * kLanes + p) % kM];
    const Vec group_sums = SumEach(parts);
    std::memcpy(sums + g * kLanes, &group_sums, sizeof(group_sums));
  }
  const int64_t rows = std::min<int64_t>(kM, a.rows - m0);
  for (int r = 0; r < live; ++r)
    for (int m = 0; m < rows; ++m) {
      float total = sums[r * kM + m];
      for (int64_t i = vec_k; i < a.k; ++i) total += x[m * a.padded_k + i] * ToFloat(w_rows[r][i]);
      FromFloat(total, &y[(m0 + m) * a.n + o + r]);
    }
}

// Rows [o_begin, o_end) of w (K values each) kO at a time, each group against the `rows` rows
// of x in tiles of kM: tile(w_rows, o, live, m0), `live` of the kO rows real (the others repeat
// the last row); padding rows of x are 0 and never written.
template <int kM, int kO, typename T, typename TileFn>
void ForEachTile(const T* w, int64_t k, int64_t rows, int64_t o_begin, int64_t o_end,
                 const TileFn& tile) {
  for (int64_t o = o_begin; o < o_end; o += kO) {
    const int64_t live = std::min<int64_t>(kO, o_end - o);
    const T* w_rows[kO];
    for (int r = 0; r < kO; ++r) w_rows[r] = w + std::min<int64_t>(o + r, o_end - 1) * k;
    for (int64_t m0 = 0; m0 < rows; m0 += kM) tile(w_rows, o, live, m0);
  }
}

// The n rows of w in work items of kRowsPerItem rows, block(begin, end) each, on the pool.
template <typename BlockFn>
void ForEachRowBlock(ffi::ThreadPool& pool, int64_t n, const BlockFn& block) {
  const int64_t items = (n + kRowsPerItem - 1) / kRowsPerItem;
  ParallelFor(pool, items, [&](int64_t item, int64_t) {
    const int64_t begin = item * kRowsPerItem;
    block(begin, std::min(n, begin + kRowsPerItem));
  });
}

// Rows [o_begin, o_end) of w against all rows of x, in register tiles of TileO(kM) x kM.
template <int kM, typename T, typename Out>
void Block(const Operands<T>& a, int64_t o_begin, int64_t o_end, Out* y) {
  constexpr int kO = TileO(kM);
  ForEachTile<kM, kO>(a.w, a.k, a.rows, o_begin, o_end,
                      [&](const T* const (&w_rows)[kO], int64_t o, int64_t live, int64_t m0) {
                        Tile<kM, kO>(a, w_rows, o, live, m0, y);
                      });
}

#if defined(__AVX512BF16__)
constexpr int64_t kPairLanes = 32;  // bfloat16 values per zmm register

// BlockDot's operands: x as bfloat16 rows padded with zeros to whole registers.
struct DotOperands {
  const BF16* x;  // [kMaxRows, padded_k]
  const BF16* w;  // [N, K]
  int64_t rows, padded_k, n, k;
};

// Rows [o_begin, o_end) of w against rows [m0, m0 + kM) of x, kO rows of w at a time: kM x
// registers, one w register, kO * kM accumulators (8 x 2 + 9 or 4 x 4 + 5 registers). The last
// partial register of a row is a masked load (w's next row may be NaN there).
template <int kM, int kO, typename Out>
void TileDot(const DotOperands& a, const BF16* const (&w_rows)[kO], int64_t o, int64_t live,
             int64_t m0, Out* y) {
  const uintptr_t ahead_bytes = kPrefetchTiles * kO * a.k * sizeof(BF16);
  const BF16* x = a.x + m0 * a.padded_k;
  __m512 acc[kO][kM];
  for (int r = 0; r < kO; ++r)
    for (int m = 0; m < kM; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t i = 0; i < a.k; i += kPairLanes) {
    const int64_t left = a.k - i;
    const __mmask32 mask = left >= kPairLanes ? ~__mmask32{0} : (__mmask32{1} << left) - 1;
    __m512bh x_vec[kM];
    for (int m = 0; m < kM; ++m)
      x_vec[m] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + m * a.padded_k + i));
    for (int r = 0; r < kO; ++r) {
      __builtin_prefetch(
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(w_rows[r] + i) + ahead_bytes),
          0, 3);
      const __m512bh w_vec =
          reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, w_rows[r] + i));
      for (int m = 0; m < kM; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], x_vec[m], w_vec);
    }
  }
  const int64_t rows = std::min<int64_t>(kM, a.rows - m0);
  for (int r = 0; r < live; ++r)
    for (int m = 0; m < rows; ++m)
      FromFloat(_mm512_reduce_add_ps(acc[r][m]), &y[(m0 + m) * a.n + o + r]);
}

template <int kM, typename Out>
void BlockDot(const DotOperands& a, int64_t o_begin, int64_t o_end, Out* y) {
  constexpr int kO = kM >= 8 ? 2 : 4;
  ForEachTile<kM, kO>(a.w, a.k, a.rows, o_begin, o_end,
                      [&](const BF16* const (&w_rows)[kO], int64_t o, int64_t live, int64_t m0) {
                        TileDot<kM, kO>(a, w_rows, o, live, m0, y);
                      });
}

// x @ w.T for bfloat16 x and w with vdpbf16ps (see the top of the file).
template <typename Out>
void RunDot(ffi::ThreadPool& pool, const BF16* x, const BF16* w, int64_t rows, int64_t k,
            int64_t n, Out* y) {
  const int64_t padded_k = (k + kPairLanes - 1) / kPairLanes * kPairLanes;
  std::vector<BF16> x_padded(kMaxRows * padded_k, BF16{0});
  for (int64_t m = 0; m < rows; ++m)
    std::copy(x + m * k, x + (m + 1) * k, x_padded.begin() + m * padded_k);
  const DotOperands a{x_padded.data(), w, rows, padded_k, n, k};
  ForEachRowBlock(pool, n, [&](int64_t begin, int64_t end) {
    if (rows <= 4) return BlockDot<4>(a, begin, end, y);
    return BlockDot<8>(a, begin, end, y);
  });
}
#endif  // __AVX512BF16__

template <typename T, typename Out>
void Run(ffi::ThreadPool& pool, const Operands<T>& a, Out* y) {
  ForEachRowBlock(pool, a.n, [&](int64_t begin, int64_t end) {
    // kM: the rows of x rounded up to a power of two, at most kTileRows (then several tiles).
    if (a.rows <= 1) return Block<1>(a, begin, end, y);
    if (a.rows <= 2) return Block<2>(a, begin, end, y);
    return Block<kTileRows>(a, begin, end, y);
  });
}

ffi::Error SkinnyMatmul(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1])
    return InvalidArgument("pcjax skinny matmul: want x [M, K] and w [N, K]");
  const int64_t rows = xd[0], k = xd[1], n = wd[0];
  if (rows > kMaxRows)
    return InvalidArgument("pcjax skinny matmul: x has " + std::to_string(rows) +
                           " rows; at most 16 are supported");
  const auto dtype = x.element_type();
  if (w.element_type() != dtype || (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16))
    return InvalidArgument("pcjax skinny matmul: x and w must both be float32 or bfloat16");
  const auto out_dtype = y->element_type();
  if (out_dtype != ffi::DataType::F32 && out_dtype != dtype)
    return InvalidArgument("pcjax skinny matmul: the output must be float32 or x's dtype");
  if (rows == 0 || n == 0) return ffi::Error::Success();

#if defined(__AVX512BF16__)
  if (dtype == ffi::DataType::BF16) {
    const auto* x_bf16 = static_cast<const BF16*>(x.untyped_data());
    const auto* w_bf16 = static_cast<const BF16*>(w.untyped_data());
    if (out_dtype == ffi::DataType::F32)
      RunDot(pool, x_bf16, w_bf16, rows, k, n, y->typed_data<float>());
    else
      RunDot(pool, x_bf16, w_bf16, rows, k, n, static_cast<BF16*>(y->untyped_data()));
    return ffi::Error::Success();
  }
#endif
  // x as f32, kMaxRows-padded rows of whole vectors (zeros past the data).
  const int64_t padded_k = (k + kLanes - 1) / kLanes * kLanes;
  std::vector<float> x_f32(kMaxRows * padded_k, 0.0f);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t i = 0; i < k; ++i)
      x_f32[m * padded_k + i] = dtype == ffi::DataType::F32
                                    ? x.typed_data<float>()[m * k + i]
                                    : ToFloat(static_cast<const BF16*>(x.untyped_data())[m * k + i]);

  auto run = [&](auto* w_data) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(w_data)>>;
    const Operands<T> a{x_f32.data(), w_data, rows, padded_k, n, k};
    if (out_dtype == ffi::DataType::F32)
      Run(pool, a, y->typed_data<float>());
    else
      Run(pool, a, static_cast<BF16*>(y->untyped_data()));
  };
  if (dtype == ffi::DataType::F32)
    run(static_cast<const float*>(w.untyped_data()));
  else
    run(static_cast<const BF16*>(w.untyped_data()));
  return ffi::Error::Success();
}

}  // namespace
}  // namespace pcjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcjaxSkinnyMatmulCpu, pcjax::SkinnyMatmul,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::AnyBuffer>());
