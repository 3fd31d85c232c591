"""The ``ledger`` command: parses, calls services, prints. No business logic here."""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger import __version__
from ledger.cli.demo import HELP as DEMO_HELP
from ledger.cli.demo import demo
from ledger.cli.multi import canvas_app
from ledger.cli.notion import notion_app
from ledger.cli.options import ConfigOption
from ledger.config import Settings, load_settings
from ledger.errors import LedgerError
from ledger.logging import configure_logging

if TYPE_CHECKING:
    from sqlmodel import Session

    from ledger.status import BehaviorStatus

# The command modules import what a command needs inside it: `ledger --help` or `ledger status`
# must not pay for alembic, the Notion client, the web app or the behavior schema
# (tests/test_cli_imports.py keeps it so).

app = typer.Typer(
    help="Promotion Ledger: scheduled LLM behaviors that earn their autonomy.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")
sim_app = typer.Typer(
    help="Local simulators of the outside services (for tests and demos).", no_args_is_help=True
)
app.add_typer(sim_app, name="sim")
app.add_typer(notion_app, name="notion")
app.command("demo", help=DEMO_HELP)(demo)

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _settings(config: Path | None, *, daemon: bool = False, **overrides: Any) -> Settings:
    """The settings, and logging set up from them. A one-shot command logs warnings and errors
    only (its result is what it prints) unless ``ledger --verbose`` or a configured
    ``log_level`` says otherwise; the daemon logs at ``log_level``."""
    _given.config = config
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = load_settings(config, flags={k: f"--{k.replace('_', '-')}" for k in given}, **given)
    level = settings.log_level
    if not daemon and "log_level" not in settings.model_fields_set:
        level = "info" if _verbose() else "warning"
    configure_logging(settings.log_format, level)
    return settings


class _Given:
    """What this invocation was given that the commands it prints must carry: the command tree
    (which commands take --config) and the --config path, absolute (a command pasted into
    another directory or shell must read the same configuration)."""

    def __init__(self) -> None:
        self.root: Any = None
        self._config: Path | None = None

    @property
    def config(self) -> Path | None:
        return self._config

    @config.setter
    def config(self, value: Path | None) -> None:
        self._config = None if value is None else Path(os.path.abspath(value.expanduser()))


_given = _Given()
_COMMAND_RE = re.compile(r"`(ledger(?: [^`]*)?)`")


def command(*words: str) -> str:
    """``ledger WORDS…`` as this invocation's operator would type it next: with the --config
    they gave, when the command takes one (a command printed without it reads another
    configuration, or none, wherever it is pasted)."""
    return _with_config("ledger " + " ".join(words))


def carry_config(text: str) -> str:
    """``text`` with each `ledger …` command it quotes (between backticks) given this
    invocation's --config, as ``command`` does."""
    if _given.config is None or "`ledger" not in text:
        return text
    return _COMMAND_RE.sub(lambda m: f"`{_with_config(m.group(1))}`", text)


def _with_config(line: str) -> str:
    if _given.config is None or " --config" in line or not _takes_config(line.split()[1:]):
        return line
    return f"{line} --config {shlex.quote(str(_given.config))}"


def _takes_config(words: list[str]) -> bool:
    """Whether ``ledger WORDS…`` names a command with a --config option (groups are known by
    their ``commands``: Typer may bring its own copy of click)."""
    cmd = _given.root
    if cmd is None:
        return False
    for word in words:
        if not hasattr(cmd, "commands"):
            break
        sub = cmd.commands.get(word) or cmd.commands.get(getattr(cmd, "default_command", ""))
        if sub is None:
            return False
        cmd = sub
    if hasattr(cmd, "commands"):
        cmd = cmd.commands.get(getattr(cmd, "default_command", ""))
        if cmd is None:
            return False
    return any("--config" in p.opts for p in cmd.params)


# Options given before the command (``ledger --verbose run …``), set by ``_root``.
_ROOT_OPTIONS: dict[str, bool] = {"verbose": False}


def _verbose() -> bool:
    return _ROOT_OPTIONS["verbose"]


@contextmanager
def _transaction(settings: Settings, *, read_only: bool = False) -> Iterator[Session]:
    """One transaction on the configured database (which must be at the current schema).
    ``read_only`` commands never create a database file: a missing one is a LedgerError
    saying how to create it."""
    from ledger.db.session import Database

    if read_only:
        _require_database_file(settings.database_url)
    db = Database.open(settings.database_url)
    try:
        with db.transaction() as session:
            yield session
    finally:
        db.close()


