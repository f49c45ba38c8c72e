"""Errors the Server raises while turning a bootstrap into running listeners and clusters."""


class UnsupportedConfig(ValueError):
    """A field sofamesh does not implement; the message starts with the field path."""
