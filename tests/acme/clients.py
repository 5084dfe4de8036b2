"""Drivers of real ACME clients, certbot (PyPI) and lego (Debian), against a live ca-service.

Each driver runs the client as a subprocess with every piece of its state (account keys, renewal
configuration, certificates, logs) under a directory the test owns, a bounded timeout, and only
loopback addresses: the challenge listeners bind 127.0.0.1, the ACME server is the live one, and
DNS (for dns-01 and for the server's lookups) is the test's LoopbackDNS. A run returns the
CompletedProcess and the paths of what the client wrote, so a test can assert on the files (the
leaf, its chain) and on the client's own words (its log) rather than on the exit code alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

if TYPE_CHECKING:
    from ..live import LiveServer
    from .dns_server import LoopbackDNS

REPO = Path(__file__).resolve().parents[2]
CERTBOT = str(Path(sys.executable).parent / "certbot")
LEGO = shutil.which("lego") or "/usr/bin/lego"
EMAIL = "admin@example.test"
# One client run does a handful of loopback round trips plus a validation; a minute is generous
# and still bounds a client that hangs on a server bug.
CLIENT_TIMEOUT = 120.0

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----\r?\n?", re.DOTALL
)


def directory_url(base_url: str, authority: str | None = None) -> str:
    """The ACME directory of ``authority`` (the default authority's when None)."""
    return f"{base_url}/acme/{authority}/directory" if authority else f"{base_url}/acme/directory"


def split_pem(data: bytes) -> list[bytes]:
    """Every certificate of a PEM bundle, in order."""
    return [m.group(0).rstrip(b"\r\n") + b"\n" for m in _PEM_CERT.finditer(data)]


@dataclass(frozen=True)
class Issued:
    """What a client wrote for one certificate: the leaf alone, the chain (intermediates, not
    the root) and the private key the client made."""

    leaf: Path
    chain: Path
    key: Path

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.leaf.read_bytes())

    @property
    def serial(self) -> int:
        return self.certificate().serial_number

    @property
    def serial_hex(self) -> str:
        """The serial in hex, as the API takes it in a path."""
        return f"{self.serial:x}"


