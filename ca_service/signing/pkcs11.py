"""CA keys inside a PKCS#11 token (an HSM, a cloud KMS, a YubiHSM, SoftHSM): made there, used
there, never copied out.

``Pkcs11Keystore`` offers the core the same methods as ``FileKeystore`` (generate, sign_root,
signer, remove), so nothing above ``signing/`` knows which backend holds a key. What the store
keeps of a token key is a PKCS#11 URI (RFC 7512) in the authority's ``key_file`` column,
``pkcs11:object=<label>;id=<hex escapes>``, beside the certificate (its public key): never a
byte of the private key, which is made CKA_SENSITIVE and not CKA_EXTRACTABLE.

Sessions: the library is initialised and a session opened lazily in each process (gunicorn
forks its workers, and PKCS#11 handles do not survive a fork: v2.40 section 6.7.7), and every
call into one module in a process goes through one lock, so concurrent requests never share a
session's operation state. A call that fails drops the session, re-initialises the library,
re-opens and retries once; a second failure is ``TokenUnavailable`` (503) while the service
runs, or one ``ConfigError`` line (a missing module, token or key, a wrong PIN) at start.

Only this module imports the PKCS#11 binding (python-pkcs11).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote, unquote_to_bytes

import pkcs11
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11.exceptions import (
    NoSuchKey,
    NoSuchToken,
    PinIncorrect,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
)

from ca_service.crypto.keys import key_type_of
from ca_service.domain import ApprovedTemplate, KeyType
from ca_service.errors import BadRequest, ConfigError, TokenUnavailable
from ca_service.signing import algorithms, issuer
from ca_service.signing.keystore import NewKey

T = TypeVar("T")

REFERENCE_PREFIX = "pkcs11:"

# namedCurve parameters (DER OIDs) of the curves a CA key may use.
_CURVE_PARAMS = {
    KeyType.ECDSA_P256: bytes.fromhex("06082a8648ce3d030107"),
    KeyType.ECDSA_P384: bytes.fromhex("06052b81040022"),
}
_CURVES = {KeyType.ECDSA_P256: ec.SECP256R1(), KeyType.ECDSA_P384: ec.SECP384R1()}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}

# The private half: signs, nothing else, and can never be read or wrapped out of the token.
_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}
_PUBLIC_TEMPLATE = {Attribute.TOKEN: True, Attribute.PRIVATE: False}
_CAPABILITIES = MechanismFlag.SIGN | MechanismFlag.VERIFY


def supported(key_type: KeyType) -> bool:
    return key_type in _CURVE_PARAMS or key_type in _RSA_BITS


# ---------------------------------------------------------------------------- references


@dataclass(frozen=True)
class KeyRef:
    """A token key as the store names it: its CKA_LABEL, its CKA_ID, or both."""

    label: str | None
    key_id: bytes | None

    def __post_init__(self) -> None:
        if not self.label and not self.key_id:
            raise BadRequest("a token key needs a label or an id")

    @classmethod
    def parse(cls, text: str) -> KeyRef:
        """``pkcs11:object=<label>;id=%01%02`` (RFC 7512 path attributes; others ignored)."""
        if not text.startswith(REFERENCE_PREFIX):
            raise ConfigError(f"{text!r} is not a PKCS#11 key reference (pkcs11:object=...)")
        label: str | None = None
        key_id: bytes | None = None
        for part in text[len(REFERENCE_PREFIX) :].split("?")[0].split(";"):
            name, _, value = part.partition("=")
            if name == "object":
                label = unquote(value)
            elif name == "id":
                key_id = unquote_to_bytes(value)
        return cls(label or None, key_id or None)

    @classmethod
    def of(cls, label: str | None, key_id_hex: str | None) -> KeyRef:
        """From command-line options: a label and/or an id in hex."""
        key_id = None
        if key_id_hex:
            try:
                key_id = bytes.fromhex(key_id_hex.replace(":", ""))
            except ValueError:
                raise BadRequest(f"key id {key_id_hex!r} is not hex") from None
        return cls(label or None, key_id)

    def __str__(self) -> str:
        parts = []
        if self.label:
            parts.append("object=" + quote(self.label, safe=""))
        if self.key_id:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.key_id))
        return REFERENCE_PREFIX + ";".join(parts)


def is_reference(key_file: str) -> bool:
    return key_file.startswith(REFERENCE_PREFIX)


# ---------------------------------------------------------------------------- the library


class _Module:
    """One PKCS#11 library per path and process, and the lock every call into it takes.

    python-pkcs11 loads a library once per process; re-initialising it (after a fork, or to
    recover from a token failure) invalidates every session of that library in the process,
    so every token of the module shares this lock and notices the new ``generation``."""

    _all: dict[str, _Module] = {}
    _all_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.lib: Any = None
        self.pid = 0
        self.generation = 0

    @classmethod
    def get(cls, path: str) -> _Module:
        with cls._all_lock:
            module = cls._all.get(path)
            if module is None:
                module = cls._all[path] = cls(path)
            return module

    def library(self) -> Any:
        """The initialised library for this process (the caller holds ``lock``)."""
        pid = os.getpid()
        if self.lib is None:
            if not os.path.isfile(self.path):
                raise ConfigError(f"PKCS#11 module {self.path} does not exist")
            try:
                self.lib = pkcs11.lib(self.path)
            except PKCS11Error as exc:
                if "loading" in str(exc):
                    raise ConfigError(
                        f"cannot load PKCS#11 module {self.path}: not a PKCS#11 library"
                    ) from None
                raise
            self.pid = pid
            self.generation += 1
        elif pid != self.pid or not self.lib.initialized:
            self.restart()
        return self.lib

    def restart(self) -> None:
        """Finalize and initialise again: after a fork (the parent's handles are not this
        process's) or a failure (a token that went away and came back needs a new look)."""
        if self.lib is None:  # never loaded (its first initialisation failed): load it now
            self.library()
            return
        self.generation += 1
        self.pid = os.getpid()
        # Not initialised, or already torn down: initialize below is what matters.
        with contextlib.suppress(PKCS11Error):
            self.lib.finalize()
        self.lib.initialize()


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would never be released in the child.
    _Module._all_lock = threading.Lock()
    for module in _Module._all.values():
        module.lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------- the token


class Token:
    """One token of one module, reached with the user PIN; every operation goes through
    ``run``, which owns the session and the retry."""

    def __init__(self, module: str, label: str, pin: bytes) -> None:
        self.module_path = module
        self.label = label
        self._pin = pin
        self._module = _Module.get(module)
        self._session: Any = None
        self._generation = -1
        self._keys: dict[tuple[KeyRef, ObjectClass], Any] = {}
        # False until an operation has succeeded: failures before that are configuration
        # errors (one line at start), failures after it are the token being away (503).
        self._started = False

    def __repr__(self) -> str:  # never the PIN
        return f"Token({self.module_path!r}, {self.label!r})"

    def run(self, what: str, op: Callable[[Any], T], *, retry: bool = True) -> T:
        """``op(session)`` under the module's lock, re-opened and retried once on failure.

        A missing token or key is looked for once more too: a token (or a key made by another
        process) that appeared after this process initialised the library is seen only after
        it initialises again. ``retry=False`` (key generation) re-opens a session that failed
        to open, but never runs ``op`` twice."""
        with self._module.lock:
            session = self._attempt(what, self._open, retry=True)
            try:
                result = op(session)
            except (PKCS11Error, _Missing) as first:
                self._drop()
                if not retry or isinstance(first, PinIncorrect | PinLocked):
                    raise self._failure(first, what) from None
                result = self._attempt(what, lambda: op(self._reopen()), retry=False)
            self._started = True
            return result

    def _attempt(self, what: str, call: Callable[[], T], *, retry: bool) -> T:
        try:
            return call()
        except (PKCS11Error, _Missing) as first:
            self._drop()
            if not retry or isinstance(first, PinIncorrect | PinLocked):
                raise self._failure(first, what) from None
        try:
            self._module.restart()
            return call()
        except (PKCS11Error, _Missing) as second:
            self._drop()
            raise self._failure(second, what) from None

    def _reopen(self) -> Any:
        self._module.restart()
        return self._open()

    def _open(self) -> Any:
        lib = self._module.library()
        if self._session is not None and self._generation == self._module.generation:
            return self._session
        self._session = None
        self._keys.clear()
        try:
            token = lib.get_token(token_label=self.label)
        except NoSuchToken:
            raise _Missing(
                f"no PKCS#11 token labelled {self.label!r} in module {self.module_path}"
            ) from None
        try:
            session = token.open(rw=True, user_pin=self._pin.decode())
        except UserAlreadyLoggedIn:
            # Login is per application, not per session: another keystore of this process on
            # the same token logged in already.
            session = token.open(rw=True)
        self._session = session
        self._generation = self._module.generation
        return session

    def _drop(self) -> None:
        session, self._session = self._session, None
        self._keys.clear()
        if session is not None:
            with contextlib.suppress(PKCS11Error):  # gone with the token: nothing to close
                session.close()

    def _failure(self, exc: Exception, what: str) -> Exception:
        if isinstance(exc, _Missing):
            if exc.key:  # the token answers, and the key the store names is not in it
                return ConfigError(str(exc))
            detail = str(exc)
        elif isinstance(exc, PinIncorrect | PinLenRange):
            detail = f"PKCS#11 token {self.label!r} refused the PIN (wrong PIN)"
        elif isinstance(exc, PinLocked):
            detail = f"PKCS#11 token {self.label!r}: the user PIN is locked"
        else:
            detail = f"PKCS#11 token {self.label!r} failed while {what} ({type(exc).__name__})"
        if not self._started:
            return ConfigError(detail)
        return TokenUnavailable(detail)

    def key(self, session: Any, ref: KeyRef, cls: ObjectClass) -> Any:
        """The key object of ``ref`` in this session (found once per session)."""
        cached = self._keys.get((ref, cls))
        if cached is not None:
            return cached
        try:
            found = session.get_key(object_class=cls, label=ref.label, id=ref.key_id)
        except NoSuchKey:
            kind = "private" if cls is ObjectClass.PRIVATE_KEY else "public"
            raise _Missing(
                f"no {kind} key {ref} in PKCS#11 token {self.label!r}", key=True
            ) from None
        self._keys[(ref, cls)] = found
        return found


class _Missing(Exception):
    """Something the configuration names is not there (the token, or a key in it)."""

    def __init__(self, message: str, *, key: bool = False) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------- signing


def _sign(token: Token, ref: KeyRef, key_type: KeyType, data: bytes, what: str) -> bytes:
    """A signature as ``algorithms.algorithm_identifier(key_type)`` says, made in the token.

    ECDSA: the hash is taken here and CKM_ECDSA signs it (every token has it; the combined
    CKM_ECDSA_SHA256 is missing from SoftHSM and many HSMs); the token's r||s is re-encoded as
    the DER Ecdsa-Sig-Value X.509 wants. RSA: CKM_SHA256_RSA_PKCS (PKCS#1 v1.5, as the file
    keys sign).
    """
    if key_type in _CURVE_PARAMS:
        digest = (hashlib.sha384 if key_type is KeyType.ECDSA_P384 else hashlib.sha256)(data)

        def ec_op(session: Any) -> bytes:
            key = token.key(session, ref, ObjectClass.PRIVATE_KEY)
            return bytes(key.sign(digest.digest(), mechanism=Mechanism.ECDSA))

        raw = token.run(what, ec_op)
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
    if key_type in _RSA_BITS:

        def rsa_op(session: Any) -> bytes:
            key = token.key(session, ref, ObjectClass.PRIVATE_KEY)
            return bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))

        return token.run(what, rsa_op)
    raise ConfigError(f"{key_type.value} keys are not supported in a PKCS#11 token")


