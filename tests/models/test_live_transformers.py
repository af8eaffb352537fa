"""Live comparison with transformers on torch, where torch is importable (skipped otherwise).

The golden tests cover the same ground with stored references; this one also checks a freshly
written preset, so a change on either side shows up without regenerating goldens.
"""

import sys

import numpy as np
import pytest

from pcjax import models
from tests.models.conftest import GOLDEN
from tests.models.paged import greedy

pytest.importorskip("torch")
sys.path.insert(0, str(GOLDEN))
import hf_reference  # noqa: E402


def test_written_preset_matches_transformers(tiny, tmp_path):
    directory = models.write_preset("pcjax-tiny", tmp_path / "tiny")
    hf_model = hf_reference.load_hf_model(directory)
    prompt = tiny.tokenizer("The quick brown fox")["input_ids"]
    expected_logits = hf_reference.prompt_logits(hf_model, prompt)
    expected_tokens = hf_reference.greedy_tokens(hf_model, prompt, 12)
    logits, tokens = greedy(tiny, prompt, 12)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert tokens == expected_tokens
