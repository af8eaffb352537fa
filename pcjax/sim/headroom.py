"""The class bound: the best token hit rate a policy could reach that sees only some features.

Belady's MIN knows when every block comes back; an online policy knows only the past. The class
bound asks how far a policy could get if it saw, for each block reference, one *class* computed
from the past (how often the block was used, how long ago, the size of the request, ...) and
nothing else about its future. It tells a researcher whether a feature is worth building a policy
on, and how much of the gap to Belady no policy that sees only those features can close.

Model. Each reference of a block at request ``s`` starts an *interval* that ends at the block's
next use ``s + g`` (a hit if the block stayed cached until then; weight: the tokens of the block
at that use) or never (``g = NEVER``). A policy that sees only the class ``c`` of an interval and
its age can only choose how long to hold it: a hold time ``T``, drawn from a distribution that may
depend on ``c`` but not on ``g``. Holding costs ``min(g, T, N - s)`` block-requests (``N``:
requests in the trace) and hits iff ``g <= T``. Relaxing "at most ``C`` blocks at every moment"
to "at most ``C`` blocks on average" makes the best choice a fractional knapsack: per class, the
upper concave hull of (cost, hit tokens) over the hold times ``T`` (mixing two hold times at the
margin), and the hull segments of all classes taken by slope until the budget is spent
(`pcjax.cache.hold_knapsack`, which the ``learned_hold`` policy solves online).

Two refinements keep the bound honest without costing its validity:

* Before the cache first fills (request ``t_fill``, where the trace has seen ``C`` distinct
  blocks) nothing need be evicted. Intervals starting earlier count as hits if they come back at
  all and cost nothing; the budget is ``C * (N - t_fill)`` for the intervals starting later.
  Without this the average-capacity relaxation would spend the idle room of the warm-up later on.
* Holding stops at the end of the trace (``N - s``).

Both only add hits or remove cost, so the result stays an upper bound for such policies. It rests
on one assumption: a policy's hold time for an interval is independent of that interval's future
given its class (true of any policy whose decisions depend on the features and the cache's state,
as long as the state says nothing about this block's return). Each interval is priced alone, so
the bound also ignores that a hit needs the whole prefix cached, and it lets a policy bypass a
request's blocks. The best hold times are chosen in hindsight per class, so the more classes, the
more optimistic it gets (with one interval per class it would know every future). It is no bound
on Belady: the relaxation can beat the per-moment capacity.

Classifiers (`CLASSIFIERS`, all from the past only):

* ``none``: one class; the bound for policies that see only age (LRU lives here).
* ``uses``: how often the block was referenced so far, this reference included (capped at 8).
* ``uses+gap``: ``uses`` and log2 of the requests since the block's previous use.
* ``uses+gap+size``: that and log2 of the request's length in blocks.

`HoldOracle` replays a bound's hold times for real (``policy="hindsight:<classifier>"``): how
much of the bound survives the per-moment capacity and admission.

Host-only numpy; a bound for replay, never an engine policy.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pcjax.cache.hold_knapsack import allocate, holds
from pcjax.cache.policies import EvictionPolicy
from pcjax.sim.trace import Trace

if TYPE_CHECKING:
    from pcjax.cache.base import Node

NEVER = -1  # gap of an interval whose block is not used again


class Intervals(NamedTuple):
    """One entry per block reference of a trace, in trace order (numpy arrays of equal length).

    Attributes:
      start: the request index of the reference.
      gap: requests until the block's next use, or `NEVER`.
      hit_tokens: the block's tokens at its next use (what caching it until then saves).
      uses: references of the block so far, this one included (1: first use).
      prev_gap: requests since the block's previous use (0 for a first use).
      request_blocks: blocks in the referencing request.
      num_requests: requests in the trace (an int).
      total_tokens: prompt tokens in the trace (an int).
      fill: ``fill[i]``: distinct blocks referenced by requests ``0..i``.
    """

    start: np.ndarray
    gap: np.ndarray
    hit_tokens: np.ndarray
    uses: np.ndarray
    prev_gap: np.ndarray
    request_blocks: np.ndarray
    num_requests: int
    total_tokens: int
    fill: np.ndarray


def intervals(trace: Trace) -> Intervals:
    """Every reference interval of ``trace`` with the features the classifiers read."""
    bt, requests = trace.block_tokens, trace.requests
    columns: dict[str, list[int]] = {k: [] for k in ("start", "tokens", "uses", "prev", "blocks")}
    last: dict[int, int] = {}  # block -> index of its latest reference in the columns
    gap: list[int] = []
    hit_tokens: list[int] = []
    fill: list[int] = []
    count: dict[int, int] = {}
    for i, r in enumerate(requests):
        n = len(r.block_ids)
        for k, b in enumerate(r.block_ids):
            tokens = min(bt, max(r.input_length - k * bt, 0))
            j = last.get(b)
            if j is not None:  # closes the block's previous interval: it comes back here
                gap[j] = i - columns["start"][j]
                hit_tokens[j] = tokens
            last[b] = len(gap)
            count[b] = count.get(b, 0) + 1
            columns["start"].append(i)
            columns["uses"].append(count[b])
            columns["prev"].append(i - columns["start"][j] if j is not None else 0)
            columns["blocks"].append(n)
            gap.append(NEVER)
            hit_tokens.append(0)
        fill.append(len(count))
    return Intervals(
        np.asarray(columns["start"], np.int64),
        np.asarray(gap, np.int64),
        np.asarray(hit_tokens, np.int64),
        np.asarray(columns["uses"], np.int64),
        np.asarray(columns["prev"], np.int64),
        np.asarray(columns["blocks"], np.int64),
        len(requests),
        sum(r.input_length for r in requests),
        np.asarray(fill, np.int64),
    )


def _log2_bucket(x: np.ndarray) -> np.ndarray:
    """0 for x <= 0, else 1 + floor(log2(x))."""
    return np.where(x > 0, 1 + np.floor(np.log2(np.maximum(x, 1))), 0).astype(np.int64)


def _uses(iv: Intervals) -> np.ndarray:
    return np.minimum(iv.uses, 8)


def _uses_gap(iv: Intervals) -> np.ndarray:
    return _uses(iv) * 64 + _log2_bucket(iv.prev_gap)


def _uses_gap_size(iv: Intervals) -> np.ndarray:
    return _uses_gap(iv) * 64 + _log2_bucket(iv.request_blocks)


CLASSIFIERS: dict[str, Callable[[Intervals], np.ndarray]] = {
    "none": lambda iv: np.zeros_like(iv.start),
    "uses": _uses,
    "uses+gap": _uses_gap,
    "uses+gap+size": _uses_gap_size,
}


class ClassBound(NamedTuple):
    """The class bound of one (trace, classifier, capacity).

    ``hit_blocks`` counts the block references that hit under the same hold times (the bound
    maximizes tokens, not blocks). ``holds`` maps a class to its best hold-time mix ``(T_low,
    T_high, share_high)``: hold a ``share_high`` of the class's intervals for ``T_high`` requests
    and the rest for ``T_low``; classes it does not name are not held at all.
    """

    token_hit_rate: float
    block_hit_rate: float
    hit_tokens: float
    hit_blocks: float
    fill_request: int
    holds: dict[int, tuple[int, int, float]]


def class_bound(iv: Intervals, classes: np.ndarray, capacity_blocks: int) -> ClassBound:
    """The class bound (module docstring) for the per-interval ``classes`` at a capacity."""
    if len(classes) != len(iv.start):
        raise ValueError(f"{len(classes)} classes for {len(iv.start)} intervals")
    t_fill = int(np.searchsorted(iv.fill, capacity_blocks))  # first request with C blocks seen
    early_back = (iv.start < t_fill) & (iv.gap != NEVER)
    hits, blocks = float(iv.hit_tokens[early_back].sum()), float(early_back.sum())
    late = iv.start >= t_fill
    curves = {}
    for c in np.unique(classes[late]).tolist():
        mine = late & (classes == c)
        back, never = mine & (iv.gap != NEVER), mine & (iv.gap == NEVER)
        horizons = iv.num_requests - iv.start[never]
        curves[c] = hold_points(iv.gap[back], iv.hit_tokens[back], horizons)
    steps = allocate(curves, float(capacity_blocks) * (iv.num_requests - t_fill))
    for step in steps:
        hits += step.share * (step.b[1] - step.a[1])
        blocks += step.share * (step.b[2] - step.a[2])
    return ClassBound(
        hits / max(iv.total_tokens, 1),
        blocks / max(len(iv.start), 1),
        hits,
        blocks,
        t_fill,
        holds(steps),
    )


def hold_points(gaps: np.ndarray, tokens: np.ndarray, horizons: np.ndarray) -> list[tuple]:
    """A class's hold points ``(cost, hit tokens, hit blocks, T)`` for T in {0} and its return
    gaps: the returns have ``gaps`` and ``tokens``; the intervals that never return are held at
    most their ``horizons`` (the requests left in the trace)."""
    order = np.argsort(gaps, kind="stable")
    gaps, tokens = gaps[order], tokens[order]
    ts = np.concatenate([[0], gaps])  # T = the i-th smallest gap catches the first i returns
    caught = np.arange(len(ts))
    hit = np.concatenate([[0], np.cumsum(tokens)]).astype(np.float64)
    cost = np.concatenate([[0], np.cumsum(gaps)]) + (len(gaps) - caught) * ts
    horizons = np.sort(horizons)
    below = np.searchsorted(horizons, ts, side="right")  # never-returners that end before T
    cost = cost + np.concatenate([[0], np.cumsum(horizons)])[below] + (len(horizons) - below) * ts
    return list(zip(cost.tolist(), hit.tolist(), caught.tolist(), ts.tolist(), strict=True))


class HindsightHoldPolicy(EvictionPolicy):
    """Holds each block for the hold time of its reference's class, as a `HoldOracle` says.

    Replay-only (``page_size=1``: a node's key units are block ids). The clock is the request
    index: a leaf used at request ``i`` gets the deadline ``i + T`` (key ``(1, i + T)``) and a
    leaf with nothing to hold for goes first (``(0, i)``), as in ``learned_hold``.
    """

    name = "hindsight"

    def __init__(self, holds: dict[int, tuple[float, float, float]]):
        self.holds = holds
        self.request = 0
        self.classes: dict[int, int] = {}  # block id -> class of its reference in this request

    def key(self, node: "Node") -> tuple[int, float]:
        return node.policy_data

    def on_insert(self, node: "Node", clock: int) -> None:
        self.on_access(node, clock)

    def on_access(self, node: "Node", clock: int) -> None:
        block = node.key[0]
        low, high, share = self.holds.get(self.classes.get(block, -1), (0, 0, 0.0))
        hold = high if (block * 2654435761 % 2**32) / 2**32 < share else low
        node.policy_data = (1, self.request + hold) if hold > 0 else (0, self.request)

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        prefix.policy_data = suffix.policy_data


class HoldOracle:
    """The hold times of a class bound, taken in hindsight and replayed for real.

    The bound prices each interval alone against an average capacity; the replay holds the same
    classes for the same times against the cache's room at every moment, evicting by earliest
    deadline, with every missed block admitted as an online policy must. Its hit rate is what
    the bound's information buys in practice, the best hold times being known; `replay` makes
    one for ``policy="hindsight:<classifier>"``, or takes one made here.
    """

    def __init__(
        self, trace: Trace, classifier: str, capacity_blocks: int, iv: Intervals | None = None
    ):
        """``iv``: ``intervals(trace)``, if the caller has it already."""
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; known: {sorted(CLASSIFIERS)}")
        iv = intervals(trace) if iv is None else iv
        self.classes = CLASSIFIERS[classifier](iv)
        self.bound = class_bound(iv, self.classes, capacity_blocks)
        self.requests = trace.requests
        self.offsets = np.searchsorted(iv.start, np.arange(len(trace.requests)))
        self.policy = HindsightHoldPolicy(self.bound.holds)
        self.policy.name = f"hindsight:{classifier}"

    def advance(self, i: int) -> None:
        """Request ``i`` is next: the policy learns its blocks' classes."""
        ids = self.requests[i].block_ids
        start = int(self.offsets[i])
        self.policy.request = i
        self.policy.classes = dict(
            zip(ids, self.classes[start : start + len(ids)].tolist(), strict=True)
        )

    def admit_count(self, tree, ids: tuple, d: int) -> int:
        """Every missed block, as an online policy admits them."""
        del tree
        return len(ids) - d
