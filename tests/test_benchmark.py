"""tools/benchmark.py: its generated stores are what it says, and a smoke run on a tiny store
asks real queries (every answer count equals the count computed here from the files
themselves) and reports every figure. No timing is asserted."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_tool
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ROOT = Path(__file__).resolve().parent.parent
DATE = "20261122"
SPS_KEYS = {"ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartDate"}
#: PS3.4 Table K.6-1 Type 1 keys (a description or its code sequence; both are written).
TYPE1_TOP = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
)
TYPE1_SPS = (
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
)


def _benchmark() -> ModuleType:
    return load_tool("benchmark")


def _bench(module: str) -> ModuleType:
    """A module of ``tools/bench``, the package the script runs (loading it puts ``tools/`` on
    ``sys.path``)."""
    _benchmark()
    return importlib.import_module(f"bench.{module}")


def _entries(root: Path) -> Iterator[tuple[Dataset, Dataset, int]]:
    """Every (file dataset, SPS item, number of SPS items) of a store, read with pydicom."""
    for path in sorted((root / "WLM").glob("*.wl")):
        ds = dcmread(path)
        items = ds.ScheduledProcedureStepSequence
        for item in items:
            yield ds, item, len(items)


def _values(element_value: Any) -> list[str]:
    """An attribute's values as strings (a multi-valued one gives several)."""
    if isinstance(element_value, MultiValue):
        return [str(v) for v in element_value]
    return [str(element_value)]


def _count(root: Path, keys: dict[str, str], single_sps_only: bool = False) -> int:
    """How many SPS items of the store match ``keys``, by this test's own matching."""
    count = 0
    for ds, item, items in _entries(root):
        if single_sps_only and items != 1:
            continue
        matched = True
        for keyword, wanted in keys.items():
            values = _values((item if keyword in SPS_KEYS else ds).get(keyword, ""))
            if wanted.endswith("*"):
                matched &= any(v.startswith(wanted[:-1]) for v in values)
            else:
                matched &= wanted in values
        count += matched
    return count


def test_generated_store_is_complete_deterministic_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = _bench("store")
    store = tool.ensure_store(tmp_path / "a", 120, 3, DATE, 1)
    again = tool.ensure_store(tmp_path / "a", 120, 3, DATE, 1)
    monkeypatch.setattr(tool, "CHUNK", 25)
    other = tool.ensure_store(tmp_path / "b", 120, 3, DATE, 2)  # 5 jobs in 2 processes
    assert store.generated_s is not None and again.generated_s is None  # the second reuses
    assert again.files == store.files
    names = sorted(p.name for p in (store.root / "WLM").iterdir())
    assert names == sorted(["lockfile", *(wl.name for wl in store.files)])
    for wl in store.files:
        data = (store.root / "WLM" / wl.name).read_bytes()
        assert data == (other.root / "WLM" / wl.name).read_bytes()
    entries = list(_entries(store.root))
    assert len(entries) == 120
    by_accession = {wl.accession: wl for wl in store.files}
    for ds, item, items in entries:
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        for keyword in TYPE1_TOP:
            assert ds.get(keyword), keyword
        for keyword in TYPE1_SPS:
            assert item.get(keyword), keyword
        wl = by_accession[ds.AccessionNumber]  # the manifest says what the file holds
        assert (ds.PatientID, str(ds.PatientName), items) == (
            wl.patient_id,
            wl.patient_name,
            len(wl.steps),
        )
        assert ds.get("SpecificCharacterSet") == ("ISO_IR 100" if wl.latin1 else None)
    assert any(len(wl.steps) == 2 for wl in store.files)
    assert any(wl.latin1 and not wl.patient_name.isascii() for wl in store.files)
    assert len({wl.patient_id for wl in store.files}) < len(store.files)  # repeat patients


