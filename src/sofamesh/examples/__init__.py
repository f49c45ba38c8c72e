"""Bundled example configurations."""
