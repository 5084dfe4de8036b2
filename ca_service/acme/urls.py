"""The URLs of one authority's ACME server, built from ``public_url`` and parsed back.

A JWS names the URL it was signed for and an account is named by its URL (``kid``), so the
server must build every URL exactly one way: here. Behind a TLS-terminating proxy,
``public_url`` is the URL clients use, which is what they sign.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ACMEUrls:
    public_url: str
    authority: str

    @property
    def base(self) -> str:
        return f"{self.public_url}/acme/{self.authority}"

    @property
    def directory(self) -> str:
        return f"{self.base}/directory"

    def resource(self, name: str) -> str:
        """new-nonce, new-account, new-order, revoke-cert, key-change, renewal-info."""
        return f"{self.base}/{name}"

    def account(self, account_id: str) -> str:
        return f"{self.base}/account/{account_id}"

    def orders(self, account_id: str) -> str:
        return f"{self.base}/account/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.base}/authz/{authz_id}"

    def challenge(self, challenge_id: str) -> str:
        return f"{self.base}/chall/{challenge_id}"

    def certificate(self, serial: str) -> str:
        return f"{self.base}/cert/{serial}"

    def account_id(self, kid: str) -> str | None:
        """The id in an account URL of this authority, or None when ``kid`` is not one."""
        prefix = f"{self.base}/account/"
        if not kid.startswith(prefix):
            return None
        rest = kid[len(prefix) :]
        return rest if rest and "/" not in rest else None
