"""The HTTP API (FastAPI): plans, approvals, webhooks, health."""
