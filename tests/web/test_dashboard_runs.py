"""A run's dashboard page over plain HTTP against a real ``ledger serve``, for runs made by the
real multi-model runner against the OpenRouter simulator: a roundtable's rounds side by side
under its synthesis and confidence, a canvas's answers as a table under its summary — and for
a single call the daemon made itself; model output (untrusted) escaped everywhere."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.session import Database
from ledger.runner.multi import MultiModelRunner
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.scheduler import RunnerService
from ledger.sim.openrouter import (
    Fault,
    ModelInfo,
    Preset,
    SimConfig,
    SimKey,
    run_in_background,
    run_in_thread,
)
from ledger.transitions import PolicyContext, lock_behavior
from tests.conftest import T0, VALID_BEHAVIOR
from tests.daemon import Daemon, ledger

KEY = "sk-or-v1-runpage" + "cd" * 20  # the roundtable's
CANVAS_KEY = "sk-or-v1-runpage" + "ef" * 20
SOLO_KEY = "sk-or-v1-runpage" + "01" * 20
OPS = "runpage-ops-" + "4" * 30
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PANEL = ["@preset/evil", "anthropic/claude-haiku-4.5", "google/gemini-2.5-flash"]
EVIL = "<script>alert('panel')</script> **recommend** waiting"
CANVAS = [
    "openai/gpt-4o-mini",
    "anthropic/claude-haiku-4.5",
    "google/gemini-2.5-flash",
    "vendor9/gone",
    "vendor8/locked",
]

ROUNDTABLE = f"""schedule: "0 0 1 1 *"
kind: roundtable
api_key: env:RUNPAGE_TEST_KEY
key_name: ledger/table
prompt: Should we migrate billing to the new queue this quarter?
max_output_tokens: 80
roundtable:
  panel: {json.dumps(PANEL)}
  synthesis: "@preset/synth"
"""

BROAD_CANVAS = f"""schedule: "0 0 1 1 *"
kind: broad_canvas
api_key: env:RUNPAGE_CANVAS_KEY
key_name: ledger/canvas
prompt: Name one risk of queues
max_output_tokens: 60
canvas:
  models: {json.dumps(CANVAS)}
"""


def solo_sim() -> SimConfig:
    """For the daemon's own single-call runs."""
    answer = "# Hello\n\n<script>alert('solo')</script> <img src=x onerror=alert(2)> *world*"
    return SimConfig(
        presets={"test-preset": Preset(model="openai/gpt-4o-mini", output=answer)},
        keys=[SimKey(key=SOLO_KEY, name="solo-key")],
    )


def table_sim() -> SimConfig:
    synthesis = {
        "consensus": ["<script>alert('synth')</script>migrate in two steps"],
        "disagreements": ["whether to keep the old queue as a fallback"],
        "confidence": "low",
        "next_steps": ["dry-run the migration on staging"],
    }
    return SimConfig(
        presets={
            "synth": Preset(model="openai/gpt-4o", output=json.dumps(synthesis)),
            "evil": Preset(model="mistral/evil-7b", output=EVIL),
        },
        keys=[SimKey(key=KEY, name="ledger/table")],
        models={m: ModelInfo() for m in PANEL[1:]},
    )


def canvas_sim() -> SimConfig:
    return SimConfig(
        keys=[
            SimKey(key=CANVAS_KEY, name="ledger/canvas", output="<script>alert('canvas')</script>")
        ],
        models={m: ModelInfo(output_price=0.00001 * (i + 1)) for i, m in enumerate(CANVAS)},
        faults=[
            Fault.from_mapping({"kind": "model_not_found", "for_model": "vendor9/gone"}),
            Fault.from_mapping({"kind": "model_forbidden", "for_model": "vendor8/locked"}),
        ],
    )


async def run_with(db: Database, sim: SimConfig, name: str) -> str:
    async with run_in_background(sim) as url:
        client = OpenRouterClient(
            base_url=url, base_backoff=0.01, max_backoff=0.02, rng=random.Random(1)
        )
        try:
            multi = MultiModelRunner(db, SystemClock(), client, None, base_url=url)
            run_id = await RunnerService(db, SystemClock(), multi.run, PolicyContext()).run_now(
                name
            )
        finally:
            await client.aclose()
    assert run_id is not None
    return run_id


def login(client: httpx.Client, token: str) -> None:
    form = client.get("/login")
    match = CSRF.search(form.text)
    assert match, form.text
    done = client.post("/login", data={"token": token, "csrf_token": match.group(1)})
    assert done.status_code == 303, done.text


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def no_markup_from_models(html: str) -> None:
    """The page's elements are the dashboard's own: one script (its file), no image, no event
    handler attribute; the models' ``<script>`` and ``<img onerror>`` are text."""
    parser = Tags()
    parser.feed(html)
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"src": "/static/dashboard/app.js", "defer": None}]
    assert not [tag for tag, _ in parser.tags if tag in ("img", "iframe", "object")]
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]


