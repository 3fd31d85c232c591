"""Behavior files: every validation rule reports file, line, column and field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from ledger.behaviors.load import load_directory, load_file
from ledger.behaviors.schema import Behavior, behavior_json_schema
from ledger.gates import Tier
from tests.factories import write_behavior

REPO = Path(__file__).resolve().parents[2]


def problems_of(tmp_path: Path, body: str, name: str = "b") -> list[str]:
    path = write_behavior(tmp_path, name, body)
    loaded, problems = load_file(path)
    assert loaded is None, "expected the file to be invalid"
    return [p.render().removeprefix(str(path) + ":") for p in problems]


BASE = """\
schedule: 15m
preset: seo-audit
api_key: env:KEY_B
prompt: hello
"""


def test_shipped_examples_are_valid() -> None:
    report = load_directory(REPO / "behaviors")
    assert report.problems == []
    assert {b.name for b in report.behaviors} == {
        "seo-audit-weekly",
        "content-digest",
        "quick-digest",
    }


def test_minimal_file_gets_defaults_and_name_from_stem(tmp_path: Path) -> None:
    loaded, problems = load_file(write_behavior(tmp_path, "my-job", BASE))
    assert problems == []
    assert loaded is not None
    b = loaded.behavior
    assert b.name == "my-job"
    assert b.start_tier == "A"
    assert b.max_tier is Tier.C
    assert b.timeout_seconds == 30
    assert b.action.type == "log"
    assert len(loaded.definition_hash) == 64


def test_an_invalid_file_name_is_reported_once_as_the_name_field(tmp_path: Path) -> None:
    assert problems_of(tmp_path, BASE, name="Bad_Name") == [
        "1:1: name: the file name 'Bad_Name' is not a valid behavior name (lowercase slug); "
        "rename the file or set name:"
    ]


def test_an_invalid_name_field_is_reported_once_at_its_line(tmp_path: Path) -> None:
    # The file name is not checked when name: is given: only the field is.
    assert problems_of(tmp_path, "name: Bad_Name\n" + BASE, name="Bad_Name") == [
        "1:7: name: must be a lowercase slug: letters a-z, digits and '-', starting with a letter "
        "or digit, at most 63 characters"
    ]


def test_literal_openrouter_key_in_api_key_is_refused_with_its_line(tmp_path: Path) -> None:
    body = BASE.replace("env:KEY_B", "sk-or-v1-" + "a1" * 32)
    assert problems_of(tmp_path, body) == [
        "3:10: api_key: this looks like an OpenRouter API key; never put a secret in a behavior "
        "file — store it in an environment variable or a file and reference it as env:NAME or "
        "file:PATH"
    ]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("secret_" + "A1b2" * 10, "a Notion integration token"),
        ("xoxb-1234567890-abcdefghij", "a Slack token"),
        ("https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXX", "a Slack webhook URL"),
        ("ghp_" + "a" * 36, "a GitHub token"),
    ],
)
def test_literal_secret_anywhere_is_refused(tmp_path: Path, value: str, kind: str) -> None:
    body = BASE + f"inputs:\n  token: {value}\n"
    problems = problems_of(tmp_path, body)
    assert len(problems) == 1
    assert problems[0].startswith("6:10: inputs.token: this looks like " + kind)


def test_generic_token_where_a_reference_is_expected_is_refused(tmp_path: Path) -> None:
    body = BASE.replace("env:KEY_B", "abcdef0123456789abcdef0123456789abcd")
    (problem,) = problems_of(tmp_path, body)
    assert problem.startswith("3:10: api_key: this looks like a literal key or token")


def test_api_key_that_is_not_a_reference_is_refused(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE.replace("env:KEY_B", "my key"))
    assert problem == "3:10: api_key: api_key must be a secret reference: env:NAME or file:PATH"


def test_invalid_preset_slug(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE.replace("seo-audit", "SEO Audit!"))
    assert problem.startswith("2:9: preset: 'SEO Audit!' is not a valid preset slug")


def test_per_tier_preset_mapping_and_lookup(tmp_path: Path) -> None:
    body = BASE.replace("preset: seo-audit", "preset:\n  A: loose\n  C: '@preset/strict'")
    loaded, problems = load_file(write_behavior(tmp_path, "b", body))
    assert problems == [] and loaded is not None
    b = loaded.behavior
    assert [b.preset_for(t) for t in Tier] == ["loose", "loose", "strict"]


def test_cron_that_never_fires(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE.replace("15m", '"0 0 30 2 *"'))
    assert problem == "1:11: schedule: this cron expression never fires (e.g. 30 February)"


def test_malformed_cron(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE.replace("15m", '"61 * * * *"'))
    assert problem.startswith("1:11: schedule: invalid cron expression")


def test_bad_yaml_reports_line_and_column(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "schedule: 15m\npreset: [unclosed\napi_key: env:X\n")
    assert problem.startswith("3:8: yaml: invalid YAML")


def test_unknown_field_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE + "promtion: auto\n")
    assert problem == "5:1: promtion: unknown field 'promtion' (did you mean 'promotion'?)"


def test_nested_unknown_field(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE + "budget:\n  usd: 3\n  rest: day\n")
    assert problem == "7:3: budget.rest: unknown field 'rest' (did you mean 'reset'?)"


def test_missing_required_field(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "schedule: 15m\napi_key: env:X\nprompt: hi\n")
    assert problem == "1:1: preset: required field is missing"


def test_start_tier_c_is_not_allowed(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE + "start_tier: C\n")
    assert problem.startswith("5:13: start_tier: Input should be 'A' or 'B'")


def test_prompt_variable_without_input(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE.replace("hello", "hello {site}"))
    assert problem.startswith("4:9: prompt: uses {site} but inputs has no 'site'")


def test_prompt_file_missing(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE.replace("prompt: hello", "prompt_file: nope.txt"))
    assert problem.startswith("4:14: prompt_file: cannot read")


def test_prompt_file_contents_feed_the_definition_hash(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("first")
    path = write_behavior(tmp_path, "b", BASE.replace("prompt: hello", "prompt_file: p.txt"))
    first, _ = load_file(path)
    (tmp_path / "p.txt").write_text("second")
    second, _ = load_file(path)
    assert first is not None and second is not None
    assert second.prompt_text == "second"
    assert first.definition_hash != second.definition_hash


def test_a_shared_name_key_and_key_name_refuse_the_later_file_naming_the_first(
    tmp_path: Path,
) -> None:
    """Fresh start (nothing registered): the first file by name keeps what it uses."""
    write_behavior(tmp_path, "one", BASE.replace("prompt", "name: same\nkey_name: k\nprompt"))
    write_behavior(tmp_path, "two", BASE.replace("prompt", "name: same\nkey_name: k\nprompt"))
    report = load_directory(tmp_path)
    rendered = [p.render().split("/")[-1] for p in report.problems]
    assert rendered == [
        "two.yaml:3:10: api_key: api_key reference 'env:KEY_B' is already used by one.yaml, "
        "which keeps it (first by file name): one behavior = one key, so create an OpenRouter "
        "key for it",
        "two.yaml:4:7: name: behavior name 'same' is already used by one.yaml, which keeps it "
        "(first by file name): rename this behavior (name:, or the file name)",
        "two.yaml:5:11: key_name: key_name 'k' is already used by one.yaml, which keeps it "
        "(first by file name): each key has its own name: write the name of this behavior's key",
    ]
    assert [lb.path.name for lb in report.behaviors] == ["one.yaml"]


def test_the_registered_holder_of_a_key_keeps_it_and_the_new_file_is_refused(
    tmp_path: Path,
) -> None:
    write_behavior(tmp_path, "a-new", BASE)
    write_behavior(tmp_path, "z-old", BASE)
    report = load_directory(tmp_path, holders={("api_key", "env:KEY_B"): "z-old.yaml"})
    assert [lb.name for lb in report.behaviors] == ["z-old"]
    assert [p.render().split("/")[-1] for p in report.problems] == [
        "a-new.yaml:3:10: api_key: api_key reference 'env:KEY_B' is already used by "
        "z-old.yaml, which keeps it (registered with it): one behavior = one key, so create an "
        "OpenRouter key for it"
    ]


def test_a_valid_file_keeps_a_key_an_invalid_file_also_uses(tmp_path: Path) -> None:
    write_behavior(tmp_path, "a-broken", BASE.replace("15m", "every day"))
    write_behavior(tmp_path, "b-good", BASE)
    report = load_directory(tmp_path)
    assert [lb.name for lb in report.behaviors] == ["b-good"]
    assert {(Path(p.path).name, p.field) for p in report.problems} == {
        ("a-broken.yaml", "schedule"),
        ("a-broken.yaml", "api_key"),
    }
    assert "(a valid file goes before an invalid one)" in report.problems[1].message


def test_one_pass_reports_schedule_timeout_missing_input_and_shared_key_together(
    tmp_path: Path,
) -> None:
    write_behavior(
        tmp_path,
        "audit",
        'schedule: "0 6 * * 8"\npreset: p\napi_key: env:KEY_B\nprompt: "Review {site}"\n'
        "timeout: slow\n",
    )
    write_behavior(tmp_path, "digest", BASE)
    report = load_directory(tmp_path)
    assert [(p.line, p.field) for p in report.problems] == [
        (1, "schedule"),
        (3, "api_key"),
        (4, "prompt"),
        (5, "timeout"),
    ]
    assert "uses {site} but inputs has no 'site'" in report.problems[2].message
    assert [lb.name for lb in report.behaviors] == ["digest"]


def test_prompt_file_and_inputs_are_checked_even_when_the_schema_fails(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("Hello {who}")
    assert problems_of(
        tmp_path, "schedule: nope\npreset: p\napi_key: env:K\nprompt_file: p.txt\n"
    ) == [
        "1:11: schedule: must be a 5-field cron expression (minute hour day-of-month month "
        "day-of-week, e.g. '0 6 * * 1' for Mondays at 06:00) or an interval like 15m, 6h, 1d",
        "4:14: prompt_file: uses {who} but inputs has no 'who' (built-ins: behavior, date, "
        "now, run_id, tier)",
    ]


def test_timeout_error_lists_every_accepted_form(tmp_path: Path) -> None:
    accepted = (
        "write fast (30 s), reasoning (120 s), multi_agent (600 s), or a number of seconds "
        "between 0 and 3600 (e.g. 45)"
    )
    assert problems_of(tmp_path, BASE + "timeout: slow\n") == [
        f"5:10: timeout: 'slow' is not a timeout: {accepted}"
    ]
    assert problems_of(tmp_path, BASE + "timeout: 7200\n") == [
        f"5:10: timeout: 7200 is not a timeout: {accepted}"
    ]
    loaded, _ = load_file(write_behavior(tmp_path, "ok", BASE + "timeout: 45\n"))
    assert loaded is not None and loaded.behavior.timeout_seconds == 45.0


def test_missing_folder_is_one_clear_line_not_a_file_problem(tmp_path: Path) -> None:
    report = load_directory(tmp_path / "behaviors")
    assert report.problems == [] and report.files_seen == []
    assert report.folder_error == (
        f"behaviors folder {tmp_path}/behaviors not found: create it or set LEDGER_BEHAVIORS_DIR"
    )


def test_every_problem_of_a_dozen_broken_files_is_reported(tmp_path: Path) -> None:
    broken = {
        "a": BASE.replace("env:KEY_B", "sk-or-v1-" + "f" * 64),
        "b": BASE + "bogus: 1\n",
        "c": BASE.replace("15m", "every day"),
        "d": BASE.replace("seo-audit", "Bad Slug"),
        "e": "schedule: [\n",
        "f": BASE.replace("15m", '"0 0 31 4 *"'),
        "g": BASE + "timeout: glacial\n",
        "h": BASE + "budget:\n  usd: -1\n",
        "i": BASE + "action:\n  type: webhook\n",
        "j": BASE + "checks:\n  must_match: ['(unclosed']\n",
        "k": BASE + "max_tier: Z\n",
        "l": BASE.replace("prompt: hello", "prompt: hi {x}"),
    }
    for name, body in broken.items():
        write_behavior(tmp_path, name, body.replace("KEY_B", f"KEY_{name.upper()}"))
    report = load_directory(tmp_path)
    assert report.behaviors == []
    by_file = report.problems_by_path()
    assert sorted(Path(p).stem for p in by_file) == sorted(broken)
    for problems in by_file.values():
        for p in problems:
            assert p.line >= 1 and p.column >= 1 and p.field and p.message


def test_json_schema_describes_the_file() -> None:
    schema = behavior_json_schema()
    assert "name" not in schema["required"]
    assert {"schedule", "api_key"} <= set(schema["required"])
    # preset is required for kind single (the default); the other kinds need their section.
    single, roundtable, canvas = schema["allOf"]
    assert single["then"] == {"required": ["preset"]}
    assert roundtable["then"] == {"required": ["roundtable"]}
    assert canvas["then"] == {"required": ["canvas"]}
    assert schema["additionalProperties"] is False
    assert "budget" in schema["properties"]


def test_interval_and_cron_next_fire() -> None:
    from datetime import UTC, datetime

    b = Behavior.model_validate(
        {
            "name": "x",
            "schedule": "0 6 * * 1",
            "timezone": "Europe/Paris",
            "preset": "p",
            "api_key": "env:K",
            "prompt": "p",
        }
    )
    nxt = b.next_fire_after(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    assert nxt == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    every = b.model_copy(update={"schedule": "15m"})
    assert every.next_fire_after(datetime(2026, 11, 25, 12, 7, tzinfo=UTC)) == datetime(
        2026, 11, 25, 12, 15, tzinfo=UTC
    )


def test_duplicate_keys_are_reported_not_silently_overwritten(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, BASE + "prompt: again\n")
    assert problem == "5:1: prompt: duplicate key 'prompt' (first given on line 4)"


def test_yaml_1_2_booleans_keep_on_and_no_as_strings(tmp_path: Path) -> None:
    body = BASE + "alerts:\n  on: [demotion, promotion]\ninputs:\n  answer: no\n"
    loaded, problems = load_file(write_behavior(tmp_path, "b", body))
    assert problems == [] and loaded is not None
    assert loaded.behavior.alerts is not None
    assert loaded.behavior.alerts.on == ["demotion", "promotion"]
    assert loaded.behavior.inputs == {"answer": "no"}


def test_cost_anomaly_thresholds_are_checked_with_their_line(tmp_path: Path) -> None:
    block = "checks:\n  cost_anomaly:\n"
    assert problems_of(tmp_path, BASE + block + "    factor: 1\n") == [
        "7:13: checks.cost_anomaly.factor: Input should be greater than 1"
    ]
    assert problems_of(tmp_path, BASE + block + "    window_runs: 10\n    min_runs: 11\n") == [
        "8:15: checks.cost_anomaly.min_runs: must not exceed window_runs (10), got 11"
    ]
    assert problems_of(tmp_path, BASE + block + "    window_runs: 101\n") == [
        "7:18: checks.cost_anomaly.window_runs: Input should be less than or equal to 100"
    ]
    (problem,) = problems_of(tmp_path, BASE + block + "    facter: 3\n")
    assert problem == (
        "7:5: checks.cost_anomaly.facter: unknown field 'facter' (did you mean 'factor'?)"
    )


def test_default_cost_anomaly_thresholds_leave_the_definition_hash_as_it_was(
    tmp_path: Path,
) -> None:
    """Upgrading to a version with ``checks.cost_anomaly`` is not an edit of every behavior;
    setting it in a file is."""
    loaded, _ = load_file(write_behavior(tmp_path, "b", BASE))
    assert loaded is not None
    dump = loaded.behavior.model_dump(mode="json")
    del dump["checks"]["cost_anomaly"]
    before = orjson.dumps({"behavior": dump, "prompt": "hello"}, option=orjson.OPT_SORT_KEYS)
    assert loaded.definition_hash == hashlib.sha256(before).hexdigest()
    tuned, _ = load_file(
        write_behavior(tmp_path, "b", BASE + "checks:\n  cost_anomaly:\n    factor: 8\n")
    )
    assert tuned is not None and tuned.definition_hash != loaded.definition_hash
    assert tuned.behavior.checks.cost_anomaly.factor == 8
