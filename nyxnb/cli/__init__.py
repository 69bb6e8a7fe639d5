"""The ``nyxnb`` command, one module per command group (``run``, ``migrate``, ``batch``).

The top layer: may import everything below it.
"""

from nyxnb.cli.main import cli, main

__all__ = ["cli", "main"]
