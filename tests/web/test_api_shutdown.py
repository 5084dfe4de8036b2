"""SIGTERM stops `ca-service serve` gracefully: requests in flight are answered and stored."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

from ..live import Reply, start_server


def test_sigterm_finishes_requests_in_flight(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", f"sqlite:///{tmp_path / 'ca.db'}", workers=2)
    replies: list[Reply] = []
    started = threading.Barrier(5)

    def slow_issue() -> None:
        started.wait(timeout=30)
        # An RSA-4096 key made by the server takes long enough to be in flight at SIGTERM.
        replies.append(
            server.request(
                "POST",
                "/api/v1/certificates",
                token=server.admin_token,
                body={"common_name": "slow.example.test", "key_type": "rsa-4096"},
            )
        )

    threads = [threading.Thread(target=slow_issue) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(timeout=30)
    # Give the requests a moment to reach the workers; the assertions below hold either way.
    threading.Event().wait(0.3)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    code = server.proc.wait(timeout=60)

    assert code == 0, server.log()[-2000:]
    assert len(replies) == 4
    assert all(r.status == 201 for r in replies), [r.status for r in replies]
    assert "Traceback" not in server.log()

    # Every certificate answered is in the store.
    with sqlite3.connect(tmp_path / "ca.db") as db:
        stored = {row[0] for row in db.execute("SELECT serial FROM certificates")}
    assert {r.json["serial"] for r in replies} <= stored
