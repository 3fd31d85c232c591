"""What the Notion simulator starts from: the integration token it accepts, the workspace-level
page to build under, and faults that apply from the start; from code or a YAML file."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from ruamel.yaml import YAML

FaultKind = Literal["rate_limited", "server_error", "slow", "outage"]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
# HTTP status → the code Notion sends with it.
SERVER_ERRORS = {
    500: "internal_server_error",
    502: "internal_server_error",
    503: "service_unavailable",
    504: "gateway_timeout",
    529: "service_overload",
}
DEFAULT_TOKEN = "secret_notion_sim"  # noqa: S105 - the simulator's well-known test token
DEFAULT_ROOT_PAGE_ID = "5e1f0000-0000-4000-8000-000000000001"


class NotionSimConfigError(ValueError):
    """The simulator's configuration (a file or a fault) is invalid; says where."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class NotionFault:
    """A programmed misbehaviour for requests whose method and path match (None matches any;
    ``path`` is a prefix of the path after ``/v1``, e.g. ``/pages``), for the first ``times``
    matching requests (None = every one).

    kinds: ``rate_limited`` (429 + ``Retry-After: retry_after``), ``server_error`` (``status``
    500/502/503/504/529), ``slow`` (wait ``seconds`` before answering — past the client's
    timeout it is a timeout), ``outage`` (every request answers 503 for ``seconds`` from the
    moment the fault is added; ``times``, ``method`` and ``path`` do not apply)."""

    kind: FaultKind
    method: str | None = None
    path: str | None = None
    times: int | None = None
    retry_after: int = 1
    status: int = 500
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path is None or path.startswith(self.path)
        )

    @classmethod
    def from_mapping(cls, raw: Any, where: str = "fault") -> NotionFault:
        """Build a fault from JSON/YAML; raises ``NotionSimConfigError`` naming ``where``."""
        if not isinstance(raw, Mapping):
            raise NotionSimConfigError(f"{where}: must be a mapping")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise NotionSimConfigError(f"{where}: unknown fields {sorted(unknown)}")
        if raw.get("kind") not in FAULT_KINDS:
            raise NotionSimConfigError(
                f"{where}: kind must be one of {sorted(FAULT_KINDS)}, not {raw.get('kind')!r}"
            )
        if raw.get("status", 500) not in SERVER_ERRORS:
            raise NotionSimConfigError(f"{where}: status must be one of {sorted(SERVER_ERRORS)}")
        try:
            return cls(
                kind=raw["kind"],
                method=raw.get("method"),
                path=raw.get("path"),
                times=None if raw.get("times") is None else int(raw["times"]),
                retry_after=int(raw.get("retry_after", 1)),
                status=int(raw.get("status", 500)),
                seconds=float(raw.get("seconds", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise NotionSimConfigError(f"{where}: {exc}") from exc


@dataclass(slots=True)
class NotionSimConfig:
    """Everything the Notion simulator starts from; ``POST /_sim/reset`` returns to it.

    ``token`` is the integration token it accepts (``Authorization: Bearer``);
    ``root_page_id``/``root_page_title`` name the workspace-level page shared with the
    integration; ``faults`` apply from the start; ``seed`` fixes the ids it makes; ``clock``
    gives the time (timestamps, outages)."""

    token: str = DEFAULT_TOKEN
    root_page_id: str = DEFAULT_ROOT_PAGE_ID
    root_page_title: str = "Promotion Ledger"
    faults: list[NotionFault] = field(default_factory=list)
    seed: int = 0
    clock: Callable[[], datetime] = _utc_now

    def __post_init__(self) -> None:
        try:
            self.root_page_id = str(uuid.UUID(self.root_page_id))
        except ValueError as exc:
            raise NotionSimConfigError(
                f"root page id {self.root_page_id!r} is not a UUID (e.g. {DEFAULT_ROOT_PAGE_ID})"
            ) from exc

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> NotionSimConfig:
        """Load ``{token, root_page_id, root_page_title, seed, faults: [...]}``; keyword
        overrides win."""
        path = Path(path)
        try:
            raw = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise NotionSimConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except Exception as exc:  # ruamel's parser errors share no public base class
            raise NotionSimConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise NotionSimConfigError(f"{path}: the top level must be a mapping")
        known = {"token", "root_page_id", "root_page_title", "seed", "faults"}
        if set(raw) - known:
            raise NotionSimConfigError(f"{path}: unknown fields {sorted(set(raw) - known)}")
        values: dict[str, Any] = {k: raw[k] for k in known - {"faults"} if k in raw}
        values["faults"] = [
            NotionFault.from_mapping(f, f"{path}: faults[{i}]")
            for i, f in enumerate(raw.get("faults") or [])
        ]
        values.update(overrides)
        return cls(**values)
