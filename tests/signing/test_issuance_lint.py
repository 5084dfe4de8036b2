"""Issue item 3: what every issued certificate contains, checked by openssl and pkilint.

The full matrix (profile x key type) runs on SQLite; on PostgreSQL a representative slice runs
too (an ECDSA and an RSA CA through the whole matrix, and the serial, validity and subject-less
checks): the database plays no part in what is signed, but each record, serial and CRL is read
back from the store. One CA per key type and backend per module keeps the RSA-4096 key
generation to once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    SignatureAlgorithmOID,
)

from ca_service.clock import FixedClock, SystemClock
from ca_service.core.facade import Core
from ca_service.crypto.keys import key_type_of
from ca_service.domain import KeyType, RevocationReason
from ca_service.policy.names import NameConstraintsSpec
from ca_service.signing.serials import SERIAL_BITS

from ..conftest import ADMIN, database, run
from ..helpers import (
    LEAF_KEY_KIND,
    chain_files,
    csr_pem,
    lint_cert,
    lint_crl,
    make_key,
    module_ca,
    openssl_verify,
    write,
)

PUBLIC = "http://127.0.0.1:8000"
RSA_TYPES = {KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096}
EXPECTED_HASH = {
    KeyType.ECDSA_P256: hashes.SHA256,
    KeyType.ECDSA_P384: hashes.SHA384,
    KeyType.RSA_2048: hashes.SHA256,
    KeyType.RSA_3072: hashes.SHA256,
    KeyType.RSA_4096: hashes.SHA256,
}
# Per profile: the CSR's CN and the extra names asked for (all four SAN kinds, and an IDN).
# URIs use https: pkilint validates URI syntax with a web-URL checker that refuses spiffe://.
REQUESTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "server": (
        "svc.example.test",
        ("www.example.test", "10.1.2.3", "2001:db8::1", "bücher.example.test"),
    ),
    "client": ("Alice Example", ("email:alice@example.test", "uri:https://id.example.test/alice")),
    "peer": (
        "peer.example.test",
        ("10.0.0.7", "email:ops@example.test", "uri:https://peer.example.test/id"),
    ),
}
EKUS = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "peer": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}
PURPOSE = {"server": "sslserver", "client": "sslclient", "peer": "sslserver"}
# (backend, CA key type): every key type on SQLite, the slice above on PostgreSQL.
TYPED_CAS = [("sqlite", k) for k in KeyType] + [
    ("postgresql", KeyType.ECDSA_P256),
    ("postgresql", KeyType.RSA_2048),
]


@pytest.fixture(scope="module")
def leaf_key() -> Callable[[KeyType], object]:
    """One leaf key per key type for the whole module (RSA-4096 generation is slow)."""
    cache: dict[KeyType, object] = {}

    def get(key_type: KeyType) -> object:
        if key_type not in cache:
            cache[key_type] = make_key(LEAF_KEY_KIND[key_type])
        return cache[key_type]

    return get


@pytest.fixture(scope="module", params=TYPED_CAS, ids=lambda p: f"{p[0]}-{p[1]}")
def typed_ca(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Core, Path]]:
    backend, key_type = request.param
    base = tmp_path_factory.mktemp(f"ca-{key_type}")
    with database(backend, base) as url:
        ca = module_ca(base, key_type, db_url=url)
        yield ca, base
        ca.db.dispose()


def _issue(ca: Core, key: object, profile: str) -> x509.Certificate:
    cn, extra = REQUESTS[profile]
    issued = ca.issue_from_csr(csr_pem(key, cn), ADMIN, profile=profile, extra_names=extra)
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def _assert_leaf_shape(
    cert: x509.Certificate, ca: Core, profile: str, leaf_type: KeyType
) -> None:
    inter = ca.authority_certificate()
    ca_type = key_type_of(ca.authority_certificate().public_key())
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert ku.value.key_encipherment is (leaf_type in RSA_TYPES)
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == EKUS[profile]
    assert _ext(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    )
    inter_ski = _ext(inter, x509.SubjectKeyIdentifier).value
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == inter_ski.digest
    dp = _ext(cert, x509.CRLDistributionPoints).value
    assert [n.value for n in dp[0].full_name] == [f"{PUBLIC}/ca/default/crl"]
    aia = {
        (d.access_method, d.access_location.value)
        for d in _ext(cert, x509.AuthorityInformationAccess).value
    }
    assert aia == {
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{PUBLIC}/ca/default/ca.cer"),
        (AuthorityInformationAccessOID.OCSP, f"{PUBLIC}/ocsp"),
    }
    if ca_type is KeyType.ED25519:
        assert cert.signature_hash_algorithm is None
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    else:
        assert isinstance(cert.signature_hash_algorithm, EXPECTED_HASH[ca_type])
    assert cert.issuer == inter.subject
    assert 1 << 64 <= cert.serial_number < 1 << SERIAL_BITS


@pytest.mark.parametrize("profile", ["server", "client", "peer"])
def test_every_profile_and_key_type_verifies_and_lints_clean(
    typed_ca: tuple[Core, Path],
    leaf_key: Callable[[KeyType], object],
    profile: str,
    openssl: str,
) -> None:
    ca, base = typed_ca
    key_type = key_type_of(ca.authority_certificate().public_key())
    cert = _issue(ca, leaf_key(key_type), profile)
    _assert_leaf_shape(cert, ca, profile, key_type)
    root, inter = chain_files(ca, base)
    leaf = write(base / f"{profile}.pem", cert.public_bytes(serialization.Encoding.PEM))
    rc, out = openssl_verify(
        openssl, root, leaf, inter, "-x509_strict", "-purpose", PURPOSE[profile]
    )
    assert rc == 0 and "OK" in out, out
    assert lint_cert(leaf) == ""


def test_san_content_idn_and_cn_copied(typed_ca: tuple[Core, Path]) -> None:
    ca, _ = typed_ca
    cert = _issue(ca, make_key("p256"), "server")
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "svc.example.test",
        "www.example.test",
        "xn--bcher-kva.example.test",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "svc.example.test"
    client = _issue(ca, make_key("p256"), "client")
    csan = _ext(client, x509.SubjectAlternativeName).value
    assert csan.get_values_for_type(x509.RFC822Name) == ["alice@example.test"]
    assert csan.get_values_for_type(x509.UniformResourceIdentifier) == [
        "https://id.example.test/alice"
    ]
    # A display-name CN is not a host name and is not copied into the SAN.
    assert csan.get_values_for_type(x509.DNSName) == []


@pytest.fixture(scope="module")
def p384_ca(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Core, Path]]:
    base = tmp_path_factory.mktemp("p384")
    ca = module_ca(base, KeyType.ECDSA_P384)
    yield ca, base
    ca.db.dispose()


@pytest.mark.parametrize("leaf_type", list(KeyType), ids=str)
def test_leaf_key_types_under_one_ca(
    p384_ca: tuple[Core, Path],
    leaf_key: Callable[[KeyType], object],
    leaf_type: KeyType,
    openssl: str,
) -> None:
    """Leaf key types differ from the CA's: keyUsage follows the leaf key, the hash the CA's."""
    ca, base = p384_ca
    cert = _issue(ca, leaf_key(leaf_type), "peer")
    _assert_leaf_shape(cert, ca, "peer", leaf_type)
    root, inter = chain_files(ca, base)
    leaf = write(base / f"{leaf_type}.pem", cert.public_bytes(serialization.Encoding.PEM))
    rc, out = openssl_verify(openssl, root, leaf, inter, "-x509_strict")
    assert rc == 0, out
    assert lint_cert(leaf) == ""


def test_root_and_intermediate_shape_and_lint(
    typed_ca: tuple[Core, Path], openssl: str
) -> None:
    ca, base = typed_ca
    root_path, inter_path = chain_files(ca, base)
    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    inter = x509.load_pem_x509_certificate(inter_path.read_bytes())
    assert root.issuer == root.subject
    assert _ext(root, x509.BasicConstraints).value.path_length == 1
    assert _ext(inter, x509.BasicConstraints).value.path_length == 0
    for cert in (root, inter):
        bc = _ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca
        ku = _ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days in (3650, 3651)
    assert (inter.not_valid_after_utc - inter.not_valid_before_utc).days in (1825, 1826)
    # The intermediate says where its own status is published, as a leaf does (issue 9): the
    # root's CRL, the root's certificate, and the OCSP responder; and still lints clean.
    aia = {
        (d.access_method, d.access_location.value)
        for d in _ext(inter, x509.AuthorityInformationAccess).value
    }
    assert aia == {
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{PUBLIC}/ca/default-root/ca.cer"),
        (AuthorityInformationAccessOID.OCSP, f"{PUBLIC}/ocsp"),
    }
    dp = _ext(inter, x509.CRLDistributionPoints).value
    assert [n.value for n in dp[0].full_name] == [f"{PUBLIC}/ca/default-root/crl"]
    rc, out = openssl_verify(openssl, root_path, inter_path, None, "-x509_strict")
    assert rc == 0, out
    assert lint_cert(root_path) == ""
    assert lint_cert(inter_path) == ""


def test_crl_of_every_key_type_lints_and_verifies(
    typed_ca: tuple[Core, Path], openssl: str
) -> None:
    ca, base = typed_ca
    issued = ca.issue_with_new_key(ADMIN, common_name="gone.example.test")
    ca.revoke(issued.record.serial, RevocationReason.SUPERSEDED, ADMIN)
    stored = ca.generate_crl()
    crl = x509.load_der_x509_crl(stored.der)
    assert crl.get_revoked_certificate_by_serial_number(int(issued.record.serial, 16))
    path = write(base / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    assert lint_crl(path) == ""
    _, inter = chain_files(ca, base)
    result = run([openssl, "crl", "-in", str(path), "-CAfile", str(inter), "-noout", "-verify"])
    assert result.returncode == 0 and "verify OK" in result.stderr + result.stdout


# ---------------------------------------------------------------------------- serials and times


@pytest.fixture(scope="module")
def p256_ca(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[Core]:
    ca = module_ca(tmp_path_factory.mktemp("p256"), db_url=module_db_url, intermediate_days=200)
    yield ca
    ca.db.dispose()


def test_serials_are_159_bit_random_and_unique(p256_ca: Core) -> None:
    key = make_key("p256")
    serials = [
        p256_ca.issue_from_csr(csr_pem(key, f"s{i}.example.test"), ADMIN).record.serial
        for i in range(40)
    ]
    assert len(set(serials)) == len(serials)
    values = [int(s, 16) for s in serials]
    assert all(1 << 64 <= v < 1 << 159 for v in values)
    # 20 random bits of 40 numbers: the top bits vary (a counter or timestamp would not).
    assert len({v >> 140 for v in values}) > 20


def test_not_before_backdated_and_validity_capped(p256_ca: Core) -> None:
    now = SystemClock().now() + dt.timedelta(days=3, seconds=17)
    p256_ca.clock = FixedClock(now)
    try:
        key = make_key("p256")
        default = p256_ca.issue_from_csr(csr_pem(key, "a.example.test"), ADMIN).record
        assert default.not_before == now - dt.timedelta(seconds=60)
        assert default.not_after == now + dt.timedelta(days=90)
        longest = p256_ca.issue_from_csr(
            csr_pem(key, "b.example.test"), ADMIN, validity_days=397
        ).record
        # The CA itself ends about 197 days from this clock's now; the leaf may not outlive it.
        ca_end = p256_ca.authority_certificate().not_valid_after_utc
        assert longest.not_after == ca_end < now + dt.timedelta(days=397)
    finally:
        p256_ca.clock = SystemClock()


def test_certificate_without_subject_has_critical_san_and_lints_clean(
    p256_ca: Core, tmp_path: Path
) -> None:
    issued = p256_ca.issue_from_csr(
        csr_pem(make_key("p256")), ADMIN, extra_names=["nosubject.example.test"]
    )
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert len(cert.subject) == 0
    assert _ext(cert, x509.SubjectAlternativeName).critical
    assert lint_cert(write(tmp_path / "c.pem", issued.certificate_pem)) == ""


def test_name_constrained_intermediate(
    tmp_path_factory: pytest.TempPathFactory, openssl: str
) -> None:
    base = tmp_path_factory.mktemp("nc")
    ca = module_ca(
        base,
        constraints=NameConstraintsSpec.parse(
            ["example.test", "10.0.0.0/8", "@example.test"], ["secret.example.test"]
        ),
    )
    root, inter = chain_files(ca, base)
    nc = _ext(x509.load_pem_x509_certificate(inter.read_bytes()), x509.NameConstraints)
    assert nc.critical
    assert x509.DNSName("example.test") in nc.value.permitted_subtrees
    assert x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")) in nc.value.permitted_subtrees
    assert nc.value.excluded_subtrees == [x509.DNSName("secret.example.test")]
    assert lint_cert(inter) == ""
    issued = ca.issue_with_new_key(ADMIN, common_name="in.example.test", names=["10.9.8.7"])
    leaf = write(base / "leaf.pem", issued.certificate_pem)
    rc, out = openssl_verify(openssl, root, leaf, inter)
    assert rc == 0, out
    ca.db.dispose()
