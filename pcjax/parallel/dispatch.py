"""Data-parallel replicas on the host: which replica a request goes to, and the engine's view of
all of them as one scheduler and one page manager (host only, no jax).

Each replica is a full engine's host side: its own `Scheduler` (``max_num_seqs`` and
``max_num_batched_tokens`` each) over its own `KVManager` (page pool with its null page, radix
tree, host slots; page ids local to the replica). A step schedules every replica and runs all
of them in one sharded program (`pcjax.parallel.runner`).

Dispatch by prefix affinity, balanced against load. A new request goes to the replica with the
smallest

    cost(r) = pending(r) + uncached(request, r)

where ``pending(r)`` is the work the replica has queued (tokens not yet computed of its
unfinished requests plus the tokens they may still generate) and ``uncached(request, r)`` the
request's prompt tokens that replica r will not hold when it runs the request: neither in its
tree (device or host tier) nor in the prompt of a request it already has (whose pages the tree
gets once computed; so a burst of requests sharing a new prefix stays together). Page-aligned,
as the tree matches. Ties go to the longer cached prefix, then to the replica that was given
fewer requests (so idle replicas take turns), then to the lower index. This folds the
rule of tpu-inference's DP scheduler (best prefix hit, else least tokens) into one cost. A
request then stays on its replica (through preemption too); an ``n > 1`` request's samples share
it.

Example: replica 0 holds a 96-token prefix and has 200 tokens pending, replica 1 holds nothing
and has 40 pending; a 100-token prompt with that prefix costs 200 + 4 on replica 0 and
40 + 100 on replica 1: it goes to replica 1. With 100 pending on replica 0 it would stay there
(104 < 140).
"""

from pcjax.engine.kv_manager import KVManager, cache_key
from pcjax.engine.request import Request
from pcjax.engine.scheduler import ScheduledStep, Scheduler


def pending_tokens(req: Request) -> int:
    """Tokens a request still costs its replica: uncomputed ones plus those it may generate."""
    left_to_generate = req.params.max_tokens - len(req.output_token_ids) - req.num_pending
    return max(0, req.num_tokens - req.num_computed_tokens) + max(0, left_to_generate)


def _shared_prefix(req: Request, other: Request, page_size: int) -> int:
    """Whole pages of ``req``'s prompt (short of its last token) that begin ``other``'s prompt,
    in tokens; 0 across cache salts."""
    if req.cache_salt != other.cache_salt:
        return 0
    a, b = req.prompt_token_ids, other.prompt_token_ids
    limit = min(len(a) - 1, len(b))
    n = 0
    while n + page_size <= limit and a[n : n + page_size] == b[n : n + page_size]:
        n += page_size
    return n


class ReplicaScheduler:
    """The `Scheduler` interface over one scheduler per replica (see the module docstring)."""

    def __init__(self, schedulers: list[Scheduler]):
        self.schedulers = schedulers
        self.num_dispatched = [0] * len(schedulers)

    @property
    def running(self) -> list[Request]:
        return [req for s in self.schedulers for req in s.running]

    @property
    def waiting(self) -> list[Request]:
        return [req for s in self.schedulers for req in s.waiting]

    def has_unfinished(self) -> bool:
        return any(s.has_unfinished() for s in self.schedulers)

    def add(self, req: Request) -> None:
        """Queues a request on its replica: the first sample of a request picks one
        (`choose_replica`), the others follow it."""
        first = req.group.children[0] if req.group is not None else req
        req.replica = self.choose_replica(req) if first is req else first.replica
        self.num_dispatched[req.replica] += 1
        self.schedulers[req.replica].add(req)

    def choose_replica(self, req: Request) -> int:
        """The replica of least ``pending + uncached`` tokens (module docstring)."""
        tokens = req.all_token_ids
        key = cache_key(req, tokens)
        best, best_key = 0, None
        for r, scheduler in enumerate(self.schedulers):
            queued = (*scheduler.running, *scheduler.waiting)
            cached = max(
                scheduler.kv.cache.peek(key, max_tokens=len(key) - 1),
                max((_shared_prefix(req, q, scheduler.kv.page_size) for q in queued), default=0),
            )
            pending = sum(pending_tokens(q) for q in queued)
            rank = (pending + len(tokens) - cached, -cached, self.num_dispatched[r], r)
            if best_key is None or rank < best_key:
                best, best_key = r, rank
        return best

    def schedule(self) -> ScheduledStep:
        """Every replica's next step, replica after replica."""
        steps = [s.schedule() for s in self.schedulers]
        return ScheduledStep(
            tuple(entry for step in steps for entry in step.entries),
            sum(step.num_preempted for step in steps),
        )

    def finish(self, req: Request) -> None:
        self.schedulers[req.replica].finish(req)

    def abort(self, req: Request) -> None:
        self.schedulers[req.replica].abort(req)


class ReplicaKV:
    """The engine's `KVManager` calls over one manager per replica: request calls go to the
    request's replica, the rest to all of them. ``scheduler`` adds request counts to `stats`."""

    def __init__(self, kvs: list[KVManager], scheduler: ReplicaScheduler | None = None):
        self.kvs = kvs
        self.scheduler = scheduler

    def flush(self, loads=()) -> None:
        if loads:
            raise ValueError("loads belong to one replica: flush its own KVManager")
        for kv in self.kvs:
            kv.flush()

    def cache_computed(self, req: Request) -> None:
        self.kvs[req.replica].cache_computed(req)

    def reset_cache(self) -> int:
        return sum(kv.reset_cache() for kv in self.kvs)

    def check_integrity(self, running) -> None:
        for r, kv in enumerate(self.kvs):
            kv.check_integrity([req for req in running if req.replica == r])

    def stats(self) -> dict:
        """Every count summed over the replicas (rates recomputed), and ``"replicas"``: each
        replica's own `KVManager.stats`."""
        per_replica = [kv.stats() for kv in self.kvs]
        if self.scheduler is not None:
            for r, s in enumerate(self.scheduler.schedulers):
                per_replica[r]["running"] = len(s.running)
                per_replica[r]["waiting"] = len(s.waiting)
                per_replica[r]["dispatched_requests"] = self.scheduler.num_dispatched[r]
        total = {
            key: sum(s[key] for s in per_replica)
            for key, value in per_replica[0].items()
            if isinstance(value, int)
        }
        queried = total["prefix_cache_queried_tokens"]
        total["prefix_cache_hit_rate"] = (
            total["prefix_cache_hit_tokens"] / queried if queried else 0.0
        )
        capacity = sum(kv.pool.capacity for kv in self.kvs)
        total["kv_cache_usage"] = 1 - sum(kv.num_reclaimable_pages() for kv in self.kvs) / capacity
        for key in ("swap_out_time_s", "swap_in_time_s"):
            if key in per_replica[0]:
                total[key] = sum(s[key] for s in per_replica)
        return {**total, "replicas": per_replica}
