"""What a server needs from the Engine: per-token outputs, abort, dict prompts, n > 1, logprobs,
min_tokens, cache salts, parameter validation and steps that fail without wedging the engine."""

import dataclasses
import random

import jax
import pytest

from pcjax import SamplingParams
from pcjax.engine.detokenizer import IncrementalDetokenizer
from pcjax.models.tokenizer import build_byte_tokenizer
from tests.engine.conftest import GREEDY, make_engine


@pytest.fixture(scope="module")
def engine():
    return make_engine(max_model_len=160, num_pages=96)


def run_to_end(engine, limit: int = 500) -> list:
    outputs = []
    for _ in range(limit):
        if not engine.has_unfinished_requests():
            return outputs
        outputs += engine.step()
    raise AssertionError("requests did not finish")


def test_incremental_text_equals_a_full_decode_for_any_bytes():
    tok = build_byte_tokenizer(320)
    rng = random.Random(0)
    for _ in range(200):
        choices = [0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0x80, 257, 300, *range(0x20, 0x7F)]
        ids = [rng.choice(choices) for _ in range(rng.randrange(1, 24))]
        detok, pieces = IncrementalDetokenizer(tok), []
        for i in range(1, len(ids) + 1):
            detok.update(ids[:i])
            pieces.append(detok.take_delta(finished=False))
        detok.flush(ids)
        pieces.append(detok.take_delta(finished=True))
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)


def test_stop_string_prefix_is_held_back_and_cut():
    tok = build_byte_tokenizer(320)
    ids = list(b"the END of it")
    detok = IncrementalDetokenizer(tok, stop=("END",))
    seen = []
    for i in range(1, len(ids) + 1):
        stopped = detok.update(ids[:i])
        seen.append(detok.take_delta(finished=stopped))
        if stopped:
            break
    assert "".join(seen) == "the "
    assert "E" not in "".join(seen[:-1]) and seen[list(ids).index(ord("E"))] == ""
    assert detok.text == "the "


def test_delta_outputs_rebuild_the_final_output(engine, prompts):
    final = engine.generate(prompts[:2], GREEDY, use_tqdm=False)
    delta = dataclasses.replace(GREEDY, output_kind="delta")
    ids = [engine.add_request(p, delta) for p in prompts[:2]]
    tokens, texts, finished = {i: [] for i in ids}, {i: "" for i in ids}, set()
    for out in run_to_end(engine):
        assert not out.finished or out.request_id not in finished
        tokens[out.request_id] += out.outputs[0].token_ids
        texts[out.request_id] += out.outputs[0].text
        if out.finished:
            finished.add(out.request_id)
    assert finished == set(ids)
    assert [tokens[i] for i in ids] == [o.token_ids for o in final]
    assert [texts[i] for i in ids] == [o.text for o in final]


def test_cumulative_outputs_grow_every_step(engine, prompts):
    rid = engine.add_request(prompts[0], GREEDY)
    lengths = [len(o.token_ids) for o in run_to_end(engine) if o.request_id == rid]
    assert lengths == list(range(1, GREEDY.max_tokens + 1))


def test_prompt_dicts(engine, prompts):
    as_list = engine.generate(prompts[0], GREEDY, use_tqdm=False)[0]
    as_dict = engine.generate({"prompt_token_ids": prompts[0]}, GREEDY, use_tqdm=False)[0]
    assert as_dict.token_ids == as_list.token_ids
    text = engine.generate({"prompt": "abc"}, GREEDY, use_tqdm=False)[0]
    assert text.prompt == "abc"
    for bad, message in [
        ({"prompt_token_ids": prompts[0], "x": 1}, "unknown prompt keys"),
        ({"prompt": "a", "prompt_token_ids": [1]}, "exactly one"),
        ({"prompt_token_ids": "abc"}, "list of ints"),
        ({"prompt_token_ids": [1], "cache_salt": 3}, "cache_salt"),
    ]:
        with pytest.raises(ValueError, match=message):
            engine.add_request(bad, GREEDY)
    assert not engine.has_unfinished_requests()


def test_abort_waiting_running_and_mid_prefill_returns_pages(prompts):
    engine = make_engine(max_model_len=160, num_pages=96, max_num_batched_tokens=8)
    long_prompt = prompts[0] * 3  # 45 tokens: several prefill chunks of 8
    a = engine.add_request(long_prompt, GREEDY)
    b = engine.add_request(prompts[1], GREEDY)
    engine.step()  # a computed 8 of its tokens; b waits for budget
    assert engine.scheduler.running and engine.scheduler.waiting
    outs = engine.abort([a, b, "no-such-id"])
    assert {o.request_id for o in outs} == {a, b}
    assert all(o.finished and o.finish_reason == "abort" for o in outs)
    assert not engine.has_unfinished_requests()
    engine.check_integrity()
    assert engine.kv.pool.num_in_use == 0
    assert engine.kv.cache.num_cached_pages == 2  # a's computed full pages were cached
    again = engine.generate(long_prompt, GREEDY, use_tqdm=False)[0]
    assert again.num_cached_tokens == 8


