"""``wlmserver explain``: which key stops an entry, by the server's own matching."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_wl

from wlmserver.cli import main


@pytest.fixture
def store(db: Path) -> Path:
    write_wl(
        db / "WLM" / "ct.wl",
        PatientName="NAKAMURA^KENJI",
        PatientID="P1",
        AccessionNumber="A1",
        sps=[
            {"ScheduledStationAETitle": "CT1", "Modality": "CT"},
            {
                "ScheduledStationAETitle": "CT01",
                "Modality": "CT",
                "ScheduledProcedureStepID": "S2",
                "ScheduledProcedureStepStartDate": "20261121",
                "ScheduledProcedureStepStartTime": "0930",
            },
        ],
    )
    write_wl(db / "WLM" / "mr.wl", PatientID="P2", AccessionNumber="A2", sps=[{"Modality": "MR"}])
    return db


def _run(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(["explain", str(store), *args])
    return status, capsys.readouterr().out.splitlines()


def test_each_failing_key_with_query_and_entry_values(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = _run(store, capsys, "--station", "CT01", "--date", "20261122")
    by_where = {line.split()[1].rstrip(":"): line for line in lines}
    assert status == 0 and by_where["WLM/mr.wl#1"] == "MATCH  WLM/mr.wl#1"
    first = by_where["WLM/ct.wl#1"]
    assert first.startswith("NO ")
    assert "ScheduledStationAETitle (0040,0001): query CT01, entry has CT1" in first
    second = by_where["WLM/ct.wl#2"]
    assert (
        "ScheduledProcedureStepStartDate (0040,0002): query 20261122, entry has 20261121" in second
    )
    assert "Modality" not in second


def test_matches_and_combined_date_time(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = ["-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261121"]
    query += ["-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1000-1200"]
    status, lines = _run(store, capsys, *query, "--entry-accession", "A1")
    assert status == 1 and len(lines) == 2  # only the entries of accession A1
    assert any(
        "ScheduledProcedureStepStartDate/Time: entry 20261121 0930 outside the query's "
        "20261121 1000-1200" in line
        for line in lines
    )
    status, lines = _run(store, capsys, "--modality", "MR")
    assert status == 0 and [line for line in lines if line.startswith("MATCH")] == [
        "MATCH  WLM/mr.wl#1"
    ]


def test_person_name_case_hint(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, lines = _run(store, capsys, "--name", "nakamura*", "--entry-patient-id", "P1")
    assert all("case (or accents) differ" in line for line in lines) and len(lines) == 2
    status, lines = _run(store, capsys, "--name", "nakamura*", "--pn-case-insensitive")
    assert status == 0 and sum(line.startswith("MATCH") for line in lines) == 2


def test_invalid_query_and_unknown_folder(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=2026xx01"
    status, lines = _run(store, capsys, "-k", bad)
    assert status == 1 and "status 0xA900" in lines[0]
    status, lines = _run(store, capsys, "-aec", "NOSUCH")
    assert status == 1 and "would be rejected" in lines[0]


def test_json_drops_are_explained_with_the_option(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    order = {
        "PatientName": "KIM^MIA",
        "PatientID": "P3",
        "AccessionNumber": "A3",
        "RequestedProcedureDescription": "MR BRAIN",
        "ScheduledStationAETitle": "MR01",
        "Modality": "MR",
        "ScheduledProcedureStepStartDate": "20261201",
        "ScheduledProcedureStepStartTime": "1100",
        "ScheduledProcedureStepDescription": "BRAIN",
    }
    (store / "WLM" / "kim.json").write_text(json.dumps(order), encoding="utf-8")
    _, lines = _run(store, capsys, "--modality", "MR")
    assert not any("kim.json" in line for line in lines)
    _, lines = _run(store, capsys, "--modality", "MR", "--json-drops")
    assert "MATCH  WLM/kim.json#1" in lines


@pytest.fixture
def unserved(store: Path) -> Path:
    """Files of patients P7 to P9 the server does not serve (in full), and one of P5 elsewhere."""
    write_wl(store / "WLM" / "nomod.wl", PatientID="P9", AccessionNumber="A9",
             sps=[{"Modality": None}])  # fmt: skip
    write_wl(
        store / "WLM" / "part.wl",
        PatientID="P7",
        AccessionNumber="A7",
        sps=[{}, {"Modality": None, "ScheduledProcedureStepID": "S2"}],
    )
    cut = write_wl(store / "WLM" / "cut.wl", PatientID="P8", AccessionNumber="A8")
    cut.write_bytes(cut.read_bytes()[:-3])  # ends inside its last value
    (store / "WLM" / "junk.wl").write_bytes(b"\x00\x01 not DICOM, but it names P6 " * 8)
    (store / "WLM" / "empty.wl").write_bytes(b"")
    write_wl(store / "CT01" / "ct.wl", PatientID="P5", AccessionNumber="A5")
    return store


def _explain(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["explain", str(store), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("which", [["--entry-patient-id", "P9"], ["--entry-accession", "A9"]])
def test_a_file_not_served_is_named_with_its_reason(
    unserved: Path, capsys: pytest.CaptureFixture[str], which: list[str]
) -> None:
    status, out, err = _explain(unserved, capsys, *which)
    assert status == 1
    assert out == "NOT SERVED WLM/nomod.wl: the entry lacks Type 1 Modality: not served\n"
    what = "patient ID P9" if which[0] == "--entry-patient-id" else "accession number A9"
    assert err.splitlines() == [
        f"wlmserver explain: database {unserved} (given); MPPS folder {unserved / '.mpps'} "
        "(the default, ROOT/.mpps): absent (no MPPS received yet)",
        f"0 of 0 entries answer the query; 1 files that hold {what} are not served, "
        "or not in full (NOT SERVED above)",
    ]  # and no log lines of the store besides


def test_broken_and_partly_served_files_are_found_leniently(
    unserved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _explain(unserved, capsys, "--entry-patient-id", "P8")
    assert out.startswith("NOT SERVED WLM/cut.wl: cut short") and out.count("\n") == 1
    _, out, _ = _explain(unserved, capsys, "--entry-patient-id", "P7")
    assert out.splitlines() == [
        "MATCH  WLM/part.wl#1",
        "NOT SERVED WLM/part.wl (in part): SPS item 2 lacks Type 1 Modality: not served",
    ]
    _, out, _ = _explain(unserved, capsys, "--entry-patient-id", "P6")
    assert out.startswith("NOT SERVED WLM/junk.wl: ")
    assert out.rstrip().endswith("(too broken to read, but its bytes hold patient ID P6)")
    status, out, err = _explain(unserved, capsys, "--entry-patient-id", "P5", "-aec", "WLM")
    assert status == 1 and out == ""
    assert "patient ID P5 is in AE folder CT01, not the one asked (-aec)" in err
    _, out, err = _explain(unserved, capsys, "--entry-patient-id", "NOBODY")
    assert out == "" and f"no file in {unserved} holds patient ID NOBODY" in err


def test_every_file_not_served_is_listed_without_a_filter(
    unserved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, err = _explain(unserved, capsys)
    listed = [line.split(":")[0] for line in out.splitlines() if line.startswith("NOT SERVED")]
    assert listed == [
        "NOT SERVED WLM/cut.wl",
        "NOT SERVED WLM/empty.wl",
        "NOT SERVED WLM/junk.wl",
        "NOT SERVED WLM/nomod.wl",
        "NOT SERVED WLM/part.wl (in part)",
    ]
    assert "5 files are not served, or not in full" in err


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("WLM", "is an AE folder (it holds .wl files), not a database root: use "
                "wlmserver explain {root} -aec WLM"),
        ("WLM/ct.wl", "is a file, not a database root: give the root it is in "
                      "(wlmserver explain {root} -aec WLM)"),
    ],
)  # fmt: skip
def test_an_ae_folder_or_file_given_as_the_root(
    store: Path, capsys: pytest.CaptureFixture[str], where: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", str(store / where)])
    assert info.value.code == 2
    assert message.format(root=store) in capsys.readouterr().err


def test_the_profile_of_the_calling_ae_title_applies(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "wlmserver.toml"
    config.write_text(
        '[profiles.ct]\ncalling-ae-titles = ["CT0*"]\nstation-filter = true\n'
        "[profiles.default]\ndate-window = [-1, 1]\n"
    )
    status, lines = _run(store, capsys, "--config", str(config), "-aet", "CT01")
    assert lines[0] == (
        "PROFILE ct (calling AE title 'CT01'); it adds ScheduledStationAETitle (0040,0001) = CT01"
    )
    by_where = {line.split()[1].rstrip(":"): line for line in lines[1:]}
    assert by_where["WLM/ct.wl#2"] == "MATCH  WLM/ct.wl#2"
    assert by_where["WLM/ct.wl#1"].endswith(
        "ScheduledStationAETitle (0040,0001): entry has CT1, not the calling station "
        "(profile ct: station-filter)"
    )
    assert status == 0
    # another calling AE title gets the default profile: the date window around today
    status, lines = _run(store, capsys, "--config", str(config), "-aet", "MR01")
    assert lines[0].startswith("PROFILE default (calling AE title 'MR01'); it adds ")
    assert "(profile default: date-window [-1, 1])" in lines[1]
    assert status == 1  # the entries are not scheduled around today
    # a query that names the date is the query's choice
    status, lines = _run(
        store, capsys, "--config", str(config), "-aet", "MR01", "--date", "20261121"
    )
    assert "it adds no constraint" in lines[0] and status == 0


# a key of the query that is a return key only (PS3.4 K.2.2.1.1.2) is named once, before the
# entries; it narrows nothing (every entry of the store answers)
RETURN_KEYS = [
    (
        ["-k", "PregnancyStatus=0"],
        "RETURN PregnancyStatus (0010,21C0) = 0: a return key only, not a matching key of this "
        "server (PS3.4 K.2.2.1.1.2), so it narrows nothing; a modality profile's match-keys "
        "makes it one",
    ),
    (
        ["-k", "ScheduledProcedureStepSequence[0].ScheduledStationName=CTROOM9"],
        "RETURN ScheduledProcedureStepSequence item > ScheduledStationName (0040,0010) = CTROOM9:"
        " a return key only, not a matching key",
    ),
    (
        ["-k", "PertinentDocumentsSequence[0].DocumentTitle=X"],
        "RETURN PertinentDocumentsSequence (0038,0100): a return key only, not a matching key",
    ),
]


@pytest.mark.parametrize(("keys", "line"), RETURN_KEYS)
def test_a_return_key_only_is_named_and_narrows_nothing(
    store: Path, capsys: pytest.CaptureFixture[str], keys: list[str], line: str
) -> None:
    status, lines = _run(store, capsys, *keys)
    assert lines[0].startswith(line)
    assert status == 0 and sum(x.startswith("MATCH") for x in lines) == 3


def test_a_key_a_profile_matches_says_so_when_it_removes_every_answer(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "wlmserver.toml"
    config.write_text(
        '[profiles.us]\ncalling-ae-titles = ["US*"]\nmatch-keys = ["PregnancyStatus"]\n'
    )
    status, lines = _run(
        store, capsys, "-k", "PregnancyStatus=0", "--config", str(config), "-aet", "US01"
    )
    assert status == 1 and not any(line.startswith("RETURN") for line in lines)
    assert lines[1].endswith(
        "PregnancyStatus (0010,21C0): query 0, entry has nothing (matched by profile us's "
        "match-keys; by default a return key only)"
    )
    assert lines[-1] == (
        "NOTE   no entry answers; 3 would without PregnancyStatus (0010,21C0), matched only "
        "because of profile us's match-keys (by default a return key only)"
    )
    # another key that fails too: the entries would not answer without the profile's key
    status, lines = _run(
        store,
        capsys,
        "-k",
        "PregnancyStatus=0",
        "--modality",
        "XA",
        "--config",
        str(config),
        "-aet",
        "US01",
    )
    assert status == 1 and not lines[-1].startswith("NOTE")


def test_a_bad_config_file_is_a_usage_error(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[profiles.ct]\nstation-filter = 1\n")
    with pytest.raises(SystemExit) as caught:
        main(["explain", str(store), "--config", str(config)])
    assert caught.value.code == 2
    assert f"{config}:2: profiles.ct.station-filter: must be true or false" in (
        capsys.readouterr().err
    )


def test_steps_hidden_by_their_status_say_so(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step the modality completed (an MPPS in the server's folder) is not answered by
    default: explain says so, and which setting shows it."""
    from conftest import make_final, make_mpps

    from wlmserver.store.mpps import MppsStore

    mpps = MppsStore(store / ".mpps")
    mpps.load()
    uid = "1.2.826.0.1.3680043.10.9999.77"
    step = {
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.9999.1",
        "AccessionNumber": "A2",
        "RequestedProcedureID": "RP001",
        "ScheduledProcedureStepID": "SPS001",
    }
    mpps.create(uid, make_mpps(steps=[step]))
    mpps.set(uid, make_final())
    status, lines = _run(store, capsys, "--entry-patient-id", "P2")
    assert status == 1
    assert lines == [
        "NO     WLM/mr.wl#1: status COMPLETED (reported by an MPPS) is hidden "
        "(hide-status COMPLETED,DISCONTINUED; a query asking for a status sees it)"
    ]
    status, lines = _run(store, capsys, "--entry-patient-id", "P2", "--hide-status", "none")
    assert status == 0 and lines == ["MATCH  WLM/mr.wl#1"]


