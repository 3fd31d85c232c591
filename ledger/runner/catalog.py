"""OpenRouter's model catalog (``GET /api/v1/models``): per-token prices for reservations.

A run reserves its worst-case cost before it calls (``ledger.spend.reserve``). When the behavior
names the model its preset calls (``primary_model``) and the catalog knows that model, the
worst case is the prompt at the model's prompt price plus ``max_output_tokens`` at its
completion price; the prompt's token count is bounded by its UTF-8 length (a byte-level
tokenizer never makes more tokens than bytes). Otherwise the behavior's
``budget.per_call_estimate_usd`` or the runner's default estimate applies — an operator's own
estimate always wins. Prices are refreshed hourly; a failed refresh keeps the last prices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog

__all__ = ["ModelCatalog", "ModelMeta", "Price", "fetch_models", "read_models"]

log = structlog.get_logger("ledger.runner")

MODELS_PATH: Final = "/api/v1/models"
REFRESH_SECONDS: Final = 3600.0
PROMPT_OVERHEAD_TOKENS: Final = 16  # chat formatting around the one user message


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token."""

    prompt: float
    completion: float


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What the catalog says about one model: its context length, whether it reasons (its
    ``supported_parameters`` list ``reasoning``) and its price (None: not listed usably)."""

    id: str
    context_length: int | None
    reasoning: bool
    price: Price | None

    @property
    def vendor(self) -> str:
        return self.id.split("/", 1)[0]


def read_models(document: Mapping[str, Any]) -> list[ModelMeta]:
    """The models of a ``/api/v1/models`` answer (entries without an id are skipped)."""
    out: list[ModelMeta] = []
    data = document.get("data")
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            continue
        pricing = entry.get("pricing")
        price = None
        if isinstance(pricing, Mapping):
            prompt = _per_token(pricing.get("prompt"))
            completion = _per_token(pricing.get("completion"))
            if prompt is not None and completion is not None:
                price = Price(prompt, completion)
        params = entry.get("supported_parameters")
        reasoning = isinstance(params, list) and "reasoning" in params
        context = entry.get("context_length")
        out.append(
            ModelMeta(
                id=entry["id"],
                context_length=context if isinstance(context, int) and context > 0 else None,
                reasoning=reasoning,
                price=price,
            )
        )
    return out


async def fetch_models(
    base_url: str, *, http: httpx.AsyncClient | None = None, timeout: float = 10.0
) -> list[ModelMeta]:
    """The catalog as OpenRouter lists it now (no key needed). Raises ``CatalogError`` when
    it cannot be fetched or read: a canvas never runs on a stale list."""
    client = http or httpx.AsyncClient()
    try:
        response = await client.get(base_url.rstrip("/") + MODELS_PATH, timeout=timeout)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, Mapping):
            raise ValueError("the answer is not a JSON object")
    except (httpx.HTTPError, ValueError) as exc:
        raise CatalogError(
            f"the model catalog ({MODELS_PATH}) could not be fetched: {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        ) from exc
    finally:
        if http is None:
            await client.aclose()
    return read_models(document)


class CatalogError(Exception):
    """The model catalog could not be fetched or read (a provider problem, not a behavior's)."""


def _per_token(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    # OpenRouter lists "-1" for routers whose price depends on the model picked.
    return number if math.isfinite(number) and number >= 0 else None


class ModelCatalog:
    """The prices of the models OpenRouter lists, by model id."""

    def __init__(self, base_url: str, *, http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._prices: dict[str, Price] = {}
        self._meta: dict[str, ModelMeta] = {}

    def __len__(self) -> int:
        return len(self._prices)

    def load(self, document: Mapping[str, Any]) -> int:
        """Take the prices of a ``/api/v1/models`` answer; entries without a usable price are
        skipped. Returns how many models were loaded (the old prices stay if none was)."""
        prices: dict[str, Price] = {}
        data = document.get("data")
        for entry in data if isinstance(data, list) else []:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
                continue
            pricing = entry.get("pricing")
            if not isinstance(pricing, Mapping):
                continue
            prompt, completion = (
                _per_token(pricing.get("prompt")),
                _per_token(pricing.get("completion")),
            )
            if prompt is not None and completion is not None:
                prices[entry["id"]] = Price(prompt, completion)
        if prices:
            self._prices = prices
            self._meta = {m.id: m for m in read_models(document)}
        return len(prices)

    def price(self, model: str) -> Price | None:
        return self._prices.get(model)

    def meta(self, model: str) -> ModelMeta | None:
        """The model's metadata as last loaded (None: unknown)."""
        return self._meta.get(model)

    def remember(self, models: list[ModelMeta]) -> None:
        """Take a fresh listing (``fetch_models``) as the current one."""
        priced = {m.id: m.price for m in models if m.price is not None}
        if priced:
            self._prices = priced
            self._meta = {m.id: m for m in models}

    def worst_case_usd(self, model: str | None, prompt: str, max_tokens: int) -> float | None:
        """The most a call of ``model`` with ``prompt`` and ``max_tokens`` can cost, or None
        when the catalog does not know the model."""
        price = self._prices.get(model) if model else None
        if price is None:
            return None
        prompt_tokens = len(prompt.encode("utf-8")) + PROMPT_OVERHEAD_TOKENS
        return prompt_tokens * price.prompt + max_tokens * price.completion

    async def refresh(self, timeout: float = 10.0) -> bool:
        """Fetch the catalog (no key needed). False, with a warning, when it failed."""
        client = self._http or httpx.AsyncClient()
        try:
            response = await client.get(self.base_url + MODELS_PATH, timeout=timeout)
            response.raise_for_status()
            loaded = self.load(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "model catalog not refreshed; reservations use the last prices or estimates",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                models=len(self._prices),
            )
            return False
        finally:
            if self._http is None:
                await client.aclose()
        log.info("model catalog refreshed", models=loaded)
        return loaded > 0
