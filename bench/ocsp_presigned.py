"""``python -m bench.ocsp_presigned [--db sqlite|postgresql] [--seconds S]``: OCSP answers/s at c=8.

Issue 15 item 2 asks for 3,000 nonce-less answers/s at c=8. This runs just that, bounded in count
and time, against the real ``ca-service serve`` (gunicorn, default workers): nonce-less POST and
GET for a fixed set of certificates (served pre-signed), and POST with a fresh nonce per request
(signed fresh), each with the load average before it and the server's CPU use. Run it on two
commits (``PYTHONPATH=<other worktree>``) for a before/after; it prints JSON.
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

from bench.common import database_url, leaf_csr_pem, new_ca
from bench.http_scenarios import OCSP_CT, issue_some, measure, ocsp_load, start_server
from bench.loadgen import Request
from ca_service.domain import KeyType

NONCE_REQUESTS = 64  # distinct nonce requests cycled (the server signs each one anyway)


def _nonce_requests(refs: list[tuple[x509.Certificate, x509.Certificate]]) -> list[Request]:
    out = []
    for i in range(NONCE_REQUESTS):
        cert, issuer = refs[i % len(refs)]
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        der = builder.build().public_bytes(serialization.Encoding.DER)
        out.append(Request("POST", "/ocsp", der, OCSP_CT))
    return out


def run(kind: str, seconds: float, certificates: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ocsp-bench-") as tmp:
        work = Path(tmp)
        with database_url(kind, work) as db_url:
            new_ca(work / "data", db_url, KeyType.ECDSA_P256).db.dispose()
            with start_server(work / "data", db_url) as server:
                issued = issue_some(server, leaf_csr_pem(), certificates, 60)
                refs = [
                    (
                        x509.load_pem_x509_certificate(a["certificate"].encode()),
                        x509.load_pem_x509_certificates(a["chain"].encode())[0],
                    )
                    for a in issued
                ]
                out = ocsp_load(server, refs, 8, seconds, 200_000, 3)
                out["post_nonce"] = measure(
                    server, _nonce_requests(refs), concurrency=8, seconds=seconds,
                    max_requests=50_000, repeats=3, ok_statuses=(200,),
                )  # fmt: skip
    out["db"] = kind
    out["cpus"] = os.cpu_count()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ocsp_presigned", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=9.0, help="per measurement (3 runs)")
    parser.add_argument("--certificates", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.db, args.seconds, args.certificates), indent=1))


if __name__ == "__main__":
    main()
