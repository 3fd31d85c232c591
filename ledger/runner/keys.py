"""``ledger keys check``: compare the behaviors' keys with the OpenRouter account's.

One behavior = one key, capped by OpenRouter (DESIGN.md): ``list_keys`` reads the account's keys
through the management API; ``identify_keys`` asks each behavior's own key what it is
(``GET /api/v1/key``: its label) and finds its name in the account by that label, so a
behavior whose file has no ``key_name`` gets one learned (and a file whose ``key_name`` names
another key is caught); ``check_keys`` (pure) says where a behavior's key name is missing,
wrong, shared, disabled, uncapped or capped above the behavior's own budget;
``render_findings`` turns that into lines for the CLI.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import SecretStr

from ledger.behaviors.schema import Behavior
from ledger.errors import OpenRouterError
from ledger.runner.openrouter import OpenRouterClient

__all__ = [
    "FindingKind",
    "KeyFinding",
    "KeyIdentity",
    "ManagedKey",
    "check_keys",
    "identify_keys",
    "list_keys",
    "name_by_label",
    "render_findings",
]

KEYS_PATH: Final = "/api/v1/keys"
# A behavior's budget window → the OpenRouter limit_reset that caps the same window.
BUDGET_TO_LIMIT_RESET: Final[Mapping[str, str | None]] = {
    "day": "daily",
    "week": "weekly",
    "month": "monthly",
    "never": None,
}
_MAX_PAGES: Final = 100  # a guard against a server that ignores offset
_CENT: Final = 0.005  # limits within half a cent of the budget count as equal
_IDENTIFY_CONCURRENCY: Final = 16  # keys asking about themselves at once


@dataclass(frozen=True, slots=True)
class ManagedKey:
    """One key of the account as the management API lists it (never the key itself)."""

    hash: str
    name: str
    disabled: bool = False
    label: str | None = None
    limit: float | None = None
    limit_remaining: float | None = None
    limit_reset: str | None = None
    usage: float | None = None
    usage_monthly: float | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ManagedKey:
        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        return cls(
            hash=text("hash") or "",
            name=text("name") or "",
            disabled=data.get("disabled") is True,
            label=text("label"),
            limit=_number(data.get("limit")),
            limit_remaining=_number(data.get("limit_remaining")),
            limit_reset=text("limit_reset"),
            usage=_number(data.get("usage")),
            usage_monthly=_number(data.get("usage_monthly")),
        )


async def list_keys(
    client: OpenRouterClient, mgmt_key: SecretStr, *, include_disabled: bool = True
) -> list[ManagedKey]:
    """Every key of the account (``GET /api/v1/keys``), following ``offset`` pages until an
    empty one. Disabled keys are included by default so the check can report them. Raises
    ``OpenRouterCallError`` (a 401 means ``mgmt_key`` is not a management key)."""
    found: dict[str, ManagedKey] = {}
    for _ in range(_MAX_PAGES):
        params: dict[str, str | int] = {"offset": len(found)}
        if include_disabled:
            params["include_disabled"] = "true"
        document = await client.get_json(KEYS_PATH, key=mgmt_key, params=params)
        page = document.get("data")
        rows = [row for row in page if isinstance(row, Mapping)] if isinstance(page, list) else []
        keys = [ManagedKey.from_api(row) for row in rows]
        fresh = [k for k in keys if (k.hash or k.name) not in found]
        for key in fresh:
            found[key.hash or key.name] = key
        if not fresh:
            break
    return list(found.values())


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """What a behavior's own key turned out to be: its name in the account (``None`` when it
    could not be told, ``problem`` says why)."""

    behavior: str
    name: str | None
    problem: str | None = None


def name_by_label(label: str | None, managed: Sequence[ManagedKey]) -> tuple[str | None, str]:
    """The account's name for the key whose label is ``label``, or None and why not."""
    if not label:
        return None, "OpenRouter did not say the key's label"
    names = sorted({key.name for key in managed if key.label == label and key.name})
    if not names:
        return None, "no key of the account has its label (is it another account's key?)"
    if len(names) > 1:
        return None, f"{len(names)} keys of the account share its label"
    return names[0], ""


