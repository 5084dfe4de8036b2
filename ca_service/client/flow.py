"""One ``ca-service request`` from start to finish: decide, request, verify, write.

The order matters for safety:
1. trust first (the root file, or the root fetched and judged by its fingerprint), so that no
   credential is ever sent to a server that has not proved it holds the CA;
2. the decision ("is there anything to do?") before any credential is fetched: an idempotent
   run from cron or a pipeline with a valid certificate touches no network at all;
3. a new key every time (a renewal is also the moment to retire the old key), generated here
   and never sent: only the CSR leaves;
4. the answer is verified (chains to the root, certifies our public key, holds our names)
   before anything is written, so a bad answer leaves the old files as they were.

Renewal goes through POST /api/v1/certificates/<serial>/renew when the certificate on disk is
ours (chains to this root) and unexpired: the store then links the old record to its successor
and keeps its profile. When the server will not renew that serial (another caller issued it,
it is revoked, the store does not know it), a fresh issuance follows: the caller may still be
entitled to the names, and the server judges that again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from OpenSSL import crypto as ossl

from ca_service.client import files
from ca_service.client.bootstrap import ensure_root
from ca_service.client.credentials import Credential
from ca_service.client.errors import Refused, Unreachable, UsageError
from ca_service.client.transport import Answer, Endpoint, HttpsClient, verifying_context
from ca_service.crypto.fields import certificate_names
from ca_service.crypto.keys import SigningKey, generate_private_key, key_type_of, signature_hash
from ca_service.domain import KeyType, SubjectName
from ca_service.errors import BadRequest

JSON = "application/json"
# Server answers that mean "not this serial" rather than "not you": issue afresh instead.
RENEW_FALLBACK = frozenset({403, 404, 409})
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Request:
    server: Endpoint
    names: tuple[SubjectName, ...]
    layout: files.Layout
    root_file: Path
    root_fingerprint: str | None
    credential: Callable[[], Credential]
    key_type: KeyType = KeyType.ECDSA_P256
    renew_within: float = 1 / 3
    profile: str | None = None
    validity_days: int | None = None
    authority: str | None = None
    p12_passphrase: bytes | None = None
    timeout: float = 30.0
    attempts: int = 4
    progress: Callable[[str], None] = field(default=lambda _m: None)
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class Outcome:
    action: str  # "unchanged", "issued" or "renewed"
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    names: tuple[str, ...]
    files: dict[str, Path]
    root: Path
    root_fetched: bool
    renewed_from: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "names": list(self.names),
            "files": {k: str(v) for k, v in self.files.items()},
            "root": str(self.root),
            "root_fetched": self.root_fetched,
            "renewed_from": self.renewed_from,
        }

    def summary(self) -> str:
        until = f"{self.not_after:%Y-%m-%d %H:%M:%S} UTC"
        if self.action == "unchanged":
            return f"certificate {self.serial} valid until {until}, nothing to do"
        where = self.files.get("pkcs12") or self.files.get("certificate")
        how = f"renewed {self.renewed_from} as" if self.renewed_from else "issued"
        names = ", ".join(self.names)
        return f"{how} certificate {self.serial} for {names}, valid until {until}: {where}"


@dataclass(frozen=True)
class Existing:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key_matches: bool


def run(req: Request) -> Outcome:
    root_pem, fetched = ensure_root(
        req.server,
        req.root_file,
        req.root_fingerprint,
        authority=req.authority,
        timeout=req.timeout,
        attempts=req.attempts,
    )
    with files.locked(req.layout.lock, req.timeout):
        return _run_locked(req, root_pem, fetched)


def _run_locked(req: Request, root_pem: str, fetched: bool) -> Outcome:
    root = x509.load_pem_x509_certificate(root_pem.encode())
    existing = read_existing(req.layout, req.p12_passphrase)
    now = req.now()
    ours = existing is not None and chains_to(root, existing.certificate, existing.chain, now)
    if existing is not None and ours and _still_good(req, existing, now):
        cert = existing.certificate
        return Outcome(
            "unchanged",
            _serial(cert),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            certificate_names(cert),
            req.layout.outputs(),
            req.root_file,
            fetched,
        )
    key = generate_private_key(req.key_type)
    csr = build_csr(key, req.names)
    client = HttpsClient(
        req.server,
        verifying_context(root_pem),
        timeout=req.timeout,
        attempts=req.attempts,
        on_wait=req.progress,
    )
    wanted = ", ".join(n.value for n in req.names)
    renew_serial = None
    if (
        existing is not None
        and ours
        and _same_names(req, existing.certificate)
        and existing.certificate.not_valid_after_utc > now
    ):
        renew_serial = _serial(existing.certificate)
    answer: Answer | None = None
    if renew_serial is not None:
        req.progress(f"renewing certificate {renew_serial} for {wanted} at {req.server.url}")
        answer = client.request(
            "POST",
            f"/api/v1/certificates/{renew_serial}/renew",
            body=_json_body(csr=csr, validity_days=req.validity_days, authority=req.authority),
            headers={**req.credential().headers(), "Content-Type": JSON, "Accept": JSON},
        )
        if answer.status in RENEW_FALLBACK:
            req.progress(
                f"the server will not renew {renew_serial} ({_problem(answer)}); "
                "requesting a new certificate"
            )
            answer, renew_serial = None, None
    if answer is None:
        req.progress(f"requesting a certificate for {wanted} from {req.server.url}")
        answer = client.request(
            "POST",
            "/api/v1/certificates",
            body=_json_body(
                csr=csr,
                profile=req.profile,
                validity_days=req.validity_days,
                authority=req.authority,
            ),
            # Asked again: an ID token may be good for one use only, and GitHub hands out a
            # fresh one per call; an API token or a token file gives the same value again.
            headers={**req.credential().headers(), "Content-Type": JSON, "Accept": JSON},
        )
    leaf, chain = _accept(answer, req.server)
    verify_issued(root, leaf, chain, key, req.names, now)
    written = write(req.layout, key, leaf, chain, req.p12_passphrase)
    return Outcome(
        "renewed" if renew_serial else "issued",
        _serial(leaf),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        certificate_names(leaf),
        written,
        req.root_file,
        fetched,
        renewed_from=renew_serial,
    )


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x").rjust(2, "0")


def _same_names(req: Request, cert: x509.Certificate) -> bool:
    return set(certificate_names(cert)) == {str(n) for n in req.names}


def _still_good(req: Request, existing: Existing, now: dt.datetime) -> bool:
    """Nothing to do: a matching key, the names asked for, the key type asked for, and more
    than ``renew_within`` of its lifetime left."""
    cert = existing.certificate
    if not existing.key_matches or not _same_names(req, cert):
        return False
    try:
        if key_type_of(cert.public_key()) is not req.key_type:
            return False
    except BadRequest:  # a key type we do not issue is a reason to replace, not to crash
        return False
    total = cert.not_valid_after_utc - cert.not_valid_before_utc
    remaining = cert.not_valid_after_utc - now
    return remaining > total * req.renew_within


def read_existing(layout: files.Layout, passphrase: bytes | None) -> Existing | None:
    """The certificate on disk, if a readable one is there; any doubt means "none"."""
    try:
        if layout.p12:
            if not layout.pkcs12.exists():
                return None
            try:
                key, cert, extra = pkcs12.load_key_and_certificates(
                    layout.pkcs12.read_bytes(), passphrase
                )
            except ValueError:
                raise UsageError(
                    f"cannot open {layout.pkcs12} with the passphrase given (or it is not PKCS#12)"
                ) from None
            if cert is None:
                return None
            return Existing(cert, tuple(extra), key is not None and _matches(key, cert))
        if not layout.certificate.exists():
            return None
        cert = x509.load_pem_x509_certificate(layout.certificate.read_bytes())
        chain: tuple[x509.Certificate, ...] = ()
        if layout.chain.exists() and layout.chain.stat().st_size:
            chain = tuple(x509.load_pem_x509_certificates(layout.chain.read_bytes()))
        key_matches = False
        if layout.key.exists():
            key = serialization.load_pem_private_key(layout.key.read_bytes(), None)
            key_matches = _matches(key, cert)
        if layout.fullchain.exists():
            full = x509.load_pem_x509_certificates(layout.fullchain.read_bytes())
            key_matches = key_matches and bool(full) and full[0] == cert
        else:
            key_matches = False
        return Existing(cert, chain, key_matches)
    except (ValueError, TypeError, OSError):
        return None


def _matches(key: Any, cert: x509.Certificate) -> bool:
    try:
        mine = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except AttributeError:
        return False
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return bool(mine == theirs)


def chains_to(
    root: x509.Certificate,
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    now: dt.datetime,
) -> bool:
    """OpenSSL's path validation of ``leaf`` up to ``root`` only, at ``now``, any purpose."""
    store = ossl.X509Store()
    store.add_cert(ossl.X509.from_cryptography(root))
    store.set_time(now.replace(tzinfo=None))
    untrusted = [ossl.X509.from_cryptography(c) for c in chain]
    context = ossl.X509StoreContext(store, ossl.X509.from_cryptography(leaf), untrusted)
    try:
        context.verify_certificate()
    except ossl.X509StoreContextError:
        return False
    return True


