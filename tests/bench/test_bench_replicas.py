"""bench/replicas.py in its tiny plan, so that the scenario cannot rot between real runs: real
PostgreSQL, replicas and haproxy (bench/cluster.py). No timing is asserted, only real figures."""

from __future__ import annotations

import os

import pytest

from bench import cluster, replicas
from bench.common import leaf_csr_pem


@pytest.mark.slow
@pytest.mark.skipif(
    cluster.absent_reason() is not None and not os.environ.get("CI"),
    reason=str(cluster.absent_reason()),
)
def test_tiny_replicas_scenario_measures_one_and_two_replicas() -> None:
    result = replicas.run_scenario("tiny", leaf_csr_pem())
    assert result["status"] == "ok", result
    for key in ("one", "direct", "two"):
        figures = result[key]["c2"]
        assert figures["errors"] == 0, (key, figures)
        assert figures["ok"] > 0 and figures["rps"] > 0 and figures["p99_ms"] > 0, (key, figures)
    # Out of rotation replica2 served nothing; back in, it took its share.
    alone, shared = (result[k]["c2"]["cpu_cores"]["replica2"] for k in ("one", "two"))
    assert alone < shared, (alone, shared)
    assert result["two_vs_one"]["c2"] > 0
    text = replicas.markdown(result)
    assert "## Replicas behind haproxy (issue 14)" in text
    assert text.count("| haproxy | 2 |") == 2 and "| direct | 2 |" in text