async def identify_keys(
    client: OpenRouterClient,
    owned: Mapping[str, SecretStr | str],
    managed: Sequence[ManagedKey],
) -> list[KeyIdentity]:
    """For each behavior (name → its resolved key, or why it could not be resolved), the
    account's name of its key: the key's label (``GET /api/v1/key``, asked with the key
    itself) matched against the management list. One failed key never stops the others."""
    gate = asyncio.Semaphore(_IDENTIFY_CONCURRENCY)

    async def identify(behavior: str, key: SecretStr | str) -> KeyIdentity:
        if isinstance(key, str):
            return KeyIdentity(behavior, None, key)
        try:
            async with gate:
                info = await client.key_info(key)
        except OpenRouterError as exc:
            return KeyIdentity(behavior, None, f"OpenRouter refused its key: {exc}")
        name, why = name_by_label(info.label, managed)
        return KeyIdentity(behavior, name, why or None)

    return list(await asyncio.gather(*(identify(name, key) for name, key in sorted(owned.items()))))


class FindingKind(StrEnum):
    NO_KEY_NAME = "no_key_name"
    WRONG_KEY_NAME = "wrong_key_name"
    MISSING = "missing"
    DUPLICATE_NAME = "duplicate_name"
    SHARED = "shared"
    DISABLED = "disabled"
    NO_LIMIT = "no_limit"
    LIMIT_ABOVE_BUDGET = "limit_above_budget"
    RESET_MISMATCH = "reset_mismatch"


# error: the behavior cannot run, or its runs cannot be told apart; warn: the cap is weak.
_SEVERITY: Final[Mapping[FindingKind, Literal["error", "warn"]]] = {
    FindingKind.NO_KEY_NAME: "warn",
    FindingKind.WRONG_KEY_NAME: "error",
    FindingKind.MISSING: "error",
    FindingKind.DUPLICATE_NAME: "error",
    FindingKind.SHARED: "error",
    FindingKind.DISABLED: "error",
    FindingKind.NO_LIMIT: "warn",
    FindingKind.LIMIT_ABOVE_BUDGET: "warn",
    FindingKind.RESET_MISMATCH: "warn",
}


@dataclass(frozen=True, slots=True)
class KeyFinding:
    """One problem with a behavior's key; ``message`` says what and what to do."""

    kind: FindingKind
    behaviors: tuple[str, ...]
    key_name: str | None
    message: str

    @property
    def severity(self) -> Literal["error", "warn"]:
        return _SEVERITY[self.kind]


def check_keys(
    behaviors: Sequence[Behavior],
    managed: Sequence[ManagedKey],
    identities: Sequence[KeyIdentity] = (),
) -> list[KeyFinding]:
    """Where the behaviors' keys (by key name) disagree with the account's keys.

    A behavior's key name is its file's ``key_name``, else the one ``identities`` learned.
    Per behavior: no key name (broadcast cannot be attributed), a ``key_name`` that is not
    the name of the key the behavior uses, a name missing from the account, a disabled key,
    a key without an OpenRouter limit, a limit above the behavior's budget for the same
    window, a limit that resets on another window than the budget.
    Across behaviors: one key name used by several behaviors, one name held by several keys.
    Findings come sorted by behavior, then kind.
    """
    identity = {i.behavior: i for i in identities}
    findings: list[KeyFinding] = []
    named: list[Behavior] = []
    for behavior in behaviors:
        known = identity.get(behavior.name)
        if behavior.key_name is None:
            if known is not None and known.name is not None:
                behavior = behavior.model_copy(update={"key_name": known.name})
        elif known is not None and known.name is not None and known.name != behavior.key_name:
            findings.append(
                KeyFinding(
                    FindingKind.WRONG_KEY_NAME,
                    (behavior.name,),
                    behavior.key_name,
                    f"{behavior.name}: key_name {behavior.key_name!r} in the file, but its key "
                    f"is named {known.name!r} in the account: broadcast attributes its calls by "
                    "the account's name; correct key_name (or remove it to have it learned)",
                )
            )
        named.append(behavior)
    behaviors = named
    by_name: dict[str, list[ManagedKey]] = defaultdict(list)
    for key in managed:
        by_name[key.name].append(key)
    users: dict[str, list[str]] = defaultdict(list)
    for behavior in behaviors:
        if behavior.key_name is not None:
            users[behavior.key_name].append(behavior.name)

    for key_name, names in sorted(users.items()):
        if len(names) > 1:
            listed = ", ".join(sorted(names))
            findings.append(
                KeyFinding(
                    FindingKind.SHARED,
                    tuple(sorted(names)),
                    key_name,
                    f"{listed} share key {key_name!r}: give each behavior its own key so one "
                    "runaway loop is capped alone and broadcast tells their runs apart",
                )
            )
        if len(by_name.get(key_name, ())) > 1:
            findings.append(
                KeyFinding(
                    FindingKind.DUPLICATE_NAME,
                    tuple(sorted(names)),
                    key_name,
                    f"{len(by_name[key_name])} keys in the account are named {key_name!r}: "
                    "broadcast attributes calls by key name, so rename all but one",
                )
            )
    for behavior in behaviors:
        known = identity.get(behavior.name)
        findings.extend(_check_behavior(behavior, by_name, known.problem if known else None))
    return sorted(findings, key=lambda f: (f.behaviors, list(FindingKind).index(f.kind)))


