"""Writes any model pcjax loads as a Hugging Face checkpoint directory (safetensors + config +
tokenizer), e.g. a GGUF dequantized for transformers or vLLM::

    python -m pcjax.models.export_hf smollm2-135m /models/smollm2-135m [--dtype=bfloat16]

The directory holds config.json, generation_config.json, model.safetensors (the params in
`--dtype`), and the tokenizer files of ``save_pretrained`` (tokenizer.json, tokenizer_config.json,
chat_template.jinja). ``Engine(model=directory)``, transformers' ``from_pretrained`` and vLLM load
it as the same model.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from pcjax.models import checkpoint
from pcjax.models.loader import DTYPES, LoadedModel, load


def export_hf(model: str | LoadedModel, directory: str | Path, dtype: str = "float32") -> Path:
    """Writes `model` (a name or path `load` takes, or a loaded model) to `directory`.

    Returns the directory. Raises ValueError as `load` does.
    """
    loaded = model if isinstance(model, LoadedModel) else load(model, dtype)
    cfg, directory = loaded.config, Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = cfg.to_hf_config() | {"torch_dtype": loaded.dtype}
    _write_json(directory / "config.json", hf_config)
    _write_json(directory / "generation_config.json", _generation_config(loaded))
    params = {
        ".".join(str(k.key) for k in path[:-1]): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(loaded.params)
    }
    checkpoint.save_safetensors(directory, checkpoint.to_hf(cfg, params))
    loaded.tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4.x reads it
    _write_json(config_path, tokenizer_config)
    return directory


def _generation_config(loaded: LoadedModel) -> dict:
    eos = list(loaded.eos_token_ids)
    return {
        "bos_token_id": loaded.config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": getattr(loaded.tokenizer, "pad_token_id", None),
    }


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pcjax.models.export_hf", description=__doc__.split("::")[0]
    )
    parser.add_argument("model", help="a built-in name, a .gguf file or a checkpoint directory")
    parser.add_argument("directory", help="where to write the Hugging Face checkpoint")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)
    try:
        path = export_hf(args.model, args.directory, args.dtype)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.model} ({args.dtype}) to {path}")


if __name__ == "__main__":
    main()
