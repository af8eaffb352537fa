"""OpenAI-compatible server: `protocol` (request/response models), `serving` (requests to the
engine and back), `api_server` (FastAPI app, routes, `main`), `args` (command-line flags)."""
