"""The MPPS store (wlmserver.store.mpps): one DICOM file per instance, written atomically,
read back at start, a damaged file skipped with one log line, nothing stored on a refusal."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import make_final, make_mpps
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from wlmserver.matching.mpps import MppsError, MppsStatus, PpsStatus, StepKey
from wlmserver.store.mpps import MppsStore, default_folder, folder_problem

UID = "1.2.826.0.1.3680043.10.9999.50"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")


@pytest.fixture
def store(tmp_path: Path) -> MppsStore:
    mpps = MppsStore(tmp_path / "mpps")
    mpps.load()
    return mpps


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_create_writes_one_private_part10_file_that_dcmdump_reads(store: MppsStore) -> None:
    store.create(UID, make_mpps())
    assert _files(store.folder) == [f"{UID}.dcm"]  # no temporary file left
    path = store.path(UID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    ds = dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.3.1.2.3.3"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == UID
    dump = subprocess.run(
        ["/usr/bin/dcmdump", str(path)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "(0040,0252) CS [IN PROGRESS]" in dump


def test_the_instances_and_their_link_survive_a_restart(store: MppsStore) -> None:
    store.create(UID, make_mpps())
    store.set(UID, make_final())
    second = "1.2.826.0.1.3680043.10.9999.51"
    store.create(
        second,
        make_mpps(steps=[{"RequestedProcedureID": "", "ScheduledProcedureStepID": ""}]),
    )
    again = MppsStore(store.folder)
    assert again.load() == 2
    instance = again.get(UID)
    assert instance is not None and instance.PerformedProcedureStepStatus == "COMPLETED"
    assert instance.PatientName == "DOE^JANE"
    assert again.steps.status(STEP) == PpsStatus.COMPLETED
    assert [p.sop_instance_uid for p in again.steps.unscheduled()] == [second]
    with pytest.raises(MppsError) as caught:  # and the state machine holds across it
        again.set(UID, make_final())
    assert caught.value.status == MppsStatus.PROCESSING_FAILURE


def test_refusals_store_nothing(store: MppsStore) -> None:
    with pytest.raises(MppsError):
        store.create(UID, make_mpps(Modality=None))
    assert _files(store.folder) == [] and len(store) == 0
    store.create(UID, make_mpps())
    before = store.path(UID).read_bytes()
    for modification in (make_final(PatientID="OTHER"), make_final(series=0)):
        with pytest.raises(MppsError):
            store.set(UID, modification)
    assert store.path(UID).read_bytes() == before
    assert store.steps.status(STEP) == PpsStatus.IN_PROGRESS
    stored = store.get(UID)
    assert stored is not None and stored.PerformedProcedureStepStatus == "IN PROGRESS"


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("create twice", MppsStatus.DUPLICATE_SOP_INSTANCE),
        ("set unknown", MppsStatus.NO_SUCH_SOP_INSTANCE),
        ("create bad uid", MppsStatus.INVALID_OBJECT_INSTANCE),
        ("set bad uid", MppsStatus.INVALID_OBJECT_INSTANCE),
    ],
)
def test_instance_level_refusals(store: MppsStore, action: str, status: MppsStatus) -> None:
    store.create(UID, make_mpps())
    with pytest.raises(MppsError) as caught:
        if action == "create twice":
            store.create(UID, make_mpps())
        elif action == "set unknown":
            store.set("1.2.3.4.5", make_final())
        elif action == "create bad uid":
            store.create("../../x", make_mpps())
        else:
            store.set("1.2.3/../4", make_final())
    assert caught.value.status == status
    assert _files(store.folder) == [f"{UID}.dcm"]


def test_a_uid_is_assigned_when_the_request_has_none(store: MppsStore) -> None:
    checked = store.create(None, make_mpps())
    uid = str(checked.instance.SOPInstanceUID)
    assert store.get(uid) is not None and store.path(uid).is_file()


def test_a_failed_write_changes_nothing_and_leaves_no_temporary_file(
    store: MppsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(UID, make_mpps())

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("wlmserver.store.dicomwrite.dcmwrite", disk_full)
    with pytest.raises(MppsError) as caught:
        store.set(UID, make_final())
    # a full disk is a resource limitation (PS3.7 10.1.3.1.9), for the log an internal error
    assert caught.value.status == MppsStatus.RESOURCE_LIMITATION
    assert caught.value.internal and "No space left" in caught.value.detail
    with pytest.raises(MppsError):
        store.create("1.2.3.4.6", make_mpps())
    assert _files(store.folder) == [f"{UID}.dcm"]
    assert store.steps.status(STEP) == PpsStatus.IN_PROGRESS
    assert store.get("1.2.3.4.6") is None


def test_damaged_files_are_skipped_with_one_line_each(
    store: MppsStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.create(UID, make_mpps())
    folder = store.folder
    data = store.path(UID).read_bytes()
    (folder / "1.2.3.1.dcm").write_bytes(data[: len(data) - 20])  # cut short
    (folder / "1.2.3.2.dcm").write_bytes(b"not DICOM at all")
    (folder / "1.2.3.3.dcm").write_bytes(data)  # its UID is not its name
    (folder / "notes.txt").write_text("an administrator's notes")  # not ours: left alone
    (folder / f".{UID}.abcd.tmp").write_bytes(data[:100])  # left by a crash
    again = MppsStore(folder)
    with caplog.at_level(logging.WARNING, logger="wlmserver.store.mpps"):
        assert again.load() == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    for name in ("1.2.3.1.dcm", "1.2.3.2.dcm", "1.2.3.3.dcm"):
        (line,) = [m for m in lines if name in m]
        assert "skipped:" in line
    assert any("its SOP Instance UID is not its file name" in m for m in lines)
    assert any("interrupted write" in m for m in lines)
    assert not (folder / f".{UID}.abcd.tmp").exists()
    assert (folder / "notes.txt").exists()
    # a damaged file still holds its UID: it is not overwritten by a new N-CREATE
    with pytest.raises(MppsError) as caught:
        again.create("1.2.3.1", make_mpps())
    assert caught.value.status == MppsStatus.DUPLICATE_SOP_INSTANCE


def test_a_set_without_character_set_is_read_in_the_instances(store: MppsStore) -> None:
    store.create(UID, make_mpps(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen"))
    modification = make_final()
    modification.CommentsOnThePerformedProcedureStep = "über"
    raw = Dataset()  # as received: UTF-8 bytes, no Specific Character Set (PS3.4 F.7.2.2.1)
    for element in modification:
        raw.add(element)
    value = "über ".encode()  # still undecoded, as pynetdicom hands it over
    raw[0x00400280] = RawDataElement(Tag(0x00400280), "ST", len(value), value, 0, False, True)
    store.set(UID, raw)
    again = MppsStore(store.folder)
    again.load()
    instance = again.get(UID)
    assert instance is not None
    assert instance.CommentsOnThePerformedProcedureStep == "über"
    assert instance.PatientName == "Müller^Jürgen"


def test_the_default_folder_is_made_at_the_first_create_only(tmp_path: Path) -> None:
    folder = default_folder(tmp_path)
    assert folder == tmp_path / ".mpps"
    lazy = MppsStore(folder)
    assert lazy.load(create=False) == 0
    assert not folder.exists()
    lazy.create(UID, make_mpps())
    assert _files(folder) == [f"{UID}.dcm"]


def test_an_unusable_folder_refuses_with_processing_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    broken = MppsStore(tmp_path / "file" / "mpps")
    with pytest.raises(OSError):
        broken.load()
    with pytest.raises(MppsError) as caught:
        broken.create(UID, make_mpps())
    assert caught.value.status == MppsStatus.PROCESSING_FAILURE


@pytest.mark.parametrize(
    ("folder", "problem"),
    [
        (".mpps", None),
        ("../mpps", None),
        ("", "database root"),
        ("WLM", "AE folder WLM"),
        ("WLM/mpps", "AE folder WLM"),
    ],
)
def test_an_mpps_folder_is_never_an_ae_folder(
    tmp_path: Path, folder: str, problem: str | None
) -> None:
    root = tmp_path / "db"
    found = folder_problem(root / folder, root)
    assert (found is None) if problem is None else (problem in (found or ""))
