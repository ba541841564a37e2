"""The generated stores: what each file holds, its bytes, and a store reused or written.

A store is ``<workdir>/store-N-seedS-DATE/``: an AE folder ``WLM`` of N scheduled procedure
steps in ``.wl`` files (about one file in ten holds two), planned deterministically from the
seed, and ``manifest.json``, which says what every file holds (written last, so a store cut
short is generated again rather than reused).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

from make_wlistdb import WORKLIST_FILE_CLASS
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

#: The AE folder of every generated store, and the called AE title of every query.
AE_FOLDER = "WLM"
#: Bumped whenever the generator's output changes, so that stale stores are not reused.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
#: An invented UID root (the same organisation root as tools/make_wlistdb.py).
UID_ROOT = "1.2.826.0.1.3680043.10.1234.77"

#: Modality: (relative weight, station AE titles).
MODALITIES: dict[str, tuple[int, tuple[str, ...]]] = {
    "CT": (25, ("CT01", "CT02", "CT03", "CT04")),
    "MR": (15, ("MR01", "MR02", "MR03")),
    "US": (20, ("US01", "US02", "US03", "US04", "US05", "US06")),
    "CR": (14, ("CR01", "CR02")),
    "DX": (12, ("DX01", "DX02", "DX03")),
    "MG": (8, ("MG01", "MG02")),
    "NM": (6, ("NM01",)),
}
#: Modality: (code value, description) of the procedures it performs.
PROCEDURES: dict[str, tuple[tuple[str, str], ...]] = {
    "CT": (
        ("CT001", "CT HEAD W/O CONTRAST"),
        ("CT002", "CT CHEST WITH CONTRAST"),
        ("CT003", "CT ABDOMEN PELVIS"),
        ("CT004", "CT LUMBAR SPINE"),
    ),
    "MR": (("MR001", "MR BRAIN"), ("MR002", "MR KNEE LEFT"), ("MR003", "MR CERVICAL SPINE")),
    "US": (
        ("US001", "US ABDOMEN"),
        ("US002", "US THYROID"),
        ("US003", "US OBSTETRIC"),
        ("US004", "US CAROTID DOPPLER"),
    ),
    "CR": (("CR001", "XR CHEST PA LAT"), ("CR002", "XR HAND RIGHT")),
    "DX": (("DX001", "XR KNEE STANDING"), ("DX002", "XR PELVIS AP")),
    "MG": (("MG001", "MAMMOGRAPHY SCREENING"), ("MG002", "MAMMOGRAPHY DIAGNOSTIC")),
    "NM": (("NM001", "NM BONE SCAN"), ("NM002", "NM THYROID SCAN")),
}
#: Invented family names; NAKAMURA, NAKAGAWA and NAKATA answer the prefix query ``NAKA*``.
FAMILY = (
    "NAKAMURA", "NAKAGAWA", "NAKATA", "OSEI", "GARCIA", "FISCHER", "ROSSI", "BROWN", "SATO",
    "KOWALSKI", "DUBOIS", "PATEL", "MENSAH", "LINDQVIST", "HALVORSEN", "AHMED", "OKAFOR",
    "SILVA", "NOVAK", "JENSEN", "MORI", "KHAN", "LOPEZ", "MARTIN", "WEBER", "BAKER", "EVANS",
    "TANAKA", "IVANOVA", "OLSEN", "BERG", "COSTA", "HUGHES", "KIM", "PARK", "NGUYEN", "ADEYEMI",
    "SCHMIDT", "MORENO", "QUINN",
)  # fmt: skip
GIVEN = (
    "KENJI", "ABENA", "LUIS", "HANNAH", "GIULIA", "OLIVIA", "YUKI", "ANNA", "CLAIRE", "RAVI",
    "KWAME", "ERIK", "TOR", "SARA", "NGOZI", "JOAO", "PETRA", "LARS", "AI", "OMAR", "MARTA",
    "PAUL", "LENA", "DAVID", "AMARA", "JONAS", "MIA", "NOAH", "ELIF", "SAMUEL",
)  # fmt: skip
#: Names of the patients whose files are ISO_IR 100 (Latin-1), also invented.
LATIN1_FAMILY = ("MÜLLER", "GONZÁLEZ", "ÅSTRÖM", "FRANÇOIS", "NÚÑEZ", "SØRENSEN", "LEFÈVRE")
LATIN1_GIVEN = ("JOSÉ", "RENÉE", "SØREN", "JÜRGEN", "INÊS", "ÁNGEL", "BJÖRN", "NOËL")
PHYSICIANS = ("HOUSE^GREGORY", "QUINN^MICHAELA", "KILDARE^JAMES", "GREY^MEREDITH", "ROSS^DOUG")
#: One patient in this many has a Latin-1 name (and ISO_IR 100 files).
LATIN1_EVERY = 40
#: The first files are CT01's first CT exams of the reference day, for patients named NAKA...,
#: so that even a tiny store answers queries (a) and (d).
ANCHORS = 3
#: Files per job when several processes write a store.
CHUNK = 2000
#: Name prefix of the files the drop test writes and removes again.
DROP_PREFIX = "zz-drop-"


@dataclass(frozen=True)
class Step:
    """One scheduled procedure step of a generated file.

    Attributes
    ----------
    modality : str
        The Modality.
    stations : tuple[str, ...]
        The Scheduled Station AE Title values (more than one for a shared booking).
    start_date, start_time : str
        The scheduled start (DA ``YYYYMMDD``, TM ``HHMMSS``).
    code, description : str
        The protocol code value and the step description.
    """

    modality: str
    stations: tuple[str, ...]
    start_date: str
    start_time: str
    code: str
    description: str


@dataclass(frozen=True)
class WorklistFile:
    """What the generator writes into one ``.wl`` file.

    Attributes
    ----------
    index : int
        The file's number (1-based); it names the file and derives its identifiers.
    patient_id, patient_name : str
        The patient (one ID per patient; some patients have several files).
    latin1 : bool
        The file is ISO_IR 100 (the patient's name is not ASCII).
    birth_date, sex : str
        More patient attributes.
    accession : str
        The Accession Number, unique per file.
    steps : tuple[Step, ...]
        The SPS items (one, or two for about one file in ten).
    """

    index: int
    patient_id: str
    patient_name: str
    latin1: bool
    birth_date: str
    sex: str
    accession: str
    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        """The file name."""
        return f"{self.index:07d}.wl"


def parse_date(text: str) -> date:
    """A DA value as a date."""
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def plan_store(size: int, seed: int, ref_date: str) -> list[WorklistFile]:
    """Decide the contents of a store, deterministically.

    Parameters
    ----------
    size : int
        The number of scheduled procedure steps (worklist entries) to plan.
    seed : int
        The random seed.
    ref_date : str
        The reference ("today's") date, ``YYYYMMDD``; steps are spread over 30 days either
        side of it, a quarter of them within two days of it.

    Returns
    -------
    list[WorklistFile]
        The files in order; about one in ten holds two steps.
    """
    rng = random.Random(f"wlmserver-benchmark {seed}")
    ref = parse_date(ref_date)
    modalities = list(MODALITIES)
    weights = [MODALITIES[m][0] for m in modalities]
    patients: list[tuple[str, str, bool, str, str]] = []
    files: list[WorklistFile] = []
    planned = 0
    while planned < size:
        index = len(files) + 1
        anchor = index <= ANCHORS
        if patients and not anchor and rng.random() < 0.2:
            patient = rng.choice(patients)  # a patient with another procedure
        else:
            number = len(patients) + 1
            latin1 = number % LATIN1_EVERY == 7
            family, given = (LATIN1_FAMILY, LATIN1_GIVEN) if latin1 else (FAMILY, GIVEN)
            surname = FAMILY[index - 1] if anchor else rng.choice(family)
            born = ref - timedelta(days=rng.randrange(365, 95 * 365))
            patient = (
                f"PID{number:08d}",
                f"{surname}^{rng.choice(given)}",
                latin1,
                born.strftime("%Y%m%d"),
                rng.choice("FM"),
            )
            patients.append(patient)
        if anchor:
            offset = 0
        elif rng.random() < 0.25:
            offset = rng.randint(-2, 2)
        else:
            offset = rng.randint(-30, 30)
        day = (ref + timedelta(days=offset)).strftime("%Y%m%d")
        minutes = 7 * 60 + (index - 1) * 15 if anchor else rng.randrange(7 * 12, 19 * 12) * 5
        count = 2 if size - planned >= 2 and not anchor and rng.random() < 0.1 else 1
        steps = []
        for n in range(count):
            modality = "CT" if anchor else rng.choices(modalities, weights)[0]
            stations = MODALITIES[modality][1]
            if anchor:
                chosen: tuple[str, ...] = ("CT01",)
            elif len(stations) > 1 and rng.random() < 0.05:
                chosen = stations[:2]  # booked on either of two rooms
            else:
                chosen = (rng.choice(stations),)
            code, description = rng.choice(PROCEDURES[modality])
            start = min(minutes + 45 * n, 19 * 60 - 5)
            steps.append(
                Step(
                    modality, chosen, day, f"{start // 60:02d}{start % 60:02d}00", code, description
                )
            )
        pid, pname, latin1, born_text, sex = patient
        files.append(
            WorklistFile(index, pid, pname, latin1, born_text, sex, f"ACC{index:09d}", tuple(steps))
        )
        planned += count
    return files


def _code_item(code: str, meaning: str) -> Dataset:
    """A code sequence item in a local coding scheme."""
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "99WLMBENCH"
    item.CodeMeaning = meaning
    return item


def build_dataset(wl: WorklistFile, seed: int) -> Dataset:
    """The dataset of one generated file: every PS3.4 Table K.6-1 Type 1 key and more.

    Parameters
    ----------
    wl : WorklistFile
        The planned contents.
    seed : int
        The store's seed (part of the Study Instance UID).

    Returns
    -------
    Dataset
        The file's dataset, without file meta information.
    """
    ds = Dataset()
    if wl.latin1:
        ds.SpecificCharacterSet = "ISO_IR 100"
    first = wl.steps[0]
    ds.AccessionNumber = wl.accession
    ds.ReferringPhysicianName = PHYSICIANS[wl.index % len(PHYSICIANS)]
    ds.ReferencedStudySequence = []
    ds.ReferencedPatientSequence = []
    ds.PatientName = wl.patient_name
    ds.PatientID = wl.patient_id
    ds.IssuerOfPatientID = "WLMBENCH"
    ds.PatientBirthDate = wl.birth_date
    ds.PatientSex = wl.sex
    ds.PatientWeight = ""
    ds.MedicalAlerts = ""
    ds.Allergies = ""
    ds.StudyInstanceUID = f"{UID_ROOT}.1.{seed}.{wl.index}"
    ds.RequestingPhysician = PHYSICIANS[(wl.index + 2) % len(PHYSICIANS)]
    ds.RequestedProcedureDescription = first.description
    ds.RequestedProcedureCodeSequence = [_code_item(first.code, first.description)]
    ds.AdmissionID = ""
    ds.CurrentPatientLocation = ""
    items = []
    for n, step in enumerate(wl.steps, 1):
        item = Dataset()
        item.Modality = step.modality
        item.RequestedContrastAgent = ""
        item.ScheduledStationAETitle = (
            list(step.stations) if len(step.stations) > 1 else step.stations[0]
        )
        item.ScheduledProcedureStepStartDate = step.start_date
        item.ScheduledProcedureStepStartTime = step.start_time
        item.ScheduledPerformingPhysicianName = PHYSICIANS[(wl.index + n) % len(PHYSICIANS)]
        item.ScheduledProcedureStepDescription = step.description
        item.ScheduledProtocolCodeSequence = [_code_item(step.code, step.description)]
        item.ScheduledProcedureStepID = f"SPS{wl.index:09d}{n}"
        item.ScheduledStationName = f"{step.stations[0]} ROOM"
        item.ScheduledProcedureStepLocation = "RADIOLOGY"
        item.PreMedication = ""
        items.append(item)
    ds.ScheduledProcedureStepSequence = items
    ds.RequestedProcedureID = f"RP{wl.index:09d}"
    ds.RequestedProcedurePriority = "STAT" if wl.index % 17 == 0 else "ROUTINE"
    ds.PatientTransportArrangements = ""
    return ds


def _instance_uid(seed: int, index: int) -> str:
    """The Media Storage SOP Instance UID of file ``index`` (fixed length within a store)."""
    return f"{UID_ROOT}.2.{seed}.{10**9 + index}"


class FileEncoder:
    """Encode generated files as Part 10 bytes with pydicom (Explicit VR Little Endian).

    The file meta information is encoded once, with pydicom, for a template instance UID; each
    file then gets a copy with its own UID of the same length put in. The dataset is encoded
    with pydicom for each file.

    Parameters
    ----------
    seed : int
        The store's seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.template_uid = _instance_uid(seed, 0).encode()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_CLASS)
        meta.MediaStorageSOPInstanceUID = UID(self.template_uid.decode())
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(f"{UID_ROOT}.3")
        meta.ImplementationVersionName = "WLMBENCH"
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        self.header = fp.getvalue()
        if self.header.count(self.template_uid) != 1:
            raise RuntimeError("the template instance UID is not unique in the file meta")

    def encode(self, wl: WorklistFile) -> bytes:
        """The bytes of one file.

        Parameters
        ----------
        wl : WorklistFile
            The planned contents.

        Returns
        -------
        bytes
            Preamble, file meta information and the dataset.
        """
        uid = _instance_uid(self.seed, wl.index).encode()
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_dataset(fp, build_dataset(wl, self.seed))
        return self.header.replace(self.template_uid, uid) + fp.getvalue()


def _write_chunk(job: tuple[str, int, list[WorklistFile]]) -> int:
    """Write one chunk of files (run in a worker process); returns how many."""
    folder, seed, chunk = job
    encoder = FileEncoder(seed)
    for wl in chunk:
        with open(os.path.join(folder, wl.name), "wb") as handle:
            handle.write(encoder.encode(wl))
    return len(chunk)


def write_store(folder: Path, files: Sequence[WorklistFile], seed: int, jobs: int) -> None:
    """Write the files (and an empty ``lockfile``) into an AE folder.

    Parameters
    ----------
    folder : Path
        The AE folder; created if needed.
    files : Sequence[WorklistFile]
        The planned files.
    seed : int
        The store's seed.
    jobs : int
        Worker processes to encode with (1: in this process).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    work = [(str(folder), seed, list(files[i : i + CHUNK])) for i in range(0, len(files), CHUNK)]
    if jobs <= 1 or len(work) <= 1:
        for job in work:
            _write_chunk(job)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(jobs, len(work))) as pool:
        written = sum(pool.imap_unordered(_write_chunk, work))
    if written != len(files):
        raise RuntimeError(f"wrote {written} of {len(files)} files")


@dataclass
class Store:
    """A generated store on disk.

    Attributes
    ----------
    root : Path
        The database root (``-dfp``); the files are in ``root/WLM``.
    size, seed : int
        Steps and seed it was generated with.
    ref_date : str
        The reference date it was generated around.
    files : list[WorklistFile]
        What it holds (from the manifest).
    generated_s : float or None
        Seconds it took to generate; None when an existing store was reused.
    """

    root: Path
    size: int
    seed: int
    ref_date: str
    files: list[WorklistFile]
    generated_s: float | None = None


def _manifest(size: int, seed: int, ref_date: str, files: Sequence[WorklistFile]) -> str:
    """The manifest of a store as JSON text."""
    return json.dumps(
        {
            "generator": GENERATOR_VERSION,
            "size": size,
            "seed": seed,
            "date": ref_date,
            "files": [asdict(wl) for wl in files],
        },
        ensure_ascii=False,
    )


def _read_manifest(path: Path, size: int, seed: int, ref_date: str) -> list[WorklistFile] | None:
    """The files listed by a store's manifest, or None if it is missing or for another store."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (data.get("generator"), data.get("size"), data.get("seed"), data.get("date")) != (
        GENERATOR_VERSION,
        size,
        seed,
        ref_date,
    ):
        return None
    return [
        WorklistFile(
            **{
                **wl,
                "steps": tuple(
                    Step(**{**s, "stations": tuple(s["stations"])}) for s in wl["steps"]
                ),
            }
        )
        for wl in data["files"]
    ]


