"""The engine's step machinery: begin a step (schedule, build, dispatch), complete it (wait, take
the sampled tokens, stop, finish), and fail it without wedging the engine.

A step is begun and completed in two halves so that the host can prepare step k+1 while the
device still runs step k (`OverlapLoop`): `begin_step` advances every scheduled request as if
its step had already run (``num_computed_tokens``; a request that samples gets one *pending*
token, counted in ``Request.num_tokens`` but not yet in ``output_token_ids``). A pending token
that step k+1 needs as input is taken from step k's sampled tokens on the device (`merge_tokens`),
never from the host. `complete_step` then replaces pending tokens by the sampled ones, in order.

Worked example (one request, prompt of L tokens, overlapped)::

    begin k:     computes position L-1 (the prompt's last), samples o1      pending [o1]
    begin k+1:   input o1 taken from k's result on device; samples o2      pending [o1, o2]
    complete k:  o1 known: output [o1]; stop checks on o1                  pending [o2]
    begin k+2:   input o2 from k+1's result ...
    complete k+1: o2 known: output [o1, o2] ...

If o1 ends the request (a stop token), step k+1 computed one row in vain: its pending o2 is
dropped and its result ignored; the KV it writes at position L (of o1) is valid, so the pages go
to the prefix cache as at any finish. A request whose pending token will reach ``max_tokens``
or ``max_model_len`` is not scheduled again (it has nothing left to compute).
"""

import dataclasses
import logging
import time

import jax
import numpy as np

from pcjax.engine import stopping
from pcjax.engine.batch import build_step_arrays
from pcjax.engine.outputs import RequestOutput
from pcjax.engine.request import Request, Status
from pcjax.engine.runner import merge_tokens
from pcjax.engine.scheduler import ScheduledStep
from pcjax.sampling import SampleResult

logger = logging.getLogger("pcjax.engine")


@dataclasses.dataclass
class InFlightStep:
    """A dispatched step: its requests (batch order), which rows sample, the device result."""

    scheduled: ScheduledStep
    samples: list[bool]  # row i's sample is a token of its request
    result: SampleResult  # device arrays until completed
    start: float
    prompt_tokens: int
    failed: bool = False


