"""The CRL encoder against `cryptography`'s CRL builder: the same inputs, the same bytes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from ca_service.core.facade import Core
from ca_service.crypto import der
from ca_service.crypto.keys import generate_private_key, signature_hash
from ca_service.domain import KeyType, RevocationReason
from ca_service.signing.crl import RevokedRow, sign_crl
from ca_service.signing.signer import Signer

from ..helpers import lint_crl, module_ca, write

THIS = dt.datetime(2026, 11, 29, 1, 2, 3, tzinfo=dt.UTC)
NEXT = THIS + dt.timedelta(hours=24)
SERIALS = [1, 0x7F, 0x80, 0xFF, 0x100, 0x8000, 2**63, 2**158 + 12345, 2**159 - 1]
WHEN = [
    dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=dt.UTC),  # GeneralizedTime from here on
    dt.datetime(1999, 6, 1, 12, 0, 0, tzinfo=dt.UTC),
]
REASONS: list[RevocationReason | None] = [None, *RevocationReason]


def _rows(as_text: bool) -> list[RevokedRow]:
    rows: list[RevokedRow] = []
    for i, serial in enumerate(SERIALS * 3):
        when = WHEN[i % len(WHEN)]
        reason = REASONS[i % len(REASONS)]
        stored: dt.datetime | str = (
            when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if as_text else when
        )
        rows.append((format(serial, "x"), stored, reason.value if reason else None))
    return rows


def _signer(ca: Core) -> Signer:
    """The default CA's Signer, as the core's CRL publisher uses it."""
    return ca._registry.load(ca.default_authority()).signer


def _reference(ca: Core, number: int, rows: list[RevokedRow]) -> bytes:
    """The same CRL made by cryptography's builder: the encoding we must match. Only the TBS
    bytes are compared, so any key of the CA's type signs it (the CA's key stays in signing/)."""
    material = _signer(ca)
    revoked = []
    for serial, when, reason in rows:
        assert isinstance(when, dt.datetime)
        builder = x509.RevokedCertificateBuilder(int(serial, 16), when)
        if reason and reason != RevocationReason.UNSPECIFIED.value:
            builder = builder.add_extension(
                x509.CRLReason(RevocationReason(reason).flag), critical=False
            )
        revoked.append(builder.build())
    crl = x509.CertificateRevocationListBuilder(
        issuer_name=material.certificate.subject,
        last_update=THIS,
        next_update=NEXT,
        extensions=[
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(material.ski),
            ),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=revoked,
    ).sign(generate_private_key(material.key_type), signature_hash(material.key_type))
    return crl.tbs_certlist_bytes


@pytest.mark.parametrize(
    "key_type", [KeyType.ECDSA_P256, KeyType.ECDSA_P384, KeyType.RSA_2048, KeyType.ED25519]
)
def test_same_bytes_as_cryptography(key_type: KeyType, tmp_path: Path) -> None:
    ca = module_ca(tmp_path, key_type)
    material = _signer(ca)
    for number in (1, 255, 2**40):
        ours = x509.load_der_x509_crl(sign_crl(material, number, THIS, NEXT, _rows(False)))
        assert ours.tbs_certlist_bytes == _reference(ca, number, _rows(False))
        from_text = x509.load_der_x509_crl(sign_crl(material, number, THIS, NEXT, _rows(True)))
        assert from_text.tbs_certlist_bytes == ours.tbs_certlist_bytes
        assert ours.is_signature_valid(material.certificate.public_key())  # type: ignore[arg-type]
    crl_path = write(tmp_path / "crl.der", sign_crl(material, 7, THIS, NEXT, _rows(False)))
    assert lint_crl(crl_path) == ""


def test_empty_crl_matches_and_omits_the_entry_list(tmp_path: Path) -> None:
    ca = module_ca(tmp_path)
    ours = x509.load_der_x509_crl(sign_crl(_signer(ca), 3, THIS, NEXT, []))
    assert ours.tbs_certlist_bytes == _reference(ca, 3, [])
    assert len(list(ours)) == 0


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24])
def test_der_lengths(n: int) -> None:
    encoded = der.length(n)
    if n < 128:
        assert encoded == bytes((n,))
    else:
        assert encoded[0] & 0x80 and int.from_bytes(encoded[1:], "big") == n
        assert encoded[1] != 0  # minimal: no leading zero octet
