"""Signing shard and delta CRLs: the extensions that set a CRL's scope (RFC 5280 5.2.5, 5.2.4,
5.2.6), added to the CRL signing/crl.py encodes and verifies.

The caller decides the number, the base and the entries; this decides only how each extension
is encoded and whether it is critical, as RFC 5280 asks: the Issuing Distribution Point and the
Delta CRL Indicator critical (a relying party that does not understand them must not take a
partial CRL for a complete one), the Freshest CRL not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509

from ca_service.crypto import der
from ca_service.signing.crl import RevokedRow, sign_crl
from ca_service.signing.signer import Signer

_IDP = bytes.fromhex("551d1c")  # 2.5.29.28
_DELTA_INDICATOR = bytes.fromhex("551d1b")  # 2.5.29.27
_FRESHEST = bytes.fromhex("551d2e")  # 2.5.29.46
_CRITICAL = der.tlv(0x01, b"\xff")


def _extension(oid: bytes, value: bytes, *, critical: bool) -> bytes:
    return der.sequence(
        der.tlv(0x06, oid), _CRITICAL if critical else b"", der.tlv(0x04, value)
    )


def _point(url: str) -> x509.DistributionPoint:
    return x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )


def issuing_distribution_point(url: str) -> bytes:
    """A shard's scope: exactly the URL its certificates' CRL Distribution Point names (a
    validator matches the two, RFC 5280 6.3.3 (b)(2)), end-entity certificates only (CA
    certificates stay on the full CRL)."""
    idp = x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        only_contains_user_certs=True,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    return _extension(_IDP, idp.public_bytes(), critical=True)


def freshest_crl(url: str) -> bytes:
    """In a complete CRL: where its deltas are (RFC 5280 5.2.6; never in a delta CRL)."""
    return _extension(_FRESHEST, x509.FreshestCRL([_point(url)]).public_bytes(), critical=False)


def delta_crl_indicator(base_number: int) -> bytes:
    return _extension(
        _DELTA_INDICATOR, x509.DeltaCRLIndicator(base_number).public_bytes(), critical=True
    )


def sign_shard_crl(
    ca: Signer,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    rows: Iterable[RevokedRow],
    *,
    url: str,
    delta_url: str | None,
) -> bytes:
    """A complete CRL of one shard: IDP naming ``url``, and a Freshest CRL with deltas on."""
    extensions = [issuing_distribution_point(url)]
    if delta_url is not None:
        extensions.append(freshest_crl(delta_url))
    return sign_crl(ca, number, this_update, next_update, rows, more_extensions=extensions)


def sign_delta_crl(
    ca: Signer,
    number: int,
    base_number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    rows: Iterable[RevokedRow],
    *,
    url: str | None,
) -> bytes:
    """A delta CRL of the complete CRL numbered ``base_number``. Its scope must be its base's
    (RFC 5280 5.2.4; OpenSSL compares the two IDPs): ``url`` is the shard's, or None for the
    full CRL's delta, which like the full CRL has no IDP."""
    extensions = [delta_crl_indicator(base_number)]
    if url is not None:
        extensions.insert(0, issuing_distribution_point(url))
    return sign_crl(ca, number, this_update, next_update, rows, more_extensions=extensions)
