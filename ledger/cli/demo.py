"""``ledger demo``: the whole system in one command, for a first look (``ledger.demo``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

MIN_SECONDS = 10  # the shortest schedule interval (ledger.schedule.MIN_INTERVAL)


def demo(
    port: Annotated[
        int | None,
        typer.Option(help="Dashboard port on 127.0.0.1 (default: a free one).", min=1, max=65535),
    ] = None,
    keep: Annotated[
        Path | None,
        typer.Option(
            help="Write everything into this new or empty folder and keep it after the demo "
            "(default: a temporary folder, removed on exit).",
            file_okay=False,
        ),
    ] = None,
    seconds: Annotated[
        int,
        typer.Option(
            "--seconds",
            help=f"How often each example behavior runs (at least {MIN_SECONDS}, the shortest "
            "schedule; the timeline scales with it).",
            min=MIN_SECONDS,
        ),
    ] = MIN_SECONDS,
    browser_hint: Annotated[
        bool,
        typer.Option(
            "--browser-hint/--no-browser-hint",
            help="Print the guide to what appears in the browser, and when.",
        ),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the daemon's info logs (stderr).")
    ] = False,
) -> None:
    """Try Promotion Ledger in two minutes: nothing to install or configure.

    Starts, in this one process, the daemon on a temporary SQLite database, local simulators
    of OpenRouter and Notion, four example behaviors running every few seconds, an alert
    receiver and a read-only view of the Notion simulator's rows; then prints the dashboard
    URL, a login token and the other URLs.

    Within about a minute the dashboard shows: proposals at A · proposal-only (seo-audit); an
    approval waiting at B · human-in-the-loop (release-notes); site-digest promoted A → B by
    the policy; publisher, trusted at C · autonomous, demoted to B after the demo injects a
    guardrail block into the OpenRouter simulator, with the demotion alert at the receiver's
    Alerts page and the Notion rows updated. It prints the exact `ledger explain publisher
    --config …` command that tells why.

    The policy thresholds are DEMO-ONLY (A → B after 2 clean runs, B → C after 2 approvals),
    written into the demo's own ledger.toml; `ledger serve` keeps the real defaults.
    Everything listens on 127.0.0.1 only; nothing reaches OpenRouter or Notion.

    Ctrl-C stops everything and removes the temporary folder (keep it with --keep DIR).
    """
    from ledger.demo.run import DemoOptions, run_demo

    def say(text: str) -> None:
        print(text, flush=True)

    run_demo(
        DemoOptions(
            port=port,
            keep=keep,
            every=seconds,
            guide=browser_hint,
            verbose=verbose,
            program=_program(),
        ),
        say,
    )


def _program() -> tuple[str, ...]:
    """How to start this same ``ledger`` from a shell, for the commands the demo prints."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name != "ledger":  # python -m ledger
        return (sys.executable, "-m", "ledger")
    on_path = shutil.which("ledger")
    if on_path and os.path.samefile(on_path, argv0):
        return ("ledger",)
    return (argv0,)


def _unwrapped(doc: str | None) -> str:
    """``doc`` with each paragraph on one line (Typer keeps a docstring's line breaks, which
    then break mid-sentence at the terminal's width)."""
    import inspect

    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


HELP = _unwrapped(demo.__doc__)
