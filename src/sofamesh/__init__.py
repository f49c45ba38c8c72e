"""sofamesh: an Envoy-compatible sidecar with a Cython hot path, and an xDS pilot."""

__version__ = "0.1.0"
