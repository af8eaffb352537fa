"""``learned_hold`` (ours): a hold time per use-count class, learned online by a knapsack.

The class bound (`pcjax.sim.headroom`) shows what a policy that sees how often a page was used
can do at best: hold each use-count class for its own time, chosen so that the cache's room buys
the most hits (a fractional knapsack over the classes' hit-vs-room curves; one class on the
margin held in part). On the Mooncake conversation trace at 3M tokens those hold times, taken in
hindsight, give a fresh page almost nothing (a 10% share for about one LRU lifetime), a page
used twice about 600 requests and one used five times or more about 1500-2000. This policy learns
the curves as it runs and solves the same knapsack (`pcjax.cache.hold_knapsack`):

* **History.** Every page it has cached is remembered by a hash of its whole prefix, with the
  clock of its latest use and its use count: up to ``history_scale`` times the most pages ever
  cached, the longest unused forgotten first. A use is an insert or a hit.
* **Curves.** Each use opens an *interval* of class ``min(uses, max_uses)``; the page's next use
  closes it and adds its age to that class's return histogram (``BINS_PER_OCTAVE`` log-spaced
  bins of clock ticks). Holding a class for ``T`` (a bin edge) then catches the returns up to
  ``T`` and costs their ages plus ``T`` for every other interval, per tick since the start.
* **Refit.** Once the cache has evicted ``warmup`` times its size, and after every further
  ``refit_share`` of it, the knapsack spends the cache's pages on those curves: per class a hold
  time ``T``. The one class on the margin is held for a time in between its two hull points or,
  if the shorter one is 0, a ``share`` of its leaves is held (an admission share, as in bimodal
  insertion). Before the first refit the policy is LRU.
* **Keys.** A leaf gets the deadline ``last_access + T`` of its class (the share on the margin
  chosen by a hash of its first page); the earliest deadline goes first, and leaves with nothing
  to hold for (``T = 0``) before any deadline, oldest first. As in ``deadline``, a branch a
  request diverged from before it was used again goes first too (in the Mooncake traces, the
  previous turn's rewritten last block).

The class of a leaf is that of its first page (the most used one: pages are cut where requests
diverge). Statistics are cumulative, so a long run adapts ever more slowly to a change of traffic.

Evidence (token hit rate, sequential replay, ``experiments/compare_eviction.py``): conversation
1M / 3M / 10M tokens 0.0899 / 0.1722 / 0.3023 (LRU 0.0543 / 0.1387 / 0.2908; ``deadline`` 0.0868 /
0.1710 / 0.3047); synthetic 0.1485 / 0.3236 / 0.5789 (LRU 0.1451 / 0.3151 / 0.5770), with no
constant tuned to either trace. The class bound's own hold times, known in hindsight and
replayed (``hindsight:uses``), reach 0.1770 on conversation at 3M: about all that seeing the use
count buys in practice, against a relaxed bound of 0.1995 (``bound:uses``).

``policy_data``: ``[key, superseded, page_ids, cls, hits]``, ``hits`` being ``node.hits`` at the
node's latest recorded use (a hit is a use; an insert reaching the node is not). With a host
tier, a host-only node has no page ids; a hit on it is recorded when its pages come back.
"""

import math
from collections import OrderedDict, deque
from itertools import groupby, repeat
from typing import TYPE_CHECKING

from pcjax.cache import hold_knapsack
from pcjax.cache.ghost import prefix_page_ids, share_point
from pcjax.cache.policies import EvictionPolicy

if TYPE_CHECKING:
    from pcjax.cache.base import Node

BINS_PER_OCTAVE = 4
NUM_BINS = 30 * BINS_PER_OCTAVE  # return ages up to 2**30 ticks
BIN_EDGES = [2 ** ((i + 1) / BINS_PER_OCTAVE) for i in range(NUM_BINS)]  # upper edge of bin i


def _bin_of(age: int) -> int:
    return min(NUM_BINS - 1, int(BINS_PER_OCTAVE * math.log2(max(age, 1))))


