"""`AsyncEngine`: an `Engine` whose step loop runs in one background thread, for asyncio servers.

Only the engine thread touches the `Engine`. Other threads (the HTTP event loop) hand it commands
through a queue: add a request, abort one, or run a function between steps (`call`). Each step's
outputs go back to the event loop in one ``call_soon_threadsafe`` per step, into a per-request
`asyncio.Queue` that `generate` reads; so the event loop never waits for a device step.

A request whose consumer goes away (its async generator is closed or cancelled: a client that
disconnected) is aborted at the next step boundary, and its pages go back as at a finish.

``observers`` are called in the engine thread after every step with the step's outputs and the
engine (metrics, periodic logging); they must be quick and must not raise.

With ``overlap=True`` the thread prepares and dispatches step k+1 before it waits for step k
(`OverlapLoop`, see `pcjax.engine.steps`); commands are handled between two such iterations.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable

from pcjax.engine.engine import Engine
from pcjax.engine.outputs import RequestOutput
from pcjax.engine.steps import OverlapLoop
from pcjax.sampling import SamplingParams

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # how long an idle engine thread waits for a command before calling observers


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an unexpected error; the server must be restarted."""


@dataclasses.dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    finished: bool = False


class AsyncEngine:
    """Drives `engine` from a background thread (`start` / `shutdown`).

    Args:
      engine: the engine; nothing else may call it once `start` ran.
      observers: ``fn(outputs, engine)`` called after every step (and about every 0.5 s when
        idle, with no outputs) in the engine thread.
      overlap: prepare step k+1 on the host while the device runs step k.
    """

    def __init__(self, engine: Engine, observers: tuple[Callable, ...] = (), overlap: bool = False):
        self.engine = engine
        self.observers = tuple(observers)
        self.overlap = overlap
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # touched by the engine thread only
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the AsyncEngine is already started")
        self._thread = threading.Thread(target=self._run, name="pcjax-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stops the engine thread after its current step (unfinished requests are aborted)."""
        self._stop.set()
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    # ---------------------------------------------------------------- requests (any thread)

    async def generate(
        self, prompt, sampling_params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Submits a request and yields its outputs as deltas (``output_kind="delta"``) until
        it finishes. Raises ValueError for invalid input. Closing the generator early aborts it."""
        self._check_alive()
        params = dataclasses.replace(sampling_params, output_kind="delta")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._commands.put(("add", prompt, params, request_id, stream))
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    stream.finished = True
                    return
        finally:
            if not stream.finished:
                self._commands.put(("abort", request_id))

    def abort(self, request_id: str) -> None:
        """Aborts a request at the next step boundary (thread-safe; unknown ids are ignored)."""
        self._commands.put(("abort", request_id))

    async def call(self, fn: Callable[[Engine], object]):
        """Runs ``fn(engine)`` in the engine thread between steps and returns its result."""
        self._check_alive()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("call", fn, future))
        return await asyncio.wrap_future(future)

    def _check_alive(self) -> None:
        if self.error is not None:
            raise EngineDeadError(f"the engine thread died: {self.error!r}")
        if not self.is_running:
            raise EngineDeadError("the engine is not running")

    # --------------------------------------------------------------------------- engine thread

    def _run(self) -> None:
        loop = OverlapLoop(self.engine) if self.overlap else None
        has_work = loop.has_work if loop else self.engine.has_unfinished_requests
        step = loop.step if loop else self.engine.step
        try:
            while not self._stop.is_set():
                busy = has_work()
                self._drain_commands(block=not busy)
                if has_work():
                    outputs = step()
                    self._deliver(outputs)
                    self._observe(outputs)
                elif not busy:
                    self._observe([])
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            logger.exception("the engine thread stopped")
            self.error = exc
        finally:
            self._close_all()

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_S) if block else None
            if command is not None:
                self._handle(command)
            while True:
                self._handle(self._commands.get_nowait())
        except queue.Empty:
            return

    def _handle(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, prompt, params, request_id, stream = command
            try:
                self.engine.add_request(prompt, params, request_id)
            except ValueError as exc:
                _put(stream, [exc])
                return
            self._streams[request_id] = stream
        elif kind == "abort":
            outputs = self.engine.abort(command[1])
            self._deliver(outputs)
            self._observe(outputs)
        elif kind == "call":
            _, fn, future = command
            try:
                future.set_result(fn(self.engine))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in by_loop.items():
            _call_in_loop(loop, _put_many, items)

    def _observe(self, outputs: list[RequestOutput]) -> None:
        for observer in self.observers:
            try:
                observer(outputs, self.engine)
            except Exception:  # noqa: BLE001 - an observer must not stop the engine
                logger.exception("a step observer failed")

    def _close_all(self) -> None:
        """Ends every stream: aborted at shutdown, or the thread's error."""
        error = self.error or EngineDeadError("the engine was shut down")
        for stream in self._streams.values():
            _put(stream, [error])
        self._streams.clear()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _put(command[4], [error])
            elif command[0] == "call":
                command[2].set_exception(error)


def _put(stream: _Stream, items: list) -> None:
    _call_in_loop(stream.loop, _put_many, [(stream.queue, item) for item in items])


def _put_many(items: list) -> None:
    for q, item in items:
        q.put_nowait(item)


def _call_in_loop(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
        loop.call_soon_threadsafe(fn, *args)
