"""The benchmark in its tiny mode, so that it cannot rot between real runs.

No timing is asserted: only that every scenario ran and wrote positive figures under the expected
keys, that the bulk-loaded rows read back through the product's own repository, and that one tiny
HTTP family (SQLite, ECDSA CA, c=1, against a real ``ca-service serve``) produced real figures.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench import chart, run, ui_pages


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_tiny_run_writes_results(tmp_path: Path) -> None:
    results = run.run(run.MODES["tiny"], set(run.SCENARIOS), tmp_path, "tiny smoke test")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mode"] == "tiny"
    assert (tmp_path / "RESULTS.md").read_text().startswith("# ca-service benchmark results")
    assert {"machine", "references", "store", "http", "targets"} <= saved.keys()
    # The chart is drawn next to RESULTS.md, which links it.
    assert "<svg" in (tmp_path / chart.FILENAME).read_text()
    assert f"]({chart.FILENAME})" in (tmp_path / "RESULTS.md").read_text()

    refs = saved["references"]
    assert _positive(refs["openssl"]["ecdsap256_sign_per_s"])
    assert _positive(refs["openssl"]["rsa2048_sign_per_s"])
    for key_type in ("ecdsa-p256", "rsa-2048"):
        assert _positive(refs["ceiling"][key_type]["per_s"])

    # Reference (d), the stack's floor: every answer it gave was committed first.
    floor = refs["floor"]["runs"]
    assert _positive(floor["none"]["c1"]["rps"])
    assert floor["sqlite"]["rows_stored"] == floor["sqlite"]["answered"] > 0
    assert "### (d) the stack's floor" in (tmp_path / "RESULTS.md").read_text()

    sqlite = saved["store"]["sqlite"]
    for size in ("1000", "2000"):
        crl = sqlite["crl"][size]
        assert crl["status"] == "ok", crl
        # The CRL the product generated lists exactly the rows the bulk loader wrote.
        assert crl["entries"] == crl["revoked_rows"] == int(size)
        for key in ("seconds", "peak_rss_mib", "crl_bytes"):
            assert _positive(crl[key]), (size, key)
        for query in ("fetch_by_serial", "search_rare", "search_common"):
            assert _positive(sqlite["lookups"][size][query]["per_s"])
            assert _positive(sqlite["lookups"][size][query]["p99_ms"])
    assert _positive(sqlite["issuance_empty"]["per_s"])
    assert _positive(sqlite["issuance_full"]["per_s"])

    # Issue 16: the same CA key type in a file and in a SoftHSM2 token, in the same run.
    hsm = saved["hsm"]["ecdsa-p256"]
    for backend in ("file", "softhsm"):
        for step in ("issue", "sign"):
            assert _positive(hsm[backend][step]["per_s"]), (backend, step)
    assert _positive(hsm["issue_softhsm_vs_file"])
    assert "PKCS#11 token (SoftHSM2)" in (tmp_path / "RESULTS.md").read_text()

    http = saved["http"]["sqlite"]["ecdsa-p256"]
    assert http["status"] == "ok", http
    for figures in (
        http["issue_csr"]["c1"],
        http["issue_keygen"]["c1"],
        http["revocation"],
        http["crl_fetch"],
        saved["ocsp"]["sqlite"]["post"],
        saved["ocsp"]["sqlite"]["get"],
        saved["ocsp"]["sqlite"]["post_nonce"],
    ):
        assert figures["errors"] == 0, figures
        assert _positive(figures["rps"]) and _positive(figures["p99_ms"]), figures
    # OCSP is its own scenario now (issue 15 item 2), measured once: not inside the HTTP one.
    assert "ocsp" not in http
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## OCSP pre-signed (issue 15 item 2)" in text
    # The CRL builds of the store scenario carry the child's CPU and are rendered as their own
    # section; an --out outside bench/ never gets the hand-measured text.
    assert _positive(sqlite["crl"]["2000"]["cpu_s"])
    assert "## CRL build at 1M (issue 15 item 3)" in text
    assert "bench/hand/" not in text.split("## CRL build at 1M (issue 15 item 3)")[0]
    visible = http["revocation_visibility"]
    for key in ("revoke_answer_s", "revocation_to_crl_s", "revocation_to_ocsp_s"):
        assert _positive(visible[key]), visible
    # Issue 13: every admin UI page case ran on the filled store and showed rows.
    ui = saved["ui"]["sqlite"]
    assert ui["status"] == "ok", ui
    assert ui["certificates"] >= ui["wanted"] > 0
    assert ui["audit_events"] > ui["certificates"]
    assert set(ui["cases"]) == set(ui_pages.ORDER)
    for label, case in ui["cases"].items():
        assert _positive(case.get("p99_ms")), (label, case)
        assert label == "sort expiry, on hold, team-b" or _positive(case["rows_shown"]), label
    assert "## Admin UI pages at 1M (issue 13)" in (tmp_path / "RESULTS.md").read_text()
    assert {t["status"] for t in saved["targets"]} <= {"met", "missed", "not measured"}
    assert results["elapsed_s"] == saved["elapsed_s"]


def test_results_name_no_directory_of_the_machine(tmp_path: Path) -> None:
    """An --out elsewhere is recorded as OUT, one in the repository relative to it, and paths
    in error reasons are replaced; the committed results and READMEs carry no machine path."""
    assert run._portable(["--quick", "--out", str(tmp_path)]) == ["--quick", "--out", "OUT"]
    assert run._portable([f"--out={run.REPO / 'bench' / 'quick'}"]) == ["--out=bench/quick"]
    reason = f"FileNotFoundError: {run.REPO / 'x.py'} and {Path(tempfile.gettempdir()) / 'y'}"
    assert run.scrub(reason) == "FileNotFoundError: <repo>/x.py and <tmp>/y"

    # Built here, so that this file does not name them itself.
    machine = [str(run.REPO), str(Path.home()) + "/", tempfile.gettempdir() + "/", "/" + "work/"]
    bench = run.REPO / "bench"
    files = [
        run.REPO / "README.md",
        *bench.glob("*.md"),
        *bench.glob("*.py"),
        *bench.glob("*.json"),
        *bench.glob("*.svg"),
    ]
    files += [*(bench / "quick").glob("*"), *(bench / "ui-pages").glob("*")]
    for path in files:
        text = path.read_text()
        for fragment in machine:
            assert fragment not in text, f"{path.relative_to(run.REPO)} names {fragment}"
