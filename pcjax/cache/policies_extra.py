"""More eviction policies: SLRU, S3-FIFO, GDSF and our own ``deadline``, as static sort keys.

The tree keeps its evictable leaves in a lazy heap and may only re-key a node when it re-pushes it
(after `on_insert`, `on_access`, `on_split` and a tail trim; see `pcjax.cache.policies`). Classic
queue-based policies move entries between queues at eviction time (demotion, promotion, CLOCK
reinsertion), which a static key cannot do. Each policy here therefore encodes its queues as an
*offset* in clock ticks: an entry of the favoured queue gets ``last_access + window``, and the
``window`` is steered on every eviction so the queue holds its target share of the cached pages
(one tick per page evicted, kept within ``[-clock, clock]``). A window change only affects keys
pushed after it, so the contract holds: every key is computed at a hook and stored in
``node.policy_data``.

* **SLRU** -- probation (never hit) and protected (hit at least once) segments; protected
  entries get ``window`` extra ticks, steered so the protected segment holds ``protected_share``
  (80%) of the pages. An unreachable share makes it strict SLRU (protected evicted last).
* **S3-FIFO** -- a small FIFO queue (key: insertion time) and a main queue (key: ``last_access +
  window``, LRU standing in for CLOCK), steered so the small queue holds ``small_share`` (10%).
  An entry hit while small moves to main; pages evicted from the small queue leave a ghost (a
  hash of the page's whole prefix; FIFO, as many as the cache ever held pages) and a new leaf
  whose first page is a ghost enters main directly.
* **GDSF** (Greedy-Dual-Size-Frequency) -- key ``H = L + F * C / S`` with ``F = hits + 1`` and
  the inflation ``L`` raised to the key of every victim (aging). Cost model: recomputing one key
  unit at depth ``x`` (units before it) costs ``1 + x * tokens_per_unit / ctx_tokens`` (a linear
  part plus attention over the ``x`` earlier tokens, equal at ``ctx_tokens``, default 8192), so
  ``C / S`` is the node's mean cost per unit. A trimmed leaf keeps its key.
* **deadline** (ours) -- LRU whose proven leaves (hit, or back soon after eviction) get one
  extra lifetime and whose diverged-from, unproven branches go first; when the cache thrashes
  it keeps only a steered share of the fresh leaves (the rest go first); see `DeadlinePolicy`.

Host-only: plain Python, no jax.
"""

from typing import TYPE_CHECKING

from pcjax.cache.ghost import Ghost, prefix_page_ids, share_point
from pcjax.cache.policies import EvictionPolicy

if TYPE_CHECKING:
    from pcjax.cache.base import Node

PROBATION, PROTECTED = 0, 1
SMALL, MAIN = 0, 1


class _Window:
    """A clock-tick offset steered so that one segment holds ``target`` of the cached pages."""

    def __init__(self, target: float, *, grow_when_over: bool, allow_negative: bool):
        self.target = target
        self.value = 0
        self._grow_when_over = grow_when_over
        self._allow_negative = allow_negative

    def steer(self, pages: list[int], segment: int, step: int, clock: int) -> None:
        total = pages[0] + pages[1]
        over = total > 0 and pages[segment] > self.target * total
        self.value += step if over == self._grow_when_over else -step
        low = -clock if self._allow_negative else 0
        self.value = max(low, min(self.value, clock))


class SLRUPolicy(EvictionPolicy):
    """Segmented LRU with a steered protection window (see the module docstring).

    ``policy_data``: ``[segment, key]``.
    """

    name = "slru"

    def __init__(self, protected_share: float = 0.8):
        self.window = _Window(protected_share, grow_when_over=False, allow_negative=False)
        self.pages = [0, 0]  # cached pages per segment

    def key(self, node: "Node") -> int:
        return node.policy_data[1]

    def on_insert(self, node: "Node", clock: int) -> None:
        node.policy_data = [PROBATION, clock]
        self.pages[PROBATION] += node.num_pages

    def on_access(self, node: "Node", clock: int) -> None:
        data = node.policy_data
        if node.hits and data[0] == PROBATION:
            data[0] = PROTECTED
            self.pages[PROBATION] -= node.num_pages
            self.pages[PROTECTED] += node.num_pages
        data[1] = clock + (self.window.value if data[0] == PROTECTED else 0)

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        prefix.policy_data = list(suffix.policy_data)

    def on_evict(self, node: "Node", num_pages: int, clock: int) -> None:
        self.pages[node.policy_data[0]] -= num_pages
        self.window.steer(self.pages, PROTECTED, num_pages, clock)


