"""Library side of the command-line tools in ``tools/``: thin CLIs call these functions."""
