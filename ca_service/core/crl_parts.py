"""Shard CRLs and delta CRLs (docs/crl.md): which shard a new certificate goes to, and keeping
each shard's CRL and each delta CRL current.

**Shards.** With ``crl_shards`` N >= 2, a new leaf's CRL Distribution Point names shard
``serial mod N + 1`` (``/ca/<name>/crl/<k>``), and that k is stored with the certificate at
issuance. The serial, not the notAfter window: Boulder first placed certificates by notAfter
("temporal" shards) and found that any change of the shard count or width moved certificates to
a shard their CDP does not name, then moved to "explicit" shards from the random low bytes of
the serial, fixed at issuance. Our serials are random (159 bits), so serial mod N fills shards
evenly, and because k is stored (``certificates.crl_shard``), not derived at CRL time, changing
N later only places new certificates differently: an existing one is listed on the shard its
certificate names for as long as it lives. CA certificates and the certificates issued before
sharding keep the full CRL (``/ca/<name>/crl``), which still lists every revocation.

**Deltas.** With ``crl_deltas``, each complete CRL (the full one, and each shard) has a delta
(``/ca/<name>/crl/delta``, ``/ca/<name>/crl/<k>/delta``) of the same scope (OpenSSL requires
the same IDP), naming its base's number in a critical Delta CRL Indicator. A revocation then
re-signs only the deltas of its scopes, at once; the complete CRLs are re-signed at half their
life (scheduled, or on fetch): that is what deltas are for, a million-entry base is not signed
again for each revocation. Clients that do not use deltas see a revocation at the next base,
or through OCSP at once.

**Numbers.** Every CRL of an authority, complete, shard or delta, takes its number from the one
sequence the full CRL uses (``authorities.crl_number``), under that row's lock: strictly
increasing per scope across replicas, and a delta's number above its base's as RFC 5280 5.2.4
asks of a shared sequence. A status change records the number current under the same lock
(``status_crl_number``); a CRL numbered above it was made after the change committed, so a
delta lists exactly the rows at or above its base's number.

This part signs only through the authority's Signer (signing/crl_parts.py), and a failure to
re-sign after a revocation never reaches the revoking caller (the revocation is committed).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator

from ca_service.core.context import Context
from ca_service.core.crl_shards import delta_url, shard_url
from ca_service.core.registry import Registry
from ca_service.domain import CertStatus, StoredCRL
from ca_service.errors import NotFound
from ca_service.signing.crl import REMOVE_FROM_CRL, RevokedRow
from ca_service.signing.crl_parts import freshest_crl, sign_delta_crl, sign_shard_crl
from ca_service.signing.serials import serial_hex
from ca_service.storage.crl_parts import ChangedRow, CRLPartRepository
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import AuthorityRepository, CRLRepository

log = logging.getLogger(__name__)

MAX_SHARDS = 4096


def parse_part(part: str) -> tuple[int | None, bool]:
    """``"<k>"``, ``"delta"`` or ``"<k>/delta"``: (shard or None, delta?)."""
    head, _, tail = part.partition("/")
    if head == "delta" and not tail:
        return None, True
    if head.isdigit() and tail in ("", "delta") and 1 <= int(head) <= MAX_SHARDS:
        return int(head), tail == "delta"
    raise NotFound(f"no CRL {part!r}")


def _scope(shard: int | None, delta: bool) -> str:
    if shard is None:
        return "delta"
    return f"delta:{shard}" if delta else f"shard:{shard}"


class CRLParts:
    def __init__(
        self, ctx: Context, registry: Registry, full_crl: Callable[[str], StoredCRL | None]
    ) -> None:
        """``full_crl``: the current full CRL of an authority (CRLPublisher.current_crl), the
        base of its delta."""
        self.ctx = ctx
        self.registry = registry
        self._full_crl = full_crl

    @property
    def deltas(self) -> bool:
        return self.ctx.settings.crl_deltas

    def full_crl_extensions(self, name: str) -> list[bytes]:
        """What the full CRL carries beyond its number: the Freshest CRL, with deltas on."""
        return [freshest_crl(delta_url(self.ctx.settings, name, None))] if self.deltas else []

    # ------------------------------------------------------------------ serving

    def current(self, name: str, part: str) -> StoredCRL:
        """The shard or delta CRL ``part`` (see parse_part) to publish: the stored one while it
        is fresh, matches its base and nothing in its scope changed since it was signed, else
        a new one (so a replica that missed a revocation's re-signing still serves it)."""
        shard, delta = parse_part(part)
        if delta and not self.deltas:
            raise NotFound("delta CRLs are off (crl_deltas)")
        loaded = self.registry.load(name)
        if shard is not None:
            self._require_shard(loaded.authority_id, shard)
        if delta and shard is None:
            self._full_crl(name)  # the base, fresh
        elif delta:
            self.current(name, str(shard))
        scope = _scope(shard, delta)
        with unit_of_work(self.ctx.db) as s:
            repo = CRLPartRepository(s)
            header = repo.header(loaded.authority_id, scope)
            # With deltas on, a complete shard CRL waits for its half-life as the full CRL
            # does (its delta carries the changes); a delta holds every change at once.
            watch = delta or not self.deltas
            if header is not None and self._still_current(
                repo, loaded.authority_id, shard, header, watch_changes=watch
            ):
                base = _base_number(CRLRepository(s), repo, loaded.authority_id, name, shard)
                if not delta or header[1] == base:
                    stored = repo.get(name, loaded.authority_id, scope)
                    assert stored is not None  # its header was just read
                    return stored
        return self._generate(name, shard, delta)

    def _require_shard(self, authority_id: int, shard: int) -> None:
        """Shards 1..N exist, and any shard a stored certificate names (N may have shrunk)."""
        if shard <= self.ctx.settings.crl_shards:
            return
        with unit_of_work(self.ctx.db) as s:
            highest = CRLPartRepository(s).highest_shard(authority_id)
        if shard > highest:
            raise NotFound(f"no CRL shard {shard} (crl_shards is {self.ctx.settings.crl_shards})")

    def _still_current(
        self,
        repo: CRLPartRepository,
        authority_id: int,
        shard: int | None,
        header: tuple[int, int | None, dt.datetime, dt.datetime],
        *,
        watch_changes: bool,
    ) -> bool:
        number, _, this_update, next_update = header
        if self.ctx.clock.now() >= this_update + (next_update - this_update) / 2:
            return False
        if not watch_changes:
            return True
        changed = repo.last_change(authority_id, shard)
        return changed is None or changed < number

    # ------------------------------------------------------------------ after changes

    def after_revocation(self, name: str, seen_number: int) -> None:
        """A certificate of ``name`` changed status under CRL number ``seen_number``: re-sign
        what no longer holds it, the changed shards' CRLs (without deltas) or the deltas of
        the changed scopes (with; the complete CRLs then wait for their half-life)."""
        try:
            loaded = self.registry.load(name)
            with unit_of_work(self.ctx.db) as s:
                changed = CRLPartRepository(s).changed_shards(loaded.authority_id, seen_number)
            for shard in sorted(changed):
                self.current(name, f"{shard}/delta" if self.deltas else str(shard))
            if self.deltas:
                self.current(name, "delta")
        except Exception:
            log.exception("the shard or delta CRLs of %s were not re-signed", name)

    def refresh(self, name: str) -> None:
        """For the scheduler: re-sign every stored shard and delta CRL past half its life."""
        loaded = self.registry.load(name)
        with unit_of_work(self.ctx.db) as s:
            scopes = CRLPartRepository(s).numbers(loaded.authority_id, "")
        for scope in sorted(scopes):
            kind, _, shard = scope.partition(":")
            if kind == "delta" and not self.deltas:
                continue
            part = "delta" if scope == "delta" else shard + ("/delta" if kind == "delta" else "")
            self.current(name, part)

    # ------------------------------------------------------------------ signing

    def _generate(self, name: str, shard: int | None, delta: bool) -> StoredCRL:
        """Sign under the next number of the authority's one sequence, taken under its row's
        lock (as the full CRL's is), so concurrent generators in any replica are ordered."""
        loaded = self.registry.load(name)
        settings = self.ctx.settings
        with unit_of_work(self.ctx.db, write=True) as s:
            authorities = AuthorityRepository(s)
            authorities.lock_crl_number(name)
            repo = CRLPartRepository(s)
            crls = CRLRepository(s)
            base = _base_number(crls, repo, loaded.authority_id, name, shard) if delta else None
            if delta and base is None:
                raise NotFound(f"the CRL of {name} has no base CRL yet")
            number = authorities.next_crl_number(name)
            now = self.ctx.clock.now()
            next_update = now + dt.timedelta(hours=settings.crl_next_update_hours)
            url = None if shard is None else shard_url(settings, name, shard)
            if delta:
                assert base is not None
                own = serial_hex(loaded.certificate.serial_number)
                changed = repo.changed_rows(loaded.authority_id, base, now, shard)
                rows = _delta_entries(changed, now)
                der = sign_delta_crl(
                    loaded.signer,
                    number,
                    base,
                    now,
                    next_update,
                    (r for r in rows if r[0] != own),
                    url=url,
                )
            else:
                assert shard is not None and url is not None
                der = sign_shard_crl(
                    loaded.signer,
                    number,
                    now,
                    next_update,
                    repo.shard_rows(loaded.authority_id, shard, now),
                    url=url,
                    delta_url=delta_url(settings, name, shard) if self.deltas else None,
                )
            stored = StoredCRL(name, number, now, next_update, der)
            repo.save(loaded.authority_id, _scope(shard, delta), stored, base)
        return stored


def _base_number(
    crls: CRLRepository, parts: CRLPartRepository, authority_id: int, name: str, shard: int | None
) -> int | None:
    """The number of the complete CRL a delta of this scope is based on (None: none yet)."""
    if shard is None:
        header = crls.latest_header(name)
        return None if header is None else header[0]
    own = parts.header(authority_id, f"shard:{shard}")
    return None if own is None else own[0]


def _delta_entries(changed: list[ChangedRow], now: dt.datetime) -> Iterator[RevokedRow]:
    """A revoked certificate as in a complete CRL; one released from hold as removeFromCRL
    (RFC 5280 5.3.1), dated when the delta lists it (the release time is not stored)."""
    for serial, status, revoked_at, reason in changed:
        if status == CertStatus.REVOKED.value and revoked_at is not None:
            yield serial, revoked_at, reason
        elif status == CertStatus.VALID.value:
            yield serial, now, REMOVE_FROM_CRL
