"""Subcommands of the `mavis` CLI, one module each (see mavis_ext/cli.py)."""