def ensure_store(workdir: Path, size: int, seed: int, ref_date: str, jobs: int) -> Store:
    """Reuse the store of this size, seed and date under ``workdir``, or generate it.

    Parameters
    ----------
    workdir : Path
        Where stores are kept.
    size, seed : int
        Steps and seed.
    ref_date : str
        The reference date.
    jobs : int
        Worker processes for generation.

    Returns
    -------
    Store
        The store. Its manifest is written last, so a store cut short by an interruption is
        not reused but generated again.
    """
    root = workdir / f"store-{size}-seed{seed}-{ref_date}"
    files = _read_manifest(root / MANIFEST, size, seed, ref_date)
    if files is not None and (root / AE_FOLDER / "lockfile").exists():
        remove_drops(root / AE_FOLDER)  # left behind by an interrupted run
        return Store(root, size, seed, ref_date, files)
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    files = plan_store(size, seed, ref_date)
    write_store(root / AE_FOLDER, files, seed, jobs)
    temp = root / f".{MANIFEST}.tmp"
    temp.write_text(_manifest(size, seed, ref_date, files), encoding="utf-8")
    os.replace(temp, root / MANIFEST)
    return Store(root, size, seed, ref_date, files, time.perf_counter() - started)


def remove_drops(folder: Path) -> None:
    """Remove the files the drop test writes (and their temporary names) from an AE folder."""
    for pattern in (f"{DROP_PREFIX}*", f".{DROP_PREFIX}*"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
