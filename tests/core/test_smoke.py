"""A first end-to-end pass through the core on both databases."""

from __future__ import annotations

from ca_service.core.facade import Core
from ca_service.domain import CertStatus, RevocationReason

from ..conftest import ADMIN


def test_issue_revoke_crl_roundtrip(ca: Core) -> None:
    issued = ca.issue_with_new_key(ADMIN, common_name="svc.example.test")
    assert issued.private_key_pem and "PRIVATE KEY" in issued.private_key_pem
    stored = ca.get_certificate(issued.record.serial)
    assert stored.fingerprint_sha256 == issued.record.fingerprint_sha256
    revoked = ca.revoke(issued.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    assert revoked.status is CertStatus.REVOKED
    crl = ca.current_crl()
    assert crl.number >= 1