class S3FIFOPolicy(EvictionPolicy):
    """S3-FIFO with a steered main-queue window and a ghost of small-queue victims.

    ``policy_data``: ``[queue, key, page_ids]`` (``page_ids``: a hash of each page's prefix).
    """

    name = "s3fifo"

    def __init__(self, small_share: float = 0.1):
        self.window = _Window(small_share, grow_when_over=True, allow_negative=True)
        self.pages = [0, 0]  # cached pages per queue
        self.ghost = Ghost()

    def key(self, node: "Node") -> int:
        return node.policy_data[1]

    def on_insert(self, node: "Node", clock: int) -> None:
        ids = prefix_page_ids(node)
        queue = MAIN if self.ghost.cached(ids) else SMALL
        node.policy_data = [queue, self._key(node, queue, clock), ids]
        self.pages[queue] += node.num_pages

    def on_access(self, node: "Node", clock: int) -> None:
        data = node.policy_data
        if node.hits and data[0] == SMALL:
            data[0] = MAIN
            self.pages[SMALL] -= node.num_pages
            self.pages[MAIN] += node.num_pages
        data[1] = self._key(node, data[0], clock)

    def _key(self, node: "Node", queue: int, clock: int) -> int:
        return node.created if queue == SMALL else clock + self.window.value

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        queue, key, ids = suffix.policy_data
        cut = prefix.num_pages
        prefix.policy_data = [queue, key, ids[:cut]]
        suffix.policy_data[2] = ids[cut:]

    def on_evict(self, node: "Node", num_pages: int, clock: int) -> None:
        queue, _, ids = node.policy_data
        self.pages[queue] -= num_pages
        self.ghost.evicted(ids[len(ids) - num_pages :], remember=queue == SMALL)
        del ids[len(ids) - num_pages :]
        self.window.steer(self.pages, SMALL, num_pages, clock)


class GDSFPolicy(EvictionPolicy):
    """Greedy-Dual-Size-Frequency with a depth-aware recompute cost (see the module docstring).

    ``policy_data``: ``[start, H]``, ``start`` being the key units before the node.
    """

    name = "gdsf"
    token_aware = True

    def __init__(self, tokens_per_unit: int = 1, ctx_tokens: int = 8192):
        self.scale = tokens_per_unit / ctx_tokens  # cost slope per unit of depth
        self.inflation = 0.0  # L

    def key(self, node: "Node") -> float:
        return node.policy_data[1]

    def _h(self, node: "Node", start: int) -> float:
        mean_cost = 1.0 + (start + len(node.key) / 2) * self.scale
        return self.inflation + (node.hits + 1) * mean_cost

    def on_insert(self, node: "Node", clock: int) -> None:
        parent = node.parent.policy_data if node.parent is not None else None
        start = parent[0] + len(node.parent.key) if parent else 0
        node.policy_data = [start, self._h(node, start)]

    def on_access(self, node: "Node", clock: int) -> None:
        node.policy_data[1] = self._h(node, node.policy_data[0])

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        start = suffix.policy_data[0]
        prefix.policy_data = [start, self._h(prefix, start)]
        suffix.policy_data = [start + len(prefix.key), self._h(suffix, start + len(prefix.key))]

    def on_evict(self, node: "Node", num_pages: int, clock: int) -> None:
        self.inflation = max(self.inflation, node.policy_data[1])


