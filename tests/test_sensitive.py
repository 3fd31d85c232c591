"""The sensitive-info detector's pre-checks only ever skip patterns that could not match."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

import ledger.sensitive as sensitive
from ledger.sensitive import detect_sensitive

# Pieces that make (or nearly make) every kind of finding, and the characters (?i) folds.
_PIECES = st.sampled_from(
    [
        "sk-or-v1-",
        "sk-ant-",
        "sk-proj-",
        "secret_",
        "ntn_",
        "https://hooks.slack.com/services/",
        "xoxb-",
        "ghp_",
        "github_pat_",
        "AKIA",
        "api_key=",
        "\u017fecret: ",
        "KEY ",
        "credent\u0131als=",
        "Bearer ",
        "passwd=",
        "+1 ",
        "@",
        "::",
        "192.168.",
        "4111 1111 1111 1111",
        "078-05-1120",
        "(415) 555-0100",
        "a.b@example.com",
        " ",
        "-",
        ".",
    ]
)
_TEXT = st.lists(
    st.one_of(_PIECES, st.text(alphabet="AbXz0123456789Ǻ", min_size=1, max_size=30)),
    max_size=12,
).map("".join)


CHECKED = sensitive._DETECTORS
UNCHECKED = tuple(dataclasses.replace(d, needs_any=(), needs_digit=False) for d in CHECKED)


@given(text=_TEXT)
def test_pre_checks_change_no_finding(text: str) -> None:
    found = detect_sensitive(text)
    sensitive._DETECTORS = UNCHECKED  # every pattern run on every text
    try:
        assert detect_sensitive(text) == found
    finally:
        sensitive._DETECTORS = CHECKED


def test_pre_checks_see_folded_credential_words() -> None:
    # (?i) reads the long s as s and the Kelvin sign as k: so does the pre-check.
    text = "\u017fecret: Xk29vLq8Zp3mW7tR4yB6nC1d and \u212aey = Qw8Er7Ty6Ui5Op4As3Df2"
    kinds = [finding.kind for finding in detect_sensitive(text)]
    assert kinds == ["generic_secret", "generic_secret"]
