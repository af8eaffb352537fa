"""Where experiments get traces and prompts: one spec string names a file, a bundled trace or a
generator; token prompts for the real engine are built from any trace. Host-only, no jax."""

import os

import numpy as np

from pcjax.sim.generators import GENERATORS, generate
from pcjax.sim.trace import MOONCAKE_TRACES, Trace, load_trace, mooncake_path


def open_trace(
    spec: str,
    *,
    limit: int | None = None,
    traces_dir: str | None = None,
    num_requests: int = 2000,
    seed: int = 0,
    block_tokens: int = 512,
) -> Trace:
    """The trace ``spec`` names, cut to its first ``limit`` requests.

    ``spec`` is a path to a Mooncake or generic JSONL file, a registered Mooncake trace name
    ("conversation", "synthetic", "toolagent"; looked for in ``traces_dir`` first, then as
    `pcjax.sim.trace_registry` says, downloaded when no folder has it) or a generator name
    (`pcjax.sim.generators.GENERATORS`, which then takes ``num_requests``, ``seed`` and
    ``block_tokens``).
    """
    if os.path.isfile(spec):
        return load_trace(spec, limit=limit)
    if spec in MOONCAKE_TRACES:
        return load_trace(mooncake_path(spec, traces_dir), limit=limit, name=spec)
    if spec in GENERATORS:
        trace = generate(spec, num_requests, seed=seed, block_tokens=block_tokens)
        return trace._replace(requests=trace.requests[:limit])
    known = sorted(MOONCAKE_TRACES) + sorted(GENERATORS)
    raise ValueError(f"--trace {spec!r} is neither a file nor one of {known}")


def prompts_from_trace(
    trace: Trace,
    tokens_per_block: int,
    *,
    token_range: tuple[int, int],
    max_blocks: int | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Token-id prompts with the trace's prefix sharing, for the real engine.

    Every block id becomes ``tokens_per_block`` tokens drawn once per id (equal ids: equal
    tokens), so prompts share exactly the blocks the trace says they share; the partial last
    block keeps its fraction of a block. ``max_blocks`` cuts longer prompts. With
    ``tokens_per_block`` a multiple of the engine's page size, blocks are page aligned.
    """
    rng = np.random.default_rng(seed)
    low, high = token_range
    table: dict[int, list[int]] = {}
    prompts = []
    for r in trace.requests:
        ids = r.block_ids[:max_blocks]
        tokens = []
        for b in ids:
            if b not in table:
                table[b] = rng.integers(low, high, tokens_per_block).tolist()
            tokens += table[b]
        scaled = -(-r.input_length * tokens_per_block // trace.block_tokens)
        prompts.append(tokens[: max(1, min(len(tokens), scaled))])
    return prompts
