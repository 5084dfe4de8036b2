"""CRL publishing: signing each authority's CRL under a number that never repeats, keeping it
current (on revocation, and at half its life on a schedule), and telling servers on this host
that a new one exists (stamp files), with one background thread for very large CRLs.

It decides which CRL to publish and when; the entries come from the store and the signature
from the authority's Signer. It must never change a certificate's status, and a failure to
re-sign after a revocation must never reach the revoking caller (the revocation is committed).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ca_service import metrics
from ca_service.core.context import Context
from ca_service.core.crl_parts import CRLParts
from ca_service.core.registry import Registry
from ca_service.domain import StoredCRL
from ca_service.signing.crl import sign_crl
from ca_service.signing.serials import serial_hex
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import (
    AuthorityRepository,
    CertificateRepository,
    CRLRepository,
)

log = logging.getLogger(__name__)


class CRLPublisher:
    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self._sizes: dict[str, int] = {}  # bytes of the last CRL this process signed
        self._executor: ThreadPoolExecutor | None = None
        self._background_from = 0
        self.parts = CRLParts(ctx, registry, self.current_crl)  # shards and deltas

    def publish_in_background(self, from_bytes: int) -> None:
        """For servers: after a revocation, a CRL whose last edition was at least ``from_bytes``
        long is re-signed by a background thread, so the revoking request does not wait the
        seconds a CRL of a million entries takes (OCSP shows the revocation at once anyway).
        One thread per process; revocations that pile up meanwhile share one new CRL."""
        self._background_from = from_bytes
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crl")

    def after_revocation(self, authority: str, seen_number: int) -> None:
        """A certificate of ``authority`` changed status under CRL number ``seen_number``."""
        if self.parts.deltas:  # the deltas carry it until the complete CRLs' half-life
            self.parts.after_revocation(authority, seen_number)
            return
        executor = self._executor
        if executor is not None and self._sizes.get(authority, 0) >= self._background_from:
            executor.submit(self._regenerate_after_revocation, authority, seen_number)
        else:
            self._regenerate_after_revocation(authority, seen_number)

    def _regenerate_after_revocation(self, authority: str, seen_number: int) -> None:
        # The revocation is committed whatever happens here, so nothing may escape to the
        # caller as a failure of the revocation. The scheduler re-signs the CRL at half-life.
        try:
            self.generate_crl(authority, unless_beyond=seen_number)
        except Exception:
            log.exception("the CRL of %s was not re-signed after a revocation", authority)
        if self.ctx.settings.crl_shards >= 2:
            self.parts.after_revocation(authority, seen_number)

    def generate_crl(
        self,
        authority: str | None = None,
        *,
        unless_beyond: int | None = None,
        unless_fresh: bool = False,
    ) -> StoredCRL:
        """Sign a new CRL. The number comes from an atomic UPDATE whose row lock is held until
        commit, so concurrent generators of one authority, in any process or replica of the
        database, are ordered and each number is signed once.

        ``unless_beyond``: a revocation passes the CRL number it saw under the same lock; if a
        CRL numbered above it exists already, that CRL was made after the revocation committed
        and lists it, so a burst of revocations yields one CRL, not one each.
        ``unless_fresh``: the scheduled re-signing at half-life; if, once the lock is held, the
        stored CRL is fresh (another replica re-signed it while we waited), that one is returned,
        so replicas that reach half-life together sign one new CRL, not one each.
        """
        name = authority or self.registry.default_authority()
        loaded = self.registry.load(name)
        with unit_of_work(self.ctx.db, write=True) as s:
            repo = AuthorityRepository(s)
            crls = CRLRepository(s)
            if unless_beyond is not None or unless_fresh:
                current = repo.lock_crl_number(name)
                header = crls.latest_header(name) if current > (unless_beyond or 0) else None
                if header is not None and (
                    self._fresh(*header[1:]) if unless_fresh else header[0] > (unless_beyond or 0)
                ):
                    # Made and committed by another process, which touches the stamp only
                    # after its commit: touch it here too, so no server answers from a cache
                    # older than this revocation in between.
                    self._touch_stamp(name)
                    latest = crls.latest(name)
                    assert latest is not None  # its header was just read under the lock
                    return latest
            number = repo.next_crl_number(name)
            now = self.ctx.clock.now()
            next_update = now + dt.timedelta(hours=self.ctx.settings.crl_next_update_hours)
            # A root is stored under itself; whatever its row says, a CA never lists itself.
            own = serial_hex(loaded.certificate.serial_number)
            certs = CertificateRepository(s)
            with metrics.timed_crl(name):
                count, missing, joined = certs.stored_crl_entries(
                    loaded.authority_id, now, except_serial=own
                )
                # Rows revoked before migration 0013 have no stored entry: encoded from columns.
                rows = (
                    certs.revoked_rows(
                        loaded.authority_id, now, except_serial=own, without_entry=True
                    )
                    if missing
                    else ()
                )
                more = self.parts.full_crl_extensions(name)
                ready = [joined]
                del joined  # sign_crl empties ``ready``: no 45 MB copy kept beside the CRL
                der = sign_crl(
                    loaded.signer, number, now, next_update, rows, more_extensions=more,
                    stored=ready, stored_count=count,
                )  # fmt: skip
            stored = StoredCRL(name, number, now, next_update, der)
            crls.save(loaded.authority_id, stored)
        self._sizes[name] = len(der)
        self._touch_stamp(name)
        return stored

    def refresh_crls(self) -> dict[str, int]:
        """Make sure every authority's CRL is current (none yet, or half its life gone: a new
        one), so CRLs are republished before nextUpdate even when nobody fetches them.
        Returns the current CRL number of each authority."""
        numbers: dict[str, int] = {}
        for record in self.registry.list_authorities():
            crl = self.current_crl(record.name)
            assert crl is not None  # no known_number given: always a CRL
            numbers[record.name] = crl.number
            self.parts.refresh(record.name)
        return numbers

    def current_crl(
        self, authority: str | None = None, *, known_number: int | None = None, part: str = ""
    ) -> StoredCRL | None:
        """The CRL to publish: the stored one, or a new one when none exists or half its life has
        passed. With ``known_number``, returns None when that is still the current CRL, so a
        server holding it in memory never reads a large CRL body from the store again."""
        name = authority or self.registry.default_authority()
        if part:  # a shard or delta CRL: "<k>", "delta" or "<k>/delta" (core/crl_parts.py)
            return self.parts.current(name, part)
        self.registry.load(name)
        with unit_of_work(self.ctx.db) as s:
            repo = CRLRepository(s)
            header = repo.latest_header(name)
            if header is not None:
                number, this_update, next_update = header
                if self._fresh(this_update, next_update):
                    if number == known_number:
                        return None
                    return repo.latest(name)
        return self.generate_crl(name, unless_fresh=True)

    def _fresh(self, this_update: dt.datetime, next_update: dt.datetime) -> bool:
        """Less than half of a CRL's life has passed: no need to sign a new one."""
        return self.ctx.clock.now() < this_update + (next_update - this_update) / 2

    def crl_stamp(self, name: str, *, announce: bool = False) -> int:
        """Changes whenever a process on this host publishes a CRL of ``name`` (0: never).
        ``announce``: move it first, for a CRL made elsewhere that a server found in the store,
        so that this host's other servers stop answering the older one at once.

        Lets a server holding a CRL in memory know with one stat() that it is still current,
        instead of asking the store on every fetch. Each publication replaces the file, so the
        inode changes even when two fall in one tick of the file-system clock.
        """
        if announce:
            self._touch_stamp(name)
        try:
            st = self._stamp_path(name).stat()
        except OSError:
            return 0
        return hash((st.st_ino, st.st_mtime_ns))

    def _stamp_path(self, name: str) -> Path:
        return self.ctx.settings.data_dir / "crl-stamps" / name

    def _touch_stamp(self, name: str) -> None:
        path = self._stamp_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{name}.{secrets.token_hex(4)}")
            tmp.write_text(secrets.token_hex(8))
            os.replace(tmp, path)
        except OSError:
            pass  # servers then find the new CRL at their next periodic check
