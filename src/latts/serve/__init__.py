"""``latts serve``: the controller behind an OpenAI-compatible HTTP API (FastAPI + uvicorn)."""
