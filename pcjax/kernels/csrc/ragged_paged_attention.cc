// Ragged paged attention for XLA:CPU: an XLA FFI handler (loaded and called by rpa_cpu.py).
//
// Semantics: those of `ref_ragged_paged_attention` (pcjax/kernels/ragged_paged_attention.py).
// Sequence b owns the query tokens cu_q_lens[b] : cu_q_lens[b + 1]; they are its last q_len kv
// tokens, so query i sits at position kv_lens[b] - q_len + i and attends to the kv positions
// j <= pos (and j > pos - sliding_window when the window is > 0), read straight from the pages
// page_table[b, j / P]. Tokens of no sequence get 0.
//
// Work: one item per (sequence, group of kv heads, block of query tokens), on XLA's intra-op
// thread pool (the calling thread works too). Two ways to lay an item's q rows (one row = one
// query token x one head) into SIMD lanes:
//
// * Rows in lanes (Attend; chunks and prefills): the rows of one kv head are packed kLanes to a
//   vector, so the online softmax is lane-wise with no horizontal reductions. For each tile of
//   up to kLanes kv tokens inside one page, a row vector's scores are kLanes accumulators (q
//   transposed once per item, K broadcast from a copy of the tile), the tile's max, exponentials
//   and sums run across them, and V folds into the transposed output accumulators.
// * Head dim in lanes (AttendFewRows; decode: at most kFewRows rows per kv head, where rows in
//   lanes would leave most lanes idle): scores are dot products read straight from the pages,
//   tiles walk each page once for all the item's heads, and the next tiles are prefetched.
//
// * Shared prefixes (cascade, decode only): decode sequences whose page tables begin with the same
//   pages (a system prompt, a conversation's earlier turns: prefix caching shares the pages
//   themselves) attend to those pages together, rows in lanes: a first pass of items (group,
//   kv head, block of members, chunk of the shared tokens) folds every member's rows over the
//   chunk and keeps the unnormalized online-softmax state (max, sum, output) per row and chunk;
//   the members' own items then cover only their remaining tokens and merge those states before
//   normalizing. The shared K/V are read once per block of members instead of once per member,
//   and the softmax runs lane-wise instead of per row.
//
// Only kv positions < kv_len are ever read, so stale or NaN pages past a sequence's length, the
// null page and padding never reach the output.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "attention_cascade.h"
#include "attention_tiles.h"
#include "common.h"

