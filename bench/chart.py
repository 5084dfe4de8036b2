"""The chart of RESULTS.md: issuance rate against concurrency, ca-service beside CFSSL (issue 15).

Hand-written SVG from the stdlib (no plotting dependency), drawn from results.json by every run
and by ``--render`` into ``issuance-vs-concurrency.svg`` next to RESULTS.md. Accessible: a
``<title>``, a ``<desc>`` that lists every point in words, labelled axes, a legend, and series
told apart by marker and dash as well as by colour. A series or point the run did not measure is
left out (the legend says "not measured"); nothing is drawn that the results do not hold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

FILENAME = "issuance-vs-concurrency.svg"
CONCURRENCIES = (1, 8, 32)
# label, path to the per-concurrency loads in results.json, colour, dash, marker
SERIES: tuple[tuple[str, tuple[str, ...], str, str, str], ...] = (
    ("ca-service, SQLite", ("http", "sqlite", "ecdsa-p256", "issue_csr"), "#1f77b4", "", "circle"),
    ("ca-service, PostgreSQL", ("http", "postgresql", "ecdsa-p256", "issue_csr"), "#2ca02c",
     "6 3", "square"),
    ("CFSSL + SQLite certdb", ("references", "cfssl", "runs", "ecdsa_sqlite"), "#d62728", "2 3",
     "triangle"),
    ("CFSSL, no store", ("references", "cfssl", "runs", "ecdsa_nodb"), "#9467bd", "8 3 2 3",
     "diamond"),
)  # fmt: skip
WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 210, 50, 60  # plot margins; the legend sits on the right


def points(results: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Certs/s per concurrency of each series, only where the run measured it."""
    out: dict[str, dict[int, float]] = {}
    for label, path, *_ in SERIES:
        cur: Any = results
        for key in path:
            cur = cur.get(key) if isinstance(cur, dict) else None
        got: dict[int, float] = {}
        for c in CONCURRENCIES:
            r = cur.get(f"c{c}") if isinstance(cur, dict) else None
            if isinstance(r, dict) and isinstance(r.get("rps"), int | float) and r["rps"] > 0:
                got[c] = float(r["rps"])
        out[label] = got
    return out


def _nice_max(value: float) -> float:
    """The axis top: the next 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return float(next(m * base for m in (1, 2, 5, 10) if m * base >= value))


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    fill = f'fill="{colour}" stroke="{colour}"'
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" {fill}/>'
    if kind == "triangle":
        return f'<polygon points="{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} {x + 5:.1f},{y + 4:.1f}" {fill}/>'  # noqa: E501
    if kind == "diamond":
        return f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}" {fill}/>'  # noqa: E501
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" {fill}/>'


def describe(results: dict[str, Any]) -> str:
    """Every point in words (the SVG's <desc>, for readers without the image)."""
    parts = []
    for label, got in points(results).items():
        if got:
            parts.append(
                f"{label}: " + ", ".join(f"{got[c]:,.0f} certs/s at c={c}" for c in sorted(got))
            )
        else:
            parts.append(f"{label}: not measured")
    m = results.get("machine") or {}
    when = f" Run {m.get('date')}, commit {m.get('commit')}." if m else ""
    return (
        "HTTP issuance from a CSR, ECDSA P-256 CA, certificates per second against the number of "
        "concurrent clients (1, 8, 32; log scale), same CSR and load generator for each. "
        + "; ".join(parts)
        + "."
        + when
    )


def svg(results: dict[str, Any]) -> str:
    """The chart as an SVG document."""
    data = points(results)
    values = [v for got in data.values() for v in got.values()]
    top = _nice_max(max(values) if values else 0.0)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = math.log2(CONCURRENCIES[-1] / CONCURRENCIES[0])

    def x_of(c: int) -> float:
        return LEFT + pw * math.log2(c / CONCURRENCIES[0]) / span

    def y_of(v: float) -> float:
        return TOP + ph * (1 - v / top)

    title = "Issuance rate against concurrency: ca-service and CFSSL"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title chart-desc" '
        'font-family="sans-serif" font-size="12">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(describe(results))}</desc>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
        '<g id="y-axis">',
    ]
    for i in range(6):
        v = top * i / 5
        y = y_of(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" '
                   'stroke="#dddddd"/>')  # fmt: skip
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    out.append(
        f'<text id="y-label" transform="translate(22 {TOP + ph / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">issuance rate (certificates/s)</text>'
    )
    out += ["</g>", '<g id="x-axis">']
    out.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" '
               'stroke="#333333"/>')  # fmt: skip
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="#333333"/>')
    for c in CONCURRENCIES:
        x = x_of(c)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + ph}" x2="{x:.1f}" y2="{TOP + ph + 5}" '
                   'stroke="#333333"/>')  # fmt: skip
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{c}</text>')
    out.append(
        f'<text id="x-label" x="{LEFT + pw / 2:.1f}" y="{HEIGHT - 16}" text-anchor="middle">'
        "concurrent clients (log scale)</text>"
    )
    out.append("</g>")
    legend = ['<g id="legend">']
    for i, (label, _path, colour, dash, marker) in enumerate(SERIES):
        got = data[label]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="series" data-series={quoteattr(label)}>')
        if len(got) > 1:
            pts = " ".join(f"{x_of(c):.1f},{y_of(v):.1f}" for c, v in sorted(got.items()))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"{dash_attr}/>')  # fmt: skip
        for c, v in sorted(got.items()):
            out.append(
                f'<g class="point" data-concurrency="{c}" data-rps="{v}">'
                f"<title>{escape(label)}: {v:,.1f} certs/s at c={c}</title>"
                f"{_marker(marker, x_of(c), y_of(v), colour)}</g>"
            )
        out.append("</g>")
        ly = TOP + 10 + i * 22
        lx = LEFT + pw + 20
        legend.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour}" '
                      f'stroke-width="2"{dash_attr}/>')  # fmt: skip
        legend.append(_marker(marker, lx + 14, ly, colour))
        shown = label if got else f"{label} (not measured)"
        legend.append(f'<text x="{lx + 36}" y="{ly + 4}">{escape(shown)}</text>')
    out += [*legend, "</g>", "</svg>"]
    return "\n".join(out) + "\n"


def markdown(results: dict[str, Any], filename: str = FILENAME) -> list[str]:
    """The chart's link and, beside it, the same points as a text table."""
    data = points(results)
    lines = [
        "## Issuance rate against concurrency (chart)",
        "",
        f"![Chart: issuance rate against concurrency for ca-service (SQLite, PostgreSQL) and "
        f"CFSSL (SQLite certdb, no store); the table below holds the same points]({filename})",
        "",
        "HTTP issuance from a CSR, ECDSA P-256 CA, certs/s (the median of the repeated runs); the "
        "same points as the chart:",
        "",
        "| series | " + " | ".join(f"c={c}" for c in CONCURRENCIES) + " |",
        "|---|" + "---|" * len(CONCURRENCIES),
    ]
    for label, got in data.items():
        cells = [f"{got[c]:,.1f}" if c in got else "-" for c in CONCURRENCIES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write(results: dict[str, Any], out_dir: Path) -> Path:
    """Draw the chart next to RESULTS.md."""
    path = out_dir / FILENAME
    path.write_text(svg(results))
    return path
