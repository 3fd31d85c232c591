"""The behavior file: one YAML file per behavior, validated by these pydantic models.

``ledger schema`` prints ``behavior_json_schema()`` so editors can validate and complete files.
Unknown keys are errors everywhere (a typo must not pass silently).
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ledger.gates import Tier
from ledger.policy import DEFAULT_THRESHOLDS
from ledger.schedule import Schedule, compile_schedule, parse_interval
from ledger.secrets import is_reference, looks_like_literal_token, looks_like_secret

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PRESET_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
TIMEOUT_CLASSES: dict[str, float] = {"fast": 30.0, "reasoning": 120.0, "multi_agent": 600.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _refuse_credential_url(value: str) -> None:
    """A URL written literally that looks like a credential (a webhook URL is one) is refused:
    it belongs in an environment variable, referenced as ``env:NAME``."""
    kind = looks_like_secret(value)
    if kind:
        raise ValueError(
            f"this URL looks like {kind}, which is a credential: store it in an "
            "environment variable and write env:NAME here"
        )


def _check_reference(value: str, what: str) -> str:
    if is_reference(value):
        return value
    kind = looks_like_secret(value)
    if kind or looks_like_literal_token(value):
        raise ValueError(
            f"this looks like {kind or 'a literal key or token'}; never put a secret in a "
            f"behavior file — store it in an environment variable or a file and write "
            f"env:NAME or file:PATH here"
        )
    raise ValueError(f"{what} must be a secret reference: env:NAME or file:PATH")


SecretRef = Annotated[
    str,
    Field(description="A secret reference: env:NAME or file:PATH. Never the secret itself."),
]


class Budget(_Strict):
    usd: float = Field(gt=0, description="Spend allowed per budget window, in US dollars.")
    reset: Literal["day", "week", "month", "never"] = Field(
        default="month",
        description="When the window resets: calendar day/week (Monday)/month, or never.",
    )
    per_call_estimate_usd: float | None = Field(
        default=None,
        gt=0,
        description="Worst-case cost of one call, reserved before calling (else the catalog "
        "price of primary_model, else $0.05).",
    )


class Checks(_Strict):
    json_schema: dict[str, Any] | None = Field(
        default=None, description="The output must be JSON valid against this JSON Schema."
    )
    max_chars: int | None = Field(default=None, gt=0)
    must_match: list[str] = Field(default_factory=list, description="Regexes the output needs.")
    must_not_match: list[str] = Field(
        default_factory=list, description="Regexes the output must not contain."
    )
    sensitive_info: Literal["warn", "block"] = Field(
        default="warn",
        description="What the built-in detector (emails, phones, cards, SSNs, IPs, keys) does.",
    )

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {i}: invalid regular expression: {exc}") from None
        return patterns


class Action(_Strict):
    type: Literal["log", "webhook", "notion_page", "notion_append"] = Field(
        description="What a passing output does: log it, POST it to a webhook, create a "
        "Notion page in a database, or append it to a Notion page."
    )
    url: str | None = Field(
        default=None, description="webhook: the URL, or a secret reference to it."
    )
    secret: SecretRef | None = Field(
        default=None, description="webhook: HMAC-SHA256 signing secret (a reference)."
    )
    database_id: str | None = Field(default=None, description="notion_page: target database.")
    page_id: str | None = Field(default=None, description="notion_append: target page.")
    title: str | None = Field(default=None, description="notion_page: page title template.")

    @field_validator("secret")
    @classmethod
    def _secret_is_reference(cls, value: str | None) -> str | None:
        return None if value is None else _check_reference(value, "secret")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value is None or is_reference(value):
            return value
        _refuse_credential_url(value)
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL or a secret reference (env:NAME)")
        return value

    @model_validator(mode="after")
    def _fields_for_type(self) -> Action:
        needed = {"webhook": "url", "notion_page": "database_id", "notion_append": "page_id"}
        field = needed.get(self.type)
        if field and getattr(self, field) is None:
            raise ValueError(f"action type {self.type} needs {field}")
        return self


class Fallback(_Strict):
    base_url: str = Field(description="An OpenAI-compatible endpoint, e.g. https://api.x.ai/v1")
    model: str = Field(min_length=1)
    api_key: SecretRef

    @field_validator("api_key")
    @classmethod
    def _key_is_reference(cls, value: str) -> str:
        return _check_reference(value, "api_key")

    @field_validator("base_url")
    @classmethod
    def _base_url_shape(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class PolicyOverrides(_Strict):
    """Threshold overrides; see DESIGN.md (Policy) for the defaults."""

    warn_limit: int | None = Field(default=None, ge=1)
    warn_window_runs: int | None = Field(default=None, ge=1, le=1000)
    second_fail_hours: int | None = Field(default=None, ge=0)
    promote_b_min_clean_runs: int | None = Field(default=None, ge=1)
    promote_b_min_days: int | None = Field(default=None, ge=0)
    promote_c_min_approved: int | None = Field(default=None, ge=1)
    promote_c_min_approval_rate: float | None = Field(default=None, ge=0, le=1)
    promote_c_clean_days: int | None = Field(default=None, ge=0)
    cooldown_days: int | None = Field(default=None, ge=0)

    def as_mapping(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    @model_validator(mode="after")
    def _consistent(self) -> PolicyOverrides:
        # The policy's own validation is the single source of truth for ranges and coherence.
        DEFAULT_THRESHOLDS.with_overrides(self.as_mapping())
        return self


class AlertChannel(_Strict):
    type: Literal["slack", "webhook", "notion", "log"]
    url: str | None = Field(default=None, description="slack/webhook: a secret reference or URL.")
    secret: SecretRef | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or is_reference(value):
            return value
        _refuse_credential_url(value)
        return value


AlertEvent = Literal["demotion", "promotion", "pause", "provider_error", "auth_error"]


def _default_alert_events() -> list[AlertEvent]:
    return ["demotion", "pause", "auth_error"]


class Alerts(_Strict):
    channels: list[AlertChannel] = Field(default_factory=list)
    on: list[AlertEvent] = Field(default_factory=_default_alert_events)


class Behavior(_Strict):
    """One behavior file."""

    name: str = Field(
        description="Lowercase slug (a-z, 0-9, -); defaults to the file name without .yaml."
    )
    description: str = ""
    schedule: str = Field(
        description="A 5-field cron expression ('0 6 * * 1') or an interval ('15m', '6h', '1d')."
    )
    timezone: str = Field(default="UTC", description="IANA time zone for cron schedules.")
    preset: str | dict[Tier, str] = Field(
        description="OpenRouter preset slug, or a mapping tier → slug (a stricter preset at C)."
    )
    api_key: SecretRef = Field(
        description="This behavior's own OpenRouter key: env:NAME or file:PATH."
    )
    key_name: str | None = Field(
        default=None, description="The key's name as OpenRouter shows it (attributes broadcast)."
    )
    prompt: str | None = None
    prompt_file: str | None = Field(default=None, description="Path relative to the behavior file.")
    inputs: dict[str, str | int | float | bool] = Field(default_factory=dict)
    timeout: Literal["fast", "reasoning", "multi_agent"] | float = Field(
        default="fast", description="fast 30 s, reasoning 120 s, multi_agent 600 s, or seconds."
    )
    max_output_tokens: int = Field(default=1024, gt=0, le=1_000_000)
    budget: Budget | None = None
    start_tier: Literal["A", "B"] = "A"
    max_tier: Tier = Tier.C
    promotion: Literal["auto", "confirm"] = "auto"
    checks: Checks = Field(default_factory=Checks)
    action: Action = Field(default_factory=lambda: Action(type="log"))
    policy: PolicyOverrides = Field(default_factory=PolicyOverrides)
    alerts: Alerts | None = None
    fallback: Fallback | None = None
    primary_model: str | None = Field(
        default=None,
        description="The preset's primary model (e.g. anthropic/claude-haiku-4.5): a run "
        "answered by another model (the preset's fallback list) says so, and budget "
        "reservations use its catalog price.",
    )
    require_primary_model: bool = Field(
        default=False,
        description="A run answered by a model other than primary_model is not acted on.",
    )
    approval_ttl: str = Field(default="24h", description="How long a tier-B approval waits.")
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str) -> str:
        if not SLUG_RE.match(value):
            raise ValueError(
                "must be a lowercase slug: letters a-z, digits and '-', starting with a letter "
                "or digit, at most 63 characters"
            )
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key_is_reference(cls, value: str) -> str:
        return _check_reference(value, "api_key")

    @field_validator("preset")
    @classmethod
    def _preset_slugs(cls, value: str | dict[Tier, str]) -> str | dict[Tier, str]:
        slugs = [value] if isinstance(value, str) else list(value.values())
        for slug in slugs:
            bare = slug.removeprefix("@preset/")
            if not PRESET_SLUG_RE.match(bare):
                raise ValueError(
                    f"{slug!r} is not a valid preset slug (lowercase letters, digits, '-', '_' "
                    "and '.'; e.g. seo-audit)"
                )
        if isinstance(value, dict):
            if Tier.A not in value:
                raise ValueError("a per-tier preset mapping needs at least tier A")
            return {tier: slug.removeprefix("@preset/") for tier, slug in value.items()}
        return value.removeprefix("@preset/")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name like Europe/Paris)"
            ) from None
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout_form(cls, value: object) -> object:
        """One message listing every accepted form, whatever was written."""
        if isinstance(value, str) and value in TIMEOUT_CLASSES:
            return value
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                seconds = float(value)
        if seconds is not None and 0 < seconds <= 3600:
            return value  # the field's own validation turns it into a number
        raise ValueError(
            f"{value!r} is not a timeout: write fast (30 s), reasoning (120 s), multi_agent "
            "(600 s), or a number of seconds between 0 and 3600 (e.g. 45)"
        )

    @field_validator("approval_ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        if parse_interval(value) is None:
            raise ValueError("must be a duration like 30m, 24h or 7d")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_fires(cls, value: str) -> str:
        compile_schedule(value)  # a ScheduleError is a ValueError: pydantic reports it
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Behavior:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("give exactly one of prompt or prompt_file")
        if self.require_primary_model and not self.primary_model:
            raise ValueError("require_primary_model needs primary_model (the preset's model)")
        if Tier(self.start_tier).rank > self.max_tier.rank:
            raise ValueError(f"start_tier {self.start_tier} is above max_tier {self.max_tier}")
        return self

    # -- derived values -------------------------------------------------------------------
    def preset_for(self, tier: Tier) -> str:
        """The preset slug for ``tier``: the mapping's entry for it or the nearest lower one."""
        if isinstance(self.preset, str):
            return self.preset
        for candidate in (Tier.C, Tier.B, Tier.A):
            if candidate.rank <= tier.rank and candidate in self.preset:
                return self.preset[candidate]
        return self.preset[Tier.A]

    @property
    def timeout_seconds(self) -> float:
        if isinstance(self.timeout, str):
            return TIMEOUT_CLASSES[self.timeout]
        return float(self.timeout)

    @property
    def interval(self) -> timedelta | None:
        return parse_interval(self.schedule)

    @property
    def approval_ttl_delta(self) -> timedelta:
        ttl = parse_interval(self.approval_ttl)
        assert ttl is not None  # noqa: S101 — validated above
        return ttl

    @property
    def slots(self) -> Schedule:
        """The schedule as the one engine reads it (``ledger.schedule``)."""
        return compile_schedule(self.schedule, self.timezone)

    def next_fire_after(self, after: datetime) -> datetime:
        """The first slot strictly after ``after`` (aware UTC in, aware UTC out)."""
        return self.slots.next_after(after)


def behavior_json_schema() -> dict[str, Any]:
    schema = Behavior.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Promotion Ledger behavior file"
    # ``name`` defaults to the file stem, so editors must not demand it.
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    return schema
