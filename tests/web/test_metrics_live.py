"""GET /metrics through a real gunicorn with two workers (issue 14 items 4 and 7): the text
format parses with prometheus_client's parser, counters of both workers add up, latency is
keyed by URL rule, and the CRL, OCSP, authentication, pool and expiry series say what happened."""

from __future__ import annotations

import datetime as dt
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.conftest import database
from tests.live import LiveServer, assert_problem, create_token, issue, start_server

from .observability import json_lines, ocsp_request, post_ocsp, scrape, value

METRICS_TOKEN = "metrics-bearer-for-tests"
ISSUED = "ca_certificates_issued_total"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp(f"metrics-{request.param}")
    env = {
        "CA_METRICS_ENABLED": "true",
        "CA_METRICS_TOKEN": METRICS_TOKEN,
        "CA_METRICS_EXPIRY_LEAVES": "3",
        "CA_LOG_FORMAT": "json",
        # Where the master makes its metrics directory (tempfile honours TMPDIR).
        "TMPDIR": str(base / "tmp"),
    }
    (base / "tmp").mkdir()
    with database(request.param, base) as url:
        server = start_server(base / "data", url, workers=2, extra_env=env)
        try:
            yield server
        finally:
            server.stop()


def _scrape(live: LiveServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    return scrape(live, METRICS_TOKEN)


def _issuing_pids(live: LiveServer) -> set[int]:
    """The workers that answered an issuance, from the JSON access log."""
    return {
        e["pid"]
        for e in json_lines(live.log(), being_written=True)
        if e.get("logger") == "gunicorn.access" and e.get("action") == "api.issue_certificate"
    }


def _workers(live: LiveServer) -> list[int]:
    """The gunicorn workers: the children of the master (the process `serve` became)."""
    pid = live.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def test_counters_of_both_workers_add_up(live: LiveServer) -> None:
    labels = {"authority": "default", "profile": "server", "requester_kind": "token"}
    before = value(_scrape(live), ISSUED, outcome="issued", **labels)
    workers = _workers(live)
    assert len(workers) == 2
    # Which worker accepts a connection is the kernel's choice: each worker in turn is
    # paused (SIGSTOP, well within the worker timeout) so that the other issues three.
    for paused in workers:
        os.kill(paused, signal.SIGSTOP)
        try:
            for n in range(3):
                issue(live, common_name=f"w{paused}-{n}.example.test")
        finally:
            os.kill(paused, signal.SIGCONT)
    assert set(workers) <= _issuing_pids(live)
    # Whichever worker answers the scrape, it reports both workers' issuances.
    for _ in range(4):
        assert value(_scrape(live), ISSUED, outcome="issued", **labels) == before + 6


def test_refused_issuance_and_revocation_are_counted(live: LiveServer) -> None:
    ci, _ = create_token(live, "issuer", name="ci-metrics", allowed_names=["*.ci.example.test"])
    before = _scrape(live)
    refused = live.request(
        "POST", "/api/v1/certificates", token=ci, body={"common_name": "api.example.test"}
    )
    assert_problem(refused, 403)
    serial = issue(live, ci, common_name="b.ci.example.test").json["serial"]
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert reply.status == 200, reply.body
    after = _scrape(live)
    for outcome, delta in (("refused", 1), ("issued", 1)):
        labels = {"requester_kind": "token", "outcome": outcome, "authority": "default"}
        assert value(after, ISSUED, **labels) - value(before, ISSUED, **labels) == delta
    revoked = {"authority": "default", "profile": "server", "outcome": "revoked"}
    name = "ca_certificates_revoked_total"
    assert value(after, name, **revoked) - value(before, name, **revoked) == 1


def test_latency_is_keyed_by_url_rule_not_path(live: LiveServer) -> None:
    serial = issue(live, common_name="latency.example.test").json["serial"]
    assert (
        live.request("GET", f"/api/v1/certificates/{serial}", token=live.admin_token).status == 200
    )
    assert live.request("GET", "/no/such/path/x1y2", check_spec=False).status == 404
    samples = _scrape(live)
    counts = samples["ca_http_request_duration_seconds_count"]
    endpoints = {labels["endpoint"] for labels, _ in counts}
    assert {"/api/v1/certificates", "/api/v1/certificates/<serial>", "unmatched"} <= endpoints
    assert value(samples, "ca_http_request_duration_seconds_count",
                 endpoint="/api/v1/certificates/<serial>", method="GET") >= 1  # fmt: skip
    buckets = [lbl for lbl, _ in samples["ca_http_request_duration_seconds_bucket"]]
    assert any(lbl.get("le") == "+Inf" for lbl in buckets)
    every_label = {
        v for series in samples.values() for labels, _ in series for v in labels.values()
    }
    assert serial not in every_label and "/no/such/path/x1y2" not in every_label
    assert value(samples, "ca_http_requests_total", endpoint="unmatched", status="404") >= 1


def test_crl_gauges_match_the_published_crl(live: LiveServer) -> None:
    serial = issue(live, common_name="crl.example.test").json["serial"]
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        token=live.admin_token,
        body={"reason": "superseded"},
    )
    assert reply.status == 200
    der = live.request("GET", "/ca/default/crl").body
    crl = x509.load_der_x509_crl(der)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    samples = _scrape(live)
    assert value(samples, "ca_crl_number", authority="default") == number
    assert value(samples, "ca_crl_size_bytes", authority="default") == len(der)
    assert value(samples, "ca_crl_age_seconds", authority="default") >= 0
    assert value(samples, "ca_crl_next_update_seconds", authority="default") > 0
    # Re-signed by a worker after the revocation: its build time was observed.
    assert value(samples, "ca_crl_build_seconds_count", authority="default") >= 1


