// The cascade of the CPU attention kernel (see ragged_paged_attention.cc): decode sequences whose
// page tables begin with the same pages attend to them together. PlanCascade groups them;
// AttendShared folds a group's rows over a chunk of the shared pages into partial states;
// MergePartials folds those into a member's own state before it normalizes.

#ifndef PCJAX_KERNELS_CSRC_ATTENTION_CASCADE_H_
#define PCJAX_KERNELS_CSRC_ATTENTION_CASCADE_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention_tiles.h"

namespace pcjax {
namespace attention {

// The cascade's partial states: per member sequence, kv head, row of the head's GQA group and
// chunk of the shared tokens, (max, sum, H unnormalized output sums) as floats.
inline int64_t PartialIndex(int64_t base, int64_t kv_head, int64_t row, int64_t chunk, int64_t G,
                            int64_t chunks, int64_t H) {
  return base + ((kv_head * G + row) * chunks + chunk) * (H + 2);
}

// A decode sequence of a cascade: its shared kv tokens, in chunks of kSharedChunk, and the
// offset of its partial states.
struct CascadeMember {
  int32_t seq, shared, chunks;
  int64_t base;
};

// One first-pass item of the cascade: rows of `num_members` decode sequences (kv head kv_head)
// over kv positions [begin, end) of the pages they share.
struct SharedItem {
  const int32_t* pages;          // the shared page ids (any member's page table row)
  const CascadeMember* members;  // num_members of them
  int32_t num_members, kv_head, begin, end, chunk, chunks;
};

constexpr int64_t kMinSharedTokens = 64;  // shorter shared prefixes are not worth a cascade
constexpr int64_t kSharedChunk = 128;     // kv tokens per first-pass item

// Folds the cascade's partial states of kv positions [0, w.shared) into a row's state.
template <int kChunks>
void MergePartials(const float* partials, const WorkItem& w, int64_t G, int64_t hh, int64_t r,
                   FewRowsState<kChunks>& st) {
  constexpr int64_t H = kChunks * kLanes;
  for (int64_t c = 0; c < w.chunks; ++c) {
    const float* p = partials + PartialIndex(w.partials, w.kv_head + hh, r, c, G, w.chunks, H);
    const float new_max = std::max(st.m[r], p[0]);
    const float mine = Exp(Splat(st.m[r] - new_max))[0], theirs = Exp(Splat(p[0] - new_max))[0];
    st.l[r] = st.l[r] * mine + p[1] * theirs;
    st.m[r] = new_max;
    for (int c2 = 0; c2 < kChunks; ++c2)
      st.out[r][c2] = st.out[r][c2] * mine + LoadVec(p + 2 + c2 * kLanes) * theirs;
  }
}

// A first-pass item of the cascade: the rows of its members' query tokens (kv head w.kv_head)
// over kv positions [w.begin, w.end) of the shared pages, rows in lanes as Attend lays them; it
// stores each row's unnormalized state for MergePartials. Every shared position lies before
// every member's query, so nothing is masked but a partial tile's missing tokens (and the soft
// cap applies as usual).
template <typename T, int kHeadDim>
void AttendShared(const Shape& sh, const Options& opt, const Operands<T>& x, const SharedItem& w,
                  Scratch& scratch, float* partials) {
  constexpr int64_t H = kHeadDim;
  const int64_t G = sh.group(), K = sh.num_kv_heads, P = sh.page_size;
  const int64_t rows = static_cast<int64_t>(w.num_members) * G;  // <= kMaxRows
  const int64_t vecs = (rows + kLanes - 1) / kLanes;
  Vec* q_t = scratch.q_t.data();
  Vec* out_t = scratch.out_t.data();
  for (int64_t vec = 0; vec < vecs; ++vec) {
    for (int64_t h = 0; h < H; ++h) q_t[vec * H + h] = Vec{}, out_t[vec * H + h] = Vec{};
    scratch.m[vec] = Splat(kMasked);
    scratch.l[vec] = Vec{};
    for (int r = 0; r < kLanes; ++r) {
      const int64_t row = vec * kLanes + r;
      scratch.pos[vec][r] = -1;  // an unused lane sees nothing
      if (row >= rows) continue;
      const int64_t b = w.members[row / G].seq, head = w.kv_head * G + row % G;
      const T* q_row = x.q + (x.cu_q_lens[b] * sh.num_heads + head) * H;
      for (int64_t h = 0; h < H; ++h) q_t[vec * H + h][r] = ToFloat(q_row[h]) * opt.sm_scale;
      scratch.pos[vec][r] = x.kv_lens[b] - 1;
    }
  }
  const int64_t token_stride = K * H;
  for (int64_t t0 = w.begin; t0 < w.end;) {
    const int64_t offset = t0 % P;
    const int64_t n = std::min<int64_t>({kLanes, P - offset, w.end - t0});
    const int64_t base =
        (static_cast<int64_t>(w.pages[t0 / P]) * P + offset) * token_stride + w.kv_head * H;
    LoadTile(x.k + base, token_stride, n, H, scratch.k_tile.data());
    LoadTile(x.v + base, token_stride, n, H, scratch.v_tile.data());
    for (int64_t vec = 0; vec < vecs; ++vec)
      FoldTile<kHeadDim>(H, opt, scratch.k_tile.data(), scratch.v_tile.data(), t0, n,
                         q_t + vec * H, scratch.pos[vec], scratch.m[vec], scratch.l[vec],
                         out_t + vec * H);
    t0 += n;
  }
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t vec = row / kLanes, r = row % kLanes;
    float* p = partials + PartialIndex(w.members[row / G].base, w.kv_head, row % G, w.chunk, G,
                                       w.chunks, H);
    p[0] = scratch.m[vec][r];
    p[1] = scratch.l[vec][r];
    for (int64_t h = 0; h < H; ++h) p[2 + h] = out_t[vec * H + h][r];
  }
}

// The cascade's plan: which decode sequences attend to which shared pages together.
struct Cascade {
  std::vector<CascadeMember> members;  // group by group
  std::vector<int64_t> member_of;      // per sequence: its index in members, or -1
  std::vector<SharedItem> items;       // the first pass (points into members)
  int64_t partial_floats = 0;
};

// Groups the decode sequences (one query token, a GQA group of at most kFewRows heads) by the
// pages their tables begin with: sorted by page row, a group grows while its members' common
// whole pages, all before every member's query, times the members does not shrink; groups of at
// least two members sharing kMinSharedTokens become cascades. None with a sliding window (the
// shared pages might leave it) or a head_dim without a compiled-in size.
template <typename T>
Cascade PlanCascade(const Shape& sh, const Options& opt, const Operands<T>& x) {
  Cascade plan;
  plan.member_of.assign(sh.num_seqs, -1);
  const int64_t G = sh.group(), K = sh.num_kv_heads, H = sh.head_dim, P = sh.page_size;
  if (opt.sliding_window > 0 || G > kFewRows || (H != 64 && H != 128)) return plan;
  auto row = [&](int32_t b) { return x.page_table + b * sh.pages_per_seq; };
  auto whole_pages = [&](int32_t b) { return (x.kv_lens[b] - 1) / P; };  // before the query
  std::vector<int32_t> decodes;
  for (int32_t b = 0; b < sh.num_seqs; ++b)
    if (x.cu_q_lens[b + 1] - x.cu_q_lens[b] == 1 && whole_pages(b) * P >= kMinSharedTokens)
      decodes.push_back(b);
  std::sort(decodes.begin(), decodes.end(), [&](int32_t a, int32_t c) {
    return std::lexicographical_compare(row(a), row(a) + whole_pages(a), row(c),
                                        row(c) + whole_pages(c));
  });
  struct Group {
    size_t begin, end;  // members decodes[begin .. end)
    int64_t shared_pages;
  };
  std::vector<Group> groups;
  for (size_t i = 0, j; i < decodes.size(); i = j) {
    const int32_t* first = row(decodes[i]);
    int64_t shared = whole_pages(decodes[i]);
    for (j = i + 1; j < decodes.size(); ++j) {
      const int64_t most = std::min<int64_t>(shared, whole_pages(decodes[j]));
      const int64_t common = std::mismatch(first, first + most, row(decodes[j])).first - first;
      const int64_t before = static_cast<int64_t>(j - i);
      if (common * P < kMinSharedTokens || common * (before + 1) < shared * before) break;
      shared = common;
    }
    if (j - i >= 2) groups.push_back({i, j, shared});
  }
  // Members and their partial-state offsets; then the first-pass items, which point into members
  // (complete by then): per group, kv head, block of members and chunk.
  for (const Group& g : groups) {
    const int32_t tokens = static_cast<int32_t>(g.shared_pages * P);
    const int32_t chunks = static_cast<int32_t>((tokens + kSharedChunk - 1) / kSharedChunk);
    for (size_t k = g.begin; k < g.end; ++k) {
      plan.member_of[decodes[k]] = static_cast<int64_t>(plan.members.size());
      plan.members.push_back({decodes[k], tokens, chunks, plan.partial_floats});
      plan.partial_floats += K * G * chunks * (H + 2);
    }
  }
  const int64_t most_members = kMaxRows / G;
  for (size_t offset = 0, gi = 0; gi < groups.size(); ++gi) {
    const Group& g = groups[gi];
    const int64_t count = static_cast<int64_t>(g.end - g.begin);
    const int64_t blocks = (count + most_members - 1) / most_members;
    const int64_t per_block = (count + blocks - 1) / blocks;
    const CascadeMember& m = plan.members[offset];
    for (int32_t kh = 0; kh < K; ++kh)
      for (int64_t first = 0; first < count; first += per_block)
        for (int32_t c = 0; c < m.chunks; ++c)
          plan.items.push_back({row(decodes[g.begin]), plan.members.data() + offset + first,
                                static_cast<int32_t>(std::min(per_block, count - first)), kh,
                                static_cast<int32_t>(c * kSharedChunk),
                                static_cast<int32_t>(std::min<int64_t>(
                                    m.shared, (c + 1) * kSharedChunk)),
                                c, m.chunks});
    offset += count;
  }
  return plan;
}

}  // namespace attention
}  // namespace pcjax

#endif  // PCJAX_KERNELS_CSRC_ATTENTION_CASCADE_H_
