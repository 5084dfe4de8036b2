"""The issuance-against-concurrency chart, drawn from a small fixed results dict and read back
as XML: every measured point is there, in its series, and nothing unmeasured is drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from bench import chart
from tests.bench.test_report import results

NS = {"svg": "http://www.w3.org/2000/svg"}


def _parse(text: str) -> ET.Element:
    return ET.fromstring(text.encode())  # noqa: S314 (the SVG this test just drew)


def test_chart_holds_every_series_and_point(tmp_path: Path) -> None:
    path = chart.write(results(), tmp_path)
    assert path.name == chart.FILENAME
    root = ET.parse(path).getroot()  # noqa: S314 (the SVG this test just drew)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("role") == "img"
    title = root.find("svg:title", NS)
    desc = root.find("svg:desc", NS)
    assert title is not None and "concurrency" in (title.text or "")
    assert desc is not None and "400 certs/s at c=32" in (desc.text or "")
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert "issuance rate (certificates/s)" in texts
    assert "concurrent clients (log scale)" in texts
    for label, *_ in chart.SERIES:  # the legend names each series
        assert label in texts

    series = {g.get("data-series"): g for g in root.iter() if g.get("class") == "series"}
    assert set(series) == {label for label, *_ in chart.SERIES}
    got = {
        name: {
            int(p.get("data-concurrency", "0")): float(p.get("data-rps", "0"))
            for p in g.iter()
            if p.get("class") == "point"
        }
        for name, g in series.items()
    }
    assert got == {
        "ca-service, SQLite": {1: 100.0, 8: 300.0, 32: 400.0},
        "ca-service, PostgreSQL": {1: 120.0, 8: 360.0, 32: 480.0},
        "CFSSL + SQLite certdb": {1: 150.0, 8: 500.0, 32: 600.0},
        "CFSSL, no store": {1: 300.0, 8: 900.0, 32: 1000.0},
    }
    # One line per series through its three points.
    for g in series.values():
        line = g.find("svg:polyline", NS)
        assert line is not None and len((line.get("points") or "").split()) == 3


def test_unmeasured_series_is_not_drawn_and_says_so() -> None:
    data = results()
    data["references"]["cfssl"] = {"status": "absent", "reason": "no peer"}
    del data["http"]["sqlite"]["ecdsa-p256"]["issue_csr"]["c8"]
    root = _parse(chart.svg(data))
    points = [p for p in root.iter() if p.get("class") == "point"]
    assert len(points) == 2 + 3  # SQLite without c=8, PostgreSQL complete, no CFSSL
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert "CFSSL, no store (not measured)" in texts
    table = "\n".join(chart.markdown(data))
    assert "| ca-service, SQLite | 100.0 | - | 400.0 |" in table
    assert "| CFSSL + SQLite certdb | - | - | - |" in table
    assert f"]({chart.FILENAME})" in table


def test_chart_of_an_empty_run_is_valid_svg() -> None:
    root = _parse(chart.svg({}))
    assert not [p for p in root.iter() if p.get("class") == "point"]
