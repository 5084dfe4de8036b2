"""The report's targets, figures table, chart and limits, from a small fixed results dict.

No server runs: these check that every figure shown is the one in the results (or "-" / "not
measured" when absent), never one made up.
"""

from __future__ import annotations

import copy
from typing import Any

from bench import report


def _load(rps: float, c: int, p99: float = 20.0, cpu: float = 1.5) -> dict[str, Any]:
    return {"rps": rps, "concurrency": c, "p50_ms": p99 / 2, "p99_ms": p99, "errors": 0,
            "load1": 1.0, "server_cpu_cores": cpu}  # fmt: skip


def _crl(seconds: float, entries: int, peak_mib: float) -> dict[str, Any]:
    return {"status": "ok", "seconds": seconds, "cpu_s": seconds * 0.9, "entries": entries,
            "revoked_rows": entries, "peak_rss_mib": peak_mib, "rss_before_mib": 80.0,
            "crl_bytes": entries * 40,
            "breakdown": {"query_s": seconds / 3, "entry_objects_s": seconds / 3,
                          "sign_encode_s": seconds / 4}}  # fmt: skip


def results() -> dict[str, Any]:
    """A full run in miniature: both databases, CFSSL, OCSP, CRLs at 100k and 1M."""
    http = {}
    for db, scale in (("sqlite", 1.0), ("postgresql", 1.2)):
        http[db] = {
            "ecdsa-p256": {
                "status": "ok",
                "issue_csr": {"status": "ok", **{f"c{c}": _load(r * scale, c, 30.0)
                                                 for c, r in ((1, 100.0), (8, 300.0),
                                                              (32, 400.0))}},
            }
        }  # fmt: skip
    store = {
        db: {
            "crl": {"100000": _crl(0.4, 100_000, 120.0), "1000000": _crl(t, 1_000_000, m)},
            "stored_rows": 1_000_000,
            "issuance_empty": {"per_s": 800.0},
            "issuance_full": {"per_s": 760.0},
            "populate": {},
            "lookups": {},
        }
        for db, t, m in (("sqlite", 2.4, 287.0), ("postgresql", 1.8, 212.0))
    }
    return {
        "mode": "full",
        "command": "python -m bench.run",
        "elapsed_s": 600.0,
        "machine": {
            "date": "2026-12-01 19:00 UTC",
            "commit": "abc1234",
            "nproc": 2,
            "cpu_model": "test",
            "mem_total_gib": 1,
            "python": "3.11",
            "cryptography": "x",
            "kernel": "k",
        },
        "references": {
            "ceiling": {
                "ecdsa-p256": {"per_s": 2000.0, "p50_ms": 0.5, "p99_ms": 1.0, "count": 100}
            },
            "cfssl": {
                "status": "ok",
                "runs": {
                    "ecdsa_sqlite": {
                        f"c{c}": _load(r, c) for c, r in ((1, 150.0), (8, 500.0), (32, 600.0))
                    },
                    "ecdsa_nodb": {
                        f"c{c}": _load(r, c) for c, r in ((1, 300.0), (8, 900.0), (32, 1000.0))
                    },
                },
            },
        },
        "http": http,
        "ocsp": {
            "sqlite": {
                "status": "ok",
                "post": _load(3500.0, 8, 9.0),
                "get": _load(2900.0, 8, 9.0),
                "post_nonce": _load(550.0, 8, 70.0),
            },
            "postgresql": {
                "status": "ok",
                "post": _load(3100.0, 8),
                "get": _load(3300.0, 8),
                "post_nonce": _load(600.0, 8, 90.0),
            },
        },
        "store": store,
        "hsm": {},
    }


def _by_name(targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in targets}


def test_cfssl_ratio_target_reads_the_same_run() -> None:
    targets = _by_name(report.evaluate(results()))
    ratio = targets["HTTP issuance SQLite c=32 vs CFSSL + SQLite certdb (same run)"]
    assert ratio["measured"] == round(400.0 / 600.0, 3)
    assert ratio["status"] == "missed"
    assert "400.0 vs CFSSL + SQLite 600.0" in ratio["note"]
    assert "CPU-bound" in ratio["cause"]