def _check_behavior(
    behavior: Behavior, by_name: Mapping[str, list[ManagedKey]], unknown_why: str | None
) -> Iterable[KeyFinding]:
    name, key_name = behavior.name, behavior.key_name
    if key_name is None:
        why = f" (not learned from its key: {unknown_why})" if unknown_why else ""
        yield KeyFinding(
            FindingKind.NO_KEY_NAME,
            (name,),
            None,
            f"{name}: no key_name in the behavior file{why}: broadcast events cannot be "
            "attributed to it by key; write the key's name as OpenRouter shows it",
        )
        return
    keys = by_name.get(key_name, [])
    if not keys:
        yield KeyFinding(
            FindingKind.MISSING,
            (name,),
            key_name,
            f"{name}: key {key_name!r} is not in the OpenRouter account: create it (with a "
            "limit) or correct key_name",
        )
        return
    key = keys[0]
    if key.disabled:
        yield KeyFinding(
            FindingKind.DISABLED,
            (name,),
            key_name,
            f"{name}: key {key_name!r} is disabled on OpenRouter: every call will be refused; "
            "enable it or give the behavior another key",
        )
    budget = behavior.budget
    if key.limit is None:
        cap = f" of at most ${budget.usd:.2f} {_window(budget.reset)}" if budget else ""
        yield KeyFinding(
            FindingKind.NO_LIMIT,
            (name,),
            key_name,
            f"{name}: key {key_name!r} has no OpenRouter credit limit: a runaway loop is "
            f"uncapped; set a limit{cap}",
        )
        return
    if budget is None:
        return
    wanted_reset = BUDGET_TO_LIMIT_RESET[budget.reset]
    if key.limit_reset != wanted_reset:
        yield KeyFinding(
            FindingKind.RESET_MISMATCH,
            (name,),
            key_name,
            f"{name}: key {key_name!r} limit ${key.limit:.2f} resets "
            f"{key.limit_reset or 'never'} but the budget (${budget.usd:.2f}) resets "
            f"{_window(budget.reset)}: set the key's limit_reset to {wanted_reset or 'null'}",
        )
    elif key.limit > budget.usd + _CENT:
        yield KeyFinding(
            FindingKind.LIMIT_ABOVE_BUDGET,
            (name,),
            key_name,
            f"{name}: key {key_name!r} limit ${key.limit:.2f} is above the behavior's budget "
            f"${budget.usd:.2f} {_window(budget.reset)}: lower the key's limit to the budget",
        )


def render_findings(findings: Sequence[KeyFinding]) -> list[str]:
    """One line per finding, errors first (``error: …`` / ``warn: …``); one reassuring line
    when there is nothing to report."""
    if not findings:
        return ["ok: every behavior has its own enabled key, capped within its budget"]
    ordered = sorted(findings, key=lambda f: f.severity != "error")
    return [f"{f.severity}: {f.message}" for f in ordered]


def _window(reset: str) -> str:
    return "in total" if reset == "never" else f"per {reset}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
