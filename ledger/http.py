"""HTTP helpers every client of the daemon shares (the OpenRouter client, the outbox's
deliveries, the catalog refresh): when to try again. Pure: time and randomness come in as
arguments."""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["backoff_delay", "parse_retry_after"]

_MAX_EXPONENT = 60


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), never negative.

    An HTTP-date needs ``now`` (aware); unparsable values, and dates without ``now``, give None.
    """
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"\d{1,10}(?:\.\d{1,6})?", text):
        return float(text)
    if now is None:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float = 1.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempt``-th failure in a row (1-based): ``base`` doubling
    each time up to ``cap``, of which the last ``jitter`` fraction is drawn at random from
    ``rng`` so that retries after an outage spread out.

    ``jitter=1.0`` is "full jitter" (anywhere from 0 to the ceiling), ``0.5`` "equal jitter"
    (half fixed, half random), ``0.0`` none (``rng`` unused).
    """
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    ceiling = min(cap, base * math.pow(2, exponent))
    if jitter <= 0.0:
        return ceiling
    if rng is None:
        raise ValueError("a jittered backoff needs an rng")
    return ceiling * (1.0 - jitter) + rng.uniform(0.0, ceiling * jitter)