@dataclass(frozen=True)
class ClientRun:
    """One client invocation: the process, the command, and the part of the client's log that
    this run wrote (certbot appends to one debug log; lego logs to stderr)."""

    proc: subprocess.CompletedProcess[str]
    command: list[str]
    log_text: str
    issued: Issued | None

    @property
    def ok(self) -> bool:
        return self.proc.returncode == 0

    def explain(self) -> str:
        """Everything needed to read a failure from the assertion message alone."""
        return (
            f"$ {shlex.join(self.command)}\nexit {self.proc.returncode}\n"
            f"--- stdout\n{self.proc.stdout[-4000:]}\n--- stderr\n{self.proc.stderr[-6000:]}\n"
            f"--- log (tail)\n{self.log_text[-8000:]}"
        )


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without CA_* (the clients must not see the server's settings)
    and without proxies (every target is loopback), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CA_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def _run(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        # A hung client is a failed run with what it had said so far, not an error of the test.
        def text(value: str | bytes | None) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

        return subprocess.CompletedProcess(
            command, -9, text(exc.stdout), text(exc.stderr) + f"\n[timed out after {timeout} s]"
        )


# ---------------------------------------------------------------------------------- certbot


@dataclass
class Certbot:
    """certbot with ``--standalone`` http-01 on 127.0.0.1:``http_port``, trusting ``root``
    (REQUESTS_CA_BUNDLE) for the ACME server's HTTPS; all its state under ``home``."""

    home: Path
    server: str
    root: Path
    http_port: int
    timeout: float = CLIENT_TIMEOUT

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "letsencrypt.log"

    def lineage(self, name: str) -> Issued:
        live = self.config_dir / "live" / name
        return Issued(live / "cert.pem", live / "chain.pem", live / "privkey.pem")

    def renewal_conf(self, name: str) -> Path:
        return self.config_dir / "renewal" / f"{name}.conf"

    def _invoke(self, args: list[str], name: str | None) -> ClientRun:
        self.home.mkdir(parents=True, exist_ok=True)
        before = self.log_file.stat().st_size if self.log_file.exists() else 0
        command = [
            CERTBOT,
            *args,
            "--config-dir", str(self.config_dir),
            "--work-dir", str(self.home / "work"),
            "--logs-dir", str(self.home / "logs"),
            "--non-interactive",
            # One log file appended to by every run: each run reads back only its own part.
            "--max-log-backups", "0",
        ]  # fmt: skip
        env = _env(REQUESTS_CA_BUNDLE=str(self.root))
        proc = _run(command, env, self.home, self.timeout)
        log = ""
        if self.log_file.exists():
            with self.log_file.open("rb") as f:
                f.seek(before)
                log = f.read().decode(errors="replace")
        issued = None
        if name is not None and self.lineage(name).leaf.exists():
            issued = self.lineage(name)
        return ClientRun(proc, command, log, issued)

    def certonly(
        self,
        *names: str,
        eab: tuple[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> ClientRun:
        """``certbot certonly --standalone`` for ``names`` (the lineage is named after the first);
        ``eab`` is (kid, hmac key) for External Account Binding."""
        args = [
            "certonly", "--standalone",
            "--http-01-port", str(self.http_port), "--http-01-address", "127.0.0.1",
            "--server", self.server, "--agree-tos", "-m", EMAIL,
            "--cert-name", names[0],
        ]  # fmt: skip
        for name in names:
            args += ["-d", name]
        if eab is not None:
            args += ["--eab-kid", eab[0], "--eab-hmac-key", eab[1]]
        return self._invoke([*args, *extra], names[0])

    def renew(self, name: str, *, force: bool = False) -> ClientRun:
        """``certbot renew`` of one lineage from its renewal configuration alone (server, port,
        address as certonly stored them); without ``force`` certbot decides, asking ARI."""
        args = ["renew", "--cert-name", name, "--no-random-sleep-on-renew"]
        if force:
            args.append("--force-renewal")
        return self._invoke(args, name)

    def revoke(self, name: str, reason: str = "keycompromise") -> ClientRun:
        """``certbot revoke --cert-name NAME --reason REASON`` signed with the account key; the
        files are kept so the test can read the revoked certificate's serial afterwards."""
        args = [
            "revoke", "--cert-name", name, "--reason", reason, "--no-delete-after-revoke",
            "--server", self.server,
        ]  # fmt: skip
        return self._invoke(args, name)


# ---------------------------------------------------------------------------------- lego


def write_exec_hook(directory: Path, records: Path) -> Path:
    """The program lego's ``exec`` DNS provider calls as ``HOOK present|cleanup FQDN VALUE``:
    it writes the TXT record into the LoopbackDNS records file (read again on every query)."""
    directory.mkdir(parents=True, exist_ok=True)
    hook = directory / "dns-hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f"cd {shlex.quote(str(REPO))} || exit 1\n"
        # A DNS-01 value is base64url and starts with "-" one time in 64: after "--" it is
        # never read as an option.
        f'exec {shlex.quote(sys.executable)} -m tests.acme.dns_server "$1" '
        f'--records {shlex.quote(str(records))} -- "$2" "$3"\n'
    )
    hook.chmod(0o755)
    return hook


@dataclass
class Lego:
    """lego with all its state under ``home`` (``--path``), trusting ``root``
    (LEGO_CA_CERTIFICATES). Exactly one challenge solver per instance:
    ``http_port`` (http-01), ``tls_port`` (tls-alpn-01) or ``dns_port`` + ``records`` (dns-01
    through the exec provider into the LoopbackDNS, and that server as lego's resolver)."""

    home: Path
    server: str
    root: Path
    http_port: int | None = None
    tls_port: int | None = None
    dns_port: int | None = None
    records: Path | None = None
    eab: tuple[str, str] | None = None
    timeout: float = CLIENT_TIMEOUT

    def certificate_files(self, name: str) -> tuple[Path, Path, Path]:
        """(bundle, issuer, key) as lego names them: ``*`` becomes ``_`` in file names."""
        base = self.home / "certificates" / name.replace("*", "_")
        return Path(f"{base}.crt"), Path(f"{base}.issuer.crt"), Path(f"{base}.key")

    def _solver(self) -> tuple[list[str], dict[str, str]]:
        if self.http_port is not None:
            return ["--http", "--http.port", f"127.0.0.1:{self.http_port}"], {}
        if self.tls_port is not None:
            return ["--tls", "--tls.port", f"127.0.0.1:{self.tls_port}"], {}
        if self.dns_port is not None and self.records is not None:
            hook = write_exec_hook(self.home / "hook", self.records)
            args = ["--dns", "exec", "--dns.resolvers", f"127.0.0.1:{self.dns_port}"]
            # The LoopbackDNS is no authoritative server with SOA/NS: lego checks the TXT
            # record through the resolver and does not go looking for the zone's name servers.
            args.append("--dns.disable-cp")
            env = {
                "EXEC_PATH": str(hook),
                "EXEC_PROPAGATION_TIMEOUT": "30",
                "EXEC_POLLING_INTERVAL": "1",
                # A wildcard and its base name share one TXT name: lego solves them one after
                # the other, 60 s apart by default.
                "EXEC_SEQUENCE_INTERVAL": "1",
            }
            return args, env
        raise ValueError("a Lego needs http_port, tls_port, or dns_port and records")

    def _invoke(self, names: tuple[str, ...], command_args: list[str]) -> ClientRun:
        self.home.mkdir(parents=True, exist_ok=True)
        solver, solver_env = self._solver()
        command = [
            LEGO, "--server", self.server, "--accept-tos", "--email", EMAIL,
            "--path", str(self.home), *solver,
        ]  # fmt: skip
        for name in names:
            command += ["--domains", name]
        if self.eab is not None:
            command += ["--eab", "--kid", self.eab[0], "--hmac", self.eab[1]]
        command += command_args
        env = _env(LEGO_CA_CERTIFICATES=str(self.root), **solver_env)
        proc = _run(command, env, self.home, self.timeout)
        bundle, issuer, key = self.certificate_files(names[0])
        issued = None
        if proc.returncode == 0 and bundle.exists():
            issued = self._split(names[0], bundle, issuer, key)
        return ClientRun(proc, command, proc.stderr, issued)

    def _split(self, name: str, bundle: Path, issuer: Path, key: Path) -> Issued:
        """lego's ``NAME.crt`` is leaf + issuer; the leaf alone is written beside it."""
        certs = split_pem(bundle.read_bytes())
        out = self.home / "split" / name.replace("*", "_")
        out.mkdir(parents=True, exist_ok=True)
        (out / "leaf.pem").write_bytes(certs[0] if certs else b"")
        chain = b"".join(certs[1:]) or (issuer.read_bytes() if issuer.exists() else b"")
        (out / "chain.pem").write_bytes(chain)
        return Issued(out / "leaf.pem", out / "chain.pem", key)

    def run(self, *names: str) -> ClientRun:
        """``lego run``: register (with EAB when given) and obtain a certificate for ``names``."""
        return self._invoke(names, ["run"])

    def renew(self, *names: str, days: int = 100_000) -> ClientRun:
        """``lego renew``: with ``days`` beyond the certificate's life, renew it now."""
        return self._invoke(names, ["renew", "--days", str(days), "--no-random-sleep"])


# ---------------------------------------------------------------------------------- the server


def start_acme_server(
    base: Path,
    database_url: str,
    *,
    dns_port: int,
    http01_port: int | None = None,
    tlsalpn01_port: int | None = None,
    require_eab: bool = True,
    default_allowed_names: str = "",
    extra_env: dict[str, str] | None = None,
) -> LiveServer:
    """``ca-service serve --tls`` (so the public URL is https and ACME is on), validating
    against the ports the client listens on and resolving names through the LoopbackDNS."""
    from ..live import free_port, start_server

    env = {
        "CA_ACME_REQUIRE_EAB": "true" if require_eab else "false",
        "CA_ACME_DNS_RESOLVER": f"127.0.0.1:{dns_port}",
        # A port nobody listens on unless the test gives the client's: a validation of the
        # other kind fails fast instead of reaching something else on the machine.
        "CA_ACME_HTTP01_PORT": str(http01_port or free_port()),
        "CA_ACME_TLSALPN01_PORT": str(tlsalpn01_port or free_port()),
        "CA_ACME_DEFAULT_ALLOWED_NAMES": default_allowed_names,
        # CRL DP, OCSP and caIssuers in http, as the CA/B Forum BRs ask (docs/acme.md). Nothing
        # listens there (port 9, discard): the tests fetch the CRL by its path over the https
        # listener, and certbot's OCSP check of a renewal fails fast and changes nothing.
        "CA_REVOCATION_URL": "http://127.0.0.1:9",
    }
    env.update(extra_env or {})
    return start_server(base / "data", database_url, tls=True, extra_env=env)


@contextlib.contextmanager
def acme_stack(
    base: Path, database_url: str, **server: Any
) -> Iterator[tuple[LiveServer, LoopbackDNS]]:
    """A LoopbackDNS (every name not in its records is A 127.0.0.1) and the ACME server using
    it as resolver; both stopped on exit. ``server`` goes to ``start_acme_server``."""
    from .dns_server import LoopbackDNS

    dns = LoopbackDNS(base / "dns-records.json", default_a="127.0.0.1")
    dns.start()
    try:
        live = start_acme_server(base, database_url, dns_port=dns.port, **server)
        try:
            yield live, dns
        finally:
            live.stop()
    finally:
        dns.stop()


def write_root(live: LiveServer, directory: Path) -> Path:
    """The default authority's root, from the store (never from the server under test), as the
    PEM file every client is told to trust."""
    assert live.root_pem is not None, "not a TLS server"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "root.pem"
    path.write_text(live.root_pem)
    return path


def create_eab(
    live: LiveServer,
    allowed_names: list[str],
    *,
    name: str = "harness",
    profiles: list[str] | None = None,
    max_validity_days: int | None = None,
    allow_wildcards: bool | None = None,
) -> tuple[str, str]:
    """An External Account Binding key made by the admin through the API: (kid, hmac key)."""
    body: dict[str, object] = {"name": name, "allowed_names": allowed_names}
    if allow_wildcards is not None:
        body["allow_wildcards"] = allow_wildcards
    if profiles is not None:
        body["profiles"] = profiles
    if max_validity_days is not None:
        body["max_validity_days"] = max_validity_days
    reply = live.request("POST", "/api/v1/acme/eab", token=live.admin_token, body=body)
    assert reply.status == 201, reply.body[:500]
    kid, key = reply.json["kid"], reply.json["hmac_key"]
    assert isinstance(kid, str) and kid and isinstance(key, str) and key
    assert "=" not in key, "the HMAC key is base64url without padding"
    return kid, key


def api_certificate(live: LiveServer, serial_hex: str) -> dict[str, object]:
    """The certificate's record as the admin API shows it."""
    reply = live.request("GET", f"/api/v1/certificates/{serial_hex}", token=live.admin_token)
    assert reply.status == 200, reply.body[:500]
    record = reply.json
    assert isinstance(record, dict)
    return record


def acme_serials(live: LiveServer) -> set[int]:
    """The serials of every certificate ACME issued (requester ``acme:<account>``): what a
    refused or skipped request must leave unchanged. Counting all certificates would not do:
    the service issues some of its own (its OCSP responder's on the first OCSP request)."""
    from ..live import list_all

    return {int(c["serial"], 16) for c in list_all(live, "/api/v1/certificates") if _by_acme(c)}


def _by_acme(record: dict[str, Any]) -> bool:
    return str(record.get("requester", "")).startswith("acme:")


_WILDCARD_SYNTAX = re.compile(
    r"^\S+ @ \S+dNSName\n\s+pkix\.invalid_domain_name_syntax \(ERROR\): "
    r'Invalid domain name syntax: "\*\.([a-z0-9.-]+)"$',
    re.MULTILINE,
)


def pkilint_findings(path: Path) -> str:
    """pkilint's PKIX lint of a certificate, less one finding: PKIX (RFC 5280 4.2.1.6, the
    preferred name syntax) has no wildcards, so pkilint calls every ``*.name`` dNSName invalid;
    that finding is dropped for a wildcard over a valid name, and only that one."""
    from ..helpers import lint_cert

    findings = lint_cert(path)
    kept = _WILDCARD_SYNTAX.sub(lambda m: "" if _valid_host(m.group(1)) else m.group(0), findings)
    return kept.strip()


def _valid_host(name: str) -> bool:
    labels = name.split(".")
    return len(labels) >= 2 and all(
        re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels
    )


# What the CA/B Forum TLS BR linter says of every `server` leaf of this private CA (with
# revocation_url in http; STATUS-harness.md has the details sent to the lead). Each one is
# named so that a new finding fails the test; none is about wildcards.
KNOWN_CABF_FINDINGS = frozenset(
    {
        # Private names (.acme.test) and the loopback URLs of the test server.
        "cabf.internal_domain_name",
        # A private CA asserts no BR certificate policy.
        "cabf.serverauth.subscriber.certificate_policies_extension_absent",
        "cabf.serverauth.dv.common_name_attribute_present",
        "cabf.serverauth.subscriber.subject_key_identifier_extension_present",
    }
)
_FINDING = re.compile(r"^\s+([a-z0-9_.]+) \((?:FATAL|ERROR|WARNING)\)", re.MULTILINE)


def cabf_findings(path: Path) -> tuple[set[str], str]:
    """pkilint's CA/B Forum serverAuth lint (type detected) at WARNING: (codes, full text)."""
    from ..conftest import run

    linter = Path(sys.executable).parent / "lint_cabf_serverauth_cert"
    result = run([str(linter), "lint", "-d", "-s", "WARNING", str(path)])
    text = (result.stdout + result.stderr).strip()
    codes = set(_FINDING.findall(text))
    if result.returncode != 0 and not codes:
        codes = {f"exit {result.returncode}"}
    return codes, text


def assert_good_certificate(
    openssl: str, root: Path, issued: Issued, names: list[str]
) -> x509.Certificate:
    """What every certificate a client received must be: it chains to the root with the chain
    the server sent (`openssl verify`), pkilint finds nothing, it names exactly ``names``, and
    the key the client holds is the one certified."""
    from cryptography.hazmat.primitives import serialization

    from ..helpers import openssl_verify

    assert issued.chain.read_bytes().strip(), "the server sent no chain"
    code, out = openssl_verify(openssl, root, issued.leaf, issued.chain)
    assert code == 0, out
    findings = pkilint_findings(issued.leaf)
    assert findings == "", f"pkilint findings on {issued.leaf}:\n{findings}"
    cert = issued.certificate()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    if any(n.startswith("*.") for n in names):
        # PKIX has no wildcards; the CA/B Forum linter judges them (and everything else).
        codes, text = cabf_findings(issued.leaf)
        assert codes <= KNOWN_CABF_FINDINGS, f"new CA/B Forum findings on {issued.leaf}:\n{text}"
    key = serialization.load_pem_private_key(issued.key.read_bytes(), None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    return cert


# ---------------------------------------------------------------------------------- raw ACME


def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AcmeReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def problem_type(self) -> str:
        """The ACME error name (``badNonce``) of a problem document, '' otherwise."""
        if not self.headers.get("content-type", "").startswith("application/problem+json"):
            return ""
        typ = str(self.json.get("type", ""))
        prefix = "urn:ietf:params:acme:error:"
        return typ[len(prefix) :] if typ.startswith(prefix) else typ


class RawAcme:
    """A hand-made ACME client (RFC 8555 section 6): flattened JWS over ES256 with the
    ``cryptography`` key the test holds, so that a test can break exactly one thing in a
    request (the nonce, the signature, the url, the kid, the alg, the CSR) and see the answer
    to that alone. It follows no redirects and retries nothing."""

    def __init__(self, live: LiveServer, directory: str, key: Any = None) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.live = live
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.kid: str | None = None
        reply = self.get(directory)
        assert reply.status == 200, reply.body[:300]
        self.directory: dict[str, Any] = reply.json

    # -- transport

    def _path(self, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == self.live.base_url, url
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def _send(self, method: str, url: str, raw: bytes | None = None) -> AcmeReply:
        headers = {"Content-Type": "application/jose+json"} if raw is not None else {}
        reply = self.live.request(
            method, self._path(url), raw=raw, headers=headers, check_spec=False
        )
        return AcmeReply(reply.status, reply.headers, reply.body)

    def get(self, url: str) -> AcmeReply:
        return self._send("GET", url)

    def nonce(self) -> str:
        reply = self._send("HEAD", self.directory["newNonce"])
        assert reply.status == 200, reply.status
        return reply.headers["replay-nonce"]

    # -- JWS

    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_key().public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }

    def thumbprint(self) -> str:
        """RFC 7638: SHA-256 of the required members, sorted, no white space."""
        import hashlib
        import json

        canonical = json.dumps(self.jwk(), sort_keys=True, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint()}"

    def sign_es256(self, signing_input: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def jws(
        self,
        url: str,
        payload: Any,
        *,
        nonce: str | None = None,
        header: dict[str, Any] | None = None,
        use_jwk: bool | None = None,
        signature: bytes | None = None,
    ) -> bytes:
        """A flattened JWS for ``url``; ``payload`` None is POST-as-GET (empty payload).
        ``header`` overrides or adds protected members (a member set to None is dropped);
        ``signature`` replaces the real one."""
        import json

        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce or self.nonce(), "url": url}
        if use_jwk or (use_jwk is None and self.kid is None):
            protected["jwk"] = self.jwk()
        else:
            protected["kid"] = self.kid
        for k, v in (header or {}).items():
            if v is None:
                protected.pop(k, None)
            else:
                protected[k] = v
        p64 = b64url(json.dumps(protected).encode())
        body64 = "" if payload is None else b64url(json.dumps(payload).encode())
        sig = self.sign_es256(f"{p64}.{body64}".encode()) if signature is None else signature
        return json.dumps({"protected": p64, "payload": body64, "signature": b64url(sig)}).encode()

    def post(self, url: str, payload: Any, **jws: Any) -> AcmeReply:
        return self._send("POST", url, self.jws(url, payload, **jws))

    # -- the protocol's steps

    def eab(self, kid: str, hmac_key: str) -> dict[str, str]:
        """The externalAccountBinding member (RFC 8555 section 7.3.4): the account JWK signed
        by the EAB key with HS256."""
        import hashlib
        import hmac
        import json

        protected = {"alg": "HS256", "kid": kid, "url": self.directory["newAccount"]}
        p64 = b64url(json.dumps(protected).encode())
        body64 = b64url(json.dumps(self.jwk()).encode())
        mac = hmac.new(b64url_decode(hmac_key), f"{p64}.{body64}".encode(), hashlib.sha256)
        return {"protected": p64, "payload": body64, "signature": b64url(mac.digest())}

    def new_account(self, eab: tuple[str, str] | None = None, **fields: Any) -> AcmeReply:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True, "contact": [f"mailto:{EMAIL}"]}
        if eab is not None:
            payload["externalAccountBinding"] = self.eab(*eab)
        payload.update(fields)
        reply = self.post(self.directory["newAccount"], payload, use_jwk=True)
        if reply.status in (200, 201):
            self.kid = reply.headers["location"]
        return reply

    def new_order(self, *names: str) -> AcmeReply:
        identifiers = [{"type": "dns", "value": n} for n in names]
        return self.post(self.directory["newOrder"], {"identifiers": identifiers})

    def poll(self, url: str, until: tuple[str, ...], *, tries: int = 100) -> AcmeReply:
        """POST-as-GET ``url`` until its status is in ``until`` (bounded: ``tries`` times, 0.1 s
        apart, so about ten seconds at most)."""
        import time

        reply = self.post(url, None)
        for _ in range(tries):
            if reply.status != 200 or reply.json.get("status") in until:
                return reply
            time.sleep(0.1)
            reply = self.post(url, None)
        return reply


class Http01Responder:
    """A loopback HTTP server answering ``/.well-known/acme-challenge/<token>`` with the key
    authorizations it was given (RFC 8555 section 8.3), in a thread; stop() by the test."""

    def __init__(self, port: int) -> None:
        import http.server
        import threading

        answers: dict[str, str] = {}
        self.answers = answers
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                prefix = "/.well-known/acme-challenge/"
                token = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
                body = answers.get(token)
                self.send_response(200 if body else 404)
                data = (body or "").encode()
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