_SMALL_AGE_BINS = [_bin_of(age) for age in range(1 << 16)]  # the common ages, looked up


def _bin(age: int) -> int:
    """The bin of a return age (in clock ticks)."""
    return _SMALL_AGE_BINS[age] if 0 <= age < len(_SMALL_AGE_BINS) else _bin_of(age)


def _trim_oldest(entries: OrderedDict, limit: float) -> None:
    """Drops the oldest entries of ``entries`` until at most ``limit`` remain, in a loop that
    stays in C (the bounded history)."""
    excess = len(entries) - math.floor(limit)
    if excess > 0:
        deque(map(entries.popitem, repeat(False, excess)), maxlen=0)


class _ClassStats:
    """Intervals opened and the ages of those closed, for one use-count class."""

    def __init__(self):
        self.opened = 0
        self.returns = [0] * NUM_BINS
        self.return_ages = [0] * NUM_BINS

    def hold_points(self, elapsed: int) -> list[tuple[float, float, float]]:
        """``(cost, hits, T)`` per tick of ``elapsed``, holding for T = 0 and each bin edge."""
        points = [(0.0, 0.0, 0.0)]
        caught = ages = 0
        for count, age_sum, edge in zip(self.returns, self.return_ages, BIN_EDGES, strict=True):
            if not count:
                continue
            caught += count
            ages += age_sum
            cost = ages + (self.opened - caught) * edge
            points.append((cost / elapsed, caught / elapsed, edge))
        return points


