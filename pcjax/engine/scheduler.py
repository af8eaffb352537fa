"""Continuous batching (host only): which requests compute how many tokens in the next step.

Each step has a budget of `max_num_batched_tokens`. Running requests go first, oldest first: a
decoding request takes one token, a request still in prefill takes the next chunk of its prompt
(chunked prefill). Waiting requests are then admitted while sequence slots and budget last: the
prefix cache is matched first and only the missing pages are allocated.

When pages run out, the newest running request is preempted: its own pages are freed (its computed
full pages are first handed to the prefix cache, where they stay unless evicted) and it waits at the
front of the queue to be resumed by recompute, which reproduces its output exactly.

Order of the waiting queue (``policy``): "fcfs" admits in arrival order; "lpm" (longest prefix
match, SGLang's cache-aware policy) first admits the requests with the longest cached prefix, so
hits are used while their pages are still cached. Under "lpm" a request that has waited
``aging_steps`` steps goes before every younger one (oldest first), so no request waits without
limit behind a stream of hits. A request's match counts in the cache (clock, hit counts) once
per admission, not on every try while it waits (`KVManager.admit`).

A waiting request whose next page is the same as that of a request whose prompt is being computed
right now (and so is not cached yet) is deferred until that prompt is cached: a batch of requests
with one shared prefix then computes the prefix once instead of once per request.
"""

import collections
import dataclasses

from pcjax.config import SCHEDULING_POLICIES, EngineConfig
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.request import Request, Status


@dataclasses.dataclass(frozen=True)
class ScheduledStep:
    """One step's work: ``entries`` are (request, number of tokens to compute), in batch order."""

    entries: tuple[tuple[Request, int], ...]
    num_preempted: int

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.entries)


class Scheduler:
    """Keeps the waiting queue and running list; see the module docstring for the policy.

    Args:
      kv: the `KVManager` that gives requests pages.
      max_num_seqs: most requests running at once.
      max_num_batched_tokens: most tokens computed in one step.
      policy: order of the waiting queue, "fcfs" or "lpm" (`SCHEDULING_POLICIES`).
      aging_steps: under "lpm", steps after which a waiting request goes first.
    """

    def __init__(
        self,
        kv: KVManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        policy: str = "fcfs",
        aging_steps: int = 32,
    ):
        if policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling policy must be one of {SCHEDULING_POLICIES}: {policy!r}")
        if aging_steps < 1:
            raise ValueError(f"aging_steps must be >= 1, got {aging_steps}")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy
        self.aging_steps = aging_steps
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.num_steps = 0  # schedule() calls: the clock of aging

    @classmethod
    def from_config(cls, kv: KVManager, cfg: EngineConfig, max_num_batched_tokens: int):
        """The scheduler an engine built with ``cfg`` uses (one per data-parallel replica)."""
        return cls(
            kv,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            policy=cfg.scheduling_policy,
            aging_steps=cfg.scheduling_aging_steps,
        )

    def add(self, req: Request) -> None:
        self.waiting.append(req)
        req.queued_at_step = self.num_steps

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep:
        """Picks the next step's requests and gives them the pages their tokens need."""
        self.num_steps += 1
        budget = self.max_num_batched_tokens
        entries: list[tuple[Request, int]] = []
        preempted_before = self.num_preemptions
        for req in list(self.running):
            if budget == 0:
                break
            if req.status is not Status.RUNNING or req.ends_when_known:
                continue  # preempted earlier in this loop, or nothing left to compute
            num_tokens = min(req.num_tokens - req.num_computed_tokens, budget)
            if self._grow_or_preempt(req, num_tokens):
                entries.append((req, num_tokens))
                budget -= num_tokens
        if self.num_preemptions == preempted_before:
            budget = self._admit_waiting(entries, budget)
        return ScheduledStep(tuple(entries), self.num_preemptions - preempted_before)

    def _grow_or_preempt(self, req: Request, num_tokens: int) -> bool:
        while not self.kv.grow(req, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.release(req)
        req.status = Status.WAITING
        req.prompt_cached = False
        self.waiting.appendleft(req)
        req.queued_at_step = self.num_steps  # its wait starts again
        self.num_preemptions += 1

    def _admit_waiting(self, entries: list, budget: int) -> int:
        if self.policy == "lpm" and budget > 0 and len(self.running) < self.max_num_seqs:
            self._order_by_prefix()
        deferred = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting.popleft()
            matched = self.kv.admit(req)
            if self._next_page_in_flight(req):
                self.kv.release(req)
                deferred.append(req)
                continue
            num_tokens = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._has_room(req, num_tokens):
                self.kv.release(req)
                self.waiting.appendleft(req)
                break
            self.kv.record_hit(req, matched)  # before `grow` evicts, as replay orders them
            if not self.kv.grow(req, num_tokens):
                raise RuntimeError("pages counted as reclaimable could not be had")
            req.queued_at_step = None
            req.status = Status.RUNNING
            self.running.append(req)
            entries.append((req, num_tokens))
            budget -= num_tokens
        self.waiting.extendleft(reversed(deferred))
        return budget

    def _has_room(self, req: Request, num_tokens: int) -> bool:
        """Whether the chunk's pages can be had, keeping a page of headroom per running request."""
        needed = self.kv.pages_for(req.num_computed_tokens + num_tokens) - len(req.pages)
        return self.kv.num_reclaimable_pages() - needed >= len(self.running)

    def _order_by_prefix(self) -> None:
        """Sorts the waiting queue for "lpm": requests that waited ``aging_steps`` steps first
        (oldest first), then the longest cached prefix first; ties keep their queue order."""
        now = self.num_steps

        def rank(item):
            position, req = item
            waited = now - req.queued_at_step  # set while it waits (add, preempt)
            if waited >= self.aging_steps:
                return (0, -waited, position)
            return (1, -self.kv.cached_prefix_tokens(req), position)

        ordered = sorted(enumerate(self.waiting), key=rank)
        self.waiting = collections.deque(req for _, req in ordered)

    def _next_page_in_flight(self, req: Request) -> bool:
        """Whether a running prompt, not cached yet, will cache `req`'s first uncached page."""
        if not self.kv.caching:
            return False
        start, page_size = req.num_computed_tokens, self.kv.page_size
        tokens = req.all_token_ids
        if start + page_size > len(tokens) - 1:
            return False  # the page would hold the last token, which is always computed
        wanted = tokens[start : start + page_size]
        return any(
            not other.prompt_cached
            and other.prompt_token_ids[start : start + page_size] == wanted
            and other.prompt_token_ids[:start] == tokens[:start]
            and other.cache_salt == req.cache_salt
            for other in self.running
        )

    def finish(self, req: Request) -> None:
        """Removes a finished request and releases its pages (its KV goes to the cache)."""
        self.running.remove(req)
        self.kv.release(req)
        req.status = Status.FINISHED

    def abort(self, req: Request) -> None:
        """Removes a request from wherever it is; a running one's pages go back as at finish."""
        if req.status is Status.RUNNING:
            self.finish(req)
            return
        if req in self.waiting:
            self.waiting.remove(req)
        req.queued_at_step = None
        req.status = Status.FINISHED
