"""tools/replicas.py: two wlmserver replicas on one shared folder behind Debian's HAProxy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import load_tool

HAPROXY = Path("/usr/sbin/haproxy")
pytestmark = pytest.mark.skipif(not HAPROXY.exists(), reason="haproxy not installed")


def test_two_replicas_behind_haproxy(tmp_path: Path) -> None:
    replicas = load_tool("replicas")
    root = tmp_path / "shared"
    shutil.copytree(replicas.ROOT, root)
    cluster = replicas.start(root, 0.5, tmp_path)
    try:
        aet = replicas.first_aet(root)
        assert replicas.identical(cluster, aet)["answers"] > 0
        waited = replicas.drop_is_served_by_both(cluster, aet, seconds=30.0)
        assert len(waited) == 2
        assert replicas.identical(cluster, aet)  # both serve the drop, HAProxy too
        figures = replicas.failover(cluster, aet, clients=2, seconds=3.0)
    finally:
        cluster.stop()
    assert figures["failed before the kill"] == 0
    # only associations in flight on the killed replica may fail; the other answers the rest
    assert figures["failed after the kill"] <= 2 * 2
    assert figures["answered after the last failure"] > 0
    assert cluster.replicas[1].returncode == 0  # the survivor stopped cleanly on SIGTERM
