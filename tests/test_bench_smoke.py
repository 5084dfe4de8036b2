"""The benchmark in its tiny mode, so that it cannot rot between real runs.

No timing is asserted: only that every scenario ran and wrote positive figures under the expected
keys, and that the bulk-loaded rows read back through the product's own repository.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import run


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_tiny_run_writes_results(tmp_path: Path) -> None:
    results = run.run(run.MODES["tiny"], set(run.SCENARIOS), tmp_path, "tiny smoke test")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mode"] == "tiny"
    assert (tmp_path / "RESULTS.md").read_text().startswith("# ca-service benchmark results")
    assert {"machine", "references", "store", "http", "ocsp", "targets"} <= saved.keys()
    assert saved["ocsp"]["status"] == "absent"

    refs = saved["references"]
    assert _positive(refs["openssl"]["ecdsap256_sign_per_s"])
    assert _positive(refs["openssl"]["rsa2048_sign_per_s"])
    for key_type in ("ecdsa-p256", "rsa-2048"):
        assert _positive(refs["ceiling"][key_type]["per_s"])

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

    for db, per_key in saved["http"].items():
        for key_type, outcome in per_key.items():
            # Absent until the API exists; once it does, the figures must be real.
            assert outcome["status"] in ("absent", "ok"), (db, key_type, outcome)
            if outcome["status"] == "ok":
                assert _positive(outcome["issue_csr"]["c1"]["rps"])
    assert {t["status"] for t in saved["targets"]} <= {"met", "missed", "not measured"}
    assert results["elapsed_s"] == saved["elapsed_s"]
