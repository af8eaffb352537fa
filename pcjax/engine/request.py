"""One request's host-side state: `RequestGroup` (what a user submitted) and its `Request`s (one
per sample, what the scheduler runs), and how their outputs are reported."""

import dataclasses
import enum
import time

from pcjax.engine.detokenizer import IncrementalDetokenizer
from pcjax.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from pcjax.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # not admitted yet, or preempted and waiting to be recomputed
    RUNNING = "running"
    FINISHED = "finished"


@dataclasses.dataclass(eq=False)
class Request:
    """Mutable state of one sample (sequence) inside the engine.

    `pages[i]` holds the KV of tokens ``[i * P, (i + 1) * P)`` of ``all_token_ids``. The first
    `num_shared_pages` belong to the prefix cache (locked through `cache_node`); the rest are the
    request's own. ``num_computed_tokens`` tokens have their KV written; the step that computes the
    last of ``all_token_ids`` samples the next token. ``cache_salt`` keeps its cached prefixes
    apart from other salts' (see `KVManager`).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    stop_token_ids: frozenset[int]
    prompt: str | None = None
    cache_salt: str | None = None
    index: int = 0
    group: "RequestGroup | None" = None
    detokenizer: IncrementalDetokenizer | None = None
    arrival_time: float = dataclasses.field(default_factory=time.perf_counter)
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    status: Status = Status.WAITING
    pages: list[int] = dataclasses.field(default_factory=list)
    num_shared_pages: int = 0
    cache_node: object = None
    num_computed_tokens: int = 0
    num_cached_tokens: int | None = None
    prompt_cached: bool = False
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_reason: str | None = None
    num_reported_tokens: int = 0  # tokens already handed out in delta mode
    num_pending: int = 0  # sampled by dispatched steps, not known on the host yet (steps.py)
    ends_when_known: bool = False  # its pending token reaches max_tokens / max_model_len
    step_row: int = -1  # its row in the last step it was scheduled in
    replica: int = 0  # the data-parallel replica that holds its pages (pcjax.parallel)
    queued_at_step: int | None = None  # the scheduler's step when it joined the queue

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        """Tokens so far, pending ones included (the scheduler computes up to here)."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending

    @property
    def own_pages(self) -> list[int]:
        return self.pages[self.num_shared_pages :]

    @property
    def text(self) -> str:
        return self.detokenizer.text if self.detokenizer is not None else ""

    def completion(self, delta: bool) -> CompletionOutput:
        """This sample's output: everything, or (``delta``) what was not reported yet."""
        finished = self.finish_reason is not None
        start = self.num_reported_tokens if delta else 0
        if self.detokenizer is None:
            text = ""
        elif delta:
            text = self.detokenizer.take_delta(finished)
        else:
            text = self.detokenizer.text
        if delta:
            self.num_reported_tokens = len(self.output_token_ids)
        logprobs = None if self.logprobs is None else self.logprobs[start:]
        return CompletionOutput(
            index=self.index,
            text=text,
            token_ids=self.output_token_ids[start:],
            finish_reason=self.finish_reason,
            logprobs=logprobs,
            cumulative_logprob=None
            if self.logprobs is None
            else sum(lp.logprob for lp in self.logprobs),
        )


@dataclasses.dataclass(eq=False)
class RequestGroup:
    """A submitted request: its ``n`` samples share the prompt (and, cached, its pages).

    With ``n == 1`` the one sample carries the group's id; sample ``i`` of a larger group is
    ``f"{i}_{request_id}"`` inside the engine (vLLM's naming).
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    output_kind: str
    children: list[Request]
    arrival_time: float = dataclasses.field(default_factory=time.perf_counter)
    finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children)

    def to_output(self) -> RequestOutput:
        """The group's output in its output kind (a delta report marks what it hands out)."""
        delta = self.output_kind == "delta"
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[c.completion(delta) for c in self.children],
            finished=self.finished,
            num_cached_tokens=self.children[0].num_cached_tokens or 0,
            metrics=self.metrics(),
        )

    def metrics(self) -> RequestMetrics:
        def first(values):
            values = [v for v in values if v is not None]
            return min(values) if values else None

        last = [c.last_token_time for c in self.children if c.last_token_time is not None]
        return RequestMetrics(
            arrival_time=self.arrival_time,
            first_scheduled_time=first(c.first_scheduled_time for c in self.children),
            first_token_time=first(c.first_token_time for c in self.children),
            last_token_time=max(last) if last else None,
            finished_time=self.finished_time,
        )
