"""The MPPS rules of PS3.4 F.7 (wlmserver.matching.mpps): every refused N-CREATE and N-SET as a
row of a table (what is changed, the status, words the ErrorComment must hold), and the link
from scheduled steps to their performed status."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from conftest import make_final, make_mpps
from pydicom.dataset import Dataset

from wlmserver.matching.mpps import (
    ATTRIBUTES,
    NO_LONGER_UPDATABLE,
    NO_LONGER_UPDATABLE_ERROR_ID,
    NOT_SETTABLE,
    MppsError,
    MppsStatus,
    Performed,
    PerformedSteps,
    PpsStatus,
    StepKey,
    apply_set,
    check_create,
    is_valid_uid,
    performed_from,
)

UID = "1.2.826.0.1.3680043.10.9999.77"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")


def _item(**overrides: Any) -> Dataset:
    item = Dataset()
    for keyword, value in overrides.items():
        setattr(item, keyword, value)
    return item


# (what the N-CREATE attribute list gets, status, words in the ErrorComment)
CREATE_REFUSED: list[tuple[dict[str, Any], MppsStatus, str]] = [
    ({"PerformedProcedureStepID": None}, MppsStatus.MISSING_ATTRIBUTE, "PerformedProcedureStepID"),
    ({"PerformedStationAETitle": None}, MppsStatus.MISSING_ATTRIBUTE, "PerformedStationAETitle"),
    ({"PerformedProcedureStepStartDate": None}, MppsStatus.MISSING_ATTRIBUTE, "StartDate"),
    ({"PerformedProcedureStepStartTime": ""}, MppsStatus.MISSING_ATTRIBUTE_VALUE, "StartTime"),
    ({"PerformedProcedureStepStatus": None}, MppsStatus.MISSING_ATTRIBUTE, "Status"),
    ({"Modality": None}, MppsStatus.MISSING_ATTRIBUTE, "Modality"),
    ({"Modality": ""}, MppsStatus.MISSING_ATTRIBUTE_VALUE, "Modality: needs a value"),
    (
        {"PerformedProcedureStepStatus": "COMPLETED"},
        MppsStatus.INVALID_ATTRIBUTE_VALUE,
        "IN PROGRESS",
    ),
    (
        {"PerformedProcedureStepStatus": "DISCONTINUED"},
        MppsStatus.INVALID_ATTRIBUTE_VALUE,
        "IN PROGRESS",
    ),
    ({"PerformedProcedureStepStatus": "STARTED"}, MppsStatus.INVALID_ATTRIBUTE_VALUE, "COMPLETED"),
    (
        {"PerformedProcedureStepStartDate": "2026-11-22"},
        MppsStatus.INVALID_ATTRIBUTE_VALUE,
        "YYYYMMDD",
    ),
    ({"PerformedProcedureStepStartTime": "25:00"}, MppsStatus.INVALID_ATTRIBUTE_VALUE, "HHMMSS"),
    ({"SOPInstanceUID": "1.2.3.4"}, MppsStatus.INVALID_ATTRIBUTE_VALUE, "SOPInstanceUID"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.31"}, MppsStatus.INVALID_ATTRIBUTE_VALUE, "SOPClassUID"),
]


@pytest.mark.parametrize(("change", "status", "words"), CREATE_REFUSED)
def test_create_refused(change: dict[str, Any], status: MppsStatus, words: str) -> None:
    attributes = make_mpps(**change)
    with pytest.raises(MppsError) as caught:
        check_create(UID, attributes)
    assert caught.value.status == status
    assert words in caught.value.comment
    assert len(caught.value.comment) <= 64


@pytest.mark.parametrize(
    ("steps", "status", "words"),
    [
        ([], MppsStatus.MISSING_ATTRIBUTE_VALUE, "needs an item"),
        ([{"StudyInstanceUID": None}], MppsStatus.MISSING_ATTRIBUTE, "StudyInstanceUID"),
        ([{}, {"StudyInstanceUID": ""}], MppsStatus.MISSING_ATTRIBUTE_VALUE, "[2]"),
        ([{"StudyInstanceUID": "1.02.3"}], MppsStatus.INVALID_ATTRIBUTE_VALUE, "not a valid UID"),
        (
            [{"ReferencedStudySequence": [_item(ReferencedSOPClassUID="1.2.3")]}],
            MppsStatus.MISSING_ATTRIBUTE,
            "(0008,1155): missing",
        ),
    ],
)
def test_create_refused_for_its_scheduled_steps(
    steps: list[dict[str, Any]], status: MppsStatus, words: str
) -> None:
    with pytest.raises(MppsError) as caught:
        check_create(UID, make_mpps(steps=steps))
    assert (caught.value.status, words in caught.value.comment) == (status, True)
    assert len(caught.value.comment) <= 64


def test_create_refuses_a_missing_sequence_and_command_elements() -> None:
    attributes = make_mpps()
    del attributes.ScheduledStepAttributesSequence
    with pytest.raises(MppsError) as caught:
        check_create(UID, attributes)
    assert caught.value.status == MppsStatus.MISSING_ATTRIBUTE
    assert caught.value.tags == (0x00400270,)
    attributes = make_mpps()
    attributes.add_new(0x00020010, "UI", "1.2.840.10008.1.2")
    with pytest.raises(MppsError) as caught:
        check_create(UID, attributes)
    assert caught.value.status == MppsStatus.NO_SUCH_ATTRIBUTE
    with pytest.raises(MppsError) as caught:
        check_create(UID, None)
    assert caught.value.status == MppsStatus.MISSING_ATTRIBUTE


@pytest.mark.parametrize("uid", ["", "1.02.3", "1..2", "../../etc/passwd", "1.2.", "1" * 65, "a.b"])
def test_an_invalid_uid_is_an_invalid_object_instance(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(MppsError) as caught:
        check_create(uid, make_mpps())
    assert caught.value.status == MppsStatus.INVALID_OBJECT_INSTANCE


def test_create_builds_the_instance_and_notes_missing_type_2() -> None:
    checked = check_create(UID, make_mpps(PatientSex=None, StudyID=None))
    instance = checked.instance
    assert instance.SOPClassUID == "1.2.840.10008.3.1.2.3.3"
    assert instance.SOPInstanceUID == UID
    assert checked.lenient == ["PatientSex", "StudyID"]
    assert check_create(UID, make_mpps()).lenient == []


def _created() -> Dataset:
    return check_create(UID, make_mpps()).instance


# (the N-SET modification list, status, words in the ErrorComment)
SET_REFUSED: list[tuple[Dataset, MppsStatus, str]] = [
    (make_final(PerformedProcedureStepEndDate=None), MppsStatus.MISSING_ATTRIBUTE_VALUE, "EndDate"),
    (
        make_final(PerformedProcedureStepEndTime=""),
        MppsStatus.MISSING_ATTRIBUTE_VALUE,
        "EndTime",
    ),
    (make_final(series=0), MppsStatus.MISSING_ATTRIBUTE_VALUE, "needs an item"),
    (make_final("DISCONTINUED", series=0), MppsStatus.MISSING_ATTRIBUTE_VALUE, "needs an item"),
    (
        make_final(PerformedProcedureStepStatus="DONE"),
        MppsStatus.INVALID_ATTRIBUTE_VALUE,
        "COMPLETED",
    ),
    (make_final(PerformedProcedureStepStatus=""), MppsStatus.MISSING_ATTRIBUTE_VALUE, "Status"),
    (
        make_final(PerformedProcedureStepEndDate="20261322x"),
        MppsStatus.INVALID_ATTRIBUTE_VALUE,
        "YYYYMMDD",
    ),
    (make_final(PatientID="OTHER"), MppsStatus.NO_SUCH_ATTRIBUTE, "PatientID: N-SET may not"),
    (make_final(Modality="MR"), MppsStatus.NO_SUCH_ATTRIBUTE, "Modality"),
    (
        make_final(PerformedProcedureStepStartTime="1100"),
        MppsStatus.NO_SUCH_ATTRIBUTE,
        "not change",
    ),
    (make_final(IssuerOfPatientID="HOSP"), MppsStatus.NO_SUCH_ATTRIBUTE, "IssuerOfPatientID"),
    (
        make_final(ScheduledStepAttributesSequence=[]),
        MppsStatus.NO_SUCH_ATTRIBUTE,
        "(0040,0270): N-SET may not change it",
    ),
    (
        make_final(PerformedSeriesSequence=[_item(ProtocolName="HEAD")]),
        MppsStatus.MISSING_ATTRIBUTE,
        "SeriesInstanceUID",
    ),
    (make_final(SOPInstanceUID="1.2.3"), MppsStatus.INVALID_ATTRIBUTE_VALUE, "SOPInstanceUID"),
]


@pytest.mark.parametrize(("modification", "status", "words"), SET_REFUSED)
def test_set_refused(modification: Dataset, status: MppsStatus, words: str) -> None:
    current = _created()
    before = copy.deepcopy(current)
    with pytest.raises(MppsError) as caught:
        apply_set(current, copy.deepcopy(modification))
    assert caught.value.status == status
    assert words in caught.value.comment
    assert len(caught.value.comment) <= 64
    assert current == before  # nothing half-applied


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_no_set_after_a_final_status(final: str) -> None:
    ended = apply_set(_created(), make_final(final)).instance
    assert ended.PerformedProcedureStepStatus == final
    for modification in (make_final(), make_final(final), Dataset()):
        with pytest.raises(MppsError) as caught:
            apply_set(ended, modification)
        assert caught.value.status == MppsStatus.PROCESSING_FAILURE
        assert caught.value.comment == NO_LONGER_UPDATABLE  # PS3.4 Table F.7.2-2
        assert caught.value.error_id == NO_LONGER_UPDATABLE_ERROR_ID == 0xA710


def test_set_while_in_progress_replaces_attributes_and_keeps_the_rest() -> None:
    current = _created()
    progress = Dataset()
    progress.PerformedProcedureStepDescription = "HEAD"
    progress.PerformedSeriesSequence = make_final(series=2).PerformedSeriesSequence
    progress.PatientID = current.PatientID  # a not-allowed attribute sent back unchanged
    updated = apply_set(current, progress).instance
    assert updated.PerformedProcedureStepStatus == "IN PROGRESS"
    assert updated.PerformedProcedureStepDescription == "HEAD"
    assert len(updated.PerformedSeriesSequence) == 2
    assert updated.Modality == "CT" and updated.SOPInstanceUID == UID
    assert current.PerformedProcedureStepDescription == ""  # the stored one is not changed
    # a later N-SET replaces the whole sequence (PS3.4 F.7.2.2.2: all items are sent)
    done = apply_set(updated, make_final(series=1)).instance
    assert done.PerformedProcedureStepStatus == "COMPLETED"
    assert len(done.PerformedSeriesSequence) == 1


def test_final_state_may_rely_on_attributes_set_before() -> None:
    current = _created()
    earlier = Dataset()
    earlier.PerformedProcedureStepEndDate = "20261122"
    earlier.PerformedProcedureStepEndTime = "1030"
    earlier.PerformedSeriesSequence = make_final().PerformedSeriesSequence
    current = apply_set(current, earlier).instance
    status = Dataset()
    status.PerformedProcedureStepStatus = "DISCONTINUED"
    assert apply_set(current, status).instance.PerformedProcedureStepStatus == "DISCONTINUED"


def test_another_character_set_in_a_set_is_stored_as_utf8() -> None:
    current = check_create(UID, make_mpps(SpecificCharacterSet="ISO_IR 100")).instance
    modification = make_final(SpecificCharacterSet="ISO_IR 192")
    modification.CommentsOnThePerformedProcedureStep = "Kontrastmittel über Zugang"
    updated = apply_set(current, modification).instance
    assert updated.SpecificCharacterSet == "ISO_IR 192"
    same = make_final(SpecificCharacterSet="ISO_IR 100")
    assert apply_set(current, same).instance.SpecificCharacterSet == "ISO_IR 100"


def test_the_table_marks_what_n_set_may_not_change() -> None:
    assert {
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    } <= NOT_SETTABLE
    assert "PerformedProcedureStepStatus" not in NOT_SETTABLE
    assert "PerformedSeriesSequence" not in NOT_SETTABLE
    finals = {a.keyword for a in ATTRIBUTES if a.final == "1"}
    assert finals == {
        "PerformedProcedureStepStatus",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "PerformedSeriesSequence",
    }


# -- the link from scheduled steps to the MPPS that performs them


def _performed(steps: list[dict[str, Any]], uid: str = UID, order: int = 0) -> Performed:
    return performed_from(check_create(uid, make_mpps(steps=steps)).instance, order)


def test_the_group_case_links_one_mpps_to_every_step() -> None:
    group = _performed(
        [{}, {"RequestedProcedureID": "RP002", "ScheduledProcedureStepID": "SPS002"}]
    )
    steps = PerformedSteps([group])
    other = STEP._replace(requested_procedure_id="RP002", scheduled_procedure_step_id="SPS002")
    assert steps.status(STEP) == steps.status(other) == PpsStatus.IN_PROGRESS
    assert steps.status(STEP._replace(scheduled_procedure_step_id="SPS003")) is None
    assert not group.unscheduled and len(group.steps) == 2


def test_the_group_case_with_a_study_uid_of_the_modality() -> None:
    """PS3.4 F.7.2.1.2 Note 2: the item's Study Instance UID may be the modality's, the
    Referenced Study Sequence then names the requested one."""
    reference = _item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=STEP[0]
    )
    step = {
        "StudyInstanceUID": "1.2.999.1",
        "AccessionNumber": "",
        "ReferencedStudySequence": [reference],
    }
    steps = PerformedSteps([_performed([step])])
    assert steps.status(STEP._replace(accession_number="")) == PpsStatus.IN_PROGRESS


def test_a_step_is_found_by_its_accession_number_too() -> None:
    steps = PerformedSteps([_performed([{"StudyInstanceUID": "1.2.999.2"}])])
    assert steps.status(STEP) == PpsStatus.IN_PROGRESS  # same accession, RP and SPS IDs
    assert steps.status(STEP._replace(accession_number="OTHER")) is None


def test_the_unscheduled_case_is_kept_and_reported_not_linked() -> None:
    unscheduled = _performed(
        [{"RequestedProcedureID": "", "ScheduledProcedureStepID": "", "AccessionNumber": ""}]
    )
    assert unscheduled.unscheduled
    steps = PerformedSteps([unscheduled])
    assert len(steps) == 1 and steps.unscheduled() == (unscheduled,)
    assert (
        steps.status(STEP._replace(requested_procedure_id="", scheduled_procedure_step_id=""))
        is None
    )


def test_the_newest_mpps_of_a_step_gives_its_status_and_updates_replace() -> None:
    first = _performed([{}], "1.2.3.1", 0)
    steps = PerformedSteps([first])
    stopped = performed_from(
        apply_set(
            check_create("1.2.3.1", make_mpps()).instance, make_final("DISCONTINUED")
        ).instance,
        0,
    )
    steps = steps.with_performed(stopped)
    assert steps.status(STEP) == PpsStatus.DISCONTINUED
    again = performed_from(
        check_create("1.2.3.2", make_mpps(PerformedProcedureStepStartTime="1100")).instance, 1
    )
    later = steps.with_performed(again)
    assert later.status(STEP) == PpsStatus.IN_PROGRESS
    assert [p.sop_instance_uid for p in later.performing(STEP)] == ["1.2.3.1", "1.2.3.2"]
    assert steps.status(STEP) == PpsStatus.DISCONTINUED  # the older snapshot is unchanged
