"""The generated store: worklist files from one seed, written for both servers."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from random import Random
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from . import AE_TITLE, MULTI_AE_TITLE

Value = str | list[str]
Item = dict[str, Any]  # keyword -> Value, or list[Item] for a sequence; absent = no key


@dataclass
class WlFile:
    """One generated worklist file.

    Attributes
    ----------
    name : str
        File name in the AE folder.
    charset : str or None
        Its Specific Character Set (``\\`` between values), None for the default repertoire.
    top : Item
        Top-level attributes.
    steps : list[Item]
        Its SPS items.
    incomplete : str or None
        Which Type 1 attribute was left out or emptied on purpose, if any.
    incomplete_step : int or None
        In which SPS item (None: at the top level, so every item is incomplete).
    """

    name: str
    charset: str | None
    top: Item
    steps: list[Item]
    incomplete: str | None = None
    incomplete_step: int | None = None

    @property
    def uid(self) -> str:
        return str(self.top["StudyInstanceUID"])

    def served_steps(self) -> int:
        """How many of its SPS items are complete (served by both servers)."""
        if self.incomplete is None:
            return len(self.steps)
        return 0 if self.incomplete_step is None else len(self.steps) - 1


ASCII_NAMES = (
    "SMITH^JOHN",
    "JONES^MARY^ANN",
    "NAKAMURA^KENJI",
    "NAKAMURA^DAICHI",
    "GARCIA^LUIS^ALBERTO",
    "OSEI^ABENA",
    "KOWALSKI^PIOTR",
    "NGUYEN^ANH",
    "DE LA CRUZ^ANA",
    "O'NEIL^SEAN",
    "Smith^Jane",
    "MUELLER^JUERGEN",
)
LATIN1_NAMES = (
    "MÜLLER^JÜRGEN",
    "Müller^Jürgen",
    "SØRENSEN^BJØRN",
    "ÅSTRÖM^INGRID",
    "GARCÍA^INÉS",
    "LEFÈVRE^FRANÇOISE",
    "NAKAMURA^KENJI",
)
UTF8_NAMES = (
    *LATIN1_NAMES,
    "ΔΗΜΗΤΡΊΟΥ^ΕΛΈΝΗ",
    "ИВАНОВ^ИВАН",
    "ŁUKASIEWICZ^PAWEŁ",
    "Dvořák^Antonín",
)
JIS_NAMES = (
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "Sato^Hanako=佐藤^花子=さとう^はなこ",
    "Suzuki^Ichiro=鈴木^一郎",
)
DOCTORS = {
    None: ("HOUSE^GREGORY", "WHO^JOHN", "GREY^MEREDITH", "KILDARE^JAMES"),
    "ISO_IR 100": ("HOUSE^GREGORY", "BRÜNNHILDE^ANNA", "Ødegård^Kari"),
    "ISO_IR 192": ("WHO^JOHN", "BRÜNNHILDE^ANNA", "ΠΑΠΑΔΌΠΟΥΛΟΣ^ΝΊΚΟΣ"),
    "\\ISO 2022 IR 87": ("Tanaka^Hiroshi=田中^宏", "WHO^JOHN"),
}
DESCRIPTIONS = {
    None: ("CT HEAD W/O", "CT THORAX", "MR KNEE LEFT", "US ABDOMEN", "DX CHEST PA"),
    "ISO_IR 100": ("CT SCHÄDEL", "MR KNIE LINKS", "US ABDOMEN"),
    "ISO_IR 192": ("CT ΘΏΡΑΚΑΣ", "MR КОЛЕНО", "DX CHEST PA"),
    "\\ISO 2022 IR 87": ("CT 頭部", "MR KNEE LEFT"),
}
STATIONS: tuple[tuple[Value, str], ...] = (
    ("CT01", "CT"),
    ("CT02", "CT"),
    ("MR01", "MR"),
    ("US01", "US"),
    ("DX01", "DX"),
    (["CT01", "CT02"], "CT"),
    (["MR01", "MR02"], "MR"),
)
STATION_NAMES = ("CTROOM1", "CT ROOM 2", "MRROOM", "USROOM", "XRAY1")
LOCATIONS = ("BUILDING A", "BASEMENT", "L2 EAST")
PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")
CODES = (("P1-001", "99LOCAL", "HEAD ROUTINE"), ("P1-002", "99LOCAL", "CHEST LOW DOSE"))
COMMENTS = ("allergy to contrast", "claustrophobic", "NONE", "wheelchair")
FIRST_DAY = date(2023, 12, 28)
DAYS = 7  # 28 Dec 2023 to 3 Jan 2024
Weights = tuple[tuple[str | None, float], ...]
#: Character sets of the files (with weights). ISO 2022 IR 87 has a run of its own
#: (``--ir87``, ``IR87_CHARSETS``): wlmserver mislabels and misencodes its answers.
CHARSETS: Weights = ((None, 0.55), ("ISO_IR 100", 0.22), ("ISO_IR 192", 0.23))
IR87_CHARSETS: Weights = ((None, 0.5), ("\\ISO 2022 IR 87", 0.5))


def pick_weighted(rng: Random, choices: Sequence[tuple[Any, float]]) -> Any:
    x = rng.random() * sum(w for _, w in choices)
    for value, weight in choices:
        x -= weight
        if x < 0:
            return value
    return choices[-1][0]


def _type2(rng: Random, item: Item, keyword: str, value: Value, present: float = 0.7) -> None:
    """Set a Type 2 attribute: a value, zero-length or absent (half of the rest each)."""
    x = rng.random()
    if x < present:
        item[keyword] = value
    elif x < present + (1 - present) / 2:
        item[keyword] = ""


def _names(charset: str | None) -> tuple[str, ...]:
    if charset == "ISO_IR 100":
        return LATIN1_NAMES
    if charset == "ISO_IR 192":
        return UTF8_NAMES
    if charset == "\\ISO 2022 IR 87":
        return JIS_NAMES
    return ASCII_NAMES


def _time(rng: Random) -> str:
    hour = rng.choice([*range(7, 19), *range(7, 19), 20, 21, 22, 23, 0, 1, 2, 5])
    minute = rng.choice((0, 0, 15, 30, 45, 59))
    x = rng.random()
    if x < 0.25:
        return f"{hour:02d}{minute:02d}"
    if x < 0.95:
        return f"{hour:02d}{minute:02d}{rng.choice((0, 0, 30, 59)):02d}"
    return f"{hour:02d}{minute:02d}00.{rng.randrange(1000):03d}"


def generate_store(
    rng: Random, files: int, seed: int, charsets: Weights = CHARSETS
) -> list[WlFile]:
    """Generate the worklist files of the store (not yet written)."""
    patients = []
    for p in range(max(12, files // 3)):
        charset = pick_weighted(rng, charsets)
        patient: Item = {
            "PatientName": rng.choice(_names(charset)),
            "PatientID": f"P{p + 1:04d}",
        }
        if rng.random() < 0.5:
            patient["IssuerOfPatientID"] = rng.choice(("HOSP_A", "HOSP B"))
        birth = date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))
        _type2(rng, patient, "PatientBirthDate", birth.strftime("%Y%m%d"), 0.8)
        _type2(rng, patient, "PatientSex", rng.choice("MFO"), 0.8)
        if rng.random() < 0.3:
            patient["PatientWeight"] = rng.choice(("72", "72.5", "80", "55.25"))
        if rng.random() < 0.3:
            patient["PatientComments"] = rng.choice(COMMENTS)  # not in Table K.6-1
        patients.append((charset, patient))

    out: list[WlFile] = []
    sps_number = 0
    for n in range(files):
        charset, patient = rng.choice(patients)
        top: Item = dict(patient)
        _type2(rng, top, "AccessionNumber", f"A{n + 1:06d}", 0.8)
        _type2(rng, top, "ReferringPhysicianName", rng.choice(DOCTORS[charset]))
        _type2(rng, top, "RequestingPhysician", rng.choice(DOCTORS[charset]), 0.5)
        top["RequestedProcedureID"] = f"RP{n + 1:05d}"
        top["RequestedProcedureDescription"] = rng.choice(DESCRIPTIONS[charset])
        top["StudyInstanceUID"] = f"1.2.826.0.1.3680043.10.543.{seed}.{n + 1}"
        _type2(rng, top, "RequestedProcedurePriority", rng.choice(PRIORITIES))
        if rng.random() < 0.4:
            top["AdmissionID"] = f"ADM{rng.randrange(1, 60):04d}"
        if rng.random() < 0.3:
            top["CurrentPatientLocation"] = rng.choice(("WARD 3", "ICU", "ER"))
        if rng.random() < 0.3:
            code = rng.choice(CODES)
            top["RequestedProcedureCodeSequence"] = [
                {"CodeValue": code[0], "CodingSchemeDesignator": code[1], "CodeMeaning": code[2]}
            ]
        count = pick_weighted(rng, ((1, 0.8), (2, 0.15), (3, 0.05)))
        steps = []
        for _ in range(count):
            sps_number += 1
            station, modality = rng.choice(STATIONS)
            day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
            step: Item = {
                "ScheduledStationAETitle": station,
                "Modality": modality,
                "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
                "ScheduledProcedureStepStartTime": _time(rng),
                "ScheduledProcedureStepDescription": rng.choice(DESCRIPTIONS[charset]),
                "ScheduledProcedureStepID": f"S{sps_number:05d}",
            }
            _type2(rng, step, "ScheduledPerformingPhysicianName", rng.choice(DOCTORS[charset]))
            if rng.random() < 0.5:
                step["ScheduledStationName"] = rng.choice(STATION_NAMES)
            if rng.random() < 0.3:
                step["ScheduledProcedureStepLocation"] = rng.choice(LOCATIONS)
            if rng.random() < 0.2:
                step["ScheduledProcedureStepStatus"] = "SCHEDULED"
            if rng.random() < 0.4:
                step["ScheduledProtocolCodeSequence"] = [
                    {"CodeValue": c[0], "CodingSchemeDesignator": c[1], "CodeMeaning": c[2]}
                    for c in rng.sample(CODES, rng.choice((1, 1, 2)))
                ]
            steps.append(step)
        wl = WlFile(f"{n + 1:05d}.wl", charset, top, steps)
        if rng.random() < 0.02:  # an incomplete entry, which neither server serves
            where, keyword, how = rng.choice(
                (
                    ("sps", "ScheduledProcedureStepID", None),
                    ("sps", "Modality", ""),
                    ("top", "PatientID", None),
                    ("sps", "ScheduledStationAETitle", ""),
                )
            )
            step_index = rng.randrange(len(steps)) if where == "sps" else None
            target = top if step_index is None else steps[step_index]
            if how is None:
                target.pop(keyword, None)
            else:
                target[keyword] = how
            wl.incomplete, wl.incomplete_step = keyword, step_index
        out.append(wl)
    return out


def _dataset(item: Item, charset: str | None = None) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    for keyword, value in item.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            setattr(ds, keyword, [_dataset(i) for i in value])
        else:
            setattr(ds, keyword, value if value != "" else None)
    return ds


def file_dataset(wl: WlFile, steps: Sequence[Item] | None = None) -> Dataset:
    """The DICOM dataset of a file (with only ``steps`` as its SPS items, if given)."""
    ds = _dataset(wl.top, wl.charset)
    ds.ScheduledProcedureStepSequence = [
        _dataset(s) for s in (wl.steps if steps is None else steps)
    ]
    return ds


def _write(ds: Dataset, path: Path, part: int = 0) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")  # as dump2dcm writes
    meta.MediaStorageSOPInstanceUID = UID(f"{ds.StudyInstanceUID}.{part}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def write_stores(store: Sequence[WlFile], workdir: Path) -> tuple[Path, Path]:
    """Write the store twice: as generated (for wlmserver) and with each multi-item file split
    into one file per item (for wlmscpfs). Both roots also get ``MULTI/`` with the multi-item
    files unsplit. Returns the two roots ``(wlmserver, wlmscpfs)``."""
    wlm_root, scpfs_root = workdir / "wlmserver", workdir / "wlmscpfs"
    for root in (wlm_root, scpfs_root):
        shutil.rmtree(root, ignore_errors=True)
        for folder in (AE_TITLE, MULTI_AE_TITLE):
            (root / folder).mkdir(parents=True)
            (root / folder / "lockfile").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for wl in store:
            _write(file_dataset(wl), wlm_root / AE_TITLE / wl.name)
            if len(wl.steps) == 1:
                shutil.copyfile(wlm_root / AE_TITLE / wl.name, scpfs_root / AE_TITLE / wl.name)
                continue
            for root in (wlm_root, scpfs_root):
                shutil.copyfile(wlm_root / AE_TITLE / wl.name, root / MULTI_AE_TITLE / wl.name)
            stem = wl.name.removesuffix(".wl")
            for i, step in enumerate(wl.steps):
                _write(
                    file_dataset(wl, [step]), scpfs_root / AE_TITLE / f"{stem}-{i + 1}.wl", i + 1
                )
    return wlm_root, scpfs_root
