"""Several processes (hosts) running one engine: process 0 leads, the others follow.

Every process builds the same `Engine` over one mesh spanning all processes' devices (with
``jax.distributed`` initialized first: `initialize`). Process 0 alone owns the scheduler, the
radix trees and the page pools; the others only mirror the device work. Each device operation
of the leader's `ShardedRunner` (a step, a batch of page copies, a cache reset) is first sent to
the followers as a `Channel` message of small integer arrays, then run by every process: all of
them call the same jitted programs with the same inputs, in the same order, as multi-controller
JAX requires. A follower runs `follow(engine)` until the leader calls `stop_followers(engine)`.

The processes must compile the very same programs, debug locations included: since jax 0.12 two
programs that differ only in their source locations do not meet in a cross-process collective,
which then waits forever (seen with gloo on CPU). The leader traces each program under the
engine's step and a follower under `follow`, so the call stacks recorded as locations differ;
`initialize` and `Channel` therefore turn locations off (`drop_source_locations`).

A message is two ``multihost_utils.broadcast_one_to_all`` calls: a fixed-size header (operation,
array dtypes and shapes, body length) and a body of every array's bytes as int32, padded to a
power of two so that few broadcast programs compile.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

OPS = ("run", "copy", "reset", "stop")
HEADER_LEN = 128
_MAX_DIMS = 3
_DTYPES = (np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.float32))
_MIN_BODY = 64


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    num_cpu_devices: int | None = None,
) -> None:
    """Starts ``jax.distributed`` (before anything else uses jax), with gloo CPU collectives.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes, process_id: how many processes, and which one this is (0 leads).
      num_cpu_devices: run on the CPU platform with this many devices per process (testing on
        one machine); None: the platform's own devices.
    """
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} outside [0, num_processes={num_processes})")
    if num_cpu_devices is not None:
        use_cpu_devices(num_cpu_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    drop_source_locations()
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def drop_source_locations() -> None:
    """Compiles programs from now on without Python source locations (see the module
    docstring): every process then builds identical programs whatever its call stack."""
    jax.config.update("jax_traceback_in_locations_limit", 0)


def shutdown() -> None:
    """Leaves ``jax.distributed`` together with the other processes (a barrier: process 0's
    coordinator must outlive the others' goodbyes). A no-op with one process."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def use_cpu_devices(num_devices: int) -> None:
    """Runs this process on the CPU platform with ``num_devices`` (simulated) devices; call it
    before anything else uses jax."""
    if num_devices < 1:
        raise ValueError(f"num_cpu_devices must be >= 1, got {num_devices}")
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_devices)


class Channel:
    """Broadcasts device commands from process 0 to every other process."""

    def __init__(self):
        self.is_leader = jax.process_index() == 0
        drop_source_locations()  # also when jax.distributed was started without `initialize`

    def send(self, op: str, arrays: list[np.ndarray]) -> None:
        """Sends one command (leader only): ``op`` in `OPS` and up to 25 arrays of <= 3 dims."""
        if not self.is_leader:
            raise RuntimeError("only process 0 sends commands")
        header, body = encode(op, arrays)
        multihost_utils.broadcast_one_to_all(header)
        multihost_utils.broadcast_one_to_all(body)

    def receive(self) -> tuple[str, list[np.ndarray]]:
        """Waits for the leader's next command (followers only)."""
        if self.is_leader:
            raise RuntimeError("process 0 sends commands, it does not receive them")
        header = np.asarray(multihost_utils.broadcast_one_to_all(np.zeros(HEADER_LEN, np.int32)))
        body = multihost_utils.broadcast_one_to_all(np.zeros(header[2], np.int32))
        return decode(header, np.asarray(body))


def encode(op: str, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(header i32[HEADER_LEN], body i32[n])`` of a command (see the module docstring)."""
    arrays = [np.asarray(a) for a in arrays]
    arrays = [a if a.flags.c_contiguous else a.copy() for a in arrays]  # 0-d arrays stay 0-d
    header = np.zeros(HEADER_LEN, np.int32)
    if 3 + (2 + _MAX_DIMS) * len(arrays) > HEADER_LEN:
        raise ValueError(f"too many arrays for one command: {len(arrays)}")
    words = [a.reshape(-1).view(np.int32) for a in arrays]
    size = sum(w.size for w in words)
    body = np.zeros(max(_MIN_BODY, 1 << max(size - 1, 0).bit_length()), np.int32)
    if words:
        body[:size] = np.concatenate(words)
    header[:3] = OPS.index(op), len(arrays), body.size
    for i, a in enumerate(arrays):
        if a.dtype not in _DTYPES or a.ndim > _MAX_DIMS:
            raise ValueError(f"cannot send an array of {a.dtype} with {a.ndim} dims")
        at = 3 + i * (2 + _MAX_DIMS)
        header[at : at + 2 + a.ndim] = [_DTYPES.index(a.dtype), a.ndim, *a.shape]
    return header, body


def decode(header: np.ndarray, body: np.ndarray) -> tuple[str, list[np.ndarray]]:
    """The inverse of `encode`."""
    op, count = OPS[int(header[0])], int(header[1])
    arrays, offset = [], 0
    for i in range(count):
        at = 3 + i * (2 + _MAX_DIMS)
        dtype, ndim = _DTYPES[int(header[at])], int(header[at + 1])
        shape = tuple(int(n) for n in header[at + 2 : at + 2 + ndim])
        size = int(np.prod(shape, dtype=np.int64))
        arrays.append(body[offset : offset + size].view(dtype).reshape(shape).copy())
        offset += size
    return op, arrays


def follow(engine) -> int:
    """Runs the leader's device commands on this process until it stops; returns how many."""
    runner = engine.runner
    if getattr(runner, "channel", None) is None or runner.channel.is_leader:
        raise ValueError("follow() runs on processes other than 0 of a multi-process engine")
    count = 0
    while True:
        op, arrays = runner.channel.receive()
        if op == "stop":
            return count
        runner.execute(op, arrays)
        count += 1


def stop_followers(engine) -> None:
    """Ends `follow` on every other process (process 0, once it is done with the engine)."""
    channel = getattr(engine.runner, "channel", None)
    if channel is not None and channel.is_leader:
        channel.send("stop", [])