def _require_database_file(database_url: str) -> None:
    """Raise LedgerError when ``database_url`` is a SQLite file that does not exist (opening
    it would create an empty one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except ArgumentError:
        return  # Database.open says what is wrong with it
    if url.get_backend_name() != "sqlite" or url.host or url.database in (None, "", ":memory:"):
        return  # (a host in a SQLite URL: Database.open says what is wrong with it)
    if not Path(url.database or "").is_file():
        raise LedgerError(
            f"no database at {url.database} yet: start `ledger serve` (it creates the database "
            "and registers the behaviors folder), or run `ledger db upgrade` to create it empty"
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _operator_name() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show info logs (stderr) of one-shot commands, which log warnings only "
            "unless LEDGER_LOG_LEVEL is set.",
        ),
    ] = False,
) -> None:
    _given.root, _given.config = ctx.command, None
    if version:
        print(f"promotion-ledger {__version__}")
        raise typer.Exit(0)
    _ROOT_OPTIONS["verbose"] = verbose
    # Results go to stdout, logs to stderr, for every command: until a command configures
    # logging from its settings, a log line must not fall back to structlog's stdout printer.
    fmt = os.environ.get("LEDGER_LOG_FORMAT")
    configure_logging("json" if fmt == "json" else "console" if fmt == "console" else "auto")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the starter files.")] = Path(
        "."
    ),
) -> None:
    """Create a starter ledger.toml and the example behaviors (never overwrites)."""
    from ledger.starter import write_starter

    for path in write_starter(directory):
        print(f"created {path}")
    print("next: set the API key variables named in the behavior files, then `ledger validate`")


@app.command()
def validate(
    directory: Annotated[
        Path | None, typer.Argument(help="Behaviors folder (default: the configured one).")
    ] = None,
    config: ConfigOption = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="A secret reference (env:NAME, file:PATH) that does not resolve in this shell "
            "is an error (exit 1), not a warning.",
        ),
    ] = False,
) -> None:
    """Check every behavior file; print each problem as path:line:col: field: message. Each
    secret reference (api_key, a webhook's url and secret…) that does not resolve in this
    shell is a warning: the daemon resolves them in its own environment (--strict: an error)."""
    from ledger.behaviors.load import load_directory, unresolved_references

    database_url: str | None = None
    policy: dict[str, Any] = {}
    broken: LedgerError | None = None
    try:
        settings = load_settings(config)
    except LedgerError as exc:
        if directory is None:
            raise
        folder, broken = directory, exc  # a folder given is checked, then the error said
    else:
        folder = directory if directory is not None else settings.behaviors_dir
        database_url, policy = settings.database_url, settings.policy
    holders = _registered_holders(database_url) if database_url else {}
    report = load_directory(folder, holders, global_policy=policy)
    if report.folder_error:
        raise LedgerError(report.folder_error)
    unresolved = unresolved_references(report)
    problems = report.problems + (unresolved if strict else [])
    for problem in problems:
        print(problem.render())
    for warning in report.warnings + ([] if strict else unresolved):
        print(f"warning: {warning.render()}")
    if unresolved:
        how = (
            "errors (--strict)"
            if strict
            else "warnings: the daemon resolves them in its own environment; "
            "--strict makes them errors"
        )
        print(
            f"{len(unresolved)} secret reference(s) do not resolve in this shell: {how}",
            file=sys.stderr,
        )
    files = len(report.files_seen)
    if broken is not None:
        raise broken
    if problems:
        bad = len({p.path for p in problems})
        print(f"{len(problems)} problem(s) in {bad} of {files} file(s)", file=sys.stderr)
        raise typer.Exit(1)
    print(f"{files} behavior file(s) valid in {folder}")


def _registered_holders(database_url: str) -> dict[tuple[str, str], str]:
    """Who has each behavior name and key in the configured database, so ``validate`` refuses
    the same file of two sharing a key as the daemon would; empty when there is no database
    yet or it cannot be read (then the first file by name keeps it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ledger.behaviors.registry import registered_holders
    from ledger.db.session import Database

    try:
        _require_database_file(database_url)  # never create a database file just to validate
        db = Database.open(database_url)
        try:
            with db.transaction() as session:
                return registered_holders(session)
        finally:
            db.close()
    except (LedgerError, SQLAlchemyError, OSError, ValueError):
        return {}


@app.command()
def schema() -> None:
    """Print the JSON Schema of behavior files (for editors)."""
    from ledger.behaviors.schema import behavior_json_schema

    print(json.dumps(behavior_json_schema(), indent=2))


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration, secrets masked."""
    settings = load_settings(config)
    for key, value in settings.masked().items():
        print(f"{key} = {json.dumps(value)}")


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or upgrade the database schema."""
    from ledger.db.engine import make_engine
    from ledger.db.migrate import current_revision, upgrade

    settings = _settings(config)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, revision)
        print(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


STATUS_ROWS = 50  # behaviors in the table without --all


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what GET /api/status answers.")
    ] = False,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help=f"List every behavior (by default, over {STATUS_ROWS}: those needing "
            "attention first).",
        ),
    ] = False,
) -> None:
    """Every behavior at a glance (tier, state, last and next run, failures, spend), then what
    needs an operator: missing keys, approvals, invalid files, the outbox, broadcast."""
    import gc

    import orjson

    from ledger.status import collect_status, collect_storage, status_json

    # A command that ends in a second makes ten thousand behaviors' objects: no cyclic
    # collection at all (a collection would walk the imports' objects each time, and freezing
    # them first costs a full collection).
    gc.disable()
    settings = _settings(config)
    now = _now()
    with _transaction(settings, read_only=True) as session:
        report = collect_status(session, now)
        storage = collect_storage(session)
    interval = settings.retention_interval_seconds
    if as_json:
        doc = status_json(report, storage, now, interval)
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    # The table shows a few behaviors: only those become JSON-shaped rows.
    _print_status(
        status_json(report, storage, now, interval, behaviors=False),
        report.behaviors,
        settings,
        show_all=show_all,
    )


def _needs_attention(b: BehaviorStatus) -> bool:
    return bool(
        b.state != "active"
        or b.problem
        or b.recent_failures
        or b.interrupted_24h
        or b.cost_disagreements_24h
    )


