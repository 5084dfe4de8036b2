"""Public, unauthenticated endpoints: CA certificates, CRLs and health.

Apart from the API because relying parties and probes fetch these without any credential and
often: they answer from memory (CRLs cached per authority, checked by one stat() per fetch)
and are cacheable by HTTP caches."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, jsonify, request, send_file

from ca_service.api_models import Alive, Health, NotReady
from ca_service.core.context import STORE_RECHECK_SECONDS
from ca_service.domain import StoredCRL
from ca_service.errors import NotFound
from ca_service.web.contract import PROBLEM_JSON, Answer, operation
from ca_service.web.extensions import core
from ca_service.web.problems import problem

public = Blueprint("public", __name__)

PKIX_CRL = "application/pkix-crl"
PKIX_CERT = "application/pkix-cert"
PEM = "application/x-pem-file"

# The answers of these endpoints are files, not JSON: their content is written here by hand.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_CRL_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
    "Cache-Control": {"schema": {"type": "string"}},
}
_PUBLIC = ("public",)
F = TypeVar("F", bound=Callable[..., Any])


def _crl_operation(summary: str, media: str) -> Callable[[F], F]:
    return operation(
        summary,
        tags=_PUBLIC,
        answers={
            200: Answer("The current CRL", media={media: _BINARY}, headers=_CRL_HEADERS),
            304: Answer("Not modified (If-None-Match)"),
        },
        raises=(NotFound,),
    )


def _pem_operation(summary: str) -> Callable[[F], F]:
    return operation(
        summary,
        tags=_PUBLIC,
        answers={200: Answer("PEM certificates", media={PEM: {"schema": {"type": "string"}}})},
        raises=(NotFound,),
    )


# CRLs this long or longer are answered from a file with sendfile (gunicorn's wsgi.file_wrapper),
# not from a Python bytes per request: at a million entries that is 47 MB a fetch, which a
# worker would otherwise copy from its heap into the socket (issue 15 item 3).
FILE_FROM_BYTES = 64 * 1024


def _pem_of(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN X509 CRL-----\n" + b"\n".join(lines) + b"\n-----END X509 CRL-----\n"


def _write_once(path: Path, make: Callable[[], bytes]) -> Path:
    """``path`` with ``make()``'s bytes, written unless there already. The name carries the CRL's
    authority, number and digest, so a file of that name always holds those bytes: every worker
    and server on this data directory may write it, and whoever wins, the content is the same."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(make())
        os.replace(tmp, path)
        # Older editions of this authority's CRL: unlinked, while a sendfile in flight keeps
        # reading the one it opened.
        prefix = path.name.rsplit("-", 2)[0] + "-"
        for old in path.parent.glob(f"{prefix}*"):
            if old.name.rsplit("-", 2)[0] + "-" == prefix and old.stem != path.stem:
                with contextlib.suppress(OSError):
                    old.unlink()
    return path


@dataclass
class _CachedCRL:
    crl: StoredCRL
    etag: str
    last_modified: str
    stamp: int = 0
    checked: float = 0.0
    files: Path | None = None  # where large CRLs are kept on disk (None: from memory)
    _pem: bytes | None = None

    @property
    def pem(self) -> bytes:
        # Made on first demand only: at a million entries the PEM is another 60 MB.
        if self._pem is None:
            self._pem = _pem_of(self.crl.der)
        return self._pem

    def file(self, pem: bool) -> Path | None:
        """The file holding this CRL (DER or PEM), written on first demand; None when the CRL
        is small enough to answer from memory."""
        if self.files is None or len(self.crl.der) < FILE_FROM_BYTES:
            return None
        digest = self.etag.strip('"').rsplit("-", 1)[1]
        stem = f"{self.crl.authority}-{self.crl.number}-{digest}"
        if pem:
            return _write_once(self.files / f"{stem}.pem", lambda: _pem_of(self.crl.der))
        return _write_once(self.files / f"{stem}.der", lambda: self.crl.der)