def _public_key(obj: Any, key_type: KeyType | None) -> CertificatePublicKeyTypes:
    """The public key of a token public key object, as `cryptography` holds it."""
    kind = obj[Attribute.KEY_TYPE]
    if kind == P11KeyType.EC:
        params = bytes(obj[Attribute.EC_PARAMS])
        found = next((k for k, p in _CURVE_PARAMS.items() if p == params), None)
        if found is None:
            raise BadRequest("the token key is on a curve this service does not use")
        point = _unwrap_point(bytes(obj[Attribute.EC_POINT]), found)
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[found], point)
    if kind == P11KeyType.RSA:
        modulus = int.from_bytes(bytes(obj[Attribute.MODULUS]), "big")
        exponent = int.from_bytes(bytes(obj[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    raise BadRequest("the token key is neither ECDSA nor RSA")


def _unwrap_point(value: bytes, key_type: KeyType) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); a few tokens give
    the bare point. An uncompressed point is 1 + 2 * (the coordinate size) octets."""
    size = 1 + 2 * ((_CURVES[key_type].key_size + 7) // 8)
    if len(value) == size:
        return value
    if value[:1] == b"\x04" and value[1] < 0x80 and value[1] == len(value) - 2:
        return value[2:]
    if value[:2] == b"\x04\x81" and value[2] == len(value) - 3:
        return value[3:]
    raise BadRequest("the token's EC public key is not an uncompressed point")


class Pkcs11Signer:
    """A Signer over a key that never leaves its token (made only by Pkcs11Keystore)."""

    __slots__ = ("_certificate", "_key_type", "_ref", "_ski", "_token", "_what")

    def __init__(
        self, token: Token, ref: KeyRef, certificate: x509.Certificate, key_type: KeyType, what: str
    ) -> None:
        self._token = token
        self._ref = ref
        self._certificate = certificate
        self._key_type = key_type
        self._what = what
        self._ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self._certificate.subject.rfc4514_string()!r}, {str(self._ref)!r})"

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self._ski

    def _sign_tbs(self, tbs: bytes) -> bytes:
        return _sign(self._token, self._ref, self._key_type, tbs, f"signing for {self._what}")

    def sign_certificate(self, template: ApprovedTemplate) -> x509.Certificate:
        builder = issuer.build_leaf(template, self._certificate, self._ski)
        return self._assemble(builder)

    def sign_intermediate(self, template: issuer.IntermediateTemplate) -> x509.Certificate:
        builder = issuer.build_intermediate(template, self._certificate, self._ski)
        return self._assemble(builder)

    def _assemble(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        cert, tbs, signature = issuer.sign_externally(builder, self._key_type, self._sign_tbs)
        # A token that signs with another key than the certificate's is caught here, not by a
        # relying party.
        try:
            algorithms.verify(self._certificate, self._key_type, signature, tbs)
        except InvalidSignature:
            raise TokenUnavailable(
                f"{self._what}: the token's signature does not verify; refusing the certificate"
            ) from None
        return cert

    def sign_crl_tbs(self, tbs: bytes) -> bytes:
        return self._sign_tbs(tbs)

    def sign_ocsp_tbs(self, tbs: bytes) -> bytes:
        return self._sign_tbs(tbs)


# ---------------------------------------------------------------------------- the keystore


class Pkcs11Keystore:
    """CA keys in one PKCS#11 token: the keystore surface of ``FileKeystore``."""

    def __init__(self, module: str, token_label: str, pin: bytes) -> None:
        self.token = Token(module, token_label, pin)
        # Keys this process made: only these may be destroyed by ``remove`` (an adopted key
        # belongs to its owner, whatever happens to our records).
        self._made: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11Keystore({self.token.module_path!r}, {self.token.label!r})"

    def generate(self, key_id: str, key_type: KeyType) -> NewKey:
        """A new key pair inside the token, labelled ``key_id`` with a random CKA_ID."""
        if not supported(key_type):
            raise BadRequest(
                f"{key_type.value} keys are not supported with key_backend = pkcs11; use "
                "ecdsa-p256, ecdsa-p384 or rsa-2048/3072/4096"
            )
        ref = KeyRef(key_id, secrets.token_bytes(8))

        def op(session: Any) -> CertificatePublicKeyTypes:
            common: dict[str, Any] = {
                "store": True,
                "label": ref.label,
                "id": ref.key_id,
                "capabilities": _CAPABILITIES,
                "private_template": dict(_PRIVATE_TEMPLATE),
                "public_template": dict(_PUBLIC_TEMPLATE),
            }
            if key_type in _CURVE_PARAMS:
                params = session.create_domain_parameters(
                    P11KeyType.EC, {Attribute.EC_PARAMS: _CURVE_PARAMS[key_type]}, local=True
                )
                public, _ = params.generate_keypair(**common)
            else:
                common["public_template"][Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
                public, _ = session.generate_keypair(P11KeyType.RSA, _RSA_BITS[key_type], **common)
            return _public_key(public, key_type)

        # Not retried: a second attempt after a failure half-way could leave two keys.
        public_key = self.token.run(f"generating key {ref}", op, retry=False)
        with self._lock:
            self._made.add(str(ref))
        return NewKey(str(ref), public_key)

    def existing(
        self, reference: str, key_type: KeyType, certificate: x509.Certificate | None = None
    ) -> NewKey:
        """Adopt a key that is in the token already (made at a key ceremony, by the HSM's own
        tools): its private half must be there, sensitive and not extractable, and its public
        half readable, of the key type asked for (and ``certificate``'s key when given).
        ``reference``: a pkcs11: URI."""
        ref = KeyRef.parse(reference)

        def op(session: Any) -> tuple[CertificatePublicKeyTypes, bool, bool, KeyRef]:
            private = self.token.key(session, ref, ObjectClass.PRIVATE_KEY)
            public = self.token.key(session, ref, ObjectClass.PUBLIC_KEY)
            # Stored with both label and id as the token has them, so that a label reused
            # later for another key cannot stand in for this one.
            full = KeyRef(
                str(private[Attribute.LABEL]) or None, bytes(private[Attribute.ID]) or None
            )
            return (
                _public_key(public, None),
                bool(private[Attribute.SENSITIVE]),
                bool(private[Attribute.EXTRACTABLE]),
                full,
            )

        public_key, sensitive, extractable, full = self.token.run(f"reading key {ref}", op)
        found = key_type_of(public_key)
        if found is not key_type:
            raise BadRequest(
                f"token key {ref} is {found.value}, not {key_type.value} (see --key-type)"
            )
        if extractable or not sensitive:
            raise BadRequest(
                f"token key {ref} can be read out of the token (CKA_EXTRACTABLE or not "
                "CKA_SENSITIVE); a CA key must not be"
            )
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if certificate is not None and (
            public_key.public_bytes(*spki) != certificate.public_key().public_bytes(*spki)
        ):
            raise BadRequest(f"token key {ref} is not the certificate's key")
        if len(str(full)) > 255:  # the store's key_file column
            raise BadRequest(f"token key {ref}: its label and id are too long to record")
        return NewKey(str(full), public_key)

    def adopt(
        self, key_id: str, data: bytes, passphrase: bytes | None, certificate: x509.Certificate
    ) -> str:
        """A key file is refused: a key that has been a file is not an HSM key."""
        raise BadRequest(
            "key_backend = pkcs11 does not import key files; put the key into the token with "
            "its own tools (or make it there) and adopt it by label or id"
        )

    def sign_root(
        self,
        key_file: str,
        key_type: KeyType,
        subject: x509.Name,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.Certificate:
        """The self-signed root certificate of the token key ``key_file``."""
        ref = KeyRef.parse(key_file)
        public_key = self._public_key(ref)
        builder = issuer.build_root(public_key, subject, serial, not_before, not_after)

        def sign(tbs: bytes) -> bytes:
            return _sign(self.token, ref, key_type, tbs, f"signing root {subject.rfc4514_string()}")

        cert, _, _ = issuer.sign_externally(builder, key_type, sign)
        try:
            cert.verify_directly_issued_by(cert)
        except (InvalidSignature, ValueError, TypeError):
            raise TokenUnavailable("the token's root signature does not verify") from None
        return cert

    def signer(
        self, key_file: str, certificate: x509.Certificate, key_type: KeyType, what: str
    ) -> Pkcs11Signer:
        """The Signer of ``certificate`` with the token key ``key_file``; a key that is not the
        certificate's (a token re-initialised, a label reused) is refused by signing a challenge
        and checking it with the certificate's public key."""
        if not is_reference(key_file):
            raise ConfigError(
                f"{what}: its key is a file ({key_file}) but key_backend = pkcs11; set "
                "key_backend = database (or file) for this data"
            )
        ref = KeyRef.parse(key_file)
        challenge = secrets.token_bytes(32)
        signature = _sign(self.token, ref, key_type, challenge, f"checking the key of {what}")
        try:
            algorithms.verify(certificate, key_type, signature, challenge)
        except InvalidSignature:
            raise ConfigError(f"{what}: token key {ref} is not its certificate's key") from None
        return Pkcs11Signer(self.token, ref, certificate, key_type, what)

    def key_flags(self, key_file: str) -> dict[str, bool]:
        """CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE of a key's private half (what
        an auditor checks; the values are read from the token)."""
        ref = KeyRef.parse(key_file)

        def op(session: Any) -> dict[str, bool]:
            private = self.token.key(session, ref, ObjectClass.PRIVATE_KEY)
            return {
                "sensitive": bool(private[Attribute.SENSITIVE]),
                "extractable": bool(private[Attribute.EXTRACTABLE]),
                "never_extractable": bool(private[Attribute.NEVER_EXTRACTABLE]),
                "always_sensitive": bool(private[Attribute.ALWAYS_SENSITIVE]),
            }

        return self.token.run(f"reading key {ref}", op)

    def _public_key(self, ref: KeyRef) -> CertificatePublicKeyTypes:
        def op(session: Any) -> CertificatePublicKeyTypes:
            return _public_key(self.token.key(session, ref, ObjectClass.PUBLIC_KEY), None)

        return self.token.run(f"reading key {ref}", op)

    def remove(self, key_file: str) -> None:
        """Undo a ``generate`` whose database record could not be committed (adopted keys are
        never destroyed)."""
        with self._lock:
            if key_file not in self._made:
                return
            self._made.discard(key_file)
        ref = KeyRef.parse(key_file)

        def op(session: Any) -> None:
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                try:
                    self.token.key(session, ref, cls).destroy()
                except _Missing:
                    continue
            self.token._keys.clear()

        # Best effort: an orphan key in the token holds no record and signs nothing.
        with contextlib.suppress(ConfigError, TokenUnavailable):
            self.token.run(f"removing key {ref}", op, retry=False)
