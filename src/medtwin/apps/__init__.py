"""Application layer: the FastAPI service, the dashboard and the CLI."""
