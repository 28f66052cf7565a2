"""What the command-line tools in ``tools/`` share: thin CLIs call these functions."""
