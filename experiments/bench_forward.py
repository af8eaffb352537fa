"""Speed of one jitted `pcjax.models.forward`: a batched decode step and a one-sequence prefill.

Decode: B sequences of `--context` tokens each compute one token (the LM head for B rows); with
`--shared_prefix` their first tokens' pages are common to all, as prefix caching serves a shared
system prompt (`bench_prefix_cache`'s workload).
Prefill: one sequence computes `--prefill` tokens (the LM head for its last row). The KV cache is
donated as the engine does. Each timing is interleaved with a "weights read" reference (a jitted
sum over every param), which is the memory-bound floor of a decode step on this machine at this
moment: on a shared machine, compare against it rather than against absolute numbers.

With ``--parts`` each step is also split into what its parts take alone: the projections (every
layer's q/k/v, o, gate/up and down matmuls plus the LM head, with the dot the step uses) and the
attention (every layer's ragged paged attention over the step's pages); "rest" is the step less
both (norms, RoPE, KV writes, the embedding, XLA's per-op host overhead).

    python -m experiments.bench_forward --model=pcjax-small --dtype=float32
    python -m experiments.bench_forward --model=smollm2-135m --attention_impl=cpu --parts
    python -m experiments.bench_forward --model=smollm2-135m --attention_impl=cpu --parts \
        --shared_prefix=512
    python -m experiments.bench_forward --xla_options='{"xla_cpu_...": "..."}'  # '{}': none
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pcjax import kernels, models
from pcjax.cache.kv_pages import allocate_kv_cache
from pcjax.kernels import AttentionMetadata, xla_cpu
from pcjax.models.transformer import projection_dot

_MODEL = flags.DEFINE_string("model", "pcjax-small", "preset name or HF checkpoint directory")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "params/activations/KV")
_BATCH = flags.DEFINE_integer("batch", 8, "decode: sequences per step (B)")
_CONTEXT = flags.DEFINE_integer("context", 600, "decode: kv tokens of each sequence")
_PREFILL = flags.DEFINE_integer("prefill", 512, "prefill: tokens of the one sequence")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "tokens per KV page (P)")
_SHARED = flags.DEFINE_integer(
    "shared_prefix", 0, "decode: leading kv tokens whose pages all B sequences share (whole pages)"
)
_IMPL = flags.DEFINE_string(
    "attention_impl", "reference", "ragged paged attention impl (cpu: cpu_native where it builds)"
)
_PARTS = flags.DEFINE_bool("parts", False, "also time the projections and the attention alone")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "timed rounds (each runs every variant once)")
_XLA_OPTIONS = flags.DEFINE_string(
    "xla_options", "", "JSON dict of XLA compiler options (default: the engine's; '{}': none)"
)
_OUT = flags.DEFINE_string("out", "", "write the results as JSON here")


def step_inputs(
    lengths: list[int], q_lens: list[int], page_size: int, num_pages: int, shared=0, seed=0
):
    """(tokens, positions, md, logits_indices) for sequences with these kv and query lengths,
    whose page tables begin with the same ``shared`` pages (a prefix-cache hit), the rest their
    own (random) pages."""
    pages_per_seq = -(-max(lengths) // page_size)
    pages = np.random.default_rng(seed).permutation(np.arange(1, num_pages))
    own = pages[shared:][: len(lengths) * (pages_per_seq - shared)].reshape(len(lengths), -1)
    common = np.broadcast_to(pages[:shared], (len(lengths), shared))
    table = np.concatenate([common, own], axis=1).astype(np.int32)
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


def _step_cache(model, lengths, q_lens):
    """(kv cache, tokens, positions, md, logits_indices) of one step's sequences; a decode's
    sequences share `--shared_prefix` tokens of pages."""
    cfg, page_size = model.config, _PAGE_SIZE.value
    shared = _SHARED.value // page_size if len(lengths) > 1 else 0
    num_pages = len(lengths) * (-(-max(lengths) // page_size) - shared) + shared + 1
    kv = allocate_kv_cache(
        cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim, model.dtype
    )
    return kv, *step_inputs(lengths, q_lens, page_size, num_pages, shared)


def make_step(model, impl, lengths, q_lens, compiler_options):
    """A no-argument function running one forward (the KV cache donated and carried along)."""
    kv, tokens, positions, md, last = _step_cache(model, lengths, q_lens)
    forward = jax.jit(
        functools.partial(models.forward, model.graphdef, attention_impl=impl),
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


def make_projections(model, impl, lengths, q_lens, compiler_options):
    """A no-argument function running the step's projections alone: every layer's fused q/k/v,
    o, gate/up and down matmuls on the step's T rows and the LM head on its R logits rows, with
    the dot the step picks for those row counts (`projection_dot`)."""
    cfg = model.config
    rows = sum(q_lens)
    logits_rows = len(lengths)
    widths = {"d": cfg.hidden_size, "nh": cfg.num_heads * cfg.head_dim}
    widths["f"] = cfg.intermediate_size
    inputs = {name: jnp.full((rows, w), 0.01, model.dtype) for name, w in widths.items()}
    head_input = jnp.full((logits_rows, cfg.hidden_size), 0.01, model.dtype)

    def projections(params, inputs, head_input):
        module = nnx.merge(model.graphdef, params)
        dot = projection_dot(impl, rows)
        total = jnp.float32(0)
        for layer in module.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear, x in (
                (attn.qkv_proj, inputs["d"]),
                (attn.o_proj, inputs["nh"]),
                (mlp.gate_up_proj, inputs["d"]),
                (mlp.down_proj, inputs["f"]),
            ):
                total += jnp.sum(linear(x, dot).astype(jnp.float32))
        logits = module.logits(head_input, projection_dot(impl, logits_rows))
        return total + jnp.sum(logits)

    run = jax.jit(projections, compiler_options=compiler_options)
    return lambda: run(model.params, inputs, head_input).block_until_ready()


def make_attention(model, impl, lengths, q_lens, compiler_options):
    """A no-argument function running every layer's ragged paged attention of the step alone
    (its q rows against the step's pages, as `forward` calls it)."""
    cfg = model.config
    kv, tokens, _, md, _ = _step_cache(model, lengths, q_lens)
    q = jnp.full((len(tokens), cfg.num_heads, cfg.head_dim), 0.01, model.dtype)

    def attention(q, kv, md):
        total = jnp.float32(0)
        for layer in range(cfg.num_layers):
            out = kernels.ragged_paged_attention(
                q,
                kv.k[layer],
                kv.v[layer],
                md,
                sm_scale=cfg.head_dim**-0.5,
                sliding_window=cfg.layer_window(layer),
                impl=impl,
            )
            total += jnp.sum(out.astype(jnp.float32))
        return total

    run = jax.jit(attention, compiler_options=compiler_options)
    return lambda: run(q, kv, md).block_until_ready()


_COPY_BYTES = 256 << 20


def memory_copy():
    """A no-argument function copying 256 MiB in host memory (read + write: 512 MiB moved)."""
    src, dst = np.ones(_COPY_BYTES // 4, np.float32), np.empty(_COPY_BYTES // 4, np.float32)
    return lambda: np.copyto(dst, src)


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
    options = json.loads(_XLA_OPTIONS.value) if _XLA_OPTIONS.value else xla_cpu.compiler_options()
    model = models.load(_MODEL.value, _DTYPE.value)
    impl = kernels.resolve_attention_impl(_IMPL.value, jax.default_backend())
    batch, context, prefill = _BATCH.value, _CONTEXT.value, _PREFILL.value
    steps = {
        f"decode_B{batch}_ctx{context}": ([context] * batch, [1] * batch),
        f"prefill_T{prefill}": ([prefill], [prefill]),
    }
    fns = {"weights_read": weights_read(model), "copy_256MiB": memory_copy()}
    for name, (lengths, q_lens) in steps.items():
        fns[name] = make_step(model, impl, lengths, q_lens, options)
        if _PARTS.value:
            fns[f"{name}/projections"] = make_projections(model, impl, lengths, q_lens, options)
            fns[f"{name}/attention"] = make_attention(model, impl, lengths, q_lens, options)
    results = interleaved(fns, _ROUNDS.value)
    if _PARTS.value:
        for name in steps:
            parts = (
                results[f"{name}/projections"]["median_ms"]
                + results[f"{name}/attention"]["median_ms"]
            )
            results[f"{name}/rest"] = {"median_ms": results[name]["median_ms"] - parts}
    # The weight-read floor: the weights' bytes at the memory bandwidth a plain copy reaches
    # (bytes read + written over its fastest time: on a shared machine the median copy is as
    # noisy as the step); the decode step also reads its KV pages.
    bandwidth = 2 * _COPY_BYTES / (results["copy_256MiB"]["min_ms"] * 1e-3)
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    cfg = model.config
    kv_tokens = batch * (context - _SHARED.value) + _SHARED.value  # each shared page read once
    kv_bytes = (2 * cfg.num_layers * kv_tokens * cfg.num_kv_heads * cfg.head_dim) * jnp.dtype(
        model.dtype
    ).itemsize
    floor = 1e3 * params_bytes / bandwidth
    decode = f"decode_B{batch}_ctx{context}"
    results["floor"] = {
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "weights_mb": params_bytes / 1e6,
        "decode_kv_mb": kv_bytes / 1e6,
        "weights_read_floor_ms": floor,
        "decode_weights_and_kv_floor_ms": 1e3 * (params_bytes + kv_bytes) / bandwidth,
        "decode_over_weights_floor": results[decode]["median_ms"] / floor,
    }
    print(
        f"{_MODEL.value} {_DTYPE.value} ({impl}): {cfg.param_count() / 1e6:.1f}M params, "
        f"{params_bytes / 1e6:.0f} MB; copy bandwidth {bandwidth / 1e9:.1f} GB/s: weight-read "
        f"floor {floor:.1f} ms, + decode KV ({kv_bytes / 1e6:.0f} MB) "
        f"{results['floor']['decode_weights_and_kv_floor_ms']:.1f} ms"
    )
    for name, r in results.items():
        if name == "floor":
            continue
        low = f"min {r['min_ms']:8.1f} ms   " if "min_ms" in r else " " * 19
        ratio = f"   {r['median_ms'] / floor:.1f}x floor" if name in steps else ""
        print(f"  {name:36s} {low}median {r['median_ms']:8.1f} ms{ratio}")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"flags": flags.FLAGS.flag_values_dict(), "results": results}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
