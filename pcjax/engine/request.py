"""One request's host-side state, and the `RequestOutput` handed back to users."""

import dataclasses
import enum
import time

from pcjax.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # not admitted yet, or preempted and waiting to be recomputed
    RUNNING = "running"
    FINISHED = "finished"


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """A finished request (vLLM's field names where they exist).

    Attributes:
      request_id: the id given to or chosen by `Engine.add_request`.
      prompt: the prompt text, when the prompt was a string.
      prompt_token_ids: the prompt as token ids.
      token_ids: the generated token ids (a stop token is kept; a stop string's tokens are kept).
      text: the generated text, cut before a stop string.
      finish_reason: "stop" (stop token or string) or "length" (max_tokens or max_model_len).
      num_cached_tokens: prompt tokens served from the prefix cache when it was first admitted.
      ttft_s: seconds from arrival to the first generated token.
      latency_s: seconds from arrival to finishing.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    num_cached_tokens: int
    ttft_s: float
    latency_s: float


@dataclasses.dataclass(eq=False)
class Request:
    """Mutable state of a request inside the engine.

    `pages[i]` holds the KV of tokens ``[i * P, (i + 1) * P)`` of ``all_token_ids``. The first
    `num_shared_pages` belong to the prefix cache (locked through `cache_node`); the rest are the
    request's own. ``num_computed_tokens`` tokens have their KV written; the step that computes the
    last of ``all_token_ids`` samples the next token.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    stop_token_ids: frozenset[int]
    prompt: str | None = None
    arrival_time: float = dataclasses.field(default_factory=time.perf_counter)
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    status: Status = Status.WAITING
    pages: list[int] = dataclasses.field(default_factory=list)
    num_shared_pages: int = 0
    cache_node: object = None
    num_computed_tokens: int = 0
    num_cached_tokens: int | None = None
    prompt_cached: bool = False
    first_token_time: float | None = None
    finish_reason: str | None = None
    text: str = ""

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def own_pages(self) -> list[int]:
        return self.pages[self.num_shared_pages :]

    def to_output(self) -> RequestOutput:
        now = time.perf_counter()
        first = self.first_token_time if self.first_token_time is not None else now
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=list(self.prompt_token_ids),
            token_ids=list(self.output_token_ids),
            text=self.text,
            finish_reason=self.finish_reason or "length",
            num_cached_tokens=self.num_cached_tokens or 0,
            ttft_s=first - self.arrival_time,
            latency_s=now - self.arrival_time,
        )
