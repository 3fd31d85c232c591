"""The shared model of OTLP decoding: the flat ``SpanRecord``s the decoders produce, the limits
they enforce, and ``Bad``, the located refusal they raise on the way up."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from ledger.errors import IngestError

# An attribute value, flattened from OTLP ``AnyValue``: an empty AnyValue is None, ``bytesValue``
# is bytes, ``arrayValue`` a list, ``kvlistValue`` a dict.
AttrValue: TypeAlias = (
    "str | bool | int | float | bytes | list[AttrValue] | dict[str, AttrValue] | None"
)
Attributes: TypeAlias = dict[str, AttrValue]

CONNECTION_TEST_SPAN_NAME: Final = "openrouter-connection-test"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one request. Counts beyond them answer 413; nesting beyond ``max_depth`` 400."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_inflated_bytes: int = 16 * 1024 * 1024
    max_spans: int = 10_000
    max_attributes: int = 512  # per span, per event and per resource
    max_events: int = 1_024  # per span
    max_depth: int = 8  # AnyValue nesting; a plain attribute value is depth 1


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span, flattened. Ids are lowercase hex; times are unix nanoseconds.

    ``status_code`` is OTLP's 0 unset / 1 ok / 2 error. ``resource_attributes`` is shared by every
    span of the same ``resourceSpans`` entry: treat the dicts as read-only.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_unix_nano: int
    end_unix_nano: int
    status_code: int
    status_message: str
    attributes: Attributes
    resource_attributes: Attributes
    events: tuple[SpanEvent, ...]
    scope_name: str = ""


class AcceptedSpans(list[SpanRecord]):
    """The spans of a request the walker accepted, in request order, and why others were
    rejected: a span whose own content is invalid (an id, a time, a status, an attribute) is
    left out and named in ``rejections``; the request is answered with ``partialSuccess``.
    A request whose every span is invalid is refused whole (400), as is one whose structure is.
    """

    __slots__ = ("rejections",)

    def __init__(self) -> None:
        super().__init__()
        self.rejections: list[str] = []

    def rejection_message(self, shown: int = 3) -> str:
        """The ``partialSuccess.errorMessage``: how many were rejected and the first reasons."""
        count = len(self.rejections)
        more = f"; and {count - shown} more" if count > shown else ""
        return f"{count} span(s) rejected: " + "; ".join(self.rejections[:shown]) + more


class Bad(Exception):
    """Internal: a refusal whose location is assembled on the way up (free when nothing fails)."""

    def __init__(self, message: str, *where: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.where = list(where)
        self.status_code = status_code

    def at(self, *where: str) -> Bad:
        self.where[:0] = where
        return self

    def text(self) -> str:
        place = ".".join(self.where)
        return f"{place}: {self.message}" if place else self.message

    def to_ingest_error(self) -> IngestError:
        return IngestError(self.text(), status_code=self.status_code)


def check_counts(limits: Limits, *where: str, attributes: int = 0, events: int = 0) -> None:
    """The walkers' count limits (JSON and protobuf alike): more ``attributes`` (per span,
    event or resource) or ``events`` (per span) than ``limits`` allow is refused with 413,
    located at ``where`` + ``attributes`` / ``events``."""
    if attributes > limits.max_attributes:
        raise Bad(
            f"{attributes} attributes; the limit is {limits.max_attributes}",
            *where,
            "attributes",
            status_code=413,
        )
    if events > limits.max_events:
        raise Bad(f"more than {limits.max_events} events", *where, "events", status_code=413)


@dataclass(frozen=True, slots=True)
class Charge:
    """The cost one span reports and the hints the receiver attributes it by, from the registry
    alone (``ledger.ingest.writer.ChargeResolver``): ``trace.metadata.behavior``, ``user.id``,
    the key name. Counted by the budget check until the processor applies the delivery."""

    behavior: str | None
    user: str | None
    key_name: str | None
    usd: float
    # The daemon's run that made the call, when it did: its cost is already reserved or
    # recorded by the runner, so the budget check must not count it again while it waits.
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A JSON request the fast path accepted whole, to be stored as it came: ``text`` is the
    (inflated) request body, ``names`` its spans' names in order (one per span), ``charges``
    the costs its spans report."""

    text: str
    names: list[str]
    charges: list[Charge] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


# The attributes a charge is read from (``ledger.ingest.attribution`` reads the same ones).
COST_KEYS: Final = (
    "gen_ai.usage.total_cost",
    "gen_ai.usage.input_cost",
    "gen_ai.usage.output_cost",
)
BEHAVIOR_KEY: Final = "trace.metadata.behavior"
RUN_KEY: Final = "trace.metadata.run_id"  # set by the daemon's own calls (runner/openrouter.py)
USER_KEY: Final = "user.id"
KEY_NAME_KEYS: Final = ("trace.metadata.openrouter.api_key_name", "openrouter.api_key_name")
CHARGE_KEYS: Final = frozenset((*COST_KEYS, BEHAVIOR_KEY, RUN_KEY, USER_KEY, *KEY_NAME_KEYS))


def _usd(value: AttrValue) -> float | None:
    if type(value) is str:
        try:
            value = float(value)
        except ValueError:
            return None
    if type(value) is float or type(value) is int:
        return float(value) if math.isfinite(value) else None
    return None


def first_text(sources: Sequence[Attributes], keys: Sequence[str]) -> str | None:
    """The first non-empty string value among ``keys``, looked up in each source in turn (a
    span's attributes, then its resource's)."""
    for source in sources:
        for key in keys:
            value = source.get(key)
            if type(value) is str and value:
                return value
    return None


def charge_of(attributes: Attributes, resource: Attributes) -> Charge | None:
    """The charge a span's attributes report (total cost, else input + output cost), or None
    when it reports no positive cost. Hints are read from the span, then its resource."""
    usd = _usd(attributes.get(COST_KEYS[0]))
    if usd is None:
        parts = [_usd(attributes.get(key)) for key in COST_KEYS[1:]]
        usd = sum(part for part in parts if part is not None)
    if not usd or usd <= 0:
        return None

    def text(*keys: str) -> str | None:
        return first_text((attributes, resource), keys)

    return Charge(text(BEHAVIOR_KEY), text(USER_KEY), text(*KEY_NAME_KEYS), usd, text(RUN_KEY))


def charges_of(spans: Sequence[SpanRecord]) -> list[Charge]:
    """The charges of decoded spans."""
    charges = []
    for span in spans:
        charge = charge_of(span.attributes, span.resource_attributes)
        if charge is not None:
            charges.append(charge)
    return charges


def is_connection_test(spans: Sequence[SpanRecord] | RawRequest) -> bool:
    """Whether a delivery is OpenRouter's "Test Connection": no spans, or one test span."""
    if isinstance(spans, RawRequest):
        return not spans.names or spans.names == [CONNECTION_TEST_SPAN_NAME]
    return not spans or (len(spans) == 1 and spans[0].name == CONNECTION_TEST_SPAN_NAME)


def walk(
    decode: Callable[[bytes, Limits], AcceptedSpans], payload: bytes, limits: Limits
) -> AcceptedSpans:
    """Run a walker (``decode_json`` / ``decode_protobuf``) over a payload: its refusal becomes
    the ``IngestError`` to answer with, and a request whose every span was rejected is refused
    whole (400, with the first reason)."""
    try:
        records = decode(payload, limits)
    except Bad as bad:
        raise bad.to_ingest_error() from None
    if records.rejections and not records:
        raise IngestError(records.rejections[0], status_code=400)
    return records
