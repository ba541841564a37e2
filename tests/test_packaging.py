"""The wheel: the example database inside the package, and nothing a running server wrote
in the checkout (an MPPS folder holds patient data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_example_database_and_no_mpps_folder(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")  # the build backend (in the test extra)
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", ".*_cache", "*.egg-info", "build", "dist", ".mpps"
        ),
    )
    # what a server on the bundled database leaves in a checkout
    mpps = source / "wlistdb" / ".mpps"
    mpps.mkdir()
    (mpps / "1.2.3.dcm").write_bytes(b"patient data")
    (source / "wlistdb" / "CT01" / "__pycache__").mkdir()
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("wlmserver-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if ".mpps" in n or "__pycache__" in n]
    shipped = {n for n in names if n.startswith("wlmserver/wlistdb/")}
    tracked = {
        "wlmserver/" + str(p.relative_to(ROOT))
        for p in (ROOT / "wlistdb").rglob("*")
        if p.is_file() and ".mpps" not in p.parts and "__pycache__" not in p.parts
    }
    assert shipped == tracked and any(n.endswith(".wl") for n in shipped)
    assert "wlmserver/cli.py" in names and "wlmserver/store/index.py" in names
