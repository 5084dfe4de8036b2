"""The ACME server as one object for the web layer: accounts (service.py), orders (orders.py),
revocation and renewal information, over one authority per directory."""

from __future__ import annotations

from typing import Any

from ca_service.acme import ari
from ca_service.acme.orders import Orders, Runner, orderable_profiles
from ca_service.acme.service import Accounts, EABLookup
from ca_service.core.facade import Core


class ACMEServer:
    def __init__(self, core: Core, eab: EABLookup, run_validation: Runner | None = None) -> None:
        self.accounts = Accounts(core, eab)
        self.orders = Orders(self.accounts, run_validation)
        self.core = core

    def directory(self, authority: str) -> dict[str, Any]:
        urls = self.accounts.urls(authority)
        settings = self.core.settings
        meta: dict[str, Any] = {
            "externalAccountRequired": settings.acme_require_eab,
            "caaIdentities": list(
                ari_identities(settings.acme_caa_identities, settings.public_url)
            ),
            "profiles": {
                name: f"ca-service profile {name!r}" for name in orderable_profiles(settings)
            },
        }
        if settings.acme_terms_of_service:
            meta["termsOfService"] = settings.acme_terms_of_service
        if settings.acme_website:
            meta["website"] = settings.acme_website
        return {
            "newNonce": urls.resource("new-nonce"),
            "newAccount": urls.resource("new-account"),
            "newOrder": urls.resource("new-order"),
            "revokeCert": urls.resource("revoke-cert"),
            "keyChange": urls.resource("key-change"),
            "renewalInfo": urls.resource("renewal-info"),
            "meta": meta,
        }

    def renewal_info(self, cert_id: str) -> tuple[dict[str, Any], int]:
        return ari.renewal_info(self.core, cert_id)


def ari_identities(configured: tuple[str, ...], public_url: str) -> tuple[str, ...]:
    from urllib.parse import urlsplit

    return configured or tuple(h for h in (urlsplit(public_url).hostname,) if h)