class StepMixin:
    """`Engine`'s step halves (see the module docstring). Uses the engine's scheduler, kv,
    runner, counters, limits, config, ``_requests`` and ``_touched``."""

    def begin_step(self, prev: InFlightStep | None = None) -> InFlightStep | None:
        """Schedules and dispatches the next step; None when nothing is schedulable.

        Args:
          prev: the step still in flight, whose sampled tokens this one may take as input.
        """
        scheduled = self.scheduler.schedule()
        # Before the run: the offloads of this step's victims, whose pages the run may reuse;
        # in debug mode the NaN fill of freed pages, too.
        self.kv.flush()
        if not scheduled.entries:
            return None
        start = time.perf_counter()
        for req, _ in scheduled.entries:
            req.first_scheduled_time = req.first_scheduled_time or start
        prompt_tokens = self._count_step(scheduled)
        try:
            arrays = build_step_arrays(
                scheduled, self.config.page_size, self.limits.max_pages_per_seq
            )
            tokens = _input_tokens(arrays.tokens, scheduled, prev, self.runner.merge_tokens)
            result = self.runner.run(arrays, tokens)
        except Exception:
            logger.exception("a step of %d requests failed", len(scheduled.entries))
            self._fail_step(scheduled)
            return InFlightStep(scheduled, [], None, start, prompt_tokens, failed=True)
        samples = [self._advance(req, n, row) for row, (req, n) in enumerate(scheduled.entries)]
        self.counters["host_begin_us"] += int(1e6 * (time.perf_counter() - start))
        return InFlightStep(scheduled, samples, result, start, prompt_tokens)

    def _advance(self, req: Request, num_tokens: int, row: int) -> bool:
        """Counts the request's tokens as computed; True (one more pending token) if it samples."""
        req.num_computed_tokens += num_tokens
        req.step_row = row
        if not req.prompt_cached and req.num_computed_tokens >= len(req.prompt_token_ids):
            self.kv.cache_computed(req)
            req.prompt_cached = True
        if req.num_computed_tokens < req.num_tokens:
            return False  # a prefill chunk short of the last token: its sample is not used
        req.num_pending += 1
        num_out = len(req.output_token_ids) + req.num_pending
        if num_out >= req.params.max_tokens or req.num_tokens >= self.limits.max_model_len:
            req.ends_when_known = True  # nothing left to compute: not scheduled again
        return True

    def complete_step(self, step: InFlightStep | None) -> list[RequestOutput]:
        """Waits for ``step``, takes its tokens, stops and finishes requests; returns the outputs
        to report (see `Engine.step`)."""
        if step is None:
            return self._take_outputs()
        if not step.failed:
            try:
                waited = time.perf_counter()
                result = jax.device_get(step.result)
                self.counters["device_wait_us"] += int(1e6 * (time.perf_counter() - waited))
            except Exception:
                logger.exception("a step of %d requests failed", len(step.scheduled.entries))
                self._fail_step(step.scheduled)
            else:
                self._take_tokens(step, result)
        self.kv.flush()  # write-through copies of the prefixes this step cached
        kind = "prefill" if step.prompt_tokens else "decode"
        self.counters[f"{kind}_steps"] += 1
        self.counters[f"{kind}_time_us"] += int(1e6 * (time.perf_counter() - step.start))
        if self.config.debug:
            self.check_integrity()
        return self._take_outputs()

    def _take_tokens(self, step: InFlightStep, result: SampleResult) -> None:
        now = time.perf_counter()
        for row, (req, _) in enumerate(step.scheduled.entries):
            if not step.samples[row] or req.finish_reason is not None:
                continue  # no token, or ended meanwhile (abort, an earlier stop)
            try:
                self._take_token(req, result, row, now)
            except Exception:
                logger.exception("request %s failed after its step", req.request_id)
                if req.finish_reason is None:
                    self._finish(req, "error")

    def _take_token(self, req: Request, result: SampleResult, row: int, now: float) -> None:
        req.num_pending -= 1
        req.output_token_ids.append(int(result.tokens[row]))
        if req.logprobs is not None:
            req.logprobs.append(stopping.token_logprob(result, row, req.params.logprobs))
        self.counters["generated_tokens"] += 1
        req.first_token_time = req.first_token_time or now
        req.last_token_time = now
        self._touched[req.group.request_id] = req.group
        reason = stopping.stop_reason(req, self.limits.max_model_len)
        if reason is not None:
            self._finish(req, reason)

    def _finish(self, req: Request, reason: str) -> None:
        """Ends one sample: its pages go back; the group ends with its last sample."""
        req.finish_reason = reason
        req.num_pending = 0  # a token sampled after the end is dropped
        if req.detokenizer is not None:
            req.detokenizer.flush(req.output_token_ids)
        if req.status is Status.RUNNING:
            self.scheduler.finish(req)
        else:
            self.scheduler.abort(req)
        group = req.group
        self._touched[group.request_id] = group
        if group.finished:
            group.finished_time = time.perf_counter()
            del self._requests[group.request_id]

    def _fail_step(self, scheduled: ScheduledStep) -> None:
        """Fails the requests of a step that raised; recovers the device cache if it was lost."""
        self.counters["failed_steps"] += 1
        if self.runner.cache_lost():
            self._recover_cache()
        for req, _ in scheduled.entries:
            if req.finish_reason is None:
                self._finish(req, "error")

    def _recover_cache(self) -> None:
        """A failed step consumed the donated cache: every KV page is gone. Fails the running
        requests without caching their pages, empties the prefix cache, allocates a new cache."""
        logger.error("the device KV cache was lost in a failed step: resetting it")
        for req in list(self.scheduler.running):
            req.num_computed_tokens = 0  # nothing of it may enter the prefix cache
            self._finish(req, "error")
        self.kv.reset_cache()
        if self.mesh is None:
            self.runner.kv_cache = self._allocate_cache()
        else:
            self.runner.reset_cache()

    def _take_outputs(self) -> list[RequestOutput]:
        touched, self._touched = self._touched, {}
        return [
            group.to_output()
            for group in touched.values()
            if group.output_kind != "final" or group.finished
        ]

    def _count_step(self, scheduled: ScheduledStep) -> int:
        """Counts a step before it runs; returns how many of its tokens are prompt tokens."""
        c = self.counters
        prompt_tokens = sum(
            max(
                0,
                min(req.num_computed_tokens + n, len(req.prompt_token_ids))
                - req.num_computed_tokens,
            )
            for req, n in scheduled.entries
        )
        c["num_steps"] += 1
        c["computed_tokens"] += scheduled.num_tokens
        c["computed_prompt_tokens"] += prompt_tokens
        c["preemptions"] += scheduled.num_preempted
        return prompt_tokens


def _input_tokens(
    host_tokens: np.ndarray,
    scheduled: ScheduledStep,
    prev: InFlightStep | None,
    merge=merge_tokens,
):
    """The step's input tokens: the host array, or (where it holds pending tokens, -1) the host
    array with those taken from ``prev``'s sampled tokens on the device (by ``merge``, the
    runner's `merge_tokens`)."""
    pending = host_tokens < 0
    if not pending.any():
        return host_tokens
    if prev is None or prev.result is None:
        raise RuntimeError("a step needs pending tokens but no step is in flight")
    sources = np.full(host_tokens.shape, -1, np.int32)
    offset = 0
    for req, n in scheduled.entries:
        if pending[offset + n - 1]:  # only the last input token of a row can be pending
            sources[offset + n - 1] = req.step_row
        offset += n
    return merge(host_tokens, prev.result.tokens, sources)


class OverlapLoop:
    """Steps an engine with step k+1 prepared and dispatched before step k is waited for.

    ``step()`` returns the outputs of the step that completed. On CPU the "device" shares the
    cores with the host, so what this buys is small; experiments/bench_overlap.py measures it.
    """

    def __init__(self, engine):
        self.engine = engine
        self.in_flight: InFlightStep | None = None

    def has_work(self) -> bool:
        return self.in_flight is not None or self.engine.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        following = self.engine.begin_step(self.in_flight)
        done, self.in_flight = self.in_flight, following
        if done is None:
            return self.engine.complete_step(None)
        return self.engine.complete_step(done)
