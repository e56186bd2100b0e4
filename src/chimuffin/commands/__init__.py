"""Subcommands of the `chimuffin` CLI: one module each, with `register(subparsers)`."""
