"""The tokenizer a GGUF file describes, rebuilt with the `tokenizers` library (no torch).

A GGUF carries no tokenizer.json: it stores llama.cpp's description of one (``tokenizer.ggml.*``
metadata). We support its byte-level BPE kind (``tokenizer.ggml.model == "gpt2"``: GPT-2, Llama 3,
Qwen2/3, SmolLM, Mistral's tekken, ...):

* the vocabulary (``tokens``, ids in order) and ``merges`` ("left right", rank = position);
* control tokens (``token_type`` 3) become special added tokens, user-defined ones (4) plain
  added tokens, so both are matched whole in text, as llama.cpp does;
* the pre-tokenizer (how text is split before the merges) is named by ``tokenizer.ggml.pre``;
  `PRE_TOKENIZERS` maps the names we know to the splitting regexes of llama.cpp's
  ``llama-vocab.cpp`` (the same ones as the models' own tokenizer.json files);
* bos/eos/unk/pad from their ``*_token_id`` keys, bos prepended when ``add_bos_token``, and the
  Jinja ``tokenizer.chat_template``.

The result is a `transformers.PreTrainedTokenizerFast`, so ``apply_chat_template`` and
``decode`` work as for a Hugging Face checkpoint. Files with a SentencePiece vocabulary
(``tokenizer.ggml.model == "llama"``) or an unknown pre-tokenizer name raise a `ValueError`.
"""

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2 = "gpt2 regex"  # ByteLevel's built-in regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|...
# tokenizer.ggml.pre -> the splits before the byte-level step, in order
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("default", "gpt2", "gpt-2", "mpt", "olmo", "jais"), (_GPT2,)),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
        (r"\p{N}", _GPT2),
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"), (_LLAMA3,)
    ),
    **dict.fromkeys(("qwen2", "qwen2.5", "deepseek-r1-qwen", "megrez"), (_QWEN2,)),
    "tekken": (_TEKKEN,),
}
# llama.cpp applies whole-word vocabulary matches before the merges for these (HF: ignore_merges)
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}


def build_gguf_tokenizer(metadata: dict[str, Any], path: Path, max_length: int):
    """A `PreTrainedTokenizerFast` from a GGUF file's ``tokenizer.*`` metadata (see module doc).

    Raises:
      ValueError: naming the file and what is missing or unsupported.
    """
    from transformers import PreTrainedTokenizerFast

    get = lambda key, default=None: metadata.get("tokenizer." + key, default)
    kind = get("ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: unsupported GGUF tokenizer {kind!r}; only byte-level BPE ('gpt2') is "
            "implemented"
        )
    tokens, merges = get("ggml.tokens"), get("ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{path}: the tokenizer has no tokenizer.ggml.tokens or .merges")
    pre = get("ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(
            f"{path}: unsupported GGUF pre-tokenizer {pre!r}; supported: {sorted(PRE_TOKENIZERS)}"
        )
    tok = Tokenizer(
        models.BPE(
            vocab={token: i for i, token in enumerate(tokens)},
            merges=[_split_merge(merge, path) for merge in merges],
            ignore_merges=pre in _IGNORE_MERGES,
        )
    )
    tok.pre_tokenizer = _pre_tokenizer(PRE_TOKENIZERS[pre])
    tok.decoder = decoders.ByteLevel()
    _add_special_tokens(tok, tokens, get("ggml.token_type"))
    special = {name: _token(tokens, get(f"ggml.{key}_token_id")) for name, key in _SPECIAL.items()}
    if get("ggml.add_bos_token", False) and special["bos_token"] is not None:
        bos, bos_id = special["bos_token"], int(get("ggml.bos_token_id"))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=get("chat_template"),
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
        **{name: token for name, token in special.items() if token is not None},
    )


_SPECIAL = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}


def _token(tokens: list[str], token_id) -> str | None:
    if token_id is None or not 0 <= int(token_id) < len(tokens):
        return None
    return tokens[int(token_id)]


def _split_merge(merge: str, path: Path) -> tuple[str, str]:
    """ "left right" -> (left, right), split at the first space after the first character, as
    llama.cpp does."""
    cut = merge.find(" ", 1)
    if cut < 0:
        raise ValueError(f"{path}: malformed tokenizer merge {merge!r} (no space)")
    return merge[:cut], merge[cut + 1 :]


def _pre_tokenizer(splits: tuple[str, ...]):
    steps = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        for pattern in splits
        if pattern is not _GPT2
    ]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=_GPT2 in splits))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def _add_special_tokens(tok: Tokenizer, tokens: list[str], token_types) -> None:
    if token_types is None:
        return
    control = [t for t, kind in zip(tokens, token_types, strict=True) if kind == _CONTROL]
    user = [t for t, kind in zip(tokens, token_types, strict=True) if kind == _USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
