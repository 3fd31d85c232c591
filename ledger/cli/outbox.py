"""``ledger outbox`` (list, retry, discard) and ``ledger silence`` (NAME | --all, list, end):
the operator's hands on undelivered work and on alert noise. Parses, calls
``ledger.outbox.manage``, prints."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ledger.cli import (
    _now,
    _operator_name,
    _policy_ctx,
    _settings,
    _transaction,
    carry_config,
)
from ledger.cli.options import ConfigOption
from ledger.errors import LedgerError

outbox_app = typer.Typer(
    help="Undelivered work: list rows, retry dead letters, discard what must not be sent.",
    no_args_is_help=True,
)


@outbox_app.command("list")
def outbox_list(
    config: ConfigOption = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", "-s", help="pending, in_flight, delivered, dead or discarded (default: all)"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many rows.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print what GET /api/outbox answers.")] = (
        False
    ),
) -> None:
    """Outbox rows, newest first: id, kind, status, behavior, what it is, attempts, last error."""
    from ledger.outbox.manage import list_outbox

    settings = _settings(config)
    with _transaction(settings, read_only=True) as session:
        rows = list_outbox(session, status=status, limit=limit)
    if as_json:
        print(json.dumps({"rows": [r.as_json() for r in rows]}, indent=2))
        return
    if not rows:
        print("no outbox rows" + (f" with status {status}" if status else ""))
        return
    for r in rows:
        when = r.delivered_at or r.next_attempt_at
        print(
            f"#{r.id}  {r.status:<9}  {r.kind:<20}  {r.behavior or '-'}  {r.summary}  "
            f"attempts {r.attempts}  {'delivered' if r.delivered_at else 'next'} "
            f"{when:%Y-%m-%d %H:%M:%S} UTC"
        )
        if r.last_error:
            print(f"    last error: {r.last_error[:300]}")
    dead = sum(1 for r in rows if r.status == "dead")
    if dead:
        print(
            carry_config(
                f"{dead} dead: `ledger outbox retry ID` once the cause is fixed, or "
                "`ledger outbox discard ID --reason TEXT`"
            )
        )


RowId = Annotated[int, typer.Argument(help="The outbox row's id (`ledger outbox list`).")]


@outbox_app.command("retry")
def outbox_retry(row_id: RowId, config: ConfigOption = None) -> None:
    """Queue a dead (or discarded) row again, due now (a ledger entry records who)."""
    from ledger.outbox.manage import retry

    settings = _settings(config)
    with _transaction(settings) as session:
        message = retry(session, row_id, actor=_operator_name(), now=_now())
    print(carry_config(message))


@outbox_app.command("discard")
def outbox_discard(
    row_id: RowId,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why it must not be sent (recorded; required).")
    ],
    config: ConfigOption = None,
) -> None:
    """Give up on a dead or pending row: kept as discarded, with who and why, never sent."""
    from ledger.outbox.manage import discard

    settings = _settings(config)
    with _transaction(settings) as session:
        message = discard(session, row_id, actor=_operator_name(), reason=reason, now=_now())
    print(carry_config(message))


# -- silences ------------------------------------------------------------------------------------


class _SilenceGroup(TyperGroup):
    """``ledger silence NAME …`` and ``ledger silence --all …`` mean ``ledger silence add …``;
    ``list`` and ``end`` are subcommands (a behavior called ``list`` or ``end``: use ``add``)."""

    default_command = "add"  # ledger.cli.command knows `ledger silence NAME` is `add`'s

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The shorthand first: it is how a silence is usually set."""
        return ["NAME|--all --for DURATION --reason TEXT [OPTIONS]", "|", "COMMAND [ARGS]..."]


silence_app = typer.Typer(
    cls=_SilenceGroup,
    help="Mute a behavior's alerts for a while (gates, tiers and the ledger carry on).\n\n"
    "`ledger silence NAME --for 2h --reason TEXT` silences one behavior, `ledger silence --all "
    "--for 2h --reason TEXT` every one: both are short for `ledger silence add …` (`ledger "
    "silence add --help` lists its options). `ledger silence list` shows the silences, "
    "`ledger silence end ID` ends one.",
    no_args_is_help=True,
)


def _silence_line(view: Any, now: Any) -> str:
    if view.active(now):
        state = f"active until {view.ends_at:%Y-%m-%d %H:%M} UTC"
    elif view.ended_at is not None:
        state = f"ended {view.ended_at:%Y-%m-%d %H:%M} UTC by {view.ended_by}"
    else:
        state = f"expired {view.ends_at:%Y-%m-%d %H:%M} UTC"
    scope = view.behavior or "all behaviors"
    muted = ", ".join(f"{n} {e}" for e, n in sorted(view.muted.items())) or "nothing muted"
    return f"#{view.id}  {scope}  {state}  by {view.created_by}: {view.reason}  ({muted})"


@silence_app.command("add")
def silence_add(
    duration: Annotated[str, typer.Option("--for", help="How long: 2h, 30m, 1h30m, 1d.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (recorded; required).")],
    name: Annotated[str | None, typer.Argument(help="The behavior to silence.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Silence every behavior.")] = False,
    config: ConfigOption = None,
) -> None:
    """Silence a behavior's alerts (or every behavior's with --all)."""
    from ledger.outbox.manage import parse_duration, silence

    if (name is None) == (not every):
        raise LedgerError("name one behavior or give --all (not both)")
    settings = _settings(config)
    now = _now()
    with _transaction(settings) as session:
        view = silence(
            session,
            behavior=name,
            duration=parse_duration(duration),
            reason=reason,
            actor=_operator_name(),
            now=now,
        )
    print(
        carry_config(
            f"silence {view.id}: alerts of {view.behavior or 'all behaviors'} muted until "
            f"{view.ends_at:%Y-%m-%d %H:%M} UTC (`ledger silence end {view.id}` to end it sooner)"
        )
    )


@silence_app.command("list")
def silence_list(
    config: ConfigOption = None,
    include_ended: Annotated[
        bool, typer.Option("--ended", help="Ended silences too, newest first.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what GET /api/silences answers.")
    ] = (False),
) -> None:
    """Silences not ended yet (with --ended, every one), and what each has muted."""
    from ledger.outbox.manage import list_silences

    settings = _settings(config)
    now = _now()
    with _transaction(settings, read_only=True) as session:
        views = list_silences(session, include_ended=include_ended)
    if as_json:
        print(json.dumps({"silences": [v.as_json(now) for v in views]}, indent=2))
        return
    if not views:
        print("no silences" if include_ended else "no silences in force")
        return
    for view in views:
        print(_silence_line(view, now))


@silence_app.command("end")
def silence_end(
    silence_id: Annotated[int, typer.Argument(help="The silence's id (`ledger silence list`).")],
    config: ConfigOption = None,
) -> None:
    """End a silence now; what it muted is summarised in the ledger and to the channels."""
    from ledger.outbox.manage import unsilence
    from ledger.transitions import muted_summary

    settings = _settings(config)
    with _transaction(settings) as session:
        view = unsilence(
            session, silence_id, actor=_operator_name(), now=_now(), ctx=_policy_ctx(settings)
        )
    print(f"silence {view.id} ended; muted while it lasted: {muted_summary(view.muted)}")
