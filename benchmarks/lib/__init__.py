"""Helpers for the end-to-end benchmarks: processes pinned to cores, CPU accounting, nginx, wrk."""
