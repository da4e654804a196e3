"""Dataset layouts, one module per family, each registering its layouts (``registry``)."""
