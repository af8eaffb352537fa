"""The sharded path on this process's one device (a (1, 1) mesh): what the simulated-device
tests do not reach in-process: n > 1 samples with log-probabilities, aborts, and a failing step
that consumed the sharded cache (the engine resets it and goes on)."""

import jax
import numpy as np
import pytest

from pcjax import Engine, SamplingParams, parallel

KWARGS = dict(
    model="pcjax-tiny",
    page_size=4,
    num_pages=40,
    max_model_len=64,
    max_num_seqs=4,
    attention_impl="reference",
    debug=True,
)
PARAMS = SamplingParams(n=2, temperature=0.8, seed=7, max_tokens=5, logprobs=2, ignore_eos=True)


@pytest.fixture(scope="module")
def engines():
    return Engine(**KWARGS), Engine(**KWARGS, mesh=parallel.make_mesh(1, 1))


def prompts():
    rng = np.random.default_rng(3)
    prefix = rng.integers(3, 250, 14).tolist()
    return [prefix + rng.integers(3, 250, 3).tolist() for _ in range(3)]


def summary(outputs):
    return [
        [(s.token_ids, [round(lp.logprob, 4) for lp in s.logprobs]) for s in out.outputs]
        for out in outputs
    ]


def test_samples_and_logprobs_match_the_plain_engine(engines):
    plain, sharded = engines
    assert sharded.mesh is not None and plain.mesh is None
    expected = summary(plain.generate(prompts(), PARAMS, use_tqdm=False))
    assert summary(sharded.generate(prompts(), PARAMS, use_tqdm=False)) == expected


def test_a_step_that_loses_the_cache_fails_its_requests_only(engines, monkeypatch):
    _, engine = engines
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    reference = [o.token_ids for o in engine.generate(prompts(), greedy, use_tqdm=False)]
    real_run, calls = engine.runner.run, []

    def failing_run(arrays, tokens=None):
        calls.append(1)
        if len(calls) == 2:
            for leaf in jax.tree.leaves(engine.runner.kv_cache):
                leaf.delete()
            raise RuntimeError("injected step failure")
        return real_run(arrays, tokens)

    monkeypatch.setattr(engine.runner, "run", failing_run)
    ids = [engine.add_request(p, greedy) for p in prompts()]
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert {finished[i].outputs[0].finish_reason for i in ids} == {"error"}
    engine.check_integrity()
    assert engine.stats()["in_use_pages"] == 0 and engine.stats()["cached_pages"] == 0
    monkeypatch.setattr(engine.runner, "run", real_run)
    again = [o.token_ids for o in engine.generate(prompts(), greedy, use_tqdm=False)]
    assert again == reference


def test_abort_returns_a_replicas_pages(engines):
    _, engine = engines
    rid = engine.add_request(prompts()[0], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    [out] = engine.abort(rid)
    assert out.outputs[0].finish_reason == "abort" and not engine.has_unfinished_requests()
    engine.check_integrity()
    assert engine.stats()["in_use_pages"] == 0
