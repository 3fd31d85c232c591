"""The model catalog: OpenRouter's per-token prices, fetched from the simulator over HTTP, and
the worst-case reservation a run makes from them."""

from __future__ import annotations

import pytest

from ledger.runner.catalog import PROMPT_OVERHEAD_TOKENS, ModelCatalog, Price
from ledger.sim.openrouter import ModelInfo, Preset, SimConfig, run_in_background

HAIKU = "anthropic/claude-haiku-4.5"


def test_prices_are_read_as_openrouter_lists_them_and_unusable_entries_are_skipped() -> None:
    catalog = ModelCatalog("http://unused.invalid")
    loaded = catalog.load(
        {
            "data": [
                {"id": HAIKU, "pricing": {"prompt": "0.000001", "completion": "0.000005"}},
                {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
                {"id": "no/pricing"},
                {"id": "bad/price", "pricing": {"prompt": "free", "completion": "0"}},
                {"id": "free/model", "pricing": {"prompt": "0", "completion": 0}},
                "not an object",
            ]
        }
    )
    assert loaded == 2
    assert catalog.price(HAIKU) == Price(0.000001, 0.000005)
    assert catalog.price("free/model") == Price(0.0, 0.0)
    assert catalog.price("openrouter/auto") is None and catalog.price("bad/price") is None
    # An answer without any usable price keeps what was known.
    assert catalog.load({"data": []}) == 0 and catalog.load({"oops": 1}) == 0
    assert catalog.price(HAIKU) == Price(0.000001, 0.000005)


def test_worst_case_is_the_prompt_bytes_and_the_output_cap_at_the_model_price() -> None:
    catalog = ModelCatalog("http://unused.invalid")
    pricing = {"prompt": "0.000001", "completion": "0.00001"}
    catalog.load({"data": [{"id": HAIKU, "pricing": pricing}]})
    prompt = "Résumé ✓"  # 8 characters, 12 UTF-8 bytes: bytes bound the token count
    expected = (12 + PROMPT_OVERHEAD_TOKENS) * 0.000001 + 500 * 0.00001
    assert catalog.worst_case_usd(HAIKU, prompt, 500) == pytest.approx(expected)
    assert catalog.worst_case_usd("unknown/model", prompt, 500) is None
    assert catalog.worst_case_usd(None, prompt, 500) is None


async def test_refresh_fetches_the_catalog_from_the_simulator() -> None:
    config = SimConfig(
        presets={"seo": Preset(model=HAIKU, input_price=0.000001, output_price=0.000005)},
        models={"openai/gpt-4o-mini": ModelInfo(input_price=0.00000015, output_price=0.0000006)},
    )
    async with run_in_background(config) as base_url:
        catalog = ModelCatalog(base_url)
        assert await catalog.refresh() is True
    assert len(catalog) == 2
    assert catalog.price(HAIKU) == Price(0.000001, 0.000005)
    assert catalog.price("openai/gpt-4o-mini") == Price(0.00000015, 0.0000006)
    # A catalog that cannot be reached keeps the prices it had.
    unreachable = ModelCatalog("http://127.0.0.1:9")
    unreachable.load({"data": [{"id": HAIKU, "pricing": {"prompt": "1", "completion": "1"}}]})
    assert await unreachable.refresh(timeout=2) is False
    assert unreachable.price(HAIKU) == Price(1.0, 1.0)


def test_an_offline_catalog_backs_off_from_a_minute_to_the_hour() -> None:
    from ledger.daemon import catalog_retry_delay
    from ledger.runner.catalog import REFRESH_SECONDS

    assert catalog_retry_delay(0) == REFRESH_SECONDS  # working: hourly
    delays = [catalog_retry_delay(n) for n in range(1, 10)]
    assert delays[:4] == [60.0, 120.0, 240.0, 480.0]
    assert delays == sorted(delays) and max(delays) == REFRESH_SECONDS
    assert catalog_retry_delay(10_000) == REFRESH_SECONDS
