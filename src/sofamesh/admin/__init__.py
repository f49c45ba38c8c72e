"""Envoy's admin API for sofamesh: HTTP server (server.py), endpoints (handlers.py),
stats formats (stats_format.py) and the backends it reads (backend.py)."""
