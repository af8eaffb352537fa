// y = x @ w.T for a skinny x (a decode step's few rows): an XLA FFI handler (skinny_matmul.py).
//
// x is f[M, K] with M <= kMaxRows, w is f[N, K] (torch's [out, in] layout, as pcjax stores
// weights), y is f32 or x's dtype [M, N]; x and w share one dtype, float32 or bfloat16, and
// the sums are f32. Such a product only streams w once from memory, so it should run at memory
// speed; XLA:CPU's dot instead repacks or transposes w on every call, which doubles the traffic.
//
// Work: x is converted once to f32 rows padded to whole vectors; items are blocks of output
// rows (rows of w), split over XLA's intra-op thread pool; each w row is read once, as vectors,
// against all M rows of x held in cache, kO rows of w at a time for independent FMA chains.

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pcjax {
namespace {

constexpr int64_t kMaxRows = 16;     // rows of x
constexpr int64_t kRowsPerItem = 64;  // rows of w per work item

template <typename T>
struct Operands {
  const float* x;  // [M_padded, K_padded] f32
  const T* w;      // [N, K]
  int64_t rows, padded_k, n, k;
};

// Rows [o_begin, o_end) of w against kM rows of x; writes y[m, o] for m < rows.
template <int kM, int kO, typename T, typename Out>
void Block(const Operands<T>& a, int64_t o_begin, int64_t o_end, Out* y) {
  const int64_t vec_k = a.k / kLanes * kLanes;
  for (int64_t o = o_begin; o < o_end; o += kO) {
    const int64_t live = std::min<int64_t>(kO, o_end - o);
    const T* w_rows[kO];
    for (int r = 0; r < kO; ++r) w_rows[r] = a.w + std::min<int64_t>(o + r, o_end - 1) * a.k;
    Vec acc[kO][kM] = {};
    for (int64_t i = 0; i < vec_k; i += kLanes) {
      for (int r = 0; r < kO; ++r) __builtin_prefetch(w_rows[r] + kO * a.k + i, 0, 3);  // next rows
      Vec w_vec[kO];
      for (int r = 0; r < kO; ++r) w_vec[r] = LoadVec(w_rows[r] + i);
      for (int m = 0; m < kM; ++m) {
        const Vec x_vec = LoadVec(a.x + m * a.padded_k + i);
        for (int r = 0; r < kO; ++r) acc[r][m] += x_vec * w_vec[r];
      }
    }
    static_assert(kO * kM <= kLanes, "one SumEach per block of rows");
    Vec parts[kLanes] = {};
    for (int r = 0; r < kO; ++r)
      for (int m = 0; m < kM; ++m) parts[r * kM + m] = acc[r][m];
    const Vec sums = SumEach(parts);
    for (int r = 0; r < live; ++r)
      for (int m = 0; m < a.rows; ++m) {
        float total = sums[r * kM + m];
        for (int64_t i = vec_k; i < a.k; ++i) total += a.x[m * a.padded_k + i] * ToFloat(w_rows[r][i]);
        FromFloat(total, &y[m * a.n + o + r]);
      }
  }
}

template <typename T, typename Out>
void Run(ffi::ThreadPool& pool, const Operands<T>& a, Out* y) {
  const int64_t items = (a.n + kRowsPerItem - 1) / kRowsPerItem;
  auto block = [&](int64_t item, int64_t) {
    const int64_t begin = item * kRowsPerItem, end = std::min(a.n, begin + kRowsPerItem);
    // kM: the rows of x rounded up to a power of two (padding rows are 0 and never written).
    if (a.rows <= 1) return Block<1, 4>(a, begin, end, y);
    if (a.rows <= 2) return Block<2, 4>(a, begin, end, y);
    if (a.rows <= 4) return Block<4, 4>(a, begin, end, y);
    if (a.rows <= 8) return Block<8, 2>(a, begin, end, y);
    return Block<16, 1>(a, begin, end, y);
  };
  ParallelFor(pool, items, block);
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
