"""Speed of one jitted `pcjax.models.forward`: a batched decode step and a one-sequence prefill.

Decode: B sequences of `--context` tokens each compute one token (the LM head for B rows).
Prefill: one sequence computes `--prefill` tokens (the LM head for its last row). The KV cache is
donated as the engine does. Each timing is interleaved with a "weights read" reference (a jitted
sum over every param), which is the memory-bound floor of a decode step on this machine at this
moment: on a shared machine, compare against it rather than against absolute numbers.

    PYTHONPATH=. python experiments/bench_forward.py --model=pcjax-small --dtype=float32
    PYTHONPATH=. python experiments/bench_forward.py --xla_options='{"xla_cpu_...": "..."}'
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pcjax import models
from pcjax.cache.kv_pages import allocate_kv_cache
from pcjax.kernels import AttentionMetadata

_MODEL = flags.DEFINE_string("model", "pcjax-small", "preset name or HF checkpoint directory")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "params/activations/KV")
_BATCH = flags.DEFINE_integer("batch", 8, "decode: sequences per step (B)")
_CONTEXT = flags.DEFINE_integer("context", 600, "decode: kv tokens of each sequence")
_PREFILL = flags.DEFINE_integer("prefill", 512, "prefill: tokens of the one sequence")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "tokens per KV page (P)")
_IMPL = flags.DEFINE_string("attention_impl", "reference", "ragged paged attention impl")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "timed rounds (each runs every variant once)")
_XLA_OPTIONS = flags.DEFINE_string("xla_options", "", "JSON dict of XLA compiler options")
_OUT = flags.DEFINE_string("out", "", "write the results as JSON here")


def step_inputs(lengths: list[int], q_lens: list[int], page_size: int, num_pages: int, seed=0):
    """(tokens, positions, md, logits_indices) for sequences with these kv and query lengths."""
    pages_per_seq = -(-max(lengths) // page_size)
    pages = np.random.default_rng(seed).permutation(np.arange(1, num_pages))
    table = pages[: len(lengths) * pages_per_seq].reshape(len(lengths), -1).astype(np.int32)
    positions = np.concatenate([np.arange(n - q, n) for n, q in zip(lengths, q_lens, strict=True)])
    seq = np.repeat(np.arange(len(lengths)), q_lens)
    slots = table[seq, positions // page_size] * page_size + positions % page_size
    cu_q_lens = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    md = AttentionMetadata(
        slot_mapping=slots.astype(np.int32),
        page_table=table,
        kv_lens=np.array(lengths, np.int32),
        cu_q_lens=cu_q_lens,
        max_q_len=max(q_lens),
    )
    tokens = (positions * 7 + seq) % 256
    return tokens.astype(np.int32), positions.astype(np.int32), md, cu_q_lens[1:] - 1


def make_step(model, lengths, q_lens, compiler_options):
    """A no-argument function running one forward (the KV cache donated and carried along)."""
    cfg, page_size = model.config, _PAGE_SIZE.value
    num_pages = len(lengths) * -(-max(lengths) // page_size) + 1
    kv = allocate_kv_cache(
        cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim, model.dtype
    )
    tokens, positions, md, last = step_inputs(lengths, q_lens, page_size, num_pages)
    forward = jax.jit(
        functools.partial(models.forward, model.graphdef, attention_impl=_IMPL.value),
        donate_argnums=3,
        compiler_options=compiler_options,
    )
    state = {"kv": kv}

    def run():
        logits, state["kv"] = forward(
            model.params, tokens, positions, state["kv"], md, logits_indices=last
        )
        logits.block_until_ready()

    return run


def weights_read(model):
    total = jax.jit(lambda p: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(p)))
    return lambda: total(model.params).block_until_ready()


def interleaved(fns: dict, rounds: int) -> dict:
    """Runs every fn once per round (after a compile + warm-up run); min and median ms."""
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        print(f"{name}: first call (compile) {time.perf_counter() - start:.1f} s")
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: {"min_ms": min(t), "median_ms": float(np.median(t))} for name, t in times.items()}


def main(argv):
    del argv
    options = json.loads(_XLA_OPTIONS.value) if _XLA_OPTIONS.value else None
    model = models.load(_MODEL.value, _DTYPE.value)
    batch, context, prefill = _BATCH.value, _CONTEXT.value, _PREFILL.value
    fns = {
        "weights_read": weights_read(model),
        f"decode_B{batch}_ctx{context}": make_step(model, [context] * batch, [1] * batch, options),
        f"prefill_T{prefill}": make_step(model, [prefill], [prefill], options),
    }
    results = interleaved(fns, _ROUNDS.value)
    params_mb = sum(x.nbytes for x in jax.tree.leaves(model.params)) / 1e6
    print(
        f"{_MODEL.value} {_DTYPE.value}: {model.config.param_count() / 1e6:.1f}M params, "
        f"{params_mb:.0f} MB"
    )
    for name, r in results.items():
        print(f"  {name:24s} min {r['min_ms']:8.1f} ms   median {r['median_ms']:8.1f} ms")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"flags": flags.FLAGS.flag_values_dict(), "results": results}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