async def test_a_run_page_shows_a_roundtables_rounds_and_a_canvass_answers_escaped(
    db: Database,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_daemon: Callable[..., Daemon],
) -> None:
    monkeypatch.setenv("RUNPAGE_TEST_KEY", KEY)
    monkeypatch.setenv("RUNPAGE_CANVAS_KEY", CANVAS_KEY)
    folder = tmp_path / "behaviors"
    folder.mkdir()
    (folder / "table.yaml").write_text(ROUNDTABLE)
    (folder / "canvas.yaml").write_text(BROAD_CANVAS)
    solo = VALID_BEHAVIOR.format(key_env="RUNPAGE_SOLO_KEY", name="solo")
    (folder / "solo.yaml").write_text(solo.replace("schedule: 15m", 'schedule: "0 0 1 1 *"'))
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
        lock_behavior(session, name="table").tier = "C"
    table_id = await run_with(db, table_sim(), "table")
    canvas_id = await run_with(db, canvas_sim(), "canvas")

    created = ledger(
        "token", "create", "auditor", "--role", "viewer", cwd=tmp_path,
        env={"LEDGER_DATABASE_URL": database_url},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = next(word for word in created.stdout.split() if word.startswith("ldg_"))
    with run_in_thread(solo_sim()) as sim_url:  # the daemon's own single-call run
        daemon = start_daemon(
            database_url,
            {
                "RUNPAGE_TEST_KEY": KEY,
                "RUNPAGE_CANVAS_KEY": CANVAS_KEY,
                "RUNPAGE_SOLO_KEY": SOLO_KEY,
                "LEDGER_OPENROUTER_BASE_URL": sim_url,
                "LEDGER_API_TOKENS": '{"ops": "env:RUNPAGE_OPS"}',
                "RUNPAGE_OPS": OPS,
            },
        )
        ran = httpx.post(
            f"{daemon.base_url}/api/behaviors/solo/run",
            params={"wait": 30},
            headers={"Authorization": f"Bearer {OPS}"},
            timeout=60,
        )
        assert ran.status_code == 200, ran.text
        solo_id = ran.json()["run"]["id"]
    with httpx.Client(base_url=daemon.base_url, timeout=30) as browser:
        first = browser.get(f"/runs/{table_id}")
        assert first.headers["location"] == f"/login?next=/runs/{table_id}"
        login(browser, token)

        # The roundtable: synthesis and confidence on top, then one column per panel model.
        page = browser.get(f"/runs/{table_id}")
        assert page.status_code == 200, page.text
        html = page.text
        assert "token:auditor · viewer" in html
        no_markup_from_models(html)
        assert "&lt;script&gt;alert(&#39;synth&#39;)&lt;/script&gt;migrate in two steps" in html
        assert '<span class="confidence confidence-low" id="confidence">low</span>' in html
        assert "Downgraded to an approval request at tier C" in html
        assert "decide in the approvals queue" in html
        assert html.index('id="synthesis"') < html.index('id="rounds"')
        rounds = html[html.index('id="rounds"') : html.index("</table>", html.index('id="rounds"'))]
        header = re.findall(r'<th scope="col">([^<]*)</th>', rounds)
        assert header == ["Round", *PANEL]
        assert re.findall(r'<th scope="row">(\d)', rounds) == ["1", "2"]
        assert rounds.count("&lt;script&gt;alert('panel')&lt;/script&gt;") == 2
        assert "<strong>recommend</strong> waiting" in rounds  # Markdown rendered, HTML not
        moved = r"(?:<strong>)?(changed|held)(?:</strong>)? · shift (\d\.\d\d)"
        deference = re.findall(moved, rounds)
        assert len(deference) == 3
        assert deference[0] == ("held", "0.00")  # the preset's fixed answer never moves
        assert "Synthesis by @preset/synth" in html
        assert "provider_error" not in html  # every call answered
        assert "Gate results" in html

        # The canvas: the summary on top, then one row per model with its status and numbers.
        page = browser.get(f"/runs/{canvas_id}")
        assert page.status_code == 200, page.text
        html = page.text
        no_markup_from_models(html)
        assert "<strong>3</strong> of 5 models answered; <strong>2</strong> failed" in html
        assert "forbidden x1, unknown_model x1" in html
        assert html.index('id="canvas-summary"') < html.index('id="canvas"')
        assert len(re.findall(r"<li>[^<]*: \$0\.\d+ \(\d+% of the total\)</li>", html)) == 3
        table = html[html.index('id="canvas"') : html.index("</table>", html.index('id="canvas"'))]
        rows = re.findall(r"<tr>\s*<td>([^<]+)</td>\s*<td>(.*?)</td>", table, re.S)
        status = {model: re.sub(r"<[^>]+>", "", cell) for model, cell in rows}
        assert sorted(status) == sorted(CANVAS)
        assert all(status[m] == "answered" for m in CANVAS[:3])
        assert status["vendor9/gone"].startswith("failed · unknown_model")
        assert status["vendor8/locked"].startswith("failed · forbidden")
        assert table.count("&lt;script&gt;alert('canvas')&lt;/script&gt;") == 3
        assert table.count(" in · ") == 3  # tokens of each answer
        assert "provider_error: fail" in html and "2 of 5 canvas models failed" in html

        # Linked from the behavior's runs table and the approvals queue; an unknown run is a 404.
        assert f'href="/runs/{canvas_id}"' in browser.get("/behaviors/canvas").text
        assert f'href="/runs/{table_id}"' in browser.get("/approvals").text
        missing = browser.get("/runs/run-nope<b>")
        assert missing.status_code == 404
        assert "does not exist" in missing.text and "<b>" not in missing.text

        # A single call: its output as Markdown, with the HTML in it shown as text.
        page = browser.get(f"/runs/{solo_id}")
        assert page.status_code == 200, page.text
        html = page.text
        no_markup_from_models(html)
        output = html[html.index('id="output"') : html.index("</div>", html.index('id="output"'))]
        assert "<h1>Hello</h1>" in output and "<em>world</em>" in output
        assert "&lt;script&gt;alert('solo')&lt;/script&gt;" in output
        assert "&lt;img src=x onerror=alert(2)&gt;" in output and "<img" not in html
        assert "openai/gpt-4o-mini" in html and "(preset test-preset)" in html
        assert 'id="rounds"' not in html and 'id="canvas"' not in html
        assert f'href="/runs/{solo_id}"' in browser.get("/behaviors/solo").text
