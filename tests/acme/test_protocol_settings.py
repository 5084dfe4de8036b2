"""What the ACME settings change in the protocol (RFC 8555 sections 7.1.1 and 7.3): terms of
service, required External Account Binding, the directory's meta. In this process, on SQLite:
these are decisions of the service's code, not of the database."""

from __future__ import annotations

from pathlib import Path

from ca_service.storage.acme import AccountRepository
from ca_service.storage.db import unit_of_work

from .acme_client import app_acme, assert_acme_problem, new_key


def _accounts(core: object, authority: str, thumbprint: str) -> object:
    with unit_of_work(core.db) as s:  # type: ignore[attr-defined]
        return AccountRepository(s).by_thumbprint(authority, thumbprint)


def test_terms_of_service_must_be_agreed(tmp_path: Path) -> None:
    terms = "https://ca.acme.test/terms"
    with app_acme(f"sqlite:///{tmp_path / 'ca.db'}", tmp_path, acme_terms_of_service=terms) as a:
        c = a.client
        assert c.directory["meta"]["termsOfService"] == terms
        key = new_key()
        refused = c.new_account(key, termsOfServiceAgreed=False)
        assert_acme_problem(refused, 403, "userActionRequired")
        authority = c.directory["newAccount"].split("/acme/")[1].split("/")[0]
        assert _accounts(a.core, authority, key.thumbprint) is None
        assert c.new_account(key).status == 201


def test_external_account_binding_required(tmp_path: Path) -> None:
    with app_acme(f"sqlite:///{tmp_path / 'ca.db'}", tmp_path, acme_require_eab=True) as a:
        c = a.client
        assert c.directory["meta"]["externalAccountRequired"] is True
        key = new_key()
        assert_acme_problem(c.new_account(key), 400, "externalAccountRequired")
        authority = c.directory["newAccount"].split("/acme/")[1].split("/")[0]
        assert _accounts(a.core, authority, key.thumbprint) is None
        # A binding by a key this CA never made is refused, and writes nothing either.
        binding = {"protected": "e30", "payload": "e30", "signature": "AAAA"}
        reply = c.new_account(key, externalAccountBinding=binding)
        assert reply.status in (400, 403) and reply.json["type"].startswith(
            "urn:ietf:params:acme:error:"
        )
        assert _accounts(a.core, authority, key.thumbprint) is None


def test_directory_meta(tmp_path: Path) -> None:
    with app_acme(
        f"sqlite:///{tmp_path / 'ca.db'}",
        tmp_path,
        acme_website="https://ca.acme.test/",
        acme_caa_identities=("ca.acme.test",),
    ) as a:
        meta = a.client.directory["meta"]
        assert meta["website"] == "https://ca.acme.test/"
        assert meta["caaIdentities"] == ["ca.acme.test"]
        assert "termsOfService" not in meta
        assert "server" in meta["profiles"]
