"""``python -m bench.run --render``: the sections a results.json lacks are not lost.

bench/RESULTS.md holds sections measured by hand (bench/hand/) and by runs of one scenario
(bench/ui-pages/); rendering a results.json that predates those scenarios keeps them, and
rendering one that has them shows the run's own figures instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import crl_scale, ocsp_presigned, report, run
from tests.bench.test_report import results

BENCH = run.REPO / "bench"


def test_committed_render_keeps_hand_sections_when_results_lack_them() -> None:
    committed = json.loads((BENCH / "results.json").read_text())
    committed.pop("ocsp", None)
    for store in committed.get("store", {}).values():
        for crl in store.get("crl", {}).values():
            crl.pop("cpu_s", None)
    text = run.render(committed, BENCH)
    for hand in (crl_scale.HAND, ocsp_presigned.HAND):
        assert hand.read_text().strip() in text
    # Elsewhere (a --tiny run in a temporary directory) the hand text is not borrowed.
    elsewhere = run.render(committed, Path("/nonexistent-out"))
    assert crl_scale.HAND.read_text().strip() not in elsewhere
    assert ocsp_presigned.HAND.read_text().strip() not in elsewhere


def test_render_shows_the_run_own_ocsp_and_crl_figures() -> None:
    data = results()
    data["targets"] = report.evaluate(data)
    text = run.render(data, BENCH)
    assert ocsp_presigned.HAND.read_text().strip() not in text
    assert crl_scale.HAND.read_text().strip() not in text
    ocsp = text.split("## OCSP pre-signed (issue 15 item 2)")[1]
    assert "| sqlite | POST, no nonce | 8 | 3,500.0 |" in ocsp
    assert "| sqlite | GET, no nonce | 8 | 2,900.0 |" in ocsp and "**missed** |" in ocsp
    crl = text.split("## CRL build at 1M (issue 15 item 3)")[-1]
    assert "| sqlite | 1,000,000 | 2.400 |" in crl
    assert "| postgresql | 1,000,000 | 1.800 |" in crl
