"""When a request stops, and the log-probabilities it reports (host only)."""

import numpy as np

from pcjax.engine.outputs import TokenLogprob
from pcjax.engine.request import Request
from pcjax.sampling import SampleResult


def stop_reason(req: Request, max_model_len: int) -> str | None:
    """Why `req` stops after its latest token: "stop", "length", or None to go on.

    Stop tokens count once the token is past ``min_tokens`` (before, the sampler masks them);
    stop strings once ``min_tokens`` tokens exist. The text is brought up to date incrementally
    (`IncrementalDetokenizer`) when the request reports text while running or has stop strings;
    otherwise it is decoded once, at the finish.
    """
    num_out = len(req.output_token_ids)
    params = req.params
    if num_out > params.min_tokens and req.output_token_ids[-1] in req.stop_token_ids:
        return "stop"
    detok = req.detokenizer
    incremental = detok is not None and (params.stop or req.group.output_kind != "final")
    if incremental and detok.update(req.output_token_ids, check_stop=num_out >= params.min_tokens):
        return "stop"
    if num_out >= params.max_tokens or len(req.prompt_token_ids) + num_out >= max_model_len:
        return "length"
    return None


def token_logprob(result: SampleResult, row: int, num_top: int) -> TokenLogprob:
    """The sampled token's log-probability and the ``num_top`` best of row ``row``."""
    values = np.asarray(result.logprobs[row], dtype=np.float64)
    ids = np.asarray(result.logprob_ids[row])
    pairs = zip(ids[1 : 1 + num_top], values[1 : 1 + num_top], strict=True)
    top = tuple((int(i), float(v)) for i, v in pairs)
    return TokenLogprob(int(ids[0]), float(values[0]), top)
