"""The tensor-parallel layout: which sizes split, and that every shard's slice of the re-ordered
weights computes exactly its heads / MLP columns / vocabulary rows of the full model (numpy)."""

import dataclasses

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pcjax.models.presets import PRESETS
from pcjax.parallel.layout import _gate_up_rows, _qkv_rows, _shard_leaf, tensor_layout

TINY_TP = PRESETS["pcjax-tiny-tp"].config  # N=8, K=2, H=16, F=128, V=320


def test_the_worked_example_of_the_module_docstring():
    cfg = dataclasses.replace(TINY_TP, num_heads=4, num_kv_heads=2, head_dim=2)
    layout = tensor_layout(cfg, 4)
    # heads [q0 q1 q2 q3 | k0 k1 | v0 v1] -> [q0 k0 v0 | q1 k0 v0 | q2 k1 v1 | q3 k1 v1]
    heads = [0, 4, 6, 1, 4, 6, 2, 5, 7, 3, 5, 7]
    assert _qkv_rows(layout).tolist() == [2 * head + i for head in heads for i in (0, 1)]
    assert layout.num_stored_kv_heads == 4
    assert layout.local_config.num_kv_heads == 1 and layout.local_config.num_heads == 1


@pytest.mark.parametrize("shards", [1, 2, 4, 8])
def test_each_shard_computes_its_own_heads(shards):
    cfg = TINY_TP
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    layout = tensor_layout(cfg, shards)
    rng = np.random.default_rng(shards)
    weight = rng.standard_normal(((n + 2 * k) * h, d)).astype(np.float32)
    x = rng.standard_normal((3, d)).astype(np.float32)
    full = (x @ weight.T).reshape(3, n + 2 * k, h)
    sharded, _ = _shard_leaf("layers[0].self_attn.qkv_proj.weight", weight, layout)
    local = layout.local_config
    per_shard = sharded.reshape(shards, -1, d)
    for t in range(shards):
        out = (x @ per_shard[t].T).reshape(3, -1, h)
        nl, kl = local.num_heads, local.num_kv_heads
        q_heads = list(range(t * nl, (t + 1) * nl))
        kv = layout.kv_heads_of(t)
        np.testing.assert_array_equal(out[:, :nl], full[:, q_heads])
        np.testing.assert_array_equal(out[:, nl : nl + kl], full[:, [n + i for i in kv]])
        np.testing.assert_array_equal(out[:, nl + kl :], full[:, [n + k + i for i in kv]])
        # every q head of the shard reads a kv head the shard keeps (GQA groups of N/K)
        assert {q // (n // k) for q in q_heads} <= set(kv)


def test_gate_up_rows_keep_each_shards_gate_and_up_columns_together():
    cfg = dataclasses.replace(TINY_TP, num_heads=6, num_kv_heads=3, intermediate_size=6)
    rows = _gate_up_rows(tensor_layout(cfg, 3))
    assert rows.tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]


def test_vocabulary_is_padded_to_a_multiple_of_the_shards():
    cfg = dataclasses.replace(TINY_TP, vocab_size=321)
    layout = tensor_layout(cfg, 4)
    assert layout.vocab_padded == 324 and layout.local_config.vocab_size == 81
    table = np.ones((321, 64), np.float32)
    padded, spec = _shard_leaf("embed_tokens.value", table, layout)
    assert padded.shape == (324, 64) and not padded[321:].any()
    assert spec == P("model", None)


def test_row_parallel_weights_and_norms_keep_their_order():
    layout = tensor_layout(TINY_TP, 2)
    down = np.arange(64 * 128, dtype=np.float32).reshape(64, 128)
    value, spec = _shard_leaf("layers[1].mlp.down_proj.weight", down, layout)
    assert value is down and spec == P(None, "model")
    norm = np.ones(64, np.float32)
    assert _shard_leaf("layers[1].input_layernorm.weight", norm, layout)[1] == P()


@pytest.mark.parametrize(
    ("heads", "kv_heads", "mlp", "shards", "message"),
    [
        (8, 2, 128, 3, "must divide the model's 8 attention heads"),
        (12, 4, 128, 6, "4 KV heads: one must divide the other"),
        (8, 2, 100, 8, "must divide the MLP width 100"),
    ],
)
def test_sizes_that_do_not_split_are_rejected(heads, kv_heads, mlp, shards, message):
    cfg = dataclasses.replace(
        TINY_TP, num_heads=heads, num_kv_heads=kv_heads, intermediate_size=mlp
    )
    with pytest.raises(ValueError, match=message):
        tensor_layout(cfg, shards)
