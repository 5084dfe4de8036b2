"""WSGI entry point for gunicorn or any WSGI server: ``ca_service.wsgi:app``.

Each process that imports it (every gunicorn worker) also keeps the CRLs current in the
background, so they are republished before nextUpdate even when nobody fetches them,
re-signs large CRLs after a revocation outside the revoking request, and indexes the names of
new certificates outside the requests that stored them.
"""

from __future__ import annotations

import atexit

from ca_service.scheduler import (
    start_crl_refresher,
    start_expiry_warner,
    start_name_indexer,
    start_ocsp_refresher,
)
from ca_service.web.app import create_app_when_the_database_answers

# A CRL of 2 MB or more (about 45,000 entries) is re-signed after a revocation in the background.
BACKGROUND_CRL_BYTES = 2_000_000

app = create_app_when_the_database_answers()
_ca = app.extensions["ca_core"]
_ca.publish_crls_in_background(BACKGROUND_CRL_BYTES)
_stop_crl_refresher = start_crl_refresher(_ca)
_stop_ocsp_refresher = start_ocsp_refresher(_ca)
_stop_name_indexer = start_name_indexer(_ca)
if _ca.settings.webhook_urls:
    _stop_expiry_warner = start_expiry_warner(_ca, _ca.settings.expiry_check_seconds)
# Counts of unauthenticated refusals not yet written (at most a second's worth) go in at exit.
atexit.register(_ca.refusals.flush)
