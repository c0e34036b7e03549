"""The `adx` command line."""
