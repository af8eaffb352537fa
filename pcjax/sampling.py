"""Sampling: `SamplingParams` (host, validated) and a jit-friendly batched sampler (device).

Every request samples from its own stream: the key of its n-th generated token is
``fold_in(PRNGKey(seed), n)``, so a request's output does not depend on what it was batched with,
and a preempted request that is recomputed samples the same tokens again.
"""

import dataclasses

import jax
import jax.numpy as jnp

_MASKED_LOGIT = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen and when it stops (vLLM's names).

    Attributes:
      temperature: 0 means greedy; otherwise logits are divided by it before sampling.
      top_k: keep the k most likely tokens; 0 or -1 disables it.
      top_p: keep the smallest set of tokens whose probability reaches top_p; 1.0 disables it.
      max_tokens: most tokens to generate.
      seed: seed of this request's sampling stream; None takes one from the engine's seed.
      stop_token_ids: extra token ids that end generation (the token is kept in the output).
      stop: strings that end generation; the text is cut before the first one.
      ignore_eos: do not stop at the model's end-of-sequence tokens.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        _check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}")
        _check(
            isinstance(self.top_k, int) and self.top_k >= -1,
            f"top_k must be an int >= -1 (0 or -1 disables it), got {self.top_k!r}",
        )
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        _check(
            isinstance(self.max_tokens, int) and self.max_tokens >= 1,
            f"max_tokens must be an int >= 1, got {self.max_tokens!r}",
        )
        _check(
            self.seed is None or isinstance(self.seed, int),
            f"seed must be an int, got {self.seed!r}",
        )
        _check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            f"stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}",
        )
        _check(
            all(isinstance(s, str) and s for s in self.stop),
            f"stop strings must be non-empty strings, got {self.stop!r}",
        )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingBatch:
    """Per-sequence sampling settings of one step, padded to B like the step's sequences."""

    temperature: jax.Array  # f32[B]: 0 is greedy
    top_k: jax.Array  # i32[B]: <= 0 disables
    top_p: jax.Array  # f32[B]: 1 disables
    seeds: jax.Array  # u32[B]
    steps: jax.Array  # i32[B]: index of the token being sampled in its request's output


def sample(logits: jax.Array, batch: SamplingBatch) -> jax.Array:
    """Chooses one token per row of ``logits`` (f32[B, V]); returns i32[B].

    Rows with temperature 0 take the argmax. Other rows use the Gumbel-max trick over the
    temperature-scaled logits restricted to their top-k / top-p set. The sorting that top-k / top-p
    need runs only when some row asks for it (a `lax.cond`, so one compiled program serves all).
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled(_):
        scaled = logits / jnp.maximum(batch.temperature, 1e-6)[:, None]
        needs_filter = jnp.any(batch.top_k > 0) | jnp.any(batch.top_p < 1)
        scaled = jax.lax.cond(
            needs_filter, _filter_top_k_top_p, lambda x, *_: x, scaled, batch.top_k, batch.top_p
        )
        noise = jax.vmap(_gumbel, in_axes=(0, 0, None))(batch.seeds, batch.steps, logits.shape[-1])
        return jnp.argmax(scaled + noise, axis=-1).astype(jnp.int32)

    all_greedy = jnp.all(batch.temperature == 0)
    chosen = jax.lax.cond(all_greedy, lambda _: greedy, sampled, None)
    return jnp.where(batch.temperature == 0, greedy, chosen)


def _gumbel(seed, step, vocab_size):
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.gumbel(key, (vocab_size,), jnp.float32)


def _filter_top_k_top_p(logits, top_k, top_p):
    """Masks, per row, the logits outside the top-k set and outside the top-p nucleus."""
    vocab_size = logits.shape[-1]
    sorted_logits = -jnp.sort(-logits, axis=-1)  # descending, f32[B, V]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab_size), vocab_size)
    kth = jnp.take_along_axis(sorted_logits, (k - 1)[:, None], axis=-1)  # f32[B, 1]
    in_top_k = jnp.arange(vocab_size)[None, :] < k[:, None]
    probs = jax.nn.softmax(jnp.where(in_top_k, sorted_logits, _MASKED_LOGIT), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    in_nucleus = (mass_before < top_p[:, None]) & in_top_k  # always keeps the first token
    num_kept = jnp.sum(in_nucleus, axis=-1)
    threshold = jnp.take_along_axis(sorted_logits, (num_kept - 1)[:, None], axis=-1)
    threshold = jnp.maximum(threshold, kth)
    return jnp.where(logits >= threshold, logits, _MASKED_LOGIT)
