"""Which CRL lists a certificate: what the revocation result and the detail page show.

The current CRL is asked for with the number this process holds (Core.current_crl with
``known_number``: a header read while nothing changed) and parsed once per number, so looking
up a serial costs no re-read of a CRL that can be tens of megabytes at a million entries.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cryptography import x509

from ca_service.web.extensions import core

_lock = threading.Lock()
_parsed: dict[str, tuple[int, x509.CertificateRevocationList]] = {}
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Listing:
    number: int
    listed: bool


def _current(authority: str) -> tuple[int, x509.CertificateRevocationList]:
    with _lock:
        held = _parsed.get(authority)
    fresh = core().current_crl(authority, known_number=held[0] if held else None)
    if fresh is None:
        assert held is not None
        return held
    parsed = (fresh.number, x509.load_der_x509_crl(fresh.der))
    with _lock:
        _parsed[authority] = parsed
    return parsed


def crl_listing(authority: str, serial: str, *, listed: bool, wait_seconds: float = 0) -> Listing:
    """The current CRL of ``authority`` and whether it lists ``serial`` (hex). With
    ``wait_seconds``, a CRL that does not yet say ``listed`` is asked for again until it does
    or the time is up (a CRL re-signed in the background after a revocation)."""
    deadline = time.monotonic() + wait_seconds
    for _ in range(1 + int(wait_seconds / POLL_SECONDS)):
        number, crl = _current(authority)
        found = crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
        if found is listed or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return Listing(number, found)
