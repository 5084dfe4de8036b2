"""The ``ca-service`` command line (being split by concern)."""

from ca_service.cli.certificates import cli, main

__all__ = ["cli", "main"]
