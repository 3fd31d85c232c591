"""The broadcast processor in a process of its own (``LEDGER_INGEST_PROCESSOR=process``, the
default outside tests): deliveries become spend and gate results as with the thread, what the
child counts reaches the parent's ``/metrics``, a killed child is replaced without losing a
delivery, and the child stops with its daemon — also when the daemon is killed.

The daemon's app runs under uvicorn on a loopback port (``serve_app``), or as ``ledger serve``
for the kill test; the child is a real spawned interpreter on the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import ledger
from ledger.clock import Clock, FakeClock, SystemClock
from ledger.config import Settings, WebhookSource
from ledger.daemon import build_policy_context, build_processor
from ledger.db.session import Database
from ledger.ingest import worker
from ledger.ingest.process import IngestProcessor
from ledger.ingest.worker import PROTOCOL, UPGRADED_EXIT, UPGRADED_PROBLEM, ProcessorProcess
from ledger.transitions import PolicyContext
from ledger.web.app import create_app
from tests.factories import VALID_BEHAVIOR, write_behavior
from tests.ingest.test_end_to_end import (
    JSON,
    TOKEN,
    behavior,
    ingest_summary,
    openrouter_delivery,
)
from tests.servers import Daemon, serve_app, wait_until, wait_until_async


@pytest.fixture
def alpha_settings(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """One behavior, ``alpha`` (key name ``alpha-key``, $1 a day, never scheduled during a
    test), and the processor in its own process."""
    body = VALID_BEHAVIOR.format(key_env="WORKER_ALPHA_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    monkeypatch.setenv("WORKER_ALPHA_KEY", "sk-or-v1-" + "b2" * 32)
    return Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        broadcast_tokens=TOKEN,
        auth="off",
        watch=False,
        ingest_processor="process",
    )


def send(base_url: str, cost_tokens: int) -> None:
    body, _ = openrouter_delivery("alpha-key", cost_tokens, user="alpha")
    response = httpx.post(f"{base_url}/v1/traces", content=body, headers=JSON, timeout=10)
    assert response.status_code == 200, response.text


def metric(base_url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    selector = rf"\{{{re.escape(wanted)}\}}" if labels else ""
    match = re.search(rf"^{name}{selector} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def spans(base_url: str) -> int:
    return len(behavior(base_url)["last_deliveries"])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def served(alpha_settings: Settings) -> Iterator[tuple[str, ProcessorProcess]]:
    app = create_app(alpha_settings)
    with serve_app(app) as base_url:
        processor = app.state.ledger.services.processor
        assert isinstance(processor, ProcessorProcess)
        wait_until(lambda: processor.process is not None, 10, "the child to start")
        yield base_url, processor
    assert processor.process is not None
    # The daemon stopped its child, which finished cleanly.
    assert processor.process.returncode == 0
    assert not alive(processor.process.pid)


def test_a_child_process_applies_deliveries_and_its_counts_reach_metrics(
    served: tuple[str, ProcessorProcess],
) -> None:
    base_url, processor = served
    assert processor.process is not None and processor.process.pid != os.getpid()
    send(base_url, 250_000)  # $0.25 of alpha's $1 a day
    wait_until(lambda: spans(base_url) >= 3, 20, "the child to apply the delivery")
    assert behavior(base_url)["spend"]["usd"] == pytest.approx(0.25)
    before = metric(base_url, "ledger_gate_results_total", gate="spend_cap", outcome="fail")
    send(base_url, 900_000)  # past the budget: the child records spend_cap
    wait_until(
        lambda: (
            metric(base_url, "ledger_gate_results_total", gate="spend_cap", outcome="fail")
            == before + 1
        ),
        20,
        "the child's spend_cap result counted in the parent's /metrics",
    )
    assert behavior(base_url)["spend"]["usd"] == pytest.approx(1.15)
    assert processor.restarts == 0


def test_a_killed_child_is_replaced_and_no_delivery_is_lost(
    served: tuple[str, ProcessorProcess],
) -> None:
    base_url, processor = served
    assert processor.process is not None
    first = processor.process.pid
    restarts = metric(base_url, "ledger_broadcast_processor_restarts_total")
    os.kill(first, signal.SIGKILL)
    # Acknowledged while no processor runs: they wait in the database.
    for _ in range(5):
        send(base_url, 1_000)
    wait_until(lambda: processor.restarts == 1, 20, "the parent to notice")
    wait_until(
        lambda: behavior(base_url)["spend"]["usd"] == pytest.approx(0.005),
        30,
        "the new child to apply every delivery",
    )
    assert ingest_summary(base_url)["waiting_deliveries"] == 0
    assert metric(base_url, "ledger_broadcast_processor_restarts_total") == restarts + 1
    assert processor.process is not None and processor.process.pid != first
    assert not alive(first)


def children(pid: int) -> list[int]:
    """``pid``'s processor children (not the short check of what its interpreter imports)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in map(int, (task / "children").read_text().split()):
            with contextlib.suppress(FileNotFoundError):
                if b"ledger.ingest.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
    return found


