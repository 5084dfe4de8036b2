"""Which shard CRL a new certificate goes to, and the URLs of shard and delta CRLs: decided
once, when the certificate is signed (the reasons are in core/crl_parts.py and docs/crl.md).
Apart from crl_parts so that the registry, which issuance asks, needs nothing that signs. It
must never move a stored certificate: the shard it returns is stored with the certificate and
never derived again."""

from __future__ import annotations

import dataclasses

from ca_service.config import Settings
from ca_service.domain import ApprovedTemplate


def shard_url(settings: Settings, authority: str, shard: int) -> str:
    return f"{settings.certificate_url}/ca/{authority}/crl/{shard}"


def delta_url(settings: Settings, authority: str, shard: int | None) -> str:
    tail = "delta" if shard is None else f"{shard}/delta"
    return f"{settings.certificate_url}/ca/{authority}/crl/{tail}"


def place(settings: Settings, template: ApprovedTemplate) -> tuple[ApprovedTemplate, int | None]:
    """A leaf's template with the CRL pointers of its shard (and its delta with crl_deltas),
    and the shard to store with it (None: the full CRL, as before sharding)."""
    shards = settings.crl_shards
    shard = template.serial % shards + 1 if shards >= 2 else None
    if shard is not None:
        template = dataclasses.replace(
            template, crl_url=shard_url(settings, template.authority, shard)
        )
    if settings.crl_deltas:
        template = dataclasses.replace(
            template, freshest_crl_url=delta_url(settings, template.authority, shard)
        )
    return template, shard
