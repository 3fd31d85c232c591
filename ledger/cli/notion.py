"""``ledger notion``: set up the Notion mirror (``init``), see how it is doing (``status``) and
compare every row with Notion (``sync``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ledger.cli.options import ConfigOption
from ledger.config import Settings

notion_app = typer.Typer(
    help="The Notion mirror: set up its databases, check on it, resync it.",
    no_args_is_help=True,
)


def _settings(config: Path | None) -> Settings:
    from ledger.cli import _settings as load

    return load(config)


def _say(text: str) -> None:
    """Print ``text`` with each `ledger …` command in it carrying the --config given."""
    from ledger.cli import carry_config

    print(carry_config(text))


def _open_db(settings: Settings) -> Any:
    from ledger.db.session import Database

    return Database.open(settings.database_url)


@notion_app.command("init")
def init(
    parent: Annotated[
        str,
        typer.Option(
            "--parent",
            help="The Notion page to hold the databases (its id, from the page's link); share "
            "it with the integration first.",
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Create the Behaviors, Ledger and Approvals databases under a page, or adopt them if
    they are already there; the daemon then mirrors every row into them."""
    from ledger.notion.schema import init_workspace
    from ledger.notion.setup import open_api
    from ledger.notion.store import save_workspace

    settings = _settings(config)
    db = _open_db(settings)
    try:

        async def run() -> Any:
            api = open_api(settings)
            try:
                return await init_workspace(api, parent)
            finally:
                await api.aclose()

        ids = asyncio.run(run())
        from datetime import UTC, datetime

        with db.transaction() as session:
            save_workspace(session, ids, datetime.now(UTC))
    finally:
        db.close()
    for table in ("behaviors", "ledger", "approvals"):
        how = "adopted" if table.capitalize() in ids.adopted else "created"
        print(
            f"{table.capitalize():10} {how}: database {ids.databases[table]}, "
            f"data source {ids.data_sources[table]}"
        )
    _say("The daemon mirrors every row from now on (`ledger notion status` to follow it).")


@notion_app.command("status")
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what GET /api/notion answers.")] = (
        False
    ),
) -> None:
    """The databases' ids, the Notion work queued, dead letters, the last sync and poll, and
    the mirror's state (ok, behind, failing…) with what to do about it."""
    from datetime import UTC, datetime

    from ledger.notion.health import mirror_status

    settings = _settings(config)
    db = _open_db(settings)
    try:
        with db.transaction() as session:
            report = mirror_status(session, settings, datetime.now(UTC))
    finally:
        db.close()
    doc = report.as_json()
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    if report.state == "off" and not doc["configured"]:
        _say(f"Notion mirror: off. {report.advice}")
        return
    if not doc["configured"]:
        _say("Notion mirror: not set up (run `ledger notion init --parent PAGE_ID`).")
        return
    print(f"Notion mirror under page {doc['parent_page_id']} ({doc['base_url']})")
    for table, ids in (doc["databases"] or {}).items():
        print(f"  {table:10} database {ids['database_id']}  data source {ids['data_source_id']}")
    print(f"  queued: {doc['queued']}   dead letters: {doc['dead']}")
    last_sync, last_poll = doc["last_sync_at"] or "never", doc["last_poll_at"] or "never"
    print(f"  last sync: {last_sync}   last poll: {last_poll}")
    for row in doc["dead_letters"]:
        print(f"  dead #{row['id']} {row['kind']}: {row['error']}")
    _say(f"  state: {report.state.replace('_', ' ')}. {report.advice}")


@notion_app.command("sync")
def sync(config: ConfigOption = None) -> None:
    """Compare every row with Notion and write only what differs (missing rows are created;
    rows already up to date cost no write)."""
    from ledger.clock import SystemClock
    from ledger.daemon import build_policy_context
    from ledger.notion.mirror import Mirror
    from ledger.notion.setup import open_api

    settings = _settings(config)
    db = _open_db(settings)
    try:

        async def run() -> Any:
            api = open_api(settings)
            try:
                mirror = Mirror(
                    db,
                    api,
                    SystemClock(),
                    build_policy_context(settings),
                    dashboard_url=settings.public_url,
                )
                return await mirror.sync()
            finally:
                await api.aclose()

        report = asyncio.run(run())
    finally:
        db.close()
    _say(report.describe())
