"""Envoy v3 bootstrap loading and validation (see loader.py, validate.py)."""

from sofamesh.config.errors import ConfigError, Problem
from sofamesh.config.loader import load_bootstrap, parse_yaml
from sofamesh.config.validate import Report, validate_bootstrap

__all__ = ["ConfigError", "Problem", "Report", "load_bootstrap", "parse_yaml", "validate_bootstrap"]