def test_cfssl_ratio_not_measured_without_cfssl() -> None:
    data = results()
    data["references"]["cfssl"] = {"status": "absent", "reason": "CA_BENCH_CFSSL_PEER unset"}
    ratio = _by_name(report.evaluate(data))[
        "HTTP issuance SQLite c=32 vs CFSSL + SQLite certdb (same run)"
    ]
    assert ratio["measured"] is None and ratio["status"] == "not measured"
    assert "CA_BENCH_CFSSL_PEER unset" in ratio["note"]


def test_issue_15_targets() -> None:
    targets = _by_name(report.evaluate(results()))
    assert targets["OCSP POST nonce-less answers c=8, SQLite"]["status"] == "met"
    assert targets["OCSP GET nonce-less answers c=8, SQLite"]["status"] == "missed"
    crl_sqlite = targets["CRL generation 1,000,000 revoked, SQLite (issue 15)"]
    assert (crl_sqlite["goal"], crl_sqlite["status"]) == ("< 2.0 s", "missed")
    assert "us per entry" in crl_sqlite["cause"]
    assert targets["CRL generation 1,000,000 revoked, PostgreSQL (issue 15)"]["status"] == "met"
    # 287 MiB is 300.9 MB: over a 300 MB target.
    mem = targets["CRL 1M peak memory, SQLite"]
    assert mem["measured"] == 300.9 and mem["status"] == "missed"
    assert targets["CRL 1M peak memory, PostgreSQL"]["status"] == "met"
    inproc = targets["1M stored: in-process issuance vs empty store, SQLite"]
    assert inproc["measured"] == 0.95 and inproc["status"] == "met"


def test_ocsp_at_another_concurrency_is_not_judged() -> None:
    data = results()
    data["ocsp"]["sqlite"]["post"] = _load(900.0, 1)
    post = _by_name(report.evaluate(data))["OCSP POST nonce-less answers c=8, SQLite"]
    assert post["status"] == "not measured"
    assert "c=1" in post["note"]


def test_missed_target_points_at_its_profile_when_profiles_has_it() -> None:
    targets = _by_name(report.evaluate(results()))
    crl = targets["CRL generation 1,000,000 revoked, SQLite (issue 15)"]
    heading = report.profile_heading("CRL build at 1M")
    if heading is None:  # PROFILES.md without that section: no pointer is invented
        assert crl["profile"] is None and "PROFILES.md" not in crl["cause"]
    else:
        assert crl["profile"] == heading
        assert f'see PROFILES.md, "{heading}"' in crl["cause"]
    assert all(t["profile"] is None for t in targets.values() if t["status"] != "missed")


def test_anchor_is_the_github_one() -> None:
    assert report.anchor("CRL build at 1M (issue 15 item 3)") == "crl-build-at-1m-issue-15-item-3"
    assert report.anchor("OCSP fast path (issue 15 item 2: 3,000 nonce-less answers/s at c=8)") == (
        "ocsp-fast-path-issue-15-item-2-3000-nonce-less-answerss-at-c8"
    )


def test_results_dict_is_not_changed_by_evaluate() -> None:
    data = results()
    before = copy.deepcopy(data)
    report.evaluate(data)
    assert data == before


def test_figures_table_has_the_issue_rows_from_the_run() -> None:
    rows = {row[0]: row[1:] for row in report.figures(results())}
    assert len(rows) == 12
    c32 = rows["HTTP issuance from CSR, ECDSA P-256, SQLite, c=32, vs CFSSL + SQLite certdb"]
    assert c32 == ["400.0 certs/s (p99 30.0 ms)", "600.0 certs/s (p99 20.0 ms)", "0.67"]
    nodb = rows["HTTP issuance from CSR, ECDSA P-256, SQLite, c=1, vs CFSSL storing nothing"]
    assert nodb[2] == "0.33"
    pg = rows["HTTP issuance from CSR, ECDSA P-256, PostgreSQL, c=32, vs CFSSL + SQLite certdb"]
    assert pg[0].startswith("480.0 certs/s") and pg[2] == "0.80"
    inproc = rows["in-process `issue_from_csr`, SQLite: empty store -> 1,000,000 stored"]
    assert inproc == ["800.0 -> 760.0 certs/s", "-", "0.95"]
    ocsp = rows["OCSP nonce-less answers/s, c=8, POST / GET"]
    assert ocsp[0] == "SQLite 3,500.0 / 2,900.0; PostgreSQL 3,100.0 / 3,300.0"
    assert rows["full CRL of 1M revoked, SQLite"][0].startswith("2.400 s (1,000,000 entries")
    # No `openssl ca -gencrl` figure in the run: that cell and its ratio stay empty.
    assert rows["full CRL of 1M revoked, PostgreSQL"][1:] == ["-", "-"]


