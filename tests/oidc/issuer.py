"""A real OIDC issuer on loopback for tests: discovery, a JWKS, and real signed JWTs.

Reusable outside these tests (the ``ca-service request --oidc`` client tests use it too)::

    with OIDCIssuer() as issuer:          # or the ``oidc_issuer`` fixture (tests/oidc/conftest.py)
        token = issuer.token({"sub": "repo:o/r", "aud": "ca"})   # RS256 by default
        token = issuer.token(claims, alg="ES256")                 # or "EdDSA"
        issuer.rotate()                   # new keys (new kids); the JWKS serves only those
        issuer.jwks_fetches               # how many times /jwks was fetched

It holds one RSA (RS256), one EC P-256 (ES256) and one Ed25519 (EdDSA) key, each with its own
kid, serves ``/.well-known/openid-configuration`` and ``/jwks`` on 127.0.0.1 at a free port,
and signs with PyJWT. Defaults fill ``iss``, ``iat``, ``nbf``, ``exp`` (+5 minutes) and a fresh
``jti``; pass a claim as ``None`` to leave it out.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGS = ("RS256", "ES256", "EdDSA")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKeyTypes

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()  # type: ignore[union-attr]
        if self.alg == "RS256":
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif self.alg == "ES256":
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str) -> SigningKey:
    """A fresh key for ``alg`` with a random kid."""
    private: PrivateKeyTypes
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)


class OIDCIssuer:
    """The issuer; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKey] = {a: new_key(a) for a in ALGS}
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Keys served besides the current ones (e.g. during a rotation's overlap).
        self.extra_jwks: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> OIDCIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    with issuer._lock:
                        issuer.discovery_fetches += 1
                    body = issuer.discovery()
                elif self.path == "/jwks":
                    with issuer._lock:
                        issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> OIDCIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it serves

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The issuer identifier, the ``iss`` of its tokens (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return self.url + "/jwks"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": list(ALGS),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = [k.public_jwk() for k in self.keys.values()]
            return {"keys": keys + list(self.extra_jwks)}

    def rotate(self, *, keep_old: bool = False) -> dict[str, SigningKey]:
        """New keys with new kids; the old ones leave the JWKS (unless ``keep_old``).
        Returns the old keys, to sign tokens that must now be refused."""
        with self._lock:
            old = self.keys
            self.keys = {a: new_key(a) for a in ALGS}
            self.extra_jwks = [k.public_jwk() for k in old.values()] if keep_old else []
        return old

    # ------------------------------------------------------------------ tokens

    def claims(self, **claims: Any) -> dict[str, Any]:
        """Default registered claims, overridden by ``claims`` (``None`` removes one)."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.url,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_hex(16),
        }
        base.update(claims)
        return {k: v for k, v in base.items() if v is not None}

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        alg: str = "RS256",
        key: SigningKey | PrivateKeyTypes | bytes | str | None = None,
        kid: str | None = "default",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A JWT signed with the issuer's ``alg`` key (or ``key``: another SigningKey, a raw
        private key, or an HMAC secret), its kid in the header (``kid=None``: none; another
        string: that kid). ``claims`` go over ``self.claims()``'s defaults."""
        full = self.claims(**(claims or {}))
        signing: Any
        if key is None:
            chosen = self.keys[alg]
            signing, default_kid = chosen.private, chosen.kid
        elif isinstance(key, SigningKey):
            signing, default_kid = key.private, key.kid
        else:
            signing, default_kid = key, None
        hdrs = dict(headers or {})
        if kid == "default":
            if default_kid is not None:
                hdrs.setdefault("kid", default_kid)
        elif kid is not None:
            hdrs["kid"] = kid
        return jwt.encode(full, signing, algorithm=alg, headers=hdrs or None)


def unsigned_token(claims: dict[str, Any], kid: str | None = None) -> str:
    """``alg: none``: a JWT with an empty signature (PyJWT writes it on request)."""
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, None, algorithm="none", headers=headers)


@contextmanager
def running_issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as issuer:
        yield issuer