def build_csr(key: SigningKey, names: tuple[SubjectName, ...]) -> str:
    """A PKCS#10 request: CN the first name (when it fits a CN), every name a SAN."""
    subject: list[x509.NameAttribute[str]] = []
    if names and len(names[0].value) <= 64:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, names[0].value))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(
            x509.SubjectAlternativeName([n.general_name() for n in names]), critical=False
        )
    )
    csr = builder.sign(key, signature_hash(key_type_of(key.public_key())))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _json_body(**fields: Any) -> bytes:
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


def _problem(answer: Answer) -> str:
    """The server's own words for a refusal: its detail, and the rule when it names one."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        text = body["detail"]
        rule = body.get("rule")
        if isinstance(rule, str) and rule not in text:
            text += f" (rule: {rule})"
        return f"{answer.status}: {text}"
    return f"{answer.status}"


def _accept(
    answer: Answer, server: Endpoint
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    if 400 <= answer.status < 500:
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(answer.body)
        rule = body.get("rule") if isinstance(body, dict) else None
        raise Refused(
            f"refused by {server.url} ({_problem(answer)})",
            status=answer.status,
            rule=rule if isinstance(rule, str) else None,
        )
    if answer.status != 201:
        raise Unreachable(f"{server.url} failed ({_problem(answer)})")
    data = answer.json()
    try:
        leaf = x509.load_pem_x509_certificate(str(data["certificate"]).encode())
        chain_text = str(data.get("chain") or "")
        chain = (
            tuple(x509.load_pem_x509_certificates(chain_text.encode()))
            if chain_text.strip()
            else ()
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise Unreachable(f"{server.url} answered 201 without a readable certificate") from None
    return leaf, chain


def verify_issued(
    root: x509.Certificate,
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    key: SigningKey,
    names: tuple[SubjectName, ...],
    now: dt.datetime,
) -> None:
    """Refuse an answer that is not the certificate asked for, before anything is written.

    A certificate that starts a little after ``now`` is judged at its start: the server's
    clock may be ahead of this machine's by up to ``CLOCK_SKEW``, and that is no reason to
    throw a good certificate away."""
    at = now
    if now < leaf.not_valid_before_utc <= now + CLOCK_SKEW:
        at = leaf.not_valid_before_utc
    if not chains_to(root, leaf, chain, at):
        raise Unreachable("the certificate the server returned does not chain to the trusted root")
    if not _matches(key, leaf):
        raise Unreachable("the certificate the server returned is not for the key generated here")
    missing = {str(n) for n in names} - set(certificate_names(leaf))
    if missing:
        raise Refused(f"the server issued a certificate without {', '.join(sorted(missing))}")


def write(
    layout: files.Layout,
    key: SigningKey,
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    passphrase: bytes | None,
) -> dict[str, Path]:
    """Stage every file, then replace them (see ``files`` for the order and why)."""
    pem = serialization.Encoding.PEM
    with files.staging() as staged:
        if layout.p12:
            if not passphrase:
                raise UsageError(
                    "--format p12 needs a passphrase (--p12-passphrase-file or CA_P12_PASSPHRASE)"
                )
            names = certificate_names(leaf)
            friendly = (names[0].split(":", 1)[1] if names else _serial(leaf)).encode()
            data = pkcs12.serialize_key_and_certificates(
                friendly,
                key,  # type: ignore[arg-type]  # generate_private_key makes none of the others
                leaf,
                list(chain) or None,
                serialization.BestAvailableEncryption(passphrase),
            )
            staged.append(files.stage(layout.pkcs12, data, files.PRIVATE))
        else:
            key_pem = key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            leaf_pem = leaf.public_bytes(pem)
            chain_pem = b"".join(c.public_bytes(pem) for c in chain)
            staged.append(files.stage(layout.chain, chain_pem, files.PUBLIC))
            staged.append(files.stage(layout.key, key_pem, files.PRIVATE))
            staged.append(files.stage(layout.certificate, leaf_pem, files.PUBLIC))
            staged.append(files.stage(layout.fullchain, leaf_pem + chain_pem, files.PUBLIC))
        files.commit(staged)
    return layout.outputs()
