"""The REST API under `/api/v1` (FastAPI). `create_app(settings)` builds the whole web app."""
