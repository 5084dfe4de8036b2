"""A real ca-service under gunicorn on loopback, and an HTTP client that checks every answer
against the service's own OpenAPI document."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ca_service.web.openapi import document

CA_SERVICE = str(Path(sys.executable).parent / "ca-service")
SPEC = document()
_REGISTRY = Registry().with_resource(
    "urn:spec", Resource.from_contents(SPEC, default_specification=DRAFT202012)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


def _template_for(path: str) -> str | None:
    clean = path.split("?", 1)[0]
    for template in SPEC["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, clean):
            return template
    return None


def _absolute_refs(schema: Any) -> Any:
    """The schema with every local ``#/...`` reference pointing into the OpenAPI document, so
    that inline schemas (a list of ``Token`` items, say) resolve as well as top-level refs."""
    if isinstance(schema, dict):
        return {
            k: ("urn:spec" + v if k == "$ref" and v.startswith("#/") else _absolute_refs(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute_refs(v) for v in schema]
    return schema


def check_against_spec(method: str, path: str, reply: Reply) -> None:
    """Every response must be documented: its status for that operation, and its JSON body."""
    template = _template_for(path)
    assert template is not None, f"{path} is not in the OpenAPI document"
    operation = SPEC["paths"][template].get(method.lower())
    assert operation is not None, f"{method} {template} is not in the OpenAPI document"
    documented = operation["responses"].get(str(reply.status))
    assert documented is not None, f"{method} {template} answered {reply.status}, not documented"
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    content = documented.get("content")
    if not content or reply.status == 304:
        return
    assert reply.content_type in content, (
        f"{method} {template} {reply.status}: content type {reply.content_type!r} "
        f"not among {sorted(content)}"
    )
    if reply.content_type.endswith("json"):
        schema = content[reply.content_type]["schema"]
        validator = jsonschema.Draft202012Validator(_absolute_refs(schema), registry=_REGISTRY)
        validator.validate(reply.json)


@dataclass
class LiveServer:
    base_url: str
    port: int
    admin_token: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    checked: int = field(default=0)
    # HTTPS (`serve --tls`): the root the client trusts, taken from the store, not the server.
    root_pem: str | None = None

    def https_context(self, client_cert: Path | None = None) -> ssl.SSLContext:
        """A stdlib client context trusting only our root; ``client_cert`` is a PEM file with
        the key and certificate for mutual TLS."""
        assert self.root_pem is not None, "not a TLS server"
        ctx = ssl.create_default_context(cadata=self.root_pem)
        if client_cert is not None:
            ctx.load_cert_chain(client_cert)
        return ctx

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        check_spec: bool = True,
        client_cert: Path | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn: http.client.HTTPConnection
        if self.root_pem is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=60, context=self.https_context(client_cert)
            )
        else:
            assert client_cert is None, "client certificates need a TLS server"
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
        if check_spec:
            check_against_spec(method, path, reply)
            self.checked += 1
        return reply

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    data_dir: Path,
    database_url: str,
    *,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    tls: bool = False,
    command: str = CA_SERVICE,
    cwd: Path | None = None,
    as_options: bool = False,
    admin_token: str | None = None,
) -> LiveServer:
    """Start `ca-service serve` (with ``tls``: `serve --tls`) and wait until /healthz answers.

    ``command`` is the ``ca-service`` to run (another installation's, say), from ``cwd``. With
    ``as_options`` the address, workers and a timeout are `serve` options, not CA_* variables.
    ``admin_token``: a token of the database already (a second replica of a store, which
    prints none), instead of the one a first start prints."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(
        {
            "CA_DATA_DIR": str(data_dir),
            "CA_DATABASE_URL": database_url,
            "CA_KEY_PASSPHRASE": "live-test-passphrase",
            "CA_BIND": f"127.0.0.1:{port}",
            "CA_WORKERS": str(workers),
            "CA_PUBLIC_URL": f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            "CA_LOG_LEVEL": "WARNING",
            # The test client stands where the load balancer would, so the request ids it
            # sends are kept (tests/web/test_logs_live.py checks an untrusted caller's).
            "CA_TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    options = ["--tls"] if tls else []
    if as_options:
        options += ["--bind", env.pop("CA_BIND"), "--workers", env.pop("CA_WORKERS")]
        options += ["--timeout", "45"]
    env.update(extra_env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [command, "serve", *options],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    root_pem = None
    deadline = time.monotonic() + 90
    token = admin_token
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if token is None:
            m = re.search(r"(cas_[a-z0-9]{16}_[A-Za-z0-9_-]{43})", text)
            token = m.group(1) if m else None
        if proc.poll() is not None:
            raise RuntimeError(f"ca-service serve exited {proc.returncode}:\n{text}")
        if tls and root_pem is None and "serving on https://" in text:
            root_pem = _root_from_store(env)
        if token is not None and (root_pem is not None or not tls):
            conn: http.client.HTTPConnection
            if root_pem is not None:
                context = ssl.create_default_context(cadata=root_pem)
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    scheme = "https" if tls else "http"
                    return LiveServer(
                        f"{scheme}://127.0.0.1:{port}",
                        port,
                        token,
                        env,
                        proc,
                        log_path,
                        root_pem=root_pem,
                    )
            except OSError:
                pass
            finally:
                conn.close()  # also when the server dropped the connection while booting
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"ca-service serve did not become healthy:\n{log_path.read_text()}")


def _root_from_store(env: dict[str, str]) -> str:
    """The default authority's root as the store holds it: what a client should trust."""
    from ca_service.config import load_settings
    from ca_service.wiring import build_authority

    ca = build_authority(load_settings(env))
    try:
        return ca.chain_pem()[-1]
    finally:
        ca.db.dispose()


# ---------------------------------------------------------------------------- API test helpers

PROBLEM_JSON = "application/problem+json"


def assert_problem(reply: Reply, status: int) -> dict[str, Any]:
    """An RFC 9457 answer with ``status``: problem+json, the four members, no stack trace."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.content_type == PROBLEM_JSON, reply.headers
    assert b"Traceback" not in reply.body
    body = reply.json
    assert isinstance(body, dict)
    for member in ("type", "title", "status", "detail"):
        assert member in body, body
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["type"].startswith("urn:ca-service:problem:")
    return body


def create_token(
    live: LiveServer, role: str, *, name: str | None = None, **fields: Any
) -> tuple[str, str]:
    """Create a token through the API as the first admin; returns (plain token, id)."""
    body = {"name": name or f"{role}-token", "role": role, **fields}
    reply = live.request("POST", "/api/v1/tokens", token=live.admin_token, body=body)
    assert reply.status == 201, reply.body
    return reply.json["token"], reply.json["id"]


def run_cli(live: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `ca-service` command on the live server's database, data and passphrase."""
    env = {k: v for k, v in live.env.items() if k != "CA_BIND"}
    return subprocess.run(
        [CA_SERVICE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def db_engine(live: LiveServer) -> Any:
    """A SQLAlchemy engine on the live server's own database (the caller disposes of it)."""
    import sqlalchemy as sa

    return sa.create_engine(live.env["CA_DATABASE_URL"])


def expire_token(live: LiveServer, token_id: str) -> None:
    """Move a token's expiry into the past directly in the database (no API can do that)."""
    import datetime as dt

    import sqlalchemy as sa

    engine = db_engine(live)
    try:
        with engine.begin() as conn:
            updated = conn.execute(
                sa.text("UPDATE api_tokens SET expires_at = :at WHERE id = :id"),
                {"at": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), "id": token_id},
            ).rowcount
        assert updated == 1
    finally:
        engine.dispose()


def list_all(live: LiveServer, path: str, token: str | None = None, limit: int = 500) -> list[Any]:
    """Every item of a cursor-paginated list endpoint (bounded: at most 200 pages)."""
    items: list[Any] = []
    sep = "&" if "?" in path else "?"
    cursor = None
    for _ in range(200):
        url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        reply = live.request("GET", url, token=token or live.admin_token)
        assert reply.status == 200, reply.body
        items += reply.json["items"]
        cursor = reply.json["next_cursor"]
        if not cursor:
            return items
    raise AssertionError(f"{path}: more than 200 pages")


def certificate_count(live: LiveServer) -> int:
    return len(list_all(live, "/api/v1/certificates"))


_LINTED: set[bytes] = set()


def lint_crl_bytes(data: bytes) -> str:
    """``lint_crl lint -t CRL -p PKIX -s WARNING`` on a DER or PEM CRL: '' when clean.

    pkilint's own CLI entry point, run in this process (a subprocess per CRL costs 0.3 s);
    call it from the main thread only, as it redirects stdout. Identical bytes are linted once.
    """
    import contextlib
    import gc
    import io
    import tempfile
    import warnings

    from pkilint.bin import lint_crl

    digest = hashlib.sha256(data).digest()
    if digest in _LINTED:
        return ""
    out = io.StringIO()
    with tempfile.NamedTemporaryFile(suffix=".crl") as f:
        f.write(data)
        f.flush()
        args = ["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", f.name]
        with warnings.catch_warnings():
            # The CLI leaves its argparse file open; let it close here, quietly.
            warnings.simplefilter("ignore", ResourceWarning)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = lint_crl.main(args)
            gc.collect()
    findings = out.getvalue().strip()
    if code != 0 and not findings:
        findings = f"lint_crl exited {code}"
    if not findings:
        _LINTED.add(digest)
    return findings


def fetch_crl(live: LiveServer, path: str = "/crl", **kwargs: Any) -> Any:
    """GET a CRL (DER or PEM), check its headers, lint it with pkilint; the parsed CRL."""
    from cryptography import x509

    reply = live.request("GET", path, **kwargs)
    assert reply.status == 200, reply.body[:300]
    for header in ("etag", "last-modified", "cache-control"):
        assert header in reply.headers, (path, reply.headers)
    pem = reply.body.startswith(b"-----BEGIN")
    assert reply.content_type == ("application/x-pem-file" if pem else "application/pkix-crl")
    findings = lint_crl_bytes(reply.body)
    assert findings == "", f"{path}: pkilint findings:\n{findings}"
    return x509.load_pem_x509_crl(reply.body) if pem else x509.load_der_x509_crl(reply.body)


def crl_number(crl: Any) -> int:
    """The CRL Number extension of a parsed CRL."""
    from cryptography import x509

    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def server_tracebacks(live: LiveServer) -> int:
    return live.log().count("Traceback")


def issue(
    live: LiveServer, token: str | None = None, *, accept: str | None = None, **body: Any
) -> Reply:
    """POST /api/v1/certificates (as the first admin unless ``token``); asserts 201."""
    headers = {"Accept": accept} if accept else None
    reply = live.request(
        "POST", "/api/v1/certificates", token=token or live.admin_token, body=body, headers=headers
    )
    assert reply.status == 201, reply.body[:500]
    return reply


def revoke(live: LiveServer, serial: str, reason: str = "keyCompromise") -> Reply:
    """POST /api/v1/certificates/{serial}/revoke as the first admin; asserts 200."""
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        token=live.admin_token,
        body={"reason": reason},
    )
    assert reply.status == 200, reply.body[:500]
    return reply
