"""Large CRLs through a real gunicorn (issue 15 item 3): answered from a file on the data
directory (send_file, so gunicorn's wsgi.file_wrapper sendfile()s it), with an ETag that a
revocation changes, 304 to If-None-Match, and the same bytes as the CRL in the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bench.populate import Population, load
from ca_service.web.public import FILE_FROM_BYTES

from ..live import LiveServer, db_engine, fetch_crl, issue, revoke, server_tracebacks

ROWS = 2000  # about 95 KB of CRL: above FILE_FROM_BYTES


@pytest.fixture(scope="module")
def big(live: LiveServer) -> LiveServer:
    """The live server's store with ROWS revoked rows loaded in bulk, then one revocation
    through the API, so the server signs and publishes the large CRL."""
    import sqlalchemy as sa

    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            authority_id = conn.execute(
                sa.text("SELECT id FROM authorities WHERE name = 'default'")
            ).scalar_one()
    finally:
        engine.dispose()
    template = bytes(range(256)) * 3  # the stored DER is never parsed by the CRL path
    pop = Population(int(authority_id), template, 100)
    url = live.env["CA_DATABASE_URL"]
    assert load(pop, url, ROWS, revoked=True, deadline=float("inf")) == ROWS
    serial = issue(live, common_name="first.serve.example.test").json["serial"]
    revoke(live, serial)
    return live


def _files(live: LiveServer) -> list[Path]:
    return sorted((Path(live.env["CA_DATA_DIR"]) / "crl-cache").glob("*"))


@pytest.mark.parametrize("path", ["/crl", "/ca/default/crl", "/crl.pem", "/ca/default/crl.pem"])
def test_large_crl_from_file_with_etag_and_304(big: LiveServer, path: str) -> None:
    reply = big.request("GET", path)
    assert reply.status == 200
    crl = fetch_crl(big, path)
    assert len(crl) >= ROWS + 1
    assert len(crl.public_bytes(Encoding.DER)) >= FILE_FROM_BYTES
    assert int(reply.headers["content-length"]) == len(reply.body)
    etag = reply.headers["etag"]
    # The file that was sent: named by authority, number and digest, holding the same bytes.
    suffix = ".pem" if path.endswith(".pem") else ".der"
    files = [f for f in _files(big) if f.suffix == suffix]
    assert len(files) == 1 and files[0].read_bytes() == reply.body
    same = big.request("GET", path, headers={"If-None-Match": etag})
    assert same.status == 304 and same.body == b"" and same.headers["etag"] == etag
    other = big.request("GET", path, headers={"If-None-Match": '"default-0-0000"'})
    assert other.status == 200 and other.body == reply.body
    assert server_tracebacks(big) == 0


def test_revocation_changes_etag_and_file(big: LiveServer) -> None:
    before = big.request("GET", "/crl")
    old_etag = before.headers["etag"]
    serial = issue(big, common_name="second.serve.example.test").json["serial"]
    revoke(big, serial)
    after = big.request("GET", "/crl", headers={"If-None-Match": old_etag})
    assert after.status == 200 and after.headers["etag"] != old_etag
    crl = x509.load_der_x509_crl(after.body)
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    again = big.request("GET", "/crl", headers={"If-None-Match": after.headers["etag"]})
    assert again.status == 304
    # The older DER edition is gone from the cache directory; only the current one is left.
    ders = [f for f in _files(big) if f.suffix == ".der"]
    assert len(ders) == 1 and ders[0].read_bytes() == after.body
    assert server_tracebacks(big) == 0
