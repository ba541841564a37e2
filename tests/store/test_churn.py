"""Churn under load, the short form of tools/churn.py: 8 clients query a real server process
while its files are created, replaced (atomic rename and in-place rewrite), renamed and
deleted; no torn answer, nothing lost, no error in its log, memory roughly flat."""

from __future__ import annotations

from conftest import load_tool


def test_churn_under_load_answers_whole_versions_and_loses_nothing() -> None:
    churn = load_tool("churn")
    report = churn.run_churn(operations=300, clients=8, files=30, seed=7, rescan_interval=1.0)
    print("\n".join(report.lines()))
    assert not report.failures, "\n".join(report.lines())
    assert report.operations == 300
    assert report.queries >= 8 and report.answers_checked > 0
    assert set(report.kinds) == {"create", "replace", "rewrite", "rename", "delete"}
    assert report.rss_after_mb < report.rss_before_mb + 40, "server memory grew under churn"
