"""The configuration file as a user runs it: ``wlmserver --config FILE`` queried by DCMTK's
findscu, with allow-lists and a modality profile."""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import pytest
from conftest import make_dataset, start_wlmserver, stop_wlmserver, write_wl

FINDSCU = Path("/usr/bin/findscu")
pytestmark = pytest.mark.skipif(not FINDSCU.exists(), reason="DCMTK findscu not installed")
TODAY = datetime.date.today().strftime("%Y%m%d")


def _findscu(port: int, calling: str, *keys: str) -> str:
    args = [str(FINDSCU), "-W", "-v", "-aet", calling, "-aec", "WLM", "127.0.0.1", str(port)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr + f"\nexit {result.returncode}"


def test_a_config_file_with_access_and_a_profile(db: Path, tmp_path: Path) -> None:
    for pid, station in (("PCT1", "CT01"), ("PCT2", "CT02"), ("PMR1", "MR01")):
        sps = [{"ScheduledStationAETitle": station, "ScheduledProcedureStepStartDate": TODAY}]
        write_wl(db / "WLM" / f"{pid}.wl", make_dataset(sps, PatientID=pid))
    config = tmp_path / "wlmserver.toml"
    config.write_text(
        f'[server]\ndata-files-path = "{db}"\nport = 0\nbind = "127.0.0.1"\n'
        'aetitle = "WLM"\n\n'
        '[access]\ncalling-ae-titles = ["CT*", "MR01"]\nhosts = ["127.0.0.0/8"]\n\n'
        '[profiles.ct]\ncalling-ae-titles = ["CT*"]\nstation-filter = true\n'
        "date-window = [0, 0]\n"
    )
    process, port, _ = start_wlmserver(["--config", str(config)])
    try:
        ct = _findscu(port, "CT01", "PatientID", "(0040,0100)[0].Modality")
        assert "exit 0" in ct and re.findall(r"\(0010,0020\) LO \[(\w+)", ct) == ["PCT1"], ct
        mr = _findscu(port, "MR01", "PatientID")
        assert sorted(re.findall(r"\(0010,0020\) LO \[(\w+)", mr)) == ["PCT1", "PCT2", "PMR1"]
        refused = _findscu(port, "US01", "PatientID")
        assert "Reason: Calling AE Title Not Recognized" in refused, refused
    finally:
        err = stop_wlmserver(process)
    assert "[profile ct]" in err and "calling AE title not allowed" in err, err
    assert "PCT1" not in err  # no patient data at INFO
