"""Workers of one host never answer an older CRL than a sibling already did (web/public.py
CRLCache, Core.crl_stamp(announce=True)).

A CRL made on another replica (a data directory of its own) moves no stamp on this host, so
each worker learns of it at its own periodic recheck of the store. The worker that learns first
moves this host's stamp before it answers, so its siblings reread the store at their next fetch
instead of serving the older number until their own recheck: a client's fetches, on any workers
of one replica, never see the CRL number go back (a CI run of the replica topology saw 9, then
8). Two Flask apps on one data directory stand for two workers; their rechecks are set apart so
that only the stamp can tell the second one.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from flask import Flask

from ca_service.core.facade import Core
from ca_service.web.app import create_app
from ca_service.web.public import CRLCache
from ca_service.wiring import build_authority

from ..conftest import make_settings, new_ca


def _number(app: Flask) -> int:
    reply = app.test_client().get("/crl")
    assert reply.status_code == 200
    crl = x509.load_der_x509_crl(reply.data)
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def _cache(app: Flask) -> CRLCache:
    cache = app.extensions["ca_crl_cache"]
    assert isinstance(cache, CRLCache)
    return cache


def test_a_sibling_worker_follows_the_first_to_learn_of_a_remote_crl(
    db_url: str, tmp_path: Path
) -> None:
    here = new_ca(make_settings(tmp_path / "here", db_url))
    elsewhere: Core | None = None
    try:
        first, second = create_app(here.settings, here), create_app(here.settings, here)
        before = _number(first)
        assert _number(second) == before
        _cache(first).RECHECK = 0.0  # asks the store at every fetch
        _cache(second).RECHECK = 3600.0  # would keep its CRL for an hour on its own
        other = make_settings(tmp_path / "elsewhere", db_url)
        elsewhere = build_authority(other)
        elsewhere.load_keys()
        made = elsewhere.generate_crl().number
        assert made > before
        assert _number(second) == before  # nothing on this host has seen it yet
        assert _number(first) == made  # the first worker's recheck finds it...
        assert _number(second) == made  # ...and its sibling answers it from then on
        assert _number(first) == made
    finally:
        if elsewhere is not None:
            elsewhere.db.dispose()
        here.db.dispose()