def test_figures_table_without_http_or_cfssl_shows_dashes() -> None:
    data = results()
    data["http"] = {}
    data["references"]["cfssl"] = {"status": "absent", "reason": "no peer"}
    rows = {row[0]: row[1:] for row in report.figures(data)}
    c32 = rows["HTTP issuance from CSR, ECDSA P-256, SQLite, c=32, vs CFSSL + SQLite certdb"]
    assert c32 == ["-", "-", "-"]
    data["targets"] = report.evaluate(data)
    text = report.markdown(data)
    assert "## Figures (issue 15)" in text
    assert (
        text.index("## Targets") < text.index("## Figures (issue 15)") < text.index("## References")
    )


def test_limits_list_every_missed_target_with_cause_and_profile() -> None:
    data = results()
    data["targets"] = report.evaluate(data)
    lines = report.limits(data)
    assert lines[0] == "## Limits on this machine"
    missed = [t for t in data["targets"] if t["status"] == "missed"]
    items = [ln for ln in lines if ln.startswith("- **")]
    assert len(items) == len(missed) > 0
    for t, item in zip(missed, items, strict=True):
        assert item.startswith(f"- **{t['target']}**: {report._fmt(t['measured'])} {t['unit']}")
        if t["why"]:
            assert f"Cause measured: {t['why']}." in item
        if t["profile"]:
            assert f"](#{report.anchor(t['profile'])})" in item
    crl = next(i for i in items if "CRL generation 1,000,000 revoked, SQLite" in i)
    assert "2.400 s against < 2.0 s" in crl and "us per entry" in crl
    text = report.markdown(data)
    assert text.index("## Figures (issue 15)") < text.index("## Limits on this machine")


def test_limits_when_nothing_is_missed() -> None:
    data = results()
    data["targets"] = [t for t in report.evaluate(data) if t["status"] != "missed"]
    assert "No target was missed in this run." in report.limits(data)


def test_wrk_ocsp_figures_are_judged_beside_the_python_generator() -> None:
    """wrk's rows (when the run had wrk) are separate targets and table rows; a run without
    them shows neither, and the Python generator's figure is judged as before."""
    from bench import ocsp_presigned

    data = results()
    wrk = {"engine": "wrk", "concurrency": 8, "rps": 4100.0, "p50_ms": 1.6, "p99_ms": 8.0,
           "non_2xx": 0}  # fmt: skip
    data["ocsp"]["sqlite"]["get_wrk"] = wrk
    targets = _by_name(report.evaluate(data))
    assert targets["OCSP GET nonce-less answers c=8 (wrk), SQLite"]["status"] == "met"
    assert targets["OCSP GET nonce-less answers c=8, SQLite"]["status"] == "missed"
    assert "OCSP POST nonce-less answers c=8 (wrk), SQLite" not in targets
    assert "OCSP GET nonce-less answers c=8 (wrk), PostgreSQL" not in targets
    table = ocsp_presigned.markdown(data["ocsp"])
    assert "| sqlite | GET, no nonce, wrk | 8 | 4,100.0 | 1.60 / 8.00 |  | 0 |" in table
    assert "POST, no nonce, wrk" not in table


def test_a_merged_ocsp_section_names_its_own_run() -> None:
    from bench import ocsp_presigned

    data = results()
    machine = {"date": "2026-12-01T19:54Z", "commit": "aaaaaaa"}
    assert "commit `aaaaaaa`" in ocsp_presigned.markdown(data["ocsp"], machine)
    measured = {
        "date": "2026-12-01T22:30Z",
        "commit": "bbbbbbb",
        "command": "python -m bench.run --only ocsp",
    }
    for db in ("sqlite", "postgresql"):
        data["ocsp"][db]["measured"] = measured
    text = ocsp_presigned.markdown(data["ocsp"], machine)
    assert "commit `bbbbbbb`" in text and "aaaaaaa" not in text
    assert "`python -m bench.run --only ocsp` and merged" in text
    # The section's own rows are unchanged by the provenance key.
    assert text.count("| sqlite |") == ocsp_presigned.markdown(results()["ocsp"], machine).count(
        "| sqlite |"
    )
