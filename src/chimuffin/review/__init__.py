"""The offline review page: `chimuffin review` (server.py) and its static files (static/)."""
