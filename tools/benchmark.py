"""Benchmark wlmserver against DCMTK's wlmscpfs and a pynetdicom floor on generated stores.

For each size N it generates (or reuses) a store ``<workdir>/store-N-seedS-DATE/WLM/*.wl`` of
N scheduled procedure steps (about one file in ten holds two, so there are about N/1.1 files),
then measures three servers on it, one after the other, each in its own process:

``wlmserver``
    ``python -m wlmserver -dfp <root> --bind 127.0.0.1 <port> -q``: cold start (process start
    to its ready line) and resident memory after indexing and after the queries.
``wlmscpfs``
    DCMTK's ``wlmscpfs -dfp <root> <port>`` where installed. It reads every file on every
    query and skips files with more than one SPS item, so its answer counts are reported too.
``floor``
    A plain pynetdicom SCP that answers query (a) with the answers wlmserver gave, kept in
    memory as datasets: what a pynetdicom server costs that does no matching and no I/O (it
    still lets pynetdicom encode every answer, which a server may do faster).

The client is pynetdicom with a new association per query, as modalities do (TCP_NODELAY on, as
DCMTK clients have it). Queries: (a) station CT01 + modality CT + the reference date, (b) one
patient ID, (c) one accession number, (d) the broad patient name prefix ``NAKA*`` (7 % of the
store), (e) a selective one (``FAMILY^GI*``), each repeated
``--repeat`` times but for at most ``--max-seconds`` per query type (p50, p95 latency); then
``--clients`` threads, each with its own associations, repeating (a) for
``--concurrency-seconds`` (queries/s; at sizes up to ``--concurrency-max-size`` unless
``--concurrency-all``), once with pynetdicom clients and once with ``tools/leanfind.py``'s
raw-socket clients (which only count answers, so the server, not the client, is measured; each
selective query's p50 is measured with it too); then a universal query (PatientName, PatientID
and an empty SPS item) over the whole store, received by pynetdicom and, where installed, by
DCMTK's ``findscu`` (a C++ client, so the client is not the bottleneck), cut off after
``--universal-timeout`` seconds; finally the same universal query cancelled after its first
answer (time until the final status, which should be Cancel, 0xFE00). Last, ``--drops`` files
are renamed into wlmserver's AE folder one by one and queried until answered (time until a new
file is served); they are removed again, so the store stays as generated.

Client and servers share the machine, so latencies include the client's work (decoding each
answer costs a pynetdicom client about as much as sending it costs the server). The CPU time
each server process used (its threads and its children, from /proc) is therefore reported
too, per query and for the universal query; it does not depend on the client.

Every answer count of wlmserver is checked against the count computed from what the generator
wrote; a difference is reported and makes the exit status 1. A measurement that fails (no
association, no answer) is reported and makes it 2.

Usage::

    python3 tools/benchmark.py --sizes 1000 10000 100000 [--workdir DIR] [--json out.json]

Only 127.0.0.1 is used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # leanfind, beside this file
from leanfind import LeanClient, LeanError, repeat_in_threads, run_clients
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

MWL_FIND = "1.2.840.10008.5.1.4.31"
#: The AE folder of every generated store, and the called AE title of every query.
AE_FOLDER = "WLM"
WLMSCPFS = Path("/usr/bin/wlmscpfs")
FINDSCU = Path("/usr/bin/findscu")
#: Bumped whenever the generator's output changes, so that stale stores are not reused.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
#: The Media Storage SOP Class UID DCMTK's dump2dcm writes into worklist files.
WORKLIST_FILE_CLASS = "1.2.276.0.7230010.3.1.0.1"
#: An invented UID root (the same organisation root as tools/make_wlistdb.py).
UID_ROOT = "1.2.826.0.1.3680043.10.1234.77"
PENDING = (0xFF00, 0xFF01)
CANCEL = 0xFE00

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


# ------------------------------------------------------------------------------ the store
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


def _day(text: str) -> date:
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
    ref = _day(ref_date)
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


# ------------------------------------------------------------------------------ the queries
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


# ------------------------------------------------------------------------------ the client
class BenchmarkError(RuntimeError):
    """A server could not be started or did not answer."""


def _nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm, as DCMTK clients (and wlmserver) do."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class FindOutcome:
    """What one C-FIND brought back.

    Attributes
    ----------
    answers : int
        Pending responses received.
    status : int or None
        The final status; None if none came (timeout or abort).
    seconds : float
        From requesting the association to its release.
    identifiers : list[Dataset]
        The answers, when asked to keep them.
    cancel_seconds : float or None
        From sending C-CANCEL to the final status, if a C-CANCEL was sent.
    answers_after_cancel : int
        Pending responses received after the C-CANCEL.
    timed_out : bool
        The query was cancelled because its deadline passed, or no final status came.
    """

    answers: int = 0
    status: int | None = None
    seconds: float = 0.0
    identifiers: list[Dataset] = field(default_factory=list)
    cancel_seconds: float | None = None
    answers_after_cancel: int = 0
    timed_out: bool = False


class Client:
    """A pynetdicom worklist client; each query runs on a new association.

    Parameters
    ----------
    timeout : float
        ACSE, DIMSE and network timeout in seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.ae: Any = AE(ae_title="WLMBENCH")
        self.ae.add_requested_context(MWL_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.acse_timeout = timeout
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        self.ae.connection_timeout = min(timeout, 10.0)

    def find(
        self,
        port: int,
        query: Dataset,
        *,
        keep: bool = False,
        cancel_after: int | None = None,
        deadline: float | None = None,
    ) -> FindOutcome:
        """Send one C-FIND over a new association and receive every response.

        Parameters
        ----------
        port : int
            The server's port on 127.0.0.1.
        query : Dataset
            The identifier.
        keep : bool
            Keep the answers' identifiers.
        cancel_after : int or None
            Send C-CANCEL after this many answers.
        deadline : float or None
            A ``time.monotonic()`` value; after it, send C-CANCEL after the next answer.

        Returns
        -------
        FindOutcome
            Counts, final status and times.

        Raises
        ------
        BenchmarkError
            The association was not established.
        """
        outcome = FindOutcome()
        started = time.perf_counter()
        assoc = self.ae.associate(
            "127.0.0.1", port, ae_title=AE_FOLDER, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
        )
        if not assoc.is_established:
            how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            seconds = time.perf_counter() - started
            raise BenchmarkError(f"association with port {port} {how} after {seconds:.1f} s")
        cancel_sent: float | None = None
        try:
            for status, identifier in assoc.send_c_find(query, MWL_FIND):
                if "Status" not in status:  # no response within the timeout, or an abort
                    outcome.timed_out = True
                    break
                code = int(status.Status)
                if code not in PENDING:
                    outcome.status = code
                    if cancel_sent is not None:
                        outcome.cancel_seconds = time.perf_counter() - cancel_sent
                    break
                outcome.answers += 1
                if cancel_sent is not None:
                    outcome.answers_after_cancel += 1
                    continue
                if keep and identifier is not None:
                    outcome.identifiers.append(identifier)
                late = deadline is not None and time.monotonic() > deadline
                if late or (cancel_after is not None and outcome.answers >= cancel_after):
                    outcome.timed_out = late
                    assoc.send_c_cancel(1, query_model=MWL_FIND)
                    cancel_sent = time.perf_counter()
        finally:
            if assoc.is_established:
                assoc.release()
        outcome.seconds = time.perf_counter() - started
        return outcome


def _p95(values: Sequence[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def measure_latency(
    client: Client, port: int, spec: QuerySpec, repeat: int, max_seconds: float
) -> tuple[dict[str, Any], list[Dataset]]:
    """Repeat one query, each on a new association.

    Parameters
    ----------
    client : Client
        The client.
    port : int
        The server's port.
    spec : QuerySpec
        The query.
    repeat : int
        Runs at most.
    max_seconds : float
        No further run starts after this many seconds (the first always runs).

    Returns
    -------
    tuple[dict[str, Any], list[Dataset]]
        Figures (``p50_ms``, ``p95_ms``, ``answers``, ``answers_vary``, ``runs``,
        ``statuses``, ``latencies_ms``) and the first run's answers.
    """
    query = query_dataset(spec)
    times: list[float] = []
    counts: set[int] = set()
    statuses: set[int | None] = set()
    first: list[Dataset] = []
    stop = time.monotonic() + max_seconds
    for n in range(max(1, repeat)):
        if n and time.monotonic() > stop:
            break
        outcome = client.find(port, query, keep=n == 0)
        if n == 0:
            first = outcome.identifiers
        times.append(outcome.seconds * 1000)
        counts.add(outcome.answers)
        statuses.add(outcome.status)
    figures = {
        "p50_ms": statistics.median(times),
        "p95_ms": _p95(times),
        "answers": min(counts),
        "answers_vary": len(counts) > 1,
        "runs": len(times),
        "statuses": sorted(s if s is not None else -1 for s in statuses),
        "latencies_ms": [round(t, 3) for t in times],
    }
    return figures, first


def measure_concurrency(
    port: int, spec: QuerySpec, clients: int, seconds: float, timeout: float
) -> dict[str, Any]:
    """Several client threads, each with its own associations, repeat one query.

    Parameters
    ----------
    port : int
        The server's port.
    spec : QuerySpec
        The query.
    clients : int
        Threads.
    seconds : float
        No thread starts a query after this many seconds.
    timeout : float
        Per-query timeout.

    Returns
    -------
    dict[str, Any]
        ``clients``, ``seconds`` (until the last query ended), ``queries``, ``qps`` and
        ``errors`` (failed associations or queries without a success status).
    """
    query = query_dataset(spec)

    def make_query() -> Callable[[], int]:
        client = Client(timeout)
        return lambda: _status(client.find(port, query))

    figures = repeat_in_threads(
        clients, seconds, make_query, (BenchmarkError,), join_timeout=timeout + 5
    )
    return _concurrency_figures(clients, figures)


def _concurrency_figures(clients: int, figures: dict[str, float]) -> dict[str, Any]:
    return {
        "clients": clients,
        "seconds": figures["seconds"],
        "queries": int(figures["queries"]),
        "qps": figures["qps"],
        "errors": int(figures["errors"]),
        "unfinished_clients": int(figures["unfinished"]),
    }


def _status(outcome: FindOutcome) -> int:
    return -1 if outcome.status is None else outcome.status


def measure_latency_lean(
    port: int, spec: QuerySpec, repeat: int, max_seconds: float, timeout: float
) -> dict[str, Any]:
    """Like :func:`measure_latency`, with the lean client: the server's own latency (the
    client neither decodes nor keeps the answers).

    Returns
    -------
    dict[str, Any]
        ``p50_ms``, ``p95_ms``, ``answers`` (the fewest of any run), ``runs``.
    """
    client = LeanClient(port, query_dataset(spec), called=AE_FOLDER, timeout=timeout)
    times: list[float] = []
    counts: set[int] = set()
    stop = time.monotonic() + max_seconds
    for n in range(max(1, repeat)):
        if n and time.monotonic() > stop:
            break
        try:
            outcome = client.find()
        except (OSError, LeanError) as exc:
            raise BenchmarkError(f"lean client: {exc}") from exc
        if outcome.status != 0:
            raise BenchmarkError(f"lean client: final status 0x{outcome.status:04X}")
        times.append(outcome.seconds * 1000)
        counts.add(outcome.answers)
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": _p95(times),
        "answers": min(counts),
        "runs": len(times),
    }


def measure_concurrency_lean(
    port: int, spec: QuerySpec, clients: int, seconds: float
) -> dict[str, Any]:
    """Like :func:`measure_concurrency`, with ``tools/leanfind.py``'s raw-socket client.

    A pynetdicom client decodes every answer and costs more CPU than the server; on a
    2-core machine several of them measure themselves. The lean client only counts answers
    (about 1 ms of CPU per query), so this measures what the server can serve.

    Returns
    -------
    dict[str, Any]
        As :func:`measure_concurrency`.
    """
    figures = run_clients(port, query_dataset(spec), clients, seconds, called=AE_FOLDER)
    if not figures["queries"]:
        raise BenchmarkError(f"no query succeeded ({figures['errors']:.0f} errors)")
    return _concurrency_figures(clients, figures)


def measure_universal(port: int, spec: QuerySpec, timeout: float) -> dict[str, Any]:
    """The universal query received by pynetdicom, cut off (C-CANCEL) after ``timeout``.

    Parameters
    ----------
    port : int
        The server's port.
    spec : QuerySpec
        The universal query.
    timeout : float
        Seconds; also the DIMSE timeout for the first answer.

    Returns
    -------
    dict[str, Any]
        ``answers``, ``seconds``, ``answers_per_s``, ``status`` and ``complete`` (whether
        the server finished before the cut-off).
    """
    client = Client(timeout)
    outcome = client.find(port, query_dataset(spec), deadline=time.monotonic() + timeout)
    return {
        "answers": outcome.answers,
        "seconds": outcome.seconds,
        "answers_per_s": outcome.answers / outcome.seconds,
        "status": outcome.status,
        "complete": outcome.status == 0 and not outcome.timed_out,
    }


def measure_universal_findscu(findscu: Path, port: int, timeout: float) -> dict[str, Any]:
    """The universal query received by DCMTK's findscu, killed after ``timeout`` seconds.

    Parameters
    ----------
    findscu : Path
        DCMTK's findscu.
    port : int
        The server's port.
    timeout : float
        Seconds.

    Returns
    -------
    dict[str, Any]
        ``answers``, ``seconds``, ``answers_per_s`` and ``complete``.
    """
    args = [
        str(findscu), "-v", "-W", "-aet", "WLMBENCH", "-aec", AE_FOLDER, "127.0.0.1", str(port),
        "-k", "PatientName", "-k", "PatientID", "-k", "(0040,0100)[0]",
    ]  # fmt: skip
    counted = [0]

    def count(stream: IO[bytes]) -> None:
        for line in stream:
            if b"Find Response" in line and b"(Pending)" in line:
                counted[0] += 1

    started = time.perf_counter()
    with subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        assert process.stdout is not None
        reader = threading.Thread(target=count, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        reader.join(timeout=10)
    seconds = time.perf_counter() - started
    return {
        "answers": counted[0],
        "seconds": seconds,
        "answers_per_s": counted[0] / seconds,
        "complete": code == 0,
    }


def measure_cancel(port: int, spec: QuerySpec, timeout: float) -> dict[str, Any]:
    """The universal query, cancelled after its first answer.

    Parameters
    ----------
    port : int
        The server's port.
    spec : QuerySpec
        The universal query.
    timeout : float
        Per-query timeout.

    Returns
    -------
    dict[str, Any]
        ``status`` (0xFE00 expected), ``cancel_ms`` (C-CANCEL sent to final status, None if
        the server ended before the C-CANCEL was sent), ``answers_after_cancel`` and
        ``seconds`` (the whole association).
    """
    outcome = Client(timeout).find(port, query_dataset(spec), cancel_after=1)
    return {
        "status": outcome.status,
        "cancel_ms": None if outcome.cancel_seconds is None else outcome.cancel_seconds * 1000,
        "answers_after_cancel": outcome.answers_after_cancel,
        "seconds": outcome.seconds,
    }


def remove_drops(folder: Path) -> None:
    """Remove the files the drop test writes (and their temporary names) from an AE folder."""
    for pattern in (f"{DROP_PREFIX}*", f".{DROP_PREFIX}*"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


def measure_drops(
    client: Client, port: int, folder: Path, seed: int, ref_date: str, count: int
) -> dict[str, Any]:
    """Time from renaming a new file into the AE folder until a query answers it.

    Parameters
    ----------
    client : Client
        The client.
    port : int
        The server's port.
    folder : Path
        The AE folder it serves.
    seed : int
        The store's seed (for the files' UIDs).
    ref_date : str
        The reference date (the dropped step is scheduled on it).
    count : int
        Files to drop, one after the other. Each is written under a temporary name, renamed
        into place (as the README says to), then queried by its accession number, query after
        query, for at most 5 seconds. All of them are removed again at the end.

    Returns
    -------
    dict[str, Any]
        ``count``, ``answered``, ``p50_ms``, ``p95_ms`` (None if none was answered) and
        ``times_ms``.
    """
    encoder = FileEncoder(seed)
    times: list[float] = []
    try:
        for n in range(count):
            step = Step("CT", ("CT01",), ref_date, "120000", "CT001", "CT HEAD W/O CONTRAST")
            wl = WorklistFile(
                900_000_000 + n, f"DROP{n:06d}", "DROPPED^FILE", False, "19800101", "O",
                f"DROP{n:08d}", (step,),
            )  # fmt: skip
            name = f"{DROP_PREFIX}{n:04d}.wl"
            temp = folder / f".{name}.tmp"
            temp.write_bytes(encoder.encode(wl))
            query = query_dataset(QuerySpec("drop", "drop", accession=wl.accession))
            os.replace(temp, folder / name)
            started = time.perf_counter()
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if client.find(port, query).answers:
                    times.append((time.perf_counter() - started) * 1000)
                    break
    finally:
        remove_drops(folder)
    return {
        "count": count,
        "answered": len(times),
        "p50_ms": statistics.median(times) if times else None,
        "p95_ms": _p95(times) if times else None,
        "times_ms": [round(t, 3) for t in times],
    }


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (from /proc), or None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a process, its threads and its children (from /proc).

    Parameters
    ----------
    pid : int
        The process.

    Returns
    -------
    float or None
        User + system time of the process (all threads), of its children it has reaped and
        of the children still there (wlmscpfs forks one per association and reaps it later);
        None where /proc is not available.
    """

    def times(task: str, reaped: bool) -> float:
        fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14 to 17
        return sum(int(v) for v in fields[11 : 15 if reaped else 13])

    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    try:
        ticks = times(str(pid), True)
    except OSError:
        return None
    for child in children:
        with suppress(OSError):
            ticks += times(child, True)
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_delta(before: float | None, after: float | None) -> float | None:
    """``after - before`` when both are known."""
    return None if before is None or after is None else after - before


@dataclass
class Running:
    """A server process started by :func:`server_process`.

    Attributes
    ----------
    name : str
        ``wlmserver``, ``wlmscpfs`` or ``floor``.
    process : subprocess.Popen[bytes]
        The process.
    port : int
        Where it listens.
    startup_s : float
        Process start to ready (ready line printed, or port accepting connections).
    """

    name: str
    process: subprocess.Popen[bytes]
    port: int
    startup_s: float


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_ready_line(
    process: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float
) -> str:
    """Read the process's stdout until a line matches ``pattern``; bounded by ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BenchmarkError(f"exited with status {process.wait()} before it was ready")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if pattern.search(text):
                    return text
    raise BenchmarkError(f"not ready within {timeout:.0f} s")


def _wait_for_port(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Wait until ``port`` accepts connections; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"exited with status {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchmarkError(f"port {port} not open within {timeout:.0f} s")


@contextmanager
def server_process(
    name: str,
    args: list[str],
    port: int,
    log: Path,
    timeout: float,
    ready: re.Pattern[str] | None = None,
) -> Iterator[Running]:
    """Run a server process for the duration of a ``with`` block.

    Parameters
    ----------
    name : str
        For messages.
    args : list[str]
        The command.
    port : int
        The port it listens on.
    log : Path
        Its stderr goes here.
    timeout : float
        Seconds to wait for it to be ready.
    ready : re.Pattern[str] or None
        A line on stdout that says it is ready; None: wait for the port instead.

    Yields
    ------
    Running
        The process, ready.

    Raises
    ------
    BenchmarkError
        It exited or was not ready in time (the message holds the end of its log).
    """
    with open(log, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
            stderr=err,
        )
        try:
            try:
                if ready is not None:
                    _read_ready_line(process, ready, timeout)
                _wait_for_port(process, port, timeout)
            except BenchmarkError as exc:
                raise BenchmarkError(f"{name} {exc}; its log:\n{_tail(log)}") from None
            yield Running(name, process, port, time.perf_counter() - started)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
            if process.stdout is not None:
                process.stdout.close()


# ------------------------------------------------------------------------------ the floor
def serve_floor(port: int, answers_path: Path, lifetime: float) -> int:
    """Run the floor SCP: answer every C-FIND with the answers in ``answers_path``.

    Parameters
    ----------
    port : int
        Port on 127.0.0.1.
    answers_path : Path
        A JSON list of answer identifiers (DICOM JSON).
    lifetime : float
        Exit after this many seconds at most.

    Returns
    -------
    int
        The exit status.
    """
    answers = [Dataset.from_json(item) for item in json.loads(answers_path.read_text())]

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        _ = event.identifier  # decode the query, as any server must
        for answer in answers:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield 0xFF00, answer

    ae: Any = AE(ae_title="FLOOR")
    ae.add_supported_context(
        MWL_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"]
    )
    ae.maximum_associations = 50
    ae.maximum_pdu_size = 16384
    ae.network_timeout = 60
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_CONN_OPEN, _nodelay)],
    )
    print(f"floor on port {port} with {len(answers)} answers", flush=True)
    try:
        time.sleep(lifetime)
    finally:
        server.shutdown()
    return 0


# ------------------------------------------------------------------------------ one size
def _run_queries(
    running: Running,
    specs: list[QuerySpec],
    size: int,
    args: argparse.Namespace,
    only: tuple[str, ...] | None = None,
    drop_folder: Path | None = None,
) -> tuple[dict[str, Any], list[Dataset]]:
    """All measurements against one running server.

    Parameters
    ----------
    running : Running
        The server.
    specs : list[QuerySpec]
        The queries (the last is the universal one).
    size : int
        The store size (whether to run the concurrency test).
    args : argparse.Namespace
        The options.
    only : tuple[str, ...] or None
        Run only these selective queries and no universal or cancel (for the floor).
    drop_folder : Path or None
        Also time how soon files dropped into this AE folder are answered (last, so that
        the other figures are taken on the store as generated).

    Returns
    -------
    tuple[dict[str, Any], list[Dataset]]
        The figures, and the answers of query (a).
    """
    pid = running.process.pid
    errors: list[str] = []
    out: dict[str, Any] = {
        "startup_s": running.startup_s,
        "rss_mb_ready": rss_mb(pid),
        "queries": {},
        "errors": errors,
    }
    client = Client(args.query_timeout)

    def attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one measurement, adding the server's CPU time; a failure is recorded."""
        before = cpu_seconds(pid)
        try:
            figures = measure()
        except BenchmarkError as exc:
            if running.process.poll() is not None:
                status = running.process.returncode
                raise BenchmarkError(f"{running.name} exited ({status}) in {what}: {exc}") from exc
            errors.append(f"{what}: {exc}")
            _progress(f"  {running.name:9} {what} FAILED: {exc}")
            return None
        figures["server_cpu_s"] = _cpu_delta(before, cpu_seconds(pid))
        return figures

    # one query (a) first, not counted: the first query after start-up pays one-off costs
    warm_up = attempt(
        "warm-up", lambda: {"ms": client.find(running.port, query_dataset(specs[0])).seconds}
    )
    out["warm_up_ms"] = None if warm_up is None else warm_up["ms"] * 1000
    first_answers: dict[str, list[Dataset]] = {}

    def latency(spec: QuerySpec) -> dict[str, Any]:
        figures, first_answers[spec.key] = measure_latency(
            client, running.port, spec, args.repeat, args.max_seconds
        )
        return figures

    for spec in specs:
        if spec.key == "universal" or (only is not None and spec.key not in only):
            continue
        result = attempt(spec.label, partial(latency, spec))
        if result is None:
            continue
        cpu = result["server_cpu_s"]
        result["server_cpu_ms"] = None if cpu is None else cpu * 1000 / result["runs"]
        out["queries"][spec.key] = result
        _progress(
            f"  {running.name:9} {spec.label:36} p50 {result['p50_ms']:9.1f} ms  "
            f"{result['answers']} answers, {result['runs']} runs"
        )
        lean = attempt(
            f"{spec.label} (lean client)",
            partial(
                measure_latency_lean,
                running.port,
                spec,
                args.repeat,
                args.max_seconds,
                args.query_timeout,
            ),
        )
        if lean is not None:
            result["lean"] = lean
            _progress(f"  {running.name:9} {'  lean client':36} p50 {lean['p50_ms']:9.1f} ms")
    if args.concurrency_all or size <= args.concurrency_max_size:
        out["concurrency"] = attempt(
            "concurrency",
            lambda: measure_concurrency(
                running.port, specs[0], args.clients, args.concurrency_seconds, args.query_timeout
            ),
        )
        if out["concurrency"]:
            qps = out["concurrency"]["qps"]
            _progress(f"  {running.name:9} {args.clients} clients: {qps:.1f} q/s")
        out["concurrency_lean"] = attempt(
            "concurrency (lean clients)",
            lambda: measure_concurrency_lean(
                running.port, specs[0], args.clients, args.concurrency_seconds
            ),
        )
        if out["concurrency_lean"]:
            qps = out["concurrency_lean"]["qps"]
            _progress(f"  {running.name:9} {args.clients} lean clients: {qps:.1f} q/s")
    if only is None:
        universal = specs[-1]
        out["universal"] = attempt(
            "universal",
            lambda: measure_universal(running.port, universal, args.universal_timeout),
        )
        if out["universal"]:
            _progress(
                f"  {running.name:9} universal: {out['universal']['answers']} answers in "
                f"{out['universal']['seconds']:.1f} s"
            )
        if args.findscu is not None:
            out["universal_findscu"] = attempt(
                "universal (findscu)",
                lambda: measure_universal_findscu(
                    args.findscu, running.port, args.universal_timeout
                ),
            )
        out["cancel"] = attempt(
            "cancel", lambda: measure_cancel(running.port, universal, args.query_timeout)
        )
    if drop_folder is not None and args.drops > 0:
        out["drops"] = attempt(
            "drops",
            lambda: measure_drops(
                client, running.port, drop_folder, args.seed, args.date, args.drops
            ),
        )
    station_answers = first_answers.get("station", [])
    out["rss_mb_after"] = rss_mb(running.process.pid)
    return out, station_answers


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine skews the figures)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _progress(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


def run_size(size: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Generate or reuse the store of one size and measure every server on it.

    Parameters
    ----------
    size : int
        Steps in the store.
    workdir : Path
        Where the store, logs and floor answers go.
    args : argparse.Namespace
        The options.

    Returns
    -------
    dict[str, Any]
        The store's description, the queries with their expected answer counts, and the
        figures per server.
    """
    store = ensure_store(workdir, size, args.seed, args.date, args.jobs)
    files = store.files
    _progress(
        f"store of {size} steps in {len(files)} files: "
        + ("reused" if store.generated_s is None else f"generated in {store.generated_s:.1f} s")
        + f" ({store.root})"
    )
    specs = query_specs(files, args.date)
    result: dict[str, Any] = {
        "size": size,
        "files": len(files),
        "files_two_sps": sum(len(wl.steps) == 2 for wl in files),
        "files_latin1": sum(wl.latin1 for wl in files),
        "store": str(store.root),
        "load_average_before": _load_average(),
        "generated_s": store.generated_s,
        "queries": {
            spec.key: {
                "label": spec.label,
                "keys": spec.matching_keys(),
                "expected": spec.expected(files),
                "expected_single_sps": spec.expected(files, single_sps_only=True),
            }
            for spec in specs
        },
        "servers": {},
    }
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    servers = result["servers"]

    port = free_port()
    command = [sys.executable, "-m", "wlmserver", "-dfp", str(store.root), "--bind", "127.0.0.1"]
    command += [*args.server_arg, "-q", str(port)]
    ready = re.compile(rf"\bon port {port}\b")
    log = logs / f"wlmserver-{size}.log"
    with server_process("wlmserver", command, port, log, args.start_timeout, ready) as running:
        _progress(f"  wlmserver ready in {running.startup_s:.2f} s")
        servers["wlmserver"], station_answers = _run_queries(
            running, specs, size, args, drop_folder=store.root / AE_FOLDER
        )
    answers_path = workdir / f"floor-answers-{size}.json"
    answers_path.write_text(json.dumps([a.to_json_dict() for a in station_answers]))

    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-server", str(port)]
    command += [str(answers_path), "--floor-lifetime", str(args.floor_lifetime)]
    ready = re.compile(rf"^floor on port {port}\b")
    with server_process("floor", command, port, logs / f"floor-{size}.log", 60, ready) as running:
        servers["floor"], _ = _run_queries(running, specs, size, args, only=("station",))

    if args.wlmscpfs is not None:
        port = free_port()
        command = [str(args.wlmscpfs), "-dfp", str(store.root), str(port)]
        log = logs / f"wlmscpfs-{size}.log"
        with server_process("wlmscpfs", command, port, log, 60) as running:
            servers["wlmscpfs"], _ = _run_queries(running, specs, size, args)

    result["mismatches"] = [
        f"{key}: wlmserver answered {figures['answers']}, the store holds "
        f"{result['queries'][key]['expected']}"
        for key, figures in servers["wlmserver"]["queries"].items()
        if figures["answers"] != result["queries"][key]["expected"] or figures["answers_vary"]
    ]
    drops = servers["wlmserver"].get("drops")
    if drops and drops["answered"] != drops["count"]:
        result["mismatches"].append(
            f"drops: {drops['count'] - drops['answered']} of {drops['count']} dropped files "
            "not answered within 5 s"
        )
    result["load_average_after"] = _load_average()
    result["errors"] = [f"{name}: {e}" for name, out in servers.items() for e in out["errors"]]
    universal = servers["wlmserver"].get("universal")
    if universal and universal["complete"] and universal["answers"] != size:
        result["mismatches"].append(
            f"universal: wlmserver answered {universal['answers']} of {size}"
        )
    return result


# ------------------------------------------------------------------------------ report
def machine(wlmscpfs: Path | None) -> dict[str, Any]:
    """The machine and software the figures were taken on.

    Parameters
    ----------
    wlmscpfs : Path or None
        DCMTK's wlmscpfs, asked for its version.

    Returns
    -------
    dict[str, Any]
        ``nproc``, ``cpu``, ``system``, ``python``, ``pydicom``, ``pynetdicom``, ``dcmtk``.
    """
    import pydicom
    import pynetdicom

    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dcmtk = None
    if wlmscpfs is not None:
        with suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(
                [str(wlmscpfs), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            match = re.search(r"v(\d+\.\d+\.\d+)", text)
            dcmtk = match.group(1) if match else text.strip().splitlines()[0]
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "system": platform.platform(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
    }


def _num(value: Any, digits: int = 1) -> str:
    """A figure for the table; ``-`` when missing."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ratio(numerator: Any, denominator: Any) -> float | None:
    """numerator / denominator, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return float(numerator) / float(denominator)


def _loads(values: list[float] | None) -> str:
    """Load averages for the table header."""
    return "-" if not values else " ".join(f"{v:.2f}" for v in values)


def _per_query_cpu(concurrency: dict[str, Any] | None) -> float | None:
    """Server CPU milliseconds per query of a concurrency run."""
    if not concurrency or not concurrency.get("queries") or concurrency["server_cpu_s"] is None:
        return None
    return float(concurrency["server_cpu_s"]) * 1000 / int(concurrency["queries"])


def report(result: dict[str, Any]) -> str:
    """The table of one size.

    Parameters
    ----------
    result : dict[str, Any]
        What :func:`run_size` returned.

    Returns
    -------
    str
        Rows are metrics; columns wlmserver, wlmscpfs, floor, then ``scpfs/wlm`` (how many
        times faster wlmserver is than wlmscpfs: latency wlmscpfs/wlmserver, throughput
        wlmserver/wlmscpfs) and ``wlm/floor`` (wlmserver's cost relative to the floor:
        latency wlmserver/floor, throughput floor/wlmserver; 1.5 or less is within 1.5x).
    """
    servers = result["servers"]
    w = servers.get("wlmserver", {})
    d = servers.get("wlmscpfs", {})
    f = servers.get("floor", {})
    width = 34
    header = ["metric".ljust(width), "wlmserver", "wlmscpfs", "floor", "scpfs/wlm", "wlm/floor"]
    lines = [
        f"== {result['size']} SPS items in {result['files']} files "
        f"({result['files_two_sps']} with 2 SPS items, {result['files_latin1']} ISO_IR 100); "
        f"load average before {_loads(result.get('load_average_before'))}, "
        f"after {_loads(result.get('load_average_after'))}",
        " ".join(h if n == 0 else h.rjust(10) for n, h in enumerate(header)),
    ]

    def row(label: str, cells: Sequence[str], note: str = "") -> None:
        text = label.ljust(width) + " " + " ".join(c.rjust(10) for c in cells)
        lines.append((text + "  " + note).rstrip())

    def timed(label: str, ours: Any, theirs: Any, floor: Any, *, per_s: bool) -> None:
        versus = _ratio(ours, theirs) if per_s else _ratio(theirs, ours)
        cost = _ratio(floor, ours) if per_s else _ratio(ours, floor)
        row(label, [_num(ours), _num(theirs), _num(floor), _num(versus), _num(cost, 2)])

    def get(server: dict[str, Any], *path: str) -> Any:
        value: Any = server
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    row("index (cold start) s", [_num(get(w, "startup_s"), 2)], "wlmscpfs reads per query")
    row(
        "RSS MB ready / after queries",
        [
            f"{_num(get(w, 'rss_mb_ready'))}/{_num(get(w, 'rss_mb_after'))}",
            f"{_num(get(d, 'rss_mb_ready'))}/{_num(get(d, 'rss_mb_after'))}",
            f"{_num(get(f, 'rss_mb_ready'))}/{_num(get(f, 'rss_mb_after'))}",
        ],
        "wlmscpfs: parent; it forks per association",
    )
    if get(w, "drops"):
        row(
            "dropped file answered ms p50/p95",
            [f"{_num(get(w, 'drops', 'p50_ms'))}/{_num(get(w, 'drops', 'p95_ms'))}"],
            f"{get(w, 'drops', 'answered')} of {get(w, 'drops', 'count')} files renamed into place",
        )
    for key, query in result["queries"].items():
        if key == "universal":
            continue
        for stat in ("p50_ms", "p95_ms", "server_cpu_ms"):
            timed(
                f"{query['label']} {stat[:3]} ms" if stat != "server_cpu_ms" else "  server CPU ms",
                get(w, "queries", key, stat),
                get(d, "queries", key, stat),
                get(f, "queries", key, stat),
                per_s=False,
            )
        if get(w, "queries", key, "lean"):
            timed(
                "  p50 ms, lean client",
                *(get(s, "queries", key, "lean", "p50_ms") for s in (w, d, f)),
                per_s=False,
            )
        ours = get(w, "queries", key, "answers")
        flag = "" if ours == query["expected"] else "  MISMATCH"
        row(
            "  answers",
            [
                _num(ours),
                _num(get(d, "queries", key, "answers")),
                _num(get(f, "queries", key, "answers")),
            ],
            f"expected {query['expected']}; {query['expected_single_sps']} in 1-SPS files{flag}",
        )
    for key, kind in (("concurrency", ""), ("concurrency_lean", " lean")):
        if not get(w, key):
            continue
        timed(
            f"q/s, {get(w, key, 'clients')}{kind} clients, (a)",
            *(get(s, key, "qps") for s in (w, d, f)),
            per_s=True,
        )
        timed(
            "  server CPU ms/query",
            *(_per_query_cpu(get(s, key)) for s in (w, d, f)),
            per_s=False,
        )
    for key, client in (("universal", "pynetdicom"), ("universal_findscu", "findscu")):
        if key not in w:
            continue
        timed(
            f"universal answers/s ({client})",
            get(w, key, "answers_per_s"),
            get(d, key, "answers_per_s"),
            None,
            per_s=True,
        )
        cells = [
            f"{get(s, key, 'answers')}/{_num(get(s, key, 'seconds'))}"
            + ("" if get(s, key, "complete") else "!")
            for s in (w, d)
            if s
        ]
        cut = any(c.endswith("!") for c in cells)
        row("  answers/seconds", cells, "! = cut off by --universal-timeout" if cut else "")
        timed(
            "  server CPU s",
            get(w, key, "server_cpu_s"),
            get(d, key, "server_cpu_s"),
            None,
            per_s=False,
        )
    if "cancel" in w:
        present = [s for s in (w, d) if s]
        row(
            "cancel after 1st answer: ms",
            [_num(get(s, "cancel", "cancel_ms")) for s in present],
            "C-CANCEL sent to final status",
        )
        cells = []
        for s in present:
            status = get(s, "cancel", "status")
            after = get(s, "cancel", "answers_after_cancel")
            cells.append(f"{'-' if status is None else hex(status)}/{after}")
        row("  final status/answers after", cells, "0xfe00 = Cancel, 0x0 = all sent first")
    for mismatch in result.get("mismatches", []):
        lines.append(f"MISMATCH {mismatch}")
    for error in result.get("errors", []):
        lines.append(f"FAILED {error}")
    return "\n".join(lines)


def format_machine(info: dict[str, Any]) -> str:
    """One line describing the machine."""
    return (
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
        f"pydicom {info['pydicom']}, pynetdicom {info['pynetdicom']}, "
        f"DCMTK {info['dcmtk'] or 'not installed'}"
    )


# ------------------------------------------------------------------------------ main
def _date_arg(text: str) -> str:
    """A ``YYYYMMDD`` option value."""
    try:
        _day(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a date YYYYMMDD") from None
    if not re.fullmatch(r"\d{8}", text):
        raise argparse.ArgumentTypeError("expected a date YYYYMMDD")
    return text


def _executable(path: Path | None) -> Path | None:
    """``path`` if it is an executable file, else None."""
    return path if path is not None and os.access(path, os.X_OK) else None


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="SPS items")
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep stores, logs and answers here and reuse stores (default: a temporary "
        "folder, removed at the end)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated stores")
    p.add_argument("--date", type=_date_arg, default="20261122", help="the reference date")
    p.add_argument("--repeat", type=int, default=20, help="runs per selective query")
    p.add_argument(
        "--max-seconds", type=float, default=30.0, help="at most this long per query type"
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    p.add_argument("--concurrency-seconds", type=float, default=10.0)
    p.add_argument(
        "--concurrency-max-size",
        type=int,
        default=10000,
        help="run the concurrency test at sizes up to this",
    )
    p.add_argument("--concurrency-all", action="store_true", help="at every size")
    p.add_argument("--universal-timeout", type=float, default=180.0, help="seconds")
    p.add_argument(
        "--drops", type=int, default=20, help="files dropped into the store to time updates"
    )
    p.add_argument("--query-timeout", type=float, default=300.0, help="DIMSE timeout, seconds")
    p.add_argument("--start-timeout", type=float, default=900.0, help="for wlmserver's index")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="generator processes")
    p.add_argument("--wlmscpfs", type=Path, default=WLMSCPFS)
    p.add_argument("--no-wlmscpfs", action="store_true")
    p.add_argument("--findscu", type=Path, default=FINDSCU, help="DCMTK's findscu")
    p.add_argument("--no-findscu", action="store_true")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra wlmserver argument (repeatable), e.g. --server-arg=--rescan-interval=0",
    )
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--floor-server", nargs=2, metavar=("PORT", "ANSWERS"), help=argparse.SUPPRESS)
    p.add_argument("--floor-lifetime", type=float, default=3600.0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark.

    Parameters
    ----------
    argv : list[str] or None
        Command line arguments; None for ``sys.argv[1:]``.

    Returns
    -------
    int
        0; 1 when a wlmserver answer count differs from what the store holds; 2 when a
        server could not be started or a measurement failed (no association, no answer).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.floor_server:
        port, answers = args.floor_server
        return serve_floor(int(port), Path(answers), args.floor_lifetime)
    if min(args.sizes) < 1 or args.repeat < 1 or args.clients < 1:
        parser.error("--sizes, --repeat and --clients must be positive")
    installed = _executable(args.wlmscpfs)
    args.wlmscpfs = None if args.no_wlmscpfs else installed
    args.findscu = None if args.no_findscu else _executable(args.findscu)
    info = machine(installed)
    print(format_machine(info), flush=True)
    everything: dict[str, Any] = {"machine": info, "options": _options(args), "sizes": []}
    status = 0
    with ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wlmbench-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            try:
                result = run_size(size, workdir, args)
            except BenchmarkError as exc:
                print(f"size {size}: {exc}", file=sys.stderr)
                status = 2
                break
            everything["sizes"].append(result)
            print(report(result), flush=True)
            if result["mismatches"]:
                status = max(status, 1)
            if result["errors"]:
                status = 2
            if args.json:
                args.json.write_text(json.dumps(everything, indent=1, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, ensure_ascii=False))
    return status


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options as JSON-friendly values."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.exit(main())
