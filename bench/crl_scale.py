"""The full CRL at growing sizes on one database, for the slope and the 1M figure (issue 15 item 3).

The bench's own run measures the same thing in its store scenario (``python -m bench.run --only
crl``, or ``--only store`` with the lookups and issuance too: 10k, 100k and 1M revoked rows, each
CRL built by ``bench.crl_child`` in a fresh process); ``markdown`` below renders that section of
RESULTS.md from results.json. This script is the standalone form, for other sizes, repeats and
a before/after against another tree on the same rows.

A fresh store (SQLite file in a temporary directory, or a PostgreSQL schema of its own that is
dropped afterwards) is grown by ``bench.populate`` to each size in turn, and at each size
``bench.crl_child`` builds the CRL in a fresh process (seconds, peak RSS, phases), ``--repeat``
times. One JSON line per measurement on stdout. Usage::

    python -m bench.crl_scale --db sqlite --sizes 100000,300000,1000000 [--repeat 2]

``--base DIR`` measures another copy of the product too, at each size on the same rows (e.g.
the commit before a change: ``git archive BASE ca_service bench | tar -x -C DIR``).

``--keep DIR`` (SQLite only) leaves the store in DIR, and reuses it when it is there, so a
profile can be taken on the same rows: ``py-spy record -- python -m bench.crl_child URL DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import database_url, new_ca, open_ca, python_exe
from bench.populate import indexes_off, load, prepare
from ca_service.domain import KeyType

LIMIT_S, LIMIT_MB = 2.0, 300.0  # issue 15: a full CRL of 1M revoked entries
MB_PER_MIB = 1.048576
HAND = Path(__file__).with_name("hand") / "crl_1m.md"


def measured(results: dict[str, Any]) -> bool:
    """Whether the run's store scenario built CRLs with the CPU and phase figures this section
    shows (runs before the CRL child timed its CPU lack them: their section is the hand one)."""
    return any(
        isinstance(c, dict) and c.get("cpu_s") is not None
        for db in (results.get("store") or {}).values()
        if isinstance(db, dict)
        for c in (db.get("crl") or {}).values()
    )


def _f(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else "-" if v is None else str(v)


def markdown(results: dict[str, Any]) -> str:
    """The "CRL build at 1M" section from the store scenario's CRLs ('' when it has none)."""
    if not measured(results):
        return ""
    m = results.get("machine") or {}
    lines = [
        "",
        "## CRL build at 1M (issue 15 item 3)",
        "",
        f"Target: a full CRL of 1M revoked entries in under {LIMIT_S:g} s with a peak memory "
        f"under {LIMIT_MB:g} MB, on both databases. The store scenario of this run (run "
        f"{m.get('date')}, commit `{m.get('commit')}`): one store per database grown by "
        "`bench.populate`, and at each size `Core.generate_crl` in a fresh process "
        "(`bench.crl_child`): wall seconds, the process's own CPU seconds (all its threads, "
        "not the PostgreSQL server's), peak RSS (VmHWM), and the phases timed again one by one "
        "afterwards. `load1` is the 1-minute load average before the build; on a shared machine "
        "wall time measures the neighbours too, CPU seconds less so.",
        "",
        "| database | revoked | wall s | CPU s | peak RSS MiB (MB) | rows s | entries DER s "
        "| sign + check s | load1 | < 2 s | < 300 MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for db, store in (results.get("store") or {}).items():
        crls = store.get("crl") if isinstance(store, dict) else None
        for size, c in (crls or {}).items():
            if not isinstance(c, dict):
                continue
            b = c.get("breakdown") or {}
            mib = c.get("peak_rss_mib")
            mb = round(mib * MB_PER_MIB, 1) if isinstance(mib, int | float) else None
            ok = c.get("status") == "ok" and size == "1000000"
            secs = c.get("seconds")
            fast = ("met" if secs < LIMIT_S else "**missed**") if ok and secs else "-"
            small = ("met" if mb < LIMIT_MB else "**missed**") if ok and mb else "-"
            lines.append(
                f"| {db} | {_f(c.get('revoked_rows'))} | {_f(secs, 3)} | {_f(c.get('cpu_s'), 3)} "
                f"| {_f(mib, 1)} ({_f(mb, 1)}) | {_f(b.get('query_s'), 3)} "
                f"| {_f(b.get('entry_objects_s'), 3)} | {_f(b.get('sign_encode_s'), 3)} "
                f"| {_f(c.get('load1'))} | {fast} | {small} |"
                if c.get("status") == "ok"
                else f"| {db} | {_f(c.get('revoked_rows'))} | {c.get('status')}: "
                f"{str(c.get('note') or c.get('stderr') or '')[-120:].replace('|', '/')} |"
                + " |"
                * 8
            )
    lines += [
        "",
        'How the build spends its time and what was tried: PROFILES.md, "CRL build at 1M".',
    ]
    if HAND.exists():
        lines.append(
            "The before/after measurement of the change by hand (`python -m bench.crl_scale "
            "--base`, on the same rows) is kept in bench/hand/crl_1m.md."
        )
    return "\n".join(lines) + "\n"


def hand_section() -> str:
    """The section measured by hand, for a results.json whose run did not build these CRLs."""
    return "\n" + HAND.read_text().strip() + "\n" if HAND.exists() else ""


def _child(url: str, workdir: Path, tree: Path | None) -> dict[str, Any]:
    """``bench.crl_child`` in a fresh process, on ``tree``'s product and bench when given."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    argv = [python_exe(), "-m", "bench.crl_child", url, str(workdir), "--breakdown"]
    cwd = tree or Path(__file__).resolve().parent.parent
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    if proc.returncode != 0:
        return {"status": "error", "stderr": proc.stderr[-1500:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=("sqlite", "postgresql"), required=True)
    parser.add_argument("--sizes", default="100000,300000")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--base", type=Path, default=None, help="product tree to compare with")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds to populate")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    deadline = time.monotonic() + args.budget
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            if args.db != "sqlite":
                parser.error("--keep is for SQLite only (a PostgreSQL schema is always dropped)")
            workdir = args.keep
            workdir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{workdir / 'ca.db'}"
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crl-scale-")))
            url = stack.enter_context(database_url(args.db, workdir))
        reused = (workdir / "ca.db").exists() and args.keep is not None
        ca = open_ca(workdir, url) if reused else new_ca(workdir, url, KeyType.ECDSA_P256)
        pop = prepare(ca)
        ca.db.dispose()
        have = 0
        for size in sizes:
            if not reused:
                with indexes_off(url):  # rebuilt before the CRL is built (bench.populate)
                    have += load(pop, url, size - have, revoked=True, deadline=deadline)
            trees = [("this", None)] + ([("base", args.base)] if args.base else [])
            for _ in range(args.repeat):
                for label, tree in trees:
                    got = _child(url, workdir, tree)
                    print(json.dumps({"db": args.db, "revoked": have or size, "tree": label,
                                      "load": os.getloadavg()[0], **got}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
