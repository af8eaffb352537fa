"""POST /v1/completions: prompts (text or token ids, one or a list) -> choices, JSON or SSE."""

import contextlib
from collections.abc import AsyncIterator

from pcjax.entrypoints.openai import protocol as p
from pcjax.entrypoints.openai.serving import OpenAIServing, RequestError, Sequence, sse, usage


def _prompt_list(prompt) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if not prompt:
        raise RequestError("the prompt is empty", param="prompt")
    return list(prompt)


def prepare(serving: OpenAIServing, req: p.CompletionRequest):
    """Checks the request and queues nothing yet: returns (model, sequences, params)."""
    model = serving.check_model(req.model)
    token_lists = [serving.tokenize_prompt(prompt) for prompt in _prompt_list(req.prompt)]
    longest = max(len(ids) for ids in token_lists)
    params = serving.sampling_params(req, longest, req.max_tokens, req.logprobs)
    request_id = p.random_id("cmpl")
    sequences = [Sequence(ids, i * req.n, f"{request_id}-{i}") for i, ids in enumerate(token_lists)]
    return model, request_id, sequences, params


def logprobs_block(tokenizer, logprobs, text_start: int) -> p.CompletionLogprobs:
    block, offset = p.CompletionLogprobs(), text_start
    for lp in logprobs:
        token = tokenizer.decode([lp.token_id]) if tokenizer is not None else str(lp.token_id)
        block.tokens.append(token)
        block.token_logprobs.append(lp.logprob)
        block.top_logprobs.append({tokenizer.decode([i]): v for i, v in lp.top})
        block.text_offset.append(offset)
        offset += len(token)
    return block


async def full_response(serving, req, model, request_id, sequences, params) -> dict:
    texts, tokens, reasons, lps, cached = {}, {}, {}, {}, {}
    async with contextlib.aclosing(serving.run(sequences, params, req.cache_salt)) as results:
        async for seq, out in results:
            cached[seq.request_id] = out.num_cached_tokens
            for sample in out.outputs:
                index = seq.choice_offset + sample.index
                texts[index] = texts.get(index, "") + sample.text
                tokens[index] = tokens.get(index, 0) + len(sample.token_ids)
                reasons[index] = sample.finish_reason
                if sample.logprobs is not None:
                    lps.setdefault(index, []).extend(sample.logprobs)
    if "error" in reasons.values():
        raise RequestError("the engine failed while running this request", 500)
    choices = [
        p.CompletionChoice(
            index=i,
            text=texts[i],
            finish_reason=reasons[i],
            logprobs=logprobs_block(serving.tokenizer, lps[i], 0) if i in lps else None,
        )
        for i in sorted(texts)
    ]
    prompt_tokens = sum(len(s.token_ids) for s in sequences)
    body = p.CompletionResponse(
        id=request_id,
        model=model,
        choices=choices,
        usage=usage(prompt_tokens, sum(tokens.values()), sum(cached.values())),
    )
    return p.dump(body)


async def stream_response(serving, req, model, request_id, sequences, params) -> AsyncIterator[str]:
    num_tokens, cached, offsets = 0, {}, {}
    try:
        async with contextlib.aclosing(serving.run(sequences, params, req.cache_salt)) as results:
            async for seq, out in results:
                cached[seq.request_id] = out.num_cached_tokens
                choices = []
                for sample in out.outputs:
                    index = seq.choice_offset + sample.index
                    num_tokens += len(sample.token_ids)
                    if not sample.token_ids and not sample.text and not sample.finished:
                        continue  # a chunk per token, as vLLM: its text may be held back (empty)
                    block = None
                    if sample.logprobs:
                        block = logprobs_block(
                            serving.tokenizer, sample.logprobs, offsets.get(index, 0)
                        )
                    offsets[index] = offsets.get(index, 0) + len(sample.text)
                    choices.append(
                        p.CompletionChoice(
                            index=index,
                            text=sample.text,
                            logprobs=block,
                            finish_reason=sample.finish_reason,
                        )
                    )
                if choices:
                    chunk = p.CompletionResponse(id=request_id, model=model, choices=choices)
                    yield sse(p.dump(chunk))
    except RequestError as exc:
        yield sse(exc.body())
    except Exception as exc:  # noqa: BLE001 - the stream has begun: report it in-band
        yield sse(RequestError(f"the request failed: {exc!r}", 500).body())
    if req.stream_options is not None and req.stream_options.include_usage:
        prompt_tokens = sum(len(s.token_ids) for s in sequences)
        final = p.CompletionResponse(
            id=request_id,
            model=model,
            choices=[],
            usage=usage(prompt_tokens, num_tokens, sum(cached.values())),
        )
        yield sse(p.dump(final))
    yield sse("[DONE]")
