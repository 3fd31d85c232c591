"""The Notion simulator, run for real on loopback and driven with the real notion-client 3.x
(``retry=False``: the outbox owns retries), the way the daemon's mirror will talk to Notion."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from notion_client import APIResponseError, Client, RequestTimeoutError, UnknownHTTPResponseError

from ledger.sim.notion import (
    DEFAULT_ROOT_PAGE_ID,
    NotionFault,
    NotionSimConfig,
    NotionSimConfigError,
    run_in_thread,
)

TOKEN = "secret_test_notion_sim"
ROOT = "2b7f0c3e-51a4-4c1e-9d1e-6f1f0a3b9c11"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "notion"
SCHEMA: dict[str, Any] = {
    "Name": {"type": "title", "title": {}},
    "External ID": {"type": "rich_text", "rich_text": {}},
    "State": {
        "type": "select",
        "select": {"options": [{"name": "open", "color": "green"}, {"name": "closed"}]},
    },
    "Count": {"type": "number", "number": {"format": "number"}},
    "Done": {"type": "checkbox", "checkbox": {}},
    "Updated": {"type": "date", "date": {}},
    "Source URL": {"type": "url", "url": {}},
    "Parent item": {"type": "relation", "relation": {"type": "single_property"}},
}
LOGGER = logging.getLogger("tests.notion_sim")


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Sim:
    base_url: str
    notion: Client
    control: httpx.Client
    clock: Clock
    clients: list[Client] = field(default_factory=list)

    def client(self, auth: str | None = TOKEN, timeout_ms: int = 10_000) -> Client:
        """A notion-client ``Client`` for this simulator, closed with it."""
        client = Client(
            auth=auth, base_url=self.base_url, retry=False, logger=LOGGER, timeout_ms=timeout_ms
        )
        self.clients.append(client)
        return client

    def fault(self, **fault: Any) -> None:
        response = self.control.post("/_sim/faults", json=fault)
        assert response.status_code == 201, response.text

    def requests(self) -> list[dict[str, Any]]:
        logged: list[dict[str, Any]] = self.control.get("/_sim/requests").json()["requests"]
        return logged


def start(clock: Clock, faults: list[NotionFault] | None = None) -> Iterator[Sim]:
    config = NotionSimConfig(token=TOKEN, root_page_id=ROOT, faults=faults or [], clock=clock)
    with run_in_thread(config) as base_url, httpx.Client(base_url=base_url) as control:
        sim = Sim(base_url, None, control, clock)  # type: ignore[arg-type]  # set just below
        sim.notion = sim.client()
        try:
            yield sim
        finally:
            for client in sim.clients:
                client.close()


@pytest.fixture
def sim() -> Iterator[Sim]:
    yield from start(Clock(datetime(2026, 7, 4, 9, 0, tzinfo=UTC)))


def text(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": content}}]


def make_database(notion: Client, properties: dict[str, Any] | None = None) -> str:
    database = notion.databases.create(
        parent={"type": "page_id", "page_id": ROOT},
        title=text("Mirrored items"),
        initial_data_source={"properties": properties or SCHEMA},
    )
    source_id: str = database["data_sources"][0]["id"]
    return source_id


def add_row(notion: Client, source_id: str, name: str, **values: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"Name": {"title": text(name)}}
    properties |= values
    page: dict[str, Any] = notion.pages.create(
        parent={"type": "data_source_id", "data_source_id": source_id}, properties=properties
    )
    return page


def names(result: dict[str, Any]) -> list[str]:
    return [
        "".join(t["plain_text"] for t in page["properties"]["Name"]["title"])
        for page in result["results"]
    ]


# --------------------------------------------------------------------------------------------
# Databases, data sources, rows
# --------------------------------------------------------------------------------------------


def test_fixture_database_request_creates_a_database_holding_one_data_source(sim: Sim) -> None:
    request = json.loads((FIXTURES / "create-database-request.json").read_text())
    request["parent"]["page_id"] = ROOT

    database = sim.notion.databases.create(**request)

    assert database["object"] == "database"
    assert "properties" not in database
    assert database["parent"] == {"type": "page_id", "page_id": ROOT}
    assert database["data_sources"] == [
        {"id": database["data_sources"][0]["id"], "name": "Mirrored items"}
    ]
    assert sim.notion.databases.retrieve(database["id"])["data_sources"] == database["data_sources"]
    source = sim.notion.data_sources.retrieve(database["data_sources"][0]["id"])
    assert source["object"] == "data_source"
    assert source["parent"] == {"type": "database_id", "database_id": database["id"]}
    wanted = request["initial_data_source"]["properties"]
    assert {n: p["type"] for n, p in source["properties"].items()} == {
        n: p["type"] for n, p in wanted.items()
    }
    assert source["properties"]["Name"]["id"] == "title"
    options = source["properties"]["State"]["select"]["options"]
    assert [(o["name"], o["color"]) for o in options] == [("open", "green"), ("closed", "gray")]
    assert all(o["id"] for o in options)


def test_rows_are_created_under_the_data_source_and_read_back_in_notions_shape(sim: Sim) -> None:
    source_id = make_database(sim.notion)
    other = add_row(sim.notion, source_id, "Parent")

    row = add_row(
        sim.notion,
        source_id,
        "Fix the importer",
        **{
            "External ID": {"rich_text": text("gh-1234")},
            "State": {"select": {"name": "open"}},
            "Count": {"number": 3},
            "Done": {"checkbox": False},
            "Updated": {"date": {"start": "2026-07-04T09:10:00Z"}},
            "Source URL": {"url": "https://example.com/items/1234"},
            "Parent item": {"relation": [{"id": other["id"]}]},
        },
    )

    expected = json.loads((FIXTURES / "query-data-source-response.json").read_text())
    fixture_row = expected["results"][0]
    assert set(row) == set(fixture_row) | {"request_id"}
    assert row["parent"]["type"] == "data_source_id"
    assert row["parent"]["data_source_id"] == source_id
    properties = row["properties"]
    assert {n: p["type"] for n, p in properties.items()} == {
        n: p["type"] for n, p in fixture_row["properties"].items()
    }
    assert (
        properties["External ID"]["rich_text"][0]
        == (fixture_row["properties"]["External ID"]["rich_text"][0])
    )
    assert properties["State"]["select"]["name"] == "open"
    assert properties["Count"]["number"] == 3
    assert properties["Parent item"] == {
        "id": properties["Parent item"]["id"],
        "type": "relation",
        "relation": [{"id": other["id"]}],
        "has_more": False,
    }
    assert sim.notion.pages.retrieve(row["id"])["properties"] == properties


def test_query_filters_and_paginates_with_cursors(sim: Sim) -> None:
    source_id = make_database(sim.notion)
    for i in range(5):
        add_row(sim.notion, source_id, f"item {i}", **{"Count": {"number": i}})

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        result = sim.notion.data_sources.query(
            source_id,
            filter={"property": "Count", "number": {"greater_than": 0}},
            sorts=[{"property": "Count", "direction": "descending"}],
            page_size=2,
            start_cursor=cursor,
        )
        pages += 1
        assert result["object"] == "list"
        assert result["type"] == "page_or_data_source"
        seen += names(result)
        if not result["has_more"]:
            assert result["next_cursor"] is None
            break
        cursor = result["next_cursor"]

    assert seen == ["item 4", "item 3", "item 2", "item 1"]
    assert pages == 2


def test_updating_properties_changes_only_the_named_ones(sim: Sim) -> None:
    source_id = make_database(sim.notion)
    row = add_row(sim.notion, source_id, "x", **{"State": {"select": {"name": "open"}}})

    updated = sim.notion.pages.update(
        row["id"], properties={"State": {"select": {"name": "closed"}}, "Done": {"checkbox": True}}
    )

    assert updated["properties"]["State"]["select"]["name"] == "closed"
    assert updated["properties"]["Done"]["checkbox"] is True
    assert updated["properties"]["Name"] == row["properties"]["Name"]
    closed = sim.notion.data_sources.query(
        source_id, filter={"property": "State", "select": {"equals": "closed"}}
    )
    assert [p["id"] for p in closed["results"]] == [row["id"]]


def test_a_whole_number_reads_back_as_an_integer_as_from_notion(sim: Sim) -> None:
    """Notion's numbers are JavaScript's: a count written as 2.0 comes back as 2 (the fixture's
    ``"number": 3``), a fraction as itself."""
    source_id = make_database(sim.notion)
    row = add_row(sim.notion, source_id, "x", **{"Count": {"number": 2.0}})
    assert type(row["properties"]["Count"]["number"]) is int
    assert row["properties"]["Count"]["number"] == 2
    half = add_row(sim.notion, source_id, "y", **{"Count": {"number": 0.5}})
    assert half["properties"]["Count"]["number"] == 0.5


def test_trashed_rows_leave_query_results(sim: Sim) -> None:
    source_id = make_database(sim.notion)
    row = add_row(sim.notion, source_id, "gone")

    sim.notion.pages.update(row["id"], in_trash=True)

    assert sim.notion.data_sources.query(source_id)["results"] == []


def test_a_data_source_schema_can_be_renamed_extended_and_trimmed(sim: Sim) -> None:
    source_id = make_database(sim.notion)

    source = sim.notion.data_sources.update(
        source_id,
        properties={"Count": {"name": "Total"}, "Source URL": None, "Seen": {"checkbox": {}}},
    )

    assert "Total" in source["properties"]
    assert "Count" not in source["properties"]
    assert "Source URL" not in source["properties"]
    assert source["properties"]["Seen"]["type"] == "checkbox"


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


@pytest.fixture
def filter_rows(sim: Sim) -> tuple[Sim, str, dict[str, str]]:
    source_id = make_database(sim.notion)
    parent = add_row(sim.notion, source_id, "Parent")
    rows = {
        "alpha": {"External ID": {"rich_text": text("gh-1")}, "Count": {"number": 1},
                  "Done": {"checkbox": True}, "State": {"select": {"name": "open"}},
                  "Updated": {"date": {"start": "2026-07-01"}},
                  "Parent item": {"relation": [{"id": parent["id"]}]}},
        "beta": {"External ID": {"rich_text": text("gh-22")}, "Count": {"number": 5},
                 "Done": {"checkbox": False}, "State": {"select": {"name": "closed"}},
                 "Updated": {"date": {"start": "2026-07-03T12:00:00Z"}}},
        "gamma": {"External ID": {"rich_text": text("GL-3")}, "Count": {"number": 9},
                  "Done": {"checkbox": False}, "State": {"select": {"name": "open"}},
                  "Updated": {"date": {"start": "2026-07-05"}}},
    }  # fmt: skip
    ids = {
        name: add_row(sim.notion, source_id, name, **values)["id"] for name, values in rows.items()
    }
    return sim, source_id, ids | {"Parent": parent["id"]}


@pytest.mark.parametrize(
    ("query_filter", "expected"),
    [
        ({"property": "Name", "title": {"equals": "beta"}}, ["beta"]),
        ({"property": "Name", "title": {"contains": "MM"}}, ["gamma"]),
        ({"property": "External ID", "rich_text": {"equals": "gh-22"}}, ["beta"]),
        ({"property": "External ID", "rich_text": {"contains": "gh-"}}, ["alpha", "beta"]),
        ({"property": "State", "select": {"equals": "open"}}, ["alpha", "gamma"]),
        ({"property": "Done", "checkbox": {"equals": True}}, ["alpha"]),
        ({"property": "Count", "number": {"equals": 5}}, ["beta"]),
        ({"property": "Count", "number": {"greater_than": 1}}, ["beta", "gamma"]),
        ({"property": "Count", "number": {"less_than": 9}}, ["alpha", "beta"]),
        ({"property": "Updated", "date": {"before": "2026-07-03"}}, ["alpha"]),
        ({"property": "Updated", "date": {"after": "2026-07-03"}}, ["gamma"]),
        ({"property": "Updated", "date": {"on_or_after": "2026-07-03"}}, ["beta", "gamma"]),
        ({"property": "Updated", "date": {"after": "2026-07-03T06:00:00Z"}}, ["beta", "gamma"]),
        (
            {"and": [{"property": "State", "select": {"equals": "open"}},
                     {"property": "Count", "number": {"greater_than": 2}}]},
            ["gamma"],
        ),
        (
            {"or": [{"property": "Done", "checkbox": {"equals": True}},
                    {"property": "Name", "title": {"equals": "beta"}}]},
            ["alpha", "beta"],
        ),
    ],
)  # fmt: skip
def test_query_filters_select_the_matching_rows(
    filter_rows: tuple[Sim, str, dict[str, str]], query_filter: dict[str, Any], expected: list[str]
) -> None:
    sim, source_id, _ids = filter_rows

    result = sim.notion.data_sources.query(
        source_id, filter=query_filter, sorts=[{"property": "Name", "direction": "ascending"}]
    )

    assert names(result) == expected


def test_relation_contains_finds_rows_linking_a_page(
    filter_rows: tuple[Sim, str, dict[str, str]],
) -> None:
    sim, source_id, ids = filter_rows

    result = sim.notion.data_sources.query(
        source_id, filter={"property": "Parent item", "relation": {"contains": ids["Parent"]}}
    )

    assert names(result) == ["alpha"]


def test_a_filter_on_an_unknown_property_is_a_validation_error(
    filter_rows: tuple[Sim, str, dict[str, str]],
) -> None:
    sim, source_id, _ids = filter_rows

    with pytest.raises(APIResponseError) as caught:
        sim.notion.data_sources.query(
            source_id, filter={"property": "Nope", "number": {"equals": 1}}
        )

    assert caught.value.status == 400
    assert caught.value.code == "validation_error"


def test_page_size_over_100_is_refused(sim: Sim) -> None:
    source_id = make_database(sim.notion)

    with pytest.raises(APIResponseError) as caught:
        sim.notion.data_sources.query(source_id, page_size=101)

    assert caught.value.code == "validation_error"


# --------------------------------------------------------------------------------------------
# Blocks and validation
# --------------------------------------------------------------------------------------------


def paragraphs(count: int) -> list[dict[str, Any]]:
    return [{"paragraph": {"rich_text": text(f"line {i}")}} for i in range(count)]


def test_append_accepts_100_children_and_refuses_101(sim: Sim) -> None:
    page = sim.notion.pages.create(
        parent={"page_id": ROOT}, properties={"title": {"title": text("Run log")}}
    )

    appended = sim.notion.blocks.children.append(page["id"], children=paragraphs(100))
    with pytest.raises(APIResponseError) as caught:
        sim.notion.blocks.children.append(page["id"], children=paragraphs(101))

    assert len(appended["results"]) == 100
    assert appended["results"][0]["type"] == "paragraph"
    assert appended["results"][0]["paragraph"]["rich_text"][0]["plain_text"] == "line 0"
    assert caught.value.status == 400
    assert caught.value.code == "validation_error"
    assert "`100`" in str(caught.value)
    listed = sim.notion.blocks.children.list(page["id"])
    assert len(listed["results"]) == 100
    assert listed["has_more"] is False


def test_block_children_list_paginates(sim: Sim) -> None:
    page = sim.notion.pages.create(
        parent={"page_id": ROOT},
        properties={"title": {"title": text("Run log")}},
        children=paragraphs(3),
    )

    first = sim.notion.blocks.children.list(page["id"], page_size=2)
    rest = sim.notion.blocks.children.list(page["id"], start_cursor=first["next_cursor"])

    assert first["has_more"] is True
    assert [
        b["paragraph"]["rich_text"][0]["plain_text"] for b in first["results"] + rest["results"]
    ] == [
        "line 0",
        "line 1",
        "line 2",
    ]


def test_a_page_created_under_the_root_is_one_of_its_child_blocks(sim: Sim) -> None:
    page = sim.notion.pages.create(
        parent={"page_id": ROOT}, properties={"title": {"title": text("Alerts")}}
    )

    children = sim.notion.blocks.children.list(ROOT)["results"]

    assert [(b["id"], b["type"], b["child_page"]["title"]) for b in children] == [
        (page["id"], "child_page", "Alerts")
    ]


def test_rich_text_over_2000_characters_is_refused(sim: Sim) -> None:
    source_id = make_database(sim.notion)

    fits = add_row(sim.notion, source_id, "x" * 2000)
    with pytest.raises(APIResponseError) as caught:
        add_row(sim.notion, source_id, "x" * 2001)

    assert len(fits["properties"]["Name"]["title"][0]["plain_text"]) == 2000
    assert caught.value.code == "validation_error"
    assert "2000" in str(caught.value)
    assert "2001" in str(caught.value)


def test_an_unknown_property_is_a_400_validation_error(sim: Sim) -> None:
    source_id = make_database(sim.notion)

    with pytest.raises(APIResponseError) as caught:
        add_row(sim.notion, source_id, "x", Colour={"rich_text": text("blue")})

    assert caught.value.status == 400
    assert caught.value.code == "validation_error"
    assert str(caught.value) == "Colour is not a property that exists."


def test_a_value_of_the_wrong_type_for_the_schema_is_refused(sim: Sim) -> None:
    source_id = make_database(sim.notion)

    with pytest.raises(APIResponseError) as caught:
        add_row(sim.notion, source_id, "x", Count={"rich_text": text("three")})

    assert caught.value.code == "validation_error"
    assert str(caught.value) == "Count is expected to be number."


@pytest.mark.parametrize("auth", [None, "secret_wrong"])
def test_missing_or_invalid_token_is_unauthorized(sim: Sim, auth: str | None) -> None:
    with pytest.raises(APIResponseError) as caught:
        sim.client(auth=auth).users.me()

    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"


def test_an_unknown_id_is_object_not_found(sim: Sim) -> None:
    with pytest.raises(APIResponseError) as caught:
        sim.notion.pages.retrieve("0f0e0d0c-0b0a-4908-8706-050403020100")

    assert caught.value.status == 404
    assert caught.value.code == "object_not_found"


def test_errors_have_notions_body(sim: Sim) -> None:
    response = sim.control.get("/v1/users/me", headers={"Notion-Version": "2025-09-03"})

    body = response.json()
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert set(body) == {"object", "status", "code", "message", "request_id"}
    assert body["object"] == "error"
    assert body["status"] == 401
    assert body["code"] == "unauthorized"


def test_an_unknown_route_is_invalid_request_url(sim: Sim) -> None:
    response = sim.control.get("/v1/nothing-here", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request_url"


# --------------------------------------------------------------------------------------------
# Faults and the request log
# --------------------------------------------------------------------------------------------


def test_rate_limited_fault_surfaces_retry_after_through_the_sdk(sim: Sim) -> None:
    sim.fault(kind="rate_limited", retry_after=2, times=1, path="/users")

    with pytest.raises(APIResponseError) as caught:
        sim.notion.users.me()
    after = sim.notion.users.me()

    assert caught.value.status == 429
    assert caught.value.code == "rate_limited"
    assert caught.value.headers["retry-after"] == "2"
    assert caught.value.additional_data == {"rate_limit_reason": "public_api_request_rate_limit"}
    assert after["object"] == "user"


def test_the_429_matches_the_fixture_in_status_headers_and_body(sim: Sim) -> None:
    expected = json.loads((FIXTURES / "error-rate-limited.json").read_text())
    sim.fault(kind="rate_limited", retry_after=2, times=1)

    response = sim.control.get(
        "/v1/users/me",
        headers={"Authorization": f"Bearer {TOKEN}", "Notion-Version": "2025-09-03"},
    )

    assert response.status_code == expected["status"]
    for name, value in expected["headers"].items():
        assert response.headers[name] == value
    body = response.json()
    assert set(body) == set(expected["body"])
    assert {k: v for k, v in body.items() if k != "request_id"} == {
        k: v for k, v in expected["body"].items() if k != "request_id"
    }


def test_a_fault_applies_only_to_its_method_and_path(sim: Sim) -> None:
    sim.fault(kind="server_error", status=503, method="POST", path="/pages")

    me = sim.notion.users.me()
    with pytest.raises(APIResponseError) as caught:
        sim.notion.pages.create(parent={"page_id": ROOT}, properties={})

    assert me["type"] == "bot"
    assert caught.value.status == 503
    assert caught.value.code == "service_unavailable"


def test_a_529_is_an_unknown_error_to_the_sdk(sim: Sim) -> None:
    sim.fault(kind="server_error", status=529, times=1)

    with pytest.raises(UnknownHTTPResponseError) as caught:
        sim.notion.users.me()

    assert caught.value.status == 529


def test_a_slow_answer_past_the_client_timeout_is_a_timeout(sim: Sim) -> None:
    sim.fault(kind="slow", seconds=0.5, times=1)

    with pytest.raises(RequestTimeoutError):
        sim.client(timeout_ms=100).users.me()


def test_an_outage_answers_503_until_its_seconds_have_passed(sim: Sim) -> None:
    sim.fault(kind="outage", seconds=30)

    with pytest.raises(APIResponseError) as during:
        sim.notion.users.me()
    sim.clock.now += timedelta(seconds=31)
    after = sim.notion.users.me()

    assert during.value.status == 503
    assert during.value.code == "service_unavailable"
    assert after["type"] == "bot"


def test_faults_can_be_configured_at_start() -> None:
    clock = Clock(datetime(2026, 7, 4, tzinfo=UTC))
    for sim in start(clock, [NotionFault(kind="rate_limited", retry_after=7, times=2)]):
        outcomes = []
        for _ in range(3):
            try:
                sim.notion.users.me()
                outcomes.append("ok")
            except APIResponseError as exc:
                outcomes.append(f"{exc.code.value}:{exc.headers['retry-after']}")

        assert outcomes == ["rate_limited:7", "rate_limited:7", "ok"]


def test_faults_are_listed_and_cleared_through_the_control_endpoint(sim: Sim) -> None:
    sim.fault(faults=[{"kind": "slow", "seconds": 0}, {"kind": "server_error", "status": 500}])

    listed = sim.control.get("/_sim/faults").json()["faults"]
    cleared = sim.control.delete("/_sim/faults").json()
    me = sim.notion.users.me()

    assert [f["kind"] for f in listed] == ["slow", "server_error"]
    assert cleared == {"cleared": 2}
    assert me["type"] == "bot"


def test_a_bad_fault_is_refused_with_a_message(sim: Sim) -> None:
    response = sim.control.post("/_sim/faults", json={"kind": "meltdown"})

    assert response.status_code == 400
    assert "kind must be one of" in response.json()["error"]


def test_the_request_log_has_method_path_time_and_status(sim: Sim) -> None:
    sim.notion.users.me()
    sim.clock.now += timedelta(seconds=2)
    source_id = make_database(sim.notion)
    sim.notion.data_sources.query(source_id)

    log = sim.requests()

    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("GET", "/v1/users/me", 200),
        ("POST", "/v1/databases", 200),
        ("POST", f"/v1/data_sources/{source_id}/query", 200),
    ]
    assert log[1]["time"] - log[0]["time"] == 2.0
    assert sim.control.delete("/_sim/requests").json() == {"cleared": 3}


# --------------------------------------------------------------------------------------------
# Search, comments, users
# --------------------------------------------------------------------------------------------


def test_search_finds_pages_and_data_sources_and_filters_by_object(sim: Sim) -> None:
    source_id = make_database(sim.notion)
    add_row(sim.notion, source_id, "Mirrored row")

    everything = sim.notion.search(query="mirrored")
    sources = sim.notion.search(
        query="mirrored", filter={"property": "object", "value": "data_source"}
    )
    pages = sim.notion.search(query="mirrored", filter={"property": "object", "value": "page"})
    with pytest.raises(APIResponseError) as caught:
        sim.notion.search(filter={"property": "object", "value": "database"})

    assert sorted(r["object"] for r in everything["results"]) == ["data_source", "page"]
    assert [r["id"] for r in sources["results"]] == [source_id]
    assert [r["object"] for r in pages["results"]] == ["page"]
    assert caught.value.code == "validation_error"


def test_comments_are_created_with_mentions_and_listed_by_page(sim: Sim) -> None:
    page = sim.notion.pages.create(
        parent={"page_id": ROOT}, properties={"title": {"title": text("Alert")}}
    )
    person = next(u for u in sim.notion.users.list()["results"] if u["type"] == "person")

    comment = sim.notion.comments.create(
        parent={"page_id": page["id"]},
        rich_text=[
            {"type": "mention", "mention": {"type": "user", "user": {"id": person["id"]}}},
            *text(" the sync failed for gh-1234"),
        ],
    )
    reply = sim.notion.comments.create(discussion_id=comment["discussion_id"], rich_text=text("ok"))
    listed = sim.notion.comments.list(block_id=page["id"])

    assert comment["object"] == "comment"
    assert comment["parent"] == {"type": "page_id", "page_id": page["id"]}
    assert comment["rich_text"][0]["mention"]["user"]["id"] == person["id"]
    assert reply["discussion_id"] == comment["discussion_id"]
    assert [c["id"] for c in listed["results"]] == [comment["id"], reply["id"]]
    assert listed["type"] == "comment"


def test_users_me_is_the_integration_bot(sim: Sim) -> None:
    me = sim.notion.users.me()
    users = sim.notion.users.list()

    assert me["object"] == "user"
    assert me["type"] == "bot"
    assert me["id"] in [u["id"] for u in users["results"]]


def test_the_root_page_is_a_workspace_level_page(sim: Sim) -> None:
    root = sim.notion.pages.retrieve(ROOT)

    assert root["parent"] == {"type": "workspace", "workspace": True}
    assert root["properties"]["title"]["title"][0]["plain_text"] == "Promotion Ledger"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_config_loads_from_yaml_with_faults(tmp_path: Path) -> None:
    path = tmp_path / "notion-sim.yaml"
    path.write_text(
        "token: secret_x\nroot_page_id: 2b7f0c3e51a44c1e9d1e6f1f0a3b9c11\n"
        "faults:\n  - {kind: rate_limited, retry_after: 3, times: 1}\n"
    )

    config = NotionSimConfig.from_yaml(path)

    assert config.token == "secret_x"
    assert config.root_page_id == ROOT
    assert config.faults == [NotionFault(kind="rate_limited", retry_after=3, times=1)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("faults:\n  - {kind: meltdown}\n", "faults[0]: kind must be one of"),
        ("faults:\n  - {kind: server_error, status: 418}\n", "faults[0]: status must be one of"),
        ("colour: blue\n", "unknown fields ['colour']"),
        ("root_page_id: not-a-uuid\n", "is not a UUID"),
    ],
)
def test_config_errors_say_what_and_where(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "notion-sim.yaml"
    path.write_text(body)

    with pytest.raises(NotionSimConfigError) as caught:
        NotionSimConfig.from_yaml(path)

    assert message in str(caught.value)


def test_the_default_root_page_id_is_a_uuid() -> None:
    assert NotionSimConfig().root_page_id == DEFAULT_ROOT_PAGE_ID
    assert copy.copy(NotionSimConfig(root_page_id=ROOT.replace("-", ""))).root_page_id == ROOT
