"""Writes a small random-weight Llama as a Hugging Face directory (safetensors, fp32, no tokenizer).

Run it with a Python that has torch and transformers (the vLLM peer venv has both):

    .peers/vllm/bin/python experiments/peers/make_random_llama.py /tmp/llama-4l-512

The default shape is the one JAX_NOTES.md measured vLLM on (4 layers, hidden 512, vocab 32000,
45.6M parameters). It is a fixture for peer benchmarks and tests, not a model anyone should read
outputs from. A larger `--init-std` (0.2-0.3) keeps greedy tokens from being near-ties, which
matters when outputs are compared across frameworks.
"""

import argparse
import json
import pathlib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=pathlib.Path)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_model(args: argparse.Namespace) -> int:
    """Builds the random model, saves it to `args.out_dir` and returns its parameter count."""
    # Imported here, not at the top: pcjax's own venv has no torch and may still import this file.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions,
        initializer_range=args.init_std,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(args.out_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    """Entry point: writes the model and prints a one-line JSON summary."""
    args = parse_args(argv)
    n_params = make_model(args)
    print(json.dumps({"model_dir": str(args.out_dir), "params": n_params}))


if __name__ == "__main__":
    main()
