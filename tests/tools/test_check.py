"""``wlmserver check``: every file served, served with warnings, or not served, and why."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest
from conftest import write_wl

from wlmserver.cli import main
from wlmserver.tools import check

TODAY = date(2026, 11, 22)


@pytest.fixture
def mixed(db: Path) -> Path:
    # each file its own requested procedure (the defaults share one), but for twice.wl's steps
    write_wl(db / "WLM" / "good.wl", PatientID="P1", AccessionNumber="A1")
    (db / "WLM" / "garbage.wl").write_bytes(b"this is not DICOM at all" * 10)
    full = write_wl(db / "WLM" / "cut.wl", PatientID="P2").read_bytes()
    (db / "WLM" / "cut.wl").write_bytes(full[: len(full) - 7])
    write_wl(db / "WLM" / "incomplete.wl", AccessionNumber="A3", sps=[{"Modality": None}])
    write_wl(db / "WLM" / "baddate.wl", AccessionNumber="A4", PatientBirthDate="2026x101")
    old = {"ScheduledProcedureStepStartDate": "20250101"}
    write_wl(db / "WLM" / "old.wl", AccessionNumber="A5", sps=[old])
    write_wl(
        db / "WLM" / "twice.wl", AccessionNumber="A6", sps=[{"ScheduledProcedureStepID": "S1"}] * 2
    )
    write_wl(db / "WLM" / ".hidden.wl")  # never served, never checked
    return db


def _by_name(reports: list[check.FileReport]) -> dict[str, check.FileReport]:
    return {Path(r.path).name: r for r in reports}


def test_verdicts_and_reasons(mixed: Path) -> None:
    reports = _by_name(check.check(mixed, today=TODAY))
    assert set(reports) == {
        "good.wl", "garbage.wl", "cut.wl", "incomplete.wl", "baddate.wl", "old.wl", "twice.wl"
    }  # fmt: skip
    assert reports["good.wl"].verdict == check.SERVED and reports["good.wl"].entries == 1
    assert reports["garbage.wl"].verdict == check.NOT_SERVED
    assert "not a DICOM file" in reports["garbage.wl"].problems[0]
    assert reports["cut.wl"].verdict == check.NOT_SERVED
    assert "cut short" in reports["cut.wl"].problems[0]
    incomplete = reports["incomplete.wl"]
    assert incomplete.verdict == check.NOT_SERVED and "Modality" in incomplete.problems[0]
    bad = reports["baddate.wl"]
    assert bad.verdict == check.WARNING and bad.entries == 1
    assert any("PatientBirthDate (0010,0030): not a valid DA value" in p for p in bad.problems)
    assert not any("2026x101" in p for p in bad.problems)  # no patient data in messages
    old = reports["old.wl"]
    assert old.verdict == check.WARNING and "more than 30 days ago" in old.problems[0]
    twice = reports["twice.wl"]
    assert twice.verdict == check.WARNING and twice.entries == 2
    assert any("ScheduledProcedureStepID (0040,0009) used 2 times" in p for p in twice.problems)


def test_past_days_threshold_and_dfr(mixed: Path) -> None:
    reports = _by_name(check.check(mixed, today=TODAY, past_days=None))
    assert reports["old.wl"].verdict == check.SERVED
    lenient = _by_name(check.check(mixed, today=TODAY, reject_incomplete=False))
    assert lenient["incomplete.wl"].verdict == check.WARNING
    assert lenient["incomplete.wl"].entries == 1


def test_one_folder_or_one_file(mixed: Path) -> None:
    assert len(check.check(mixed / "WLM", today=TODAY)) == 7
    (report,) = check.check(mixed / "WLM" / "good.wl", today=TODAY)
    assert report.verdict == check.SERVED and report.folder == "WLM"


def test_command_text_output_and_exit_status(
    mixed: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(mixed), "--past-days", "-1"]) == 1
    out = capsys.readouterr().out
    assert "NOT SERVED" in out and "garbage.wl" in out and "good.wl" not in out
    assert "7 files in 1 AE folders (WLM): 2 served, 2 served with warnings, 3 not served" in out
    assert main(["check", str(mixed / "WLM" / "good.wl")]) == 0


def test_command_json_output(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(mixed), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["summary"]["files"] == 7 and document["summary"]["not_served"] == 3
    verdicts = {Path(f["path"]).name: f["verdict"] for f in document["files"]}
    assert verdicts["good.wl"] == "served" and verdicts["cut.wl"] == "not served"


def test_the_bundled_database_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--past-days", "-1"]) == 0
    assert "0 not served" in capsys.readouterr().out


def test_an_sps_id_repeated_across_files_is_flagged_in_both(db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", AccessionNumber="A1")
    write_wl(db / "WLM" / "b.wl", AccessionNumber="A1")
    write_wl(db / "WLM" / "c.wl", AccessionNumber="A2")
    reports = _by_name(check.check(db, today=TODAY))
    assert reports["a.wl"].verdict == reports["b.wl"].verdict == check.WARNING
    assert "(a.wl, b.wl)" in reports["a.wl"].problems[0]
    assert reports["c.wl"].verdict == check.SERVED


def test_json_drops_are_checked_with_the_option(db: Path) -> None:
    order = {"PatientName": "DOE^JANE", "PatientID": "P9", "AccessionNumber": "A9"}
    (db / "WLM" / "order.json").write_text(json.dumps(order), encoding="utf-8")
    assert check.check(db, today=TODAY) == []
    (report,) = check.check(db, today=TODAY, json_drops=True)
    assert (
        report.verdict == check.NOT_SERVED and "no scheduled procedure step" in report.problems[0]
    )


def test_files_that_are_not_regular_are_reported(db: Path) -> None:
    """check says why a FIFO or a device link is not served, and does not block on it."""
    write_wl(db / "WLM" / "good.wl")
    os.mkfifo(db / "WLM" / "pipe.wl")
    (db / "WLM" / "zero.wl").symlink_to("/dev/zero")
    reports = _by_name(check.check(db, today=TODAY))
    assert reports["good.wl"].verdict == check.SERVED
    assert reports["pipe.wl"].verdict == check.NOT_SERVED
    assert reports["pipe.wl"].problems == ["a FIFO (named pipe), not a regular file: not read"]
    assert reports["zero.wl"].problems == ["a character device, not a regular file: not read"]
    (one,) = check.check(db / "WLM" / "pipe.wl", today=TODAY)  # named on its own, too
    assert one.verdict == check.NOT_SERVED


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def aged(db: Path) -> Path:
    def steps(*dates: str) -> list[dict[str, str]]:
        return [
            {"ScheduledProcedureStepStartDate": d, "ScheduledProcedureStepID": f"S{n}"}
            for n, d in enumerate(dates, 1)
        ]

    write_wl(
        db / "WLM" / "old.wl", PatientName="SECRET^OLD", AccessionNumber="A1", sps=steps("20250101")
    )
    write_wl(db / "WLM" / "mixed.wl", AccessionNumber="A2", sps=steps("20250101", "20261201"))
    write_wl(db / "WLM" / "current.wl", AccessionNumber="A3", sps=steps("20261201"))
    return db


def test_retention_report_changes_nothing(
    aged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    before = _tree(aged)
    assert (
        main(["check", str(aged), "--retention-days", "30", "--archive-folder", str(archive)]) == 0
    )
    out = capsys.readouterr().out.partition("retention --retention-days 30")[2]
    assert _tree(aged) == before and not archive.exists()
    assert "WLM: 2 steps would be hidden, 1 files would move" in out
    assert f"{aged / 'WLM' / 'old.wl'}: item 1 SPS S1 2025-01-01 (would move to" in out
    assert "mixed.wl: item 1 SPS S1 2025-01-01 (1 of 2 steps hidden, the file stays)" in out
    assert "current.wl" not in out and "SECRET" not in out


def test_retention_report_says_a_linked_archive_folder_is_not_followed(
    aged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "WLM").symlink_to(aged / "WLM")  # a run refuses it (issue 20)
    assert (
        main(["check", str(aged), "--retention-days", "30", "--archive-folder", str(archive)]) == 0
    )
    out = capsys.readouterr().out
    assert "1 files would move but stay: " in out and "is a symbolic link" in out


def test_retention_report_in_json(aged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(aged / "WLM"), "--json", "--retention-days", "30"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["retention"]["folders"] == {"WLM": {"hidden": 2, "moves": 0}}
    files = {Path(f["path"]).name: f["retention"] for f in document["files"]}
    assert files["current.wl"] is None
    assert files["old.wl"]["hidden"] == [{"item": 1, "sps_id": "S1", "start_date": "2025-01-01"}]
    assert main(["check", str(aged), "--json"]) == 0  # without the option: no retention key
    document = json.loads(capsys.readouterr().out)
    assert "retention" not in document and "retention" not in document["files"][0]


def test_retention_uses_the_scheduled_date(aged: Path) -> None:
    reports = _by_name(
        check.check(aged, today=TODAY, retention=check.RetentionPolicy(30), archive=True)
    )
    old = reports["old.wl"].retention
    assert old is not None and old.moves
    mixed = reports["mixed.wl"].retention
    assert mixed is not None and not mixed.moves
    assert reports["current.wl"].retention is None
    # one day more: exactly 30 days after the current step nothing changes for it
    later = _by_name(
        check.check(aged, today=date(2026, 12, 31), retention=check.RetentionPolicy(30))
    )
    assert later["current.wl"].retention is None
    assert (
        _by_name(check.check(aged, today=date(2027, 1, 1), retention=check.RetentionPolicy(30)))[
            "current.wl"
        ].retention
        is not None
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--archive-folder", "ARCHIVE"], "--archive-folder needs --retention-days"),
        (["--retention-days", "0"], "positive whole number"),
        (["--retention-days", "30", "--archive-folder", "WLM/old"], "inside the AE folder WLM"),
    ],
)
def test_retention_option_errors(
    aged: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(aged / a) if a.startswith(("WLM", "ARCHIVE")) else a for a in args]
    with pytest.raises(SystemExit) as exited:
        main(["check", str(aged), *args])
    assert exited.value.code == 2 and message in capsys.readouterr().err
