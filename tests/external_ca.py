"""A CA this service does not hold: for the import path (`init --import-cert`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def external_ca_files(directory: Path, seconds: float) -> tuple[Path, Path, Path]:
    """An intermediate of a root this service does not hold, for `init --import-cert`: its
    certificate, its unencrypted key and the root, as PEM files. It expires in ``seconds``."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Brief External Root")])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Brief Issuing CA")])

    def ca_cert(subject: x509.Name, public: Any, days: float, path_length: int) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        )
        return builder.sign(root_key, hashes.SHA256())

    root = ca_cert(root_name, root_key.public_key(), 30, 1)
    inter = ca_cert(name, key.public_key(), seconds / 86400, 0)
    files = (directory / "brief.pem", directory / "brief.key", directory / "brief-root.pem")
    files[0].write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files[2].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return files