def test_n_samples_share_the_prompt_and_follow_seeds(engine, prompts):
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)
    out = engine.generate(prompts[2], params, use_tqdm=False)[0]
    assert [o.index for o in out.outputs] == [0, 1, 2] and out.finished
    single = dataclasses.replace(params, n=1, seed=12)
    assert (
        out.outputs[1].token_ids == engine.generate(prompts[2], single, use_tqdm=False)[0].token_ids
    )
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    before = engine.stats()["prefix_cache_hit_tokens"]
    fresh = [*prompts[2], 7, 8, 9, 10, 11, 12, 13, 14]  # two new full pages of 4
    engine.generate(fresh, dataclasses.replace(params, n=2), use_tqdm=False)
    # The second sample waited for the first's prompt pages and reused them.
    # sample 0 hits the 4 pages the first call cached, sample 1 all 6 full pages of its prompt
    assert engine.stats()["prefix_cache_hit_tokens"] - before == 16 + 24
    engine.check_integrity()


def test_logprobs_of_greedy_tokens(engine, prompts):
    params = dataclasses.replace(GREEDY, logprobs=3, max_tokens=5)
    out = engine.generate(prompts[3], params, use_tqdm=False)[0]
    lps = out.outputs[0].logprobs
    assert [lp.token_id for lp in lps] == out.token_ids
    for lp in lps:
        assert len(lp.top) == 3
        assert lp.top[0][0] == lp.token_id and lp.top[0][1] == pytest.approx(lp.logprob)
        assert lp.logprob <= 0 and [v for _, v in lp.top] == sorted(
            (v for _, v in lp.top), reverse=True
        )
    assert out.outputs[0].cumulative_logprob == pytest.approx(sum(lp.logprob for lp in lps))
    plain = engine.generate(prompts[3], GREEDY, use_tqdm=False)[0]
    assert plain.outputs[0].logprobs is None and plain.token_ids[:5] == out.token_ids


def test_min_tokens_masks_stop_tokens(engine, prompts):
    free = engine.generate(prompts[4], GREEDY, use_tqdm=False)[0].token_ids
    stop_at = free[1]
    stopping = SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at])
    early = engine.generate(prompts[4], stopping, use_tqdm=False)[0]
    assert early.finish_reason == "stop" and len(early.token_ids) <= 2
    late = engine.generate(prompts[4], dataclasses.replace(stopping, min_tokens=6), use_tqdm=False)[
        0
    ]
    assert len(late.token_ids) > 6 or late.finish_reason == "length"
    assert stop_at not in late.token_ids[:6]


def test_cache_salt_separates_prefixes(engine):
    base = list(range(40, 72))  # 32 tokens = 8 pages of 4
    engine.generate({"prompt_token_ids": base + [1]}, GREEDY, use_tqdm=False)
    other = engine.generate(
        {"prompt_token_ids": base + [2], "cache_salt": "tenant-a"}, GREEDY, use_tqdm=False
    )[0]
    same = engine.generate(
        {"prompt_token_ids": base + [3], "cache_salt": "tenant-a"}, GREEDY, use_tqdm=False
    )[0]
    plain = engine.generate({"prompt_token_ids": base + [4]}, GREEDY, use_tqdm=False)[0]
    assert other.num_cached_tokens == 0
    assert same.num_cached_tokens == 32 and plain.num_cached_tokens == 32
    engine.check_integrity()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(top_k=2**31), "top_k"),
        (dict(n=0), "n must"),
        (dict(logprobs=21), "logprobs"),
        (dict(min_tokens=5, max_tokens=4), "min_tokens"),
        (dict(max_tokens=True), "max_tokens"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(output_kind="stream"), "output_kind"),
    ],
)
def test_invalid_sampling_values_fail_at_submission(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("lose_cache", [False, True])
def test_a_failing_step_fails_only_its_requests(engine, prompts, monkeypatch, lose_cache):
    reference = engine.generate(prompts[:2], GREEDY, use_tqdm=False)
    real_run = engine.runner.run
    calls = []

    def failing_run(arrays):
        calls.append(1)
        if len(calls) == 3:
            if lose_cache:
                for leaf in jax.tree.leaves(engine.runner.kv_cache):
                    leaf.delete()
            raise RuntimeError("injected step failure")
        return real_run(arrays)

    monkeypatch.setattr(engine.runner, "run", failing_run)
    ids = [engine.add_request(p, GREEDY) for p in prompts[:2]]
    outs = {o.request_id: o for o in run_to_end(engine) if o.finished}
    assert {outs[i].finish_reason for i in ids} == {"error"}
    assert engine.kv.pool.num_in_use == 0
    engine.check_integrity()
    monkeypatch.setattr(engine.runner, "run", real_run)
    again = engine.generate(prompts[:2], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in again] == [o.token_ids for o in reference]
    engine.check_integrity()