def _print_status(
    doc: dict[str, Any],
    everyone: list[BehaviorStatus],
    settings: Settings,
    *,
    show_all: bool = False,
) -> None:
    from ledger.spend import format_usd
    from ledger.status import behavior_json

    now = datetime.fromisoformat(doc["generated_at"])
    shown = everyone
    title = f"Promotion Ledger — {len(everyone)} behavior(s)"
    if not show_all and len(everyone) > STATUS_ROWS:
        # Thousands of rows are not a glance: those needing attention first, then a summary.
        attention = [b for b in everyone if _needs_attention(b)]
        rest = [b for b in everyone if not _needs_attention(b)]
        shown = (attention + rest)[:STATUS_ROWS]
        title = (
            f"Promotion Ledger — {len(shown)} of {len(everyone):,} behaviors "
            f"({len(attention):,} needing attention, listed first; --all lists every one)"
        )
        tiers: dict[str, int] = {}
        states: dict[str, int] = {}
        for one in everyone:
            tiers[one.tier.label] = tiers.get(one.tier.label, 0) + 1
            state = "active" if one.state == "active" else "not active"
            states[state] = states.get(state, 0) + 1
        out.print(
            " · ".join(f"{label}: {count:,}" for label, count in sorted(tiers.items()))
            + f" — {states.get('active', 0):,} active, {states.get('not active', 0):,} not",
            highlight=False,
        )
    behaviors = [behavior_json(b) for b in shown]
    table = Table(title=title)
    for col in ("behavior", "tier", "state", "last run", "next run", "fails/warns 24h", "spend"):
        table.add_column(col)
    for b in behaviors:
        last = "never"
        if b["last_run_at"] is not None:
            when = datetime.fromisoformat(b["last_run_at"])
            last = f"{_ago(now, when)} · {b['last_run_status'] or '?'}"
        spend = format_usd(b["spend_usd"])
        if b["budget_usd"] is not None:
            spend += f" / {format_usd(b['budget_usd'])} per {b['budget_reset']}"
        else:
            spend += " this month (no budget)"
        next_run = "—"
        if b["next_run_at"] is not None:
            seconds = b["interval_seconds"] is not None and b["interval_seconds"] < 60
            fmt = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
            next_run = datetime.fromisoformat(b["next_run_at"]).strftime(fmt)
        state = b["state"]
        table.add_row(
            b["name"],
            b["tier_label"],
            state if state == "active" else f"[yellow]{state}[/yellow]",
            last,
            next_run,
            str(b["recent_failures"]),
            spend,
        )
    if behaviors:
        out.print(table)
    else:
        out.print(
            carry_config(
                f"No behaviors registered yet. Start the daemon — `ledger serve` — and it "
                f"registers every valid file in {settings.behaviors_dir} (check them first with "
                "`ledger validate`; `ledger init` writes examples)."
            ),
            highlight=False,
            markup=False,
        )

    def warn(text: str) -> None:
        out.print(f"[yellow]{escape(carry_config(text))}[/yellow]", highlight=False)

    for b in behaviors:
        name = b["name"]
        if b["key_problem"]:
            warn(
                f"{name}: its key cannot be resolved where the daemon runs ({b['key_problem']}): "
                "it is not scheduled until the daemon can resolve it (set it in the daemon's "
                "environment and restart it, or fix the file: the next rescan schedules it)"
            )
        if b["problem"]:
            warn(f"{name}: its file is invalid; the last valid version keeps running:")
            out.print(b["problem"], highlight=False)
        if b["interrupted_runs_24h"]:
            warn(
                f"{name}: {b['interrupted_runs_24h']} run(s) in 24h interrupted by a daemon that "
                "stopped before they finished (reservations released; not held against it)"
            )
        if b["cost_disagreements_24h"]:
            warn(
                f"{name}: {b['cost_disagreements_24h']} run(s) in 24h whose broadcast cost "
                "differs from the runner's; the budget counted the larger (both figures: "
                "`ledger show RUN`)"
            )
    hidden = sum(1 for b in everyone if _needs_attention(b)) - sum(
        1 for b in shown if _needs_attention(b)
    )
    if hidden > 0:
        warn(f"{hidden:,} more behavior(s) need attention: `ledger status --all` lists them")
    if doc["pending_approvals"]:
        warn(
            f"{doc['pending_approvals']} approval request(s) pending: `ledger approvals` lists "
            "them, `ledger approve RUN` / `ledger reject RUN --reason TEXT` decides"
        )
    for fp in doc["invalid_files"]:
        warn("invalid file, not registered:")
        out.print(fp["problems"], highlight=False)
    outbox = doc["outbox"]
    dead = (
        f" · [yellow]{outbox['dead']} dead-lettered[/yellow] "
        f"({escape(carry_config('`ledger outbox list --status dead`'))})"
    )
    out.print(
        f"outbox: {outbox['queued']} queued"
        + (dead if outbox["dead"] else " · none dead-lettered"),
        highlight=False,
    )
    ingest = doc["ingest"]
    last_at = ingest["last_received_at"]
    last = _ago(now, datetime.fromisoformat(last_at)) if last_at else "never"
    out.print(
        f"broadcast: last delivery {last} · {ingest['waiting_deliveries']} waiting to be "
        f"processed · {ingest['unattributed_spans_24h']} unattributed span(s) in 24h",
        highlight=False,
    )
    if ingest["set_aside_deliveries"]:
        warn(
            f"broadcast: {ingest['set_aside_deliveries']} delivery(ies) set aside: the "
            "processor could not store them (see the log; they stay in ingest_delivery)"
        )
    storage = doc["storage"]
    tables = storage["tables"]
    sizes = " · ".join(f"{t['table']} {'~' if t['estimated'] else ''}{t['rows']:,}" for t in tables)
    estimated = " (~: PostgreSQL's estimate)" if any(t["estimated"] for t in tables) else ""
    out.print(f"rows: {sizes}{estimated}", highlight=False)
    prunes = storage["last_prunes"]
    if prunes:
        when = max(datetime.fromisoformat(p["pruned_at"]) for p in prunes)
        deleted = " · ".join(f"{p['table']} {p['deleted']:,}" for p in prunes)
        out.print(f"last prune: {_ago(now, when)}, rows deleted: {deleted}", highlight=False)
    else:
        every = _duration(storage["prune_interval_seconds"])
        out.print(
            f"last prune: never (the daemon prunes at start-up, then every {every})",
            highlight=False,
        )


