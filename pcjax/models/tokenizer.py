"""A byte-level tokenizer built offline with `tokenizers`, for the built-in presets and goldens.

Ids 0-255 are the bytes (GPT-2 byte-to-unicode alphabet, no merges), then ``<s>`` (bos), ``</s>``
(eos), ``<pad>``, and ``<|reserved_i|>`` special tokens up to `vocab_size`, so that every id a
model can emit decodes. Encoding adds bos in front, as Llama tokenizers do.

This module imports neither jax nor pcjax: ``tests/golden/make_golden.py`` loads it by path from
a torch venv.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
# Plain ChatML (the markers are ordinary bytes to this tokenizer), so `Engine.chat` works on the
# presets the way it does on ChatML models.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable character standing for each byte, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def build_byte_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with `vocab_size` ids (>= 259), all of them decodable."""
    if vocab_size < 259:
        raise ValueError(f"a byte-level vocab needs >= 259 ids, got {vocab_size}")
    vocab = {char: byte for byte, char in enumerate(_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    reserved = [f"<|reserved_{i}|>" for i in range(vocab_size - 259)]
    tok.add_special_tokens([BOS, EOS, PAD, *reserved])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def save_byte_tokenizer(directory: str | Path, vocab_size: int = 320) -> None:
    """Writes tokenizer.json, tokenizer_config.json and chat_template.jinja (AutoTokenizer loads
    them); the class is named "PreTrainedTokenizerFast" so transformers 4.x reads it too."""
    build_byte_tokenizer(vocab_size).save_pretrained(str(directory))
    config_path = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
