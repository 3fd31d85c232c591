"""``ledger token create|list|revoke``: the named API tokens (``ledger.tokens``), stored hashed.

``create`` prints the token once; nothing can show it again (create a new one if it is lost).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from ledger.cli import _now, _operator_name, _settings, _transaction, command, out
from ledger.cli.options import ConfigOption

app = typer.Typer(
    help="Named API tokens with a role (viewer, operator, admin), stored hashed.",
    no_args_is_help=True,
)


class RoleChoice(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


TokenName = Annotated[str, typer.Argument(help="The token's name (recorded as token:NAME).")]


@app.command("create")
def create(
    name: TokenName,
    role: Annotated[
        RoleChoice,
        typer.Option(
            "--role",
            help="viewer: reads; operator: approves, rejects and acts on behaviors; "
            "admin: manages tokens too.",
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Create a named token and print it, this once (only its hash is stored)."""
    from ledger.tokens import create_token

    settings = _settings(config)
    with _transaction(settings) as session:
        value, info = create_token(session, name, role.value, actor=_operator_name(), now=_now())
    print(value)
    typer.echo(
        f"token {info.name!r} created with the {info.role} role; it is shown only now: "
        "store it (send it as Authorization: Bearer <token>)",
        err=True,
    )


@app.command("list")
def list_(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every named token: role, created, last used, revoked (never the values)."""
    from ledger.tokens import list_tokens

    settings = _settings(config)
    with _transaction(settings, read_only=True) as session:
        tokens = list_tokens(session)
    if as_json:
        print(json.dumps([t.as_json() for t in tokens], default=str, indent=2))
        return
    if not tokens:
        print(f"no named tokens ({command('token create NAME --role viewer|operator|admin')})")
        return
    table = Table("name", "role", "created", "by", "last used", "revoked")

    def when(value: object) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value is not None else "-"

    for t in tokens:
        table.add_row(
            t.name,
            t.role,
            when(t.created_at),
            t.created_by,
            when(t.last_used_at),
            when(t.revoked_at),
        )
    out.print(table)
    if settings.api_tokens:
        print(
            f"and {len(settings.api_tokens)} token(s) from [api_tokens] in the configuration "
            "(operator role): " + ", ".join(sorted(settings.api_tokens))
        )


@app.command("revoke")
def revoke(name: TokenName, config: ConfigOption = None) -> None:
    """Revoke a named token: it stops working at once."""
    from ledger.tokens import revoke_token

    settings = _settings(config)
    with _transaction(settings, read_only=True) as session:
        info = revoke_token(session, name, now=_now())
    print(f"token {info.name!r} ({info.role}) revoked")
