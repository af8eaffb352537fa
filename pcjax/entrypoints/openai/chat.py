"""POST /v1/chat/completions: messages through the model's chat template -> choices, JSON or SSE
(the role in each choice's first delta, the finish reason in its last)."""

import contextlib
from collections.abc import AsyncIterator

from pcjax.entrypoints.openai import protocol as p
from pcjax.entrypoints.openai.serving import OpenAIServing, RequestError, Sequence, sse, usage


def prepare(serving: OpenAIServing, req: p.ChatCompletionRequest):
    """Checks the request: returns (model, request id, [one sequence], params)."""
    model = serving.check_model(req.model)
    token_ids = serving.render_chat(req)
    max_tokens = req.max_completion_tokens or req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs and not req.logprobs:
        raise RequestError("top_logprobs needs logprobs=true", param="top_logprobs")
    params = serving.sampling_params(req, len(token_ids), max_tokens, logprobs)
    request_id = p.random_id("chatcmpl")
    return model, request_id, [Sequence(token_ids, 0, request_id)], params


def logprobs_block(tokenizer, logprobs) -> p.ChatLogprobs:
    def entry(token_id: int, value: float) -> p.TopLogprob:
        token = tokenizer.decode([token_id])
        return p.TopLogprob(token=token, logprob=value, bytes=list(token.encode()))

    content = []
    for lp in logprobs:
        head = entry(lp.token_id, lp.logprob)
        top = [entry(i, v) for i, v in lp.top]
        content.append(p.TokenLogprobInfo(**head.model_dump(), top_logprobs=top))
    return p.ChatLogprobs(content=content)


async def full_response(serving, req, model, request_id, sequences, params) -> dict:
    texts, tokens, reasons, lps, cached = {}, {}, {}, {}, 0
    async with contextlib.aclosing(serving.run(sequences, params, req.cache_salt)) as results:
        async for _, out in results:
            cached = out.num_cached_tokens
            for sample in out.outputs:
                i = sample.index
                texts[i] = texts.get(i, "") + sample.text
                tokens[i] = tokens.get(i, 0) + len(sample.token_ids)
                reasons[i] = sample.finish_reason
                if sample.logprobs is not None:
                    lps.setdefault(i, []).extend(sample.logprobs)
    if "error" in reasons.values():
        raise RequestError("the engine failed while running this request", 500)
    choices = [
        p.ChatChoice(
            index=i,
            message=p.ChatMessageOut(content=texts[i]),
            finish_reason=reasons[i],
            logprobs=logprobs_block(serving.tokenizer, lps[i]) if i in lps else None,
        )
        for i in sorted(texts)
    ]
    body = p.ChatCompletionResponse(
        id=request_id,
        model=model,
        choices=choices,
        usage=usage(len(sequences[0].token_ids), sum(tokens.values()), cached),
    )
    return p.dump(body)


async def stream_response(serving, req, model, request_id, sequences, params) -> AsyncIterator[str]:
    def chunk(choices, **kwargs) -> str:
        body = p.ChatCompletionChunk(id=request_id, model=model, choices=choices, **kwargs)
        return sse(p.dump(body))

    role = p.DeltaMessage(role="assistant", content="")
    yield chunk([p.ChatChunkChoice(index=i, delta=role) for i in range(params.n)])
    num_tokens, cached = 0, 0
    try:
        async with contextlib.aclosing(serving.run(sequences, params, req.cache_salt)) as results:
            async for _, out in results:
                cached, choices = out.num_cached_tokens, []
                for sample in out.outputs:
                    num_tokens += len(sample.token_ids)
                    if not sample.token_ids and not sample.text and not sample.finished:
                        continue  # a chunk per token, as vLLM: its text may be held back (empty)
                    block = None
                    if sample.logprobs:
                        block = logprobs_block(serving.tokenizer, sample.logprobs)
                    delta = p.DeltaMessage(content=sample.text) if sample.text else p.DeltaMessage()
                    choices.append(
                        p.ChatChunkChoice(
                            index=sample.index,
                            delta=delta,
                            logprobs=block,
                            finish_reason=sample.finish_reason,
                        )
                    )
                if choices:
                    yield chunk(choices)
    except RequestError as exc:
        yield sse(exc.body())
    except Exception as exc:  # noqa: BLE001 - the stream has begun: report it in-band
        yield sse(RequestError(f"the request failed: {exc!r}", 500).body())
    if req.stream_options is not None and req.stream_options.include_usage:
        yield chunk([], usage=usage(len(sequences[0].token_ids), num_tokens, cached))
    yield sse("[DONE]")