def ignores_sigterm(pid: int) -> bool:
    """Whether the child ``pid`` is past its start-up (the imports)."""
    with contextlib.suppress(FileNotFoundError):
        status = Path(f"/proc/{pid}/status").read_text()
        mask = int(status.split("SigIgn:")[1].split()[0], 16)
        return bool(mask & (1 << (signal.SIGTERM - 1)))
    return False


def serve_with_child(start_daemon: Callable[..., Daemon], database_url: str) -> tuple[Daemon, int]:
    """``ledger serve`` with the processor in its process, and the child's pid once started."""
    daemon = start_daemon(
        database_url,
        {"LEDGER_BROADCAST_TOKENS": TOKEN, "LEDGER_INGEST_PROCESSOR": "process"},
    )
    found: list[int] = []

    def spawned() -> bool:
        found[:] = children(daemon.proc.pid)
        return bool(found)

    wait_until(spawned, 20, "ledger serve to start its processor")
    (child,) = found
    return daemon, child


def test_the_child_of_a_killed_daemon_stops_by_itself(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon, child = serve_with_child(start_daemon, database_url)
    daemon.proc.kill()  # SIGKILL: the parent cannot stop its child
    daemon.proc.wait(10)
    wait_until(lambda: not alive(child), 20, "the orphaned processor to stop")


def test_the_processor_stays_in_a_thread_when_asked_on_a_test_clock_or_in_memory(
    db: Database, tmp_path: Path
) -> None:
    """A child has the system's clock and opens the database again: a daemon on another
    clock, or on an in-memory SQLite database, keeps the processor in its own thread."""
    ctx = build_policy_context(Settings(behaviors_dir=tmp_path))
    url = str(db.engine.url.render_as_string(hide_password=False))

    def built(clock: Clock, **settings: Any) -> object:
        merged = {"database_url": url, "behaviors_dir": tmp_path, **settings}
        return build_processor(Settings(**merged), db, clock, ctx, None, None)

    assert isinstance(built(SystemClock(), ingest_processor="process"), ProcessorProcess)
    assert isinstance(built(SystemClock(), ingest_processor="thread"), IngestProcessor)
    test_clock = FakeClock(SystemClock().now())
    assert isinstance(built(test_clock, ingest_processor="process"), IngestProcessor)
    for memory in ("sqlite://", "sqlite:///:memory:"):
        chosen = built(SystemClock(), ingest_processor="process", database_url=memory)
        assert isinstance(chosen, IngestProcessor)


def test_a_service_managers_sigterm_to_the_group_is_a_clean_stop_not_a_crash(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    """``systemctl stop`` signals every process of the unit: the child leaves stopping to its
    parent, which stops it, exits 0 and neither restarts nor counts it as a crash."""
    daemon, child = serve_with_child(start_daemon, database_url)
    wait_until(lambda: ignores_sigterm(child), 20, "the child to start")
    os.kill(child, signal.SIGTERM)  # the child first, as a group signal may reach it first
    time.sleep(0.5)
    assert alive(child)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert not alive(child)
    log = daemon.log()
    assert "broadcast processor started in a process of its own" in log
    assert "exited; starting another" not in log


def test_a_child_that_keeps_exiting_makes_the_daemon_not_ready(
    served: tuple[str, ProcessorProcess],
) -> None:
    """Three exits in a row: ``/readyz`` answers 503 and says why (a load balancer sends
    deliveries elsewhere; an orchestrator can restart the daemon); the parent keeps trying."""
    base_url, processor = served
    assert httpx.get(f"{base_url}/readyz", timeout=10).status_code == 200
    for n in range(1, 4):
        current = processor.process
        assert current is not None
        wait_until(lambda pid=current.pid: alive(pid), 20, "the child to run")
        os.kill(current.pid, signal.SIGKILL)
        wait_until(lambda n=n: processor.failures == n, 20, "the parent to notice")
        if n < 3:
            wait_until(lambda c=current: processor.process is not c, 20, "a new child")
    answer = httpx.get(f"{base_url}/readyz", timeout=10)
    assert answer.status_code == 503
    reason = answer.json()["reason"]
    assert "broadcast processor process keeps exiting (3 times in a row" in reason
    assert "last exit code -9" in reason
    # It is started again after its back-off (5 s), and stopped cleanly with the daemon (once
    # past its imports: on a loaded machine they took longer than a stop may).
    wait_until(lambda: processor.process is not current, 20, "the fourth child")
    fourth = processor.process
    assert fourth is not None
    wait_until(lambda: ignores_sigterm(fourth.pid), 30, "the fourth child to start")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if entry)


def test_the_child_holds_no_secret_but_the_databases_and_still_applies_deliveries(
    alpha_settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child parses untrusted span data: its environment is an allow-list, without the
    webhook signing secret, the management key, the behaviors' keys or anything else; only the
    variable the database URL's ``env:`` reference names is added."""
    planted = {
        "WORKER_GH_SECRET": "gh-signing-secret-" + "c3" * 16,
        "WORKER_OR_KEY": "sk-or-v1-" + "d4" * 32,
        "WORKER_UNRELATED_TOKEN": "unrelated-token-" + "e5" * 16,
        "AWS_SECRET_ACCESS_KEY": "aws-secret-" + "f6" * 16,
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORKER_DB_URL", database_url)
    behavior_key = os.environ["WORKER_ALPHA_KEY"]
    settings = alpha_settings.model_copy(
        update={
            "database_url": "env:WORKER_DB_URL",
            "openrouter_management_key": SecretStr("env:WORKER_OR_KEY"),
            "webhook_sources": {
                "gh": WebhookSource(scheme="github", secrets=SecretStr("env:WORKER_GH_SECRET"))
            },
        }
    )

    def counted(base_url: str) -> None:
        assert behavior(base_url)["spend"]["usd"] == pytest.approx(0.25)

    environ = _child_applies_a_delivery(create_app(settings), counted)
    everything = "\0".join(f"{k}={v}" for k, v in environ.items())
    for value in [*planted.values(), behavior_key]:
        assert value not in everything
    assert environ["WORKER_DB_URL"] == database_url  # LEDGER_DATABASE_URL=env:WORKER_DB_URL
    assert environ["PATH"] == os.environ["PATH"]
    assert not [name for name in environ if name.startswith("LEDGER_")]


def _child_applies_a_delivery(
    app: Any, check: Callable[[str], None] = lambda _base_url: None
) -> dict[str, str]:
    """Serve ``app``; its child's environment, once the child has applied one delivery (then
    ``check(base_url)``) without exiting."""
    with serve_app(app) as base_url:
        processor = app.state.ledger.services.processor
        assert isinstance(processor, ProcessorProcess)
        wait_until(lambda: processor.process is not None, 10, "the child to start")
        assert processor.process is not None
        environ = environ_of(processor.process.pid)
        send(base_url, 250_000)
        wait_until(lambda: spans(base_url) >= 3, 20, "the child to apply the delivery")
        check(base_url)
        assert processor.restarts == 0, f"the child exited (code {processor.last_exit})"
    return environ


def test_the_child_imports_nothing_from_the_daemons_working_directory(
    alpha_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``json.py`` where the daemon was started is not the child's ``json`` (``-P``), and an
    installed ``ledger`` gets no ``PYTHONPATH`` added before the standard library."""
    assert "sqlite:///" not in alpha_settings.database_url or "sqlite:////" in (
        alpha_settings.database_url
    )  # absolute: the working directory changes
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "json.py").write_text("raise ImportError('json.py from the working directory')\n")
    monkeypatch.chdir(workdir)
    environ = _child_applies_a_delivery(create_app(alpha_settings))
    assert environ.get("PYTHONPATH") == os.environ.get("PYTHONPATH")


def test_the_package_is_put_first_on_the_childs_path_only_when_another_ledger_would_win(
    tmp_path: Path,
) -> None:
    root = str(Path(ledger.__file__).resolve().parents[1])
    environ = {"PATH": os.environ["PATH"]}
    assert worker._pythonpath(sys.executable, tuple(environ.items())) is None  # installed
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "__init__.py").write_text("")
    shadowed = {**environ, "PYTHONPATH": str(tmp_path)}
    found = worker._pythonpath(sys.executable, tuple(shadowed.items()))
    assert found == root + os.pathsep + str(tmp_path)


def toggling() -> tuple[Callable[[], bool], list[int]]:
    """An ``ingest_busy`` that changes its answer each time it is asked, and how often it was."""
    calls = [0]

    def busy() -> bool:
        calls[0] += 1
        return calls[0] % 2 == 0

    return busy, calls


def test_a_child_that_reads_nothing_does_not_freeze_the_daemon(
    served: tuple[str, ProcessorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped child (SIGSTOP) with "busy" changing hundreds of times: the parent never
    blocks on the full socket (its loop keeps answering /healthz) and keeps only the latest;
    once the child runs again it catches up, no restart."""
    base_url, processor = served
    assert processor.process is not None
    child = processor.process.pid
    monkeypatch.setattr(worker, "SYNC_SECONDS", 0.001)
    busy, calls = toggling()
    os.kill(child, signal.SIGSTOP)
    try:
        processor.ingest_busy = busy
        # Far more changes than the socket holds (some 280 messages).
        wait_until(lambda: calls[0] >= 2_000, 30, "the parent to keep checking 'busy'")
        for _ in range(5):
            assert httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
        assert processor.channel is not None and processor.channel.pending
    finally:
        os.kill(child, signal.SIGCONT)
    processor.ingest_busy = lambda: False
    wait_until(
        lambda: processor.channel is not None and not processor.channel.pending,
        10,
        "the child to read what waited",
    )
    send(base_url, 250_000)
    wait_until(lambda: spans(base_url) >= 3, 20, "the child to apply the delivery")
    assert processor.restarts == 0
    assert processor.process is not None and processor.process.pid == child


def test_a_child_that_reads_nothing_for_too_long_is_killed_and_replaced(
    served: tuple[str, ProcessorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, processor = served
    assert processor.process is not None
    child = processor.process.pid
    monkeypatch.setattr(worker, "SYNC_SECONDS", 0.001)
    monkeypatch.setattr(worker, "HUNG_SECONDS", 2.0)
    busy, _ = toggling()
    os.kill(child, signal.SIGSTOP)
    try:
        processor.ingest_busy = busy
        wait_until(lambda: processor.restarts == 1, 30, "the hung child to be replaced")
        assert processor.last_exit == -signal.SIGKILL
        assert not alive(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    processor.ingest_busy = lambda: False
    wait_until(lambda: processor.process is not None and processor.process.pid != child, 20)
    send(base_url, 250_000)
    wait_until(lambda: spans(base_url) >= 3, 20, "the new child to apply the delivery")


def test_a_child_of_another_version_is_not_restarted_and_readyz_says_restart_the_daemon(
    alpha_settings: Settings,
) -> None:
    """After ``pip install`` into the daemon's environment, a child started from the new files
    meets a parent of the old version: it exits before reading the configuration, the parent
    stops restarting it and /readyz says what to do."""
    app = create_app(alpha_settings)
    with serve_app(app) as base_url:
        processor = app.state.ledger.services.processor
        assert isinstance(processor, ProcessorProcess)
        wait_until(lambda: processor.process is not None, 10, "the child to start")
        first = processor.process
        assert first is not None
        processor.hello = {"version": "0.0.1", "protocol": PROTOCOL}  # the daemon's, older
        os.kill(first.pid, signal.SIGKILL)  # the next child runs the files installed now
        wait_until(lambda: processor.upgraded, 20, "the parent to notice the upgrade")
        assert processor.process is not None and processor.process is not first
        assert processor.process.returncode == UPGRADED_EXIT
        restarts = processor.restarts
        answer = httpx.get(f"{base_url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert "ledger was upgraded in place: restart the daemon" in answer.json()["reason"]
        time.sleep(1.5)  # past the first restart delay: none
        assert processor.restarts == restarts
        last = processor.process
    assert processor.process is last


async def test_a_child_of_another_protocol_exits_with_its_own_code(database_url: str) -> None:
    processor = ProcessorProcess(database_url, PolicyContext())
    processor.hello = {**processor.hello, "protocol": PROTOCOL + 1}
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await wait_until_async(lambda: processor.upgraded, 20, "the child to exit")
        assert processor.process is not None
        assert processor.process.returncode == UPGRADED_EXIT
        assert processor.problem() == UPGRADED_PROBLEM
        assert processor.restarts == 0 and not task.done()
    finally:
        stop.set()
        await task


async def test_a_cancelled_processor_task_leaves_no_child(database_url: str) -> None:
    processor = ProcessorProcess(database_url, PolicyContext())
    task = asyncio.create_task(processor.run(asyncio.Event()))
    await wait_until_async(lambda: processor.process is not None, 20, "the child to start")
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processor.process is not None
    assert processor.process.poll() is not None
    assert not alive(processor.process.pid)
    assert processor.channel is not None and processor.channel.sock.fileno() == -1
