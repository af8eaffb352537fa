"""A sharded engine over all local devices of a GPU/TPU, against the plain engine on one device
(`attention_impl="pallas"`): same greedy tokens, with prefix caching, eviction and the host tier
in real ``pinned_host`` memory. Marked `accelerator`: skipped, saying why, on CPU. On one device
the mesh is (1, 1) and still runs the sharded path (shard_map, per-replica layout, host copies).
"""

import jax
import numpy as np
import pytest

from pcjax import Engine, SamplingParams, parallel

pytestmark = pytest.mark.accelerator

KWARGS = dict(
    model="pcjax-tiny-tp",
    page_size=4,
    num_pages=26,
    max_model_len=96,
    max_num_seqs=4,
    swap_space=1e-4,
    attention_impl="pallas",
    debug=True,
)
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def local_mesh():
    """(D, T) over every local device, T as large as the model's 8 heads allow."""
    n = jax.local_device_count()
    t = max(t for t in (1, 2, 4, 8) if n % t == 0)
    return parallel.make_mesh(n // t, t, jax.local_devices())


def prompts():
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(3, 256, 36).tolist() for _ in range(2)]
    return [p + rng.integers(3, 256, int(rng.integers(2, 9))).tolist() for p in prefixes * 3]


def test_sharded_engine_over_all_local_devices_matches_one_device():
    reference = [o.token_ids for o in Engine(**KWARGS).generate(prompts(), GREEDY, use_tqdm=False)]
    mesh = local_mesh()
    d, t = mesh.shape["data"], mesh.shape["model"]
    engine = Engine(**KWARGS, data_parallel_size=d, tensor_parallel_size=t, mesh=mesh)
    for _ in range(2):  # the second round over the warm cache (device and host tiers)
        outputs = engine.generate(prompts(), GREEDY, use_tqdm=False)
        assert [o.token_ids for o in outputs] == reference, f"mesh {d}x{t}"
    stats = engine.stats()
    assert stats["evicted_pages"] > 0 and stats["swapped_out_pages"] > 0
    assert stats["prefix_cache_hit_rate"] > 0.3
    kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(engine.runner.host_kv)}
    assert kinds == {"pinned_host"}
