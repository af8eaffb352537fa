"""The served deployment: an OpenAI-compatible HTTP server (`openai/`) and the `pcjax` CLI."""
