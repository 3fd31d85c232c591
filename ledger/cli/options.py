"""Options several ``ledger`` commands share, worded once (``--help`` reads the same in each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="ledger.toml to read (default: $LEDGER_CONFIG or ./ledger.toml if present).",
        dir_okay=False,
    ),
]
