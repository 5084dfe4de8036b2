"""A small raw-JWS ACME client for hand-made requests (the protocol tests).

Unlike a real client library it lets a test break any rule on purpose: the algorithm, the key
(jwk or kid), the nonce, the url, the serialization (flattened, compact, general), extra
members. It speaks to a live server over HTTPS (``LiveTransport``) or to the Flask app in the
test process (``AppTransport``, for tests that move a fake clock); both answer a ``Reply``.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwk, jws

JOSE = "application/jose+json"
ACME_ERROR = "urn:ietf:params:acme:error:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------------------- keys


@dataclass
class AccountKey:
    """A private account key and the JWS algorithm it signs with."""

    key: jwk.JWK
    alg: str

    @property
    def public(self) -> dict[str, Any]:
        exported: dict[str, Any] = json.loads(self.key.export_public())
        exported.pop("kid", None)
        return exported

    @property
    def thumbprint(self) -> str:
        return str(self.key.thumbprint())


def new_key(kind: str = "ES256") -> AccountKey:
    """ES256, ES384, RS256 (2048), RS1024 (an RSA key too small, signing RS256), EdDSA."""
    private: Any
    alg = kind
    if kind == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif kind == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "RS1024":
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (too small on purpose)
        alg = "RS256"
    elif kind == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(kind)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return AccountKey(jwk.JWK.from_pem(pem), alg)


def key_from_private(private: Any, alg: str) -> AccountKey:
    """An AccountKey of an existing private key (a certificate's, for revokeCert by key)."""
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return AccountKey(jwk.JWK.from_pem(pem), alg)


# ---------------------------------------------------------------------------- signing


def sign(
    key: AccountKey,
    payload: Any,
    *,
    url: str | None,
    nonce: str | None,
    kid: str | None = None,
    with_jwk: bool | None = None,
    alg: str | None = None,
    protected_extra: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    serialization_form: str = "flattened",
    unprotected: dict[str, Any] | None = None,
    outer_extra: dict[str, Any] | None = None,
    signing_key: AccountKey | None = None,
) -> bytes:
    """A JWS body. ``payload`` None is POST-as-GET (empty payload), bytes are sent as they are,
    anything else as JSON. By default a ``kid`` request when ``kid`` is given, else ``jwk``."""
    if payload is None:
        raw = b""
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = json.dumps(payload).encode()
    protected: dict[str, Any] = {"alg": alg or key.alg}
    if nonce is not None:
        protected["nonce"] = nonce
    if url is not None:
        protected["url"] = url
    if with_jwk is None:
        with_jwk = kid is None
    if with_jwk:
        protected["jwk"] = key.public
    if kid is not None:
        protected["kid"] = kid
    protected.update(protected_extra or {})
    for name in drop:
        protected.pop(name, None)
    signer = signing_key or key
    token = jws.JWS(raw)
    real_alg = protected["alg"]
    if real_alg in ("none", "HS256"):
        # jwcrypto refuses these with an asymmetric key: forge the signature by hand.
        header = b64(json.dumps(protected).encode())
        body = {"protected": header, "payload": b64(raw), "signature": b64(b"\x00" * 32)}
        body.update(outer_extra or {})
        return json.dumps(body).encode()
    token.add_signature(
        signer.key, alg=real_alg, protected=json.dumps(protected), header=unprotected
    )
    if serialization_form == "compact":
        return str(token.serialize(compact=True)).encode()
    general = json.loads(token.serialize())
    if serialization_form == "general":
        if "signatures" not in general:
            sig = {k: general.pop(k) for k in ("protected", "signature", "header") if k in general}
            general["signatures"] = [sig]
        general.update(outer_extra or {})
        return json.dumps(general).encode()
    general.update(outer_extra or {})
    return json.dumps(general).encode()


def inner_jws(key: AccountKey, payload: Any, url: str, **protected_extra: Any) -> dict[str, Any]:
    """A nested JWS object (keyChange): jwk of ``key``, the url, no nonce."""
    body = sign(key, payload, url=url, nonce=None, with_jwk=True, protected_extra=protected_extra)
    parsed: dict[str, Any] = json.loads(body)
    return parsed


# ---------------------------------------------------------------------------- transports


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    links: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def link(self, rel: str) -> list[str]:
        """The targets of every Link header value with ``rel``."""
        out = []
        for value in self.links:
            for part in value.split(","):
                if f'rel="{rel}"' in part.replace(" ", ""):
                    out.append(part.split(">")[0].strip().lstrip("<"))
        return out


class Transport(Protocol):
    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Reply: ...


class LiveTransport:
    """HTTPS to a live server, trusting only ``root_pem``."""

    def __init__(self, root_pem: str | None) -> None:
        self.context = ssl.create_default_context(cadata=root_pem) if root_pem else None

    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        parts = urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=60, context=self.context
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw_headers = resp.getheaders()
            reply = Reply(
                resp.status,
                {k.lower(): v for k, v in raw_headers},
                resp.read(),
                [v for k, v in raw_headers if k.lower() == "link"],
            )
        finally:
            conn.close()
        return reply


class AppTransport:
    """The Flask app in this process (its test client), as if at ``public_url``."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()

    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        base = f"{parts.scheme}://{parts.netloc}"
        resp = self.client.open(path, method=method, data=body, headers=headers, base_url=base)
        return Reply(
            resp.status_code,
            {k.lower(): v for k, v in resp.headers.items()},
            resp.get_data(),
            resp.headers.getlist("Link"),
        )


# ---------------------------------------------------------------------------- client


class Client:
    """One ACME directory, spoken to by hand."""

    def __init__(self, transport: Transport, directory_url: str, *, load: bool = True) -> None:
        self.transport = transport
        self.directory_url = directory_url
        self.directory: dict[str, Any] = {}
        if not load:
            return
        reply = self.get(directory_url)
        assert reply.status == 200, reply.body[:300]
        self.directory = reply.json

    def get(self, url: str, method: str = "GET") -> Reply:
        return self.transport.send(method, url, None, {})

    def nonce(self) -> str:
        reply = self.get(self.directory["newNonce"], "HEAD")
        assert reply.status == 200, reply.status
        return reply.headers["replay-nonce"]

    def raw(self, url: str, body: bytes, content_type: str = JOSE) -> Reply:
        return self.transport.send("POST", url, body, {"Content-Type": content_type})

    def post(
        self,
        url: str,
        payload: Any,
        key: AccountKey,
        *,
        kid: str | None = None,
        nonce: str | None = "fresh",
        sign_url: str | None = "same",
        **options: Any,
    ) -> Reply:
        """Sign ``payload`` for ``url`` (None: POST-as-GET) and POST it."""
        body = sign(
            key,
            payload,
            url=url if sign_url == "same" else sign_url,
            nonce=self.nonce() if nonce == "fresh" else nonce,
            kid=kid,
            **options,
        )
        return self.raw(url, body)

    # ------------------------------------------------------------------ conveniences

    def new_account(self, key: AccountKey, **payload: Any) -> Reply:
        payload.setdefault("termsOfServiceAgreed", True)
        return self.post(self.directory["newAccount"], payload, key)

    def account(self, key: AccountKey, **payload: Any) -> str:
        """A new account of ``key``; its URL (the kid)."""
        reply = self.new_account(key, **payload)
        assert reply.status in (200, 201), reply.body[:500]
        return reply.headers["location"]

    def new_order(self, key: AccountKey, kid: str, *identifiers: str, **extra: Any) -> Reply:
        """An order for ``ip:1.2.3.4`` / ``dns:name`` identifiers (a bare name is dns)."""
        idents = []
        for item in identifiers:
            kind, sep, value = item.partition(":")
            idents.append({"type": kind, "value": value} if sep else {"type": "dns", "value": item})
        return self.post(self.directory["newOrder"], {"identifiers": idents, **extra}, key, kid=kid)

    def fetch(self, url: str, key: AccountKey, kid: str) -> Reply:
        """POST-as-GET."""
        return self.post(url, None, key, kid=kid)


def assert_acme_problem(reply: Reply, status: int, kind: str) -> dict[str, Any]:
    """An RFC 8555 section 6.7 error of ``kind`` with ``status``, with a fresh nonce."""
    assert reply.status == status, (reply.status, reply.body[:600])
    assert reply.content_type == "application/problem+json", reply.headers
    assert b"Traceback" not in reply.body
    body: dict[str, Any] = reply.json
    assert body["type"] == ACME_ERROR + kind, body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert body.get("status", status) == status, body
    return body


# ---------------------------------------------------------------------------- http-01 responder


class Responder:
    """A loopback http-01 responder: answers the key authorizations it was given."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.answers: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        answers, hits = self.answers, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.rsplit("/", 1)[-1]
                hits[token] = hits.get(token, 0) + 1
                value = (
                    answers.get(token)
                    if self.path.startswith("/.well-known/acme-challenge/")
                    else None
                )
                self.send_response(200 if value else 404)
                self.end_headers()
                if value:
                    self.wfile.write(value.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Responder:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def allow(self, token: str, key: AccountKey) -> None:
        self.answers[token] = f"{token}.{key.thumbprint}"


@contextmanager
def responder(port: int = 0) -> Iterator[Responder]:
    r = Responder(port=port).start()
    try:
        yield r
    finally:
        r.stop()


# ---------------------------------------------------------------------------- flows


def poll(fetch: Callable[[], Reply], done: Callable[[Reply], bool], seconds: float = 30) -> Reply:
    """Fetch until ``done`` (bounded in time and count)."""
    deadline = time.monotonic() + seconds
    reply = fetch()
    for _ in range(300):
        if done(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)
        reply = fetch()
    return reply


def fetcher(client: Client, url: str, key: AccountKey, kid: str) -> Callable[[], Reply]:
    return lambda: client.fetch(url, key, kid)


def authorize(
    client: Client, key: AccountKey, kid: str, order: dict[str, Any], http01: Responder | None
) -> None:
    """Answer the http-01 challenge of every pending authorization of ``order`` and wait."""
    for authz_url in order["authorizations"]:
        authz = client.fetch(authz_url, key, kid).json
        if authz["status"] != "pending":
            continue
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        if http01 is not None:
            http01.allow(chall["token"], key)
        answered = client.post(chall["url"], {}, key, kid=kid)
        assert answered.status == 200, answered.body[:500]
        poll(fetcher(client, authz_url, key, kid), lambda r: r.json["status"] != "pending")


def make_csr(names: list[str], private: Any = None, common_name: str | None = None) -> bytes:
    """A DER CSR for ``ip:`` / dns names, signed with ``private`` (a new P-256 key if None)."""
    import ipaddress

    from cryptography.x509.oid import NameOID

    private = private or ec.generate_private_key(ec.SECP256R1())
    general: list[x509.GeneralName] = []
    for item in names:
        kind, sep, value = item.partition(":")
        if sep and kind == "ip":
            general.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            general.append(x509.DNSName(value if sep else item))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    csr = builder.sign(private, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def finalize(client: Client, key: AccountKey, kid: str, order_url: str, csr_der: bytes) -> Reply:
    order = client.fetch(order_url, key, kid).json
    return client.post(order["finalize"], {"csr": b64(csr_der)}, key, kid=kid)


def issue(
    client: Client,
    key: AccountKey,
    kid: str,
    names: list[str],
    http01: Responder | None,
    private: Any = None,
    **order_extra: Any,
) -> tuple[str, dict[str, Any], str]:
    """Order, authorize, finalize and download: (order URL, final order, PEM chain)."""
    placed = client.new_order(key, kid, *names, **order_extra)
    assert placed.status == 201, placed.body[:600]
    order_url = placed.headers["location"]
    authorize(client, key, kid, placed.json, http01)
    ready = poll(lambda: client.fetch(order_url, key, kid), lambda r: r.json["status"] != "pending")
    assert ready.json["status"] == "ready", ready.json
    done = finalize(client, key, kid, order_url, make_csr(names, private))
    assert done.status == 200, done.body[:600]
    final = poll(
        lambda: client.fetch(order_url, key, kid), lambda r: r.json["status"] == "valid"
    ).json
    assert final["status"] == "valid", final
    chain = client.fetch(final["certificate"], key, kid)
    assert chain.status == 200, chain.body[:300]
    return order_url, final, chain.body.decode()


# ---------------------------------------------------------------------------- servers


ALLOWED = "127.0.0.0/8,*.acme.test"
# The default profiles refuse wildcards; ACME wildcard orders name this one.
WILD_PROFILE = """
[profiles.wild]
extended_key_usages = ["serverAuth"]
default_validity_days = 30
max_validity_days = 90
require_dns_or_ip = true
allow_wildcards = true
"""


@dataclass
class ACMEServerUnderTest:
    """A live server (or an in-process app) with its http-01 responder and loopback DNS."""

    client: Client
    http01: Responder
    base_url: str
    live: Any = None
    core: Any = None
    app: Any = None
    clock: Any = None
    dns: Any = None


@contextmanager
def live_acme(backend: str, base: Any, **env: str) -> Iterator[ACMEServerUnderTest]:
    """`ca-service serve --tls` on ``backend`` with ACME on (no EAB, ``ALLOWED`` names, http-01
    answered by a loopback responder, DNS by a loopback server giving every name 127.0.0.1)."""
    from tests.conftest import database
    from tests.live import start_server

    from .dns_server import LoopbackDNS

    with (
        responder() as http01,
        LoopbackDNS(base / "dns.json", default_a="127.0.0.1") as dns,
        database(backend, base) as url,
    ):
        config = base / "ca-service.toml"
        config.write_text(WILD_PROFILE)
        settings = {
            "CA_CONFIG_FILE": str(config),
            "CA_ACME_REQUIRE_EAB": "false",
            "CA_ACME_DEFAULT_ALLOWED_NAMES": ALLOWED,
            "CA_ACME_DEFAULT_ALLOW_WILDCARDS": "true",
            "CA_ACME_HTTP01_PORT": str(http01.port),
            "CA_ACME_DNS_RESOLVER": f"127.0.0.1:{dns.port}",
            "CA_ACME_VALIDATION_ATTEMPTS": "1",
            "CA_ACME_VALIDATION_TIMEOUT_SECONDS": "2",
            "CA_LOG_LEVEL": "INFO",
            **env,
        }
        live = start_server(base / "data", url, tls=True, workers=2, extra_env=settings)
        try:
            client = Client(LiveTransport(live.root_pem), live.base_url + "/acme/directory")
            yield ACMEServerUnderTest(client, http01, live.base_url, live=live, dns=dns)
        finally:
            live.stop()


class NoEAB:
    """No External Account Binding keys (these tests run with EAB off)."""

    def hmac_key(self, kid: str) -> None:
        return None


@contextmanager
def app_acme(
    db_url: str, base: Any, public: str = "https://ca.acme.test:8443", **overrides: Any
) -> Iterator[ACMEServerUnderTest]:
    """The ACME server in this process, on a Core with a fake clock, validating synchronously
    (``ACMEServer(core, eab, run_validation=lambda work: work())``) behind the real Flask app."""
    import datetime as dt

    from ca_service.acme.server import ACMEServer
    from ca_service.clock import FixedClock
    from ca_service.policy.profiles import load_profiles
    from ca_service.web.app import create_app
    from tests.conftest import make_settings, new_ca

    from .dns_server import LoopbackDNS

    with responder() as http01, LoopbackDNS(base / "dns.json", default_a="127.0.0.1") as dns:
        values: dict[str, Any] = {
            "public_url": public,
            "acme_require_eab": False,
            "acme_default_allowed_names": tuple(ALLOWED.split(",")),
            "acme_default_allow_wildcards": True,
            "acme_http01_port": http01.port,
            "acme_dns_resolver": f"127.0.0.1:{dns.port}",
            "acme_validation_attempts": 1,
            "acme_validation_timeout_seconds": 2,
            "profiles": load_profiles(
                {"wild": {"extended_key_usages": ["serverAuth"], "allow_wildcards": True}}
            ),
        }
        settings = make_settings(base, db_url, **{**values, **overrides})
        core = new_ca(settings)
        clock = FixedClock(dt.datetime.now(dt.UTC))
        core.clock = clock
        app = create_app(settings, authority=core)
        app.extensions["ca_acme"] = ACMEServer(core, NoEAB(), run_validation=lambda work: work())
        try:
            client = Client(
                AppTransport(app), public + "/acme/directory", load=public[:6] == "https:"
            )
            yield ACMEServerUnderTest(
                client, http01, public, core=core, app=app, clock=clock, dns=dns
            )
        finally:
            core.db.dispose()
