"""The ``ledger`` command: parses, calls services, prints. No business logic here."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from ledger import __version__
from ledger.behaviors.load import load_directory
from ledger.behaviors.schema import behavior_json_schema
from ledger.config import Settings, load_settings
from ledger.errors import LedgerError
from ledger.logging import configure_logging

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

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="ledger.toml to read (default: $LEDGER_CONFIG or ./ledger.toml if present).",
        dir_okay=False,
    ),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    settings = load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_format, settings.log_level)
    return settings


@contextmanager
def _transaction(settings: Settings) -> Iterator[Session]:
    """One transaction on the configured database (which must be at the current schema)."""
    from ledger.db.session import Database

    db = Database.open(settings.database_url)
    try:
        with db.transaction() as session:
            yield session
    finally:
        db.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _operator_name() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(f"promotion-ledger {__version__}")
        raise typer.Exit(0)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the starter files.")] = Path(
        "."
    ),
) -> None:
    """Create a starter ledger.toml and two example behaviors (never overwrites)."""
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
) -> None:
    """Check every behavior file; print each problem as path:line:col: field: message."""
    folder = directory if directory is not None else load_settings(config).behaviors_dir
    report = load_directory(folder)
    for problem in report.problems:
        print(problem.render())
    files = len(report.files_seen)
    if report.problems:
        bad = len(report.problems_by_path())
        print(f"{len(report.problems)} problem(s) in {bad} of {files} file(s)", file=sys.stderr)
        raise typer.Exit(1)
    print(f"{files} behavior file(s) valid in {folder}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of behavior files (for editors)."""
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


@app.command()
def status(config: ConfigOption = None) -> None:
    """A table of every behavior: tier, state, last and next run, failures, spend."""
    from ledger.db.session import Database
    from ledger.status import collect_status

    settings = _settings(config)
    db = Database.open(settings.database_url)
    now = _now()
    try:
        with db.transaction() as session:
            report = collect_status(session, now)
    finally:
        db.close()
    table = Table(title=f"Promotion Ledger — {len(report.behaviors)} behavior(s)")
    for col in ("behavior", "tier", "state", "last run", "next run", "fails/warns 24h", "spend"):
        table.add_column(col)
    for s in report.behaviors:
        last = "never"
        if s.last_run_at is not None:
            last = f"{_ago(now, s.last_run_at)} · {s.last_run_status or '?'}"
        spend = f"${s.spend_usd:.4f}"
        if s.budget_usd is not None:
            spend += f" / ${s.budget_usd:.2f} per {s.budget_reset}"
        else:
            spend += " this month (no budget)"
        table.add_row(
            s.name,
            s.tier.label,
            ", ".join(s.flags) or "active",
            last,
            s.next_run_at.strftime("%Y-%m-%d %H:%M UTC") if s.next_run_at else "—",
            str(s.recent_failures),
            spend,
        )
    out.print(table)
    for s in report.behaviors:
        if s.problem:
            out.print(
                f"[yellow]{s.name}: its file is invalid; the last valid version keeps "
                f"running:[/yellow]\n{s.problem}",
                highlight=False,
            )
        if s.interrupted_24h:
            out.print(
                f"[yellow]{s.name}: {s.interrupted_24h} run(s) in 24h interrupted by a daemon "
                "that stopped before they finished (reservations released; not held against "
                "it)[/yellow]",
                highlight=False,
            )
        if s.cost_disagreements_24h:
            out.print(
                f"[yellow]{s.name}: {s.cost_disagreements_24h} run(s) in 24h whose broadcast cost "
                "differs from the runner's; the budget counted the larger (both figures: GET "
                "/api/runs/{id})[/yellow]",
                highlight=False,
            )
    for fp in report.file_problems:
        out.print(f"[yellow]invalid file, not registered:[/yellow]\n{fp.problems}", highlight=False)
    ingest = report.ingest
    last = _ago(now, ingest.last_received_at) if ingest.last_received_at else "never"
    out.print(
        f"broadcast: last delivery {last} · {ingest.waiting_deliveries} waiting to be processed "
        f"· {ingest.unattributed_spans_24h} unattributed span(s) in 24h",
        highlight=False,
    )
    if ingest.set_aside_deliveries:
        out.print(
            f"[yellow]broadcast: {ingest.set_aside_deliveries} delivery(ies) set aside: the "
            "processor could not store them (see the log; they stay in ingest_delivery)[/yellow]",
            highlight=False,
        )


