"""Targets of issue #4 and RESULTS.md: every figure next to what it is measured against.

A target whose scenario could not run (HTTP API absent, population cut short) is "not measured"
or carries the real row count; nothing is filled in by assumption.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import chart

# No fixed "cause" text: what a missed target's note says is derived from the figures of the
# same run (server CPU against the cores, bytes per answer, the CRL's phases), so it cannot
# contradict them. Causes found by profiling are in PROFILES.md, with the commit they hold for.
BUSY_SHARE = 0.7  # server CPU at or above this share of the cores counts as CPU-bound
PROFILES = Path(__file__).with_name("PROFILES.md")
MB_PER_MIB = 1.048576  # the issue's memory target is in MB (10^6 bytes), VmHWM in KiB


# The PROFILES.md section on issuance into a store of a million (its newest reading).
STORED_1M_PROFILE = "Issuance with 1M stored"


def profile_heading(prefix: str | None, profiles: Path = PROFILES) -> str | None:
    """The PROFILES.md heading that starts with ``prefix`` (its last one: the newest reading),
    as written there; None when PROFILES.md has no such section (then no pointer is made up)."""
    if not prefix or not profiles.exists():
        return None
    found = [
        line.lstrip("#").strip()
        for line in profiles.read_text().splitlines()
        if line.startswith("#") and line.lstrip("#").strip().startswith(prefix)
    ]
    return found[-1] if found else None


def anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _cpu(r: dict[str, Any], nproc: Any) -> str:
    """What the server's CPU during a load says: saturated, or waiting on something."""
    cores = r.get("server_cpu_cores")
    if cores is None or not nproc:
        return ""
    used = f"server CPU {cores} of {nproc} cores"
    if cores >= BUSY_SHARE * nproc:
        return f"{used}: CPU-bound (the load generator shares the cores)"
    return f"{used}: not CPU-bound, so requests wait (locks, I/O or round-trips)"


def _crl_phases(c: dict[str, Any]) -> str:
    """Time per entry and the phase that took most of one CRL's generation."""
    parts = []
    if c.get("seconds") and c.get("entries"):
        parts.append(f"{c['seconds'] / c['entries'] * 1e6:.1f} us per entry")
    b = c.get("breakdown") or {}
    phases = {
        "joining the stored entries": b.get("query_s"),
        "encoding rows without one": b.get("entry_objects_s"),
        "signing and checking": b.get("sign_encode_s"),
    }
    timed = {k: v for k, v in phases.items() if isinstance(v, int | float)}
    if timed:
        top = max(timed, key=lambda k: timed[k])
        parts.append(
            "phases " + ", ".join(f"{k} {v:.2f} s" for k, v in timed.items()) + f"; most: {top}"
        )
    return "; ".join(parts)


def _p50(r: Any) -> str:
    """A p99 next to its p50: a slow tail over fast typical answers is queueing, not the query."""
    if not isinstance(r, dict) or r.get("p50_ms") is None:
        return ""
    return f"p50 {r['p50_ms']} ms"


def _body(r: dict[str, Any]) -> str:
    """How many bytes a CRL answer carries and the rate they were sent at."""
    size, rps = r.get("crl_bytes"), r.get("rps")
    if not size or not rps:
        return ""
    return f"{size:,} bytes per answer, {size * rps / 1e6:,.0f} MB/s sent"


def short(reason: Any, limit: int = 160) -> str:
    """One line of a failure reason for a table cell: its last meaningful line, clipped."""
    if not reason:
        return "not run"
    text = str(reason).replace("\\n", "\n")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "[INFO]" not in ln]
    pick = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    return pick.replace("|", "/")[:limit]


def _get(data: dict[str, Any], *path: str) -> Any:
    cur: Any = data
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _target(
    name: str,
    goal: str,
    value: Any,
    unit: str,
    ok: Callable[[float], bool],
    cause: str | None = None,
    note: str = "",
    profile: str | None = None,
) -> dict[str, Any]:
    """``cause``: what the run's own figures say about a missed target (shown only then);
    ``profile``: how the PROFILES.md section on it begins (the pointer, only for a miss and only
    when PROFILES.md has that section)."""
    status = "not measured" if value is None else "met" if ok(float(value)) else "missed"
    heading = profile_heading(profile) if status == "missed" else None
    pointer = f'see PROFILES.md, "{heading}"' if heading else None
    why = cause if status == "missed" and cause else None
    if status == "missed" and (cause or pointer):
        cause = "; ".join(x for x in (cause, pointer) if x)
    return {
        "target": name,
        "goal": goal,
        "measured": value,
        "unit": unit,
        "status": status,
        "cause": cause if status == "missed" and cause else None,
        "why": why,  # the measured cause alone, without the pointer
        "note": note,
        "profile": heading,
    }