class DeadlinePolicy(EvictionPolicy):
    """Our own: every leaf gets a deadline -- its last access, plus one *lag* if it is proven --
    and the earliest deadline goes first. Proven: hit at least once, or its first page came
    back soon after we evicted it. A branch a request diverged from before it was ever proven
    goes first of all, and so does a fresh leaf the policy chose not to *keep* (thrash control).

    The idea. Replaying the Mooncake traces against Belady shows where LRU loses: it gives every
    block the same lifetime, while a block that was reused already is 1.5-3x as likely to be
    reused again as a fresh one (conversation trace: 28% of fresh blocks are ever reused, 42% of
    blocks hit once, 50-75% of blocks hit more often). So a proven prefix earns one extra
    lifetime, measured as the *lag*: how far the eviction frontier trails the clock (an EMA of
    ``clock - deadline`` over the victims). In lags the bonus scales with the cache size and the
    arrival rate by itself, so its one constant (one lifetime) carries across traces and
    capacities without retuning. A proof need not be a hit: as in S3-FIFO, the policy remembers
    hashes of recently evicted pages (those evicted within the last ``ghost_scale`` = two times
    the cache's size), and a new leaf whose first page is among them -- a conversation that came
    back just too late -- starts proven. Next,
    the tree sees a request *diverge* from a cached leaf (a match ending inside it splits it):
    the part left behind, if unproven, goes first -- in the Mooncake traces it is the previous
    turn's partial last block, which the next turn rewrote (1% of those are ever reused).
    Frequency beyond the first proof is ignored on purpose: crediting every hit (``log2(1 +
    hits)`` lags) gained 3 more points at 3M on the conversation trace but kept finished agent
    sessions and thought trees too long (-2.5% vs LRU on those generators).

    Thrash control. When the cache is small next to the reuse distances, most fresh leaves are
    evicted just before their conversation comes back (conversation trace, first returns: few
    within 100 requests, a peak at 200-300, a long tail; an LRU lifetime at 3M tokens is about
    400 requests), and giving every fresh leaf the same short life catches few returns. Keeping
    only a share ``keep`` of the fresh leaves (chosen by a hash of their first page) and letting
    the others go first gives the kept ones a life long enough to catch their returns, as
    bimodal insertion (BIP) does in CPU caches; a shed leaf that comes back is proven by the
    ghost and kept from then on. ``keep`` is steered by what becomes of the kept fresh leaves:
    a first hit while cached raises it by ``keep_step * miss_target``, a return after eviction
    (a second ghost, of kept fresh pages only) lowers it by ``keep_step * (1 - miss_target)``,
    so it settles where about ``miss_target`` of their returns come too late, within
    ``[min_keep, 1]``. Where the cache catches most returns (large caches, agents, chat), it
    stays at 1 and the policy is the plain deadline one. Which fresh leaves return is hardly
    predictable online: per request, turn number, prompt and increment length and the gap since
    the previous turn move the return chance only between 0.2 and 0.55 (block-weighted; the
    blocks are mostly in long first turns at 0.23), and shedding the largest leaves did no better
    than shedding by hash; an online-learned per-class bonus (turn x size, from hits and ghost
    returns) gained nothing.

    Evidence (token hit rate, ``experiments/compare_eviction.py``; the notebook plots it), at 1M
    / 3M / 10M tokens: conversation 0.0868 / 0.1710 / 0.3047 (LRU 0.0543 / 0.1387 / 0.2908;
    47.5% of Belady at 3M, LRU 38.5%), synthetic 0.1400 / 0.3324 / 0.5940 (LRU 0.1451 / 0.3151
    / 0.5770); on the generators at most 0.1 point below LRU (agent at 500K tokens), up to 4
    points above. The ghost's window (pages evicted since, rather than ghosts left, which cost
    per-page bookkeeping: 2.4x LRU's replay time, now 1.7x) cost 0.25 points at 3M on
    conversation (0.1735). With that earlier ghost: 41.7% of Belady without thrash control
    (synthetic 0.1469 / 0.3232 / 0.5932); the doubled ghost mattered only with thrash control
    (it proves more shed leaves that come back; 1x: 0.1653 at 3M on conversation, alone:
    0.1483). A lower ``miss_target`` (0.45) gains 0.2 points on the conversation trace at 3M
    and loses 0.4 on the synthetic one.
    Offline-tuned per-class offsets (hits x depth x increment size) reached about 42%, and LRU
    with a perfect dead-block oracle (``oracle_lru``) reaches 75%: the rest of the gap to Belady
    is knowing *which* fresh blocks will return, which the tree cannot see. The class bounds
    (`pcjax.sim.headroom`) put a number on it: at 3M tokens on the conversation trace a policy
    that sees only a block's use count and age can reach at most about 55% of Belady, 58% if it
    also sees the gap since the block's last use.

    ``policy_data``: ``[key, superseded, page_ids, proven, shed]``, the key ``(0, last_access)``
    for an unproven diverged-from branch or shed leaf and ``(1, deadline)`` otherwise; ``proven``
    is set by a ghost return or the first hit. Keys are fixed at the push hooks and the lag only
    moves in `on_evict`, so the lazy-heap contract holds; ``keep`` only decides at `on_insert`.
    """

    name = "deadline"

    def __init__(
        self,
        proven_lifetimes: float = 1.0,
        lag_ema: float = 0.01,
        miss_target: float = 0.5,
        keep_step: float = 0.014,
        min_keep: float = 0.2,
        ghost_scale: float = 2.0,
    ):
        self.bonus = proven_lifetimes
        self.lag_ema = lag_ema
        self.lag = 0.0  # clock ticks between a victim's deadline and its eviction
        self.frontier = float("-inf")  # the largest victim deadline so far
        self.ghost = Ghost(ghost_scale)
        self.miss_target = miss_target
        self.keep_step = keep_step
        self.min_keep = min_keep
        self.keep = 1.0  # share of fresh leaves kept live; the others go first
        self.kept_ghost = Ghost()  # pages of kept fresh leaves evicted before any proof

    def key(self, node: "Node") -> tuple[int, float]:
        return node.policy_data[0]

    def _deadline(self, node: "Node", data: list, clock: int) -> tuple[int, float]:
        proven = node.hits > 0 or data[3]
        if (data[1] or data[4]) and not proven:
            return (0, clock)  # before every live leaf
        return (1, clock + self.lag * self.bonus if proven else clock)

    def _steer(self, caught: bool) -> None:
        """A kept fresh leaf's first return was caught (a hit) or came too late (a ghost)."""
        self.keep += self.keep_step * (self.miss_target if caught else self.miss_target - 1)
        self.keep = max(self.min_keep, min(self.keep, 1.0))

    def adopt(self, learned: "DeadlinePolicy", scale: float) -> None:
        """Takes over the lag and frontier (clock ticks: on the same clock, a cache sampled at
        ``scale`` of the lookups with ``scale`` of the room evicts as late) and the kept share;
        the ghosts start empty (they fill within a cache's worth of evictions)."""
        del scale
        self.lag, self.frontier, self.keep = learned.lag, learned.frontier, learned.keep

    def on_insert(self, node: "Node", clock: int) -> None:
        ids = prefix_page_ids(node)
        if self.kept_ghost.cached(ids):
            self._steer(caught=False)
        proven = int(self.ghost.cached(ids))
        shed = not proven and share_point(ids[0]) >= self.keep
        data = [None, False, ids, proven, shed]
        data[0] = self._deadline(node, data, clock)
        node.policy_data = data

    def on_access(self, node: "Node", clock: int) -> None:
        data = node.policy_data
        if node.hits and not data[3]:
            data[3] = 1
            if not (data[1] or data[4]):
                self._steer(caught=True)
        data[0] = self._deadline(node, data, clock)

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        data = suffix.policy_data
        cut = prefix.num_pages
        prefix.policy_data = [data[0], False, data[2][:cut], data[3], data[4]]
        data[1], data[2] = True, data[2][cut:]
        data[0] = self._deadline(suffix, data, suffix.last_access)

    def on_evict(self, node: "Node", num_pages: int, clock: int) -> None:
        (live, deadline), superseded, ids, proven, shed = node.policy_data
        cut = len(ids) - num_pages
        gone = ids[cut:]
        del ids[cut:]
        self.ghost.evicted(gone)
        self.kept_ghost.evicted(gone, remember=not (node.hits or proven or superseded or shed))
        if live:
            self.frontier = max(self.frontier, deadline)
            self.lag += self.lag_ema * (max(0.0, clock - self.frontier) - self.lag)


POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (SLRUPolicy, S3FIFOPolicy, GDSFPolicy, DeadlinePolicy)
}
