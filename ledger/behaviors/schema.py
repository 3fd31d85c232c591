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
    ValidationInfo,
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


class CostAnomaly(_Strict):
    """The ``cost_anomaly`` gate's thresholds (see docs/behaviors.md, checks)."""

    enabled: bool = Field(default=True, description="false: costs are never judged.")
    factor: float = Field(
        default=5.0,
        gt=1,
        le=1000,
        description="A run costing more than factor times the median of recent runs is a warn.",
    )
    window_runs: int = Field(
        default=20, ge=1, le=100, description="The median is over this many recent runs."
    )
    min_runs: int = Field(
        default=5, ge=1, le=100, description="No judgement until this many runs had a cost."
    )
    min_usd: float = Field(
        default=0.0, ge=0, description="A run costing less than this is never an anomaly."
    )

    @field_validator("min_runs")
    @classmethod
    def _within_window(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("window_runs")
        if window is not None and value > window:
            raise ValueError(f"must not exceed window_runs ({window}), got {value}")
        return value


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
    cost_anomaly: CostAnomaly = Field(
        default_factory=CostAnomaly,
        description="A run costing far more than the behavior's recent runs is a warn.",
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


AlertEvent = Literal[
    "demotion",
    "promotion",
    "promotion_proposed",
    "recovery",
    "pause",
    "provider_error",
    "auth_error",
    "spend",
    "dead_letter",
]


class AlertChannel(_Strict):
    type: Literal["slack", "webhook", "notion", "log"]
    url: str | None = Field(default=None, description="slack/webhook: a secret reference or URL.")
    secret: SecretRef | None = None
    events: list[AlertEvent] | None = Field(
        default=None, description="The events this channel hears (default: alerts.on)."
    )
    mention: list[str] = Field(
        default_factory=list, description="notion: user ids to @mention in the comment."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or is_reference(value):
            return value
        _refuse_credential_url(value)
        return value


def _default_alert_events() -> list[AlertEvent]:
    return ["demotion", "pause", "auth_error"]


class Alerts(_Strict):
    channels: list[AlertChannel] = Field(default_factory=list)
    on: list[AlertEvent] = Field(default_factory=_default_alert_events)


MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}/[A-Za-z0-9][A-Za-z0-9._:~-]{0,199}$")
KINDS = ("single", "roundtable", "broad_canvas")


def _model_ref(value: str) -> str:
    """A model slot: ``@preset/<slug>`` or an OpenRouter model id (``vendor/model``)."""
    if value.startswith("@preset/"):
        if not PRESET_SLUG_RE.match(value.removeprefix("@preset/")):
            raise ValueError(f"{value!r} is not a valid preset reference (@preset/<slug>)")
        return value
    if not MODEL_ID_RE.match(value):
        raise ValueError(
            f"{value!r} is neither @preset/<slug> nor a model id like anthropic/claude-haiku-4.5"
        )
    return value


def vendor_of(model: str) -> str:
    """The vendor prefix of a model id (``anthropic`` of ``anthropic/claude-haiku-4.5``); a
    preset reference is its own vendor (its model is not known here)."""
    return model if model.startswith("@preset/") else model.split("/", 1)[0]


ModelRef = Annotated[
    str, Field(description="A preset (@preset/<slug>) or an OpenRouter model id (vendor/model).")
]
TimeoutSpec = Literal["fast", "reasoning", "multi_agent"] | float


class Roundtable(_Strict):
    """A structured three-round decision: the same question to every panel model, then each
    sees the others' answers, then one synthesis model returns consensus, disagreements,
    a confidence (high / medium / low) and next steps as JSON."""

    panel: list[ModelRef] = Field(
        description="At least 2 panel models (3 is the default shape), ideally of different "
        "vendors; each a preset or a model id."
    )
    synthesis: ModelRef | None = Field(
        default=None,
        description="The model that writes the synthesis (default: the first panel model).",
    )
    roles: list[str] | None = Field(
        default=None,
        description="Optional: one role per panel model (e.g. for, against, judge) instead of "
        "the same question to each.",
    )

    @field_validator("panel")
    @classmethod
    def _panel(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError(
                f"a roundtable needs at least 2 panel models (this one has {len(value)}); "
                "3 of different vendors is the usual shape"
            )
        if len(set(value)) != len(value):
            raise ValueError("a panel model is listed twice")
        return [_model_ref(v) for v in value]

    @field_validator("synthesis")
    @classmethod
    def _synthesis(cls, value: str | None) -> str | None:
        return None if value is None else _model_ref(value)

    @model_validator(mode="after")
    def _roles_match(self) -> Roundtable:
        if self.roles is not None and len(self.roles) != len(self.panel):
            raise ValueError(
                f"roles has {len(self.roles)} entries but panel has {len(self.panel)} models: "
                "give one role per panel model"
            )
        return self

    @property
    def synthesis_model(self) -> str:
        return self.synthesis or self.panel[0]


class CatalogFilter(_Strict):
    """Which models of OpenRouter's catalog a canvas asks, read fresh at every run."""

    vendors: list[str] = Field(
        default_factory=list, description="Vendor prefixes to keep (anthropic, openai…)."
    )
    match: str | None = Field(default=None, description="A regex the model id must match.")
    exclude: list[ModelRef] = Field(default_factory=list, description="Model ids left out.")
    reasoning: bool | None = Field(
        default=None, description="true: only reasoning models; false: none of them."
    )
    min_context_length: int | None = Field(default=None, gt=0)
    max_prompt_price_per_mtok: float | None = Field(
        default=None, ge=0, description="Cap on the prompt price, US dollars per million tokens."
    )
    limit: int = Field(default=50, ge=1, le=1000, description="At most this many models.")

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


TimeoutClass = Literal["fast", "reasoning", "multi_agent"]
CANVAS_TIMEOUTS: dict[TimeoutClass, float] = {
    "fast": 60.0,
    "reasoning": 300.0,
    "multi_agent": 900.0,
}


def _default_canvas_timeouts() -> dict[TimeoutClass, float]:
    return dict(CANVAS_TIMEOUTS)


class Canvas(_Strict):
    """One question to many models, each answer recorded the moment it returns."""

    models: list[ModelRef] = Field(default_factory=list, description="The models to ask.")
    catalog: CatalogFilter | None = Field(
        default=None,
        description="Or (and) a filter over GET /api/v1/models, fetched fresh at run time.",
    )
    max_concurrency: int = Field(default=16, ge=1, le=1024, description="Calls in flight.")
    timeouts: dict[TimeoutClass, float] = Field(
        default_factory=_default_canvas_timeouts,
        description="Seconds per model class; the class comes from the catalog's metadata "
        "(reasoning support; deep-research / agent models are multi_agent).",
    )
    timeout_overrides: dict[str, TimeoutSpec] = Field(
        default_factory=dict, description="Per model id: a class name or seconds."
    )
    skip_after_failures: int = Field(
        default=3,
        ge=0,
        description="Skip a model after this many runs in a row failed with a persistent "
        "error (unknown/deprecated model, 403) until re-enabled; 0 never skips.",
    )

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a model is listed twice")
        return [_model_ref(v) for v in value]

    @field_validator("timeouts")
    @classmethod
    def _positive(cls, value: dict[TimeoutClass, float]) -> dict[TimeoutClass, float]:
        for name, seconds in value.items():
            if not 0 < seconds <= 3600:
                raise ValueError(f"{name}: seconds must be between 0 and 3600")
        return {**CANVAS_TIMEOUTS, **value}

    @model_validator(mode="after")
    def _some_models(self) -> Canvas:
        if not self.models and self.catalog is None:
            raise ValueError(
                "a broad canvas needs models: list them under models, or give a catalog filter"
            )
        return self


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
    kind: Literal["single", "roundtable", "broad_canvas"] = Field(
        default="single",
        description="single: one call per run; roundtable: a three-round panel decision; "
        "broad_canvas: one question to many models.",
    )
    preset: str | dict[Tier, str] | None = Field(
        default=None,
        description="OpenRouter preset slug, or a mapping tier → slug (a stricter preset at C). "
        "Required for kind single.",
    )
    roundtable: Roundtable | None = Field(default=None, description="kind roundtable: the panel.")
    canvas: Canvas | None = Field(default=None, description="kind broad_canvas: the models.")
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
    def _preset_slugs(cls, value: str | dict[Tier, str] | None) -> str | dict[Tier, str] | None:
        if value is None:
            return None
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
        if self.kind == "single" and self.preset is None:
            raise ValueError("preset is required (the OpenRouter preset this behavior calls)")
        if self.kind == "roundtable" and self.roundtable is None:
            raise ValueError("kind roundtable needs a roundtable: section with its panel")
        if self.kind == "broad_canvas" and self.canvas is None:
            raise ValueError("kind broad_canvas needs a canvas: section with its models")
        if self.roundtable is not None and self.kind != "roundtable":
            raise ValueError(f"roundtable: is only read for kind roundtable (kind is {self.kind})")
        if self.canvas is not None and self.kind != "broad_canvas":
            raise ValueError(f"canvas: is only read for kind broad_canvas (kind is {self.kind})")
        if self.kind != "single" and self.fallback is not None:
            raise ValueError("fallback is only supported for kind single")
        return self

    def warnings(self) -> list[tuple[str, str]]:
        """(field, message) for what is valid but probably not meant: two roundtable panel
        models of the same vendor (a panel learns most from different model families)."""
        out: list[tuple[str, str]] = []
        if self.roundtable is not None:
            seen: dict[str, str] = {}
            for model in self.roundtable.panel:
                vendor = vendor_of(model)
                if vendor in seen and not model.startswith("@preset/"):
                    out.append(
                        (
                            "roundtable.panel",
                            f"{seen[vendor]} and {model} share the vendor {vendor!r}: a panel "
                            "of different model families disagrees more usefully",
                        )
                    )
                seen.setdefault(vendor, model)
        return out

    # -- derived values -------------------------------------------------------------------
    def preset_for(self, tier: Tier) -> str:
        """The preset slug for ``tier``: the mapping's entry for it or the nearest lower one."""
        if self.preset is None:
            return ""
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
    # What each kind needs: single (the default) a preset, the others their own section.
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": "single"}}},
            "then": {"required": ["preset"]},
        },
        {
            "if": {"properties": {"kind": {"const": "roundtable"}}, "required": ["kind"]},
            "then": {"required": ["roundtable"]},
        },
        {
            "if": {"properties": {"kind": {"const": "broad_canvas"}}, "required": ["kind"]},
            "then": {"required": ["canvas"]},
        },
    ]
    return schema
