"""The full CRL at growing sizes on one database, for the slope and the 1M figure (issue 15 item 3).

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
from bench.populate import load, prepare
from ca_service.domain import KeyType


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
