"""Request traces for cache replay: the record type, the file formats and the infinite-cache bound.

Every loader and generator emits the same record, `Request`: arrival time, prompt and output
lengths, and the prompt as a tuple of **prefix-chained block ids** -- one id per ``block_tokens``
tokens (the last block may be partial), where two requests share an id at position ``j`` exactly
when their first ``j + 1`` blocks are equal. Loaders re-chain whatever ids a file holds
(`BlockChainer`), so chained inputs (Mooncake's ``hash_ids``, vLLM block hashes) and per-block
content ids give the same record, and ids come out dense (``0 .. unique - 1``).

File formats (JSONL, one request per line, in arrival order):

* **Mooncake FAST'25** (found or downloaded by `pcjax.sim.trace_registry`): ``{"timestamp": ms,
  "input_length": int, "output_length": int, "hash_ids": [int, ...]}``, 512-token blocks.
* **Generic** (`save_generic` writes it): an optional first header line ``{"format":
  "pcjax-trace", "block_tokens": int}`` (512 when absent), then requests with ``timestamp`` (ms),
  ``input_length``, ``output_length`` and one of ``block_ids`` (a list of per-block ids, content
  or chained, alike to the loader) or ``tokens`` (the raw prompt token ids, cut into blocks here;
  ``input_length`` may then be omitted). ``hash_ids`` is accepted as a synonym of ``block_ids``.

Host-only: plain Python, no jax.
"""

import json
import os
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from pcjax.sim import trace_registry

MOONCAKE_BLOCK_TOKENS = 512
GENERIC_HEADER = "pcjax-trace"
MOONCAKE_TRACES = {name: entry.local_name for name, entry in trace_registry.TRACES.items()}


class Request(NamedTuple):
    """One request of a trace.

    Attributes:
      timestamp_ms: arrival time in ms from the start of the trace.
      input_length: prompt tokens.
      output_length: generated tokens.
      block_ids: prefix-chained ids of the prompt's blocks, ``ceil(input_length / block_tokens)``
        of them when the trace has token lengths (generators may leave the last block partial).
    """

    timestamp_ms: float
    input_length: int
    output_length: int
    block_ids: tuple[int, ...]


class Trace(NamedTuple):
    """A named request sequence; ``block_tokens`` tokens per block (the replay's key unit)."""

    name: str
    block_tokens: int
    requests: list[Request]


class BlockChainer:
    """Maps (parent block, block content) to dense prefix-chained ids.

    Example::

        c = BlockChainer()
        c.chain(["sys", "a", "b"])   # (0, 1, 2)
        c.chain(["sys", "a", "c"])   # (0, 1, 3): shares the prefix "sys a"
        c.chain(["x", "a"])          # (4, 5):    "a" after "x" is another block
    """

    def __init__(self):
        self._ids: dict[tuple, int] = {}

    @property
    def num_blocks(self) -> int:
        """Distinct chained blocks seen so far."""
        return len(self._ids)

    def chain(self, contents: Iterable[Hashable], parent: int = -1) -> tuple[int, ...]:
        """Chained ids of the blocks ``contents`` that follow block ``parent`` (-1: the start)."""
        ids, table = [], self._ids
        for content in contents:
            parent = table.setdefault((parent, content), len(table))
            ids.append(parent)
        return tuple(ids)


def load_trace(path: str, *, limit: int | None = None, name: str | None = None) -> Trace:
    """Loads a Mooncake or generic JSONL trace (see the module docstring); ``limit``: first n."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    header = json.loads(lines[0]) if lines else {}
    block_tokens = MOONCAKE_BLOCK_TOKENS
    if header.get("format") == GENERIC_HEADER:
        block_tokens = int(header["block_tokens"])
        lines = lines[1:]
    if limit is not None:
        lines = lines[:limit]
    chainer = BlockChainer()
    requests = [_parse(json.loads(line), block_tokens, chainer) for line in lines]
    return Trace(name or os.path.basename(path), block_tokens, requests)


def _parse(record: dict, block_tokens: int, chainer: BlockChainer) -> Request:
    if "tokens" in record:
        tokens = record["tokens"]
        blocks = [tuple(tokens[i : i + block_tokens]) for i in range(0, len(tokens), block_tokens)]
        length = record.get("input_length", len(tokens))
    else:
        blocks = record["block_ids"] if "block_ids" in record else record["hash_ids"]
        length = record["input_length"]
    return Request(
        float(record.get("timestamp", 0)),
        int(length),
        int(record.get("output_length", 0)),
        chainer.chain(blocks),
    )


def mooncake_path(name: str, traces_dir: str | None = None, *, download: bool = True) -> str:
    """Path of a registered Mooncake trace ("conversation", "synthetic", "toolagent"): found in
    ``traces_dir`` or the registry's folders, else downloaded (`pcjax.sim.trace_registry`)."""
    return str(trace_registry.trace_file(name, traces_dir=traces_dir, download=download))


def save_generic(trace: Trace, path: str) -> None:
    """Writes ``trace`` in the generic format (chained ``block_ids``); `load_trace` reads it."""
    with open(path, "w") as f:
        f.write(json.dumps({"format": GENERIC_HEADER, "block_tokens": trace.block_tokens}) + "\n")
        for r in trace.requests:
            record = {
                "timestamp": r.timestamp_ms,
                "input_length": r.input_length,
                "output_length": r.output_length,
                "block_ids": list(r.block_ids),
            }
            f.write(json.dumps(record) + "\n")


class TraceStats(NamedTuple):
    """Sizes and the infinite-cache bound of a trace (prefix-contiguous hits, no eviction)."""

    num_requests: int
    total_blocks: int
    unique_blocks: int
    total_tokens: int
    infinite_block_hit_rate: float  # 1 - unique / total when no request hits after a miss
    infinite_token_hit_rate: float


def trace_stats(trace: Trace) -> TraceStats:
    """Replays ``trace`` against an unbounded cache: a request hits its longest seen prefix."""
    seen: set[int] = set()
    hit_blocks = hit_tokens = total_blocks = total_tokens = 0
    bt = trace.block_tokens
    for r in trace.requests:
        hits = prefix_hits(r.block_ids, seen)
        seen.update(r.block_ids)
        hit_blocks += hits
        hit_tokens += min(hits * bt, r.input_length)
        total_blocks += len(r.block_ids)
        total_tokens += r.input_length
    return TraceStats(
        len(trace.requests),
        total_blocks,
        len(seen),
        total_tokens,
        hit_blocks / max(total_blocks, 1),
        hit_tokens / max(total_tokens, 1),
    )


def prefix_hits(block_ids: Sequence[int], seen: set) -> int:
    """Length of the longest prefix of ``block_ids`` whose blocks are all in ``seen``."""
    for i, b in enumerate(block_ids):
        if b not in seen:
            return i
    return len(block_ids)
