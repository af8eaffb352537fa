from experiments.replay_timing import timed_replays
from pcjax.sim.generators import generate
from pcjax.sim.replay import replay


def test_timed_replays_take_turns_and_keep_the_hit_rates():
    trace = generate("chat", 60, block_tokens=64)
    runs = timed_replays(trace, 40, ["lru", "deadline"], repeats=2)
    assert list(runs) == ["lru", "deadline"]
    for policy, run in runs.items():
        assert len(run["wall_s"]) == len(run["cpu_s"]) == 2
        assert all(t > 0 for t in run["wall_s"] + run["cpu_s"])
        assert run["token_hit_rate"] == replay(trace, 40, policy).token_hit_rate
