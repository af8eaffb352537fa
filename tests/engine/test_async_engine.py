"""AsyncEngine: concurrent async streams give the offline engine's tokens, with and without
overlap scheduling; closing a stream aborts its request; bad input raises in the caller."""

import asyncio
import contextlib

import pytest

from pcjax.engine.async_engine import AsyncEngine
from tests.engine.conftest import GREEDY, make_engine


async def collect(async_engine, prompt, request_id):
    tokens, text = [], ""
    async for out in async_engine.generate(prompt, GREEDY, request_id):
        tokens += out.outputs[0].token_ids
        text += out.outputs[0].text
    return tokens, text, out.finish_reason


@pytest.mark.parametrize("overlap", [False, True])
def test_concurrent_streams_match_generate(prompts, reference_tokens, overlap):
    seen = []
    async_engine = AsyncEngine(make_engine(), observers=(lambda outs, _: seen.append(len(outs)),),
                               overlap=overlap)  # fmt: skip
    async_engine.start()
    try:

        async def main():
            results = await asyncio.gather(
                *(collect(async_engine, p, f"r{i}") for i, p in enumerate(prompts[:3]))
            )
            # a stream closed after its first delta aborts its request
            stream = async_engine.generate(prompts[0], GREEDY, "dropped")
            async with contextlib.aclosing(stream):
                await anext(stream)
            with pytest.raises(ValueError, match="empty"):
                await collect(async_engine, [], "bad")
            await asyncio.sleep(0.2)
            stats = await async_engine.call(lambda e: (e.check_integrity(), e.stats())[1])
            return results, stats

        results, stats = asyncio.run(main())
    finally:
        async_engine.shutdown()
    assert [r[0] for r in results] == reference_tokens[:3]
    assert {r[2] for r in results} == {"length"}
    assert stats["running"] == stats["waiting"] == stats["in_use_pages"] == 0
    assert sum(seen) > 0 and not async_engine.is_running