class CRLCache:
    """The current CRL of each authority, in memory, checked cheaply on every fetch.

    Every generation of a CRL touches a stamp file in the data directory (see
    Core.crl_stamp), so a fetch costs one stat() while nothing was published on this host;
    when the stamp moves, or at least every RECHECK seconds (for replicas with a data directory
    of their own, whose publications move no stamp here), the store is asked for the number of
    the current CRL, and the body is read only if it changed. One per app (``_crl_cache``).
    """

    RECHECK = STORE_RECHECK_SECONDS

    def __init__(self, files: Path | None = None) -> None:
        self._items: dict[str, _CachedCRL] = {}
        self._lock = threading.Lock()
        self.files = files

    def get(self, name: str) -> _CachedCRL:
        ca = core()
        stamp = ca.crl_stamp(name)
        now = time.monotonic()
        with self._lock:
            cached = self._items.get(name)
        if cached is not None and cached.stamp == stamp and now - cached.checked < self.RECHECK:
            return cached
        fresh = ca.current_crl(name, known_number=cached.crl.number if cached else None)
        if fresh is None and cached is not None:
            cached.stamp, cached.checked = stamp, now
            return cached
        assert fresh is not None
        if (
            cached is not None
            and fresh.number > cached.crl.number
            and ca.crl_stamp(name) == stamp
        ):
            # A newer CRL than this worker held, and no publication on this host moved the
            # stamp meanwhile (another replica made it, or a sibling did and this is its echo):
            # move the stamp before answering, so this host's other workers answer it from
            # their next fetch on and no client sees the number go back between workers.
            stamp = ca.crl_stamp(name, announce=True)
        item = _CachedCRL(
            crl=fresh,
            etag=f'"{fresh.authority}-{fresh.number}-{hashlib.sha256(fresh.der).hexdigest()[:16]}"',
            last_modified=email.utils.format_datetime(fresh.this_update, usegmt=True),
            stamp=stamp,
            checked=now,
            files=self.files,
        )
        with self._lock:
            self._items[name] = item
        return item


def _crl_cache() -> CRLCache:
    """This app's CRL cache: two apps in one process (tests, an embedding) never share one."""
    cache = current_app.extensions.get("ca_crl_cache")
    if cache is None:
        files = core().settings.data_dir / "crl-cache"
        cache = current_app.extensions.setdefault("ca_crl_cache", CRLCache(files))
    assert isinstance(cache, CRLCache)
    return cache


def _crl_response(name: str | None, pem: bool) -> Response:
    ca = core()
    item = _crl_cache().get(name or ca.default_authority())
    now = ca.clock.now()
    mimetype = PEM if pem else PKIX_CRL
    path = None
    if request.if_none_match.contains_weak(item.etag.strip('"')):
        response = Response(status=304)
    elif (path := _file_or_none(item, pem)) is not None:
        # send_file answers through the server's wsgi.file_wrapper: gunicorn sendfile()s it.
        response = send_file(path, mimetype=mimetype, etag=False, conditional=False)
    else:
        response = Response(item.pem if pem else item.crl.der, mimetype=mimetype)
    # Caches may keep it until shortly before nextUpdate, but at most 5 minutes, so that a
    # revocation (which publishes a new CRL at once) reaches clients quickly.
    remaining = int((item.crl.next_update - now).total_seconds())
    max_age = max(0, min(300, remaining))
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    response.headers["ETag"] = item.etag
    response.headers["Last-Modified"] = item.last_modified
    response.headers["Expires"] = email.utils.format_datetime(item.crl.next_update, usegmt=True)
    return response


def _file_or_none(item: _CachedCRL, pem: bool) -> Path | None:
    """The CRL's file, or None (small, or the data directory is not writable: from memory)."""
    try:
        return item.file(pem)
    except OSError:
        return None


@public.get("/crl")
@_crl_operation("CRL of the default authority (DER)", PKIX_CRL)
def default_crl() -> Response:
    return _crl_response(None, pem=False)


@public.get("/crl.pem")
@_crl_operation("CRL of the default authority (PEM)", PEM)
def default_crl_pem() -> Response:
    return _crl_response(None, pem=True)


