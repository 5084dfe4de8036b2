"""Issue 16: in-process issuance per second with the CA key in a SoftHSM2 token against the same
CA key type in an encrypted file, in the same run.

Two figures per key type and backend: ``issue`` is ``Core.issue_from_csr`` in a loop (policy,
signing, the committed SQLite write), and ``sign`` is the signing step alone (the Signer's
``sign_certificate`` on an approved template), where the token's per-call cost shows without
the store around it. The token is made in a temporary directory (``SOFTHSM2_CONF``), so this
scenario runs wherever ``softhsm2`` is installed and is recorded as absent elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ADMIN, bench_settings, database_url, progress
from bench.references import _ceiling_of
from bench.store import issuance_inprocess
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import KeyType

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin-1234"


def absent_reason() -> str | None:
    if not Path(MODULE).is_file() or shutil.which("softhsm2-util") is None:
        return f"SoftHSM2 is not installed ({MODULE}, softhsm2-util)"
    return None


def _token(directory: Path) -> str:
    """A SoftHSM configuration in ``directory`` (for this process) and a token in it."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    label = "bench"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--so-pin", "12345678", "--pin", PIN],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return label


def hsm_family(
    csr: bytes, key_types: Sequence[KeyType], max_count: int, max_seconds: float
) -> dict[str, Any]:
    """Per key type: {file, softhsm} x {issue, sign} rates, and softhsm/file ratios."""
    reason = absent_reason()
    if reason:
        return {"status": "absent", "reason": reason}
    out: dict[str, Any] = {"status": "ok", "module": MODULE}
    before = os.environ.get("SOFTHSM2_CONF")
    try:
        _measure(csr, key_types, max_count, max_seconds, out)
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before
    return out


def _measure(
    csr: bytes,
    key_types: Sequence[KeyType],
    max_count: int,
    max_seconds: float,
    out: dict[str, Any],
) -> None:
    from ca_service.wiring import build_authority

    with tempfile.TemporaryDirectory(prefix="ca-bench-hsm-") as tmp:
        label = _token(Path(tmp) / "softhsm")
        for key_type in key_types:
            figures: dict[str, Any] = {}
            for backend in ("file", "softhsm"):
                progress(f"hsm: {key_type.value} CA key in {backend}")
                base = Path(tmp) / f"{key_type.value}-{backend}"
                with database_url("sqlite", base) as url:
                    settings = bench_settings(base / "data", url)
                    if backend == "softhsm":
                        settings = settings.with_overrides(
                            key_backend="pkcs11",
                            key_passphrase=None,
                            pkcs11_module=MODULE,
                            pkcs11_token_label=label,
                            pkcs11_pin=PIN.encode(),
                        )
                    ca = build_authority(settings, apply_migrations=True)
                    try:
                        ca.create_hierarchy(HierarchySpec(key_type=key_type), ADMIN)
                        ca.load_keys()
                        figures[backend] = {
                            "issue": issuance_inprocess(ca, csr, max_count, max_seconds),
                            "sign": _ceiling_of(ca, csr, max_count, max_seconds),
                        }
                    finally:
                        ca.db.dispose()
            for step in ("issue", "sign"):
                file_rate = figures["file"][step]["per_s"]
                hsm_rate = figures["softhsm"][step]["per_s"]
                figures[f"{step}_softhsm_vs_file"] = (
                    round(hsm_rate / file_rate, 3) if file_rate else None
                )
            out[key_type.value] = figures


def markdown(section: dict[str, Any]) -> list[str]:
    """The RESULTS.md lines of this scenario."""
    lines = ["## CA key in a PKCS#11 token (SoftHSM2) against an encrypted key file", ""]
    if section.get("status") != "ok":
        return [*lines, f"{section.get('status', 'not run')}: {section.get('reason', '')}", ""]
    lines += [
        "In-process, one thread, SQLite. *issue*: `issue_from_csr` (policy, signing, committed "
        "write); *sign*: the Signer's `sign_certificate` alone (parse_csr + check + sign).",
        "",
        "| CA key | step | file certs/s | SoftHSM certs/s | SoftHSM / file | SoftHSM p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for key, figures in section.items():
        if not isinstance(figures, dict):
            continue
        for step in ("issue", "sign"):
            f, h = figures["file"][step], figures["softhsm"][step]
            ratio = figures.get(f"{step}_softhsm_vs_file")
            lines.append(
                f"| {key} | {step} | {f['per_s']} | {h['per_s']} | {ratio} | {h['p99_ms']} |"
            )
    return [*lines, ""]
