r"""Host tier benchmark: TTFT of one long-prefix request with its prefix on device, on host only, or
nowhere (recomputed), and the bandwidth of the offload / load paths against raw ``device_put``.

After an untimed warm-up pass over every prefix length (compiles every shape), each repeat of
each prefix length takes a fresh random prefix and runs requests of ``prefix + a new suffix``
alone, one token each (so TTFT is the whole request):

* recompute: the prefix is nowhere (a new one);
* device: the same prefix again, now cached on device;
* host: every device page is evicted (moved to the host) and the prefix is loaded back at
  admission; both copies are timed to completion (``in_run_*`` in the JSON, per page).

Bandwidth, per prefix length, while the prefix is on both tiers (so the copies are idempotent):
rounds of raw ``jax.device_put`` of one contiguous array of the prefix's bytes device -> host
memory kind, the offload path (the engine's `HostTransfers` on the prefix's pages), raw
``device_put`` host -> device, the load path, interleaved so each sees the same machine load;
medians. The crossover is the shortest tested prefix from which on a host hit's TTFT beats
recomputing.

    python -m experiments.bench_offload --workdir=workdir/bench_offload
    python -m experiments.bench_offload --model=pcjax-tiny --prefix_lens=16,64,256 --repeats=2

Writes ``bench_offload.json`` to --workdir and prints a table.
"""

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from pcjax import Engine, SamplingParams, models
from pcjax.cache import host_kv, kv_pages

_MODEL = flags.DEFINE_string("model", "pcjax-small", "Preset name or Hugging Face model directory.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_offload", "Where results go.")
_PREFIX_LENS = flags.DEFINE_list(
    "prefix_lens", ["16", "64", "256", "1024", "2048"], "Prefix lengths (tokens) to time."
)
_SUFFIX_LEN = flags.DEFINE_integer("suffix_len", 16, "New tokens after the prefix.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per prefix length (median kept).")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "KV page size.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation and KV dtype.")
_IMPL = flags.DEFINE_string("attention_impl", "auto", "Attention implementation.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random prompts.")
_BW_REPS = flags.DEFINE_integer("bandwidth_repeats", 9, "Interleaved rounds of the copy timings.")

