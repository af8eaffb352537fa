"""Completions and chat completions: an OpenAI request -> engine requests -> a JSON response or
SSE chunks. Holds no cache logic: prompts go to the `AsyncEngine` as token ids (and a
``cache_salt``), and ``cached_tokens`` is what the engine reports.

Admission: at most `max_in_flight` sequences (``n`` per request) may be queued or running; a
request beyond that gets a 429 at once instead of waiting without bound.
"""

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

from pcjax.engine.async_engine import AsyncEngine
from pcjax.engine.outputs import RequestOutput
from pcjax.entrypoints.openai import protocol as p
from pcjax.sampling import SamplingParams


class RequestError(Exception):
    """An invalid request: becomes an OpenAI-shaped error with ``status``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code=None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kinds = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}
        info = p.ErrorInfo(
            message=str(self),
            type=kinds.get(self.status, "InternalServerError"),
            param=self.param,
            code=self.code if self.code is not None else self.status,
        )
        return p.dump(p.ErrorResponse(error=info))


@dataclasses.dataclass
class Sequence:
    """One engine request of an HTTP request: its prompt, and the choices' index offset."""

    token_ids: list[int]
    choice_offset: int
    request_id: str


class OpenAIServing:
    """Turns completion / chat requests into engine requests and their outputs into responses.

    Args:
      engine: the running `AsyncEngine`.
      served_model_names: names a request's ``model`` may take (the first is the default).
      max_in_flight: admission limit in sequences (see the module docstring).
    """

    def __init__(self, engine: AsyncEngine, served_model_names: list[str], max_in_flight: int):
        self.engine = engine
        self.names = served_model_names
        self.tokenizer = engine.engine.tokenizer
        self.max_model_len = engine.engine.limits.max_model_len
        self.vocab_size = engine.engine.model.config.vocab_size
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    # ------------------------------------------------------------------------------ checks

    def check_model(self, name: str | None) -> str:
        if name is not None and name not in self.names:
            raise RequestError(
                f"The model `{name}` does not exist.", 404, "model", "model_not_found"
            )
        return self.names[0]

    def sampling_params(
        self, req, prompt_len: int, max_tokens: int | None, logprobs
    ) -> SamplingParams:
        room = self.max_model_len - prompt_len
        if max_tokens is not None and max_tokens > room:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the length.",
                param="max_tokens",
            )
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        try:
            return SamplingParams(
                n=req.n,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=req.top_k or 0,
                max_tokens=max(1, room if max_tokens is None else max_tokens),
                min_tokens=req.min_tokens,
                seed=req.seed,
                stop=tuple(stop),
                stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=req.ignore_eos,
                logprobs=logprobs,
                output_kind="delta",
            )
        except ValueError as exc:
            raise RequestError(str(exc)) from exc

    def tokenize_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: send token ids", param="prompt")
            token_ids = list(self.tokenizer.encode(prompt))
        else:
            token_ids = list(prompt)
        if not token_ids:
            raise RequestError("the prompt is empty", param="prompt")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(
                f"prompt token ids out of range [0, {self.vocab_size}): {bad[:5]}", param="prompt"
            )
        if len(token_ids) >= self.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your prompt has {len(token_ids)} tokens (one more is needed to generate). "
                "Please reduce the length of the prompt.",
                param="prompt",
            )
        return token_ids

    def render_chat(self, req: p.ChatCompletionRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            text = self.engine.engine.render_chat(messages, req.add_generation_prompt)
        except ValueError as exc:
            raise RequestError(str(exc), param="messages") from exc
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenize_prompt(list(ids))

    # ------------------------------------------------------------------------- running

    def admit(self, num_sequences: int) -> None:
        if self.in_flight + num_sequences > self.max_in_flight:
            raise RequestError(
                f"the server is at its limit of {self.max_in_flight} queued and running "
                "sequences; retry later",
                429,
                code="rate_limit_exceeded",
            )
        self.in_flight += num_sequences

    async def run(
        self, sequences: list[Sequence], params: SamplingParams, salt: str | None
    ) -> AsyncIterator[tuple[Sequence, RequestOutput]]:
        """Runs every sequence; yields (sequence, delta output) as they come, in any order."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(seq: Sequence):
            try:
                prompt = {"prompt_token_ids": seq.token_ids}
                if salt is not None:
                    prompt["cache_salt"] = salt
                stream = self.engine.generate(prompt, params, seq.request_id)
                async with contextlib.aclosing(stream) as outputs:
                    async for out in outputs:
                        queue.put_nowait((seq, out))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(done)

        tasks = [asyncio.ensure_future(pump(seq)) for seq in sequences]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise RequestError(str(item)) if isinstance(item, ValueError) else item
                else:
                    yield item
        finally:
            # No await here: a stream cancelled by anyio (a client that left) would be cancelled
            # again at any await, and the slots would never be given back.
            self.in_flight -= params.n * len(sequences)
            for task in tasks:
                task.cancel()  # closes the engine streams: unfinished requests are aborted


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> p.Usage:
    return p.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=p.PromptTokensDetails(cached_tokens=cached_tokens),
    )


def sse(data) -> str:
    """One server-sent event: ``data: {...}`` (or ``data: [DONE]``)."""
    if isinstance(data, str):
        return f"data: {data}\n\n"
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def finish_reason(reason: str | None) -> str | None:
    """The engine's reasons as OpenAI's ("abort" and "error" have no OpenAI name: kept)."""
    return reason