@public.get("/ca/<name>/crl")
@_crl_operation("CRL of an authority (DER): the URL in its certificates", PKIX_CRL)
def authority_crl(name: str) -> Response:
    return _crl_response(_known(name), pem=False)


@public.get("/ca/<name>/crl.pem")
@_crl_operation("CRL of an authority (PEM)", PEM)
def authority_crl_pem(name: str) -> Response:
    return _crl_response(_known(name), pem=True)


def _known(name: str) -> str:
    """``name`` if this service holds such an authority (loaded once per process)."""
    core().authority_certificate(name)  # NotFound when there is none
    return name


def _pem_response(text_: str) -> Response:
    response = Response(text_, mimetype=PEM)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@public.get("/ca.pem")
@_pem_operation("Default issuing CA and its root (PEM)")
def default_chain() -> Response:
    """The default issuing CA and its root: what a client needs to trust our certificates."""
    return _pem_response("".join(core().chain_pem()))


@public.get("/ca/root.pem")
@_pem_operation("Root of the default authority (PEM)")
def default_root() -> Response:
    return _pem_response(core().chain_pem()[-1])


@public.get("/ca/<name>/root.pem")
@_pem_operation("The root above an authority (a root's own certificate) (PEM)")
def authority_root(name: str) -> Response:
    """The root above an authority (the root's own certificate, for a root)."""
    _, root = core().issuer_chain(_known(name))
    if root is None:
        raise NotFound(f"the root above {name!r} is not held by this service")
    return _pem_response(root)


@public.get("/ca/<name>/chain.pem")
@_pem_operation("An authority and the CAs above it, root included (PEM)")
def authority_chain(name: str) -> Response:
    return _pem_response("".join(core().chain_pem(_known(name))))


@public.get("/ca/<name>/ca.cer")
@operation(
    "An authority's certificate, DER (the caIssuers URL of what it issues)",
    tags=_PUBLIC,
    answers={200: Answer("DER", media={PKIX_CERT: _BINARY})},
    raises=(NotFound,),
)
def authority_certificate(name: str) -> Response:
    """DER certificate of one authority: the caIssuers URL in certificates it issued."""
    cert = core().authority_certificate(_known(name))
    response = Response(cert.public_bytes(serialization.Encoding.DER), mimetype=PKIX_CERT)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@public.get("/livez")
@operation(
    "Liveness: the process answers (nothing else is checked)",
    tags=_PUBLIC,
    answers={200: Answer("Alive", Alive)},
)
def livez() -> Response:
    """The process answers. Nothing else is asked, so a liveness probe never restarts a
    service whose database is away (readiness says that, and restarting would not help)."""
    return jsonify(Alive(status="ok").model_dump(mode="json"))


@public.get("/readyz")
@public.get("/healthz")
@operation(
    "Readiness: database, keys, issuing CA valid",
    description="200 when the database answers, every CA key is loaded, and the default "
    "issuing authority and each CA above it are neither revoked nor expired. Otherwise 503 "
    "problem+json listing each reason (with Retry-After when the database is away). Other "
    "authorities do not affect readiness: see /api/v1/authorities.",
    tags=_PUBLIC,
    answers={
        200: Answer("Ready", Health),
        503: Answer(
            "Not ready",
            NotReady,
            model_media=PROBLEM_JSON,
            headers={"Retry-After": {"schema": {"type": "string"}}},
        ),
    },
)
def readyz() -> Response:
    """Ready to issue: the store answers, the keys are loaded, and the default issuing CA (and
    every CA above it) is neither revoked nor expired. 503 problem+json saying what is not."""
    ca = core()
    state = ca.readiness()
    if state.ready:
        health = Health(status="ok", **state.checks, authorities=state.authorities)
        return jsonify(health.model_dump(mode="json"))
    response = problem(
        503,
        "not-ready",
        "Not ready",
        "; ".join(state.problems),
        problems=list(state.problems),
        checks=state.checks,
    )
    if state.transient:
        response.headers["Retry-After"] = "5"
    return response
