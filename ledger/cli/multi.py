"""``ledger canvas …`` (a canvas's skip list) and how ``ledger show RUN`` prints a multi-model
run: a roundtable's rounds side by side with the synthesis and confidence on top, a canvas's
answers as a table with its summary."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ledger.cli.options import ConfigOption

canvas_app = typer.Typer(
    help="A broad canvas's models skipped after persistent failures.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

PREVIEW_CHARS = 160


def _preview(text: str | None) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def print_calls(run: dict[str, Any]) -> None:
    """The per-call records of ``run`` (``ledger.runs.run_json``) as a multi-model run reads."""
    calls = run.get("calls") or []
    summary = run.get("summary") or {}
    if not calls:
        return
    console = Console(width=160)
    from ledger.cli import carry_config

    print(carry_config("  (each answer in full, masked as stored: `ledger show RUN --json`)"))
    print()
    if run.get("kind") == "roundtable":
        _print_roundtable(console, calls, summary)
    else:
        _print_canvas(console, calls, summary)


def _print_roundtable(
    console: Console, calls: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    confidence = summary.get("confidence") or "unknown"
    print(f"roundtable · confidence {confidence}")
    downgraded = summary.get("downgraded")
    if downgraded:
        print(f"  downgraded to an approval request at tier C: {downgraded.get('reason')}")
    synthesis = summary.get("synthesis") or {}
    for label, key in (
        ("consensus", "consensus"),
        ("disagreements", "disagreements"),
        ("next steps", "next_steps"),
    ):
        items = synthesis.get(key) or []
        if items:
            print(f"  {label}:")
            for item in items:
                print(f"    - {item}")
    if summary.get("synthesis_problem"):
        print(f"  synthesis problem: {summary['synthesis_problem']}")
    moves = {m["model"]: m for m in summary.get("deference") or []}
    table = Table(title="rounds")
    for column in ("model", "round 1", "round 2", "deference"):
        table.add_column(column)
    panel = [c for c in calls if c["role"] == "panel"]
    for model in dict.fromkeys(c["model"] for c in panel):
        cells = []
        for round_ in (1, 2):
            call = next((c for c in panel if c["model"] == model and c["round"] == round_), None)
            cells.append(_cell(call))
        move = moves.get(model) or {}
        if move.get("shift") is None:
            moved = "—"
        else:
            moved = f"{'changed' if move['changed'] else 'held'} (shift {move['shift']:.2f})"
        table.add_row(model, *cells, moved)
    console.print(table)
    for call in calls:
        if call["role"] == "synthesis":
            print(f"  synthesis by {call['model']}: {call['status']}" + _failure(call))


def _cell(call: dict[str, Any] | None) -> str:
    if call is None:
        return "—"
    if call["status"] == "answered":
        return (
            f"{_preview(call['output'])}\n[{_seconds(call['latency_seconds'])}, "
            f"{_money(call['cost_usd'])}]"
        )
    return f"{call['status']}{_failure(call)}"


def _failure(call: dict[str, Any]) -> str:
    return f" ({call['reason']})" if call.get("reason") else ""


def _print_canvas(console: Console, calls: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    answered = summary.get("answered", sum(1 for c in calls if c["status"] == "answered"))
    print(
        f"broad canvas · {answered} of {len(calls)} answered · total "
        f"{_money(summary.get('total_cost_usd'))}"
    )
    by_reason = summary.get("failed_by_reason") or {}
    if by_reason:
        print("  failed: " + ", ".join(f"{r} x{n}" for r, n in sorted(by_reason.items())))
    for entry in summary.get("skipped") or []:
        print(f"  {entry['status']}: {entry['model']} ({entry.get('reason')})")
    heavy = summary.get("most_expensive") or []
    if heavy:
        print(
            "  most expensive: "
            + ", ".join(f"{h['model']} {_money(h['cost_usd'])} ({h['share']:.0%})" for h in heavy)
        )
    table = Table(title="answers")
    for column in ("model", "status", "latency", "cost", "answer / error"):
        table.add_column(column)
    for call in calls:
        detail = (
            _preview(call["output"])
            if call["status"] == "answered"
            else f"{call.get('reason') or ''}: {_preview(call.get('error'))}"
        )
        table.add_row(
            call["model"],
            call["status"],
            _seconds(call["latency_seconds"]),
            _money(call["cost_usd"]),
            detail,
        )
    console.print(table)


@canvas_app.command("skipped")
def skipped(
    name: Annotated[str, typer.Argument(help="The behavior (a broad canvas).")],
    config: ConfigOption = None,
) -> None:
    """The models a canvas skips after persistent failures (unknown/deprecated, 403)."""
    from ledger.cli import _settings, _transaction
    from ledger.runner.multi import skip_list

    with _transaction(_settings(config), read_only=True) as session:
        rows = skip_list(session, name)
    if not rows:
        print(f"{name}: no model is skipped")
        return
    for model, reason in rows.items():
        print(f"{model}: {reason}")


@canvas_app.command("reenable")
def reenable(
    name: Annotated[str, typer.Argument(help="The behavior (a broad canvas).")],
    model: Annotated[str, typer.Argument(help="The model id to ask again.")],
    config: ConfigOption = None,
) -> None:
    """Ask a skipped model again from the next run on (its failure count restarts)."""
    from ledger.cli import _now, _settings, _transaction
    from ledger.runner.multi import reenable

    with _transaction(_settings(config)) as session:
        print(reenable(session, name, model, _now()))
