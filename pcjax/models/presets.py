"""Built-in presets: Llama-style models with RANDOM weights drawn from a fixed seed.

They exist for tests, benchmarks and demos; their text is gibberish. Weights are drawn with numpy's
PCG64 generator from the preset's seed (see `preset_params`), so the same seed gives bit-identical
weights on every machine. `write_preset` materializes a preset as a real Hugging Face checkpoint
directory that transformers and vLLM load as the very same model (checked against transformers:
logits within 1e-4, identical greedy tokens).

Initialization (D model dim, F MLP dim, N*H attention width), chosen so that activations stay
O(1) over all layers, the output depends strongly on the context (a cache bug shows) and greedy
tokens are robust to float rounding. Measured on pcjax-small over a 96-token prompt: logits have
std ~8 and a median top-1/top-2 gap of ~1.7 (1% of positions below 0.01), while one-shot vs
chunked prefill differ by < 1e-4 in f32; changing the first token moves the last logits by ~19.

===========================  ==============================
tensor                       std of a zero-mean uniform
===========================  ==============================
embed_tokens                 1
q_proj                       2 / sqrt(D) (sharper attention)
k_proj, v_proj, gate, up     1 / sqrt(D)
o_proj                       1 / sqrt(N*H)
down_proj                    1 / sqrt(F)
RMSNorm weights              0.1, around a mean of 1
lm_head                      8 / sqrt(D)
===========================  ==============================
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from pcjax.models import checkpoint
from pcjax.models.config import ModelConfig
from pcjax.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_byte_tokenizer

VOCAB_SIZE = 320  # 256 bytes + bos/eos/pad + reserved ids, padded to a multiple of 64


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named random model: its architecture and the seed of its weights."""

    name: str
    config: ModelConfig
    seed: int
    description: str


def _llama(**fields) -> ModelConfig:
    common = dict(
        architecture="LlamaForCausalLM",
        vocab_size=VOCAB_SIZE,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
        bos_token_id=BOS_ID,
        eos_token_ids=(EOS_ID,),
    )
    return ModelConfig(**(common | fields))


PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            name="pcjax-tiny",
            config=_llama(
                hidden_size=64,
                intermediate_size=128,
                num_layers=2,
                num_heads=4,
                num_kv_heads=2,
                head_dim=16,
            ),
            seed=0,
            description="2 layers, D=64, GQA 4/2: for unit tests (random weights)",
        ),
        Preset(
            name="pcjax-tiny-tp",
            config=_llama(
                hidden_size=64,
                intermediate_size=128,
                num_layers=2,
                num_heads=8,
                num_kv_heads=2,
                head_dim=16,
            ),
            seed=1,
            description="2 layers, D=64, GQA 8/2: tensor parallelism up to 8 shards (random)",
        ),
        Preset(
            name="pcjax-small",
            config=_llama(
                hidden_size=768,
                intermediate_size=3072,
                num_layers=12,
                num_heads=12,
                num_kv_heads=4,
                head_dim=64,
            ),
            seed=0,
            description="12 layers, D=768, GQA 12/4, ~104M params: benchmarks (random weights)",
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; built-in presets: {list(PRESETS)}")
    return PRESETS[name]


def _std(name: str, cfg: ModelConfig) -> float:
    d = cfg.hidden_size
    if name.endswith("embed_tokens.weight"):
        return 1.0
    if name == "lm_head.weight":
        return 8.0 / np.sqrt(d)
    if "q_proj" in name:
        return 2.0 / np.sqrt(d)
    if "o_proj" in name:
        return 1.0 / np.sqrt(cfg.num_heads * cfg.head_dim)
    if "down_proj" in name:
        return 1.0 / np.sqrt(cfg.intermediate_size)
    if "norm" in name:
        return 0.1
    return 1.0 / np.sqrt(d)


def preset_params(preset: Preset) -> dict[str, np.ndarray]:
    """The preset's weights in pcjax layout (dotted param path -> f32 array), from its seed.

    Params are drawn one after the other, in `checkpoint.param_recipes` order, from one PCG64
    stream; each is uniform with the std of the table above (uniform draws are 4x faster than
    normal ones, which matters for a 100M-param model built at every load).
    """
    rng = np.random.default_rng(preset.seed)
    shapes = checkpoint.hf_shapes(preset.config)
    params = {}
    for path, (op, names) in checkpoint.param_recipes(preset.config).items():
        shape = checkpoint.param_shape(op, [shapes[name] for name in names])
        stds = [np.full(shapes[name][0], _std(name, preset.config), np.float32) for name in names]
        std = np.concatenate(stds).reshape(-1, *[1] * (len(shape) - 1))  # per output row
        sample = rng.random(shape, dtype=np.float32)
        sample -= np.float32(0.5)
        sample *= np.float32(2 * np.sqrt(3)) * std  # U(-a, a) has std a / sqrt(3)
        if path.endswith("norm.weight"):
            sample += np.float32(1.0)
        params[path] = sample
    return params


def generation_config(cfg: ModelConfig) -> dict:
    """generation_config.json of a preset: special ids only, no sampling defaults."""
    eos = list(cfg.eos_token_ids)
    return {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": PAD_ID,
    }


def write_preset(name: str, directory: str | Path) -> Path:
    """Writes preset `name` as a Hugging Face checkpoint directory and returns its path.

    The directory gets config.json (LlamaForCausalLM), model.safetensors (f32),
    generation_config.json and the byte-level tokenizer files; transformers' ``from_pretrained``
    and vLLM load it as the same model as ``pcjax.models.load(name)``.
    """
    preset = get_preset(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory / "config.json", preset.config.to_hf_config())
    _write_json(directory / "generation_config.json", generation_config(preset.config))
    checkpoint.save_safetensors(directory, checkpoint.to_hf(preset.config, preset_params(preset)))
    save_byte_tokenizer(directory, preset.config.vocab_size)
    return directory


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