class LearnedHoldPolicy(EvictionPolicy):
    """Learned per-class hold times (see the module docstring)."""

    name = "learned_hold"

    def __init__(
        self,
        max_uses: int = 5,
        history_scale: float = 32.0,
        warmup: float = 2.0,
        refit_share: float = 0.25,
    ):
        self.max_uses = max_uses
        self.history_scale = history_scale
        self.warmup = warmup
        self.refit_share = refit_share
        self.history: OrderedDict[int, list[int]] = OrderedDict()  # page -> [clock, uses]
        self.stats = {c: _ClassStats() for c in range(1, max_uses + 1)}
        self.holds: dict[int, hold_knapsack.HoldMix] | None = None  # None: not fitted yet
        self.cached = 0  # pages cached now
        self.most_cached = 1
        self.evicted = 0
        self.start: int | None = None  # clock of the first insert
        self.next_refit: float | None = None

    def key(self, node: "Node") -> tuple[int, float]:
        return node.policy_data[0]

    def _use(self, page_ids: list[int], clock: int, known_uses: int = 0) -> int:
        """Records a use of each page; returns the class of the first page's new interval. A
        page the history lacks starts with ``known_uses`` earlier uses (a node's hits when a
        tree that ran under another policy is handed over; 0 for a new node)."""
        history, cap, stats = self.history, self.max_uses, self.stats
        # Pages used together share their history (a run of equal entries): each run is one
        # interval closed and opened n times, and its pages move to the history's young end
        # together, the last run first so that the first page ends youngest (trimmed last).
        runs = [(entry, len(list(run))) for entry, run in groupby(map(history.get, page_ids))]
        end, uses = len(page_ids), 1
        for entry, n in reversed(runs):
            pages, end = page_ids[end - n : end], end - n
            if entry is None:
                uses = known_uses + 1
            elif entry[0] == clock:  # recorded already: an adopted history (`adopt`)
                uses = entry[1]
                continue
            else:
                age, uses = clock - entry[0], entry[1] + 1
                closed = stats[entry[1] if entry[1] < cap else cap]
                b = _bin(age)
                closed.returns[b] += n
                closed.return_ages[b] += age * n
                deque(map(history.pop, pages), maxlen=0)
            history.update(zip(reversed(pages), repeat([clock, uses])))
            stats[uses if uses < cap else cap].opened += n
        _trim_oldest(history, self.history_scale * self.most_cached)
        return uses if uses < cap else cap

    def adopt(self, learned: "LearnedHoldPolicy", scale: float) -> None:
        """Takes over the history (prefix hashes: the sampled pages keep their use counts), the
        curves with their counts over ``scale`` (a cache sampled at ``scale`` of the lookups with
        ``scale`` of the room: on the same clock, its hold times fit this one), the fitted holds
        and the start clock. A use the live tree's nodes then bring that the history holds at
        the same clock is not counted twice (`_use`)."""
        for page, entry in learned.history.items():
            self.history[page] = list(entry)
        for cls, stats in learned.stats.items():
            mine = self.stats[cls]
            mine.opened = stats.opened / scale
            mine.returns = [n / scale for n in stats.returns]
            mine.return_ages = [a / scale for a in stats.return_ages]
        self.most_cached = max(1, round(learned.most_cached / scale))
        self.start = learned.start
        if learned.holds is not None:
            self.holds = dict(learned.holds)
            self.next_refit = self.refit_share * self.most_cached

    def _key(self, data: list, clock: int) -> tuple[int, float]:
        _, superseded, page_ids, cls, _ = data
        if superseded and cls == 1:
            return (0, clock)
        if self.holds is None:
            return (1, clock)  # LRU until the first refit
        low, high, share = self.holds.get(cls, (0.0, 0.0, 0.0))
        hold = high if page_ids and share_point(page_ids[0]) < share else low
        return (1, clock + hold) if hold > 0 else (0, clock)

    def on_insert(self, node: "Node", clock: int) -> None:
        if self.start is None:
            self.start = clock
        page_ids = prefix_page_ids(node)
        self.cached += len(page_ids)
        self.most_cached = max(self.most_cached, self.cached)
        back = node.policy_data  # not None: back from the host tier, with its state
        if back is None:
            data = [None, False, page_ids, self._use(page_ids, clock, node.hits), node.hits]
        else:  # a hit while it was host-only is recorded now that its pages are known again
            data = [None, back[1], page_ids, back[3], back[4]]
            if node.hits > back[4]:
                data[3], data[4] = self._use(page_ids, clock), node.hits
        data[0] = self._key(data, clock)
        node.policy_data = data

    def on_access(self, node: "Node", clock: int) -> None:
        data = node.policy_data
        if node.hits > data[4] and data[2]:  # a hit (not an insert) on a node with device pages
            data[4] = node.hits
            data[3] = self._use(data[2], clock)
        data[0] = self._key(data, clock)

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        data = suffix.policy_data
        cut = prefix.num_pages
        prefix.policy_data = [data[0], False, data[2][:cut], data[3], data[4]]
        data[1], data[2] = True, data[2][cut:]
        data[0] = self._key(data, suffix.last_access)

    def on_evict(self, node: "Node", num_pages: int, clock: int) -> None:
        page_ids = node.policy_data[2]
        del page_ids[len(page_ids) - num_pages :]
        self.cached -= num_pages
        self.evicted += num_pages
        if self.next_refit is None:
            self.next_refit = self.warmup * self.most_cached
        if self.evicted >= self.next_refit:
            self.next_refit = self.evicted + self.refit_share * self.most_cached
            self.refit(clock)

    def refit(self, clock: int) -> None:
        """Solves the knapsack of the classes' current curves for the cache's size."""
        elapsed = max(clock - (self.start or 0), 1)
        curves = {c: s.hold_points(elapsed) for c, s in self.stats.items() if s.opened}
        steps = hold_knapsack.allocate(curves, float(self.most_cached))
        self.holds = {c: _one_hold(mix) for c, mix in hold_knapsack.holds(steps).items()}


def _one_hold(mix: hold_knapsack.HoldMix) -> hold_knapsack.HoldMix:
    """A class on the margin held for ``T_low`` or ``T_high`` instead holds all its leaves for
    the time in between (about the same room, and no leaf is cut short); only a class whose lower
    hold is 0 keeps its ``share`` (an admission share, as bimodal insertion)."""
    low, high, share = mix
    if low == 0 or share == 1.0:
        return mix
    between = low + share * (high - low)
    return (between, between, 1.0)
