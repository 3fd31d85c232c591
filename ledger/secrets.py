"""Secret references (``env:NAME``, ``file:PATH``) → values, and literal-secret detection.

Behavior files and settings hold references, never values. Every value resolved here is
registered with the log masker so it can never be printed.
"""

from __future__ import annotations

import bisect
import os
import re
from pathlib import Path

from pydantic import SecretStr

from ledger.errors import SecretError

REFERENCE_RE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")

# Shapes of real credentials. Ordered: the first match names the kind in error messages.
_SECRET_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an OpenRouter API key", re.compile(r"\bsk-or-(?:v1-)?[A-Za-z0-9]{16,}")),
    ("an Anthropic API key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{16,}")),
    ("an OpenAI-style API key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    (
        "a Notion integration token",
        re.compile(r"\b(?:secret_[A-Za-z0-9]{30,}|ntn_[A-Za-z0-9]{30,})"),
    ),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("a Slack webhook URL", re.compile(r"hooks\.slack\.com/services/[A-Za-z0-9/]{10,}")),
    (
        "a GitHub token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    ),
    ("an AWS access key id", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("a bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{20,}=*")),
)
# A generic token: a long run of mixed letters and digits with no spaces.
_GENERIC_TOKEN = re.compile(r"^[A-Za-z0-9_\-+/=.]{32,}$")


def looks_like_secret(value: str) -> str | None:
    """Return what kind of credential ``value`` contains (for an error message), or None."""
    for kind, pattern in _SECRET_SHAPES:
        if pattern.search(value):
            return kind
    return None


def mask_credential_shapes(text: str, mask: str = "********") -> str:
    """``text`` with everything shaped like a credential replaced by ``mask``."""
    for _kind, pattern in _SECRET_SHAPES:
        text = pattern.sub(mask, text)
    return text


def looks_like_literal_token(value: str) -> bool:
    """A value that should have been a reference but looks like a raw key or token."""
    if looks_like_secret(value):
        return True
    stripped = value.strip()
    if not _GENERIC_TOKEN.match(stripped):
        return False
    has_digit = any(c.isdigit() for c in stripped)
    has_alpha = any(c.isalpha() for c in stripped)
    return has_digit and has_alpha


def is_reference(value: str) -> bool:
    return bool(REFERENCE_RE.match(value.strip()))


_known_values: set[str] = set()
_PREFIX = 6  # every registered secret has at least this many characters
_prefixes: dict[str, list[str]] = {}


def known_secret_values() -> frozenset[str]:
    """Every secret value resolved in this process (the log masker reads it)."""
    return frozenset(_known_values)


def register_secret_value(value: str) -> None:
    """Tell the masker about a secret that did not come through ``resolve`` (e.g. a token
    given literally in the environment)."""
    if len(value) >= _PREFIX and value not in _known_values:
        _known_values.add(value)
        # Longest first; one insertion, not a sort (OpenRouter keys share their prefix, so
        # with 10,000 behaviors this bucket holds 10,000 keys).
        bisect.insort(_prefixes.setdefault(value[:_PREFIX], []), value, key=_longest_first)


def _longest_first(value: str) -> int:
    return -len(value)


def mask_known_secrets(text: str, mask: str = "********") -> str:
    """``text`` with every registered secret value replaced by ``mask``.

    Cost grows with the text, not with the number of secrets: each position's first six
    characters are looked up in a dict of secret prefixes (a regex alternation of thousands
    of keys costs milliseconds per string — too much for a log line)."""
    if not _prefixes or len(text) < _PREFIX:
        return text
    out: list[str] = []
    i = start = 0
    end = len(text) - _PREFIX
    while i <= end:
        bucket = _prefixes.get(text[i : i + _PREFIX])
        if bucket is not None:
            for secret in bucket:
                if text.startswith(secret, i):
                    out.append(text[start:i])
                    out.append(mask)
                    i += len(secret)
                    start = i
                    break
            else:
                i += 1
            continue
        i += 1
    if not out:
        return text
    out.append(text[start:])
    return "".join(out)


def resolve(reference: str, *, base_dir: Path | None = None) -> SecretStr:
    """Resolve ``env:NAME`` or ``file:PATH`` to its value. Raises SecretError saying which
    reference failed and why — never the value."""
    ref = reference.strip()
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if value is None or not value.strip():
            raise SecretError(f"secret reference {ref}: environment variable {name} is not set")
    elif ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(
                f"secret reference {ref}: cannot read {path}: {exc.strerror}"
            ) from None
    else:
        raise SecretError(
            f"{ref[:12]!r}… is not a secret reference: use env:NAME or file:PATH"
            if len(ref) > 12
            else f"{ref!r} is not a secret reference: use env:NAME or file:PATH"
        )
    value = value.strip()
    if not value:
        raise SecretError(f"secret reference {ref}: the secret is empty")
    register_secret_value(value)
    return SecretStr(value)


def resolve_many(raw: str, *, base_dir: Path | None = None) -> list[SecretStr]:
    """A comma-separated list of references or literal values (``LEDGER_BROADCAST_TOKENS``)."""
    out: list[SecretStr] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if is_reference(part):
            out.append(resolve(part, base_dir=base_dir))
        else:
            register_secret_value(part)
            out.append(SecretStr(part))
    return out
