"""ACME request authentication (RFC 8555 section 6): a flattened JWS, checked strictly.

jwcrypto parses and verifies; what is ours is the order of the checks and the ACME error each
failure is answered with. The order matters: the algorithm and the key are settled before any
signature is checked (so ``alg: none`` and HMAC can never reach a verifier keyed with a public
key, the classic JWT confusion), the ``url`` is compared before the key of an account is looked
up, and the nonce is used up last, once the signature proved that the sender holds the key, so
that nobody can burn another client's nonces with forged requests.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk, jws
from jwcrypto.common import JWException, base64url_decode, base64url_encode

from ca_service.acme.algorithms import ACCOUNT_ALGORITHMS, MIN_RSA_BITS
from ca_service.acme.problems import ACMEProblem

_FLATTENED_MEMBERS = {"protected", "payload", "signature"}


@dataclass(frozen=True)
class SignedRequest:
    """A request whose signature, url and nonce were checked; ``kid`` is None for a ``jwk``
    request (newAccount, revokeCert by the certificate key)."""

    protected: dict[str, Any]
    payload: bytes
    key: jwk.JWK
    kid: str | None

    @property
    def post_as_get(self) -> bool:
        return self.payload == b""

    @property
    def jwk_json(self) -> dict[str, Any]:
        return public_jwk(self.key)

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object (``malformed`` otherwise)."""
        if self.post_as_get:
            raise ACMEProblem("malformed", "this resource needs a payload, not POST-as-GET")
        return parse_object(self.payload, "payload")


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ACMEProblem("malformed", f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise ACMEProblem("malformed", f"the {what} must be a JSON object")
    return value


def public_jwk(key: jwk.JWK) -> dict[str, Any]:
    exported: dict[str, Any] = json.loads(key.export_public())
    exported.pop("kid", None)
    return exported


def thumbprint(key: jwk.JWK) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: an account key's identity and the second half
    of every key authorization."""
    return str(key.thumbprint())


def _b64_json(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, str):
        raise ACMEProblem("malformed", f"the JWS {what} must be a base64url string")
    try:
        raw = base64url_decode(value)
    except (ValueError, binascii.Error):
        raise ACMEProblem("malformed", f"the JWS {what} is not base64url") from None
    return parse_object(raw, f"JWS {what}")


def parse_flattened(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JWS object and its decoded protected header; only the flattened JSON serialization
    with exactly its three members is accepted (RFC 8555 section 6.2)."""
    outer = parse_object(body, "request body")
    if set(outer) != _FLATTENED_MEMBERS:
        extra = sorted(set(outer) - _FLATTENED_MEMBERS)
        missing = sorted(_FLATTENED_MEMBERS - set(outer))
        hint = "; ".join(
            part
            for part in (
                f"unexpected {', '.join(extra)}" if extra else "",
                f"missing {', '.join(missing)}" if missing else "",
            )
            if part
        )
        raise ACMEProblem(
            "malformed",
            f"the body must be a flattened JSON JWS (protected, payload, signature only): {hint}",
        )
    if not all(isinstance(outer[m], str) for m in _FLATTENED_MEMBERS):
        raise ACMEProblem("malformed", "the JWS members must be strings")
    return outer, _b64_json(outer["protected"], "protected header")


def import_account_key(data: Any, alg: str) -> jwk.JWK:
    """A public account key that suits ``alg`` (``badPublicKey`` otherwise)."""
    if not isinstance(data, dict):
        raise ACMEProblem("malformed", "jwk must be a JSON object")
    if any(member in data for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise ACMEProblem("badPublicKey", "jwk must be a public key; it carries private parts")
    try:
        key = jwk.JWK(**data)
        # Build the key now: jwcrypto checks an EC point only when it makes the key, which
        # would otherwise first happen inside verify and read as a bad signature.
        key.get_op_key("verify")
    except (JWException, ValueError, TypeError, KeyError):
        raise ACMEProblem("badPublicKey", "jwk is not a valid public key") from None
    kty, curve = ACCOUNT_ALGORITHMS[alg]
    if key.get("kty") != kty or (curve is not None and key.get("crv") != curve):
        want = f"{kty} {curve}" if curve else kty
        raise ACMEProblem("badPublicKey", f"{alg} needs a {want} key")
    if kty == "RSA":
        public = key.get_op_key("verify")
        if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RSA_BITS:
            raise ACMEProblem("badPublicKey", f"RSA account keys need {MIN_RSA_BITS} bits or more")
    return key


def _algorithm(protected: dict[str, Any]) -> str:
    alg = protected.get("alg")
    if alg not in ACCOUNT_ALGORITHMS:
        allowed = " ".join(ACCOUNT_ALGORITHMS)
        raise ACMEProblem(
            "badSignatureAlgorithm",
            f"JWS algorithm {alg!r} is not accepted; use one of: {allowed}",
        )
    return str(alg)


def verify(outer: dict[str, Any], key: jwk.JWK, alg: str, *, what: str = "JWS") -> bytes:
    """Verify ``outer`` (a flattened JWS) with ``key`` under ``alg``; the payload bytes."""
    token = jws.JWS()
    try:
        token.deserialize(json.dumps(outer))
        token.verify(key, alg=alg)
    except (JWException, ValueError, TypeError):
        raise ACMEProblem("malformed", f"the {what} signature is invalid") from None
    payload = token.payload
    return payload if isinstance(payload, bytes) else str(payload).encode()


def authenticate(
    body: bytes,
    *,
    url: str,
    account_key: Callable[[str], jwk.JWK],
    use_nonce: Callable[[str], bool],
    key_by: str,
) -> SignedRequest:
    """Check a POST body as RFC 8555 section 6 says and return what it proves.

    ``account_key(kid)`` returns the key of the account a ``kid`` names, raising
    ``accountDoesNotExist`` (or ``unauthorized`` for one that is not valid); ``use_nonce`` uses
    a nonce up, True once. ``key_by``: "jwk" (newAccount), "kid" (every resource of an
    account) or "either" (revokeCert, signed by the account or by the certificate's key).
    """
    outer, protected = parse_flattened(body)
    alg = _algorithm(protected)
    has_jwk, has_kid = "jwk" in protected, "kid" in protected
    if has_jwk == has_kid:
        raise ACMEProblem("malformed", "the protected header needs exactly one of jwk and kid")
    nonce = protected.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise ACMEProblem("badNonce", "the protected header has no nonce")
    if not isinstance(protected.get("url"), str):
        raise ACMEProblem("malformed", "the protected header has no url")
    if protected.get("url") != url:
        raise ACMEProblem("unauthorized", f"the JWS url does not match the request URL {url}")
    kid: str | None = None
    if has_jwk:
        if key_by == "kid":
            raise ACMEProblem("malformed", "this resource needs a kid (the account URL), not jwk")
        key = import_account_key(protected["jwk"], alg)
    else:
        if key_by == "jwk":
            raise ACMEProblem("malformed", "newAccount needs a jwk, not a kid")
        kid = protected["kid"]
        if not isinstance(kid, str):
            raise ACMEProblem("malformed", "kid must be a string (the account URL)")
        key = account_key(kid)
        if key.get("kty") != ACCOUNT_ALGORITHMS[alg][0] or (
            ACCOUNT_ALGORITHMS[alg][1] not in (None, key.get("crv"))
        ):
            raise ACMEProblem("badSignatureAlgorithm", f"{alg} does not suit the account key")
    payload = verify(outer, key, alg)
    if not use_nonce(nonce):
        raise ACMEProblem("badNonce", "the nonce is unknown, used or expired; use a fresh one")
    return SignedRequest(protected=protected, payload=payload, key=key, kid=kid)


def verify_inner(
    inner: Any, *, url: str, alg_allowed: tuple[str, ...], what: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a JWS nested in a payload (EAB, keyChange): the object and its protected header,
    whose ``url`` must be the outer request's. The caller verifies with the right key."""
    if not isinstance(inner, dict):
        raise ACMEProblem("malformed", f"{what} must be a flattened JWS object")
    outer, protected = parse_flattened(json.dumps(inner).encode())
    if protected.get("alg") not in alg_allowed:
        raise ACMEProblem(
            "badSignatureAlgorithm",
            f"{what}: algorithm {protected.get('alg')!r} is not accepted; use one of: "
            + " ".join(alg_allowed),
        )
    if protected.get("url") != url:
        raise ACMEProblem("unauthorized", f"{what}: url does not match the request URL")
    if "nonce" in protected and what == "externalAccountBinding":
        raise ACMEProblem("malformed", "externalAccountBinding must not carry a nonce")
    return outer, protected


def hmac_key(secret: bytes) -> jwk.JWK:
    return jwk.JWK(kty="oct", k=base64url_encode(secret))


def random_token(size: int = 16) -> str:
    """``size`` random bytes, base64url without padding (nonces, challenge tokens)."""
    import secrets

    return str(base64url_encode(secrets.token_bytes(size)))


def thumbprint_of(data: Any) -> str:
    """The RFC 7638 thumbprint of a public JWK given as JSON (``malformed`` when it is none)."""
    if not isinstance(data, dict) or any(m in data for m in ("d", "p", "q", "k")):
        raise ACMEProblem("malformed", "expected a public JWK")
    try:
        return str(jwk.JWK(**data).thumbprint())
    except (JWException, ValueError, TypeError, KeyError):
        raise ACMEProblem("malformed", "expected a public JWK") from None
