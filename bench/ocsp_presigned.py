"""The OCSP scenario (issue 15 item 2: 3,000 nonce-less answers/s at c=8).

``python -m bench.run --only ocsp`` (part of every full run), or on its own for a before/after on
two commits (``PYTHONPATH=<other worktree>``; prints JSON)::

    python -m bench.ocsp_presigned [--db sqlite|postgresql] [--seconds S]

Against the real ``ca-service serve`` (gunicorn, default workers) on a fresh store: a few
certificates issued over HTTP, then bench/loadgen.py at c=8 on keep-alive connections for
nonce-less ``POST /ocsp`` and ``GET /ocsp/{base64}`` for that fixed set (served pre-signed, after
a warm-up pass), and ``POST /ocsp`` with a fresh nonce per request (64 distinct requests cycled;
signed on every request). Each is bounded in count and time, the median of ``repeats`` runs,
with the load average before it and the server's CPU use. The HTTP scenario no longer measures
OCSP itself, so a full run measures it once.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.common import database_url, leaf_csr_pem, new_ca, progress
from bench.http_scenarios import (
    OCSP_CT,
    api_absent_reason,
    issue_some,
    measure,
    ocsp_load,
    start_server,
)
from bench.loadgen import Request
from ca_service.domain import KeyType

NONCE_REQUESTS = 64  # distinct nonce requests cycled (the server signs each one anyway)
TARGET = 3000  # nonce-less answers/s at c=8
HAND = Path(__file__).with_name("hand") / "ocsp_presigned.md"


def _nonce_requests(refs: list[tuple[x509.Certificate, x509.Certificate]]) -> list[Request]:
    out = []
    for i in range(NONCE_REQUESTS):
        cert, issuer = refs[i % len(refs)]
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        der = builder.build().public_bytes(serialization.Encoding.DER)
        out.append(Request("POST", "/ocsp", der, OCSP_CT))
    return out


def ocsp_family(
    kind: str,
    db_url: str,
    data_dir: Path,
    csr_pem: bytes,
    *,
    concurrency: int,
    seconds: float,
    max_requests: int,
    repeats: int,
    certificates: int,
) -> dict[str, Any]:
    """Nonce-less POST and GET, and POST with a nonce, at ``concurrency`` on a fresh store."""
    reason = api_absent_reason()
    if reason:
        return {"status": "absent", "reason": reason}
    new_ca(data_dir, db_url, KeyType.ECDSA_P256).db.dispose()
    with start_server(data_dir, db_url) as server:
        progress(f"ocsp {kind}: nonce-less POST and GET, and POST with a nonce, c={concurrency}")
        issued = issue_some(server, csr_pem, certificates, 60)
        refs = [
            (
                x509.load_pem_x509_certificate(a["certificate"].encode()),
                x509.load_pem_x509_certificates(a["chain"].encode())[0],
            )
            for a in issued
        ]
        out = ocsp_load(server, refs, concurrency, seconds, max_requests, repeats)
        out["post_nonce"] = measure(
            server, _nonce_requests(refs), concurrency=concurrency, seconds=seconds,
            max_requests=max(1, max_requests // 4), repeats=repeats, ok_statuses=(200,),
        )  # fmt: skip
        out["workers"] = len(server.workers())
    out["db"] = kind
    return out


def run(kind: str, seconds: float, certificates: int) -> dict[str, Any]:
    """The standalone form: one database, c=8, three runs of ``seconds / 3``."""
    with tempfile.TemporaryDirectory(prefix="ocsp-bench-") as tmp:
        work = Path(tmp)
        with database_url(kind, work) as db_url:
            out = ocsp_family(
                kind, db_url, work / "data", leaf_csr_pem(), concurrency=8, seconds=seconds,
                max_requests=200_000, repeats=3, certificates=certificates,
            )  # fmt: skip
    out["cpus"] = os.cpu_count()
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(ocsp_results: dict[str, Any], machine: dict[str, Any] | None = None) -> str:
    """The "OCSP pre-signed" section from the scenario's results; without them, the section
    measured by hand (bench/hand/ocsp_presigned.md) when asked for, else ''."""
    dbs = {k: v for k, v in (ocsp_results or {}).items() if isinstance(v, dict)}
    if not dbs:
        return ""
    # A section merged from another run names that run (its own "measured"), not this file's.
    own = next((v["measured"] for v in dbs.values() if isinstance(v.get("measured"), dict)), None)
    source = own or machine
    when = f" Run {source.get('date')}, commit `{source.get('commit')}`." if source else ""
    merged = (
        own
        and machine
        and (own.get("date"), own.get("commit")) != (machine.get("date"), machine.get("commit"))
    )
    if merged and own and own.get("command"):
        when += f" Measured by `{own['command']}` and merged into this run's results."
    lines = [
        "",
        "## OCSP pre-signed (issue 15 item 2)",
        "",
        f"Target: at least {TARGET:,} nonce-less OCSP answers/s at c=8. The `ocsp` scenario "
        "(bench/ocsp_presigned.py): the real `ca-service serve` on a fresh store, a few "
        "certificates issued over HTTP, then the load generator on keep-alive connections: "
        "nonce-less `POST /ocsp` and `GET /ocsp/{base64}` (served pre-signed), and `POST /ocsp` "
        "with a fresh nonce (signed per request). The median of the repeated runs; the load "
        "generator shares the cores with the server. bench/loadgen.py is Python and spends "
        "about as much CPU per answer as the server: the `wrk` rows (one run, one fixed "
        "request, C) show what the server answers when the generator costs less." + when,
        "",
        "| DB | request | c | answers/s | p50 / p99 ms | runs | errors | load1 | server CPU cores "
        "| >= 3,000/s at c=8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for db, r in dbs.items():
        if r.get("status") != "ok":
            reason = str(r.get("reason", ""))[:160].replace("|", "/")
            lines.append(f"| {db} | {r.get('status')}: {reason} |" + " |" * 8)
            continue
        for key, label in (("post", "POST, no nonce"), ("get", "GET, no nonce"),
                           ("post_wrk", "POST, no nonce, wrk"), ("get_wrk", "GET, no nonce, wrk"),
                           ("post_nonce", "POST, nonce (signed fresh)")):  # fmt: skip
            m = r.get(key)
            if key.endswith("_wrk") and m is None:
                continue  # no wrk on the machine that ran it
            if not isinstance(m, dict) or "rps" not in m:
                why = str((m or {}).get("reason", "not run"))[:120].replace("|", "/")
                lines.append(f"| {db} | {label} | {why} |" + " |" * 7)
                continue
            judged = "-"
            if key != "post_nonce":
                judged = (
                    ("met" if m["rps"] >= TARGET else "**missed**")
                    if m.get("concurrency") == 8
                    else "not judged (c != 8)"
                )
            runs = " / ".join(_cell(x) for x in m.get("rps_runs", []))
            lines.append(
                f"| {db} | {label} | {m.get('concurrency')} | {_cell(m['rps'])} "
                f"| {_cell(m.get('p50_ms'))} / {_cell(m.get('p99_ms'))} | {runs} "
                f"| {m.get('errors', m.get('non_2xx'))} | {_cell(m.get('load1'))} "
                f"| {_cell(m.get('server_cpu_cores'))} | {judged} |"
            )
    lines += ["", 'Where a nonce-less answer\'s time goes: PROFILES.md, "OCSP fast path".']
    if HAND.exists():
        lines.append(
            "The before/after measurement of the change by hand (base commit against the fast "
            "path, same script) is kept in bench/hand/ocsp_presigned.md."
        )
    return "\n".join(lines) + "\n"


def hand_section() -> str:
    """The section measured by hand, for a results.json that has no ocsp scenario."""
    return "\n" + HAND.read_text().strip() + "\n" if HAND.exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ocsp_presigned", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=9.0, help="per measurement (3 runs)")
    parser.add_argument("--certificates", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.db, args.seconds, args.certificates), indent=1))


if __name__ == "__main__":
    main()
