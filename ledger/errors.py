"""The error tree: one root, boundary errors split by who is at fault.

Callers branch on attributes (``permanent``, ``retry_after``, ``gate``, ``attributable``,
``status_code``), never on message text. The CLI and the API render every ``LedgerError`` in one
place each; a traceback never reaches a user.
"""

from __future__ import annotations

from dataclasses import dataclass


class LedgerError(Exception):
    """Root of every error the daemon raises on purpose. ``str(err)`` is the user-facing line."""


class ConfigError(LedgerError):
    """The configuration (environment, ledger.toml) is wrong."""


class SecretError(LedgerError):
    """A secret reference cannot be resolved, or a literal secret was found."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a behavior file, located as precisely as the parser allows."""

    path: str
    line: int
    column: int
    field: str
    message: str

    def render(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.field}: {self.message}"


class BehaviorFileError(LedgerError):
    """One or more behavior files are invalid; ``problems`` lists each with file:line:col."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class NotFoundError(LedgerError):
    """A named thing (behavior, run, approval) does not exist."""


class InvalidRequestError(LedgerError):
    """A request's value this daemon cannot use (a filter, a pagination cursor it never gave
    out); the message names it and what to send instead."""


class ConflictError(LedgerError):
    """The request conflicts with the current state (e.g. an approval already decided)."""


class OpenRouterError(LedgerError):
    """A call to OpenRouter (or the fallback endpoint) failed.

    ``gate`` and ``attributable`` say how the failure counts; ``permanent`` says whether a retry
    could help; ``retry_after`` is the server's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        gate: str = "provider_error",
        attributable: bool = False,
        permanent: bool = False,
        retry_after: float | None = None,
        evidence: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.gate = gate
        self.attributable = attributable
        self.permanent = permanent
        self.retry_after = retry_after
        self.evidence = evidence or {}


class NotionError(LedgerError):
    """A call to Notion failed."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.permanent = permanent
        self.retry_after = retry_after


class IngestError(LedgerError):
    """An ingested payload was refused; ``status_code`` is the HTTP status to answer with."""

    def __init__(
        self, message: str, *, status_code: int = 400, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
