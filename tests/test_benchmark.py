"""A smoke run of the benchmark on a tiny store: its queries are real (answer counts equal what
the store holds) and its report has every figure. No timing is asserted here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from wlmserver.index import WorklistStore
from wlmserver.query import compile_query

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "tools" / "benchmark.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_store_is_deterministic_and_served(tmp_path: Path) -> None:
    tool = _tool()
    files = tool.generate(tmp_path / "a" / "WLM", 120, 3, "20261122")
    tool.generate(tmp_path / "b" / "WLM", 120, 3, "20261122")
    for path in (tmp_path / "a" / "WLM").glob("*.wl"):
        assert path.read_bytes() == (tmp_path / "b" / "WLM" / path.name).read_bytes()
    store = WorklistStore(tmp_path / "a")
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None and folder.rejected == 0
    assert len(folder.files) == files and len(folder.entries) == 120


def test_smoke_run_reports_real_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = _tool()
    out = tmp_path / "bench.json"
    argv = [
        "--sizes",
        "60",
        "--workdir",
        str(tmp_path),
        "--repeat",
        "2",
        "--max-seconds",
        "5",
        "--concurrency-seconds",
        "0.5",
        "--universal-timeout",
        "20",
        "--json",
        str(out),
    ]
    assert tool.main(argv) == 0
    (size,) = json.loads(out.read_text())["sizes"]
    ours = size["wlmserver"]
    store = WorklistStore(next(tmp_path.glob("store-60-*")))
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None
    for kind in tool.QUERIES:
        query = compile_query(tool._query(kind, "20261122"))
        expected = sum(1 for e in folder.entries if query.matches(e))
        assert ours[kind]["answers"] == expected, kind
        assert ours[kind]["p50_ms"] > 0
    assert ours["qps_8_clients"] > 0
    assert ours["drop_ms"]["count"] == 20 and ours["drop_ms"]["p95"] < 5000
    assert ours["cancel_status"] in (0xFE00, 0x0000)  # 60 answers may all go before the cancel
    assert size["wlmserver_index_s"] > 0 and size["wlmserver_rss_mb_indexed"] > 0
    if tool.FINDSCU.exists():
        assert ours["universal"]["answers"] == 60
    if "wlmscpfs" in size:
        assert size["wlmscpfs"]["station"]["answers"] <= ours["station"]["answers"]
    printed = capsys.readouterr().out
    assert "queries/s, 8 clients" in printed and "scpfs/wlm" in printed
