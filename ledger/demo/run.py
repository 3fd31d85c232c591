"""Starting and stopping the demo: the OpenRouter and Notion simulators, the demo's receiver,
the daemon on a temporary SQLite database, and a director that injects the guardrail fault
and reports what happens, all in one event loop until SIGINT/SIGTERM.

``run_demo`` is the whole life of it; it talks to the user only through ``say`` (the CLI
prints), and always leaves nothing behind but the folder asked for with ``keep``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import structlog

from ledger.config import Settings, load_settings
from ledger.daemon import build_policy_context
from ledger.db.session import Database
from ledger.demo import stage
from ledger.demo.receiver import ReceivedAlert, Receiver
from ledger.errors import LedgerError
from ledger.gates import Tier
from ledger.logging import configure_logging
from ledger.sim.hosting import run_asgi_in_background
from ledger.sim.notion import NotionSimConfig
from ledger.sim.notion.routes import create_app as notion_sim_app
from ledger.sim.openrouter import SimConfig
from ledger.sim.openrouter import create_app as openrouter_sim_app

log = structlog.get_logger("ledger.demo")

Say = Callable[[str], None]

POLL_SECONDS: Final = 0.5
SHUTDOWN_GRACE_SECONDS: Final = 2  # for requests still open at shutdown (streams end at once)
TIER_LABELS: Final = {
    "A": "A · proposal-only",
    "B": "B · human-in-the-loop",
    "C": "C · autonomous",
}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``ledger demo`` was asked for. ``port`` None: a free one. ``keep``: the folder to
    write everything into and keep (None: a temporary one, removed at the end). ``program``:
    how this ``ledger`` was started, for the commands the demo prints."""

    port: int | None = None
    keep: Path | None = None
    every: int = stage.MIN_EVERY
    guide: bool = True
    verbose: bool = False
    program: tuple[str, ...] = ("ledger",)


