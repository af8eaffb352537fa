"""When a request stops, and the text it returns (host only)."""

from pcjax.engine.request import Request


def stop_reason(req: Request, max_model_len: int, tokenizer) -> str | None:
    """Why `req` stops after its latest token: "stop", "length", or None to go on."""
    if req.output_token_ids[-1] in req.stop_token_ids:
        return "stop"
    if req.params.stop and _stop_string_at(decode(req, tokenizer), req.params.stop) is not None:
        return "stop"
    if len(req.output_token_ids) >= req.params.max_tokens or req.num_tokens >= max_model_len:
        return "length"
    return None


def final_text(req: Request, tokenizer) -> str:
    """The generated text, cut before the first stop string."""
    text = decode(req, tokenizer)
    cut = _stop_string_at(text, req.params.stop)
    return text if cut is None else text[:cut]


def decode(req: Request, tokenizer) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode(req.output_token_ids, skip_special_tokens=True)


def _stop_string_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
