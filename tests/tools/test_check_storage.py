"""``wlmserver check``'s storage report (issue 20): how full the MPPS folder, its forwarding
queue and the request-capture folder are, against the server's limits (its configuration
file's with ``--config``), without a running server and without changing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_final, make_mpps, write_wl

from wlmserver.cli import main
from wlmserver.config import Config
from wlmserver.store.forward import ForwardQueue, forward_folder
from wlmserver.store.mpps import MppsStore
from wlmserver.tools import check

UID = "1.2.826.0.1.3680043.10.9999.300"


@pytest.fixture
def served(db: Path, tmp_path: Path) -> Path:
    write_wl(db / "WLM" / "a.wl")
    store = MppsStore(db / ".mpps", queue=ForwardQueue(forward_folder(db / ".mpps")))
    store.load()
    store.create(UID, make_mpps())
    store.set(UID, make_final())
    assert store.archive_finished("20991231") == 0  # queued for the RIS: it stays
    store.create("1.2.826.0.1.3680043.10.9999.301", make_mpps())
    captures = tmp_path / "captures"
    captures.mkdir()
    for n in range(3):
        (captures / f"{n}.dump").write_text("(0010,0020) LO [x]\n")
    (tmp_path / "wlmserver.toml").write_text(
        '[server]\nmax-mpps-instances = 2\nmax-capture-files = 3\nrequest-file-path = "captures"\n'
    )
    return db


def test_the_text_report_says_how_full_each_folder_is(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in (served / ".mpps").rglob("*"))
    assert main(["check", str(served), "--config", str(tmp_path / "wlmserver.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    (mpps,) = [line for line in out if line.startswith("MPPS folder ")]
    assert "2 instances (limit 2, 100%)" in mpps and "FULL: new N-CREATEs are refused" in mpps
    (queue,) = [
        line for line in out if line.startswith("MPPS forwarding queue ") and "limit" in line
    ]
    assert "3 messages (limit 20000, 0%)" in queue and "FULL" not in queue
    (captures,) = [line for line in out if line.startswith("request captures ")]
    assert "3 files (limit 3, 100%)" in captures and "no more are captured" in captures
    assert sorted(p.name for p in (served / ".mpps").rglob("*")) == before  # changes nothing


def test_the_json_report_and_the_defaults(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["check", str(served), "--json", "--request-file-path", str(tmp_path / "captures")])
        == 0
    )
    storage = json.loads(capsys.readouterr().out)["storage"]
    assert storage["mpps"]["count"] == 2 and storage["mpps"]["max_count"] == 100_000
    assert storage["mpps"]["full"] is False and storage["mpps"]["archived"] == 0
    assert storage["mpps_forward"]["count"] == 3
    assert storage["captures"] == {
        "folder": str(tmp_path / "captures"),
        "count": 3,
        "size": 57,
        "max_count": 10_000,
        "max_size": 64 << 20,
        "full": False,
    }


def test_no_mpps_folder_no_storage_lines(db: Path) -> None:
    write_wl(db / "WLM" / "a.wl")
    assert check.storage(Config(db)) == []


def test_a_configuration_file_that_does_not_load_is_a_usage_error(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax-mpps-instances = -1\n")
    with pytest.raises(SystemExit) as exited:
        main(["check", str(served), "--config", str(bad)])
    assert exited.value.code == 2 and "max-mpps-instances" in capsys.readouterr().err