def _ago(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


@app.command()
def verify(config: ConfigOption = None) -> None:
    """Walk the ledger's hash chain; report the first broken entry (exit 1)."""
    from ledger.journal import verify as verify_chain

    settings = _settings(config)
    with _transaction(settings) as session:
        result = verify_chain(session)
    if not result.ok:
        print(f"ledger BROKEN at entry {result.broken_entry_id}: {result.problem}")
        raise typer.Exit(1)
    print(f"ledger intact: {result.entries} entries, hash chain verified")


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
    from ledger.transitions import PolicyContext

    return PolicyContext(global_overrides=settings.policy, mirror=settings.notion_token is not None)


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
    print(message)


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
        print(decline_proposal(session, name, reason=reason, actor=_operator_name(), now=_now()))


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
    with _transaction(settings) as session:
        print(
            approve(
                session,
                run_id,
                actor=_operator_name(),
                now=_now(),
                ctx=_policy_ctx(settings),
                payload_sha256=payload_sha256,
                reason=reason,
            )
        )


@app.command("reject")
def reject_run(
    run_id: Annotated[str, typer.Argument(help="The run whose approval request to reject.")],
    reason: ReasonOption,
    config: ConfigOption = None,
) -> None:
    """Reject a tier-B run: its action never runs (a human_rejected warn)."""
    from ledger.runner.run import reject

    settings = _settings(config)
    with _transaction(settings) as session:
        print(
            reject(
                session,
                run_id,
                actor=_operator_name(),
                reason=reason,
                now=_now(),
                ctx=_policy_ctx(settings),
            )
        )


@app.command()
def explain(
    name: NameArg,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Why a behavior is at its tier, and what it needs next."""
    from ledger.explain import explain as explain_behavior

    settings = _settings(config)
    with _transaction(settings) as session:
        result = explain_behavior(session, name, _now(), _policy_ctx(settings))
    print(json.dumps(result.as_json(), indent=2) if as_json else result.render())


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8600).")] = None,
) -> None:
    """Run the daemon: HTTP API + scheduler in one process, until SIGINT/SIGTERM."""
    import uvicorn

    from ledger.web.app import create_app

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # A stop asked for by SIGINT/SIGTERM is a clean exit (status 0), not a death by
            # signal: uvicorn would re-raise the signal after the graceful shutdown.
            self._captured_signals.clear()

    settings = _settings(config, host=host, port=port)
    server = _Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command("run")
def run_behavior(
    name: NameArg,
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact request (key masked); send nothing.")
    ] = False,
) -> None:
    """Run one behavior now, once, outside its schedule."""
    import asyncio

    from sqlmodel import col, select

    from ledger.behaviors.schema import Behavior
    from ledger.db.models import BehaviorRow, GateResultRow, Run
    from ledger.db.session import Database
    from ledger.errors import NotFoundError
    from ledger.gates import Tier
    from ledger.runner.call import call_model
    from ledger.runner.openrouter import OpenRouterClient, build_chat_request
    from ledger.runner.run import render_prompt
    from ledger.runner.scheduler import RunnerService

    settings = _settings(config)
    db = Database.open(settings.database_url)
    try:
        with db.transaction() as session:
            row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
            if row is None:
                raise NotFoundError(
                    f"behavior {name!r} is not registered: start `ledger serve` (it registers "
                    "the behaviors folder) or check `ledger status`"
                )
            behavior = Behavior.model_validate(row.definition)
            tier, prompt_text = Tier(row.tier), row.prompt_text
        if dry_run:
            now = _now()
            prompt = render_prompt(
                prompt_text,
                behavior.inputs,
                {
                    "now": now.isoformat(timespec="seconds"),
                    "date": now.date().isoformat(),
                    "run_id": "run-DRYRUN",
                    "behavior": name,
                    "tier": tier.value,
                },
            )
            body = build_chat_request(behavior, tier, prompt, "run-DRYRUN")
            print(f"POST {settings.openrouter_base_url}/api/v1/chat/completions")
            print(f"Authorization: Bearer ******** ({behavior.api_key})")
            print("HTTP-Referer: https://github.com/promotion-ledger")
            print("X-Title: Promotion Ledger")
            print("Content-Type: application/json")
            print()
            print(json.dumps(body, indent=2, ensure_ascii=False))
            return

        async def go() -> str | None:
            client = OpenRouterClient(base_url=settings.openrouter_base_url)
            try:
                service = RunnerService(
                    db,
                    _clock(),
                    lambda plan: call_model(client, plan),
                    _policy_ctx(settings),
                    lease=timedelta(seconds=settings.runner_lease_seconds),
                )
                return await service.run_now(name)
            finally:
                await client.aclose()

        run_id = asyncio.run(go())
        with db.transaction() as session:
            run = session.get(Run, run_id) if run_id else None
            if run is None:
                raise LedgerError(f"{name}: the run could not be claimed")
            print(
                f"{run.id}: {run.status}, disposition {run.disposition or 'none'}"
                + (f", error: {run.error}" if run.error else "")
            )
            for r in session.exec(select(GateResultRow).where(col(GateResultRow.run_id) == run.id)):
                flag = "" if r.attributable else " (not attributable)"
                print(f"  {r.gate}: {r.outcome}{flag}")
            if run.output is not None:
                print()
                print(run.output)
    finally:
        db.close()


def _clock() -> Any:
    from ledger.clock import SystemClock

    return SystemClock()


keys_app = typer.Typer(help="OpenRouter API keys of the behaviors.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("check")
def keys_check(config: ConfigOption = None) -> None:
    """Compare each behavior's key with the account's keys: missing, shared, disabled, without
    a limit, or with a limit above the behavior's budget. A behavior whose file has no key_name
    gets its key's name learned from the account (asked with the key itself), so broadcast
    attributes calls made with it; a key_name naming another key is an error."""
    import asyncio

    from pydantic import SecretStr

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
        print(line)
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
                "start the daemon, then run `ledger keys check` again"
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
) -> None:
    """Run the OpenRouter simulator (chat completions, keys, faults, broadcast)."""
    from importlib import resources

    from ledger.sim.openrouter import SimConfig, SimConfigError
    from ledger.sim.openrouter import serve as serve_sim

    configure_logging("auto", "info")
    source = presets or Path(str(resources.files("ledger") / "sim" / "presets.example.yaml"))
    try:
        config = SimConfig.from_yaml(source)
    except SimConfigError as exc:
        raise LedgerError(f"{source}: {exc}") from None
    print(f"OpenRouter simulator on http://{host}:{port} (presets from {source})")
    serve_sim(host, port, config)


def main() -> None:
    """Console entry point: a LedgerError becomes one line on stderr and exit status 2."""
    try:
        app()
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