def test_ocsp_answers_are_counted_by_status(live: LiveServer) -> None:
    good = issue(live, common_name="ocsp-good.example.test").json
    bad = issue(live, common_name="ocsp-revoked.example.test").json
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{bad['serial']}/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert reply.status == 200
    issuer = good["chain"]
    before = _scrape(live)
    assert (
        post_ocsp(live, ocsp_request(good["certificate"], issuer)).certificate_status.name == "GOOD"
    )
    assert (
        post_ocsp(live, ocsp_request(bad["certificate"], issuer)).certificate_status.name
        == "REVOKED"
    )
    unknown = post_ocsp(live, ocsp_request(good["certificate"], issuer, serial=0x5EED))
    assert unknown.certificate_status.name == "UNKNOWN"
    malformed = live.request(
        "POST", "/ocsp", raw=b"\x30\x03junk", headers={"Content-Type": "application/ocsp-request"}
    )
    assert malformed.status == 200
    after = _scrape(live)
    name = "ca_ocsp_responses_total"
    for status in ("good", "revoked", "unknown", "malformed"):
        assert value(after, name, status=status) - value(before, name, status=status) == 1, status


def test_authentication_failures_are_counted_by_kind(live: LiveServer) -> None:
    reader, _ = create_token(live, "reader", name="reader-metrics")
    before = _scrape(live)
    wrong = "cas_0123456789abcdef_" + "A" * 43
    assert_problem(live.request("GET", "/api/v1/certificates", token=wrong), 401)
    assert_problem(live.request("GET", "/api/v1/certificates"), 401)
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert_problem(live.request("GET", "/api/v1/certificates", headers=basic), 401)
    denied = live.request(
        "POST", "/api/v1/tokens", token=reader, body={"name": "x", "role": "admin"}
    )
    assert_problem(denied, 403)
    after = _scrape(live)
    name = "ca_auth_failures_total"
    for kind, reason in (
        ("token", "unauthenticated"),
        ("missing", "unauthenticated"),
        ("malformed", "unauthenticated"),
        ("token", "forbidden"),
    ):
        delta = value(after, name, kind=kind, reason=reason) - value(
            before, name, kind=kind, reason=reason
        )
        assert delta == 1, (kind, reason)


def test_metrics_need_their_token(live: LiveServer) -> None:
    before = _scrape(live)
    assert_problem(live.request("GET", "/metrics"), 401)
    assert_problem(live.request("GET", "/metrics", token=live.admin_token), 401)
    after = _scrape(live)
    labels = {"kind": "metrics", "reason": "unauthenticated"}
    name = "ca_auth_failures_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 2


def test_pool_gauges_are_summed_over_workers(live: LiveServer) -> None:
    samples = _scrape(live)
    # Two workers, each with a pool of at least 5 (SQLite's default queue, PostgreSQL's 8).
    assert value(samples, "ca_db_pool_size") >= 10
    assert 0 <= value(samples, "ca_db_pool_checked_out") <= value(samples, "ca_db_pool_size") * 2
    assert (
        "ca_db_errors_total" not in samples
        or value(samples, "ca_db_errors_total", kind="unavailable") == 0
    )


def test_expiry_gauge_has_the_cas_and_the_soonest_leaves(live: LiveServer) -> None:
    soonest = issue(live, common_name="soon.example.test", validity_days=1).json
    for n in range(3):
        issue(live, common_name=f"later{n}.example.test", validity_days=30)
    series = _scrape(live)["ca_certificate_expiry_seconds"]
    leaves = {labels["serial"]: v for labels, v in series if labels["kind"] == "leaf"}
    cas = {labels["authority"]: v for labels, v in series if labels["kind"] == "ca"}
    assert len(leaves) == 3  # metrics_expiry_leaves bounds the series
    assert soonest["serial"] in leaves
    assert 0 < leaves[soonest["serial"]] <= 86400
    assert leaves[soonest["serial"]] == min(leaves.values())
    assert set(cas) == {"default", "default-root"}
    root = x509.load_pem_x509_certificate(soonest["root"].encode())
    left = (root.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
    assert abs(cas["default-root"] - left) < 120


def test_the_metrics_document_is_in_the_openapi_contract(live: LiveServer) -> None:
    spec: dict[str, Any] = live.request("GET", "/openapi.json").json
    operation = spec["paths"]["/metrics"]["get"]
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert {"401", "404"} <= set(operation["responses"])
    assert "Traceback" not in live.log()


def test_the_metrics_directory_is_the_servers_own_and_goes_with_it(live: LiveServer) -> None:
    """Last in this module: it stops the server."""
    tmp = Path(live.env["TMPDIR"])
    (directory,) = tmp.glob("ca-service-metrics-*")
    assert directory.stat().st_mode & 0o077 == 0
    pids = {p.stem.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")}
    assert len(pids) >= 2  # one file per worker that counted
    assert live.stop() == 0
    assert not list(tmp.glob("ca-service-metrics-*"))
