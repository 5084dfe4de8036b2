"""The JWS algorithms ACME accepts, in a module of their own: the JWS checks use them and the
problem documents name them (badSignatureAlgorithm's ``algorithms``), and neither of those two
modules should import the other for it."""

from __future__ import annotations

# Account-key algorithms (RFC 8555 section 6.2 asks for ES256 and EdDSA at least), each with
# the key type and curve it must be used with.
ACCOUNT_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "RS256": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}
MIN_RSA_BITS = 2048
EAB_ALGORITHMS = ("HS256", "HS384", "HS512")
