"""``/api/tokens``: admins list, create and revoke the named API tokens (``ledger.tokens``).

A created token's value is in the answer to its ``POST`` and nowhere else, ever.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from ledger.db.session import Database
from ledger.tokens import NAME_PATTERN, TokenRole, create_token, list_tokens, revoke_token
from ledger.web.auth import AdminDep

router = APIRouter(prefix="/api", tags=["tokens"])

TokenName = Annotated[str, Path(pattern=NAME_PATTERN, description="The token's name.")]


class TokenOut(BaseModel):
    name: str
    role: TokenRole
    created_at: datetime
    created_by: str
    last_used_at: datetime | None = Field(description="Recorded at most once a minute.")
    revoked_at: datetime | None
    active: bool


class TokenList(BaseModel):
    tokens: list[TokenOut]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Recorded as the actor: token:NAME.")
    role: TokenRole = Field(description="viewer: reads; operator: acts; admin: manages tokens.")


class TokenCreated(TokenOut):
    token: str = Field(description="The token's value: shown this once, stored only hashed.")


def _db(request: Request) -> Database:
    db: Database = request.app.state.ledger.db
    return db


def _now(request: Request) -> datetime:
    now: datetime = request.app.state.ledger.clock.now()
    return now


@router.get("/tokens")
async def get_tokens(request: Request, _op: AdminDep) -> TokenList:
    """Every named token, active and revoked (never their values)."""

    def read() -> list[dict[str, Any]]:
        with _db(request).transaction() as session:
            return [t.as_json() for t in list_tokens(session)]

    return TokenList.model_validate({"tokens": await asyncio.to_thread(read)})


@router.post("/tokens", status_code=201, responses={409: {"description": "The name is in use."}})
async def post_token(request: Request, body: TokenCreate, op: AdminDep) -> TokenCreated:
    """Create a named token with a role; the answer holds its value, shown this once."""

    def create() -> dict[str, Any]:
        with _db(request).transaction() as session:
            value, info = create_token(
                session, body.name, body.role, actor=op.name, now=_now(request)
            )
            return {**info.as_json(), "token": value}

    return TokenCreated.model_validate(await asyncio.to_thread(create))


@router.delete("/tokens/{name}", responses={404: {"description": "No token of that name."}})
async def delete_token(request: Request, name: TokenName, _op: AdminDep) -> TokenOut:
    """Revoke a named token: it stops working at once (its record is kept)."""

    def revoke() -> dict[str, Any]:
        with _db(request).transaction() as session:
            return revoke_token(session, name, now=_now(request)).as_json()

    return TokenOut.model_validate(await asyncio.to_thread(revoke))
