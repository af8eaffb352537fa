"""The routes around generation: models, health, version, tokenizer, cache reset, metrics,
debug, and the probes of SGLang's router."""

import fastapi
from fastapi.responses import JSONResponse, Response

import pcjax
from pcjax.entrypoints.openai import protocol as p
from pcjax.entrypoints.openai.serving import RequestError
from pcjax.entrypoints.openai.state import ServerState

VERSION = "0.1.0"


def add_admin_routes(app: fastapi.FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health():
        return Response(status_code=200 if state.ready else 503)

    @app.get("/version")
    async def version():
        return {"version": VERSION, "name": pcjax.__name__}

    @app.get("/v1/models")
    async def models():
        serving = state.require_ready()
        cards = [
            p.ModelCard(id=name, root=state.config.model, max_model_len=serving.max_model_len)
            for name in state.names
        ]
        return p.dump(p.ModelList(data=cards))

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics_text(), media_type="text/plain; version=0.0.4")

    _add_tokenizer_routes(app, state)
    _add_engine_routes(app, state)


def _add_tokenizer_routes(app: fastapi.FastAPI, state: ServerState) -> None:
    @app.post("/tokenize")
    async def tokenize(req: p.TokenizeRequest):
        serving = state.require_ready()
        serving.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise RequestError("give exactly one of 'prompt' and 'messages'", param="prompt")
        if serving.tokenizer is None:
            raise RequestError("this model has no tokenizer")
        if req.prompt is not None:
            tokens = serving.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        else:
            chat = p.ChatCompletionRequest(
                messages=req.messages, add_generation_prompt=req.add_generation_prompt
            )
            messages = [{"role": m.role, "content": m.text()} for m in chat.messages]
            text = serving.engine.engine.render_chat(messages, req.add_generation_prompt)
            tokens = serving.tokenizer.encode(text, add_special_tokens=False)
        return {
            "tokens": list(tokens),
            "count": len(tokens),
            "max_model_len": serving.max_model_len,
        }

    @app.post("/detokenize")
    async def detokenize(req: p.DetokenizeRequest):
        serving = state.require_ready()
        serving.check_model(req.model)
        vocab = serving.engine.engine.model.config.vocab_size
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token ids out of range [0, {vocab}): {bad[:5]}", param="tokens")
        return {"prompt": serving.tokenizer.decode(req.tokens) if serving.tokenizer else ""}


def _add_engine_routes(app: fastapi.FastAPI, state: ServerState) -> None:
    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache():
        serving = state.require_ready()
        dropped = await serving.engine.call(lambda engine: engine.reset_prefix_cache())
        return {"reset": True, "dropped_pages": dropped}

    @app.get("/debug/engine")
    async def debug_engine():
        """The engine's stats and its integrity check, run between two steps."""
        serving = state.require_ready()

        def inspect(engine):
            try:
                engine.check_integrity()
                integrity = "ok"
            except AssertionError as exc:
                integrity = f"failed: {exc}"
            return {"integrity": integrity, "stats": engine.stats()}

        state_ = await serving.engine.call(inspect)
        state_["in_flight_sequences"] = serving.in_flight  # admitted, not yet ended
        return state_

    async def model_info():
        return {"model_path": state.config.model, "tokenizer_path": state.config.model,
                "is_generation": True, "served_model_names": state.names}  # fmt: skip

    async def server_info():
        info = {"model_path": state.config.model, "ready": state.ready}
        info.update({k: v for k, v in vars(state.config).items() if k != "model"})
        if state.ready:
            info["stats"] = await state.serving.engine.call(lambda engine: engine.stats())
        return JSONResponse(info)

    for path in ("/get_model_info", "/model_info"):
        app.add_api_route(path, model_info, methods=["GET"])
    for path in ("/get_server_info", "/server_info"):
        app.add_api_route(path, server_info, methods=["GET"])