def bind_loopback(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` (0: a free port). Raises LedgerError when the port
    is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise LedgerError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): choose another with --port, "
            "or leave --port out for a free one"
        ) from None
    return sock


def demo_folder(keep: Path | None) -> Path:
    """The folder the demo writes into: ``keep`` (created; it must be empty) or a new
    temporary one. Raises LedgerError for a ``keep`` that holds files."""
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    folder = keep.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise LedgerError(f"--keep {keep}: not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise LedgerError(
            f"--keep {keep}: the folder is not empty; name a new or empty folder (the demo "
            "writes its database, ledger.toml, behaviors and secrets there)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_demo(options: DemoOptions, say: Say) -> None:
    """Run the demo until SIGINT or SIGTERM, then stop everything and remove its folder
    (unless ``options.keep``). Raises LedgerError for a problem found before it starts."""
    try:
        stage.check_every(options.every)
    except ValueError as exc:
        raise LedgerError(str(exc)) from None
    configure_logging("console", _log_level(options))
    sock = bind_loopback(options.port or 0)
    folder: Path | None = None
    try:
        folder = demo_folder(options.keep)
        asyncio.run(_run(options, folder, sock, say))
    finally:
        sock.close()
        if folder is not None:
            if options.keep is None:
                shutil.rmtree(folder, ignore_errors=True)
                say(f"Stopped. Removed {folder}.")
            else:
                say(f"Stopped. Everything is kept in {folder}.")


async def _run(options: DemoOptions, folder: Path, sock: socket.socket, say: Say) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _serve(options, folder, sock, stop, say)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _serve(
    options: DemoOptions, folder: Path, sock: socket.socket, stop: asyncio.Event, say: Say
) -> None:
    started = time.monotonic()
    port = sock.getsockname()[1]
    say(f"Starting the demo in {folder} …")
    dashboard = f"http://127.0.0.1:{port}"
    demo_secrets = stage.DemoSecrets.generate()
    notion_sim = NotionSimConfig(token=demo_secrets.notion_token)
    async with contextlib.AsyncExitStack() as stack:
        openrouter_url = await stack.enter_async_context(
            run_asgi_in_background(
                openrouter_sim_app(
                    SimConfig.from_mapping(
                        stage.simulator_settings(dashboard, demo_secrets.broadcast_token),
                        source="the demo's OpenRouter simulator",
                    )
                )
            )
        )
        notion_url = await stack.enter_async_context(
            run_asgi_in_background(notion_sim_app(notion_sim))
        )
        director = _Director(demo_secrets.token, started, say)
        receiver = Receiver(
            alert_secret=demo_secrets.alert_secret,
            dashboard_url=dashboard,
            notion_url=notion_url,
            notion_token=demo_secrets.notion_token,
            on_alert=director.alert_received,
        )
        receiver_url = await stack.enter_async_context(run_asgi_in_background(receiver.app()))
        urls = stage.Urls(dashboard, openrouter_url, notion_url, receiver_url)
        written = stage.write(
            folder,
            demo_secrets=demo_secrets,
            urls=urls,
            port=port,
            every=options.every,
            log_level=_log_level(options),
        )
        settings = demo_settings(written.config)
        receiver.data_sources = await _prepare(settings, notion_sim.root_page_id)

        from ledger.web.app import create_app, startup_problems
        from ledger.web.serving import DaemonServer

        problems = startup_problems(settings, database=False)
        if problems:
            raise LedgerError("; ".join(problems))
        daemon_app = create_app(settings)
        try:
            await stack.enter_async_context(
                run_asgi_in_background(
                    daemon_app,
                    sock=sock,
                    graceful_seconds=SHUTDOWN_GRACE_SECONDS,
                    server_factory=partial(DaemonServer, own_signals=False),
                )
            )
        except RuntimeError:  # uvicorn logged why (a failed lifespan)
            raise LedgerError(
                "the demo's daemon did not start; run `ledger demo --verbose` to see why"
            ) from None
        say(_banner(options, written, urls, demo_secrets.token))
        tasks = [
            asyncio.create_task(
                director.inject_guardrail_fault(urls.openrouter, stop), name="demo-fault"
            ),
            asyncio.create_task(director.report(urls.dashboard, stop), name="demo-report"),
        ]
        try:
            await stop.wait()
        finally:
            say("Stopping the daemon, the simulators and the receiver…")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _log_level(options: DemoOptions) -> str:
    """The daemon's logs go to stderr: errors only by default (the demo reports what happens
    itself), everything from info with ``--verbose``."""
    return "info" if options.verbose else "error"


def demo_settings(config: Path) -> Settings:
    """The demo's settings: its ledger.toml, whose values win over ``LEDGER_*`` variables of
    this shell (a ``LEDGER_OPENROUTER_BASE_URL`` left from another try must not send the
    demo's daemon elsewhere)."""
    values = tomllib.loads(config.read_text(encoding="utf-8"))
    return load_settings(config, **values)


async def _prepare(settings: Settings, root_page_id: str) -> dict[str, str]:
    """Before the daemon starts: create the database, the Notion databases (as `ledger notion
    init` does), register the behaviors and promote the trusted one to C (as `ledger promote`
    does, recorded with the demo as its actor). Returns the Notion data sources by title."""
    from ledger.behaviors.registry import reconcile_directory
    from ledger.notion.schema import init_workspace
    from ledger.notion.setup import open_api
    from ledger.notion.store import save_workspace
    from ledger.transitions import operator_action

    db = await asyncio.to_thread(Database.open, settings.database_url, migrate=True)
    try:
        api = open_api(settings)
        try:
            ids = await init_workspace(api, root_page_id)
        finally:
            await api.aclose()

        def register() -> None:
            now = datetime.now(UTC)
            with db.transaction() as session:
                save_workspace(session, ids, now)
            with db.transaction() as session:
                reconcile_directory(session, settings.behaviors_dir, now, settings.policy)
            with db.transaction() as session:
                operator_action(
                    session,
                    stage.TRUSTED,
                    "promote",
                    reason="trusted from the start, so that a guardrail fault can demote it",
                    actor="demo",
                    now=now,
                    ctx=build_policy_context(settings),
                    to=Tier.C,
                )

        await asyncio.to_thread(register)
    finally:
        db.close()
    return {table.capitalize(): source for table, source in ids.data_sources.items()}


def _banner(options: DemoOptions, written: stage.Stage, urls: stage.Urls, token: str) -> str:
    explain = stage.command_line(
        [*stage.unset_prefix(os.environ), *options.program],
        "explain",
        stage.TRUSTED,
        "--config",
        str(written.config),
    )
    lines = [
        "",
        "Promotion Ledger demo is running (Ctrl-C stops everything"
        + (", and removes its folder)." if options.keep is None else ")."),
        "",
        f"  Dashboard      {urls.dashboard}/",
        f"  Login token    {token}   (the dashboard's login asks for it)",
        f"  Alerts         {urls.receiver}/alerts      (the demo's alert receiver)",
        f"  Notion rows    {urls.receiver}/notion      (the Notion simulator, read-only)",
        f"  Explain        {explain}",
        "",
        f"  Folder         {written.folder}   (ledger.toml, behaviors/, ledger.db)",
        f"  Behaviors      {', '.join(stage.BEHAVIORS)}, every {options.every}s",
        f"  Simulators     OpenRouter {urls.openrouter}   Notion {urls.notion}",
        "  Policy         DEMO-ONLY thresholds: A → B after "
        f"{stage.DEMO_POLICY['promote_b_min_clean_runs']} clean runs, B → C after "
        f"{stage.DEMO_POLICY['promote_c_min_approved']} approvals (real defaults: 10 clean runs "
        "over 3 days; 20 approvals)",
    ]
    if options.guide:
        every = options.every
        clean_runs = stage.DEMO_POLICY["promote_b_min_clean_runs"]
        lines += [
            "",
            "Open the dashboard in your browser and log in with the token. Within a minute:",
            f"  · seo-audit stays at A · proposal-only: each run (every {every}s) is a proposal;",
            "  · release-notes is at B · human-in-the-loop: its runs wait on the Approvals page;",
            f"  · site-digest is promoted A → B after {clean_runs} clean runs, then asks for "
            "approvals too;",
            "  · publisher runs at C · autonomous; after its first run the demo injects a",
            "    guardrail block into the OpenRouter simulator, the policy demotes it to B and",
            "    the demotion alert arrives at the Alerts page; the Notion rows follow;",
            f"  · then `{explain}` tells why.",
            "Approve two of release-notes' requests and it is promoted to C · autonomous.",
        ]
    lines.append("")
    return "\n".join(lines)


class _Director:
    """What the demo does while it runs: inject the guardrail fault once the trusted behavior
    has run at C, and report what happens (tier changes and the first approval request of
    each behavior, read from the daemon's API; alerts as the receiver gets them)."""

    def __init__(self, token: str, started: float, say: Say) -> None:
        self.token = token
        self.started = started
        self.say = say

    def _at(self) -> str:
        return f"[+{time.monotonic() - self.started:4.0f}s]"

    def alert_received(self, alert: ReceivedAlert) -> None:
        headline = alert.text.splitlines()[0] if alert.text else alert.event
        self.say(f"{self._at()} alert received ({alert.event}): {headline}")

    async def inject_guardrail_fault(self, openrouter_url: str, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=openrouter_url, timeout=5) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    calls = (await http.get("/_sim/calls")).json()["calls"]
                    if any(
                        c.get("key_name") == stage.TRUSTED and c.get("status") == 200 for c in calls
                    ):
                        break
                await _pause(stop, POLL_SECONDS)
            else:
                return
            answer = await http.post("/_sim/faults", json=stage.GUARDRAIL_FAULT)
            answer.raise_for_status()
        self.say(
            f"{self._at()} injected a guardrail block into the OpenRouter simulator for "
            f"{stage.TRUSTED}'s key: its next run will be refused"
        )

    async def report(self, dashboard_url: str, stop: asyncio.Event) -> None:
        tiers: dict[str, str] = {}
        waiting: set[str] = set()
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=dashboard_url, headers=headers, timeout=10) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                    behaviors = (await http.get("/api/behaviors")).json()["behaviors"]
                    lines = tier_changes(tiers, behaviors) + first_approvals(waiting, behaviors)
                    for line in lines:
                        self.say(f"{self._at()} {line}")
                await _pause(stop, POLL_SECONDS * 2)


def tier_changes(tiers: dict[str, str], behaviors: list[dict[str, Any]]) -> list[str]:
    """Lines for the behaviors whose tier differs from ``tiers`` (updated in place); the first
    sighting of a behavior is not a change."""
    lines = []
    for behavior in behaviors:
        name, tier = str(behavior["name"]), str(behavior["tier"])
        before = tiers.get(name)
        tiers[name] = tier
        if before is None or before == tier:
            continue
        verb = "promoted" if Tier(tier).rank > Tier(before).rank else "demoted"
        lines.append(f"{name} {verb}: {TIER_LABELS[before]} → {TIER_LABELS[tier]}")
    return lines


def first_approvals(waiting: set[str], behaviors: list[dict[str, Any]]) -> list[str]:
    """Lines for the behaviors with approval requests waiting for the first time (``waiting``,
    the behaviors already reported, is updated in place)."""
    lines = []
    for behavior in behaviors:
        name = str(behavior["name"])
        if int(behavior.get("pending_approvals") or 0) > 0 and name not in waiting:
            waiting.add(name)
            lines.append(f"{name}: an approval request is waiting (dashboard → Approvals)")
    return lines


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
