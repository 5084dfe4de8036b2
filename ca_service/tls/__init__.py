"""TLS with ca-service certificates: pyOpenSSL contexts for services, and a probe for endpoints.

from ca_service.tls import server_context, client_context, connect, probe
"""

from __future__ import annotations

from ca_service.tls.contexts import (
    HostnameMismatch,
    VerificationFailed,
    client_connection,
    client_context,
    connect,
    handshake,
    hostname_matches,
    server_context,
)
from ca_service.tls.probing import ProbeConnectError, ProbeReport, format_report, probe

__all__ = [
    "HostnameMismatch",
    "ProbeConnectError",
    "ProbeReport",
    "VerificationFailed",
    "client_connection",
    "client_context",
    "connect",
    "format_report",
    "handshake",
    "hostname_matches",
    "probe",
    "server_context",
]
