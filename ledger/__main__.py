"""``python -m ledger`` → the CLI."""

from ledger.cli import main

main()
