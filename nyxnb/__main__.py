"""``python -m nyxnb`` runs the CLI."""

from .cli import main

main()
