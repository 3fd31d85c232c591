"""The sensitive-info detector: personal data and credentials found in text, reported only as
masked previews, and text with them masked.

Pure: no I/O. Shared by the runner (the ``sensitive_info`` gate, masking a run's output before it
is stored), ingestion (masking the prompt and completion text a broadcast carries) and
behavior-file validation (``looks_like_secret``), so it lives at the base, below them all.

Every detector pattern is bounded (no unbounded repetition, none nested), and those that could
restart inside a run of their own characters begin with a look-behind that only lets a match
start where such a run starts, so the scan stays linear in the text's length even on
adversarial input.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "KIND_LABELS",
    "SECRET_KINDS",
    "Finding",
    "detect_sensitive",
    "looks_like_secret",
    "mask_sensitive",
    "redact_sensitive",
]

KIND_LABELS: dict[str, str] = {
    "openrouter_key": "OpenRouter API key",
    "anthropic_key": "Anthropic API key",
    "openai_key": "OpenAI API key",
    "notion_token": "Notion token",
    "slack_token": "Slack token",
    "slack_webhook": "Slack webhook URL",
    "github_token": "GitHub token",
    "aws_access_key": "AWS access key ID",
    "generic_secret": "secret token",
    "credit_card": "card number",
    "ssn": "US social security number",
    "phone": "phone number",
    "email": "email address",
    "ip_address": "IP address",
}
SECRET_KINDS: frozenset[str] = frozenset(
    {
        "openrouter_key",
        "anthropic_key",
        "openai_key",
        "notion_token",
        "slack_token",
        "slack_webhook",
        "github_token",
        "aws_access_key",
        "generic_secret",
    }
)


@dataclass(frozen=True, slots=True)
class Finding:
    """Sensitive data at ``text[start:end]``; ``preview`` is masked, never the value itself."""

    kind: str
    start: int
    end: int
    preview: str

    @property
    def label(self) -> str:
        return KIND_LABELS[self.kind]

    def as_evidence(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "preview": self.preview}


@dataclass(frozen=True, slots=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    # Returns the masked preview, or None when the candidate is not the real thing.
    confirm: Callable[[re.Match[str]], str | None]
    group: str | int = 0
    # What any match must contain: one of ``needs_any`` (in the case-folded text for the
    # generic secret), a digit. Only ever a necessary condition: skipping never loses a finding.
    needs_any: tuple[str, ...] = ()
    needs_digit: bool = False


_DIGIT: Final = re.compile(r"\d")


def _secret_preview(match: re.Match[str]) -> str | None:
    prefix = match.group("prefix")
    return f"{prefix}…({len(match.group(0))} chars)"


def _mixed_secret_preview(match: re.Match[str]) -> str | None:
    body = match.group(0)[len(match.group("prefix")) :]
    if not (_has_digit(body) and _has_letter(body)):
        return None  # e.g. sk-some-long-kebab-case-words: a name, not a key
    return _secret_preview(match)


def _generic_preview(match: re.Match[str]) -> str | None:
    value = match.group("value")
    return f"…({len(value)} chars)" if _looks_random(value) else None


def _card_preview(match: re.Match[str]) -> str | None:
    raw = match.group(0)
    separators = {c for c in raw if not c.isdigit()}
    if len(separators) > 1:
        return None
    if separators:
        groups = tuple(len(g) for g in raw.split(separators.pop()))
        if groups not in _CARD_GROUPINGS:
            return None
    digits = "".join(c for c in raw if c.isdigit())
    if not (_card_prefix_ok(digits) and _luhn_ok(digits)):
        return None
    return f"card …{digits[-4:]}"


_CARD_GROUPINGS = frozenset({(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1)})


def _card_prefix_ok(digits: str) -> bool:
    """Issuer prefixes (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay) and lengths."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if digits.startswith("6011") or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19
    if 300 <= int(digits[:3]) <= 305 or two in (36, 38, 39):
        return 14 <= n <= 19
    if 3528 <= four <= 3589 or two == 62:
        return 16 <= n <= 19
    return False


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _ssn_preview(match: re.Match[str]) -> str | None:
    area, group, serial = match.group("area", "group", "serial")
    if area in ("000", "666") or area.startswith("9") or group == "00" or serial == "0000":
        return None
    return "***-**-****"


def _us_phone_preview(match: re.Match[str]) -> str | None:
    return "phone …" + match.group(0)[-2:]


def _intl_phone_preview(match: re.Match[str]) -> str | None:
    raw = match.group(0)
    digits = sum(c.isdigit() for c in raw)
    if not 8 <= digits <= 15:
        return None
    if raw.count("(") != raw.count(")") or raw.count("(") > 1:
        return None
    if "(" in raw and not re.search(r"\(\d{1,4}\)", raw):
        return None
    if re.search(r"[ .-]{2}", raw.replace("(", "").replace(")", "")):
        return None
    return f"{raw[:3]}… …{raw[-2:]}"


