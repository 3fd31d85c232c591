"""Charts drawn on the server as inline SVG (no script, no style attribute, no CDN): the numbers
are computed here and the template only places them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.spend import format_usd


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # for the <title> tooltip and screen readers


@dataclass(frozen=True, slots=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    max_label: str
    first_label: str
    last_label: str
    summary: str  # what the chart says, in words (its accessible description)


def spend_chart(
    points: list[tuple[datetime, float]], width: int = 640, height: int = 160
) -> BarChart | None:
    """Daily spend as bars scaled to the largest day; None when there is nothing to draw."""
    if not points:
        return None
    largest = max(usd for _, usd in points)
    top = largest or 1.0  # all zero: flat stubs on the axis
    pad_left, pad_bottom, pad_top = 48.0, 20.0, 8.0
    plot_w = width - pad_left - 4
    plot_h = height - pad_bottom - pad_top
    step = plot_w / len(points)
    bar_w = max(2.0, step * 0.7)
    bars = []
    for i, (day, usd) in enumerate(points):
        h = plot_h * (usd / top)
        bars.append(
            Bar(
                x=round(pad_left + i * step + (step - bar_w) / 2, 1),
                y=round(pad_top + plot_h - h, 1),
                width=round(bar_w, 1),
                height=round(max(h, 0.5), 1),
                label=f"{day:%Y-%m-%d}: {format_usd(usd)}",
            )
        )
    total = sum(usd for _, usd in points)
    return BarChart(
        width=width,
        height=height,
        bars=bars,
        max_label=format_usd(largest),
        first_label=f"{points[0][0]:%b %d}",
        last_label=f"{points[-1][0]:%b %d}",
        summary=f"{format_usd(total)} over {len(points)} day(s) with runs; the largest day "
        f"{format_usd(largest)}",
    )