def test_smoke_run_asks_real_queries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = _benchmark()
    out = tmp_path / "bench.json"
    argv = ["--sizes", "50", "--repeat", "2", "--concurrency-seconds", "1"]
    argv += ["--max-seconds", "5", "--drops", "3", "--workdir", str(tmp_path), "--json", str(out)]
    assert tool.main(argv) == 0
    figures = json.loads(out.read_text())
    assert set(figures) == {"machine", "options", "sizes"}
    assert {"nproc", "cpu", "python", "pydicom", "pynetdicom", "dcmtk"} <= set(figures["machine"])
    (size,) = figures["sizes"]
    assert size["size"] == 50 and size["mismatches"] == [] and size["errors"] == []
    root = Path(size["store"])
    servers = size["servers"]
    cli = _bench("cli")
    expect_wlmscpfs = cli._executable(cli.WLMSCPFS) is not None
    assert set(servers) == {"wlmserver", "floor"} | ({"wlmscpfs"} if expect_wlmscpfs else set())
    queries = size["queries"]
    assert list(queries) == ["station", "patient", "accession", "name", "person", "universal"]

    ours = servers["wlmserver"]
    assert ours["startup_s"] > 0 and ours["rss_mb_ready"] > 0 and ours["rss_mb_after"] > 0
    for key in ("station", "patient", "accession", "name", "person"):
        keys = queries[key]["keys"]
        assert keys, key
        direct = _count(root, keys)
        assert direct > 0, f"query {key} finds nothing in the store: not a useful benchmark"
        assert queries[key]["expected"] == direct, key
        assert queries[key]["expected_single_sps"] == _count(root, keys, single_sps_only=True)
        got = ours["queries"][key]
        assert got["answers"] == direct and not got["answers_vary"], key
        assert got["statuses"] == [0] and got["runs"] == 2, key
        assert {"p50_ms", "p95_ms", "latencies_ms"} <= set(got)
        assert got["lean"]["answers"] == direct and got["lean"]["runs"] == 2, key
    assert ours["concurrency"]["queries"] > 0 and ours["concurrency"]["errors"] == 0
    assert ours["concurrency_lean"]["queries"] > 0 and ours["concurrency_lean"]["errors"] == 0
    assert ours["universal"]["answers"] == 50 and ours["universal"]["complete"]
    # a cancel after the first answer: Cancel, or (50 answers are quickly sent) all answers
    cancel = ours["cancel"]
    assert cancel["status"] == 0xFE00 or (
        cancel["status"] == 0 and cancel["answers_after_cancel"] == 49
    )

    # files renamed into the folder are answered (within the benchmark's 5 s bound), and
    # removed again: the store is left as generated, to be reused
    assert ours["drops"]["count"] == 3 and ours["drops"]["answered"] == 3
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    left = sorted(p.name for p in (root / "WLM").iterdir())
    assert left == sorted(["lockfile", *(f"{wl['index']:07d}.wl" for wl in manifest["files"])])

    floor = servers["floor"]
    assert floor["queries"]["station"]["answers"] == ours["queries"]["station"]["answers"]
    assert set(floor["queries"]) == {"station"} and floor["concurrency"]["errors"] == 0

    if expect_wlmscpfs:  # it serves the generated files, except those with two SPS items
        theirs = servers["wlmscpfs"]
        for key in ("station", "patient", "accession", "name", "person"):
            expected = queries[key]["expected_single_sps"]
            assert theirs["queries"][key]["answers"] == expected, key
        assert theirs["universal"]["answers"] == _count(root, {}, single_sps_only=True)
        if cli._executable(cli.FINDSCU) is not None:
            assert theirs["universal_findscu"]["answers"] == theirs["universal"]["answers"]
            assert ours["universal_findscu"]["answers"] == 50
    if cli._executable(cli.FINDSCU) is not None:  # findscu per query kind, Nagle on and off
        for key in ("station", "patient", "accession", "name", "person"):
            for client in ("findscu", "findscu_nodelay"):
                got = ours["queries"][key][client]
                assert got["answers"] == queries[key]["expected"] and got["runs"] == 2, key
        loops = ours["concurrency_findscu"]
        assert loops["queries"] > 0 and loops["errors"] == 0
        assert "concurrency_findscu" not in servers["floor"]  # the floor is pynetdicom only

    printed = capsys.readouterr().out
    assert "scpfs/wlm" in printed and "wlm/floor" in printed
    if cli._executable(cli.FINDSCU) is not None:
        assert "p50 ms, findscu NODELAY" in printed and "findscu clients, (a)" in printed
    for query in queries.values():
        if query["label"] != "universal":
            assert query["label"] in printed
