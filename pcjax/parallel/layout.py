"""How a model's weights and KV heads are split over the ``"model"`` axis of the mesh (T shards).

Megatron-style tensor parallelism, the layout of vLLM and tpu-inference:

==================  =========================  =============================================
tensor              split over "model"         shard t holds
==================  =========================  =============================================
embed_tokens        rows (vocabulary)          rows ``[t * V/T, (t+1) * V/T)`` (V padded)
qkv_proj            rows (outputs)             its q heads, then its k heads, then its v heads
o_proj              columns (inputs)           the columns of its q heads; partial sums psum
gate_up_proj        rows (outputs)             its gate columns, then its up columns
down_proj           columns (inputs)           the same F/T slice; partial sums psum
lm_head             rows (vocabulary)          like embed_tokens; logits all-gathered
norms, o/down bias  replicated
==================  =========================  =============================================

Shard t computes q heads ``[t * N/T, (t+1) * N/T)``. KV heads are split when K >= T (K % T == 0:
shard t keeps heads ``[t * K/T, (t+1) * K/T)``) and replicated when K < T (T % K == 0: shard t
keeps head ``t // (T/K)``, the one its q heads read). The KV pages then store ``K_s = max(K, T)``
heads, ``K_s / T`` per shard.

Worked example (N = 4 q heads, K = 2 kv heads, H = 1, T = 4): the fused rows are
``[q0 q1 q2 q3 | k0 k1 | v0 v1]``; shard t's rows are ``[q_t, k_{t//2}, v_{t//2}]``, so the
sharded weight is ``[q0 k0 v0 | q1 k0 v0 | q2 k1 v1 | q3 k1 v1]`` (12 rows, 3 per shard).

Each shard runs the plain model code (`pcjax.models.Transformer`) built from `local_config` with
``tp_axis="model"`` under ``jax.shard_map``.
"""

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcjax.models.config import ModelConfig
from pcjax.models.transformer import Transformer
from pcjax.parallel.mesh import MODEL_AXIS


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """The sizes of one tensor-parallel shard (T shards of a model with config ``global_config``).

    Attributes:
      num_shards: T.
      num_stored_kv_heads: K_s = max(K, T), the KV heads the pages store over all shards.
      vocab_padded: V rounded up to a multiple of T (padding rows are zeros, their logits cut).
    """

    global_config: ModelConfig
    num_shards: int
    num_stored_kv_heads: int
    vocab_padded: int

    @property
    def local_config(self) -> ModelConfig:
        """The config one shard's `Transformer` is built with."""
        cfg, t = self.global_config, self.num_shards
        return dataclasses.replace(
            cfg,
            num_heads=cfg.num_heads // t,
            num_kv_heads=self.num_stored_kv_heads // t,
            intermediate_size=cfg.intermediate_size // t,
            vocab_size=self.vocab_padded // t,
        )

    def kv_heads_of(self, shard: int) -> list[int]:
        """The global KV heads shard ``shard`` keeps (see the module docstring)."""
        k, t = self.global_config.num_kv_heads, self.num_shards
        if k >= t:
            return list(range(shard * k // t, (shard + 1) * k // t))
        return [shard // (t // k)]


def tensor_layout(cfg: ModelConfig, num_shards: int) -> TensorLayout:
    """Checks that ``cfg`` splits over ``num_shards`` and returns the layout.

    Raises:
      ValueError: naming the size that does not divide (as vLLM, heads and MLP width must).
    """
    n, k, t = cfg.num_heads, cfg.num_kv_heads, num_shards
    if n % t:
        raise ValueError(f"tensor_parallel_size {t} must divide the model's {n} attention heads")
    if (k >= t and k % t) or (k < t and t % k):
        raise ValueError(
            f"tensor_parallel_size {t} and the model's {k} KV heads: one must divide the other"
        )
    if cfg.intermediate_size % t:
        raise ValueError(
            f"tensor_parallel_size {t} must divide the MLP width {cfg.intermediate_size}"
        )
    padded = -(-cfg.vocab_size // t) * t
    return TensorLayout(cfg, t, max(k, t), padded)


# ------------------------------------------------------------------------------ the weights


def local_model(layout: TensorLayout, dtype):
    """``(graphdef, treedef)`` of one shard's model (abstract: nothing is allocated)."""
    shard = nnx.eval_shape(lambda: Transformer(layout.local_config, dtype, tp_axis=MODEL_AXIS))
    graphdef, state = nnx.split(shard)
    return graphdef, jax.tree.structure(state)


def shard_params(params: nnx.State, layout: TensorLayout, mesh) -> tuple[tuple, tuple]:
    """Places a model's params on ``mesh``: ``(leaves, specs)`` in the order of the params'
    leaves, each leaf a global array (re-ordered per the module table) with its spec.

    The host copies go leaf by leaf; every process passes the same params and puts only the
    shards of its own devices.
    """
    leaves, specs = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        value, spec = _shard_leaf(name, np.asarray(leaf), layout)
        leaves.append(jax.device_put(value, NamedSharding(mesh, spec)))
        specs.append(spec)
    return tuple(leaves), tuple(specs)


def _shard_leaf(name: str, value: np.ndarray, layout: TensorLayout):
    """One param re-ordered so that shard t's slice is the t-th block, and its spec."""
    if "qkv_proj" in name:
        return value[_qkv_rows(layout)], P(MODEL_AXIS, *[None] * (value.ndim - 1))
    if "gate_up_proj" in name:
        return value[_gate_up_rows(layout)], P(MODEL_AXIS, None)
    if ("o_proj" in name or "down_proj" in name) and value.ndim == 2:
        return value, P(None, MODEL_AXIS)  # row-parallel: inputs split, natural order
    if "embed_tokens" in name or "lm_head" in name:
        pad = layout.vocab_padded - value.shape[0]
        return np.pad(value, ((0, pad), (0, 0))), P(MODEL_AXIS, None)
    return value, P()  # norms and the row-parallel biases (added once, after the psum)


def _qkv_rows(layout: TensorLayout) -> np.ndarray:
    """Row order of the fused q/k/v projection: per shard its q, k and v head rows."""
    cfg, t = layout.global_config, layout.num_shards
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rows = []
    for shard in range(t):
        q_heads = range(shard * n // t, (shard + 1) * n // t)
        kv_heads = layout.kv_heads_of(shard)
        rows += [np.arange(h) + head * h for head in q_heads]
        rows += [np.arange(h) + (n + head) * h for head in kv_heads]
        rows += [np.arange(h) + (n + k + head) * h for head in kv_heads]
    return np.concatenate(rows)


def _gate_up_rows(layout: TensorLayout) -> np.ndarray:
    """Row order of the fused gate/up projection: per shard its gate rows, then its up rows."""
    f, t = layout.global_config.intermediate_size, layout.num_shards
    width = f // t
    return np.concatenate(
        [
            np.concatenate([np.arange(width) + s * width, np.arange(width) + f + s * width])
            for s in range(t)
        ]
    )
