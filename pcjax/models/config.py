"""ModelConfig: the architecture of a decoder-only model, parsed from a Hugging Face config.json.

One frozen, validated dataclass covers the Llama, Mistral, Qwen2 and Qwen3 families. They differ
only in a few switches:

============  ==============  =================  ========  ================================
family        q/k/v bias      o bias             q/k norm  sliding window
============  ==============  =================  ========  ================================
llama         attention_bias  attention_bias     no        no
mistral       no              no                 no        ``sliding_window`` (all layers)
qwen2         yes             no                 no        if ``use_sliding_window``
qwen3         attention_bias  attention_bias     yes       if ``use_sliding_window``
============  ==============  =================  ========  ================================

Qwen2/3 slide only layers ``i >= max_window_layers`` (or those ``layer_types`` marks
"sliding_attention"); that per-layer choice is `sliding_layers`.
"""

import dataclasses
import math
from typing import Any

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_MODEL_TYPES = {family: arch for arch, family in ARCHITECTURES.items()}
ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# transformers' class defaults, for fields a config.json may omit
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768}
_DEFAULT_HEAD_DIM = {"qwen3": 128}  # the others default to hidden_size // num_attention_heads
_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "max_position_embeddings",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (names follow the glossary in `pcjax.typing`).

    Attributes:
      architecture: Hugging Face class name, e.g. "LlamaForCausalLM".
      vocab_size: V. hidden_size: D. intermediate_size: F. num_layers: L.
      num_heads: N. num_kv_heads: K (N % K == 0). head_dim: H (may differ from D // N).
      rope_theta: RoPE base. rope_scaling: None, or the llama3 parameters as a sorted tuple of
        (key, value) pairs (hashable, so the config can be a static jit argument).
      rms_norm_eps: epsilon of every RMSNorm.
      tie_word_embeddings: the LM head is the transposed token embedding.
      attention_bias: q/k/v projections have a bias. attention_out_bias: o projection has one.
      qk_norm: RMSNorm over the head dim of q and k before RoPE (Qwen3).
      sliding_window: attend to the last `sliding_window` positions only; None: full attention.
      sliding_layers: the layers the window applies to (all layers when None).
      max_position_embeddings: the longest context the model was trained for.
      bos_token_id / eos_token_ids: from config.json, when given.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        _require(
            self.architecture in ARCHITECTURES, _unsupported("architecture", self.architecture)
        )
        for name in _SIZES:
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value > 0,
                f"{name} must be a positive int, got {value!r}",
            )
        _require(
            self.num_heads % self.num_kv_heads == 0,
            f"num_heads ({self.num_heads}) must be "
            f"a multiple of num_kv_heads ({self.num_kv_heads})",
        )
        _require(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        _require(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta!r}")
        _require(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.rope_scaling is not None:
            _check_llama3(dict(self.rope_scaling))
        _check_window(self)

    @property
    def family(self) -> str:
        """The family name: llama, mistral, qwen2 or qwen3."""
        return ARCHITECTURES[self.architecture]

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of `layer` (None: full causal attention)."""
        if self.sliding_layers is not None and layer not in self.sliding_layers:
            return None
        return self.sliding_window

    def param_count(self) -> int:
        """Number of parameters (the LM head counted once when tied)."""
        d, h = self.hidden_size, self.head_dim
        qkv = d * (self.num_heads + 2 * self.num_kv_heads) * h
        qkv_bias = (self.num_heads + 2 * self.num_kv_heads) * h if self.attention_bias else 0
        out = self.num_heads * h * d + (d if self.attention_out_bias else 0)
        norms = 2 * d + (2 * h if self.qk_norm else 0)
        layer = qkv + qkv_bias + out + 3 * d * self.intermediate_size + norms
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * layer + d + head

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Parses a Hugging Face config.json dict (transformers 4.x or 5.x rope layout).

        Raises:
          ValueError: naming an unsupported architecture/model_type, a missing required field,
            an unsupported rope_scaling kind or an unsupported option (mlp_bias, hidden_act).
        """
        if not isinstance(hf, dict):
            raise ValueError(
                f"a Hugging Face config must be a JSON object, got {type(hf).__name__}"
            )
        architecture = _architecture(hf)
        family = ARCHITECTURES[architecture]
        _check_unsupported_options(hf)
        get = lambda name: _required(hf, name)
        num_heads = get("num_attention_heads")
        head_dim = (
            hf.get("head_dim") or _DEFAULT_HEAD_DIM.get(family) or (get("hidden_size") // num_heads)
        )
        rope_theta, rope_scaling = _rope(hf)
        window, layers = _sliding_window(hf, family, get("num_hidden_layers"))
        bias = bool(hf.get("attention_bias", False))
        return cls(
            architecture=architecture,
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"),
            num_layers=get("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias={"llama": bias, "mistral": False, "qwen2": True, "qwen3": bias}[family],
            attention_out_bias=bias and family in ("llama", "qwen3"),
            qk_norm=family == "qwen3",
            sliding_window=window,
            sliding_layers=layers,
            max_position_embeddings=hf.get("max_position_embeddings")
            or _DEFAULT_MAX_POSITIONS[family],
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=token_ids(hf.get("eos_token_id")),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json dict that transformers (4.x and 5.x) and vLLM read back to this config."""
        hf = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": _llama3_json(self.rope_scaling) if self.rope_scaling else None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids)
            if len(self.eos_token_ids) != 1
            else self.eos_token_ids[0],
            "torch_dtype": "float32",
        }
        return hf | _family_hf_fields(self)


def _check_window(cfg: ModelConfig) -> None:
    if cfg.sliding_window is not None:
        _require(
            isinstance(cfg.sliding_window, int) and cfg.sliding_window > 0,
            f"sliding_window must be a positive int or None, got {cfg.sliding_window!r}",
        )
    if cfg.sliding_layers is not None:
        _require(
            all(0 <= i < cfg.num_layers for i in cfg.sliding_layers),
            f"sliding_layers must index layers 0..{cfg.num_layers - 1}",
        )


def _family_hf_fields(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.family == "llama":
        return {"attention_bias": cfg.attention_bias, "mlp_bias": False}
    if cfg.family == "mistral":
        return {"sliding_window": cfg.sliding_window}
    sliding = [cfg.layer_window(i) is not None for i in range(cfg.num_layers)]
    fields = {
        "use_sliding_window": any(sliding),
        "sliding_window": cfg.sliding_window,
        "max_window_layers": sliding.index(True) if any(sliding) else cfg.num_layers,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
    }
    if cfg.family == "qwen3":
        fields["attention_bias"] = cfg.attention_bias
    return fields


def _llama3_json(scaling: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    fields = dict(scaling, rope_type="llama3")
    key = "original_max_position_embeddings"
    fields[key] = int(fields[key])
    return fields


def _architecture(hf: dict) -> str:
    architectures = hf.get("architectures")
    if architectures:
        name = architectures[0] if isinstance(architectures, list) else architectures
        _require(name in ARCHITECTURES, _unsupported("architecture", name))
        return name
    model_type = hf.get("model_type")
    _require(model_type is not None, "config.json names neither 'architectures' nor 'model_type'")
    _require(model_type in _MODEL_TYPES, _unsupported("model_type", model_type))
    return _MODEL_TYPES[model_type]


def _check_unsupported_options(hf: dict) -> None:
    act = hf.get("hidden_act", "silu")
    _require(act == "silu", f"unsupported hidden_act {act!r}: only 'silu' is implemented")
    _require(not hf.get("mlp_bias", False), "unsupported mlp_bias=true: MLPs have no bias here")
    factor = hf.get("partial_rotary_factor", 1.0)
    _require(factor == 1.0, f"unsupported partial_rotary_factor {factor!r}")


def _rope(hf: dict) -> tuple[float, tuple[tuple[str, float], ...] | None]:
    """(rope_theta, llama3 parameters or None) from the 4.x or the 5.x (rope_parameters) layout."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    _require(
        isinstance(params, dict), f"rope_parameters/rope_scaling must be an object, got {params!r}"
    )
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    _require(kind in ROPE_TYPES, f"unsupported rope scaling type {kind!r}; supported: {ROPE_TYPES}")
    if kind == "default":
        return theta, None
    scaling = {key: params.get(key) for key in _LLAMA3_KEYS}
    if scaling["original_max_position_embeddings"] is None:
        scaling["original_max_position_embeddings"] = hf.get("max_position_embeddings")
    _check_llama3(scaling)
    return theta, tuple(sorted((key, float(value)) for key, value in scaling.items()))


def _check_llama3(scaling: dict) -> None:
    missing = [key for key in _LLAMA3_KEYS if scaling.get(key) is None]
    _require(not missing, f"llama3 rope scaling is missing {missing}")
    _require(
        set(scaling) == set(_LLAMA3_KEYS),
        f"llama3 rope scaling takes {_LLAMA3_KEYS}, got {sorted(scaling)}",
    )
    _require(
        scaling["high_freq_factor"] > scaling["low_freq_factor"],
        "llama3 rope scaling needs high_freq_factor > low_freq_factor",
    )
    _require(
        all(math.isfinite(v) and v > 0 for v in scaling.values()),
        f"llama3 rope scaling values must be positive, got {scaling}",
    )


def _sliding_window(hf: dict, family: str, num_layers: int):
    """(window, sliding layers or None for all) following each family's HF semantics."""
    if family == "llama":
        return None, None
    window = hf.get("sliding_window")
    if family == "mistral":
        return window, None
    if not hf.get("use_sliding_window", False) or window is None:
        return None, None
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        _require(len(layer_types) == num_layers, "layer_types must name every layer")
        layers = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
    else:
        layers = tuple(range(hf.get("max_window_layers", 28), num_layers))  # 28: the HF default
    return (window, layers) if layers else (None, None)


def token_ids(value) -> tuple[int, ...]:
    """A config's token id field (None, an int or a list of ints) as a tuple."""
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def _required(hf: dict, name: str):
    _require(hf.get(name) is not None, f"config.json is missing the required field {name!r}")
    return hf[name]


def _unsupported(what: str, name) -> str:
    supported = list(ARCHITECTURES) if what == "architecture" else list(_MODEL_TYPES)
    return f"unsupported {what} {name!r}; supported: {supported}"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
