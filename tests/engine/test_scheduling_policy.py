"""Scheduling for hits (issue 15 item 3): "lpm" admits the longest cached prefix first, and its
aging bound admits a miss that waits behind a stream of hits within ``aging_steps`` steps."""

import argparse

import pytest

from pcjax import EngineConfig, SamplingParams
from pcjax.cache.page_pool import PagePool
from pcjax.cache.radix_tree import RadixTree
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.request import Request
from pcjax.engine.scheduler import Scheduler
from pcjax.entrypoints.openai.args import add_server_args, engine_config
from tests.engine.conftest import GREEDY, make_engine, shared_prefix_prompts

P = 4
HOT = list(range(10, 10 + 3 * P))  # a prefix every hit request shares


def _scheduler(policy: str, aging_steps: int = 32) -> Scheduler:
    pool = PagePool(64)
    kv = KVManager(pool, RadixTree(pool, P), P, caching=True)
    return Scheduler(
        kv, max_num_seqs=1, max_num_batched_tokens=256, policy=policy, aging_steps=aging_steps
    )


def _request(name: str, tokens: list[int]) -> Request:
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    return Request(name, tokens, params, seed=0, stop_token_ids=frozenset())


def _run_step(scheduler: Scheduler) -> list[str]:
    """Schedules one step and completes it as the engine would: every admitted prompt is
    computed, cached and finished (max_tokens=1). Returns the admitted requests' ids."""
    admitted = [req for req, _ in scheduler.schedule().entries]
    for req in admitted:
        req.num_computed_tokens = len(req.prompt_token_ids)
        scheduler.kv.cache_computed(req)
        scheduler.finish(req)
    scheduler.kv.check_integrity(scheduler.running)
    return [req.request_id for req in admitted]


def _warm(scheduler: Scheduler) -> None:
    scheduler.add(_request("warm", HOT + [1]))
    assert _run_step(scheduler) == ["warm"]


@pytest.mark.parametrize(("policy", "first"), [("fcfs", "miss"), ("lpm", "hit")])
def test_lpm_admits_the_longest_cached_prefix_first(policy, first):
    scheduler = _scheduler(policy)
    _warm(scheduler)
    scheduler.add(_request("miss", list(range(200, 212)) + [1]))
    scheduler.add(_request("hit", HOT + [5, 6]))
    assert _run_step(scheduler) == [first]
    assert len(_run_step(scheduler)) == 1 and not scheduler.has_unfinished()


def _steps_until_admitted(scheduler: Scheduler, limit: int) -> int | None:
    """A miss waits while one new hit arrives every step; the step the miss is admitted at."""
    scheduler.add(_request("miss", list(range(200, 212)) + [1]))
    scheduler.add(_request("hit0", HOT + [7]))
    for step in range(1, limit + 1):
        scheduler.add(_request(f"hit{step}", HOT + [7 + step]))
        if "miss" in _run_step(scheduler):
            return step
    return None


@pytest.mark.parametrize("aging_steps", [1, 5, 12])
def test_aging_admits_a_miss_behind_a_stream_of_hits(aging_steps):
    scheduler = _scheduler("lpm", aging_steps)
    _warm(scheduler)
    step = _steps_until_admitted(scheduler, limit=3 * aging_steps + 5)
    assert step is not None and step <= aging_steps + 1


def test_without_aging_the_miss_would_wait_behind_the_hits():
    scheduler = _scheduler("lpm", aging_steps=10_000)
    _warm(scheduler)
    assert _steps_until_admitted(scheduler, limit=30) is None


def test_scheduling_policy_is_validated_and_has_a_server_flag():
    with pytest.raises(ValueError, match="scheduling_policy"):
        EngineConfig(scheduling_policy="sjf")
    with pytest.raises(ValueError, match="scheduling_aging_steps"):
        EngineConfig(scheduling_aging_steps=0)
    parser = argparse.ArgumentParser()
    add_server_args(parser)
    args = parser.parse_args(
        ["--model", "pcjax-tiny", "--scheduling-policy", "lpm", "--scheduling-aging-steps", "7"]
    )
    cfg = engine_config(args)
    assert (cfg.scheduling_policy, cfg.scheduling_aging_steps) == ("lpm", 7)


def test_lpm_engine_generates_what_fcfs_does():
    prompts = shared_prefix_prompts(1, num=8)
    outputs = {}
    for policy in ("fcfs", "lpm"):
        engine = make_engine(scheduling_policy=policy, max_num_seqs=2)
        assert engine.scheduler.policy == policy
        outputs[policy] = [o.token_ids for o in engine.generate(prompts, GREEDY, use_tqdm=False)]
    assert outputs["lpm"] == outputs["fcfs"]


def test_the_sharded_engine_schedulers_get_the_policy():
    """A (1, 1) mesh runs the sharded path (`pcjax.parallel.build_parts`) on one CPU device."""
    import jax

    from pcjax import parallel

    mesh = parallel.make_mesh(1, 1, jax.local_devices()[:1])
    engine = make_engine(scheduling_policy="lpm", scheduling_aging_steps=5, mesh=mesh)
    assert (engine.scheduler.policy, engine.scheduler.aging_steps) == ("lpm", 5)
