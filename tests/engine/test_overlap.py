"""Overlapped stepping (step k+1 dispatched before step k is waited for) gives the same tokens as
plain stepping, through stops, preemption, eviction and aborts, and keeps the page accounting."""

import dataclasses

from pcjax import SamplingParams
from pcjax.engine.steps import OverlapLoop
from tests.engine.conftest import GREEDY, SMALL_CACHE_PAGES, make_engine


def run_overlapped(engine, prompts, params, abort_after: int | None = None):
    final = dataclasses.replace(params, output_kind="final")
    ids = [engine.add_request(p, final) for p in prompts]
    loop, outs, steps = OverlapLoop(engine), {}, 0
    while loop.has_work():
        for out in loop.step():
            outs[out.request_id] = out
        steps += 1
        if steps == abort_after:
            for out in engine.abort(ids[-1]):
                outs[out.request_id] = out
        assert steps < 1000
    engine.check_integrity()
    return [outs[i] for i in ids]


def test_greedy_tokens_match_plain_steps_with_preemption(prompts, reference_tokens):
    engine = make_engine()
    assert [o.token_ids for o in run_overlapped(engine, prompts, GREEDY)] == reference_tokens
    # four running sequences grow past what the small cache holds: eviction and preemption
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    expected = make_engine().generate(prompts, long, use_tqdm=False)
    small = make_engine(num_pages=SMALL_CACHE_PAGES, max_num_seqs=4)
    outs = run_overlapped(small, prompts, long)
    assert [o.token_ids for o in outs] == [o.token_ids for o in expected]
    assert small.stats()["preemptions"] > 0
    assert small.kv.pool.num_in_use == 0


def test_sampling_stops_and_lengths_match_plain_steps(prompts):
    free = make_engine().generate(prompts[:1], GREEDY, use_tqdm=False)[0].token_ids
    params = [
        SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[free[3]]),
        SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[free[1]], min_tokens=5),
        SamplingParams(temperature=0, max_tokens=200, ignore_eos=True),  # up to max_model_len
        dataclasses.replace(GREEDY, logprobs=2),
    ]
    plain_engine, overlap_engine = make_engine(), make_engine()
    for sp in params:
        plain = plain_engine.generate(prompts[:3], sp, use_tqdm=False)
        overlapped = run_overlapped(overlap_engine, prompts[:3], sp)
        assert [o.token_ids for o in overlapped] == [o.token_ids for o in plain]
        assert [o.finish_reason for o in overlapped] == [o.finish_reason for o in plain]
        assert [o.text for o in overlapped] == [o.text for o in plain]


def test_abort_while_a_step_is_in_flight(prompts, reference_tokens):
    engine = make_engine()
    outs = run_overlapped(engine, prompts[:3], GREEDY, abort_after=4)
    assert outs[-1].finish_reason == "abort"
    assert [o.token_ids for o in outs[:2]] == reference_tokens[:2]
    assert engine.kv.pool.num_in_use == 0
    again = engine.generate(prompts[2], GREEDY, use_tqdm=False)[0]
    assert again.token_ids == reference_tokens[2]
