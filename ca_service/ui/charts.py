"""Charts drawn on the server as SVG: readable without JavaScript, styled by the stylesheet
(classes, no style attributes), each with a <title>, a <desc> and a text alternative beside
it (a table or a sentence), so a screen reader gets the numbers and not a picture."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from ca_service.ui.format import duration

WIDTH = 720
HEIGHT = 160
AXIS = 20  # room under the bars for the day labels


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # what the bar's own <title> says


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class ExpiryChart:
    bars: list[Bar]
    ticks: list[Tick]
    weeks: list[tuple[str, int]]  # the text alternative: a table of weekly counts
    total: int
    peak: int
    summary: str
    width: int = WIDTH
    height: int = HEIGHT
    plot_height: int = HEIGHT - AXIS


def expiry_chart(days: Sequence[tuple[dt.date, int]], now: dt.datetime) -> ExpiryChart:
    """Certificates expiring on each day from today: one bar a day, one table row a week."""
    total = sum(n for _, n in days)
    peak = max((n for _, n in days), default=0)
    plot = HEIGHT - AXIS
    step = WIDTH / max(1, len(days))
    bars = []
    for i, (day, n) in enumerate(days):
        # Scaled to the busiest day; a day with any certificate stays visible (1 unit).
        h = max(1.0, (plot - 16) * n / peak) if n else 0.0
        label = f"{day:%Y-%m-%d}: {n} certificate{'s' if n != 1 else ''}"
        bars.append(Bar(round(i * step + 1, 1), round(plot - h, 1), round(step - 2, 1), h, label))
    ticks = [
        Tick(round(i * step, 1), f"{day:%b %d}") for i, (day, _) in enumerate(days) if i % 14 == 0
    ]
    weeks = []
    for start in range(0, len(days), 7):
        chunk = days[start : start + 7]
        first, last = chunk[0][0], chunk[-1][0]
        weeks.append((f"{first:%Y-%m-%d} to {last:%Y-%m-%d}", sum(n for _, n in chunk)))
    if total == 0:
        summary = f"No valid certificate expires in the next {len(days)} days."
    else:
        busiest = max(weeks, key=lambda w: w[1])
        summary = (
            f"{total} valid certificate{'s' if total != 1 else ''} expire in the next "
            f"{len(days)} days; the most in the week {busiest[0]} ({busiest[1]})."
        )
    return ExpiryChart(bars, ticks, weeks, total, peak, summary)


@dataclass(frozen=True)
class ValidityBar:
    """How much of a certificate's life has passed, drawn as one bar with a sentence."""

    elapsed_width: float
    marker_x: float
    summary: str
    state: str  # a CSS class: future, current, ending, past
    width: int = WIDTH


def validity_bar(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> ValidityBar:
    life = (not_after - not_before).total_seconds() or 1.0
    passed = min(1.0, max(0.0, (now - not_before).total_seconds() / life))
    if now < not_before:
        summary, state = f"Not valid yet: starts in {duration(not_before - now)}.", "future"
    elif now >= not_after:
        summary, state = f"Expired {duration(now - not_after)} ago.", "past"
    else:
        left = not_after - now
        summary = (
            f"{round(passed * 100)}% of its validity has passed; {duration(left)} left "
            f"(until {not_after:%Y-%m-%d %H:%M} UTC)."
        )
        state = "ending" if left.total_seconds() < life * 0.1 else "current"
    return ValidityBar(round(WIDTH * passed, 1), round(WIDTH * passed, 1), summary, state)
