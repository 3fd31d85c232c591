"""What the OpenRouter simulator starts from: presets, models, keys, faults and the broadcast
destination, built in code or loaded from a presets YAML file (``presets.example.yaml``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from ruamel.yaml import YAML

JSON = dict[str, Any]
LimitReset = Literal["daily", "weekly", "monthly"]
FaultKind = Literal[
    "rate_limit",
    "payment_required",
    "key_limit",
    "workspace_budget",
    "prompt_injection",
    "content_filter",
    "server_error",
    "delay",
    "sensitive_output",
    "error_in_200",
    "wrong_model",
    "model_not_found",
    "model_forbidden",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
LIMIT_RESETS: frozenset[str] = frozenset(get_args(LimitReset))


class SimConfigError(ValueError):
    """The simulator's configuration (a presets file or a fault) is invalid; says where."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model callable by plain id: its price per token, the provider that serves it, what
    the catalog lists about it (context length, reasoning support) and how long it takes to
    answer: ``latency`` (low, high) seconds, drawn uniformly per call (times the config's
    ``latency_scale``); None answers at once."""

    input_price: float = 0.000001
    output_price: float = 0.000002
    provider: str | None = None
    context_length: int = 128_000
    reasoning: bool = False
    latency: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Preset:
    """An OpenRouter preset: the model it calls, fallbacks, price per token, defaults."""

    model: str
    fallback_models: tuple[str, ...] = ()
    input_price: float = 0.000001
    output_price: float = 0.000002
    provider: str | None = None
    max_completion_tokens: int | None = None
    system_prompt: str | None = None
    output: str | None = None  # a fixed answer instead of the generated one


@dataclass(frozen=True, slots=True)
class SimKey:
    """An inference key the simulator knows. ``balance`` is the credit left to it (None =
    plenty); ``output`` forces a fixed answer for every call made with it."""

    key: str
    name: str
    limit: float | None = None
    limit_reset: LimitReset | None = None
    balance: float | None = None
    output: str | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Fault:
    """A programmed misbehaviour. It applies to calls whose key name and preset match (None
    matches any), for the first ``times`` matching calls (None = every call).

    kinds: ``rate_limit`` (429 + Retry-After), ``payment_required`` (402 although credit is
    left), ``key_limit`` (403 key limit), ``workspace_budget`` (403), ``prompt_injection`` and
    ``content_filter`` (403 guardrail), ``server_error`` (``status`` 500/502/503/524/529),
    ``delay`` (``seconds`` before answering; combines with the others), ``sensitive_output``
    (the answer is ``text``), ``error_in_200`` (a 200 whose choice has finish_reason "error"),
    ``wrong_model`` (a fallback model answers: ``model`` or the preset's first fallback),
    ``model_not_found`` (404: the model id is unknown or deprecated), ``model_forbidden``
    (403: the model is not available to this account or region).

    ``for_model`` narrows any fault to calls of one model id (the model asked, or the preset's).
    """

    kind: FaultKind
    key_name: str | None = None
    preset: str | None = None
    times: int | None = None
    status: int | None = None
    retry_after: int | None = None
    seconds: float = 0.0
    text: str | None = None
    label: str = "EMAIL"
    patterns: tuple[str, ...] = ("ignore previous instructions",)
    model: str | None = None
    error_type: str | None = None
    limit_reset: str | None = None
    budget: str = "$500.00"
    broadcast: bool = True
    for_model: str | None = None

    def matches(self, key_name: str, preset: str | None, model: str | None = None) -> bool:
        return (
            (self.key_name is None or self.key_name == key_name)
            and (self.preset is None or self.preset == preset)
            and (self.for_model is None or self.for_model == model)
        )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "fault") -> Fault:
        """Build a fault from JSON/YAML; raises ``SimConfigError`` naming ``where``."""
        values = _known_fields(cls, raw, where)
        kind = values.get("kind")
        if kind not in FAULT_KINDS:
            raise SimConfigError(
                f"{where}: kind must be one of {sorted(FAULT_KINDS)}, not {kind!r}"
            )
        if "patterns" in values:
            values["patterns"] = tuple(str(p) for p in values["patterns"])
        if kind == "server_error" and values.get("status") not in (None, 500, 502, 503, 524, 529):
            raise SimConfigError(f"{where}: status must be 500, 502, 503, 524 or 529")
        return cls(**values)


_TOP_LEVEL_FIELDS = frozenset(
    {"presets", "models", "keys", "management_key", "faults", "broadcast", "seed", "latency_scale"}
)
_MONEY_FIELDS = ("input_price", "output_price", "limit", "balance")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class SimConfig:
    """Everything the simulator starts from. ``/_sim/reset`` returns to exactly this state.

    ``presets`` maps slug → preset; ``keys`` are the inference keys it accepts;
    ``management_key`` unlocks ``/api/v1/keys``; ``faults`` apply from the start;
    ``broadcast_url``/``broadcast_headers`` receive an OTLP/HTTP JSON delivery after every
    chat call (None: no broadcast); ``models`` adds plain model ids; ``seed`` fixes the ids
    and answers; ``clock`` gives the time (limit windows, span times)."""

    presets: dict[str, Preset] = field(default_factory=dict)
    keys: list[SimKey] = field(default_factory=list)
    management_key: str | None = None
    faults: list[Fault] = field(default_factory=list)
    broadcast_url: str | None = None
    broadcast_headers: dict[str, str] = field(default_factory=dict)
    broadcast_timeout: float = 5.0
    models: dict[str, ModelInfo] = field(default_factory=dict)
    seed: int = 0
    latency_scale: float = 1.0
    clock: Callable[[], datetime] = _utc_now

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SimConfig:
        """Load a presets file (see ``presets.example.yaml``); keyword overrides win."""
        path = Path(path)
        try:
            raw = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SimConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except Exception as exc:  # ruamel's parser errors share no public base class
            raise SimConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_mapping(raw or {}, source=str(path), **overrides)

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], source: str = "config", **overrides: Any
    ) -> SimConfig:
        if not isinstance(raw, Mapping):
            raise SimConfigError(f"{source}: the top level must be a mapping")
        unknown = set(raw) - _TOP_LEVEL_FIELDS
        if unknown:
            raise SimConfigError(f"{source}: unknown fields {sorted(unknown)}")
        presets = {}
        for slug, preset in (raw.get("presets") or {}).items():
            values = _known_fields(Preset, preset, f"{source}: presets.{slug}")
            if "model" not in values:
                raise SimConfigError(f"{source}: presets.{slug}: model is required")
            values["fallback_models"] = tuple(values.get("fallback_models") or ())
            presets[str(slug)] = Preset(**values)
        models = {
            str(model_id): _model_info(info or {}, f"{source}: models.{model_id}")
            for model_id, info in (raw.get("models") or {}).items()
        }
        keys = []
        for index, key in enumerate(raw.get("keys") or []):
            values = _known_fields(SimKey, key, f"{source}: keys[{index}]")
            if "key" not in values or "name" not in values:
                raise SimConfigError(f"{source}: keys[{index}]: key and name are required")
            if values.get("limit_reset") not in (None, *LIMIT_RESETS):
                raise SimConfigError(
                    f"{source}: keys[{index}]: limit_reset must be daily, weekly, monthly or null"
                )
            keys.append(SimKey(**values))
        faults = [
            Fault.from_mapping(fault, f"{source}: faults[{index}]")
            for index, fault in enumerate(raw.get("faults") or [])
        ]
        broadcast = raw.get("broadcast") or {}
        config: dict[str, Any] = {
            "presets": presets,
            "models": models,
            "keys": keys,
            "management_key": raw.get("management_key"),
            "faults": faults,
            "broadcast_url": broadcast.get("url"),
            "broadcast_headers": {
                str(k): str(v) for k, v in (broadcast.get("headers") or {}).items()
            },
            "seed": int(raw.get("seed", 0)),
        }
        if "latency_scale" in raw:
            config["latency_scale"] = float(raw["latency_scale"])
        if "timeout" in broadcast:
            config["broadcast_timeout"] = float(broadcast["timeout"])
        config.update(overrides)
        return cls(**config)


def _model_info(raw: Any, where: str) -> ModelInfo:
    values = _known_fields(ModelInfo, raw, where)
    latency = values.get("latency")
    if latency is not None:
        if (
            not isinstance(latency, list | tuple)
            or len(latency) != 2
            or not all(isinstance(x, int | float) and x >= 0 for x in latency)
            or latency[0] > latency[1]
        ):
            raise SimConfigError(f"{where}: latency must be [low, high] seconds, low <= high")
        values["latency"] = (float(latency[0]), float(latency[1]))
    return ModelInfo(**values)


def _known_fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SimConfigError(f"{where}: must be a mapping")
    allowed = {f.name for f in fields(cls)}
    unknown = set(raw) - allowed
    if unknown:
        raise SimConfigError(f"{where}: unknown fields {sorted(unknown)}")
    values = dict(raw)
    for name in _MONEY_FIELDS:
        if values.get(name) is not None:
            try:
                values[name] = float(values[name])
            except (TypeError, ValueError) as exc:
                raise SimConfigError(f"{where}: {name} must be a number") from exc
    return values


def money(value: float) -> float:
    return round(value, 12)