def test_steps_past_retention_say_so(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The files are scheduled in November 2026: with a retention of 1 day they are past it,
    and explain says so instead of matching them."""
    status, lines = _run(store, capsys, "--entry-patient-id", "P2", "--retention-days", "1")
    assert status == 1 and len(lines) == 1  # today is after 2026-11-23
    assert lines[0].startswith("NO     WLM/mr.wl#1: scheduled 2026-11-22, past retention")
    status, lines = _run(store, capsys, "--entry-patient-id", "P2", "--retention-days", "100000")
    assert status == 0 and lines == ["MATCH  WLM/mr.wl#1"]


def _completed_elsewhere(folder: Path, accession: str = "A2") -> None:
    """An MPPS in ``folder`` that completed mr.wl's step."""
    from conftest import make_final, make_mpps

    from wlmserver.store.mpps import MppsStore

    mpps = MppsStore(folder)
    mpps.load()
    uid = "1.2.826.0.1.3680043.10.9999.78"
    step = {
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.9999.1",
        "AccessionNumber": accession,
        "RequestedProcedureID": "RP001",
        "ScheduledProcedureStepID": "SPS001",
    }
    mpps.create(uid, make_mpps(steps=[step]))
    mpps.set(uid, make_final())


def test_the_configuration_names_the_database_and_the_mpps_folder(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --config and no database, explain reads the configured database and MPPS folder
    (not the bundled example, not ROOT/.mpps), says so, and a step the server hides by its
    reported status is hidden, not MATCH (issue 19)."""
    _completed_elsewhere(tmp_path / "mpps")
    (tmp_path / "mpps" / ".x.dcm.0001.tmp").write_bytes(b"")  # a write of the server's
    config = tmp_path / "wlmserver.toml"
    config.write_text(f'[server]\ndata-files-path = "{store}"\nmpps-folder = "mpps"\n')
    status = main(["explain", "--config", str(config), "--entry-patient-id", "P2"])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out.splitlines() == [
        "NO     WLM/mr.wl#1: status COMPLETED (reported by an MPPS) is hidden "
        "(hide-status COMPLETED,DISCONTINUED; a query asking for a status sees it)"
    ]
    assert captured.err.splitlines()[0] == (
        f"wlmserver explain: database {store} (data-files-path of {config}:2); MPPS folder "
        f"{tmp_path / 'mpps'} (mpps-folder of {config}:3): 1 instances"
    )
    assert (tmp_path / "mpps" / ".x.dcm.0001.tmp").exists()  # a tool changes nothing
    # an option on the tool's command line overrides the file, as on the server's
    base = ["explain", "--config", str(config), "--entry-patient-id", "P2"]
    status = main([*base, "--hide-status", "none"])
    assert status == 0 and capsys.readouterr().out == "MATCH  WLM/mr.wl#1\n"
    status = main([*base, "--mpps-folder", str(tmp_path / "other")])
    captured = capsys.readouterr()
    assert status == 0 and captured.out == "MATCH  WLM/mr.wl#1\n"
    assert f"MPPS folder {tmp_path / 'other'} (given): absent" in captured.err


@pytest.mark.parametrize("with_config", [False, True])
def test_the_bundled_example_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_config: bool
) -> None:
    config = tmp_path / "wlmserver.toml"
    config.write_text("[server]\nport = 11112\n")
    main(["explain", *(["--config", str(config)] if with_config else [])])
    first = capsys.readouterr().err.splitlines()[0]
    why = f"{config} names no data-files-path" if with_config else "no --config"
    assert first.startswith("wlmserver explain: database ")
    assert f": the BUNDLED EXAMPLE, not a configured database (no database given, {why}" in first


def test_config_mistakes_are_reported_as_the_server_reports_them(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nmax-asociations = 3\n[profiles.ct]\nstation-filter = 1\n")
    with pytest.raises(SystemExit) as caught:
        main(["explain", str(store), "--config", str(config)])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"wlmserver explain: error: --config {config}:2: server.max-asociations: not a "
        "command-line option; did you mean 'max-associations'? (see wlmserver --help: long "
        "names)",
        f"wlmserver explain: error: --config {config}:3: profiles.ct: names no calling AE "
        'title: add calling-ae-titles = ["..."] (or name it [profiles.default] to apply to '
        "every other calling AE title)",
        f"wlmserver explain: error: --config {config}:4: profiles.ct.station-filter: must be "
        "true or false",
    ]
