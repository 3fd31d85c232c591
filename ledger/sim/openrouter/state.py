"""What the running simulator remembers: each key's spending and limit windows, the active
faults, the recorded calls and deliveries. ``SimState.reset()`` rebuilds it from the config."""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from ledger.sim.openrouter.config import JSON, Fault, ModelInfo, SimConfig, money


def limit_exceeded_message(limit_reset: str | None) -> str:
    """OpenRouter's 403 text when a key's credit limit is reached (reset word: total if none)."""
    return (
        f"Key limit exceeded ({limit_reset or 'total'} limit). "
        "Manage it using https://openrouter.ai/settings/keys"
    )


def window_start(now: datetime, reset: str | None) -> datetime | None:
    """Start of the current limit window in UTC (weeks start Monday); None for a total limit."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "daily":
        return midnight
    if reset == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    if reset == "monthly":
        return midnight.replace(day=1)
    return None


@dataclass(slots=True)
class KeyState:
    key: str
    name: str
    hash: str
    limit: float | None
    limit_reset: str | None
    balance: float | None
    output: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime | None = None
    include_byok_in_limit: bool = False
    expires_at: str | None = None
    spent: list[tuple[datetime, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.key[:11]}...{self.key[-3:]}"

    def usage_since(self, since: datetime | None) -> float:
        return money(sum(cost for at, cost in self.spent if since is None or at >= since))

    def limit_remaining(self, now: datetime) -> float | None:
        if self.limit is None:
            return None
        return money(self.limit - self.usage_since(window_start(now, self.limit_reset)))

    def balance_remaining(self) -> float | None:
        return None if self.balance is None else money(self.balance - self.usage_since(None))

    def usage_view(self, now: datetime) -> JSON:
        usage = {
            "limit": self.limit,
            "limit_remaining": self.limit_remaining(now),
            "limit_reset": self.limit_reset,
            "include_byok_in_limit": self.include_byok_in_limit,
            "usage": self.usage_since(None),
            "usage_daily": self.usage_since(window_start(now, "daily")),
            "usage_weekly": self.usage_since(window_start(now, "weekly")),
            "usage_monthly": self.usage_since(window_start(now, "monthly")),
        }
        byok = {"byok_usage": 0.0, "byok_usage_daily": 0.0}
        byok |= {"byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0}
        return usage | byok | {"expires_at": self.expires_at}

    def management_view(self, now: datetime) -> JSON:
        return {
            "hash": self.hash,
            "name": self.name,
            "label": self.label,
            "disabled": self.disabled,
            **self.usage_view(now),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(slots=True)
class ActiveFault:
    id: int
    fault: Fault
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.fault.times is not None and self.hits >= self.fault.times

    def view(self) -> JSON:
        return {"id": self.id, "hits": self.hits, **asdict(self.fault)}


class SimState:
    """Everything the running simulator remembers; ``reset()`` rebuilds it from the config."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.http: httpx.AsyncClient | None = None
        self.reset()

    def reset(self) -> None:
        config = self.config
        now = config.clock()
        self.rng = random.Random(config.seed)  # noqa: S311 - ids for a simulator
        self.keys: dict[str, KeyState] = {}
        for k in config.keys:
            self.add_key(
                k.key, k.name, k.limit, k.limit_reset, now, k.balance, k.output, k.disabled
            )
        self.models: dict[str, ModelInfo] = {}
        for preset in config.presets.values():
            for model in (preset.model, *preset.fallback_models):
                price = ModelInfo(preset.input_price, preset.output_price, preset.provider)
                self.models.setdefault(model, price)
        self.models |= config.models
        self.next_fault_id = 1
        self.faults: list[ActiveFault] = []
        for fault in config.faults:
            self.add_fault(fault)
        self.calls: list[JSON] = []
        self.deliveries: list[JSON] = []
        self.generations: dict[str, JSON] = {}
        self.broadcast_url = config.broadcast_url
        self.broadcast_headers = dict(config.broadcast_headers)

    def add_key(
        self,
        key: str,
        name: str,
        limit: float | None,
        limit_reset: str | None,
        now: datetime,
        balance: float | None = None,
        output: str | None = None,
        disabled: bool = False,
    ) -> KeyState:
        state = KeyState(
            key=key,
            name=name,
            hash=hashlib.sha256(key.encode()).hexdigest(),
            limit=limit,
            limit_reset=limit_reset,
            balance=balance,
            output=output,
            disabled=disabled,
            created_at=now,
        )
        self.keys[key] = state
        return state

    def by_hash(self, key_hash: str) -> KeyState | None:
        return next((key for key in self.keys.values() if key.hash == key_hash), None)

    def add_fault(self, fault: Fault) -> ActiveFault:
        active = ActiveFault(self.next_fault_id, fault)
        self.next_fault_id += 1
        self.faults.append(active)
        return active

    def matching_faults(
        self, key_name: str, preset: str | None, model: str | None = None
    ) -> list[ActiveFault]:
        return [
            f for f in self.faults if not f.exhausted and f.fault.matches(key_name, preset, model)
        ]

    def latency(self, model: str) -> float:
        """Seconds ``model`` takes to answer this call (its latency range, scaled)."""
        info = self.models.get(model)
        if info is None or info.latency is None:
            return 0.0
        low, high = info.latency
        return self.rng.uniform(low, high) * self.config.latency_scale

    def new_id(self, now: datetime) -> str:
        alphabet = string.ascii_letters + string.digits
        return f"gen-{int(now.timestamp())}-" + "".join(self.rng.choices(alphabet, k=20))

    def new_key(self) -> str:
        return "sk-or-v1-" + "".join(self.rng.choices("0123456789abcdef", k=64))
