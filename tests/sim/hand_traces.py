"""Small hand-made traces for replay tests: one letter per block, one token per block."""

from pcjax.sim.trace import BlockChainer, Request, Trace


def make_trace(*prompts: str, times=None, outputs=None, block_tokens: int = 1) -> Trace:
    """A trace of prompts like "sx" (blocks "s", "x"), chained; ``input_length`` = whole blocks."""
    chainer = BlockChainer()
    times = times or range(len(prompts))
    outputs = outputs or [0] * len(prompts)
    requests = [
        Request(float(t), len(p) * block_tokens, o, chainer.chain(p))
        for p, t, o in zip(prompts, times, outputs, strict=True)
    ]
    return Trace("hand", block_tokens, requests)