@app.command()
def prune(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
) -> None:
    """Delete old broadcast spans, delivered outbox rows and webhook events now, as the daemon
    does every LEDGER_RETENTION_INTERVAL_SECONDS (the LEDGER_RETENTION_* settings)."""
    from ledger.db.session import Database
    from ledger.retention import prune as prune_tables
    from ledger.retention import targets_from_settings

    settings = _settings(config)
    targets = targets_from_settings(settings)
    if not targets:
        print("nothing to prune: every LEDGER_RETENTION_*_DAYS is 0 (keep forever)")
        return
    db = Database.open(settings.database_url)
    try:
        results = prune_tables(db, targets, _now(), settings.retention_batch_size, dry_run=dry_run)
    finally:
        db.close()
    verb = "would delete" if dry_run else "deleted"
    for r in results:
        print(f"{r.target}: {verb} {r.deleted:,} row(s) older than {r.cutoff:%Y-%m-%d %H:%M} UTC")


def _ago(now: datetime, then: datetime) -> str:
    return f"{_duration((now - then).total_seconds())} ago"


def _duration(total_seconds: float) -> str:
    seconds = int(total_seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


@app.command()
def verify(
    config: ConfigOption = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Verify a file written by `ledger export` instead of the database.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Walk the ledger's hash chain; report the first broken entry (exit 1)."""
    from ledger.journal import verify as verify_chain
    from ledger.journal import verify_exported

    if file is not None:
        try:
            with file.open("rb") as lines:
                result = verify_exported(lines)
        except OSError as exc:
            raise LedgerError(f"cannot read {file}: {exc.strerror}") from None
        where = str(file)
    else:
        settings = _settings(config)
        with _transaction(settings, read_only=True) as session:
            result = verify_chain(session)
        where = "ledger"
    if not result.ok:
        print(f"{where} BROKEN at entry {result.broken_entry_id}: {result.problem}")
        raise typer.Exit(1)
    print(f"{where} intact: {result.entries} entries, hash chain verified")


@app.command()
def export(
    config: ConfigOption = None,
    fmt: Annotated[str, typer.Option("--format", help="Only jsonl for now.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Write the ledger with its hashes, one JSON object per line."""
    from ledger.db.session import Database
    from ledger.journal import export_jsonl

    if fmt != "jsonl":
        raise LedgerError(f"unknown export format {fmt!r}: use jsonl")
    settings = _settings(config)
    _require_database_file(settings.database_url)
    db = Database.open(settings.database_url)
    sink = output.open("wb") if output else sys.stdout.buffer
    try:
        with db.transaction() as session:
            for line in export_jsonl(session):
                sink.write(line)
    finally:
        if output:
            sink.close()
        db.close()


ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", help="Why (recorded in the ledger; required).")
]
NameArg = Annotated[str, typer.Argument(help="The behavior's name.")]


def _policy_ctx(settings: Settings) -> Any:
    from ledger.daemon import build_policy_context

    return build_policy_context(settings)


def _operator(
    verb: str, name: str, reason: str, config: Path | None, to: str | None = None
) -> None:
    from ledger.gates import Tier
    from ledger.transitions import operator_action

    settings = _settings(config)
    target = Tier(to.upper()) if to else None
    with _transaction(settings) as session:
        message = operator_action(
            session,
            name,
            verb,  # type: ignore[arg-type]  # verb is one of the commands below
            reason=reason,
            actor=_operator_name(),
            now=_now(),
            ctx=_policy_ctx(settings),
            to=target,
        )
    print(carry_config(message))


TierOption = Annotated[
    str | None, typer.Option("--to", help="Target tier (A, B or C); default: one step.")
]


@app.command()
def promote(
    name: NameArg, reason: ReasonOption, config: ConfigOption = None, to: TierOption = None
) -> None:
    """Promote a behavior one tier (accepts a pending proposal). Past the policy it is recorded
    as an override."""
    _operator("promote", name, reason, config, to)


@app.command()
def demote(
    name: NameArg, reason: ReasonOption, config: ConfigOption = None, to: TierOption = None
) -> None:
    """Demote a behavior one tier (or --to a lower tier)."""
    _operator("demote", name, reason, config, to)


@app.command()
def pin(name: NameArg, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Stop automatic promotion of a behavior (safety demotions still apply)."""
    _operator("pin", name, reason, config)


@app.command()
def unpin(name: NameArg, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Let the policy promote a pinned behavior again."""
    _operator("unpin", name, reason, config)


@app.command()
def pause(name: NameArg, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Stop scheduling a behavior."""
    _operator("pause", name, reason, config)


@app.command()
def resume(name: NameArg, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Schedule a paused behavior again."""
    _operator("resume", name, reason, config)


@app.command()
def decline(name: NameArg, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Decline a behavior's pending promotion proposal (its clean window restarts)."""
    from ledger.transitions import decline_proposal

    settings = _settings(config)
    with _transaction(settings) as session:
        message = decline_proposal(session, name, reason=reason, actor=_operator_name(), now=_now())
    print(carry_config(message))


@app.command("approve")
def approve_run(
    run_id: Annotated[str, typer.Argument(help="The run whose approval request to approve.")],
    config: ConfigOption = None,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (recorded).")] = "approved",
    payload_sha256: Annotated[
        str | None,
        typer.Option(
            "--payload-sha256",
            help="Refuse unless the action payload has this hash (the one you reviewed).",
        ),
    ] = None,
) -> None:
    """Approve a tier-B run: its action runs exactly once."""
    from ledger.runner.run import approve

    settings = _settings(config)
    with _looked_in(settings), _transaction(settings) as session:
        message = approve(
            session,
            run_id,
            actor=_operator_name(),
            now=_now(),
            ctx=_policy_ctx(settings),
            payload_sha256=payload_sha256,
            reason=reason,
        )
    print(carry_config(message))


@app.command("reject")
def reject_run(
    run_id: Annotated[str, typer.Argument(help="The run whose approval request to reject.")],
    reason: ReasonOption,
    config: ConfigOption = None,
) -> None:
    """Reject a tier-B run: its action never runs (a human_rejected warn)."""
    from ledger.runner.run import reject

    settings = _settings(config)
    with _looked_in(settings), _transaction(settings) as session:
        message = reject(
            session,
            run_id,
            actor=_operator_name(),
            reason=reason,
            now=_now(),
            ctx=_policy_ctx(settings),
        )
    print(carry_config(message))


@contextmanager
def _looked_in(settings: Settings) -> Iterator[None]:
    """A NotFoundError (a run that is not there) says which database was searched: a run id
    from another installation's list is not found in this one. No database file is created
    where there is none (a command pasted into another directory said so only after leaving
    an empty ledger.db there)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from ledger.errors import NotFoundError

    _require_database_file(settings.database_url)
    try:
        yield
    except NotFoundError as exc:
        try:
            where = make_url(settings.database_url).render_as_string(hide_password=True)
        except ArgumentError:
            where = "the configured database"
        source = f" of {_given.config}" if _given.config is not None else ""
        raise NotFoundError(f"{exc}; looked in {where}{source}") from None


@app.command("approvals")
def list_approvals(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what GET /api/approvals answers.")
    ] = False,
) -> None:
    """Tier-B approval requests waiting for a decision, oldest first: run id, behavior, age,
    expiry, the start of the output and the payload's hash (for `ledger approve`)."""
    from ledger.runs import approval_requests

    settings = _settings(config)
    with _transaction(settings, read_only=True) as session:
        requests = approval_requests(session, "pending", limit=500)
    if as_json:
        print(json.dumps({"approvals": requests}, indent=2, default=_iso))
        return
    if not requests:
        print("no approval requests pending")
        return
    now = _now()
    for a in requests:
        expires = a["expires_at"]
        left = f"expires in {_duration((expires - now).total_seconds())}"
        print(
            f"{a['run_id']}  {a['behavior']}  requested {_ago(now, a['requested_at'])} · "
            f"{left} ({expires:%Y-%m-%d %H:%M} UTC)"
        )
        output = (a["output"] or "").splitlines() or ["(no output)"]
        for line in output[:OUTPUT_PREVIEW_LINES]:
            print(f"  │ {line[:160]}")
        if len(output) > OUTPUT_PREVIEW_LINES:
            print(
                f"  │ … {len(output) - OUTPUT_PREVIEW_LINES} more line(s): "
                f"`{command('show', a['run_id'])}`"
            )
        print(f"  payload sha256 {a['payload_sha256']}")
        print(f"  {command('approve', a['run_id'], '--payload-sha256', a['payload_sha256'])}")
        print(f"  {command('reject', a['run_id'], '--reason', 'TEXT')}")
    print(f"{len(requests)} pending")


OUTPUT_PREVIEW_LINES = 5


def _iso(value: Any) -> Any:
    from ledger.clock import json_time

    if isinstance(value, datetime):
        return json_time(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@app.command("show")
def show_run(
    run_id: Annotated[str, typer.Argument(help="The run's id (run-…).")],
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what GET /api/runs/{id} answers.")
    ] = False,
) -> None:
    """One run: status, tier, disposition, model, cost, duration, each gate with its reason,
    the output (masked as stored) and the request it sent (no key)."""
    from ledger.runs import run_json, run_request

    settings = _settings(config)
    with _looked_in(settings), _transaction(settings, read_only=True) as session:
        run = run_json(session, run_id)
        request = None if as_json else run_request(session, run_id)
    if as_json:
        print(json.dumps(run, indent=2, default=_iso))
        return
    if run.get("calls"):  # a multi-model run: its answers are shown call by call
        from ledger.cli.multi import print_calls

        _report_run({**run, "output": None}, full=True)
        print_calls(run)
        return
    _report_run(run, full=True)
    print()
    if request is None:
        print("request: cannot be rebuilt (the behavior's stored definition is unreadable)")
    else:
        print("request (rebuilt from the behavior's current definition; the key is never stored):")
        print(json.dumps(request, indent=2, ensure_ascii=False))


@app.command()
def explain(
    name: NameArg,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Why a behavior is at its tier, and what it needs next."""
    from ledger.explain import explain as explain_behavior

    settings = _settings(config)
    with _transaction(settings, read_only=True) as session:
        result = explain_behavior(session, name, _now(), _policy_ctx(settings))
    print(json.dumps(result.as_json(), indent=2) if as_json else carry_config(result.render()))


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's handling of X-Forwarded-For/-Proto: honoured only from the peers in
    ``forwarded_allow_ips`` (none by default, whatever uvicorn's FORWARDED_ALLOW_IPS says)."""
    if not settings.forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8600).")] = None,
) -> None:
    """Run the daemon (HTTP API, scheduler; broadcast processing in a child process, see
    LEDGER_INGEST_PROCESSOR) until SIGINT/SIGTERM."""
    import uvicorn

    from ledger.web.app import create_app, startup_problems
    from ledger.web.serving import DaemonServer, welcome_lines

    settings = _settings(config, daemon=True, host=host, port=port)
    # A configuration error is one line and exit 2 here, not a traceback from the lifespan.
    problems = startup_problems(settings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        raise typer.Exit(2)
    daemon_app = create_app(settings)

    def welcome(base_url: str) -> None:
        for line in welcome_lines(daemon_app, settings, base_url):
            print(line, file=sys.stderr, flush=True)

    server = DaemonServer(
        uvicorn.Config(
            daemon_app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            **proxy_options(settings),
        ),
        on_listening=welcome,
    )
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command("run")
def run_behavior(
    name: NameArg,
    config: ConfigOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Read and validate the behavior's file and print the exact request (key "
            "masked); send nothing. Works for a file no daemon has registered yet.",
        ),
    ] = False,
    via_daemon: Annotated[
        bool,
        typer.Option(
            "--via-daemon",
            help="Ask the running daemon to run it, in its own environment (its keys).",
        ),
    ] = False,
    daemon_url: Annotated[
        str | None,
        typer.Option(
            envvar="LEDGER_DAEMON_URL",
            help="The daemon's URL for --via-daemon (default: http://HOST:PORT of the config).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LEDGER_API_TOKEN",
            help="An API token (api_tokens) for --via-daemon.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="--via-daemon: seconds to wait for the run to finish.", min=0)
    ] = 300.0,
) -> None:
    """Run one behavior now, once, outside its schedule. Exits 0 only when the run succeeded
    and its output passed its gates; 1 when it did not, or could not start here."""
    from ledger.errors import ConflictError

    settings = _settings(config)
    if dry_run:
        _print_dry_run(settings, name)
        return
    try:
        if via_daemon:
            run = _run_via_daemon(settings, name, daemon_url, token, wait)
        else:
            run = _run_here(settings, name)
    except ConflictError as exc:  # it did not start: paused, key missing here, retired…
        print(f"error: {carry_config(str(exc))}", file=sys.stderr)
        raise typer.Exit(1) from None
    if not _report_run(run):
        raise typer.Exit(1)


def _print_dry_run(settings: Settings, name: str) -> None:
    """The request a run of ``name`` would send, from its file in the behaviors folder."""
    from ledger.behaviors.load import load_directory
    from ledger.errors import SecretError
    from ledger.gates import Tier
    from ledger.runner.openrouter import build_chat_request
    from ledger.runner.run import render_prompt
    from ledger.secrets import resolve

    folder = settings.behaviors_dir
    report = load_directory(folder, global_policy=settings.policy)
    found = [lb for lb in report.behaviors if lb.name == name]
    if not found:
        own = [p for p in report.problems if Path(p.path).stem == name]
        for problem in own:
            print(problem.render(), file=sys.stderr)
        why = "its file is invalid" if own else f"no valid behavior file names it in {folder}"
        print(f"error: {name}: {why}; nothing to show", file=sys.stderr)
        raise typer.Exit(1)
    lb = found[0]
    registered = _registered_tier(settings, name)
    tier = registered or Tier(lb.behavior.start_tier)
    now = _now()
    prompt = render_prompt(
        lb.prompt_text,
        lb.behavior.inputs,
        {
            "now": now.isoformat(timespec="seconds"),
            "date": now.date().isoformat(),
            "run_id": "run-DRYRUN",
            "behavior": name,
            "tier": tier.value,
        },
    )
    body = build_chat_request(lb.behavior, tier, prompt, "run-DRYRUN")
    try:
        resolve(lb.behavior.api_key)
        key_note = lb.behavior.api_key
    except SecretError:
        key_note = f"{lb.behavior.api_key}, not resolvable in this shell"
    source = "its registered tier" if registered else "not registered yet: its start_tier"
    print(f"# {lb.path}: {name} at {tier.label} ({source})")
    print(f"POST {settings.openrouter_base_url}/api/v1/chat/completions")
    print(f"Authorization: Bearer ******** ({key_note})")
    print("HTTP-Referer: https://github.com/promotion-ledger")
    print("X-Title: Promotion Ledger")
    print("Content-Type: application/json")
    print()
    print(json.dumps(body, indent=2, ensure_ascii=False))


def _registered_tier(settings: Settings, name: str) -> Any:
    """The tier ``name`` is registered at, or None (no database yet, or not registered)."""
    from sqlmodel import col, select

    from ledger.db.models import BehaviorRow
    from ledger.db.session import Database
    from ledger.gates import Tier

    try:
        _require_database_file(settings.database_url)  # a dry run creates no database file
        db = Database.open(settings.database_url)
    except LedgerError:
        return None
    try:
        with db.transaction() as session:
            row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
            return Tier(row.tier) if row is not None and not row.retired else None
    finally:
        db.close()


def _run_here(settings: Settings, name: str) -> dict[str, Any]:
    """Reconcile the behaviors folder, then run ``name`` in this process (this shell's
    environment holds its key). Returns the finished run as the API shows it."""
    import asyncio

    from ledger.behaviors.load import check_resolved_keys, load_directory
    from ledger.behaviors.registry import reconcile
    from ledger.db.session import Database
    from ledger.errors import NotFoundError
    from ledger.runner.call import call_model
    from ledger.runner.multi import MultiModelRunner
    from ledger.runner.openrouter import OpenRouterClient
    from ledger.runner.run import check_manual_run
    from ledger.runner.scheduler import RunnerService
    from ledger.runs import run_json

    def check(row: Any) -> None:
        check_manual_run(
            row,
            here="in this shell",
            instead=f"Start it where the daemon runs, with the daemon's keys: `ledger run {name} "
            "--via-daemon` (or set the variable in this shell).",
        )

    db = Database.open(settings.database_url)
    try:
        report = load_directory(settings.behaviors_dir, global_policy=settings.policy)
        check_resolved_keys(report)
        with db.transaction() as session:
            reconcile(session, report, settings.behaviors_dir, _now())

        async def go() -> str | None:
            client = OpenRouterClient(base_url=settings.openrouter_base_url)
            multi = MultiModelRunner(db, _clock(), client, base_url=settings.openrouter_base_url)

            async def call(plan: Any) -> Any:
                if plan.behavior.kind != "single":
                    return await multi.run(plan)
                return await call_model(client, plan)

            try:
                service = RunnerService(
                    db,
                    _clock(),
                    call,
                    _policy_ctx(settings),
                    lease=timedelta(seconds=settings.runner_lease_seconds),
                )
                return await service.run_now(name, check)
            finally:
                await client.aclose()

        run_id = asyncio.run(go())
        if run_id is None:
            raise NotFoundError(
                f"behavior {name!r} is not registered: no valid file names it in "
                f"{settings.behaviors_dir} (see `ledger validate`)"
            )
        with db.transaction() as session:
            return run_json(session, run_id)
    finally:
        db.close()


def _run_via_daemon(
    settings: Settings, name: str, url: str | None, token: str | None, wait: float
) -> dict[str, Any]:
    """``POST /api/behaviors/{name}/run`` on the daemon, then poll ``GET /api/runs/{id}``
    until the run has finished (at most ``wait`` seconds)."""
    import time

    import httpx

    from ledger.errors import ConflictError

    base = (url or _default_daemon_url(settings)).rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + wait
    with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
        try:
            answer = client.post(f"/api/behaviors/{name}/run", params={"wait": min(wait, 10.0)})
            if answer.status_code == 202:  # still running: poll where the daemon says
                poll = answer.json()["poll"]
                while answer.status_code == 202 or _still_running(answer):
                    if time.monotonic() >= deadline:
                        raise ConflictError(
                            f"{name}: the run is still running after {wait:g} s; its outcome "
                            f"will be at {base}{poll}"
                        )
                    time.sleep(1.0)
                    answer = client.get(poll)
        except httpx.TransportError as exc:
            raise LedgerError(
                f"no daemon answers at {base} ({type(exc).__name__}): start `ledger serve`, "
                "or give its address with --daemon-url / LEDGER_DAEMON_URL"
            ) from None
    body = answer.json()
    if answer.status_code == 401 and not token:
        raise LedgerError(
            f"no API token was given and the daemon at {base} requires one: pass --token TOKEN "
            "or set LEDGER_API_TOKEN (an operator token: `ledger token create NAME --role "
            "operator`, or one of [api_tokens] in the daemon's ledger.toml)"
        )
    if answer.status_code == 401:
        raise LedgerError(
            f"the daemon at {base} refused the token given (--token or LEDGER_API_TOKEN): it is "
            "not one of its tokens, or it was revoked (`ledger token list`)"
        )
    if answer.status_code == 409:
        raise ConflictError(body["error"]["message"])
    if answer.status_code != 200:
        message = body.get("error", {}).get("message", answer.text[:200])
        raise LedgerError(f"the daemon at {base} answered {answer.status_code}: {message}")
    run: dict[str, Any] = body.get("run", body)  # POST …/run, or GET /api/runs/{id}
    return run


def _still_running(answer: Any) -> bool:
    return bool(answer.status_code == 200 and answer.json().get("status") in ("claimed", "running"))


def _default_daemon_url(settings: Settings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    return f"http://{host}:{settings.port}"


def _report_run(run: dict[str, Any], *, full: bool = False) -> bool:
    """Print a finished run (as ``ledger.runs.run_json`` or the API gives it): its outcome,
    each gate with its reason, and its output; ``full`` adds tier, model, cost, duration and
    the approval request. True when it succeeded and its output passed its gates."""
    disposition = run.get("disposition") or "none"
    error = run.get("error")
    print(
        f"{run['id']}: {run['status']}, disposition {disposition}"
        + (f", error: {error}" if error else "")
    )
    if full:
        print(f"  behavior: {run.get('behavior')} · tier {run['tier_label']} · {run['trigger']}")
        model = run.get("model") or "— (no answer)"
        via = f" · preset {run['preset']}" if run.get("preset") else ""
        fallback = " (a fallback model)" if run.get("via_fallback") else ""
        print(f"  model: {model}{via}{fallback}")
        cost = run.get("cost_usd")
        broadcast = run.get("broadcast_cost_usd")
        line = f"  cost: {'—' if cost is None else f'${cost:.6f}'}"
        if broadcast is not None:
            line += (
                f" (broadcast reported ${broadcast:.6f}; counted ${run['counted_cost_usd']:.6f})"
            )
        print(line)
        took = run.get("duration_seconds")
        print(
            f"  slot: {_when(run['scheduled_for'])}"
            + ("" if took is None else f" · took {took:.1f} s")
        )
    for r in run.get("gate_results", []):
        flag = "" if r["attributable"] else " (not attributable)"
        reason = f" — {r['reason']}" if r.get("reason") else ""
        print(f"  {r['gate']}: {r['outcome']}{flag}{reason}")
    approval = run.get("approval")
    if full and approval:
        print(
            f"  approval: {approval['status']}, expires {_when(approval['expires_at'])}, "
            f"payload sha256 {approval['payload_sha256']}"
            + (f", decided by {approval['decided_by']}" if approval.get("decided_by") else "")
        )
    if run.get("output") is not None:
        print()
        if full:
            print("output (as stored: sensitive findings masked):")
        print(run["output"])
    return bool(run["status"] == "succeeded" and disposition != "blocked")


def _when(value: Any) -> str:
    """A time from run_json (a datetime) or the API (an ISO string), in UTC to the second."""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return "—" if at is None else f"{at:%Y-%m-%d %H:%M:%S} UTC"


def _clock() -> Any:
    from ledger.clock import SystemClock

    return SystemClock()


keys_app = typer.Typer(help="OpenRouter API keys of the behaviors.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(canvas_app, name="canvas")


@keys_app.command("check")
def keys_check(config: ConfigOption = None) -> None:
    """Compare each behavior's key with the account's keys: missing, shared, disabled, without
    a limit, or with a limit above the behavior's budget. A behavior whose file has no key_name
    gets its key's name learned from the account (asked with the key itself), so broadcast
    attributes calls made with it; a key_name naming another key is an error."""
    import asyncio

    from pydantic import SecretStr

    from ledger.behaviors.load import load_directory
    from ledger.errors import ConfigError, SecretError
    from ledger.runner.keys import (
        KeyIdentity,
        ManagedKey,
        check_keys,
        identify_keys,
        list_keys,
        render_findings,
    )
    from ledger.runner.openrouter import OpenRouterClient
    from ledger.secrets import resolve

    settings = _settings(config)
    if settings.openrouter_management_key is None:
        raise ConfigError(
            "keys check needs a management key: set LEDGER_OPENROUTER_MANAGEMENT_KEY to a "
            "reference such as env:OPENROUTER_MANAGEMENT_KEY"
        )
    mgmt = resolve(settings.openrouter_management_key.get_secret_value())
    report = load_directory(settings.behaviors_dir)
    owned: dict[str, SecretStr | str] = {}
    for lb in report.behaviors:
        try:
            owned[lb.name] = resolve(lb.behavior.api_key, base_dir=lb.path.parent)
        except SecretError as exc:
            owned[lb.name] = f"its key cannot be read here: {exc}"

    async def go() -> tuple[list[ManagedKey], list[KeyIdentity]]:
        async with OpenRouterClient(base_url=settings.openrouter_base_url) as client:
            managed = await list_keys(client, mgmt)
            return managed, await identify_keys(client, owned, managed)

    managed, identities = asyncio.run(go())
    behaviors = [lb.behavior for lb in report.behaviors]
    findings = check_keys(behaviors, managed, identities)
    without_name = {b.name for b in behaviors if b.key_name is None}
    learned = {i.behavior: i.name for i in identities if i.name and i.behavior in without_name}
    if learned:
        _store_learned_key_names(settings.database_url, learned)
    for line in render_findings(findings):
        print(carry_config(line))
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


def _store_learned_key_names(database_url: str, learned: dict[str, str]) -> None:
    """Record the learned key names on the registered behaviors and say what was learned."""
    from sqlmodel import col, select

    from ledger.db.models import BehaviorRow
    from ledger.db.session import Database
    from ledger.errors import ConfigError

    try:
        db = Database.open(database_url)
    except ConfigError as exc:
        for name, key_name in sorted(learned.items()):
            print(f"learned: {name} uses key {key_name!r}, but it could not be recorded: {exc}")
        return
    try:
        with db.transaction() as session:
            rows = session.exec(
                select(BehaviorRow).where(col(BehaviorRow.name).in_(list(learned)))
            ).all()
            registered = {row.name: row for row in rows}
            for row in rows:
                if row.learned_key_name != learned[row.name]:
                    row.learned_key_name = learned[row.name]
                    session.add(row)
    finally:
        db.close()
    for name, key_name in sorted(learned.items()):
        if name in registered:
            print(
                f"learned: {name} uses key {key_name!r} (its file has no key_name); broadcast "
                "deliveries with that key name now count for it"
            )
        else:
            print(
                f"learned: {name} uses key {key_name!r}, but {name} is not registered yet: "
                + carry_config("start the daemon, then run `ledger keys check` again")
            )


@sim_app.command("openrouter")
def sim_openrouter(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 8601,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    presets: Annotated[
        Path | None,
        typer.Option(
            help="Presets/keys/faults YAML (default: the shipped example).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    broadcast_url: Annotated[
        str | None,
        typer.Option(help="Where to send the broadcast (default: the presets file's url)."),
    ] = None,
) -> None:
    """Run the OpenRouter simulator (chat completions, keys, faults, broadcast)."""
    from importlib import resources

    from ledger.sim.hosting import CannotListen
    from ledger.sim.openrouter import SimConfig, SimConfigError
    from ledger.sim.openrouter import serve as serve_sim

    configure_logging("auto", "info")
    source = presets or Path(str(resources.files("ledger") / "sim" / "presets.example.yaml"))
    try:
        overrides = {} if broadcast_url is None else {"broadcast_url": broadcast_url}
        config = SimConfig.from_yaml(source, **overrides)
    except SimConfigError as exc:
        raise LedgerError(f"{source}: {exc}") from None
    try:
        serve_sim(
            host,
            port,
            config,
            lambda url: print(f"OpenRouter simulator on {url} (presets from {source})", flush=True),
        )
    except CannotListen as exc:
        raise LedgerError(str(exc)) from None


@sim_app.command("notion")
def sim_notion(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 8602,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML: token, root_page_id, root_page_title, seed, faults.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    root_page_id: Annotated[
        str | None, typer.Option(help="Id of the workspace-level page to start from.")
    ] = None,
) -> None:
    """Run the Notion simulator (API 2025-09-03; faults at POST /_sim/faults)."""
    from dataclasses import replace

    from ledger.sim.hosting import CannotListen
    from ledger.sim.notion import NotionSimConfig, NotionSimConfigError
    from ledger.sim.notion import serve as serve_sim

    configure_logging("auto", "info")
    try:
        sim_config = NotionSimConfig() if config is None else NotionSimConfig.from_yaml(config)
        if root_page_id is not None:
            sim_config = replace(sim_config, root_page_id=root_page_id)
    except NotionSimConfigError as exc:
        raise LedgerError(f"notion simulator: {exc}") from None

    def listening(url: str) -> None:
        print(f"Notion simulator on {url} (API under /v1)")
        print(f"root page: {sim_config.root_page_id}", flush=True)

    try:
        serve_sim(host, port, sim_config, listening)
    except CannotListen as exc:
        raise LedgerError(str(exc)) from None


from ledger.cli.tokens import app as tokens_app  # noqa: E402  (it imports the helpers above)

app.add_typer(tokens_app, name="token")


def main() -> None:
    """Console entry point: a LedgerError becomes one line on stderr and exit status 2."""
    try:
        app()
    except LedgerError as exc:
        print(f"error: {carry_config(str(exc))}", file=sys.stderr)
        sys.exit(2)


from ledger.cli.outbox import outbox_app, silence_app  # noqa: E402 — uses the helpers above

app.add_typer(outbox_app, name="outbox")
app.add_typer(silence_app, name="silence")


def _one_line_paragraphs(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its groups) its docstring as help with each
    paragraph on one line: Typer keeps a docstring's line breaks, so the command list broke
    its summaries mid-sentence ("…, then what" / "needs an operator: …")."""
    import inspect

    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            paragraphs = inspect.cleandoc(info.callback.__doc__).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _one_line_paragraphs(group.typer_instance)


_one_line_paragraphs(app)
