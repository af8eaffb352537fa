"""What `Engine.step` / `generate` hand back: `RequestOutput` and its parts (vLLM's names)."""

import dataclasses
from typing import NamedTuple


class TokenLogprob(NamedTuple):
    """Log-probabilities at one generated position (raw model logits, log-softmax).

    Attributes:
      token_id: the sampled token.
      logprob: its log-probability.
      top: the most likely tokens as ``(token_id, logprob)``, best first (``logprobs`` of them).
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclasses.dataclass(frozen=True)
class CompletionOutput:
    """One sample of a request (``index`` < n).

    In "delta" output mode ``text``, ``token_ids`` and ``logprobs`` hold only what is new since the
    previous report; otherwise everything so far.

    Attributes:
      index: which of the request's n samples.
      text: generated text, cut before a stop string; while running, a tail that could still
        become a stop string is held back.
      token_ids: generated token ids (a stop token is kept; a stop string's tokens are kept).
      finish_reason: None while running; "stop" (stop token or string), "length" (max_tokens or
        max_model_len), "abort" (`Engine.abort`) or "error" (its step failed).
      logprobs: one `TokenLogprob` per token when the request asked for them, else None.
      cumulative_logprob: sum of the sampled tokens' log-probabilities (None without logprobs).
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass(frozen=True)
class RequestMetrics:
    """A request's timestamps (``time.perf_counter`` seconds; None: not reached yet).

    For ``n > 1`` the first scheduled / first token times are the earliest over the samples, the
    last token time the latest.
    """

    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    last_token_time: float | None
    finished_time: float | None

    @property
    def time_in_queue(self) -> float | None:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """A request's state as reported by `Engine.step`, or its result from `generate`.

    Attributes:
      request_id: the id given to or chosen by `Engine.add_request`.
      prompt: the prompt text, when the prompt was a string (or a rendered chat).
      prompt_token_ids: the prompt as token ids.
      outputs: one `CompletionOutput` per sample that has something to report, by index.
      finished: every sample has finished.
      num_cached_tokens: prompt tokens served from the prefix cache when the request (its first
        sample) was first admitted.
      metrics: timestamps (`RequestMetrics`).

    ``token_ids``, ``text``, ``finish_reason`` (sample 0's), ``ttft_s`` and ``latency_s`` are kept
    from the first version of this class.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int
    metrics: RequestMetrics

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids if self.outputs else []

    @property
    def text(self) -> str:
        return self.outputs[0].text if self.outputs else ""

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason if self.outputs else None

    @property
    def ttft_s(self) -> float:
        """Seconds from arrival to the first generated token (to now, if none came yet)."""
        m = self.metrics
        end = m.first_token_time or m.finished_time or m.arrival_time
        return end - m.arrival_time

    @property
    def latency_s(self) -> float:
        """Seconds from arrival to finishing (to the latest token while running)."""
        m = self.metrics
        end = m.finished_time or m.last_token_time or m.arrival_time
        return end - m.arrival_time