def _at_least(goal: float) -> Callable[[float], bool]:
    return lambda v: v >= goal


def _below(limit: float) -> Callable[[float], bool]:
    return lambda v: v < limit


def _last_step(steps: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The largest store step that has HTTP lookups (1M in a full run)."""
    found = [(k, v) for k, v in steps.items() if isinstance(v, dict) and "lookups" in v]
    return found[-1] if found else (None, {})


def ocsp_figures(results: dict[str, Any], db: str) -> dict[str, Any]:
    """The nonce-less OCSP load of ``db``: the ocsp scenario's, or (older runs) the one the HTTP
    scenario of the ECDSA CA measured."""
    own = _get(results, "ocsp", db)
    if isinstance(own, dict) and own:
        return own
    return _get(results, "http", db, "ecdsa-p256", "ocsp") or {}


def cfssl_run(results: dict[str, Any], tag: str, ckey: str) -> dict[str, Any]:
    """One CFSSL load of the same run (``ecdsa_sqlite``/``ecdsa_nodb``, ``c32``), or {}."""
    r = _get(results, "references", "cfssl", "runs", tag, ckey)
    return r if isinstance(r, dict) and "rps" in r else {}


def floor_run(results: dict[str, Any], store: str, ckey: str) -> dict[str, Any]:
    """One load of the stack's floor (reference (d), bench/floor.py) in the same run, or {}."""
    r = _get(results, "references", "floor", "runs", store, ckey)
    return r if isinstance(r, dict) and "rps" in r else {}


def floor_cause(results: dict[str, Any], db: str, goal: float) -> str | None:
    """What the floor says of an absolute rate goal: the bare stack's own rate, same run."""
    stored, bare = floor_run(results, db, "c32"), floor_run(results, "none", "c32")
    if not stored:
        return None
    text = (
        f"the stack's floor (d) in this run, a bare endpoint on the same gunicorn settings that "
        f"only signs and commits the certificate: {_fmt(stored['rps'])}/s "
        f"({stored['rps'] / goal:.2f} of the goal)"
    )
    if bare:
        text += f", {_fmt(bare['rps'])}/s storing nothing ({bare['rps'] / goal:.2f})"
    return text


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issues 4 and 15, per database, from the raw results."""
    out: list[dict[str, Any]] = []
    nproc = _get(results, "machine", "nproc")
    for db, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        http = _get(results, "http", db, "ecdsa-p256") or {}
        goal = 2000 if db == "sqlite" else 1500
        absent = "" if http.get("status") == "ok" else f"HTTP: {short(http.get('reason'))}"
        c32 = _get(http, "issue_csr", "c32") or {}
        c8 = _get(http, "issue_csr", "c8") or {}
        issuance_profile = f"HTTP issuance, {label}"

        def load(r: dict[str, Any], absent: str = absent) -> str:
            if not r:
                return absent
            if "rps" not in r:
                return short(r.get("reason"))
            return f"load avg {r.get('load1')}"

        out.append(
            _target(f"HTTP issuance ECDSA P-256 {label} c=32", f">= {goal}/s", c32.get("rps"),
                    "certs/s", _at_least(goal),
                    "; ".join(x for x in (_cpu(c32, nproc), floor_cause(results, db, goal)) if x),
                    load(c32), issuance_profile)
        )  # fmt: skip
        if db == "sqlite":
            # Issue 15: against CFSSL with its SQLite certdb, same CSR, same load generator, same
            # run; never against a figure of another run.
            cf = cfssl_run(results, "ecdsa_sqlite", "c32")
            ours = c32.get("rps")
            ratio = round(ours / cf["rps"], 3) if ours and cf.get("rps") else None
            if not cf:
                why = short(_get(results, "references", "cfssl", "reason"))
                note = f"CFSSL + SQLite c=32 not in this run ({why})"
            else:
                note = f"{ours} vs CFSSL + SQLite {cf['rps']} certs/s" if ours else load(c32)
            fl = floor_run(results, "sqlite", "c32")
            fl_cause = (
                f"the stack's floor (d) on SQLite in this run: {_fmt(fl['rps'])}/s, "
                f"{fl['rps'] / cf['rps']:.2f}x CFSSL"
                if fl and cf.get("rps")
                else None
            )
            out.append(
                _target("HTTP issuance SQLite c=32 vs CFSSL + SQLite certdb (same run)",
                        ">= 1.5x CFSSL", ratio, "ratio", lambda v: v >= 1.5,
                        "; ".join(x for x in (_cpu(c32, nproc), fl_cause) if x), note,
                        "After the fixes")
            )  # fmt: skip
        fl8 = floor_run(results, db, "c8")
        fl8_cause = (
            f"the stack's floor (d) at c=8 in this run: p99 {_fmt(fl8['p99_ms'])} ms"
            if fl8 else None
        )  # fmt: skip
        out.append(
            _target(f"p99 issuance latency c=8 {label}", "< 25 ms", c8.get("p99_ms"), "ms",
                    lambda v: v < 25,
                    "; ".join(x for x in (_p50(c8), _cpu(c8, nproc), fl8_cause) if x),
                    load(c8), issuance_profile)
        )  # fmt: skip
        oc = ocsp_figures(results, db)
        # bench/loadgen.py (Python, sharing the server's cores) and, where installed, wrk.
        for method, engine in (("post", ""), ("get", ""), ("post_wrk", " (wrk)"),
                               ("get_wrk", " (wrk)")):  # fmt: skip
            got = oc.get(method)
            if engine and not isinstance(got, dict):
                continue
            r: dict[str, Any] = got if isinstance(got, dict) else {}
            at8 = r.get("concurrency") == 8
            where = "" if at8 or not r else f"measured at c={r.get('concurrency')}, not judged; "
            verb = method.split("_")[0].upper()
            out.append(
                _target(f"OCSP {verb} nonce-less answers c=8{engine}, {label}", ">= 3000/s",
                        r.get("rps") if at8 else None, "answers/s", lambda v: v >= 3000,
                        _cpu(r, nproc), where + (load(r) if r else oc.get("reason") or absent
                                                 or "not run"), "OCSP fast path")
            )  # fmt: skip
        store = _get(results, "store", db) or {}
        for size, limit, what in (("100000", 0.5, "issue 4"), ("1000000", 2.0, "issue 15")):
            crl = _get(store, "crl", size) or {}
            rows = crl.get("revoked_rows")
            note = f"at {rows:,} rows" if rows is not None and str(rows) != size else ""
            if crl.get("cpu_s") is not None:
                note = "; ".join(x for x in (note, f"CRL process CPU {crl['cpu_s']} s") if x)
            out.append(
                _target(
                    f"CRL generation {int(size):,} revoked, {label} ({what})",
                    f"< {limit} s",
                    crl.get("seconds") if crl.get("status") in ("ok", None) else None,
                    "s",
                    _below(limit),
                    _crl_phases(crl),
                    note,
                    "CRL build at 1M",
                )
            )
        crl = _get(store, "crl", "1000000") or {}
        mib = crl.get("peak_rss_mib")
        out.append(
            _target(
                f"CRL 1M peak memory, {label}",
                "< 300 MB",
                round(mib * MB_PER_MIB, 1) if isinstance(mib, int | float) else None,
                "MB (process peak RSS)",
                lambda v: v < 300,
                f"{crl.get('rss_before_mib')} MiB before generating, {crl.get('entries'):,} "
                f"entries, {crl.get('crl_bytes', 0):,} bytes"
                if crl.get("entries")
                else None,
                f"{mib} MiB" if mib is not None else "",
                "CRL build at 1M",
            )
        )
        steps = _get(store, "http", "steps") or {}
        fetches = [("small store", http.get("crl_fetch") or {})]
        fetches += [(f"{int(k):,} revoked", v.get("crl_fetch") or {}) for k, v in steps.items()
                    if v.get("crl_fetch")]  # fmt: skip
        for where, r in fetches:
            out.append(
                _target(f"CRL served from cache ({where}), {label}", ">= 3000 req/s",
                        r.get("rps"), "req/s", lambda v: v >= 3000, _cpu(r, nproc),
                        f"{_body(r)}; {load(r)}" if r else absent, "CRL served from cache")
            )  # fmt: skip
        visible = [("small store", http.get("revocation_visibility") or {})]
        visible += [(f"{int(k):,} revoked", v.get("revocation_visibility") or {})
                    for k, v in steps.items() if v.get("revocation_visibility")]  # fmt: skip
        for where, r in visible:
            for what in ("crl", "ocsp"):
                out.append(
                    _target(f"revocation visible in {what.upper()} ({where}), {label}", "< 1 s",
                            r.get(f"revocation_to_{what}_s"), "s", lambda v: v < 1,
                            None, f"revoke answered in {r.get('revoke_answer_s')} s" if r
                            else absent, "Revocation at 100k")
                )  # fmt: skip
        _key, step = _last_step(steps)
        rows_http = step.get("rows")
        if rows_http is not None and rows_http < 1_000_000:
            # Smaller stores (quick mode) are reported in the tables, not judged against 1M.
            step = {}
            absent = f"store reached {rows_http:,} rows in this mode (see tables)"
        note_http = f"over HTTP, {rows_http:,} rows" if step else absent or "not run"
        look = step.get("lookups") or {}
        out.append(
            _target(f"1M stored: name search p99 (HTTP), {label}", "< 50 ms",
                    _get(look, "search_rare", "p99_ms"), "ms", lambda v: v < 50,
                    _p50(_get(look, "search_rare")), note_http)
        )  # fmt: skip
        out.append(
            _target(f"1M stored: fetch by serial p99 (HTTP), {label}", "< 10 ms",
                    _get(look, "fetch_by_serial", "p99_ms"), "ms", lambda v: v < 10,
                    _p50(_get(look, "fetch_by_serial")), note_http)
        )  # fmt: skip
        empty = _get(store, "http", "issue_empty", "rps")
        full = _get(step, "issue_full", "rps")
        out.append(
            _target(f"1M stored: HTTP issuance c=8 vs empty store, {label}", ">= 0.90 of empty",
                    round(full / empty, 3) if empty and full else None, "ratio",
                    lambda v: v >= 0.9, _cpu(_get(step, "issue_full") or {}, nproc),
                    f"{note_http}: {full} vs {empty} certs/s" if full else note_http,
                    STORED_1M_PROFILE)
        )  # fmt: skip
        rows = store.get("stored_rows")
        at_1m = isinstance(rows, int) and rows >= 1_000_000
        e_in, f_in = _get(store, "issuance_empty", "per_s"), _get(store, "issuance_full", "per_s")
        out.append(
            _target(f"1M stored: in-process issuance vs empty store, {label}", ">= 0.90 of empty",
                    round(f_in / e_in, 3) if at_1m and e_in and f_in else None, "ratio",
                    lambda v: v >= 0.9, None,
                    f"issue_from_csr, {rows:,} rows: {f_in} vs {e_in} certs/s" if at_1m
                    else f"store reached {rows:,} rows (see tables)" if rows else "not run",
                    STORED_1M_PROFILE)
        )  # fmt: skip
        note = f"in-process (repository), {rows:,} rows" if rows else ""
        out.append(
            _target(
                f"1M stored: name search p99 (in-process), {label}",
                "< 50 ms",
                _get(store, "lookups", "1000000", "search_rare", "p99_ms"),
                "ms",
                lambda v: v < 50,
                _p50(_get(store, "lookups", "1000000", "search_rare")),
                note,
            )
        )
        out.append(
            _target(
                f"1M stored: fetch by serial p99 (in-process), {label}",
                "< 10 ms",
                _get(store, "lookups", "1000000", "fetch_by_serial", "p99_ms"),
                "ms",
                lambda v: v < 10,
                None,
                note,
            )
        )
    return out


# ------------------------------------------------------------------------------ markdown


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _ratio(value: Any, base: Any) -> str:
    return f"{value / base:.2f}" if value and base else "-"


def _rate(r: dict[str, Any] | None, unit: str = "certs/s") -> str:
    """A rate with its p99, or "-" when the run has no such figure."""
    if not r or r.get("rps") is None:
        return "-"
    p99 = f" (p99 {_fmt(r['p99_ms'])} ms)" if r.get("p99_ms") is not None else ""
    return f"{_fmt(r['rps'])} {unit}{p99}"


def _seconds(c: dict[str, Any] | None) -> tuple[str, Any]:
    if not c or c.get("seconds") is None or c.get("status") not in ("ok", None):
        return "-", None
    rows = c.get("entries") or c.get("revoked_rows")
    peak = f", peak {_fmt(c['peak_rss_mib'])} MiB" if c.get("peak_rss_mib") else ""
    return f"{_fmt(c['seconds'])} s ({_fmt(rows)} entries{peak})", c["seconds"]


def figures(results: dict[str, Any]) -> list[list[str]]:
    """The figures table of issue 15: ca-service | the reference of the same run | ratio.

    Every cell comes from ``results``; "-" where the run did not measure it. A ratio is ours
    over theirs (issuance: higher is better; CRL seconds: lower is better).
    """
    rows: list[list[str]] = []

    def issue(db: str, c: int) -> dict[str, Any]:
        r = _get(results, "http", db, "ecdsa-p256", "issue_csr", f"c{c}")
        return r if isinstance(r, dict) and "rps" in r else {}

    for db, label, c, tag, other in (
        ("sqlite", "SQLite", 32, "ecdsa_sqlite", "CFSSL + SQLite certdb"),
        ("sqlite", "SQLite", 32, "ecdsa_nodb", "CFSSL storing nothing"),
        ("sqlite", "SQLite", 1, "ecdsa_sqlite", "CFSSL + SQLite certdb"),
        ("sqlite", "SQLite", 1, "ecdsa_nodb", "CFSSL storing nothing"),
        ("postgresql", "PostgreSQL", 32, "ecdsa_sqlite", "CFSSL + SQLite certdb"),
    ):
        ours, theirs = issue(db, c), cfssl_run(results, tag, f"c{c}")
        ratio = _ratio(ours.get("rps"), theirs.get("rps"))
        rows.append([f"HTTP issuance from CSR, ECDSA P-256, {label}, c={c}, vs {other}",
                     _rate(ours), _rate(theirs), ratio])  # fmt: skip
    for db, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        ours, floor = issue(db, 32), floor_run(results, db, "c32")
        if floor:
            rows.append(
                [
                    f"HTTP issuance, {label}, c=32, vs the stack's floor (d): a bare "
                    "endpoint that signs and commits, nothing else",
                    _rate(ours),
                    _rate(floor),
                    _ratio(ours.get("rps"), floor.get("rps")),
                ]
            )
    store = _get(results, "store", "sqlite") or {}
    empty = _get(store, "issuance_empty", "per_s")
    full = _get(store, "issuance_full", "per_s")
    stored = store.get("stored_rows")
    where = f"{stored:,} stored" if isinstance(stored, int) else "1M stored"
    cell = f"{_fmt(empty)} -> {_fmt(full)} certs/s" if empty and full else "-"
    rows.append([f"in-process `issue_from_csr`, SQLite: empty store -> {where}", cell, "-",
                 _ratio(full, empty)])  # fmt: skip
    ceiling = _get(results, "references", "ceiling", "ecdsa-p256", "per_s")
    core = _get(results, "store", "sqlite", "issuance_empty", "per_s")
    rows.append(["in-process ceiling, ECDSA P-256 (CSR parse + policy + sign, no DB); the core "
                 "with its SQLite store (empty) reaches",
                 f"{_fmt(ceiling)} certs/s; core + store {_fmt(core)} certs/s" if ceiling
                 else "-", "-", _ratio(core, ceiling)])  # fmt: skip
    cells: list[str] = []
    cs: set[int] = set()
    for db, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        oc = ocsp_figures(results, db)
        post, get = oc.get("post") or {}, oc.get("get") or {}
        cs |= {r["concurrency"] for r in (post, get) if isinstance(r.get("concurrency"), int)}
        if post.get("rps") or get.get("rps"):
            cells.append(f"{label} {_fmt(post.get('rps'))} / {_fmt(get.get('rps'))}")
    at = f"c={'/'.join(str(c) for c in sorted(cs))}" if cs else "c=8"
    rows.append([f"OCSP nonce-less answers/s, {at}, POST / GET",
                 "; ".join(cells) or "-", "-", "-"])  # fmt: skip
    gencrl = _get(results, "references", "openssl_gencrl")
    for size, word in (("1000000", "1M"), ("100000", "100k")):
        for db, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
            cell, secs = _seconds(_get(results, "store", db, "crl", size))
            ref = _get(gencrl, size, "seconds") if size == "1000000" else None
            ref_cell = f"`openssl ca -gencrl` {_fmt(ref)} s" if ref else "-"
            rows.append([f"full CRL of {word} revoked, {label}", cell, ref_cell,
                         _ratio(secs, ref)])  # fmt: skip
    return rows


def floor_markdown(floor: dict[str, Any]) -> list[str]:
    """Section (d): the stack's floor per store and concurrency (bench/floor.py)."""
    lines = ["### (d) the stack's floor: a bare endpoint on the same stack and settings", ""]
    if floor.get("status") != "ok":
        return [*lines, f"{floor.get('status', 'not run')}: {floor.get('reason', '')}", ""]
    lines += [
        f"`bench/floor.py` under gunicorn ({floor.get('worker_class')}, {floor.get('workers')} "
        f"workers x {floor.get('threads')} threads, as `serve`), the same CSR and load "
        "generator: parse the JSON and the CSR, check its signature, sign a leaf, and (with a "
        "store) commit serial, DER and fingerprint in one transaction per group of concurrent "
        "requests before answering. No token, policy, audit row, search index or API model: "
        "ca-service does all of that and more, so this rate bounds ours on this machine.",
        "",
    ]
    frows = []
    for store, run in (floor.get("runs") or {}).items():
        for key, r in run.items():
            if key.startswith("c") and isinstance(r, dict) and "rps" in r:
                frows.append([store, r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"],
                              r["errors"], r.get("server_cpu_ms_per_cert"),
                              f"{run.get('rows_stored')} of {run.get('answered')}"
                              if store != "none" else "-"])  # fmt: skip
    return lines + _table(
        ["store", "c", "certs/s", "p50 ms", "p99 ms", "errors", "server CPU ms/cert",
         "rows stored of answered"], frows,
    )  # fmt: skip


def limits(results: dict[str, Any]) -> list[str]:
    """ "Limits on this machine": every missed target of the run, its figure, what the run's own
    figures show as the cause, and the PROFILES.md section on it (appended below in RESULTS.md,
    so the link is to this page's copy). Derived from ``results["targets"]``, no fixed prose."""
    targets = results.get("targets") or []
    missed = [t for t in targets if t.get("status") == "missed"]
    unmeasured = sum(1 for t in targets if t.get("status") == "not measured")
    m = results.get("machine") or {}
    lines = [
        "## Limits on this machine",
        "",
        f"{len(missed)} of {len(targets)} targets missed in this run ({unmeasured} not measured) "
        f"on {m.get('cpu_model')}, {m.get('nproc')} cores shared by the server and the load "
        f"generator (run {m.get('date')}, commit `{m.get('commit')}`). Each cause is what this "
        "run's own figures show (server CPU against the cores, bytes per answer, the CRL's "
        "phases); the profile is the section of PROFILES.md (below) that explains it.",
        "",
    ]
    if not missed:
        return [*lines, "No target was missed in this run.", ""]
    for t in missed:
        why = t.get("why") or "the run's figures name no cause"
        note = f" ({t['note']})" if t.get("note") else ""
        heading = t.get("profile")
        where = f' Profile: [PROFILES.md, "{heading}"](#{anchor(heading)}).' if heading else ""
        lines.append(
            f"- **{t['target']}**: {_fmt(t['measured'])} {t['unit']} against {t['goal']}{note}. "
            f"Cause measured: {why}.{where}"
        )
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# ca-service benchmark results",
        "",
        f"- date: {m['date']}; commit `{m['commit']}`"
        + (" (work tree had uncommitted changes)" if m.get("tree_dirty") else ""),
        f"- machine: {m['cpu_model']}, {m['nproc']} cores (nproc), {m['mem_total_gib']} GiB RAM; "
        f"Python {m['python']}, cryptography {m['cryptography']}, kernel {m['kernel']}",
        f"- mode: `{results['mode']}`; command: `{results['command']}`; "
        f"wall time {results['elapsed_s']:.0f} s",
        "- load: bench/loadgen.py (processes x threads of keep-alive http.client connections) on "
        "the same 2 cores as the server, loopback only",
        "",
        "## Targets (issues #4 and #15)",
        "",
    ]
    lines += _table(
        ["target", "goal", "measured", "unit", "status", "note; for a miss, what this run shows"],
        [
            [t["target"], t["goal"], t["measured"], t["unit"], f"**{t['status']}**",
             "; ".join(x for x in (t["note"], t["cause"]) if x)]
            for t in results["targets"]
        ],
    )  # fmt: skip
    lines += [
        "## Figures (issue 15)",
        "",
        'From this run only; "-" where it did not measure the figure. ratio = ca-service / '
        "the reference of the same run (for a CRL: seconds over seconds, lower is better).",
        "",
    ]
    lines += _table(["figure", "ca-service", "CFSSL (or the reference named), same run",
                     "ratio"], figures(results))  # fmt: skip
    lines += chart.markdown(results)
    lines += limits(results)
    refs = results.get("references", {})
    ssl = refs.get("openssl", {})
    ceiling = refs.get("ceiling", {})
    lines += ["## References", "", "### (a) openssl speed (one core)", ""]
    if ssl.get("status") == "ok":
        lines += _table(
            ["key", "sign/s", "verify/s"],
            [
                ["ECDSA P-256", ssl.get("ecdsap256_sign_per_s"), ssl.get("ecdsap256_verify_per_s")],
                ["RSA-2048", ssl.get("rsa2048_sign_per_s"), ssl.get("rsa2048_verify_per_s")],
            ],
        )
    else:
        lines += [f"{ssl.get('status', 'not run')}: {ssl.get('reason', '')}", ""]
    lines += [
        "### (b) in-process ceiling: parse_csr + policy check + sign_leaf, one process, no DB",
        "",
    ]
    rows = [
        [k, v["per_s"], v["p50_ms"], v["p99_ms"], v["count"]]
        for k, v in ceiling.items()
        if isinstance(v, dict)
    ]
    lines += _table(["CA key", "certs/s", "p50 ms", "p99 ms", "count"], rows)
    cfssl = refs.get("cfssl", {})
    lines += ["### (c) CFSSL `cfssl serve`, same CSR, same load generator", ""]
    if cfssl.get("status") == "ok":
        crow = []
        for tag, run in cfssl["runs"].items():
            for key, r in run.items():
                if key.startswith("c") and isinstance(r, dict) and "rps" in r:
                    crow.append([tag, r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"],
                                 r["errors"], r.get("server_cpu_cores")])  # fmt: skip
            wrk = run.get("wrk_cross_check")
            if wrk:
                crow.append([f"{tag} (wrk)", wrk["concurrency"], wrk["rps"], wrk["p50_ms"],
                             wrk["p99_ms"], wrk["non_2xx"], None])  # fmt: skip
        lines += _table(
            ["CA, store", "c", "certs/s", "p50 ms", "p99 ms", "errors", "server CPU cores"], crow
        )
    else:
        lines += [f"{cfssl.get('status', 'not run')}: {cfssl.get('reason', '')}", ""]

    lines += floor_markdown(refs.get("floor") or {})
    if results.get("hsm"):
        from bench.hsm import markdown as hsm_markdown

        lines += hsm_markdown(results["hsm"])
    lines += ["## Store scenarios (no HTTP)", ""]
    ecdsa_ceiling = _get(ceiling, "ecdsa-p256", "per_s")
    for db, store in results.get("store", {}).items():
        if store.get("status") in ("absent", "skipped"):
            lines += [f"### {db}: {store['status']} ({store.get('reason', '')})", ""]
            continue
        lines += [f"### {db}: CRL generation (`generate_crl`, child process)", ""]
        lines += _table(
            ["revoked", "seconds", "peak RSS MiB", "RSS before MiB", "CRL bytes", "entries",
             "rows s", "entries DER s", "sign + check s"],
            [
                [c.get("revoked_rows"), c.get("seconds"), c.get("peak_rss_mib"),
                 c.get("rss_before_mib"), c.get("crl_bytes"), c.get("entries"),
                 _get(c, "breakdown", "query_s"), _get(c, "breakdown", "entry_objects_s"),
                 _get(c, "breakdown", "sign_encode_s")]
                for c in store.get("crl", {}).values()
            ],
        )  # fmt: skip
        pop = [[k, v["rows_added"], v["seconds"], v["rows_per_s"]]
               for k, v in store.get("populate", {}).items()]  # fmt: skip
        lines += [f"Bulk population ({db}, SQL inserts/COPY):", ""]
        lines += _table(["step", "rows added", "seconds", "rows/s"], pop)
        if not store.get("lookups") and not store.get("issuance_empty"):
            continue  # ``--only crl``: the CRL builds alone
        lines += [f"### {db}: lookups through the repository (concurrency 1)", ""]
        lrows = []
        for size, look in store.get("lookups", {}).items():
            for kind in ("fetch_by_serial", "search_rare", "search_common"):
                r = look.get(kind, {})
                lrows.append([look.get("rows"), kind, r.get("per_s"), r.get("p50_ms"),
                              r.get("p99_ms"), r.get("count")])  # fmt: skip
            del size
        lines += _table(["rows", "query", "per s", "p50 ms", "p99 ms", "count"], lrows)
        lines += [f"### {db}: in-process issuance (`issue_from_csr`, ECDSA P-256 CA)", ""]
        irows = []
        for label, key in (("almost empty", "issuance_empty"), ("full", "issuance_full")):
            r = store.get(key, {})
            irows.append([label if key == "issuance_empty" else f"{store.get('stored_rows'):,}",
                          r.get("per_s"), r.get("p50_ms"), r.get("p99_ms"),
                          _ratio(r.get("per_s"), ecdsa_ceiling)])  # fmt: skip
        lines += _table(["store rows", "certs/s", "p50 ms", "p99 ms", "ratio to (b)"], irows)

    lines += ["## HTTP scenarios (`ca-service serve`, gunicorn, default workers)", ""]
    lines += [
        "Rates are the median of short repeated runs (all runs in results.json); `load` is the "
        "1-minute load average when the scenario started, `srv CPU` the cores the server "
        "(master + workers) used. Ratios: to the in-process ceiling (b) of the same CA key (one "
        "process, no DB) and to CFSSL with its SQLite certdb (and without a DB) at the same "
        "concurrency in this run.",
        "",
    ]
    for db, per_key in results.get("http", {}).items():
        for key_type, h in per_key.items():
            if h.get("status") != "ok":
                lines += [f"- {db} {key_type}: **{h.get('status')}**: {short(h.get('reason'))}", ""]
                continue
            hrows = []
            algo = "ecdsa" if "ecdsa" in key_type else "rsa"
            cf_db = _get(cfssl, "runs", f"{algo}_sqlite") or {}
            cf_nodb = _get(cfssl, "runs", f"{algo}_nodb") or {}
            base = _get(ceiling, key_type, "per_s")
            for scen in ("issue_csr", "issue_keygen"):
                for ckey, r in (h.get(scen) or {}).items():
                    if isinstance(r, dict) and "rps" in r:
                        hrows.append([scen, r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"],
                                      r["errors"], r.get("load1"), r.get("server_cpu_cores"),
                                      _ratio(r["rps"], base),
                                      _ratio(r["rps"], _get(cf_db, ckey, "rps")),
                                      _ratio(r["rps"], _get(cf_nodb, ckey, "rps"))])  # fmt: skip
            lines += [f"### {db}, {key_type} CA ({h.get('workers')} workers)", ""]
            lines += _table(["scenario", "c", "certs/s", "p50 ms", "p99 ms", "errors", "load",
                             "srv CPU", "ratio to (b)", "ratio to CFSSL+SQLite",
                             "ratio to CFSSL no DB"], hrows)  # fmt: skip
            other = []
            for label, r in (
                ("revoke (each signs a new CRL)", h.get("revocation")),
                ("CRL fetch (DER, cached)", h.get("crl_fetch")),
                ("OCSP POST", _get(h, "ocsp", "post")),
                ("OCSP GET", _get(h, "ocsp", "get")),
            ):
                if isinstance(r, dict) and "rps" in r:
                    other.append([label, r["concurrency"], r["rps"], r["p50_ms"],
                                  r["p99_ms"], r["errors"], r.get("load1"),
                                  r.get("server_cpu_cores")])  # fmt: skip
                elif isinstance(r, dict):
                    other.append([label, None, None, None, None, short(r.get("reason")), None,
                                  None])  # fmt: skip
            if other:
                lines += _table(["scenario", "c", "req/s", "p50 ms", "p99 ms", "errors", "load",
                                 "srv CPU"], other)  # fmt: skip
            vis = h.get("revocation_visibility") or {}
            if vis:
                lines += [f"Revocation visibility (small store): revoke answered in "
                          f"{_fmt(vis.get('revoke_answer_s'))} s, in the served CRL after "
                          f"{_fmt(vis.get('revocation_to_crl_s'))} s, in OCSP after "
                          f"{_fmt(vis.get('revocation_to_ocsp_s'))} s "
                          f"{vis.get('reason', '')}", ""]  # fmt: skip
    for db, store in results.get("store", {}).items():
        sh = store.get("http") if isinstance(store, dict) else None
        if not sh:
            continue
        lines += [f"### {db}: HTTP on the grown store (one server while the store grows)", ""]
        rows = []
        e = sh.get("issue_empty") or {}
        rows.append(["issuance c=8, almost empty store", "-", e.get("rps"), e.get("p50_ms"),
                     e.get("p99_ms"), e.get("load1")])  # fmt: skip
        for size, step in sh.get("steps", {}).items():
            n = step.get("rows")
            r = step.get("crl_fetch") or {}
            if r:
                rows.append(
                    [
                        f"CRL fetch ({_fmt(r.get('crl_bytes'))} bytes)",
                        n,
                        r.get("rps"),
                        r.get("p50_ms"),
                        r.get("p99_ms"),
                        r.get("load1") or r.get("reason"),
                    ]
                )
            v = step.get("revocation_visibility") or {}
            if v:
                rows.append(["revoke -> visible in CRL / OCSP (s)", n,
                             f"{_fmt(v.get('revocation_to_crl_s'))} / "
                             f"{_fmt(v.get('revocation_to_ocsp_s'))}",
                             None, None, v.get("reason")])  # fmt: skip
            for q in ("search_rare", "search_common", "fetch_by_serial"):
                r = _get(step, "lookups", q) or {}
                if r:
                    rows.append([f"GET {q}", n, r.get("rps"), r.get("p50_ms"), r.get("p99_ms"),
                                 r.get("load1")])  # fmt: skip
            r = step.get("issue_full") or {}
            if r:
                rows.append(["issuance c=8", n, r.get("rps"), r.get("p50_ms"), r.get("p99_ms"),
                             r.get("load1") or r.get("reason")])  # fmt: skip
            del size
        lines += _table(["scenario", "rows", "per s", "p50 ms", "p99 ms", "load / note"], rows)
    profiles = Path(__file__).with_name("PROFILES.md")
    if profiles.exists():
        lines += ["", profiles.read_text().strip(), ""]
    return "\n".join(lines) + "\n"