def _email_preview(match: re.Match[str]) -> str | None:
    raw = match.group(0)
    local, _, domain = raw.partition("@")
    return f"{local[0]}***@***.{domain.rsplit('.', 1)[-1]}"


def _ipv4_preview(match: re.Match[str]) -> str | None:
    raw = match.group(0)
    try:
        ipaddress.IPv4Address(raw)
    except ValueError:
        return None
    return raw.split(".", 1)[0] + ".x.x.x"


def _ipv6_preview(match: re.Match[str]) -> str | None:
    raw = match.group(0)
    if not any(c in "123456789abcdefABCDEF" for c in raw.replace("::", "")):
        return None  # "::" alone (or all zeros) is punctuation far more often than an address
    try:
        ipaddress.IPv6Address(raw)
    except ValueError:
        return None
    return raw.split(":", 1)[0] + ":…"


def _has_digit(value: str) -> bool:
    return any(c.isdigit() for c in value)


def _has_letter(value: str) -> bool:
    return any(c.isalpha() for c in value)


def _looks_random(value: str) -> bool:
    """Whether ``value`` looks machine-generated (a token) rather than words and a number.

    Needs letters and digits, some entropy, and frequent switches between lower case, upper
    case and digits: ``Xk29vLq8Zp3m…`` or hex switch often, ``claude-3-5-sonnet-20241022`` or
    ``recipe_for_2024_edition`` rarely.
    """
    chars = [c for c in value if c.isalnum()]
    if len(chars) < 16 or not (_has_digit(value) and _has_letter(value)):
        return False
    classes = ["d" if c.isdigit() else "u" if c.isupper() else "l" for c in chars]
    switches = sum(a != b for a, b in itertools.pairwise(classes))
    return switches / (len(chars) - 1) >= 0.2 and _entropy(value) >= 3.0


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# Listed by priority: where two findings overlap, the earlier detector wins.
_DETECTORS: tuple[_Detector, ...] = (
    _Detector(
        "openrouter_key",
        re.compile(r"(?<![\w-])(?P<prefix>sk-or-(?:v\d{1,2}-)?)[A-Za-z0-9]{16,128}"),
        _secret_preview,
        needs_any=("sk-or-",),
    ),
    _Detector(
        "anthropic_key",
        re.compile(r"(?<![\w-])(?P<prefix>sk-ant-)[A-Za-z0-9_-]{20,250}"),
        _mixed_secret_preview,
        needs_any=("sk-ant-",),
    ),
    _Detector(
        "openai_key",
        re.compile(
            r"(?<![\w-])(?P<prefix>sk-(?!or-|ant-)(?:proj-|svcacct-|admin-)?)[A-Za-z0-9_-]{20,250}"
        ),
        _mixed_secret_preview,
        needs_any=("sk-",),
    ),
    _Detector(
        "notion_token",
        re.compile(r"(?<![\w-])(?P<prefix>secret_|ntn_)[A-Za-z0-9]{30,80}(?![A-Za-z0-9])"),
        _mixed_secret_preview,
        needs_any=("secret_", "ntn_"),
    ),
    _Detector(
        "slack_webhook",
        re.compile(
            r"(?P<prefix>https?://hooks\.slack\.com/(?:services|workflows|triggers)/)"
            r"[A-Za-z0-9_/-]{8,250}"
        ),
        _secret_preview,
        needs_any=("hooks.slack.com/",),
    ),
    _Detector(
        "slack_token",
        re.compile(r"(?<![\w-])(?P<prefix>xox[abprs]-)[A-Za-z0-9-]{10,250}"),
        _mixed_secret_preview,
        needs_any=("xox",),
    ),
    _Detector(
        "github_token",
        re.compile(r"(?<![\w-])(?P<prefix>gh[pousr]_|github_pat_)[A-Za-z0-9_]{22,255}"),
        _secret_preview,
        needs_any=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _Detector(
        "aws_access_key",
        re.compile(r"(?<![A-Za-z0-9])(?P<prefix>AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        _secret_preview,
        needs_any=("AKIA", "ASIA"),
    ),
    _Detector(
        "credit_card",
        re.compile(r"(?<![\w.,+-])\d(?:[ -]?\d){12,18}(?!\w|[.,]\d)"),
        _card_preview,
        needs_digit=True,
    ),
    _Detector(
        "ssn",
        re.compile(
            r"(?<![\w.-])(?P<area>\d{3})(?P<sep>[- ])(?P<group>\d{2})(?P=sep)(?P<serial>\d{4})"
            r"(?!\w|-\d)"
        ),
        _ssn_preview,
        needs_digit=True,
    ),
    _Detector(
        "phone",
        re.compile(
            r"(?<![\w+.-])(?:"
            r"(?:\+?1[ .-]?)?\([2-9]\d{2}\)[ ]?[2-9]\d{2}[ .-]\d{4}"
            r"|(?:\+?1(?P<s0>[ .-]))?[2-9]\d{2}(?P<s1>[ .-])[2-9]\d{2}(?P=s1)\d{4}"
            r")(?!\w|[.-]\d)"
        ),
        _us_phone_preview,
        needs_digit=True,
    ),
    _Detector(
        "phone",
        re.compile(r"(?<![\w+])\+[1-9][\d .()-]{6,24}\d(?!\d)"),
        _intl_phone_preview,
        needs_any=("+",),
        needs_digit=True,
    ),
    _Detector(
        "email",
        re.compile(
            r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![\w-])"
        ),
        _email_preview,
        needs_any=("@",),
    ),
    _Detector(
        "ip_address",
        re.compile(
            r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
            r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\d)"
        ),
        _ipv6_preview,
        needs_any=(":",),
    ),
    _Detector(
        "ip_address",
        re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"),
        _ipv4_preview,
        needs_digit=True,
    ),
    _Detector(
        "generic_secret",
        re.compile(
            r"(?i:api[_-]?key|access[_-]?key|key|secret|token|passw(?:or)?d|pwd|bearer"
            r"|credentials?|auth)s?[\"']?(?:[ \t]{0,3}[:=][ \t]{0,3}|[ \t]{1,3})[\"']?"
            r"(?P<value>[A-Za-z0-9_+=-][A-Za-z0-9_\-./+=]{19,511})"
        ),
        _generic_preview,
        group="value",
        # casefold: (?i) matches the Kelvin sign as k and the long s as s; no needle holds an
        # i, which (?i) also matches as dotted and dotless I.
        needs_any=("key", "secret", "token", "passw", "pwd", "bearer", "credent", "auth"),
    ),
)


