"""Named sweeps of ``experiments/compare_eviction.py`` (``--sweep=<name>``): the runs behind the
eviction-policy table and the notebook. Flags given on the command line override a sweep."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvictionSweep:
    """Flag values of one `compare_eviction` run (see its flags for the meaning)."""

    trace: tuple[str, ...]
    capacities_tokens: tuple[int, ...] = (1_000_000, 3_000_000, 10_000_000)
    mode: str = "sequential"
    host_capacity_tokens: int = 10_000_000
    num_requests: int = 2000
    policies: tuple[str, ...] = ()  # empty: every policy and bound

    def __post_init__(self):
        if not self.trace or not self.capacities_tokens:
            raise ValueError("a sweep needs traces and capacities")
        if any(c <= 0 for c in self.capacities_tokens):
            raise ValueError(f"capacities must be positive, got {self.capacities_tokens}")


MOONCAKE = ("conversation", "synthetic")
GENERATORS = ("chat", "mixed", "agent", "system_prompts", "few_shot", "tree_of_thought")
ROBUSTNESS_POLICIES = (
    *("lru", "fifo", "lfu", "slru", "s3fifo", "gdsf", "deadline", "learned_hold", "adaptive"),
    "belady",
)

SWEEPS = {
    "mooncake": EvictionSweep(MOONCAKE),
    "timed": EvictionSweep(MOONCAKE, mode="timed"),
    "two_tier": EvictionSweep(MOONCAKE, capacities_tokens=(1_000_000, 3_000_000), mode="two_tier"),
    "generators": EvictionSweep(
        GENERATORS, capacities_tokens=(500_000, 1_000_000, 3_000_000), num_requests=5000
    ),
    # every trace and generator x 0.5M-10M tokens x every online policy + Belady: the
    # robustness table (worst loss against LRU, mean fraction of Belady; pcjax.sim.robustness)
    "robustness": EvictionSweep(
        (*MOONCAKE, *GENERATORS, "agentic"),
        capacities_tokens=(500_000, 1_000_000, 3_000_000, 10_000_000),
        policies=ROBUSTNESS_POLICIES,
        num_requests=5000,
    ),
    "engine": EvictionSweep(("chat",), capacities_tokens=(2048,), mode="engine", num_requests=160),
}


def get_config(name: str = "mooncake") -> EvictionSweep:
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; known: {sorted(SWEEPS)}")
    return SWEEPS[name]
