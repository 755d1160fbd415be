"""A storm over N nodes makes O(N) requests for the "also on N other nodes" line, not N^2 (issue
28): counted for 12 and 100 simulated instances (tests/fleet_storm.py: real services and
stores, one counting transport answering as the peers and Prometheus would). Before issue 28 the
same harness counts N (N - 1): 132 and 9,900."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.fleet_storm import storm_requests


@pytest.mark.parametrize("n", [12, 100])
def test_prometheus_one_query_a_report(n: int) -> None:
    found = asyncio.run(storm_requests(n, prometheus=True))
    assert found["by_target"] == {"prometheus": n}
    # every node's line names all the others: one query sees the whole fleet
    assert all(line.startswith(f"also on {n - 1} other nodes: ") for line in found["lines"]), found["lines"][:3]


@pytest.mark.parametrize("n", [12, 100])
def test_peers_a_sample_a_report(n: int) -> None:
    sample = 5
    found = asyncio.run(storm_requests(n, prometheus=False, peer_sample=sample))
    assert found["by_target"] == {"peer": n * sample}
    for line in found["lines"]:
        m = re.match(rf"also on at least (\d+) other nodes \({sample} of {n - 1} peers asked\): ", line)
        assert m is not None and int(m.group(1)) == sample, line  # every peer asked holds the Deployment


def test_small_cluster_asks_every_peer() -> None:
    found = asyncio.run(storm_requests(6, prometheus=False, peer_sample=16))
    assert found["by_target"] == {"peer": 6 * 5}
    assert all(line.startswith("also on 5 other nodes: ") for line in found["lines"])
