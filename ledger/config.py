"""Settings: ``LEDGER_*`` environment variables over an optional ``ledger.toml``.

Built by the CLI or ``create_app`` — never at import time. Values that are secrets are held as
references (``env:NAME`` / ``file:PATH``) and resolved only where they are used.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from ledger.errors import ConfigError
from ledger.toml_positions import Position, toml_positions

DEFAULT_CONFIG_FILE = Path("ledger.toml")
# Processed webhook events are the replay and retry guard; keep them at least this long.
MIN_WEBHOOK_EVENT_DAYS = 7


class WebhookSource(BaseModel):
    """One signed webhook source (``[webhook_sources.NAME]`` in ledger.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["generic", "github", "stripe"] = "generic"
    secrets: SecretStr = Field(
        description="Signing secret references or values, comma-separated (rotation)."
    )
    behavior: str | None = Field(
        default=None, description="Bind events to this behavior so they can feed its gates."
    )
    fail_events: list[str] = Field(
        default_factory=list,
        description="Event names (or event.action) that count as an attributable fail.",
    )
    warn_events: list[str] = Field(default_factory=list)


AlertEventName = Literal[
    "demotion",
    "pause",
    "auth_error",
    "promotion",
    "promotion_proposed",
    "recovery",
    "provider_error",
    "spend",
    "dead_letter",
]


class AlertChannelConfig(BaseModel):
    """One alert channel (``[alert_channels.NAME]`` in ledger.toml): ``slack`` (a
    Slack-compatible incoming webhook), ``webhook`` (signed JSON), ``email`` (SMTP), ``notion``
    (a comment on the behavior's Notion row) or ``log``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["slack", "webhook", "email", "notion", "log"]
    url: SecretStr | None = Field(
        default=None, description="slack/webhook: the URL — a secret reference (env:NAME)."
    )
    secret: SecretStr | None = Field(
        default=None, description="webhook: the HMAC signing secret (a reference)."
    )
    events: list[AlertEventName] | None = Field(
        default=None,
        description="The events this channel hears; default: the behavior's alerts.on "
        "(demotion, pause, auth_error).",
    )
    mention: list[str] = Field(
        default_factory=list, description="notion: user ids to @mention in the comment."
    )
    host: str | None = Field(default=None, description="email: the SMTP server.")
    port: int | None = Field(default=None, ge=1, le=65535, description="email: default 587.")
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="email: STARTTLS (587), implicit TLS (465) or none."
    )
    username: str | None = Field(default=None, description="email: SMTP login.")
    password: SecretStr | None = Field(
        default=None, description="email: SMTP password (a reference)."
    )
    sender: str | None = Field(default=None, description="email: the From address.")
    to: list[str] = Field(default_factory=list, description="email: the recipients.")
    timeout: float = Field(default=10.0, gt=0, le=120, description="email: seconds per try.")


class Settings(BaseSettings):
    """The daemon's effective configuration: field ``x`` is ``LEDGER_X`` or ``x =`` in the
    TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", extra="forbid", validate_default=True, frozen=True
    )

    database_url: str = "sqlite:///./ledger.db"
    behaviors_dir: Path = Path("./behaviors")
    host: str = "127.0.0.1"
    port: int = Field(default=8600, ge=1, le=65535)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    openrouter_base_url: str = "https://openrouter.ai"
    openrouter_management_key: SecretStr | None = None
    broadcast_tokens: SecretStr | None = None
    notion_token: SecretStr | None = None
    notion_base_url: str = "https://api.notion.com"
    notion_event_log_page: str | None = Field(
        default=None,
        description="Notion page id to append one line to per verified signed-webhook event "
        "and per tier change (the event log); none: no event log.",
    )
    notion_poll_seconds: float = Field(
        default=15.0,
        ge=1,
        description="How often the daemon reads the Notion Approvals database for decisions.",
    )
    notion_requests_per_second: float = Field(
        default=3.0,
        gt=0,
        le=3.0,
        description="Average Notion requests per second (one limiter for the whole process).",
    )
    auth: Literal["on", "off"] = "on"
    rescan_seconds: float = Field(default=60.0, gt=0)
    runner_max_calls: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Model calls in flight at once (one connection each); the open-files "
        "limit is raised to fit them, or fewer run with a warning.",
    )
    runner_lead_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long before its slot a run is claimed, budgeted and connected; its "
        "request leaves at the slot (at most a quarter of the behavior's interval; 0: all of "
        "it at the slot).",
    )
    runner_lease_seconds: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="A run in flight holds a lease renewed every third of this; a run whose "
        "lease expired (its daemon crashed or was killed) is closed as interrupted and its "
        "budget reservation released, by any replica.",
    )
    watch: bool = True
    allow_private_urls: bool = False
    policy: dict[str, Any] = Field(default_factory=dict)
    broadcast_header: str = Field(
        default="authorization",
        description="Header carrying the broadcast secret: Authorization (Bearer) or a name.",
    )
    ingest_max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    ingest_max_inflated_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    ingest_max_backlog_spans: int = Field(
        default=15_000,
        ge=0,
        description="Broadcast spans acknowledged but not yet applied (spend, gates) beyond "
        "which deliveries are refused with 429 + Retry-After, which OpenRouter retries; 0: "
        "no bound.",
    )
    ingest_processor: Literal["process", "thread"] = Field(
        default="process",
        description="Where the broadcast processor (spend, gates from broadcast) runs: in a "
        "child process of its own, on another core beside the receiver "
        "(restarted if it dies), or in a thread of the daemon's process.",
    )
    webhook_sources: dict[str, WebhookSource] = Field(default_factory=dict)
    alert_channels: dict[str, AlertChannelConfig] = Field(
        default_factory=dict,
        description="Where alerts go when a behavior's file names no channels of its own.",
    )
    alert_dedup_minutes: float = Field(
        default=15.0,
        gt=0,
        le=24 * 60,
        description="Repeats of one behavior's event within this many minutes fold into one "
        "alert with a count (the first is sent at once, the rest when the window ends).",
    )
    alert_provider_error_runs: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="This many runs in a row failing with provider errors is persistent: "
        "a provider_error alert (for channels that take it).",
    )
    public_url: str | None = Field(
        default=None,
        description="The dashboard's public base URL (https://ledger.example.com): alerts link "
        "to the behavior's page there.",
    )
    api_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="API/dashboard tokens by name (the name is recorded as the actor): "
        "secret references or values.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs the dashboard's session cookies (a reference such as env:NAME; at "
        "least 32 characters). Unset: a random one per start, so logins end on restart.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are honoured: "
        "comma-separated addresses or networks (10.0.0.0/8), or * for any peer. Empty (the "
        "default): none, the headers are ignored and the peer's address and scheme are used.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a token (a scraper on a trusted network); by "
        "default it needs a token with the viewer role or higher.",
    )
    outbox_stall_seconds: float = Field(
        default=600.0,
        gt=0,
        description="/readyz answers 503 when a pending outbox row has been due this long "
        "(no dispatcher is making progress).",
    )
    retention_spans_days: int = Field(
        default=30,
        ge=0,
        description="Delete broadcast spans (and deliveries set aside) older than this many "
        "days; 0 keeps them forever.",
    )
    retention_outbox_days: int = Field(
        default=7,
        ge=0,
        description="Delete outbox rows delivered, or discarded by an operator, more than this "
        "many days ago (pending, in-flight and dead rows are kept); 0 keeps them forever.",
    )
    retention_webhook_events_days: int = Field(
        default=30,
        ge=0,
        description="Delete processed webhook events older than this many days, for sources "
        "whose signature is timestamped (generic, stripe; GitHub's events are kept: they are "
        "its only replay guard); at least 7 (Stripe retries an event for 3 days); 0 keeps them "
        "forever.",
    )
    retention_interval_seconds: float = Field(
        default=3600.0,
        ge=60,
        description="How often the daemon prunes (and once at start-up).",
    )
    retention_batch_size: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Rows deleted per transaction while pruning.",
    )

    @field_validator("policy")
    @classmethod
    def _policy_thresholds(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The policy's own check (the one a run would fail on later), each problem named.
        if not value:
            return value  # nothing to check: ``ledger status`` need not import the policy
        from ledger.policy import threshold_problems

        problems = threshold_problems(value)
        if problems:
            raise PydanticCustomError(
                "policy_thresholds",
                "{summary}",
                {
                    "summary": "; ".join(f"{p.name}: {p.message}" for p in problems),
                    "problems": [[p.name, p.message] for p in problems],
                },
            )
        return value

    @field_validator("retention_webhook_events_days")
    @classmethod
    def _replay_window(cls, value: int) -> int:
        if 0 < value < MIN_WEBHOOK_EVENT_DAYS:
            raise ValueError(
                f"must be 0 (keep forever) or at least {MIN_WEBHOOK_EVENT_DAYS} days: a webhook "
                "event is the guard against a retried or replayed request (Stripe retries for "
                "3 days)"
            )
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips(cls, value: str) -> str:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        for entry in entries:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, "
                    "or * for any peer)"
                ) from None
        return ",".join(entries)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://ledger.example.com")
        return value.rstrip("/")

    @field_validator("openrouter_base_url", "notion_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def masked(self) -> dict[str, Any]:
        """The configuration as printable data, every secret shown only as its reference kind."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = mask_secret_setting(value.get_secret_value())
            elif name == "alert_channels":
                out[name] = {
                    k: {
                        **v.model_dump(exclude={"url", "secret", "password"}, exclude_none=True),
                        **{
                            field: mask_secret_setting(secret.get_secret_value())
                            for field in ("url", "secret", "password")
                            if (secret := getattr(v, field)) is not None
                        },
                    }
                    for k, v in value.items()
                }
            elif name == "api_tokens":
                out[name] = {k: mask_secret_setting(v.get_secret_value()) for k, v in value.items()}
            elif name == "webhook_sources":
                out[name] = {
                    src: {
                        **cfg.model_dump(exclude={"secrets"}),
                        "secrets": mask_secret_setting(cfg.secrets.get_secret_value()),
                    }
                    for src, cfg in value.items()
                }
            elif name == "database_url":
                out[name] = mask_url_password(value)
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


def mask_secret_setting(raw: str) -> str:
    """Show references (``env:NAME``) as they are, literal values as ``********``."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    shown = [p if p.startswith(("env:", "file:")) else "********" for p in parts]
    return ",".join(shown)


def mask_url_password(url: str) -> str:
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:********@{host}"
    return url


# ``LEDGER_*`` names the project uses that are not settings: no "unknown variable" warning.
NOT_SETTINGS = frozenset(
    {
        "LEDGER_CONFIG",  # the ledger.toml to read
        "LEDGER_DAEMON_URL",  # ledger run --via-daemon
        "LEDGER_API_TOKEN",  # ledger run --via-daemon
        "LEDGER_OPS_TOKEN",  # the starter ledger.toml's api_tokens reference
        "LEDGER_BROADCAST_TOKEN",  # the starter ledger.toml's broadcast_tokens reference
        "LEDGER_LONG_TESTS",  # the test suite
    }
)
NOT_SETTINGS_PREFIXES = ("LEDGER_TEST_", "LEDGER_BENCH_")


def load_settings(
    config_path: Path | None = None, *, flags: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build Settings from ledger.toml (explicit path, ``LEDGER_CONFIG``, or ./ledger.toml if
    present), the environment and ``overrides`` (which win over both). ``flags`` names the
    command-line option each override came from (``{"port": "--port"}``), for messages.
    Raises ConfigError: one line per problem, each saying where it is (``ledger.toml:LINE:COL``,
    the variable, or the option). Logs a warning for a ``LEDGER_*`` variable that is no
    setting."""
    path = config_path
    if path is None and os.environ.get("LEDGER_CONFIG"):
        path = Path(os.environ["LEDGER_CONFIG"])
    explicit = path is not None
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    file_values: dict[str, Any] = {}
    text = ""
    table: tuple[str, ...] = ()
    if path is not None:
        if not path.is_file():
            if explicit:
                raise ConfigError(f"{path}: configuration file not found")
        else:
            try:
                text = path.read_text(encoding="utf-8")
                file_values = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read: {exc}") from None
            if isinstance(file_values.get("ledger"), dict):
                file_values, table = file_values["ledger"], ("ledger",)
    environ = _ledger_environ()
    _check_env_json(environ)
    # The environment wins over the file (an operator overrides one value without editing it);
    # explicit overrides win over both.
    file_values = {k: v for k, v in file_values.items() if _env_name(k, environ) is None}
    try:
        settings = Settings(**{**file_values, **overrides})
    except ValidationError as exc:
        positions = toml_positions(text) if text else {}  # only to say where a problem is
        origin = _Origin(path, positions, table, environ, overrides, flags or {})
        raise ConfigError("\n".join(origin.problems(exc))) from None
    except SettingsError as exc:  # a source could not read a variable (JSON is checked above)
        raise ConfigError(f"environment: {exc}") from None
    _warn_unknown_variables(environ, settings)
    return settings


def _ledger_environ() -> dict[str, str]:
    """The ``LEDGER_*`` variables, by their name as set (pydantic-settings reads them in any
    case)."""
    return {k: v for k, v in os.environ.items() if k.upper().startswith("LEDGER_")}


def _env_name(field: str, environ: Mapping[str, str]) -> str | None:
    """The variable that sets ``field`` (``LEDGER_PORT``, in whatever case it is set), or None."""
    wanted = f"LEDGER_{field.upper()}"
    return next((k for k in environ if k.upper() == wanted), None)


def _structured_fields() -> list[str]:
    """Settings given as JSON in the environment (tables and lists in ledger.toml)."""
    return [
        name
        for name, info in Settings.model_fields.items()
        if typing.get_origin(info.annotation) in (dict, list)
    ]


def _check_env_json(environ: Mapping[str, str]) -> None:
    for field in _structured_fields():
        var = _env_name(field, environ)
        if var is None:
            continue
        try:
            json.loads(environ[var])
        except json.JSONDecodeError as exc:
            example = '{"name": ...}' if field != "policy" else '{"warn_limit": 3}'
            raise ConfigError(
                f"{var}: not valid JSON ({exc.msg} at character {exc.pos + 1}); write it as a "
                f"JSON object, e.g. {var}='{example}'"
            ) from None


def _warn_unknown_variables(environ: Mapping[str, str], settings: Settings) -> None:
    """One warning line per ``LEDGER_*`` variable that is no setting (a misspelling is
    otherwise silently ignored) — except the project's own and those a secret reference of
    the configuration names (``env:LEDGER_OPS_TOKEN``)."""
    known = {f"LEDGER_{name.upper()}" for name in Settings.model_fields}
    unknown = [
        k
        for k in environ
        if k.upper() not in known
        and k.upper() not in NOT_SETTINGS
        and not k.upper().startswith(NOT_SETTINGS_PREFIXES)
    ]
    if not unknown:
        return
    referenced = json.dumps(settings.masked()) + "".join(environ.values())
    unknown = [k for k in unknown if f"env:{k}" not in referenced]
    unknown = [k for k in unknown if not _named_by_behavior_file(k, settings.behaviors_dir)]
    if not unknown:
        return
    import structlog

    log = structlog.get_logger("ledger.config")
    for name in sorted(unknown):
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning(f"{name} is not a setting; ignored{hint}")


def _named_by_behavior_file(variable: str, folder: Path) -> bool:
    """Whether a behavior file references ``variable`` (``api_key: env:LEDGER_SEO_KEY``): read
    only when an unknown variable is set."""
    needle = f"env:{variable}".encode()
    try:
        files = [p for p in folder.iterdir() if p.suffix in (".yaml", ".yml")]
    except OSError:
        return False
    for path in files:
        try:
            if needle in path.read_bytes():
                return True
        except OSError:
            continue
    return False


_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")
_SECRET_PARTS = frozenset({"url", "secret", "secrets", "password", "database_url", "api_tokens"})
_NESTED_MODELS: dict[str, type[BaseModel]] = {
    "alert_channels": AlertChannelConfig,
    "webhook_sources": WebhookSource,
}


class _Origin:
    """Says where a setting's value came from (the file, a variable, an option) and renders
    pydantic's errors in the operator's words."""

    def __init__(
        self,
        path: Path | None,
        positions: Mapping[tuple[str | int, ...], Position],
        table: tuple[str, ...],
        environ: Mapping[str, str],
        overrides: Mapping[str, Any],
        flags: Mapping[str, str],
    ) -> None:
        self.path = path
        self.positions = positions
        self.table = table
        self.environ = environ
        self.overrides = overrides
        self.flags = flags

    def problems(self, exc: ValidationError) -> list[str]:
        """One line per problem; those in the file in the file's order, then the others."""
        lines: dict[str, tuple[int, int]] = {}
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "policy_thresholds":
                for name, message in err.get("ctx", {}).get("problems", []):
                    key = message.startswith("unknown")
                    lines.setdefault(*self._line((*loc, name), message, key=key))
                continue
            message = _plain(err, loc, self._from_env(loc))
            lines.setdefault(*self._line(loc, message, key=_is_key(err)))
        return sorted(lines, key=lambda line: lines[line])

    def _from_env(self, loc: tuple[Any, ...]) -> bool:
        top = str(loc[0]) if loc else ""
        return top not in self.overrides and _env_name(top, self.environ) is not None

    def _line(
        self, loc: tuple[Any, ...], message: str, *, key: bool
    ) -> tuple[str, tuple[int, int]]:
        """The rendered problem and where it sorts (file problems by line and column)."""
        last = (1 << 30, 0)
        top = str(loc[0]) if loc else ""
        below = _dotted(loc[1:])
        inner = f"{below}: " if below else ""
        if top in self.flags and top in self.overrides:
            return f"{self.flags[top]}: {inner}{message}", last
        if top not in self.overrides and (var := _env_name(top, self.environ)) is not None:
            return f"{var}: {inner}{message}", last
        if self.path is not None:
            line, col = self._file_position(loc, key=key)
            where = f"{self.path}:{line}:{col}" if line else str(self.path)
            return f"{where}: {_dotted(loc) or 'file'}: {message}", (line, col)
        return f"settings: {_dotted(loc)}: {message}", last

    def _file_position(self, loc: tuple[Any, ...], *, key: bool) -> tuple[int, int]:
        """Line and column of the key (``key``) or value at ``loc``, or of the nearest
        enclosing key written in the file; (0, 0) when none is."""
        full = (*self.table, *loc)
        for n in range(len(full), 0, -1):
            found = self.positions.get(full[:n])
            if found is not None:
                if key or n < len(full):
                    return found.key_line, found.key_col
                return found.value_line, found.value_col
        return 0, 0


def _is_key(err: Any) -> bool:
    return bool(err["type"] in ("extra_forbidden", "missing"))


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(err: Any, loc: tuple[Any, ...], from_env: bool) -> str:
    """A pydantic error in the operator's words, with the value given (never a secret's)."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(loc[-1])
        if len(loc) == 1:
            candidates: list[str] = list(Settings.model_fields)
            what = "unknown setting"
        else:
            model = _NESTED_MODELS.get(str(loc[0]))
            candidates = list(model.model_fields) if model is not None and len(loc) == 3 else []
            what = "unknown field"
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        return what + (f" (did you mean {close[0]}?)" if close else "")
    if kind == "missing":
        return "required, not given"
    words = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be text (in quotes)",
        "dict_type": "must be a JSON object" if from_env else "must be a table",
        "list_type": "must be a list",
        "model_type": "must be a JSON object" if from_env else "must be a table",
        "model_attributes_type": "must be a JSON object" if from_env else "must be a table",
        "path_type": "must be a path",
    }
    if kind in words:
        message = words[kind]
    elif kind == "greater_than_equal":
        message = f"must be at least {_number(ctx.get('ge'))}"
    elif kind == "greater_than":
        message = f"must be more than {_number(ctx.get('gt'))}"
    elif kind == "less_than_equal":
        message = f"must be at most {_number(ctx.get('le'))}"
    elif kind == "less_than":
        message = f"must be less than {_number(ctx.get('lt'))}"
    elif kind == "literal_error":
        message = f"must be one of {ctx.get('expected')}"
    else:
        return str(err["msg"]).removeprefix("Value error, ")
    secret = any(str(part) in _SECRET_PARTS for part in loc) or _is_secret_field(str(loc[0]))
    if secret:
        return message
    value = err.get("input")
    if from_env and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return f"{message}, got {value.strip()}"  # a variable's text is a number as written
    return f"{message}, got {_shown(value)}"


def _is_secret_field(name: str) -> bool:
    info = Settings.model_fields.get(name)
    return info is not None and "SecretStr" in str(info.annotation)


def _number(value: Any) -> str:
    """A bound as an operator would write it: 0, not 0.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
