"""Prompts, conversations and sampling-parameter lists as users give them, checked and normalized
(host only). Every problem is a `ValueError` naming it, raised before anything is queued.

A prompt is one of:

* a string (tokenized with the model's tokenizer, special tokens added as the tokenizer does);
* a list (or numpy array) of token ids;
* a dict ``{"prompt_token_ids": [...]}`` or ``{"prompt": "..."}`` (vLLM's TokensPrompt /
  TextPrompt), optionally with ``"cache_salt": str``: requests share cached prefixes only with
  requests of the same salt (none: the shared namespace).
"""

from typing import NamedTuple

import numpy as np

from pcjax.sampling import SamplingParams

_PROMPT_KEYS = {"prompt", "prompt_token_ids", "cache_salt"}
ROLES = ("system", "user", "assistant", "tool", "developer")


class Prompt(NamedTuple):
    """A checked prompt: its token ids, its text when given as text, and its cache salt."""

    token_ids: list[int]
    text: str | None
    cache_salt: str | None


def parse_prompt(prompt, tokenizer, vocab_size: int, max_model_len: int) -> Prompt:
    """Checks and tokenizes one prompt (see the module docstring for the accepted forms)."""
    text, salt = None, None
    if isinstance(prompt, dict):
        prompt, salt = _unpack_dict(prompt)
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty")
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: pass prompts as lists of token ids")
        text, token_ids = prompt, list(tokenizer.encode(prompt))
    elif isinstance(prompt, (list, tuple, np.ndarray)):
        token_ids = _as_token_ids(prompt)
    else:
        raise ValueError(
            f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}"
        )
    check_token_ids(token_ids, vocab_size, max_model_len)
    return Prompt(token_ids, text, salt)


def _unpack_dict(prompt: dict):
    unknown = set(prompt) - _PROMPT_KEYS
    if unknown:
        raise ValueError(f"unknown prompt keys {sorted(unknown)}; expected {sorted(_PROMPT_KEYS)}")
    if ("prompt" in prompt) == ("prompt_token_ids" in prompt):
        raise ValueError("a prompt dict needs exactly one of 'prompt' and 'prompt_token_ids'")
    salt = prompt.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ValueError(f"cache_salt must be a non-empty string, got {salt!r}")
    if "prompt" in prompt:
        if not isinstance(prompt["prompt"], str):
            raise ValueError("'prompt' in a prompt dict must be a string")
        return prompt["prompt"], salt
    if not isinstance(prompt["prompt_token_ids"], (list, tuple, np.ndarray)):
        raise ValueError("'prompt_token_ids' must be a list of ints")
    return prompt["prompt_token_ids"], salt


def _as_token_ids(values) -> list[int]:
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise ValueError("a token-id prompt must be a 1-D integer array")
        return values.tolist()
    if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in values):
        raise ValueError("token ids must be ints")
    return [int(t) for t in values]


def check_token_ids(token_ids: list[int], vocab_size: int, max_model_len: int) -> None:
    if not token_ids:
        raise ValueError("the prompt is empty")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
    if len(token_ids) >= max_model_len:
        raise ValueError(
            f"the prompt has {len(token_ids)} tokens; max_model_len is "
            f"{max_model_len}, which must leave room for one more"
        )


def as_prompt_list(prompts) -> list:
    """One prompt or a list of them, as a list."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, (int, np.integer)) for t in prompts):
        return [prompts]  # one prompt given as token ids
    if not prompts:
        raise ValueError("no prompts given")
    return prompts


def as_params_list(sampling_params, num_prompts: int) -> list[SamplingParams]:
    """One `SamplingParams` (or None) for all prompts, or a list with one per prompt."""
    if sampling_params is None:
        return [SamplingParams()] * num_prompts
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_prompts
    if not isinstance(sampling_params, (list, tuple)):
        raise ValueError(
            f"sampling_params must be SamplingParams or a list of them, got "
            f"{type(sampling_params).__name__}"
        )
    params = list(sampling_params)
    if len(params) != num_prompts:
        raise ValueError(f"got {len(params)} sampling_params for {num_prompts} prompts")
    return params


def as_conversations(conversations) -> list[list[dict]]:
    """One conversation (a list of message dicts) or a list of them, as a list."""
    conversations = list(conversations)
    if not conversations:
        raise ValueError("no conversations given")
    if all(isinstance(m, dict) for m in conversations):
        return [conversations]  # one conversation
    return [list(conv) for conv in conversations]


def check_messages(messages) -> None:
    """A conversation: non-empty, each message a dict with a known role and string content."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"a message must be a dict with string 'content', got {message!r}")
        if message.get("role") not in ROLES:
            raise ValueError(f"unknown message role {message.get('role')!r}")