def detect_sensitive(text: str) -> list[Finding]:
    """Every piece of personal data or credential found in ``text``, ordered by position.

    Kinds (``Finding.kind``; ``KIND_LABELS`` gives the words): email addresses, phone numbers
    (``+`` international and US formats — bare digit runs, years and short numbers are not
    phones), card numbers (issuer prefix + Luhn), US SSNs (impossible areas, groups and serials
    rejected), IPv4/IPv6 addresses (validated), and credential-shaped strings (OpenRouter,
    OpenAI, Anthropic, Notion, Slack, GitHub, AWS, and long high-entropy values after words like
    key/token/secret). Overlapping candidates resolve to the more specific kind.
    """
    candidates: list[tuple[int, int, int, Finding]] = []  # (start, priority, -end, finding)
    has_digit = _DIGIT.search(text) is not None
    lowered: str | None = None
    for priority, detector in enumerate(_DETECTORS):
        # Skip a pattern whose required characters are absent (C-speed substring checks; most
        # prompts hold no key prefix, "@", digit or credential word).
        if detector.needs_digit and not has_digit:
            continue
        if detector.needs_any:
            if detector.kind == "generic_secret":
                lowered = text.casefold() if lowered is None else lowered
                haystack = lowered
            else:
                haystack = text
            if not any(needle in haystack for needle in detector.needs_any):
                continue
        for match in detector.pattern.finditer(text):
            preview = detector.confirm(match)
            if preview is None:
                continue
            start, end = match.span(detector.group)
            finding = Finding(detector.kind, start, end, preview)
            candidates.append((start, priority, -end, finding))
    candidates.sort(key=lambda c: c[:3])
    kept: list[tuple[int, Finding]] = []  # (priority, finding), non-overlapping, by start
    for start, priority, _, finding in candidates:
        if kept and start < kept[-1][1].end:
            if priority < kept[-1][0]:
                kept[-1] = (priority, finding)
            continue
        kept.append((priority, finding))
    return [finding for _, finding in kept]


def redact_sensitive(text: str) -> str:
    """``text`` with every finding replaced by its masked preview in angle brackets."""
    return mask_sensitive(text)[0]


def mask_sensitive(text: str) -> tuple[str, list[Finding]]:
    """``text`` with every finding replaced by ``<kind: masked preview>``, and the findings
    (kinds and positions in the original ``text``). Text without findings comes back as is."""
    findings = detect_sensitive(text)
    if not findings:
        return text, findings
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position : finding.start])
        parts.append(f"<{finding.kind}: {finding.preview}>")
        position = finding.end
    parts.append(text[position:])
    return "".join(parts), findings


def looks_like_secret(value: str) -> str | None:
    """What kind of credential ``value`` looks like ("OpenRouter API key", …), or None.

    For fields where a secret *reference* (``env:NAME`` / ``file:PATH``) is expected: any
    credential shape inside the value counts; so does a bare long high-entropy token (the field
    name already says it is a key). Personal data (emails, phones…) is not a secret here.
    """
    stripped = value.strip()
    for finding in detect_sensitive(stripped):
        if finding.kind in SECRET_KINDS:
            return finding.label
    if stripped.startswith(("env:", "file:")):
        return None
    token = stripped.removeprefix("Bearer ").strip()
    if re.fullmatch(r"[A-Za-z0-9_\-+/=]{20,512}", token) and _looks_random(token):
        return KIND_LABELS["generic_secret"]
    return None
