"""``python -m nyxnb`` runs the CLI."""

from nyxnb.cli.main import main

main()
