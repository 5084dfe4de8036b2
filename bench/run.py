"""Entry point: ``python -m bench.run [--quick|--tiny] [--only SCENARIO] [--out DIR]``.

Runs the references, the store scenarios and (when the API exists) the HTTP scenarios, then
writes ``results.json`` (raw figures) and ``RESULTS.md`` (tables and targets) into ``--out``.
Modes only change counts and time bounds: full < 15 min, quick < 2 min, tiny is for the smoke
test (seconds, SQLite only, no CFSSL).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import (
    acme_orders,
    chart,
    crl_scale,
    floor,
    hsm,
    http_scenarios,
    ocsp_presigned,
    references,
    replicas,
    report,
    store,
    ui_pages,
)
from bench.common import database_url, leaf_csr_pem, machine_info, pg_reachable, progress
from ca_service.domain import KeyType

SCENARIOS = (
    "openssl", "ceiling", "cfssl", "floor", "store", "crl", "http", "ocsp", "hsm", "acme", "ui",
    "replicas",
)  # fmt: skip
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mode:
    """Counts and time bounds of one mode; every loop has both."""

    name: str
    dbs: tuple[str, ...]
    openssl_s: int
    ceiling: tuple[int, float]
    cfssl_configs: tuple[tuple[str, str], ...]
    cfssl_concurrencies: tuple[int, ...]
    cfssl_seconds: float
    wrk_seconds: int
    sizes: tuple[int, ...]
    populate_budget_s: float
    crl_timeout_s: float
    lookups: tuple[int, float]
    issuance: tuple[int, float]
    http_concurrencies: tuple[int, ...]
    http_seconds: float
    max_requests: int
    http_key_types: tuple[KeyType, ...]
    http_repeats: int
    fetch_concurrency: int
    revocations: int
    ocsp_certificates: int
    store_http: bool

    @property
    def http_plan(self) -> http_scenarios.HttpPlan:
        return http_scenarios.HttpPlan(
            self.http_concurrencies, self.http_seconds, self.max_requests, self.http_repeats,
            self.fetch_concurrency, self.revocations, self.ocsp_certificates,
        )  # fmt: skip


ECDSA, RSA = KeyType.ECDSA_P256, KeyType.RSA_2048
MODES = {
    "full": Mode("full", ("sqlite", "postgresql"), 3, (20_000, 5.0),
                 (("ecdsa", "nodb"), ("ecdsa", "sqlite"), ("rsa", "sqlite")), (1, 8, 32), 6.0, 5,
                 (10_000, 100_000, 1_000_000), 240.0, 180.0, (500, 6.0), (3000, 6.0),
                 (1, 8, 32), 6.0, 200_000, (ECDSA, RSA), 3, 8, 200, 20, True),
    "quick": Mode("quick", ("sqlite", "postgresql"), 1, (3000, 2.0), (("ecdsa", "sqlite"),),
                  (8,), 3.0, 0, (10_000, 100_000), 30.0, 60.0, (100, 2.0), (300, 2.0), (8,), 2.0,
                  50_000, (ECDSA,), 3, 8, 20, 5, True),
    "tiny": Mode("tiny", ("sqlite",), 1, (50, 1.0), (), (1,), 1.0, 0, (1_000, 2_000), 10.0, 30.0,
                 (20, 0.5), (20, 0.5), (1,), 1.0, 200, (ECDSA,), 1, 1, 4, 2, False),
}  # fmt: skip
# The hsm scenario per mode: CA key types, and the count and time bound of each loop.
HSM_PLANS: dict[str, tuple[tuple[KeyType, ...], int, float]] = {
    "full": ((ECDSA, KeyType.ECDSA_P384, RSA, KeyType.RSA_3072), 3000, 4.0),
    "quick": ((ECDSA, RSA), 300, 1.0),
    "tiny": ((ECDSA,), 20, 0.3),
}


def run(mode: Mode, only: set[str], out_dir: Path, command: str) -> dict[str, Any]:
    """Run the chosen scenarios; each one's failure is recorded, the others still run."""
    started = time.monotonic()
    csr = leaf_csr_pem()
    results: dict[str, Any] = {
        "mode": mode.name,
        "command": command,
        "machine": machine_info(REPO),
        "references": {},
        "store": {},
        "http": {},
        "hsm": {},
    }
    pg_error = pg_reachable() if "postgresql" in mode.dbs else None
    dbs = [db for db in mode.dbs if db != "postgresql" or pg_error is None]
    if pg_error and "postgresql" in mode.dbs:
        results["store"]["postgresql"] = {"status": "absent", "reason": pg_error}

    if "openssl" in only:
        progress("reference (a): openssl speed ecdsap256 rsa2048")
        results["references"]["openssl"] = references.openssl_speed(mode.openssl_s)
    if "ceiling" in only:
        progress("reference (b): in-process ceiling (parse_csr + check + sign_leaf)")
        results["references"]["ceiling"] = references.inprocess_ceiling(
            csr, (KeyType.ECDSA_P256, KeyType.RSA_2048), *mode.ceiling
        )
    if "cfssl" in only:
        if mode.cfssl_configs:
            with tempfile.TemporaryDirectory(prefix="ca-bench-cfssl-") as tmp:
                results["references"]["cfssl"] = references.cfssl_scenario(
                    Path(tmp), csr, mode.cfssl_configs, mode.cfssl_concurrencies,
                    mode.cfssl_seconds, mode.max_requests, mode.wrk_seconds,
                )  # fmt: skip
        else:
            results["references"]["cfssl"] = {"status": "skipped", "reason": f"{mode.name} mode"}
    if "floor" in only:
        # Reference (d): the same gunicorn settings, generator and CSR as the HTTP scenarios,
        # with the least work an issuing endpoint can do (bench/floor.py).
        results["references"]["floor"] = floor.floor_scenario(
            csr, ("none", *dbs), tuple(c for c in mode.http_concurrencies if c > 1) or (1,),
            mode.http_seconds, mode.max_requests,
        )  # fmt: skip
    if "store" in only or "crl" in only:
        # The CRL builds are part of the store scenario; ``crl`` alone skips its lookups and
        # issuance (and with ``store`` it adds nothing: the same CRLs are not built twice).
        for db in dbs:
            with (
                tempfile.TemporaryDirectory(prefix=f"ca-bench-{db}-") as tmp,
                database_url(db, Path(tmp)) as url,
            ):
                try:
                    results["store"][db] = store.store_family(
                        db, url, Path(tmp) / "data", mode.sizes,
                        populate_budget_s=mode.populate_budget_s,
                        crl_timeout_s=mode.crl_timeout_s,
                        lookup_count=mode.lookups[0], lookup_seconds=mode.lookups[1],
                        issue_count=mode.issuance[0], issue_seconds=mode.issuance[1],
                        http_plan=mode.http_plan if mode.store_http and "http" in only else None,
                        crl_only="store" not in only,
                    )  # fmt: skip
                except Exception as exc:  # record and go on: one failure must not hide the rest
                    results["store"][db] = {"status": "error", "reason": repr(exc)}
    if "http" in only:
        for db in dbs:
            results["http"][db] = {}
            for key_type in mode.http_key_types:
                with (
                    tempfile.TemporaryDirectory(prefix=f"ca-bench-http-{db}-") as tmp,
                    database_url(db, Path(tmp)) as url,
                ):
                    try:
                        results["http"][db][key_type.value] = http_scenarios.http_family(
                            db, key_type, url, Path(tmp) / "data", csr, mode.http_plan,
                            extras=key_type is ECDSA,
                        )  # fmt: skip
                    except Exception as exc:
                        results["http"][db][key_type.value] = {
                            "status": "error",
                            "reason": repr(exc),
                        }
    if "ocsp" in only:
        results["ocsp"] = {}
        for db in dbs:
            with (
                tempfile.TemporaryDirectory(prefix=f"ca-bench-ocsp-{db}-") as tmp,
                database_url(db, Path(tmp)) as url,
            ):
                try:
                    results["ocsp"][db] = ocsp_presigned.ocsp_family(
                        db, url, Path(tmp) / "data", csr, concurrency=mode.fetch_concurrency,
                        seconds=mode.http_seconds, max_requests=mode.max_requests,
                        repeats=mode.http_repeats, certificates=mode.ocsp_certificates,
                    )  # fmt: skip
                except Exception as exc:  # record and go on, as the other scenarios do
                    results["ocsp"][db] = {"status": "error", "reason": repr(exc)}
            # Its own provenance, as the replicas': it may be merged into another run's file.
            machine = results["machine"]
            measured = {k: machine[k] for k in ("date", "commit")}
            results["ocsp"][db]["measured"] = {**measured, "command": command}
    if "hsm" in only:
        progress("hsm: issuance with the CA key in SoftHSM2 against a key file")
        try:
            results["hsm"] = hsm.hsm_family(csr, *HSM_PLANS[mode.name])
        except Exception as exc:  # record and go on, as the other scenarios do
            results["hsm"] = {"status": "error", "reason": repr(exc)}
    if "acme" in only:
        results["acme"] = acme_orders.run_scenario(dbs, mode.name)
    if "ui" in only:
        results["ui"] = ui_pages.run_scenario(dbs, mode.name)
    if "replicas" in only:
        # On a PostgreSQL cluster of its own (the shared one is never restarted or reconfigured),
        # so it runs whatever the bench's PostgreSQL; tiny mode is SQLite only and skips it.
        if "postgresql" in mode.dbs:
            results["replicas"] = replicas.run_scenario(mode.name, csr)
            # Its own provenance: the section may be merged into another run's results.json.
            machine = results["machine"]
            measured = {k: machine[k] for k in ("date", "commit")}
            results["replicas"]["measured"] = {**measured, "command": command}
        else:
            reason = f"{mode.name} mode: no PostgreSQL"
            results["replicas"] = {"status": "skipped", "reason": reason}
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.evaluate(results)
    write_outputs(results, out_dir)
    progress(f"done in {results['elapsed_s']:.0f} s: {out_dir / 'RESULTS.md'}")
    return results


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    """results.json, RESULTS.md and the chart it links, all from ``results``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        scrub(json.dumps(results, indent=1, sort_keys=True)) + "\n"
    )
    chart.write(results, out_dir)
    (out_dir / "RESULTS.md").write_text(scrub(render(results, out_dir)))


UI_RUN = REPO / "bench" / "ui-pages"


def render(results: dict[str, Any], out: Path | None = None) -> str:
    """RESULTS.md: the report's tables, then the ACME, admin UI, replicas, CRL-at-1M and OCSP
    scenarios' (absent from older runs). bench/RESULTS.md shows the UI scenario of its own run
    in bench/ui-pages/ when the full run did not measure it (a 1M fill per database is a run of
    its own), and the CRL-at-1M and OCSP sections measured by hand (bench/hand/) when its
    results.json predates those scenarios, so that a re-render loses nothing."""
    committed = out is not None and out.resolve() == (REPO / "bench")
    ui = ui_pages.markdown(results.get("ui", {}), results.get("machine"))
    stored = UI_RUN / "results.json"
    if not ui and committed and stored.exists():
        run_ui = json.loads(stored.read_text())
        ui = ui_pages.markdown(run_ui.get("ui", {}), run_ui.get("machine"), "bench/ui-pages/")
    crl = crl_scale.markdown(results)
    if not crl and committed:
        crl = crl_scale.hand_section()
    ocsp = ocsp_presigned.markdown(results.get("ocsp", {}), results.get("machine"))
    if not ocsp and committed:
        ocsp = ocsp_presigned.hand_section()
    return (
        report.markdown(results)
        + acme_orders.markdown(results.get("acme", {}))
        + ui
        + replicas.markdown(results.get("replicas", {}))
        + crl
        + ocsp
    )


def _portable(argv: list[str]) -> list[str]:
    """The command line as results.json records it: a path names no directory of this machine
    (an --out inside the repository relative to it, anywhere else as OUT)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if (i > 0 and argv[i - 1] == "--out") or arg.startswith("--out="):
            value = arg.split("=", 1)[1] if arg.startswith("--out=") else arg
            path = Path(value).resolve()
            shown = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "OUT"
            arg = f"--out={shown}" if arg.startswith("--out=") else shown
        out.append(arg)
    return out


def scrub(text: str) -> str:
    """``text`` without this machine's paths (error reasons quote file names): the repository,
    the home and the temporary directory become placeholders."""
    for path, name in (
        (str(REPO), "<repo>"),
        (tempfile.gettempdir(), "<tmp>"),
        (str(Path.home()), "~"),
    ):
        if path and path != "/":
            text = text.replace(path, name)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="under 2 minutes, smaller sizes")
    group.add_argument("--tiny", action="store_true", help="seconds; for the smoke test")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"), help="subset")
    parser.add_argument(
        "--out", type=Path, help="where results go (default bench/, quick: bench/quick/)"
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md from --out/results.json"
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    out = args.out or (REPO / "bench" / ("quick" if args.quick else ""))
    if args.render:
        results = json.loads((out / "results.json").read_text())
        results["targets"] = report.evaluate(results)
        write_outputs(results, out)
        return 0
    if args.db:
        mode = replace(mode, dbs=tuple(db for db in mode.dbs if db in args.db))
    command = "python -m bench.run " + shlex.join(_portable(sys.argv[1:] if argv is None else argv))
    run(mode, set(args.only or SCENARIOS), out, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
