"""``ledger keys check``: the account's keys read through the simulator's management API, and
the pure comparison with the behaviors' files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ledger.behaviors.registry import reconcile_directory
from ledger.behaviors.schema import Behavior
from ledger.db.session import Database
from ledger.ingest.process import DbLookup
from ledger.runner.keys import (
    FindingKind,
    KeyFinding,
    KeyIdentity,
    ManagedKey,
    check_keys,
    identify_keys,
    list_keys,
    name_by_label,
    render_findings,
)
from ledger.runner.openrouter import OpenRouterCallError, OpenRouterClient
from ledger.sim.openrouter import SimConfig, SimKey, run_in_background
from ledger.transitions import lock_behavior
from tests.factories import T0, VALID_BEHAVIOR, make_behavior, write_behavior
from tests.servers import ledger

MANAGEMENT_KEY = "sk-or-v1-test-keys-management"
SEO_KEY = "sk-or-v1-test-keys-seo-audit"


def behavior(name: str, key_name: str | None, budget: dict[str, Any] | None = None) -> Behavior:
    return make_behavior(
        name,
        schedule="1d",
        preset=name,
        api_key=f"env:LEDGER_TEST_{name.upper().replace('-', '_')}_KEY",
        key_name=key_name,
        prompt="Do the job.",
        **({} if budget is None else {"budget": budget}),
    )


def key(name: str, **fields: Any) -> ManagedKey:
    return ManagedKey(hash=f"hash-{name}", name=name, **fields)


def kinds(findings: list[KeyFinding]) -> list[tuple[tuple[str, ...], FindingKind]]:
    return [(f.behaviors, f.kind) for f in findings]


# --------------------------------------------------------------------------------------------
# list_keys against the simulator
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    config = SimConfig(
        keys=[
            SimKey(key=SEO_KEY, name="ledger/seo-audit", limit=5.0, limit_reset="monthly"),
            SimKey(key="sk-or-v1-test-keys-digest", name="ledger/digest"),
            SimKey(key="sk-or-v1-test-keys-old", name="ledger/old", limit=1.0, disabled=True),
        ],
        management_key=MANAGEMENT_KEY,
    )
    async with run_in_background(config) as base_url:
        yield base_url


async def test_list_keys_reads_every_key_including_disabled_ones(sim: str) -> None:
    async with OpenRouterClient(base_url=sim) as client:
        keys = await list_keys(client, SecretStr(MANAGEMENT_KEY))

    by_name = {k.name: k for k in keys}
    assert set(by_name) == {"ledger/seo-audit", "ledger/digest", "ledger/old"}
    seo = by_name["ledger/seo-audit"]
    assert seo.limit == 5.0
    assert seo.limit_reset == "monthly"
    assert seo.limit_remaining == 5.0
    assert seo.disabled is False
    assert len(seo.hash) == 64
    assert by_name["ledger/digest"].limit is None
    assert by_name["ledger/old"].disabled is True


async def test_list_keys_follows_offset_pages(sim: str) -> None:
    auth = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    async with httpx.AsyncClient(base_url=sim, headers=auth) as control:
        for n in range(105):
            created = await control.post("/api/v1/keys", json={"name": f"bulk/{n:03}"})
            assert created.status_code == 201
        async with OpenRouterClient(base_url=sim) as client:
            keys = await list_keys(client, SecretStr(MANAGEMENT_KEY))
        calls = (await control.get("/_sim/calls")).json()["calls"]

    assert len(keys) == 108
    assert len({k.hash for k in keys}) == 108
    listed = [c["query"] for c in calls if c["method"] == "GET" and c["path"] == "/api/v1/keys"]
    assert listed == [
        "offset=0&include_disabled=true",
        "offset=100&include_disabled=true",
        "offset=108&include_disabled=true",
    ]


async def test_list_keys_with_an_inference_key_is_an_auth_error(sim: str) -> None:
    async with OpenRouterClient(base_url=sim) as client:
        with pytest.raises(OpenRouterCallError) as caught:
            await list_keys(client, SecretStr(SEO_KEY))

    assert caught.value.status_code == 401
    assert caught.value.gate == "auth_error"
    assert SEO_KEY not in str(caught.value)
    assert str(caught.value).startswith("OpenRouter GET /api/v1/keys failed (HTTP 401")


async def test_keys_check_against_the_simulator_account(sim: str) -> None:
    behaviors = [
        behavior("seo-audit", "ledger/seo-audit", {"usd": 5, "reset": "month"}),
        behavior("digest", "ledger/digest"),
        behavior("archive", "ledger/old"),
        behavior("newsletter", "ledger/newsletter"),
    ]
    async with OpenRouterClient(base_url=sim) as client:
        managed = await list_keys(client, SecretStr(MANAGEMENT_KEY))

    assert kinds(check_keys(behaviors, managed)) == [
        (("archive",), FindingKind.DISABLED),
        (("digest",), FindingKind.NO_LIMIT),
        (("newsletter",), FindingKind.MISSING),
    ]


# --------------------------------------------------------------------------------------------
# check_keys (pure)
# --------------------------------------------------------------------------------------------


def test_a_key_capped_at_the_budget_window_is_clean() -> None:
    behaviors = [behavior("seo-audit", "ledger/seo-audit", {"usd": 5, "reset": "month"})]
    managed = [key("ledger/seo-audit", limit=5.0, limit_reset="monthly")]

    assert check_keys(behaviors, managed) == []
    assert render_findings([]) == [
        "ok: every behavior has its own enabled key, capped within its budget"
    ]


def test_a_key_capped_below_the_budget_is_clean() -> None:
    behaviors = [behavior("seo-audit", "ledger/seo-audit", {"usd": 5, "reset": "week"})]
    managed = [key("ledger/seo-audit", limit=2.0, limit_reset="weekly")]

    assert check_keys(behaviors, managed) == []


def test_a_behavior_without_key_name_cannot_be_attributed() -> None:
    [finding] = check_keys([behavior("seo-audit", None)], [key("ledger/seo-audit", limit=1.0)])

    assert finding.kind is FindingKind.NO_KEY_NAME
    assert finding.severity == "warn"
    assert "key_name" in finding.message


def test_a_key_name_missing_from_the_account_is_an_error() -> None:
    [finding] = check_keys([behavior("seo-audit", "ledger/typo")], [key("ledger/seo-audit")])

    assert finding.kind is FindingKind.MISSING
    assert finding.severity == "error"
    assert finding.key_name == "ledger/typo"
    assert "'ledger/typo' is not in the OpenRouter account" in finding.message


def test_two_behaviors_sharing_a_key_is_one_error_naming_both() -> None:
    behaviors = [behavior("seo-audit", "ledger/shared"), behavior("digest", "ledger/shared")]
    managed = [key("ledger/shared", limit=1.0)]

    [finding] = check_keys(behaviors, managed)

    assert finding.kind is FindingKind.SHARED
    assert finding.behaviors == ("digest", "seo-audit")
    assert finding.severity == "error"
    assert "digest, seo-audit share key 'ledger/shared'" in finding.message


def test_two_account_keys_with_one_name_break_attribution() -> None:
    managed = [
        ManagedKey(hash="h1", name="ledger/seo-audit", limit=1.0),
        ManagedKey(hash="h2", name="ledger/seo-audit", limit=1.0),
    ]

    [finding] = check_keys([behavior("seo-audit", "ledger/seo-audit")], managed)

    assert finding.kind is FindingKind.DUPLICATE_NAME
    assert "2 keys in the account are named 'ledger/seo-audit'" in finding.message


def test_a_disabled_key_is_an_error() -> None:
    managed = [key("ledger/seo-audit", limit=1.0, disabled=True)]

    [finding] = check_keys([behavior("seo-audit", "ledger/seo-audit")], managed)

    assert finding.kind is FindingKind.DISABLED
    assert finding.severity == "error"


def test_a_key_without_limit_suggests_the_budget_as_its_cap() -> None:
    behaviors = [behavior("seo-audit", "ledger/seo-audit", {"usd": 5, "reset": "month"})]

    [finding] = check_keys(behaviors, [key("ledger/seo-audit")])

    assert finding.kind is FindingKind.NO_LIMIT
    assert finding.severity == "warn"
    assert "set a limit of at most $5.00 per month" in finding.message


def test_a_limit_above_the_budget_of_the_same_window_warns() -> None:
    behaviors = [behavior("seo-audit", "ledger/seo-audit", {"usd": 5, "reset": "day"})]
    managed = [key("ledger/seo-audit", limit=20.0, limit_reset="daily")]

    [finding] = check_keys(behaviors, managed)

    assert finding.kind is FindingKind.LIMIT_ABOVE_BUDGET
    assert "limit $20.00 is above the behavior's budget $5.00 per day" in finding.message


@pytest.mark.parametrize(
    ("budget_reset", "limit_reset", "wanted"),
    [
        ("month", "daily", "monthly"),
        ("week", None, "weekly"),
        ("never", "monthly", "null"),
    ],
)
def test_a_limit_on_another_window_than_the_budget_warns(
    budget_reset: str, limit_reset: str | None, wanted: str
) -> None:
    behaviors = [behavior("seo-audit", "ledger/seo-audit", {"usd": 5, "reset": budget_reset})]
    managed = [key("ledger/seo-audit", limit=1.0, limit_reset=limit_reset)]

    [finding] = check_keys(behaviors, managed)

    assert finding.kind is FindingKind.RESET_MISMATCH
    assert finding.message.endswith(f"set the key's limit_reset to {wanted}")


def test_a_total_limit_matches_a_budget_that_never_resets() -> None:
    behaviors = [behavior("seo-audit", "ledger/seo-audit", {"usd": 50, "reset": "never"})]

    assert check_keys(behaviors, [key("ledger/seo-audit", limit=50.0)]) == []


def test_findings_render_errors_first_one_line_each() -> None:
    behaviors = [
        behavior("alpha", "ledger/alpha"),
        behavior("beta", "ledger/missing"),
    ]
    findings = check_keys(behaviors, [key("ledger/alpha")])

    lines = render_findings(findings)

    assert [line.split(":")[0] for line in lines] == ["error", "warn"]
    assert lines[0].startswith("error: beta: key 'ledger/missing' is not in the OpenRouter")
    assert lines[1].startswith("warn: alpha: key 'ledger/alpha' has no OpenRouter credit limit")


# --------------------------------------------------------------------------------------------
# key names learned from the keys themselves
# --------------------------------------------------------------------------------------------


def test_a_label_names_one_key_of_the_account() -> None:
    managed = [
        key("ledger/a", label="sk-or-v1-aaa...111"),
        key("ledger/b", label="sk-or-v1-bbb...222"),
        key("ledger/b2", label="sk-or-v1-bbb...222"),
    ]
    assert name_by_label("sk-or-v1-aaa...111", managed) == ("ledger/a", "")
    assert name_by_label("sk-or-v1-zzz...999", managed)[0] is None
    name, why = name_by_label("sk-or-v1-bbb...222", managed)
    assert name is None and "2 keys of the account share its label" in why
    assert name_by_label(None, managed)[0] is None


def test_a_learned_name_is_checked_like_a_written_one() -> None:
    behaviors = [behavior("seo-audit", None, {"usd": 5, "reset": "month"})]
    managed = [key("ledger/seo-audit", limit=20.0, limit_reset="monthly")]
    learned = [KeyIdentity("seo-audit", "ledger/seo-audit")]
    # no longer "no key_name", but its key's limit is above the budget
    assert kinds(check_keys(behaviors, managed, learned)) == [
        (("seo-audit",), FindingKind.LIMIT_ABOVE_BUDGET)
    ]
    unknown = [KeyIdentity("seo-audit", None, "no key of the account has its label")]
    (finding,) = check_keys(behaviors, managed, unknown)
    assert finding.kind is FindingKind.NO_KEY_NAME
    assert "not learned from its key: no key of the account has its label" in finding.message


def test_a_key_name_that_names_another_key_is_an_error() -> None:
    behaviors = [behavior("digest", "ledger/seo-audit")]
    managed = [key("ledger/seo-audit", limit=1.0), key("ledger/digest", limit=1.0)]
    findings = check_keys(behaviors, managed, [KeyIdentity("digest", "ledger/digest")])
    assert kinds(findings)[0] == (("digest",), FindingKind.WRONG_KEY_NAME)
    assert findings[0].severity == "error"
    assert "named 'ledger/digest' in the account" in findings[0].message


async def test_keys_identify_themselves_by_label_against_the_simulator(sim: str) -> None:
    owned: dict[str, SecretStr | str] = {
        "seo-audit": SecretStr(SEO_KEY),
        "stranger": SecretStr("sk-or-v1-not-an-account-key"),
        "unreadable": "its key cannot be read here: environment variable K is not set",
    }
    async with OpenRouterClient(base_url=sim) as client:
        managed = await list_keys(client, SecretStr(MANAGEMENT_KEY))
        found = {i.behavior: i for i in await identify_keys(client, owned, managed)}
    assert found["seo-audit"] == KeyIdentity("seo-audit", "ledger/seo-audit")
    assert found["stranger"].name is None
    assert "OpenRouter refused its key" in (found["stranger"].problem or "")
    assert "not-an-account-key" not in (found["stranger"].problem or "")
    assert found["unreadable"] == KeyIdentity("unreadable", None, owned["unreadable"])  # type: ignore[arg-type]


async def test_keys_check_learns_the_key_names_files_leave_out(
    sim: str, db: Database, database_url: str, tmp_path: Path
) -> None:
    """As an operator runs it: ``seo-audit`` has no key_name, so the command learns it from the
    account and broadcast attributes by it from then on; ``digest`` names the wrong key."""
    folder = tmp_path / "behaviors"
    seo = write_behavior(
        folder,
        "seo-audit",
        VALID_BEHAVIOR.format(key_env="SEO_KEY", name="seo-audit").replace(
            "key_name: seo-audit-key\n", ""
        ),
    )
    write_behavior(
        folder,
        "digest",
        VALID_BEHAVIOR.format(key_env="DIGEST_KEY", name="digest").replace(
            "key_name: digest-key", "key_name: ledger/old"
        ),
    )
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_BEHAVIORS_DIR": str(folder),
        "LEDGER_OPENROUTER_BASE_URL": sim,
        "LEDGER_OPENROUTER_MANAGEMENT_KEY": "env:MGMT_KEY",
        "MGMT_KEY": MANAGEMENT_KEY,
        "SEO_KEY": SEO_KEY,
        "DIGEST_KEY": "sk-or-v1-test-keys-digest",
    }
    result = await asyncio.to_thread(ledger, "keys", "check", cwd=tmp_path, env=env)
    out = " ".join(result.stdout.split())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "learned: seo-audit uses key 'ledger/seo-audit' (its file has no key_name)" in out
    assert (
        "error: digest: key_name 'ledger/old' in the file, but its key is named "
        "'ledger/digest' in the account" in out
    )
    assert SEO_KEY not in result.stdout + result.stderr
    lookup = DbLookup(db)
    assert lookup.by_key_name("ledger/seo-audit") == "seo-audit"
    assert lookup.by_key_name("ledger/old") == "digest"  # the file's, wrong or not

    # Pointing the file at another key forgets what was learned from the old one.
    seo.write_text(seo.read_text().replace("env:SEO_KEY", "env:OTHER_SEO_KEY"))
    with db.transaction() as session:
        reconcile_directory(session, folder, T0 + timedelta(minutes=1))
        assert lock_behavior(session, name="seo-audit").learned_key_name is None
