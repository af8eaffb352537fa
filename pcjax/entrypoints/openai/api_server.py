"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over one `AsyncEngine`.

    python -m pcjax.entrypoints.openai.api_server --model pcjax-small --port 8000

The socket is bound first and the engine loads (and compiles its first programs) in a background
thread: until it is ready every endpoint but /health, /version and /metrics answers 503. Routes:
/v1/completions, /v1/chat/completions, /v1/models, /health, /version, /tokenize, /detokenize,
/reset_prefix_cache, /metrics (also on --metrics-port), /debug/engine (stats and the engine's
integrity check), and SGLang's router probes /get_model_info, /model_info, /get_server_info,
/server_info.
"""

import argparse
import asyncio
import contextlib
import logging
import sys
import threading

import anyio
import fastapi
import uvicorn
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pcjax.entrypoints.openai import args as server_args
from pcjax.entrypoints.openai import chat, completions
from pcjax.entrypoints.openai import protocol as p
from pcjax.entrypoints.openai.routes import add_admin_routes
from pcjax.entrypoints.openai.serving import RequestError
from pcjax.entrypoints.openai.state import ServerState

logger = logging.getLogger("pcjax.server")


def build_app(state: ServerState) -> fastapi.FastAPI:
    """The FastAPI app serving ``state`` (its engine may still be loading)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start_loading(asyncio.get_running_loop())
        yield
        state.shutdown()

    app = fastapi.FastAPI(title="pcjax", lifespan=lifespan)
    app.state.pcjax = state
    _add_error_handlers(app)
    _add_generation_routes(app, state)
    add_admin_routes(app, state)
    return app


def _add_error_handlers(app: fastapi.FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = f"invalid JSON: {first.get('ctx', {}).get('error', message)}"
        param = ".".join(where) or None
        body = RequestError(f"{param}: {message}" if param else message, param=param).body()
        return JSONResponse(body, status_code=400)


def _add_generation_routes(app: fastapi.FastAPI, state: ServerState) -> None:
    @app.post("/v1/completions")
    async def create_completion(req: p.CompletionRequest, raw: fastapi.Request):
        return await _generate(state, completions, req, raw)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(req: p.ChatCompletionRequest, raw: fastapi.Request):
        return await _generate(state, chat, req, raw)


async def _generate(state: ServerState, handler, req, raw: fastapi.Request):
    """Prepares (400/404 before anything is queued), admits (429), then runs the request."""
    serving = state.require_ready()
    model, request_id, sequences, params = handler.prepare(serving, req)
    serving.admit(params.n * len(sequences))
    args = (serving, req, model, request_id, sequences, params)
    if req.stream:
        return _AbortingStream(handler.stream_response(*args), media_type="text/event-stream")
    body = await _unless_disconnected(raw, handler.full_response(*args))
    return body if isinstance(body, Response) else JSONResponse(body)


class _AbortingStream(StreamingResponse):
    """A stream that closes its generator however it ends. Starlette cancels a stream whose
    client went away but leaves the generator suspended; closing it runs its ``finally``, which
    aborts the engine requests and releases their admission slots."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


async def _unless_disconnected(raw: fastapi.Request, coro):
    """Awaits ``coro`` unless the client disconnects first; then cancels it (which aborts the
    engine requests) and answers 499 to nobody."""
    task = asyncio.ensure_future(coro)

    async def disconnected():
        while (await raw.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return Response(status_code=499)
    return task.result()


def serve(args: argparse.Namespace) -> int:
    """Checks the flags, binds the ports, loads the engine and serves until stopped."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = server_args.check_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if _start_processes(args):
        return _follow(config)
    names = args.served_model_name or [args.model]
    state = ServerState(config, names, args)
    app = build_app(state)
    uv_config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(uv_config)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    if args.metrics_port not in (None, args.port):
        state.start_metrics_server(args.host, args.metrics_port)
    logger.info("serving %s on http://%s:%d", names[0], args.host, args.port)
    server.run()
    state.stop_metrics_server()
    return 1 if state.load_error is not None else 0


def _start_processes(args: argparse.Namespace) -> bool:
    """Sets up simulated CPU devices and ``jax.distributed`` as the flags ask; True on a
    follower process (one that serves no HTTP, see `pcjax.parallel.multihost`)."""
    from pcjax import parallel

    if args.num_processes > 1:
        parallel.initialize(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            num_cpu_devices=args.num_cpu_devices,
        )
        return args.process_id > 0
    if args.num_cpu_devices is not None:
        parallel.use_cpu_devices(args.num_cpu_devices)
    return False


def _follow(config) -> int:
    """A follower: builds the same engine as process 0 and mirrors its device work until it
    stops."""
    import jax

    from pcjax import parallel
    from pcjax.engine.engine import Engine

    engine = Engine(config=config)
    logger.info("process %d of %d follows process 0", jax.process_index(), jax.process_count())
    count = parallel.follow(engine)
    logger.info("process 0 stopped after %d device operations", count)
    parallel.shutdown()
    return 0


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="pcjax OpenAI-compatible server (single process, one engine)"
    )
    server_args.add_server_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return serve(make_parser().parse_args(argv))


if __name__ == "__main__":
    threading.current_thread().name = "pcjax-server"
    sys.exit(main())
