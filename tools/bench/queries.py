"""The benchmark's queries: what each asks, its C-FIND identifier, and how many answers the
store holds for it (counted from the manifest, not from any server)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from .store import Step, WorklistFile


@dataclass(frozen=True)
class QuerySpec:
    """A benchmark query, as matching values (empty: universal).

    Attributes
    ----------
    key : str
        Short name: ``station``, ``patient``, ``accession``, ``name`` or ``universal``.
    label : str
        What it asks, for the report.
    station, modality, start_date : str
        SPS matching keys (ScheduledStationAETitle, Modality, ScheduledProcedureStepStartDate).
    patient_id, accession : str
        Single-value matching keys.
    name_prefix : str
        A PatientName prefix, sent as ``<prefix>*``.
    """

    key: str
    label: str
    station: str = ""
    modality: str = ""
    start_date: str = ""
    patient_id: str = ""
    accession: str = ""
    name_prefix: str = ""

    def matching_keys(self) -> dict[str, str]:
        """The matching keys with their values, by DICOM keyword."""
        keys = {
            "ScheduledStationAETitle": self.station,
            "Modality": self.modality,
            "ScheduledProcedureStepStartDate": self.start_date,
            "PatientID": self.patient_id,
            "AccessionNumber": self.accession,
            "PatientName": f"{self.name_prefix}*" if self.name_prefix else "",
        }
        return {k: v for k, v in keys.items() if v}

    def matches(self, wl: WorklistFile, step: Step) -> bool:
        """Whether the entry of ``step`` in ``wl`` answers this query.

        Parameters
        ----------
        wl : WorklistFile
            The file.
        step : Step
            One of its steps.

        Returns
        -------
        bool
            By PS3.4 C.2.2.2: a multi-valued station matches if any value does.
        """
        return (
            (not self.station or self.station in step.stations)
            and (not self.modality or step.modality == self.modality)
            and (not self.start_date or step.start_date == self.start_date)
            and (not self.patient_id or wl.patient_id == self.patient_id)
            and (not self.accession or wl.accession == self.accession)
            and (not self.name_prefix or wl.patient_name.startswith(self.name_prefix))
        )

    def expected(self, files: Sequence[WorklistFile], single_sps_only: bool = False) -> int:
        """How many entries answer this query.

        Parameters
        ----------
        files : Sequence[WorklistFile]
            The store's files.
        single_sps_only : bool
            Count only files with one SPS item (what wlmscpfs serves).

        Returns
        -------
        int
            The number of matching SPS items.
        """
        return sum(
            1
            for wl in files
            if not single_sps_only or len(wl.steps) == 1
            for step in wl.steps
            if self.matches(wl, step)
        )


#: Return keys of the selective queries: what a modality typically asks for.
RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
)
SPS_RETURN_KEYS = (
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledStationName",
)


def query_specs(files: Sequence[WorklistFile], ref_date: str) -> list[QuerySpec]:
    """The benchmark's queries for a store.

    Parameters
    ----------
    files : Sequence[WorklistFile]
        The store's files: the patient queried is the one with the most files, the accession
        number the middle file's.
    ref_date : str
        The reference date.

    Returns
    -------
    list[QuerySpec]
        (a) station, (b) patient, (c) accession, (d) a broad name prefix (``NAKA*``: three of
        the forty family names, 7 % of the store), (e) a selective one (the first patient's
        family name and the first two letters of the given name), then the universal query.
    """
    per_patient: dict[str, int] = {}
    for wl in files:
        per_patient[wl.patient_id] = per_patient.get(wl.patient_id, 0) + 1
    patient = min(per_patient, key=lambda pid: (-per_patient[pid], pid))
    accession = files[len(files) // 2].accession
    family, _, given = files[0].patient_name.partition("^")
    person = f"{family}^{given[:2]}"
    return [
        QuerySpec(
            "station",
            f"(a) CT01+CT+{ref_date}",
            station="CT01",
            modality="CT",
            start_date=ref_date,
        ),
        QuerySpec("patient", f"(b) PatientID {patient}", patient_id=patient),
        QuerySpec("accession", f"(c) Accession {accession}", accession=accession),
        QuerySpec("name", "(d) PatientName NAKA*", name_prefix="NAKA"),
        QuerySpec("person", f"(e) PatientName {person}*", name_prefix=person),
        QuerySpec("universal", "universal"),
    ]


def query_dataset(spec: QuerySpec) -> Dataset:
    """The C-FIND identifier of a query.

    Parameters
    ----------
    spec : QuerySpec
        The query.

    Returns
    -------
    Dataset
        Selective queries carry a modality's usual return keys; the universal query is
        PatientName, PatientID and an empty SPS item (which servers expand to all SPS keys).
    """
    ds = Dataset()
    item = Dataset()
    if spec.key != "universal":
        for keyword in RETURN_KEYS:
            setattr(ds, keyword, "")
        for keyword in SPS_RETURN_KEYS:
            setattr(item, keyword, "")
        for keyword, value in spec.matching_keys().items():
            setattr(item if keyword in SPS_RETURN_KEYS else ds, keyword, value)
    else:
        ds.PatientName = ""
        ds.PatientID = ""
    ds.ScheduledProcedureStepSequence = [item]
    return ds
