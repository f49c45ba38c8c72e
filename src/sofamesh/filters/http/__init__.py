"""Built-in HTTP filters, one module each, registered by name (see ../registry.py)."""
