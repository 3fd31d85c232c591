"""The email alert channel against a real SMTP server on loopback (aiosmtpd): what is sent,
a login, and which SMTP answers are retried or dead-lettered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from sqlmodel import select

from ledger.clock import FakeClock
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.outbox.alerts import (
    ChannelDeps,
    ChannelSpec,
    EmailChannel,
    alert_handlers,
    build_channel,
)
from ledger.outbox.dispatcher import dispatch_one
from ledger.outbox.enqueue import enqueue_alert
from ledger.outbox.urls import make_client
from tests.conftest import T0, free_port
from tests.factories import DEMOTION_ALERT as DEMOTION


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it accepts; refuses recipients as scripted."""

    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address → SMTP answer

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        return "250 Message accepted"


def _check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"ledger",
        b"hunter2-smtp",
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_check_login,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def channel(port: int, **kw: Any) -> EmailChannel:
    return EmailChannel(
        "mail",
        "127.0.0.1",
        port,
        "ledger@example.com",
        ("ops@example.com", "oncall@example.com"),
        security="none",
        timeout=5.0,
        **kw,
    )


def queue(db: Database) -> int:
    with db.transaction() as session:
        (row,) = enqueue_alert(session, DEMOTION, channels=["mail"], now=T0)
        return row.id or 0


def status_of(db: Database, row_id: int) -> tuple[str, str | None]:
    with db.transaction() as session:
        row = session.exec(select(OutboxRow).where(OutboxRow.id == row_id)).one()
        return row.status, row.last_error


async def test_a_demotion_arrives_as_an_email_with_the_dashboard_link(
    db: Database, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    row_id = queue(db)
    mail = channel(
        port,
        username="ledger",
        password=SecretStr("hunter2-smtp"),
        public_url="https://ledger.example.com",
    )
    assert await dispatch_one(db, alert_handlers({"mail": mail}), FakeClock(T0))
    assert status_of(db, row_id) == ("delivered", None)
    ((sender, recipients, message),) = mailbox.messages
    assert sender == "ledger@example.com"
    assert recipients == ["ops@example.com", "oncall@example.com"]
    assert message["Subject"] == "[ledger] seo-audit demoted"
    assert message["Message-ID"] == f"<ledger-alert-{row_id}@example.com>"
    body = message.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert body.startswith(
        "seo-audit demoted from C · autonomous to B · human-in-the-loop: "
        "guardrail_block failed on run r-41\n"
    )
    assert "Dashboard: https://ledger.example.com/behaviors/seo-audit" in body


async def test_a_wrong_password_is_a_dead_letter_that_says_so(
    db: Database, smtp: tuple[Mailbox, int]
) -> None:
    _mailbox, port = smtp
    row_id = queue(db)
    mail = channel(port, username="ledger", password=SecretStr("wrong"))
    await dispatch_one(db, alert_handlers({"mail": mail}), FakeClock(T0))
    status, error = status_of(db, row_id)
    assert status == "dead"
    assert error is not None and "refused the login (535)" in error
    assert "wrong" not in error


@pytest.mark.parametrize(
    ("answer", "status"),
    [("550 5.1.1 no such mailbox", "dead"), ("451 4.3.0 try again later", "pending")],
)
async def test_refused_recipients_are_retried_or_dead_lettered_by_code(
    db: Database, smtp: tuple[Mailbox, int], answer: str, status: str
) -> None:
    mailbox, port = smtp
    mailbox.refuse = {"ops@example.com": answer, "oncall@example.com": answer}
    row_id = queue(db)
    await dispatch_one(db, alert_handlers({"mail": channel(port)}), FakeClock(T0))
    got, error = status_of(db, row_id)
    assert got == status
    assert error is not None and "refused every recipient" in error
    assert mailbox.messages == []


async def test_nobody_listening_is_retried(db: Database) -> None:
    row_id = queue(db)
    await dispatch_one(db, alert_handlers({"mail": channel(free_port())}), FakeClock(T0))
    status, error = status_of(db, row_id)
    assert status == "pending"
    assert error is not None and "SMTP failed: ConnectionRefusedError" in error


async def test_the_email_channel_is_built_from_its_configuration(
    db: Database, smtp: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox, port = smtp
    monkeypatch.setenv("LEDGER_TEST_SMTP_PASSWORD", "hunter2-smtp")
    spec = ChannelSpec(
        "mail",
        "email",
        host="127.0.0.1",
        port=port,
        security="none",
        sender="ledger@example.com",
        to=("ops@example.com",),
        username="ledger",
        password="env:LEDGER_TEST_SMTP_PASSWORD",
    )
    async with make_client() as client:
        deps = ChannelDeps(client, FakeClock(T0), True, "https://ledger.example.com")
        built = build_channel(spec, deps)
        assert isinstance(built, EmailChannel)
        assert "hunter2" not in repr(built)
        row_id = queue(db)
        await dispatch_one(db, alert_handlers({"mail": built}), FakeClock(T0))
    assert status_of(db, row_id) == ("delivered", None)
    assert len(mailbox.messages) == 1
    assert build_channel(replace(spec, port=None, security="tls"), deps).port == 465  # type: ignore[union-attr]
