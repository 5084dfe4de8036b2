"""Reference (d), the stack's floor (bench/floor.py): it must do the work it claims to bound.

A floor that skipped its signature check, answered before its commit or lost rows would make
every "out of reach" in RESULTS.md wrong, so these run it for real: under gunicorn with
``serve``'s settings, on SQLite and on the machine's PostgreSQL, through the bench's load
generator. No timing is asserted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask.testing import FlaskClient

from bench import floor, report
from bench.common import database_url, leaf_csr_pem, pg_reachable


def _client(monkeypatch: pytest.MonkeyPatch, store: str, target: str) -> FlaskClient:
    monkeypatch.setenv("FLOOR_STORE", store)
    monkeypatch.setenv("FLOOR_TARGET", target)
    return floor.create_app().test_client()  # type: ignore[no-any-return]


def test_floor_signs_what_it_was_asked_and_commits_before_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = floor.prepare_store("sqlite", tmp_path, None)
    client = _client(monkeypatch, "sqlite", target)
    pem = leaf_csr_pem()
    answer = client.post("/sign", json={"csr": pem.decode()})
    assert answer.status_code == 201
    cert = x509.load_pem_x509_certificate(answer.get_json()["certificate"].encode())
    csr = x509.load_pem_x509_csr(pem)
    assert cert.public_key() == csr.public_key()
    assert cert.subject == csr.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san == csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The row is there as soon as the answer is, read through a connection of its own.
    with sqlite3.connect(target) as conn:
        serial, der = conn.execute("SELECT serial, der FROM floor_certificates").fetchone()
    assert serial == format(cert.serial_number, "x")
    assert der == cert.public_bytes(Encoding.DER)


def test_floor_refuses_a_bad_csr_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = floor.prepare_store("sqlite", tmp_path, None)
    client = _client(monkeypatch, "sqlite", target)
    good = leaf_csr_pem().decode()
    # A CSR whose signature no longer matches its body: one byte of the signature flipped.
    der = bytearray(x509.load_pem_x509_csr(good.encode()).public_bytes(Encoding.DER))
    der[-3] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM)
    for body in ({"csr": "not a CSR"}, {}, {"csr": tampered.decode()}):
        assert client.post("/sign", json=body).status_code == 400, body
    assert floor.stored_rows("sqlite", target) == 0


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_floor_under_gunicorn_answers_only_what_it_stored(store: str, tmp_path: Path) -> None:
    if store == "postgresql" and (why := pg_reachable()):
        pytest.skip(why)
    with database_url(store, tmp_path) as url:
        result = floor.floor_scenario(leaf_csr_pem(), [store, "none"], [4], 1.0, 400, {store: url})
    assert result["status"] == "ok"
    run = result["runs"][store]
    assert run["c4"]["ok"] > 0
    assert run["c4"]["errors"] == 0
    assert set(run["c4"]["statuses"]) == {"201"}
    # Every 201 of the run, the warm-up's included, has its row, and no row lacks its 201.
    assert run["rows_stored"] == run["answered"]
    assert run["c4"]["server_cpu_ms_per_cert"] > 0
    assert "rows_stored" not in result["runs"]["none"]
    # The worker settings are serve's own, read from the same Settings.
    assert result["workers"] >= 2
    assert result["threads"] == 16


def test_report_reads_the_floor_into_the_missed_rate_and_the_figures() -> None:
    results = {
        "machine": {"nproc": 2},
        "http": {"postgresql": {"ecdsa-p256": {"status": "ok", "issue_csr": {
            "c32": {"rps": 700.0, "p99_ms": 80.0, "concurrency": 32}}}}},
        "references": {"floor": {"status": "ok", "workers": 2, "threads": 16,
                                 "worker_class": "gthread", "runs": {
            "postgresql": {"c32": {"rps": 1000.0, "p50_ms": 30.0, "p99_ms": 60.0,
                                   "concurrency": 32, "errors": 0}, "rows_stored": 9,
                           "answered": 9},
            "none": {"c32": {"rps": 1800.0, "p50_ms": 10.0, "p99_ms": 40.0, "concurrency": 32,
                             "errors": 0}}}}},
    }  # fmt: skip
    target = next(
        t for t in report.evaluate(results)
        if t["target"] == "HTTP issuance ECDSA P-256 PostgreSQL c=32"
    )  # fmt: skip
    assert target["status"] == "missed"
    assert "1,000.0/s (0.67 of the goal)" in target["why"]
    assert "1,800.0/s storing nothing (1.20)" in target["why"]
    results["references"]["floor"]["runs"]["postgresql"]["c8"] = {  # type: ignore[index]
        "rps": 600.0, "p50_ms": 12.0, "p99_ms": 28.5, "concurrency": 8, "errors": 0
    }  # fmt: skip
    results["http"]["postgresql"]["ecdsa-p256"]["issue_csr"]["c8"] = {  # type: ignore[index]
        "rps": 400.0, "p50_ms": 15.0, "p99_ms": 40.0, "concurrency": 8
    }  # fmt: skip
    p99 = next(
        t for t in report.evaluate(results) if t["target"] == "p99 issuance latency c=8 PostgreSQL"
    )
    assert p99["status"] == "missed"
    assert "floor (d) at c=8 in this run: p99 28.5 ms" in p99["why"]
    row = next(
        r for r in report.figures(results) if "PostgreSQL, c=32, vs the stack's floor" in r[0]
    )
    assert row[3] == "0.70"
    assert "9 of 9" in "\n".join(report.floor_markdown(results["references"]["floor"]))


def test_report_reads_the_floor_into_the_cfssl_ratio() -> None:
    c32 = {"rps": 600.0, "p50_ms": 40.0, "p99_ms": 90.0, "concurrency": 32, "errors": 0}
    results = {
        "machine": {"nproc": 2},
        "http": {"sqlite": {"ecdsa-p256": {"status": "ok", "issue_csr": {"c32": c32}}}},
        "references": {
            "cfssl": {"status": "ok", "runs": {"ecdsa_sqlite": {"c32": {**c32, "rps": 500.0}}}},
            "floor": {"status": "ok", "runs": {"sqlite": {"c32": {**c32, "rps": 700.0}}}},
        },
    }
    target = next(
        t for t in report.evaluate(results)
        if t["target"] == "HTTP issuance SQLite c=32 vs CFSSL + SQLite certdb (same run)"
    )  # fmt: skip
    assert target["status"] == "missed"
    assert target["measured"] == 1.2
    assert "floor (d) on SQLite in this run: 700.0/s, 1.40x CFSSL" in target["why"]
