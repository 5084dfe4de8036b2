"""Smaller defects found in review (issue 9, item 9): each test fails on the code before the fix.

- ``renew --all-due`` read at most 10,000 certificates, newest first, so above that the oldest,
  most due ones were never renewed: it now pages through all of them, the most due first.
- ``issue_with_new_key`` generated the key before the policy check, so a refused RSA-4096
  request still spent the CPU: policy now decides first.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from ca_service.clock import FixedClock
from ca_service.domain import Actor, CallerPolicy, KeyType, RevocationReason
from ca_service.errors import PolicyRejected

from ..conftest import ADMIN
from ..helpers import cli_run, count_key_generation, module_ca


def test_renew_all_due_pages_through_every_certificate_most_due_first(
    tmp_path: Path, db_url: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    clock = FixedClock(now - dt.timedelta(days=25))
    ca = module_ca(tmp_path, db_url=db_url, clock=clock)
    # Seven due certificates of 30 days issued about 25 days ago, ``rank`` hours apart (rank 0,
    # the oldest, is the most due), issued out of order so that neither the id nor the order
    # of insertion gives the expected order by chance.
    due: dict[int, str] = {}
    for rank in [3, 0, 6, 1, 5, 2, 4]:
        clock.at = now - dt.timedelta(days=25, hours=6 - rank)
        name = f"due{rank}.example.test"
        due[rank] = ca.issue_with_new_key(ADMIN, common_name=name, validity_days=30).record.serial
    # Not considered: a revoked one, and one with most of its life left.
    clock.at = now - dt.timedelta(days=25)
    gone = ca.issue_with_new_key(ADMIN, common_name="gone.example.test", validity_days=30)
    ca.revoke(gone.record.serial, RevocationReason.SUPERSEDED, ADMIN)
    clock.at = now
    fresh = ca.issue_with_new_key(ADMIN, common_name="fresh.example.test", validity_days=30)
    ca.db.dispose()

    out = tmp_path / "out"
    result = cli_run(ca.settings, ["renew", "--all-due", "--page-size", "2", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    renewed = re.findall(r"^([0-9a-f]+): renewed as ([0-9a-f]+)", result.stdout, re.M)
    # Every due certificate, over four pages of two, the oldest (most due) first; the
    # certificates this run issued are not renewed again.
    assert [old for old, _ in renewed] == [due[rank] for rank in sorted(due)]
    assert "renewed 7, skipped 1" in result.stderr
    for _, new in renewed:
        assert new not in due.values()
    assert gone.record.serial not in result.stdout and fresh.record.serial not in result.stdout
    # A second run finds nothing due: every old one has its successor.
    again = cli_run(ca.settings, ["renew", "--all-due", "--page-size", "2", "--out-dir", str(out)])
    assert again.exit_code == 0 and "renewed 0," in again.stderr


@pytest.mark.parametrize(
    ("policy", "request_args", "rule"),
    [
        (CallerPolicy(allowed_names=("*.ci.example.test",)), {"common_name": "x.example.org"},
         "caller.allowed_names"),
        (CallerPolicy(allowed_names=("*.ci.example.test",), authorities=("elsewhere",)),
         {"common_name": "a.ci.example.test"}, "caller.authorities"),
        (CallerPolicy(allowed_names=("*.ci.example.test",), max_validity_days=7),
         {"common_name": "a.ci.example.test", "validity_days": 90}, "caller.max_validity"),
    ],
)  # fmt: skip
def test_a_refused_request_for_a_generated_key_makes_no_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: CallerPolicy,
    request_args: dict[str, Any],
    rule: str,
) -> None:
    ca = module_ca(tmp_path)
    calls = count_key_generation(monkeypatch)
    issuer = Actor("token:issuer", policy=policy)
    with pytest.raises(PolicyRejected) as refused:
        ca.issue_with_new_key(issuer, key_type=KeyType.RSA_4096, **request_args)
    assert refused.value.rule == rule
    assert calls == []
    # The same caller within its policy: exactly one key, of the type asked for, certified.
    issued = ca.issue_with_new_key(
        Actor("token:issuer", policy=CallerPolicy(allowed_names=("*.ci.example.test",))),
        common_name="ok.ci.example.test",
        key_type=KeyType.ECDSA_P256,
    )
    assert calls == [KeyType.ECDSA_P256]
    assert issued.private_key_pem is not None and issued.record.key_type == "ecdsa-p256"