namespace pcjax {
namespace {

using namespace attention;  // NOLINT: this file implements the kernel those headers share

// The few-rows path (decode: one query token, a GQA group of at most kFewRows heads): head_dim
// in the lanes instead, so no lane is idle and K/V are read in place. Per tile, each row's
// scores are dot products (kHeadDim / kLanes FMAs and one horizontal sum per kv token), the
// softmax runs over a vector of the tile's scores, and V rows fold into the row's accumulators.

template <typename T, int kHeadDim>
void AttendFewRows(const Shape& sh, const Options& opt, const Operands<T>& x, const WorkItem& w,
                   std::vector<FewRowsState<kHeadDim / kLanes>>& states, const float* partials) {
  static_assert(kHeadDim % kLanes == 0, "head_dim in whole vectors");
  constexpr int kChunks = kHeadDim / kLanes;
  const int64_t G = sh.group(), K = sh.num_kv_heads, P = sh.page_size;
  const int64_t rows = static_cast<int64_t>(w.count) * G;  // <= kFewRows, per kv head
  const int64_t b = w.seq;
  const int64_t seq_start = x.cu_q_lens[b];
  const int64_t q_len = x.cu_q_lens[b + 1] - seq_start;
  const int64_t first_pos = x.kv_lens[b] - q_len + w.first;
  const int64_t hi = first_pos + w.count;
  const int64_t lo = opt.sliding_window > 0
                         ? std::max<int64_t>(0, first_pos - opt.sliding_window + 1)
                         : w.shared;  // a cascade member: [0, shared) was folded by the first pass
  const int64_t token_stride = K * kHeadDim;
  const int32_t* pages = x.page_table + b * sh.pages_per_seq;
  IVec lane;
  for (int j = 0; j < kLanes; ++j) lane[j] = j;
  int32_t pos[kFewRows];
  for (int64_t r = 0; r < kFewRows; ++r) pos[r] = first_pos + std::min(r, rows - 1) / G;

  states.resize(std::max<size_t>(states.size(), w.kv_heads));
  for (int64_t hh = 0; hh < w.kv_heads; ++hh) {
    auto& st = states[hh];
    for (int64_t r = 0; r < kFewRows; ++r) {
      const int64_t i = std::min(r, rows - 1) / G;
      const int64_t head = (w.kv_head + hh) * G + std::min(r, rows - 1) % G;
      const T* q_row = x.q + ((seq_start + w.first + i) * sh.num_heads + head) * kHeadDim;
      for (int c = 0; c < kChunks; ++c) {
        st.q[r][c] = LoadVec(q_row + c * kLanes) * opt.sm_scale;
        st.out[r][c] = Vec{};
      }
      st.m[r] = kMasked;
      st.l[r] = 0.0f;
    }
  }

  // Tiles outer, heads inner: a tile's rows of all the item's heads are one contiguous run of
  // each token's K (and V) row, so pages stream through in order.
  const int64_t run_bytes = w.kv_heads * kHeadDim * static_cast<int64_t>(sizeof(T));
  for (int64_t t0 = lo; t0 < hi;) {
    const int64_t offset = t0 % P;
    const int64_t n = std::min<int64_t>({kLanes, P - offset, hi - t0});
    const int64_t tile_base = (static_cast<int64_t>(pages[t0 / P]) * P + offset) * token_stride;
    // Prefetch the tile kPrefetchTiles tiles ahead (the first tiles at once).
    int64_t ahead = t0;
    for (int d = 0; d <= kPrefetchTiles && ahead < hi; ++d) {
      const int64_t rows_ahead = std::min<int64_t>({kLanes, P - ahead % P, hi - ahead});
      if (d == kPrefetchTiles || t0 == lo) {
        const int64_t base = (static_cast<int64_t>(pages[ahead / P]) * P + ahead % P) *
                                 token_stride + w.kv_head * kHeadDim;
        for (int64_t j = 0; j < rows_ahead; ++j) {
          Prefetch(x.k + base + j * token_stride, run_bytes);
          Prefetch(x.v + base + j * token_stride, run_bytes);
        }
      }
      ahead += rows_ahead;
    }
    const IVec kv_pos = lane + static_cast<int32_t>(t0);
    for (int64_t hh = 0; hh < w.kv_heads; ++hh) {
      auto& st = states[hh];
      const T* k_tile = x.k + tile_base + (w.kv_head + hh) * kHeadDim;
      const T* v_tile = x.v + tile_base + (w.kv_head + hh) * kHeadDim;
      Vec s[kFewRows];  // lane j: the row's score against kv token t0 + j
      for (int64_t r = 0; r < rows; ++r) {
        Vec dots[kLanes];  // lane-wise partial products; their lane sums are the scores
        for (int j = 0; j < kLanes; ++j) {
          dots[j] = Vec{};
          if (j >= n) continue;
          for (int c = 0; c < kChunks; ++c)
            dots[j] += st.q[r][c] * LoadVec(k_tile + j * token_stride + c * kLanes);
        }
        s[r] = SumEach(dots);
      }
      for (int64_t r = 0; r < rows; ++r) {
        if (opt.soft_cap > 0.0f)
          for (int j = 0; j < n; ++j) s[r][j] = opt.soft_cap * std::tanh(s[r][j] / opt.soft_cap);
        const int32_t row_lo = opt.sliding_window > 0
                                   ? pos[r] - static_cast<int32_t>(opt.sliding_window - 1)
                                   : 0;
        const IVec visible = (lane < static_cast<int32_t>(n)) & (kv_pos <= pos[r]) &
                             (kv_pos >= row_lo);
        s[r] = visible ? s[r] : Splat(kMasked);
        float tile_max = kMasked;
        for (int j = 0; j < kLanes; ++j) tile_max = std::max(tile_max, s[r][j]);
        if (tile_max == kMasked) {
          s[r] = Splat(0.0f);
          continue;
        }
        const float new_max = std::max(st.m[r], tile_max);
        const float alpha = Exp(Splat(st.m[r] - new_max))[0];
        s[r] = visible ? Exp(s[r] - new_max) : Splat(0.0f);  // now the row's p over the tile
        st.l[r] = st.l[r] * alpha + Sum(s[r]);
        st.m[r] = new_max;
        for (int c = 0; c < kChunks; ++c) st.out[r][c] *= alpha;
      }
      for (int64_t j = 0; j < n; ++j) {
        Vec v_row[kChunks];
        for (int c = 0; c < kChunks; ++c) v_row[c] = LoadVec(v_tile + j * token_stride + c * kLanes);
        for (int64_t r = 0; r < rows; ++r)
          for (int c = 0; c < kChunks; ++c) st.out[r][c] += s[r][j] * v_row[c];
      }
    }
    t0 += n;
  }

  for (int64_t hh = 0; hh < w.kv_heads; ++hh)
    for (int64_t r = 0; r < rows; ++r) {
      auto& st = states[hh];
      if (w.partials >= 0) MergePartials(partials, w, G, hh, r, st);
      const int64_t i = r / G, head = (w.kv_head + hh) * G + r % G;
      T* out_row = x.out + ((seq_start + w.first + i) * sh.num_heads + head) * kHeadDim;
      const float inv = 1.0f / st.l[r];
      for (int c = 0; c < kChunks; ++c)
        for (int h = 0; h < kLanes; ++h) FromFloat(st.out[r][c][h] * inv, &out_row[c * kLanes + h]);
    }
}

template <typename T, int kHeadDim>
void Attend(const Shape& sh, const Options& opt, const Operands<T>& x, const WorkItem& w,
            Scratch& scratch, const float* partials) {
  const int64_t H = kHeadDim > 0 ? kHeadDim : sh.head_dim;
  const int64_t G = sh.group(), K = sh.num_kv_heads, P = sh.page_size;
  const int64_t rows_per_head = static_cast<int64_t>(w.count) * G;
  if constexpr (kHeadDim > 0) {
    if (rows_per_head <= kFewRows)
      return AttendFewRows<T, kHeadDim>(sh, opt, x, w, scratch.few_rows<kHeadDim>(), partials);
  }
  const int64_t vecs_per_head = (rows_per_head + kLanes - 1) / kLanes;
  const int64_t b = w.seq;
  const int64_t seq_start = x.cu_q_lens[b];
  const int64_t q_len = x.cu_q_lens[b + 1] - seq_start;
  const int64_t first_pos = x.kv_lens[b] - q_len + w.first;
  const int64_t hi = first_pos + w.count;  // kv positions [lo, hi) are read
  const int64_t lo = opt.sliding_window > 0
                         ? std::max<int64_t>(0, first_pos - opt.sliding_window + 1)
                         : 0;
  Vec* q_t = scratch.q_t.data();
  Vec* out_t = scratch.out_t.data();

  // Transposed, pre-scaled q rows; unused lanes are 0 with position -1 (they see nothing).
  for (int64_t hh = 0; hh < w.kv_heads; ++hh)
    for (int64_t vi = 0; vi < vecs_per_head; ++vi) {
      const int64_t vec = hh * vecs_per_head + vi;
      for (int64_t h = 0; h < H; ++h) q_t[vec * H + h] = Vec{}, out_t[vec * H + h] = Vec{};
      scratch.m[vec] = Splat(kMasked);
      scratch.l[vec] = Vec{};
      for (int r = 0; r < kLanes; ++r) {
        const int64_t row = vi * kLanes + r;
        scratch.pos[vec][r] = -1;
        if (row >= rows_per_head) continue;
        const int64_t i = row / G, head = (w.kv_head + hh) * G + row % G;
        const T* q_row = x.q + ((seq_start + w.first + i) * sh.num_heads + head) * H;
        for (int64_t h = 0; h < H; ++h) q_t[vec * H + h][r] = ToFloat(q_row[h]) * opt.sm_scale;
        scratch.pos[vec][r] = static_cast<int32_t>(first_pos + i);
      }
    }

  const int32_t* pages = x.page_table + b * sh.pages_per_seq;
  const int64_t token_stride = K * H;  // between consecutive tokens of a page
  for (int64_t t0 = lo; t0 < hi;) {
    const int64_t offset = t0 % P;
    const int64_t n = std::min<int64_t>({kLanes, P - offset, hi - t0});
    const int64_t page_base = (static_cast<int64_t>(pages[t0 / P]) * P + offset) * token_stride;
    for (int64_t hh = 0; hh < w.kv_heads; ++hh) {
      const int64_t head_base = page_base + (w.kv_head + hh) * H;
      LoadTile(x.k + head_base, token_stride, n, H, scratch.k_tile.data());
      LoadTile(x.v + head_base, token_stride, n, H, scratch.v_tile.data());
      for (int64_t vi = 0; vi < vecs_per_head; ++vi) {
        const int64_t vec = hh * vecs_per_head + vi;
        FoldTile<kHeadDim>(H, opt, scratch.k_tile.data(), scratch.v_tile.data(), t0, n,
                           q_t + vec * H, scratch.pos[vec], scratch.m[vec], scratch.l[vec],
                           out_t + vec * H);
      }
    }
    t0 += n;
  }

  for (int64_t hh = 0; hh < w.kv_heads; ++hh)
    for (int64_t row = 0; row < rows_per_head; ++row) {
      const int64_t vec = hh * vecs_per_head + row / kLanes, r = row % kLanes;
      const int64_t i = row / G, head = (w.kv_head + hh) * G + row % G;
      T* out_row = x.out + ((seq_start + w.first + i) * sh.num_heads + head) * H;
      const float inv = 1.0f / scratch.l[vec][r];  // l >= 1: every query sees at least itself
      for (int64_t h = 0; h < H; ++h) FromFloat(out_t[vec * H + h][r] * inv, &out_row[h]);
    }
}

ffi::Error Invalid(const std::string& message) {
  return InvalidArgument("pcjax ragged paged attention: " + message);
}

template <typename T>
ffi::Error Run(ffi::ThreadPool& pool, const Shape& sh, const Options& opt,
               const Operands<T>& x) {
  std::fill(x.out, x.out + sh.num_tokens * sh.num_heads * sh.head_dim, T{});
  const int64_t G = sh.group(), K = sh.num_kv_heads;
  // Work units (sequence, query block) over all kv heads, so an item reads whole pages; heads
  // are split across items only when there are too few units to keep the threads busy.
  int64_t units = 0;
  for (int64_t b = 0; b < sh.num_seqs; ++b) units += x.cu_q_lens[b + 1] > x.cu_q_lens[b];
  const int64_t wanted = 4 * std::max<int64_t>(1, pool.num_threads());
  int64_t heads_per_item = K;
  while (heads_per_item > 1 && units * ((K + heads_per_item - 1) / heads_per_item) < wanted)
    heads_per_item /= 2;
  const int64_t vecs_per_head_min = (G + kLanes - 1) / kLanes;  // one query token's rows
  heads_per_item = std::max<int64_t>(1, std::min(heads_per_item, kMaxVecs / vecs_per_head_min));
  // Query tokens per item: as many as the item's row vectors hold.
  const int64_t vecs_per_head = std::max(vecs_per_head_min, kMaxVecs / heads_per_item);
  const int64_t block = std::max<int64_t>(1, vecs_per_head * kLanes / G);
  std::vector<WorkItem> items;
  for (int64_t b = 0; b < sh.num_seqs; ++b) {
    const int64_t start = x.cu_q_lens[b], q_len = x.cu_q_lens[b + 1] - start;
    const int64_t kv_len = x.kv_lens[b];
    if (q_len == 0) continue;
    if (q_len < 0 || start < 0 || start + q_len > sh.num_tokens || q_len > kv_len ||
        kv_len > sh.pages_per_seq * sh.page_size)
      return Invalid("sequence " + std::to_string(b) + " has q_len " + std::to_string(q_len) +
                     " at " + std::to_string(start) + " and kv_len " + std::to_string(kv_len) +
                     ", outside the step's " + std::to_string(sh.num_tokens) + " tokens or " +
                     std::to_string(sh.pages_per_seq) + " pages");
    const int32_t* pages = x.page_table + b * sh.pages_per_seq;
    for (int64_t p = 0; p < (kv_len + sh.page_size - 1) / sh.page_size; ++p)
      if (pages[p] < 0 || pages[p] >= sh.num_pages)
        return Invalid("page " + std::to_string(pages[p]) + " of sequence " + std::to_string(b) +
                       " is not among the " + std::to_string(sh.num_pages) + " pages");
    for (int64_t kh = 0; kh < K; kh += heads_per_item)
      for (int64_t first = 0; first < q_len; first += block)
        items.push_back({static_cast<int32_t>(b), static_cast<int32_t>(kh),
                         static_cast<int32_t>(std::min(heads_per_item, K - kh)),
                         static_cast<int32_t>(first),
                         static_cast<int32_t>(std::min(block, q_len - first))});
  }
  if (items.empty()) return ffi::Error::Success();
  const Cascade cascade = PlanCascade(sh, opt, x);
  for (WorkItem& item : items) {
    if (cascade.member_of[item.seq] < 0) continue;
    const CascadeMember& member = cascade.members[cascade.member_of[item.seq]];
    item.shared = member.shared, item.chunks = member.chunks, item.partials = member.base;
  }
  // Longest kv ranges first, so the last items to finish are short ones.
  auto start = [&](const WorkItem& a) {
    return x.kv_lens[a.seq] - (x.cu_q_lens[a.seq + 1] - x.cu_q_lens[a.seq]) + a.first - a.shared;
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const WorkItem& a, const WorkItem& c) { return start(a) > start(c); });
  const int64_t slots = Workers(
      pool, static_cast<int64_t>(std::max(items.size(), cascade.items.size())));
  std::vector<std::unique_ptr<Scratch>> scratch;
  for (int64_t t = 0; t < slots; ++t) scratch.push_back(std::make_unique<Scratch>(sh.head_dim));
  std::vector<float> partials(cascade.partial_floats);
  if (!cascade.items.empty()) {
    auto attend_shared = sh.head_dim == 64 ? &AttendShared<T, 64> : &AttendShared<T, 128>;
    ParallelFor(pool, static_cast<int64_t>(cascade.items.size()), [&](int64_t i, int64_t slot) {
      attend_shared(sh, opt, x, cascade.items[i], *scratch[slot], partials.data());
    });
  }
  auto attend = sh.head_dim == 64    ? &Attend<T, 64>
                : sh.head_dim == 128 ? &Attend<T, 128>
                                     : &Attend<T, 0>;
  ParallelFor(pool, static_cast<int64_t>(items.size()), [&](int64_t i, int64_t slot) {
    attend(sh, opt, x, items[i], *scratch[slot], partials.data());
  });
  return ffi::Error::Success();
}

ffi::Error RaggedPagedAttention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k_pages,
                                ffi::AnyBuffer v_pages, ffi::Buffer<ffi::S32> page_table,
                                ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> cu_q_lens,
                                ffi::Result<ffi::AnyBuffer> out, float sm_scale,
                                int64_t sliding_window, float soft_cap) {
  const auto qd = q.dimensions(), kd = k_pages.dimensions(), td = page_table.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || td.size() != 2)
    return Invalid("want q [T, N, H], pages [NP, P, K, H] and page_table [B, M]");
  Shape sh{qd[0], qd[1], kd[2], qd[2], kd[0], kd[1], td[0], td[1]};
  const auto vd = v_pages.dimensions();
  if (vd.size() != 4 || !std::equal(vd.begin(), vd.end(), kd.begin()))
    return Invalid("k_pages and v_pages differ in shape");
  if (kd[3] != sh.head_dim) return Invalid("q and the pages differ in head_dim");
  if (sh.num_kv_heads <= 0 || sh.num_heads % sh.num_kv_heads != 0)
    return Invalid("num_heads must be a multiple of num_kv_heads");
  if (sh.group() > kMaxRows || sh.head_dim > kMaxHeadDim)
    return Invalid("a GQA group of at most 128 heads and head_dim <= 512 are supported");
  if (kv_lens.dimensions().size() != 1 || kv_lens.dimensions()[0] != sh.num_seqs ||
      cu_q_lens.dimensions().size() != 1 || cu_q_lens.dimensions()[0] != sh.num_seqs + 1)
    return Invalid("want kv_lens [B] and cu_q_lens [B + 1]");
  const auto dtype = q.element_type();
  if (k_pages.element_type() != dtype || v_pages.element_type() != dtype ||
      out->element_type() != dtype)
    return Invalid("q, the pages and the output must share one dtype");
  const Options opt{sm_scale, sliding_window, soft_cap};
  if (dtype == ffi::DataType::F32) {
    Operands<float> x{q.typed_data<float>(), k_pages.typed_data<float>(),
                      v_pages.typed_data<float>(), page_table.typed_data(),
                      kv_lens.typed_data(), cu_q_lens.typed_data(), out->typed_data<float>()};
    return Run(pool, sh, opt, x);
  }
  if (dtype == ffi::DataType::BF16) {
    auto as_bf16 = [](void* p) { return static_cast<BF16*>(p); };
    Operands<BF16> x{as_bf16(q.untyped_data()),       as_bf16(k_pages.untyped_data()),
                     as_bf16(v_pages.untyped_data()), page_table.typed_data(),
                     kv_lens.typed_data(),            cu_q_lens.typed_data(),
                     as_bf16(out->untyped_data())};
    return Run(pool, sh, opt, x);
  }
  return Invalid("only float32 and bfloat16 are supported");
}

}  // namespace
}  // namespace pcjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcjaxRaggedPagedAttentionCpu, pcjax::RaggedPagedAttention,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<float>("sm_scale")
                                  .Attr<int64_t>("sliding_window")
                                  .Attr<float>("soft_cap"));
