"""The full CRL as the store builds it (issue 15 item 3), on SQLite and PostgreSQL: a few thousand
revoked rows loaded in bulk, with every reason, holds, dates either side of 2050 and serials of
every awkward shape, must give byte for byte the TBS that cryptography's own CRL builder makes of
the same entries, and a CRL that pkilint and openssl accept."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bench.populate import Population, load, prepare
from ca_service.core.facade import Core
from ca_service.crypto.keys import generate_private_key, signature_hash
from ca_service.domain import RevocationReason
from ca_service.signing.crl import entry_der
from ca_service.signing.serials import serial_hex

from ..conftest import ADMIN, run
from ..helpers import chain_files, lint_crl, module_ca, openssl_verify, write

ROWS = 3000
REASONS: list[str | None] = [None, *(r.value for r in RevocationReason)]
# Serials the encoder must pad (top bit set: a 0x00 first), write short, or take as odd-length hex.
AWKWARD = [1, 0x7F, 0x80, 0xFF, 0x100, 0x8000, 0xABC, 2**63, 2**159 - 1, 2**158 + 1, 2**64 - 1]
# Either side of RFC 5280's switch from UTCTime to GeneralizedTime, and ordinary times.
WHEN = [
    dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=dt.UTC),
    dt.datetime(2050, 1, 1, 0, 0, 1, 999_999, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=dt.UTC),
    dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
]
NOT_AFTER = dt.datetime(2060, 1, 1, tzinfo=dt.UTC)


def _maker(expected: dict[int, tuple[dt.datetime, str | None]]) -> Any:
    """A bench.populate row maker that records what it wrote: serial -> (time, reason)."""

    def rows(
        pop: Population, count: int, revoked: bool, now: dt.datetime, rng: random.Random
    ) -> Iterator[tuple[Any, ...]]:
        for i in range(count):
            index = len(expected)
            if index < len(AWKWARD):
                serial = AWKWARD[index]
            else:
                # Random widths up to 159 bits (RFC 5280: at most 20 octets), top bit set or not.
                serial = rng.getrandbits(rng.choice((8, 63, 64, 127, 128, 159))) | 1
            while serial in expected:
                serial += 2
            when = WHEN[index % len(WHEN)] if index % 3 else now - dt.timedelta(seconds=index)
            reason = REASONS[index % len(REASONS)]
            expected[serial] = (when.replace(microsecond=0), reason)
            host = f"h{index}.fast.example.test"
            # Most with the entry a revocation stores (migration 0013); every seventh without,
            # as a row revoked before that migration: both kinds must be listed, byte-exact.
            entry = entry_der(serial_hex(serial), when, reason) if index % 7 else None
            yield (
                pop.authority_id, serial_hex(serial), f"CN={host}", host, f" dns:{host} ",
                "ecdsa-p256", "server", now, NOT_AFTER, "revoked", when, reason, entry,
                f"{i:08x}{serial:056x}"[-64:], pop.template_der, "test", now,
            )  # fmt: skip

    return rows


@pytest.fixture(scope="module")
def store(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Core, dict[int, tuple[dt.datetime, str | None]], Path]]:
    base = tmp_path_factory.mktemp("crl-fast")
    ca = module_ca(base, db_url=module_db_url)
    expected: dict[int, tuple[dt.datetime, str | None]] = {}
    pop = prepare(ca)  # issues a few valid certificates (not listed) and finds the template
    url = ca.settings.database_url
    assert url is not None
    done = load(pop, url, ROWS, revoked=True, deadline=float("inf"), rows=_maker(expected))
    assert done == ROWS
    yield ca, expected, base
    ca.db.dispose()


def _reason(entry: x509.RevokedCertificate) -> str | None:
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None
    return next(r.value for r in RevocationReason if r.flag is flag)


def test_entries_are_those_stored(
    store: tuple[Core, dict[int, tuple[dt.datetime, str | None]], Path],
) -> None:
    ca, expected, _ = store
    crl = x509.load_der_x509_crl(ca.generate_crl().der)
    got = {e.serial_number: (e.revocation_date_utc, _reason(e)) for e in crl}
    want = {
        serial: (when, None if reason == RevocationReason.UNSPECIFIED.value else reason)
        for serial, (when, reason) in expected.items()
    }
    assert len(crl) == ROWS
    assert got == want
    held = [s for s, (_, r) in got.items() if r == RevocationReason.CERTIFICATE_HOLD.value]
    assert held and all(expected[s][1] == "certificateHold" for s in held)


def test_same_bytes_as_cryptography_builder(
    store: tuple[Core, dict[int, tuple[dt.datetime, str | None]], Path],
) -> None:
    """The reference: cryptography's builder on the same entries, in the order ours lists them
    (a store returns rows in no fixed order), the same dates, number and extensions. Its TBS
    must be ours byte for byte: tags, lengths, the 0x00 pads and the time types included."""
    ca, _, _ = store
    stored = ca.generate_crl()
    ours = x509.load_der_x509_crl(stored.der)
    signer = ca._registry.load(ca.default_authority()).signer
    revoked = []
    for entry in ours:
        builder = x509.RevokedCertificateBuilder(entry.serial_number, entry.revocation_date_utc)
        for extension in entry.extensions:
            builder = builder.add_extension(extension.value, extension.critical)
        revoked.append(builder.build())
    reference = x509.CertificateRevocationListBuilder(
        issuer_name=signer.certificate.subject,
        last_update=stored.this_update,
        next_update=stored.next_update,
        extensions=list(ours.extensions),
        revoked_certificates=revoked,
    ).sign(generate_private_key(signer.key_type), signature_hash(signer.key_type))
    assert reference.tbs_certlist_bytes == ours.tbs_certlist_bytes
    # The shapes that need care are really there: a padded serial, both time types.
    assert b"\x02\x02\x00\x80" in stored.der and b"\x02\x09\x00\xff" in stored.der
    assert b"\x17\x0d491231235959Z" in stored.der and b"\x18\x0f20500101000000Z" in stored.der


def test_lints_and_verifies_with_openssl(
    store: tuple[Core, dict[int, tuple[dt.datetime, str | None]], Path], openssl: str
) -> None:
    ca, _, base = store
    good = ca.issue_with_new_key(ADMIN, common_name="good.fast.example.test")
    bad = ca.issue_with_new_key(ADMIN, common_name="bad.fast.example.test")
    ca.revoke(bad.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    stored = ca.generate_crl()
    crl_path = write(base / "crl.der", stored.der)
    assert lint_crl(crl_path) == ""
    root, inter = chain_files(ca, base)
    result = run(
        [openssl, "crl", "-inform", "DER", "-in", str(crl_path), "-CAfile", str(inter), "-noout"]
    )
    assert result.returncode == 0 and "verify OK" in (result.stdout + result.stderr)
    crl_pem = base / "crl.pem"
    run([openssl, "crl", "-inform", "DER", "-in", str(crl_path), "-out", str(crl_pem)])
    for record, verdict in ((good, "OK"), (bad, "certificate revoked")):
        leaf = write(base / f"{record.record.serial}.pem", record.certificate_pem)
        rc, out = openssl_verify(openssl, root, leaf, inter, "-crl_check", "-CRLfile", str(crl_pem))
        assert verdict in out and (rc == 0) == (verdict == "OK"), out
    listed = x509.load_der_x509_crl(stored.der)
    assert listed.get_revoked_certificate_by_serial_number(int(bad.record.serial, 16)) is not None
    assert len(listed) == ROWS + 1


def test_postgresql_stores_the_body_with_lz4(
    store: tuple[Core, dict[int, tuple[dt.datetime, str | None]], Path],
) -> None:
    """pglz took 2.7-2.9 s to store a 1M-entry CRL, lz4 0.8-0.9 s: the body is written with lz4
    (SET LOCAL in the CRL's own transaction, whatever the server's default)."""
    import sqlalchemy as sa

    ca, _, _ = store
    if ca.db.engine.dialect.name != "postgresql":
        pytest.skip("TOAST compression is PostgreSQL's")
    stored = ca.generate_crl()
    with ca.db.engine.connect() as conn:
        method, number = conn.execute(
            sa.text("SELECT pg_column_compression(der), number FROM crls")
        ).one()
    assert number == stored.number and method == "lz4"
