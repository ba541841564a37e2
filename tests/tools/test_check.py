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
        (["--archive-folder", "ARCHIVE"], "ARCHIVE needs --retention-days N"),
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


def _complete(folder: Path, accession: str) -> None:
    """An MPPS in ``folder`` that completed the default step of ``accession``."""
    from conftest import STEP_DEFAULTS, make_final, make_mpps

    from wlmserver.store.mpps import MppsStore

    mpps = MppsStore(folder)
    mpps.load()
    uid = f"1.2.826.0.1.3680043.10.9999.9{len(list(folder.iterdir()))}"
    mpps.create(uid, make_mpps(steps=[{**STEP_DEFAULTS, "AccessionNumber": accession}]))
    mpps.set(uid, make_final())


@pytest.fixture
def statuses(db: Path) -> Path:
    """Three steps: one COMPLETED by an MPPS (in a folder of its own), one DISCONTINUED in
    its file, one to do."""
    write_wl(db / "WLM" / "done.wl", AccessionNumber="A1")
    write_wl(
        db / "WLM" / "given-up.wl",
        AccessionNumber="A2",
        StudyInstanceUID="1.2.826.0.1.3680043.10.9999.2",
        sps=[{"ScheduledProcedureStepStatus": "DISCONTINUED"}],
    )
    write_wl(db / "WLM" / "todo.wl", AccessionNumber="A3", StudyInstanceUID="1.2.3.3")
    _complete(db.parent / "mpps", "A1")
    return db


def test_steps_hidden_by_their_status_are_not_counted_as_served(
    statuses: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check applies the statuses the server applies, from the configured MPPS folder and
    the files, and reports the hidden steps apart (issue 19: it counted 33 steps served
    where the server answers 31)."""
    config = tmp_path / "wlmserver.toml"
    config.write_text(f'[server]\ndata-files-path = "{statuses}"\nmpps-folder = "mpps"\n')
    assert main(["check", "--config", str(config), "--past-days", "-1"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"wlmserver check: database {statuses} (data-files-path of {config}:2); MPPS folder "
        f"{tmp_path / 'mpps'} (mpps-folder of {config}:3): 1 instances"
    ]
    assert captured.out.splitlines() == [
        "HIDDEN     steps the server does not answer (hide-status COMPLETED,DISCONTINUED; a "
        "query asking for a status gets them):",
        f"           - {statuses / 'WLM' / 'done.wl'}: SPS item 1 (SPS SPS001): status "
        "COMPLETED (reported by an MPPS)",
        f"           - {statuses / 'WLM' / 'given-up.wl'}: SPS item 1 (SPS SPS001): status "
        "DISCONTINUED (in the file)",
        f"{statuses}: 3 files in 1 AE folders (WLM): 3 served, 0 served with warnings, 0 not "
        "served; 1 scheduled procedure steps served (2 hidden by their status, not served)",
        f"MPPS folder {tmp_path / 'mpps'}: 1 instances (limit 100000, 0%), 0.0 MiB (limit "
        "4096.0 MiB, 0%)",
    ]
    # the command line overrides the file, as on the server's
    assert main(["check", "--config", str(config), "--json", "--hide-status", "COMPLETED"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["summary"]["entries"] == 2 and document["summary"]["hidden_by_status"] == 1
    assert document["mpps_folder"] == str(tmp_path / "mpps")
    hidden = {Path(f["path"]).name: f["hidden"] for f in document["files"]}
    assert hidden["done.wl"] == [
        {"item": 1, "sps_id": "SPS001", "status": "COMPLETED", "reported": True}
    ]
    assert hidden["given-up.wl"] == []
    # without the configuration, the default MPPS folder (ROOT/.mpps) has nothing: say so
    assert main(["check", str(statuses), "--past-days", "-1"]) == 0
    captured = capsys.readouterr()
    assert "1 hidden by their status" in captured.out
    assert f"MPPS folder {statuses / '.mpps'} (the default, ROOT/.mpps): absent" in captured.err


def test_retention_from_the_configuration_is_not_served(
    aged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "wlmserver.toml"
    config.write_text(f'[server]\ndata-files-path = "{aged}"\nretention-days = 30\n')
    assert main(["check", "--config", str(config), "--past-days", "-1"]) == 0
    out = capsys.readouterr().out
    assert "; 2 scheduled procedure steps served (2 past retention, not served)" in out
    assert "retention --retention-days 30" in out


def test_the_bundled_example_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--past-days", "-1"]) == 0
    err = capsys.readouterr().err
    assert ": the BUNDLED EXAMPLE, not a configured database (no database given, no --config" in err


def test_an_unreadable_mpps_folder_is_named(
    statuses: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run as another user than the server's, the MPPS folder (0700) cannot be read: check
    says so, and that the reported statuses are not applied (the tests run as root, who
    reads every folder: the refusal is made here)."""
    from wlmserver.store.mpps import MppsStore

    def refused(self: MppsStore, create: bool = True, tidy: bool = True) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(MppsStore, "load", refused)
    main(["check", str(statuses), "--mpps-folder", str(statuses.parent / "mpps")])
    err = capsys.readouterr().err
    assert "(given): cannot read it (Permission denied): the statuses modalities reported " in err
    assert "are NOT applied; run this as the server's user" in err


def test_files_only_their_owner_can_read_are_named(db: Path) -> None:
    """check judges as the server's user would, not as whoever runs it (root, the writer):
    a file only its owner can read is a warning with the reason (issue 19)."""
    private = write_wl(db / "WLM" / "private.wl", AccessionNumber="A1")
    private.chmod(0o600)
    group = write_wl(db / "WLM" / "group.wl", AccessionNumber="A2")
    group.chmod(0o640)
    write_wl(db / "WLM" / "all.wl", AccessionNumber="A3").chmod(0o644)
    reports = _by_name(check.check(db, today=TODAY, past_days=None))
    assert reports["all.wl"].verdict == reports["group.wl"].verdict == check.SERVED
    report = reports["private.wl"]
    assert report.verdict == check.WARNING
    assert report.problems[0].startswith("only its owner can read it (mode 0600, ")
    assert "a server running as another user does not serve it" in report.problems[0]
    (db / "WLM").chmod(0o700)
    try:
        reports = _by_name(check.check(db, today=TODAY, past_days=None))
    finally:
        (db / "WLM").chmod(0o755)
    assert all(r.verdict == check.WARNING for r in reports.values())
    assert "can be listed by its owner only (mode 0700, " in reports["all.wl"].problems[0]


def test_a_file_in_the_current_folder(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wl(db / "WLM" / "a.wl")
    monkeypatch.chdir(db / "WLM")
    assert main(["check", "a.wl"]) == 0
    captured = capsys.readouterr()
    assert "1 files in 1 AE folders (WLM): 1 served" in captured.out
    assert captured.err.startswith(f"wlmserver check: database {db} (given)")
