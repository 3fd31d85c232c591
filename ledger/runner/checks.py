"""Output gates: a behavior's own output checks and the built-in sensitive-info gate.

Pure: no I/O, no clock. ``run_checks`` turns one run's output into ``output_check`` and
``sensitive_info`` gate results; the detector behind the latter (``ledger.sensitive``) reports
findings only as masked previews, because evidence is stored in the database and mirrored to
Notion. (The behavior's own ``must_match`` patterns are its author's business.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

from ledger.gates import ATTRIBUTABLE, Gate, GateResult, Outcome
from ledger.sensitive import KIND_LABELS, detect_sensitive, redact_sensitive

__all__ = ["CheckSpec", "run_checks"]

SensitiveAction = Literal["warn", "block"]
FailureOutcome = Literal["warn", "fail"]

# How many findings / schema errors one gate result lists (the count is always complete).
MAX_LISTED = 20
# Evidence strings are clipped to this many characters.
MAX_EVIDENCE_CHARS = 300


# --------------------------------------------------------------------------------------------
# The check specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """A behavior's output checks (the ``checks:`` block of its file).

    Construction validates the parts that can be wrong on their own: every regex compiles, the
    JSON schema is a valid schema, ``max_chars`` is positive. A problem raises ``ValueError``
    whose message starts with the field name (``must_match[1]: …``), so the behavior-file
    loader can locate it.
    """

    json_schema: Mapping[str, Any] | None = None
    max_chars: int | None = None
    must_match: tuple[str, ...] = ()
    must_not_match: tuple[str, ...] = ()
    sensitive_info: SensitiveAction = "warn"
    outcome_on_failure: FailureOutcome = "warn"

    def __post_init__(self) -> None:
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError(f"max_chars: must be a positive integer, got {self.max_chars}")
        for name in ("must_match", "must_not_match"):
            for index, pattern in enumerate(getattr(self, name)):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(
                        f"{name}[{index}]: invalid regular expression {pattern!r}: {exc}"
                    ) from exc
        if self.sensitive_info not in ("warn", "block"):
            raise ValueError(f"sensitive_info: must be warn or block, got {self.sensitive_info!r}")
        if self.outcome_on_failure not in ("warn", "fail"):
            raise ValueError(
                f"outcome_on_failure: must be warn or fail, got {self.outcome_on_failure!r}"
            )
        if self.json_schema is not None:
            schema = dict(self.json_schema)
            try:
                validator_for(schema, default=Draft202012Validator).check_schema(schema)
            except SchemaError as exc:
                raise ValueError(
                    f"json_schema: invalid JSON Schema at {_json_path(exc.absolute_path)}: "
                    f"{exc.message}"
                ) from exc

    @property
    def configured(self) -> list[str]:
        """Names of the output checks this spec runs (sensitive-info detection always runs)."""
        names = []
        if self.json_schema is not None:
            names.append("json_schema")
        if self.max_chars is not None:
            names.append("max_chars")
        names += [f"must_match[{i}]" for i in range(len(self.must_match))]
        names += [f"must_not_match[{i}]" for i in range(len(self.must_not_match))]
        return names


# --------------------------------------------------------------------------------------------
# Running the checks
# --------------------------------------------------------------------------------------------


def run_checks(output: str, spec: CheckSpec) -> list[GateResult]:
    """Run ``spec`` and the sensitive-info detector on one run's output.

    Returns the ``output_check`` results first — one per failed check (outcome
    ``spec.outcome_on_failure``), or a single PASS when every check passed (also when none is
    configured) — then exactly one ``sensitive_info`` result: PASS when nothing was found, WARN
    when something was (``sensitive_info: warn``), FAIL when ``sensitive_info: block``.
    """
    failure = Outcome(spec.outcome_on_failure)
    attributable = ATTRIBUTABLE[Gate.OUTPUT_CHECK]
    failures = [
        GateResult(Gate.OUTPUT_CHECK, failure, attributable, evidence)
        for evidence in _failed_checks(output, spec)
    ]
    results = failures or [
        GateResult(Gate.OUTPUT_CHECK, Outcome.PASS, attributable, {"checks": spec.configured})
    ]
    results.append(_sensitive_result(output, spec.sensitive_info))
    return results


def _failed_checks(output: str, spec: CheckSpec) -> Iterator[dict[str, Any]]:
    if spec.json_schema is not None:
        failed = _check_json_schema(output, spec.json_schema)
        if failed is not None:
            yield failed
    if spec.max_chars is not None and len(output) > spec.max_chars:
        yield {
            "check": "max_chars",
            "reason": f"output is {len(output)} characters, over the limit of {spec.max_chars}",
            "limit": spec.max_chars,
            "actual": len(output),
        }
    for index, pattern in enumerate(spec.must_match):
        if re.search(pattern, output) is None:
            yield {
                "check": f"must_match[{index}]",
                "reason": "a required pattern was not found in the output",
                "pattern": pattern,
            }
    for index, pattern in enumerate(spec.must_not_match):
        match = re.search(pattern, output)
        if match is not None:
            yield {
                "check": f"must_not_match[{index}]",
                "reason": "a forbidden pattern matched the output",
                "pattern": pattern,
                "start": match.start(),
                "end": match.end(),
                "match": _clip(redact_sensitive(match.group(0)), 80),
            }


def _check_json_schema(output: str, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        document = json.loads(output)
    except json.JSONDecodeError as exc:
        return {
            "check": "json_schema",
            "reason": f"output is not valid JSON: {exc.msg} at line {exc.lineno}:{exc.colno}",
            "line": exc.lineno,
            "column": exc.colno,
        }
    schema_dict = dict(schema)
    cls = validator_for(schema_dict, default=Draft202012Validator)
    validator = cls(schema_dict, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    if not errors:
        return None
    listed = [
        {
            "path": _json_path(error.absolute_path),
            "keyword": str(error.validator),
            # Messages quote the offending value: mask anything sensitive before storing it.
            "message": _clip(redact_sensitive(error.message), MAX_EVIDENCE_CHARS),
        }
        for error in errors[:MAX_LISTED]
    ]
    first = listed[0]
    return {
        "check": "json_schema",
        "reason": f"output does not match the JSON schema at {first['path']}: {first['message']}",
        "error_count": len(errors),
        "errors": listed,
    }


def _json_path(parts: Iterable[str | int]) -> str:
    """``$.items[0].name`` for a jsonschema error path (``$`` alone for the document root)."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _sensitive_result(output: str, action: SensitiveAction) -> GateResult:
    attributable = ATTRIBUTABLE[Gate.SENSITIVE_INFO]
    findings = detect_sensitive(output)
    if not findings:
        return GateResult(Gate.SENSITIVE_INFO, Outcome.PASS, attributable, {"count": 0})
    kinds = sorted({f.kind for f in findings})
    evidence: dict[str, Any] = {
        "source": "daemon detector",
        "action": "blocked" if action == "block" else "flagged",
        "reason": "the output contains " + ", ".join(KIND_LABELS[k] for k in kinds),
        "count": len(findings),
        "kinds": kinds,
        "findings": [f.as_evidence() for f in findings[:MAX_LISTED]],
    }
    outcome = Outcome.FAIL if action == "block" else Outcome.WARN
    return GateResult(Gate.SENSITIVE_INFO, outcome, attributable, evidence)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