ONE_TOKEN = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    lengths = sorted(int(n) for n in _PREFIX_LENS.value)
    engine = _build_engine(max(lengths))
    timer = TransferTimer(engine)
    rng = np.random.default_rng(_SEED.value)
    for n in lengths:  # warm-up: compiles every shape of the timed runs
        _run_length(engine, timer, rng, n, repeats=1)
    rows = [_run_length(engine, timer, rng, n, _REPEATS.value) for n in lengths]
    results = {
        "config": _describe(engine),
        "rows": rows,
        "crossover_prefix_len": crossover(rows),
    }
    path = os.path.join(_WORKDIR.value, "bench_offload.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    print(f"wrote {path}")


def _build_engine(max_prefix: int) -> Engine:
    """One sequence at a time, room on device for two requests, on host for four."""
    P = _PAGE_SIZE.value
    seq_pages = -(-(max_prefix + _SUFFIX_LEN.value + 1) // P)
    mc = _model_config(_MODEL.value)
    page_bytes = kv_pages.page_bytes(mc.num_layers, P, mc.num_kv_heads, mc.head_dim, _DTYPE.value)
    return Engine(
        model=_MODEL.value,
        page_size=P,
        max_model_len=seq_pages * P,
        num_pages=2 * seq_pages + 1,
        max_num_seqs=1,
        max_num_batched_tokens=max(2048, seq_pages * P),
        dtype=_DTYPE.value,
        attention_impl=_IMPL.value,
        swap_space=(4 * seq_pages + 2) * page_bytes / 1e9,
    )


def _model_config(model: str):
    if model in models.PRESETS:
        return models.PRESETS[model].config
    with open(os.path.join(model, "config.json")) as f:
        return models.ModelConfig.from_hf_config(json.load(f))


class TransferTimer:
    """Wraps the engine's transfer so every copy batch is timed to completion."""

    def __init__(self, engine: Engine):
        self.inner = engine.kv.transfer
        self.page_bytes = self.inner.page_bytes
        self.runner = engine.runner
        self.records: list[tuple[str, list, float]] = []  # (direction, pairs, seconds)
        engine.kv.transfer = self

    def wait(self) -> None:
        jax.block_until_ready((self.runner.kv_cache, self.inner.host_kv))

    def __call__(self, offloads, loads):
        self.wait()
        for direction, pairs in (("out", offloads), ("in", loads)):
            if pairs:
                start = time.perf_counter()
                self.inner(*((pairs, []) if direction == "out" else ([], pairs)))
                self.wait()
                self.records.append((direction, pairs, time.perf_counter() - start))
        if not offloads and not loads:
            self.inner([], [])

    def take(self, direction: str) -> tuple[list, float]:
        """Pairs copied in ``direction`` since the last take, and the seconds it took."""
        mine = [r for r in self.records if r[0] == direction]
        self.records = [r for r in self.records if r[0] != direction]
        return [pair for r in mine for pair in r[1]], sum(r[2] for r in mine)

    def stats(self) -> dict:
        return self.inner.stats()


def _run_length(engine: Engine, timer: TransferTimer, rng, prefix_len: int, repeats: int) -> dict:
    vocab = engine.model.config.vocab_size

    def tokens(n):
        return rng.integers(3, vocab, n).tolist()

    samples = {"recompute": [], "device": [], "host": [], "out_s": [], "in_s": []}
    for repeat in range(repeats):
        prefix = tokens(prefix_len)
        ttft = {}
        ttft["recompute"] = _ttft(engine, prefix + tokens(_SUFFIX_LEN.value))
        ttft["device"] = _ttft(engine, prefix + tokens(_SUFFIX_LEN.value))
        timer.take("out"), timer.take("in")
        tree = engine.kv.cache
        tree.evict(tree.num_evictable_pages)
        engine.kv.flush()
        offloads, out_s = timer.take("out")
        host_before = engine.stats()["prefix_cache_host_hit_tokens"]
        ttft["host"] = _ttft(engine, prefix + tokens(_SUFFIX_LEN.value))
        loads, in_s = timer.take("in")
        assert engine.stats()["prefix_cache_host_hit_tokens"] - host_before == len(loads) * (
            engine.config.page_size
        ), "the host hit was not loaded from the host"
        if repeat == repeats - 1:  # the prefix is on both tiers now: copies are idempotent
            paths = measure_paths(timer, loads, _BW_REPS.value)
        tree.reset()
        for key, value in ttft.items():
            samples[key].append(value)
        samples["out_s"].append(out_s / len(offloads))
        samples["in_s"].append(in_s / len(loads))
    return _summarize(prefix_len, len(loads), samples, paths, timer.page_bytes)


def _ttft(engine: Engine, prompt: list[int]) -> float:
    (out,) = engine.generate([prompt], ONE_TOKEN, use_tqdm=False)
    return out.ttft_s


def measure_paths(timer: TransferTimer, loads: list, reps: int) -> dict:
    """Medians over ``reps`` interleaved rounds of: raw device_put device -> host of the prefix's
    bytes (one contiguous array), the offload path on its pages (the engine's `HostTransfers`),
    raw device_put host -> device, the load path. Returns seconds per kind."""
    device = jax.devices()[0]
    to_device = jax.sharding.make_single_device_sharding(device)
    to_host = to_device.with_memory_kind(host_kv.host_memory_kind(device))
    x = jax.device_put(np.ones(len(loads) * timer.page_bytes // 4, np.float32), to_device)
    x_host = jax.device_put(x, to_host)
    offloads = [(page, slot) for slot, page in loads]
    kinds = {
        "raw_d2h": lambda: jax.block_until_ready(jax.device_put(x, to_host)),
        "offload": lambda: (timer.inner(offloads, []), timer.wait()),
        "raw_h2d": lambda: jax.block_until_ready(jax.device_put(x_host, to_device)),
        "load": lambda: (timer.inner([], loads), timer.wait()),
    }
    times = {kind: [] for kind in kinds}
    for _ in range(reps):
        for kind, fn in kinds.items():
            start = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def _summarize(prefix_len, num_pages, samples, paths, page_bytes) -> dict:
    med = {k: statistics.median(v) for k, v in samples.items()}
    nbytes = num_pages * page_bytes
    gbps = {kind: nbytes / seconds / 1e9 for kind, seconds in paths.items()}
    return {
        "prefix_len": prefix_len,
        "ttft_recompute_s": med["recompute"],
        "ttft_device_s": med["device"],
        "ttft_host_s": med["host"],
        "host_wins": med["host"] < med["recompute"],
        "prefix_pages": num_pages,
        "prefix_bytes": nbytes,
        "raw_d2h_gbps": gbps["raw_d2h"],
        "offload_gbps": gbps["offload"],
        "offload_fraction_of_raw": gbps["offload"] / gbps["raw_d2h"],
        "raw_h2d_gbps": gbps["raw_h2d"],
        "load_gbps": gbps["load"],
        "load_fraction_of_raw": gbps["load"] / gbps["raw_h2d"],
        "in_run_offload_gbps": page_bytes / med["out_s"] / 1e9,
        "in_run_load_gbps": page_bytes / med["in_s"] / 1e9,
        "samples": samples,
    }


def _describe(engine: Engine) -> dict:
    cfg = engine.config
    return {
        "model": cfg.model,
        "page_size": cfg.page_size,
        "page_bytes": engine.kv.transfer.page_bytes,
        "dtype": cfg.dtype,
        "attention_impl": engine.attention_impl,
        "suffix_len": _SUFFIX_LEN.value,
        "repeats": _REPEATS.value,
        "swap_space_gb": cfg.swap_space,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def crossover(rows: list[dict]) -> int | None:
    """The shortest tested prefix length from which on (rows ascending) the host hit wins."""
    winning = None
    for row in rows:
        winning = (winning or row["prefix_len"]) if row["host_wins"] else None
    return winning


def print_table(results: dict) -> None:
    cfg = results["config"]
    print(
        f"model {cfg['model']}, page {cfg['page_size']} tokens = {cfg['page_bytes']} bytes, "
        f"{cfg['backend']}, load average {cfg['load_average'][0]:.1f} on {cfg['cpu_count']} cores"
    )
    print(f"{'TTFT (ms)':>34}   {'GB/s, medians of interleaved rounds':>50}")
    print(
        f"{'prefix':>7} {'recompute':>9} {'device':>7} {'host':>7}   {'raw d2h':>7} {'offload':>7} "
        f"{'frac':>5}   {'raw h2d':>7} {'load':>7} {'frac':>5}"
    )
    for r in results["rows"]:
        print(
            f"{r['prefix_len']:>7} {1e3 * r['ttft_recompute_s']:>9.1f} "
            f"{1e3 * r['ttft_device_s']:>7.1f} {1e3 * r['ttft_host_s']:>7.1f}   "
            f"{r['raw_d2h_gbps']:>7.2f} {r['offload_gbps']:>7.2f} "
            f"{r['offload_fraction_of_raw']:>5.2f}   {r['raw_h2d_gbps']:>7.2f} "
            f"{r['load_gbps']:>7.2f} {r['load_fraction_of_raw']:>5.2f}"
        )
    crossover = results["crossover_prefix_len"]
    if crossover is None:
        print("crossover: no tested prefix length has a host hit beating recompute")
    else:
        print(f"crossover: a host hit beats recompute from prefix length {crossover} on")


if __name__ == "__main__":
    app.run(main)
