"""Old import path of the OCSP responder, kept while branches merge: the answers are made by
ca_service.core.ocsp_service and asked for through Core.answer_ocsp."""

from __future__ import annotations

from ca_service.core.facade import Core
from ca_service.core.ocsp_service import CACHE_LIMIT, OCSPAnswer

__all__ = ["CACHE_LIMIT", "OCSPAnswer", "OCSPResponder"]


class OCSPResponder:
    """``OCSPResponder(core).respond(der)``, as before: the core's own OCSP service answers."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def respond(self, data: bytes) -> OCSPAnswer:
        return self.core.answer_ocsp(data)
