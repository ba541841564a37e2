"""Differential test of wlmserver against DCMTK's wlmscpfs on a generated, seeded store.

From one seed (``random.Random(seed)``) it generates a store of ``.wl`` files in one AE folder
(``WLM``) and a list of C-FIND queries, starts DCMTK's ``wlmscpfs`` (``-csk``, so that its
answers say their character set) and ``wlmserver`` on free loopback ports, sends every query to
both and compares, per query, the final status class and the multiset of answers. The request
PDUs are built once per query (by ``tools/leanfind.py``), so both servers receive the same
bytes; each server keeps one association for all queries. Answers are compared normalized:
every returned key and its values, decoded in the answer's Specific Character Set, padding
stripped; the Specific Character Set itself is compared apart.

The store holds files with several Scheduled Procedure Step items, several character sets
(default repertoire, ISO_IR 100, ISO_IR 192; ISO 2022 IR 87 in a run of its own, ``--ir87``),
zero-length and absent Type 2 values, multi-valued values (``CT01\\CT02``), files that lack a
Type 1 attribute, and dates and times over a week across a year end. The queries use every
matching type: universal, single value, wildcards, lists of values, date and time ranges
(open, across midnight, combined SPS date + time), sequence matching inside the SPS item, and
return keys only; :data:`PINNED` ones first, whatever the seed.

wlmscpfs skips a file with more than one SPS item; wlmserver answers one per matching item.
So that those files are still compared, wlmscpfs serves a copy of the store in which each such
file is split into one file per item: what wlmscpfs answers there is what wlmserver must answer
for the original file (and a query on the unsplit files checks that wlmscpfs skips them).

Every difference must be explained by :data:`INTENDED`, the table of intended differences that
README.md shows under "Differences from wlmscpfs" (a test keeps the two in step); anything else
is *unexplained* and reported with the query (as a ``findscu`` command), what wlmscpfs
answered and what wlmserver answered. Differences in matching are not taken on trust: the query
is sent to wlmscpfs again without the keys concerned (:func:`neutralized`), and its answers are
filtered twice, by a model of how wlmscpfs matches those keys (which must give wlmscpfs's own
answers back) and by an independent reference of how wlmserver is documented to match them
(which must give wlmserver's answers); the respects in which the two differ name the kinds.
Respects that are not in the table but look like wlmserver bugs are :data:`SUSPECTED`.

Usage::

    python3 tools/difftest.py --seed 7 --files 500 --queries 2000 [--keep DIR] [--ir87]

Exit status 0 when every difference is intended, 1 when any is not, 2 when a server could not
be started. Only 127.0.0.1 is used; every subprocess and network wait has a timeout.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from random import Random
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import leanfind

WLMSCPFS = Path("/usr/bin/wlmscpfs")
MWL_FIND = "1.2.840.10008.5.1.4.31"
AE_TITLE = "WLM"  # the AE folder queried on both servers
MULTI_AE_TITLE = "MULTI"  # the multi-item files, unsplit, on both servers
TIMEOUT = 30.0  # seconds, for every subprocess and network wait
SPS = "ScheduledProcedureStepSequence"
SPS_PREFIX = "(0040,0100)[0]"  # how findscu -k spells the SPS item
SCS_TAG = 0x00080005
PENDING = (0xFF00, 0xFF01)


# ============================================================================ intended differences
@dataclass(frozen=True)
class Intended:
    """One row of the table of intended differences (README "Differences from wlmscpfs").

    Attributes
    ----------
    kind : str
        The name a difference is counted under.
    example : str
        A query or situation showing it.
    reason : str
        Why wlmserver differs.
    observable : bool
        Whether a query can show it (the live index cannot: it is about file changes).
    """

    kind: str
    example: str
    reason: str
    observable: bool = True


MULTI_ITEM = "multi-item file"
WILDCARD = "wildcards on PatientID, Modality, AE"
NOT_MATCHED = "key wlmscpfs does not match"
OUTSIDE = "key outside Table K.6-1"
CHARS = "text compared as characters"
PN_GROUPS = "person name component groups"
LIST_VM1 = "list on a single-valued CS key"
REFUSED = "invalid query refused"
PARTIAL_TIME = "partial time covers its precision"
NIGHT = "time range crossing midnight"
FORMS = "date range with an open time"
EXPANSION = "empty sequence expansion"
EMPTY_SQ = "absent sequence returned empty"
LABEL = "Specific Character Set of answers"
LIVE = "live index"

INTENDED: tuple[Intended, ...] = (
    Intended(
        MULTI_ITEM,
        "a file with a CT and an MR step: wlmscpfs skips it (incomplete); wlmserver answers "
        "a CT query with the CT step only",
        "one answer per scheduled procedure step, each with one SPS item (PS3.4 K.6, IHE SWF)",
    ),
    Intended(
        WILDCARD,
        "`PatientID=P00*`, `Modality=C?`, `ScheduledStationAETitle=CT*`: wlmscpfs compares "
        "them literally and finds nothing; wlmserver matches P0012, CT, CT01",
        "wildcards wherever C.2.2.2.4 allows them (AE, CS, LO, LT, PN, SH, ST, UC, UR, UT)",
    ),
    Intended(
        NOT_MATCHED,
        "`ScheduledProcedureStepID=S0001`, `StudyInstanceUID=1.2.3\\1.2.4`, "
        "`ScheduledProcedureStepStatus=SCHEDULED`: wlmscpfs ignores the value (answers as if "
        "universal); wlmserver matches it",
        "wlmserver's default matching keys are wlmscpfs's and these three, which name one order "
        "or step; every other key is a return key only (PS3.4 K.2.2.1.1.2), as for wlmscpfs "
        "(`PatientWeight=72.5`, `PregnancyStatus=0`) unless a profile's `match-keys` names it",
    ),
    Intended(
        OUTSIDE,
        "`StudyDescription=*HEAD*`: wlmscpfs drops the key from the query and its answers "
        "(Pending with warning 0xFF01); wlmserver returns it, filled from the entry",
        "every requested key is returned; like any key outside the default matching keys, it "
        "is a return key only (a profile's `match-keys` or `match-all-keys` matches it)",
    ),
    Intended(
        CHARS,
        "`PatientName=MÜ*` in ISO_IR 192 finds a Latin-1 `MÜLLER`; `M?LLER` finds a UTF-8 "
        "`MÜLLER`: wlmscpfs compares bytes (`?` is one byte), so it finds neither",
        "query and files are decoded, so text matches by characters whatever the character sets",
    ),
    Intended(
        PN_GROUPS,
        "`PatientName=Yamada^Tarou` finds `Yamada^Tarou=山田^太郎=やまだ^たろう`; "
        "wlmscpfs compares the whole value",
        "each `=` component group of a person name can match (alphabetic, ideographic, phonetic)",
    ),
    Intended(
        LIST_VM1,
        "`Modality=CT\\MR`, `PatientSex=F\\O`: wlmscpfs fails (0xA900); wlmserver answers "
        "the CT and MR steps",
        "a backslash list in a query is a list of alternatives, on every key",
    ),
    Intended(
        PARTIAL_TIME,
        "`ScheduledProcedureStepStartTime=10` finds a step at 10:15, `1015` one at 10:15:30, "
        "`0800-1000` one at 10:00:30: wlmscpfs compares the instant a time starts at",
        "a time stands for the whole span of its precision (`10` is 10:00 to 10:59:59.999999)",
    ),
    Intended(
        NIGHT,
        "`ScheduledProcedureStepStartTime=2200-0600` alone, or with the date `20231231`: "
        "wlmscpfs matches nothing; wlmserver the night shift (22:00 to 06:00 the next "
        "morning; late or early without a date)",
        "a time range that ends before it starts crosses midnight: alone, late or early; with "
        "one date, that date's night; with a date range, one date-time range from the first "
        "day's 22:00 to the last day's 06:00 (C.2.2.2.5.4)",
    ),
    Intended(
        FORMS,
        "`ScheduledProcedureStepStartDate=20231226-20231230` with `...StartTime=1000-`: wlmscpfs "
        "makes one range that ends at 00:00 on 30 Dec; wlmserver matches the days and the time "
        "each on its own (each of those days, from 10:00)",
        "a date and a time are one date-time range only when both have the same form of range "
        "matching, or the date is a single day (C.2.2.2.5.4)",
    ),
    Intended(
        REFUSED,
        "a date range that ends before it starts (`20240102-20240101`), or a date-time range "
        "(`20240101-20240101` with `2200-0600`), `-` alone, a wildcard in a UID: wlmscpfs "
        "answers; wlmserver fails with 0xA900, OffendingElement and ErrorComment",
        "an invalid value is reported, not guessed at (`--no-fail` answers such queries with "
        "success and no matches)",
    ),
    Intended(
        EXPANSION,
        "an empty SPS item `(0040,0100)[0]`, or a sequence asked for without keys "
        "(`RequestedProcedureCodeSequence`): wlmscpfs fills in its own key lists (SPS End "
        "Date and End Time; a zero-length Coding Scheme Version in code items); wlmserver "
        "returns the SPS keys of Table K.6-1, and code items as the entry has them",
        "an empty SPS item expands to the standard's SPS keys (`-nse` turns it off); a "
        "sequence asked for whole comes back whole",
    ),
    Intended(
        EMPTY_SQ,
        "a sequence asked for that the entry lacks: wlmscpfs leaves it out, or returns the "
        "query's own item (its values echoed); wlmserver returns it empty",
        "a requested key the entry lacks comes back zero-length (Type 2), a sequence empty",
    ),
    Intended(
        LABEL,
        "a Latin-1 file: wlmscpfs (default `-cs0`) answers with no Specific Character Set, "
        "with `-csk` with ISO_IR 100 even when the answer is ASCII; wlmserver labels exactly "
        "the answers holding non-ASCII text",
        "never lose or mislabel a character (the test runs wlmscpfs with `-csk` so that its "
        "answers can be decoded)",
    ),
    Intended(
        LIVE,
        "a new, changed or deleted file is seen from file events, not by re-reading every file "
        "on every query; the `lockfile` is optional (honoured with a shared POSIX lock when "
        "present)",
        "an index kept current by watching the folder; not observable by queries",
        observable=False,
    ),
)

INTENDED_KINDS: tuple[str, ...] = tuple(row.kind for row in INTENDED)


def readme_table() -> str:
    """The table of intended differences as README.md shows it (markdown)."""
    lines = ["| kind | example | reason |", "| --- | --- | --- |"]
    lines += [f"| {r.kind} | {r.example} | {r.reason} |" for r in INTENDED]
    return "\n".join(lines)


def readme_kinds(readme: str) -> list[str]:
    """The kinds (first column) of the table under "## Differences from wlmscpfs"."""
    match = re.search(r"^## Differences from wlmscpfs\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if match is None:
        return []
    kinds = []
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0] not in ("kind", "") and "---" not in line:
            kinds.append(cells[0])
    return kinds


# ============================================================================ what wlmscpfs does
#: Keys wlmscpfs 3.6.7 matches on (all others it ignores as matching keys), by path.
SCPFS_MATCHED: frozenset[tuple[str, ...]] = frozenset(
    {
        (k,)
        for k in (
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "PatientBirthDate",
            "PatientSex",
            "AccessionNumber",
            "ReferringPhysicianName",
            "RequestingPhysician",
            "RequestedProcedureID",
            "RequestedProcedurePriority",
            "AdmissionID",
            "StudyDate",
            "StudyTime",
        )
    }
    | {
        (SPS, k)
        for k in (
            "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "Modality",
            "ScheduledPerformingPhysicianName",
        )
    }
)
#: Keys wlmserver matches on by default (README "Matching and answers"): wlmscpfs's, and three
#: that name one order or step; every other key is a return key only (PS3.4 K.2.2.1.1.2).
WLM_MATCHED: frozenset[tuple[str, ...]] = SCPFS_MATCHED | {
    ("StudyInstanceUID",),
    (SPS, "ScheduledProcedureStepID"),
    (SPS, "ScheduledProcedureStepStatus"),
}
#: Keys on which wlmscpfs compares ``*`` and ``?`` literally (star-only is still universal).
SCPFS_LITERAL: frozenset[tuple[str, ...]] = frozenset(
    {("PatientID",), (SPS, "Modality"), (SPS, "ScheduledStationAETitle")}
)
#: Keys on which wlmscpfs refuses a backslash list (0xA900).
SCPFS_SINGLE_VALUED: frozenset[tuple[str, ...]] = frozenset({("PatientSex",), (SPS, "Modality")})
#: The Table K.6-1 keys (PS3.4), by path; others are "outside" and wlmscpfs drops them.
TABLE_KEYS: frozenset[tuple[str, ...]] = frozenset(
    {
        (k,)
        for k in [
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "PatientBirthDate",
            "PatientSex",
            "PatientWeight",
            "AccessionNumber",
            "ReferringPhysicianName",
            "RequestingPhysician",
            "RequestedProcedureID",
            "RequestedProcedureDescription",
            "RequestedProcedureCodeSequence",
            "RequestedProcedurePriority",
            "AdmissionID",
            "CurrentPatientLocation",
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "ReferencedStudySequence",
            "ReferencedPatientSequence",
            "PatientTransportArrangements",
            "ConfidentialityConstraintOnPatientDataDescription",
            "PatientState",
            "PregnancyStatus",
            "MedicalAlerts",
            "Allergies",
            "SpecialNeeds",
            "ScheduledProcedureStepSequence",
            "SpecificCharacterSet",
        ]
    }
    | {
        (SPS, k)
        for k in [
            "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "Modality",
            "ScheduledPerformingPhysicianName",
            "ScheduledProcedureStepDescription",
            "ScheduledStationName",
            "ScheduledProcedureStepLocation",
            "ScheduledProtocolCodeSequence",
            "PreMedication",
            "ScheduledProcedureStepID",
            "RequestedContrastAgent",
            "ScheduledProcedureStepStatus",
            "CommentsOnTheScheduledProcedureStep",
            "ScheduledProcedureStepEndDate",
            "ScheduledProcedureStepEndTime",
        ]
    }
)
#: What an empty SPS item expands to: only in wlmscpfs's list / only in wlmserver's.
SCPFS_ONLY_EXPANSION = ("ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime")
PROTOCOL_CODES = "ScheduledProtocolCodeSequence"

TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UC", "UT"})
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
SINGLE_VALUED_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD"})


# ============================================================================ the store
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


def _pick_weighted(rng: Random, choices: Sequence[tuple[Any, float]]) -> Any:
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
        charset = _pick_weighted(rng, charsets)
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
        count = _pick_weighted(rng, ((1, 0.8), (2, 0.15), (3, 0.05)))
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


# ============================================================================ the queries
@dataclass(frozen=True)
class Query:
    """One generated C-FIND query.

    Attributes
    ----------
    number : int
        Its position in the run.
    keys : tuple[str, ...]
        ``findscu -k`` arguments (``path=value``; ``(0040,0100)[0]`` is the SPS item).
    notes : tuple[str, ...]
        The matching types the generator put in (for the coverage line).
    """

    number: int
    keys: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def findscu(self, port: int | str = "PORT") -> str:
        """The query as a DCMTK findscu command line."""
        quoted = " ".join(f'-k "{k}"' for k in self.keys)
        return f"/usr/bin/findscu -W -aec {AE_TITLE} 127.0.0.1 {port} {quoted}"


KeyPath = tuple[str, ...]

TOP_MATCH_KEYS: tuple[tuple[str, float], ...] = (
    ("PatientName", 5),
    ("PatientID", 3),
    ("IssuerOfPatientID", 1),
    ("PatientBirthDate", 2),
    ("PatientSex", 1.5),
    ("PatientWeight", 0.5),
    ("AccessionNumber", 2),
    ("ReferringPhysicianName", 2),
    ("RequestingPhysician", 1),
    ("RequestedProcedureID", 1),
    ("RequestedProcedureDescription", 1),
    ("RequestedProcedurePriority", 1.5),
    ("AdmissionID", 1),
    ("CurrentPatientLocation", 0.5),
    ("StudyInstanceUID", 1),
    ("PatientComments", 1),
)
SPS_MATCH_KEYS: tuple[tuple[str, float], ...] = (
    ("ScheduledStationAETitle", 4),
    ("Modality", 4),
    ("ScheduledProcedureStepStartDate", 5),
    ("ScheduledProcedureStepStartTime", 2),
    ("ScheduledPerformingPhysicianName", 2),
    ("ScheduledProcedureStepDescription", 1),
    ("ScheduledProcedureStepID", 1),
    ("ScheduledStationName", 1),
    ("ScheduledProcedureStepLocation", 0.5),
    ("ScheduledProcedureStepStatus", 0.5),
    ("ScheduledProtocolCodeSequence.CodeValue", 1),
    ("ScheduledProtocolCodeSequence.CodeMeaning", 0.5),
)
TOP_RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientWeight",
    "AccessionNumber",
    "ReferringPhysicianName",
    "RequestingPhysician",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
    "AdmissionID",
    "CurrentPatientLocation",
    "PatientComments",
    "MedicalAlerts",
    "StudyDate",
)
SPS_RETURN_KEYS = (
    "ScheduledStationAETitle",
    "Modality",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledStationName",
    "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStatus",
    "PreMedication",
)


def _values(item: Item, keyword: str) -> list[str]:
    value = item.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value if not isinstance(v, dict)]
    return [str(value)]


def value_pools(store: Sequence[WlFile]) -> dict[str, list[str]]:
    """The values the store holds per key (SPS keys by their keyword, code sequence keys as
    ``Sequence.Keyword``), for queries that hit."""
    pools: dict[str, list[str]] = {}
    for wl in store:
        for keyword, _ in TOP_MATCH_KEYS:
            pools.setdefault(keyword, []).extend(_values(wl.top, keyword))
        for step in wl.steps:
            for keyword, _ in SPS_MATCH_KEYS:
                if "." in keyword:
                    seq, sub = keyword.split(".")
                    for code in step.get(seq, []):
                        pools.setdefault(keyword, []).extend(_values(code, sub))
                else:
                    pools.setdefault(keyword, []).extend(_values(step, keyword))
    return {k: sorted(set(v)) for k, v in pools.items()}


def _day(offset: int) -> str:
    return (FIRST_DAY + timedelta(days=offset)).strftime("%Y%m%d")


def _date_value(rng: Random) -> tuple[str, str]:
    a, b = sorted(rng.sample(range(-2, DAYS + 2), 2))
    x = rng.random()
    if x < 0.3:
        return _day(rng.randrange(DAYS)), "date single"
    if x < 0.55:
        return f"{_day(a)}-{_day(b)}", "date range"
    if x < 0.65:
        return f"{_day(a)}-", "date open end"
    if x < 0.75:
        return f"-{_day(b)}", "date open start"
    if x < 0.85:
        return "20231231-20240101", "date range across year end"
    if x < 0.92:
        return f"{_day(a)}-{_day(a)}", "date range one day"
    if x < 0.97:
        return f"{_day(b)}-{_day(a)}", "date range reversed"
    return "-", "date dash alone"


def _time_value(rng: Random) -> tuple[str, str]:
    def hhmm() -> str:
        return f"{rng.randrange(24):02d}{rng.choice(('00', '30', '15', '59'))}"

    x = rng.random()
    if x < 0.2:
        return rng.choice((f"{rng.randrange(24):02d}", hhmm(), hhmm() + "00")), "time single"
    if x < 0.45:
        a, b = sorted((hhmm(), hhmm()))
        return f"{a}-{b}", "time range"
    if x < 0.6:
        return rng.choice((f"{hhmm()}-", f"{rng.randrange(24):02d}-")), "time open end"
    if x < 0.75:
        return f"-{hhmm()}", "time open start"
    if x < 0.95:
        return rng.choice(("2200-0600", "2300-0100", "1800-0800")), "time range across midnight"
    return "-", "time dash alone"


def _birth_date_value(rng: Random, pool: Sequence[str]) -> tuple[str, str]:
    x = rng.random()
    if x < 0.3 and pool:
        return rng.choice(pool), "birth date single"
    start = rng.randrange(1930, 2015)
    if x < 0.7:
        return f"{start}0101-{start + rng.randrange(1, 20)}1231", "birth date range"
    if x < 0.85:
        return f"-{start}0630", "birth date open start"
    if x < 0.97:
        return f"{start}0101-", "birth date open end"
    return f"{start + 5}0101-{start}0101", "birth date reversed"


def _wildcard(rng: Random, value: str) -> tuple[str, str]:
    n = len(value)
    x = rng.random()
    if x < 0.3:
        return value[: rng.randrange(1, n + 1)] + "*", "wildcard trailing star"
    if x < 0.45:
        return "*" + value[rng.randrange(n) :], "wildcard leading star"
    if x < 0.6:
        i = rng.randrange(n)
        return "*" + value[i : i + rng.randrange(1, 4)] + "*", "wildcard middle"
    if x < 0.75:
        chars = list(value)
        for _ in range(rng.choice((1, 1, 2))):
            chars[rng.randrange(n)] = "?"
        return "".join(chars), "wildcard question mark"
    if x < 0.85:
        i = rng.randrange(n)
        return value[:i] + "*" + value[i + rng.randrange(0, n - i + 1) :], "wildcard inner star"
    if x < 0.92:
        return value[: rng.randrange(n + 1)].lower() + "*", "wildcard other case"
    return rng.choice(("?*", "*?", "??*", "*" + value[-1:] + "?")), "wildcard short"


def _text_value(rng: Random, keyword: str, pool: Sequence[str]) -> tuple[str, str]:
    if not pool:
        return "", "universal"
    value = rng.choice(pool)
    x = rng.random()
    if x < 0.28:
        return value, "single value"
    if x < 0.33:
        return value[:-1] + ("X" if value[-1:] != "X" else "Y"), "single value (miss)"
    if x < 0.66:
        return _wildcard(rng, value)
    if x < 0.76:
        return rng.choice(("**", "*", "***")), "star only"
    if x < 0.92:
        alternatives = rng.sample(pool, min(len(pool), rng.choice((2, 2, 3))))
        if rng.random() < 0.3:
            alternatives.append(_wildcard(rng, rng.choice(pool))[0])
        return "\\".join(alternatives), "list of values"
    if x < 0.95:
        return value.lower(), "single value, other case"
    return "", "universal"


def _query_charset(rng: Random, values: Sequence[str]) -> str | None:
    text = "".join(values)
    if text.isascii():
        return rng.choice((None,) * 8 + ("ISO_IR 100", "ISO_IR 192"))
    if any("\u3000" <= c <= "\u9fff" for c in text):
        # not ISO 2022 IR 87: wlmscpfs 3.6.7 fails (0xA900) a person name holding its escape
        # sequences ("Invalid Character Repertoire for datatype PN")
        return "ISO_IR 192"
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return rng.choice(("ISO_IR 100", "ISO_IR 192"))


def generate_query(rng: Random, number: int, pools: dict[str, list[str]]) -> Query:
    """One query: return keys, an SPS item (absent, empty or with keys) and 0-3 constraints."""
    keys: dict[str, str] = {"StudyInstanceUID": ""}  # always returned: identifies the file
    for keyword in rng.sample(TOP_RETURN_KEYS, rng.randrange(1, 8)):
        keys[keyword] = ""
    x = rng.random()
    sps_mode = "absent" if x < 0.12 else "empty" if x < 0.3 else "keys"
    if sps_mode == "keys":
        for keyword in rng.sample(SPS_RETURN_KEYS, rng.randrange(1, 7)):
            keys[f"{SPS_PREFIX}.{keyword}"] = ""
    notes: list[str] = []
    if rng.random() < 0.1:
        keys["RequestedProcedureCodeSequence"] = ""
        notes.append("return sequence")
    if sps_mode == "keys" and rng.random() < 0.15:
        if rng.random() < 0.5:
            keys[f"{SPS_PREFIX}.ScheduledProtocolCodeSequence[0]"] = ""
        else:
            keys[f"{SPS_PREFIX}.ScheduledProtocolCodeSequence[0].CodeValue"] = ""
        notes.append("return sequence")

    if rng.random() < 0.6:  # narrowed as modalities narrow: to a day, a station, a patient
        scope = _pick_weighted(
            rng,
            (
                ("day+station", 0.3),
                ("patient", 0.25),
                ("day", 0.2),
                ("accession", 0.1),
                ("station", 0.15),
            ),
        )
        if "day" in scope:
            keys[f"{SPS_PREFIX}.ScheduledProcedureStepStartDate"] = _day(rng.randrange(DAYS))
        if "station" in scope:
            keys[f"{SPS_PREFIX}.ScheduledStationAETitle"] = rng.choice(
                pools["ScheduledStationAETitle"]
            )
        if scope == "patient":
            keys["PatientID"] = rng.choice(pools["PatientID"])
        if scope == "accession":
            keys["AccessionNumber"] = rng.choice(pools["AccessionNumber"])
        if "day" in scope or "station" in scope:
            sps_mode = "keys"
        notes.append(f"scope {scope}")
    scoped = bool(notes)
    count = _pick_weighted(rng, ((0, 0.15), (1, 0.45), (2, 0.28), (3, 0.12)))
    choices = [(("top", k), w) for k, w in TOP_MATCH_KEYS] + [
        (("sps", k), w) for k, w in SPS_MATCH_KEYS
    ]
    for _ in range(count):
        level, keyword = _pick_weighted(rng, choices)
        if level == "top":
            path = keyword
            vr = dictionary_VR(keyword)
        else:
            if sps_mode != "keys":
                sps_mode = "keys"
                keys.pop(SPS_PREFIX, None)
            if "." in keyword:
                seq, sub = keyword.split(".")
                path = f"{SPS_PREFIX}.{seq}[0].{sub}"
                vr = dictionary_VR(sub)
            else:
                path = f"{SPS_PREFIX}.{keyword}"
                vr = dictionary_VR(keyword)
        pool = pools.get(keyword, [])
        if keyword == "ScheduledProcedureStepStartDate":
            value, note = _date_value(rng)
            if rng.random() < 0.4:
                tvalue, tnote = _time_value(rng)
                keys[f"{SPS_PREFIX}.ScheduledProcedureStepStartTime"] = tvalue
                note = f"combined SPS date and time ({note}; {tnote})"
        elif keyword == "ScheduledProcedureStepStartTime":
            value, note = _time_value(rng)
        elif vr == "DA":
            value, note = _birth_date_value(rng, pool)
        elif vr == "UI":
            if pool and rng.random() < 0.85:
                value = "\\".join(rng.sample(pool, rng.choice((1, 2, 3))))
                note = "UID list" if "\\" in value else "UID single"
            else:
                value, note = "1.2.826.0.1.3680043.10.543.*", "wildcard in UID"
        elif vr in NUMERIC_VRS:
            value = rng.choice([*pool, "72.50", "072"]) if pool else "72"
            note = "numeric single value"
        else:
            value, note = _text_value(rng, keyword, pool)
        keys[path] = value
        notes.append(f"{note} [{keyword}]")
    if sps_mode == "empty":
        keys[SPS_PREFIX] = ""
        notes.append("empty SPS item")
    elif sps_mode == "absent":
        notes.append("no SPS sequence")
    if count == 0 and not scoped:
        notes.append("return keys only")
    if any(k.startswith(f"{SPS_PREFIX}.{PROTOCOL_CODES}") for k in keys):
        # so that the harness knows which step an answer is (and whether it has codes)
        keys.setdefault(f"{SPS_PREFIX}.ScheduledProcedureStepID", "")
    charset = _query_charset(rng, list(keys.values()))
    ordered = [f"{k}={v}" if v else k for k, v in keys.items()]
    if charset is not None:
        ordered.insert(0, f"SpecificCharacterSet={charset}")
    return Query(number, tuple(ordered), tuple(notes))


#: Queries every run sends first, whatever the seed: the cases issue 8 names.
PINNED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "combined SPS date and time (date range across year end; time range across midnight)",
        (
            "StudyInstanceUID",
            "PatientID",
            f"{SPS_PREFIX}.ScheduledProcedureStepStartDate=20231231-20240101",
            f"{SPS_PREFIX}.ScheduledProcedureStepStartTime=2200-0600",
        ),
    ),
    (
        "star only [AccessionNumber]",
        ("StudyInstanceUID", "AccessionNumber=**", "PatientName", f"{SPS_PREFIX}.Modality"),
    ),
    (
        "star only [ScheduledPerformingPhysicianName]",
        ("StudyInstanceUID", f"{SPS_PREFIX}.ScheduledPerformingPhysicianName=*"),
    ),
    ("star only [ReferringPhysicianName]", ("StudyInstanceUID", "ReferringPhysicianName=***")),
    (
        "list of values [Modality]",
        ("StudyInstanceUID", "PatientID", f"{SPS_PREFIX}.Modality=CT\\MR"),
    ),
    (
        "single value [ScheduledStationAETitle]",
        ("StudyInstanceUID", f"{SPS_PREFIX}.ScheduledStationAETitle=CT02"),
    ),
    (
        "wildcard trailing star [PatientName]",
        ("SpecificCharacterSet=ISO_IR 192", "StudyInstanceUID", "PatientName=MÜ*"),
    ),
    ("empty SPS item", ("StudyInstanceUID", "PatientName", SPS_PREFIX)),
)


def generate_queries(rng: Random, count: int, store: Sequence[WlFile]) -> list[Query]:
    """The queries of a run: :data:`PINNED` first, then generated ones."""
    pools = value_pools(store)
    pinned = [Query(n + 1, keys, (f"pinned: {note}",)) for n, (note, keys) in enumerate(PINNED)]
    start = len(pinned) + 1
    return pinned + [generate_query(rng, start + n, pools) for n in range(count - len(pinned))]


def generate(
    seed: int, files: int, queries: int, charsets: Weights = CHARSETS
) -> tuple[list[WlFile], list[Query]]:
    """The store and the queries of a seed (the same for the same arguments)."""
    rng = Random(seed)
    store = generate_store(rng, files, seed, charsets)
    return store, generate_queries(rng, queries, store)


# ============================================================================ identifiers
_PART = re.compile(r"(\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)|[A-Za-z0-9]+)(\[0\])?")


def _tag(name: str) -> int:
    if name.startswith("("):
        return int(name[1:5] + name[6:10], 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise ValueError(f"unknown keyword {name!r}")
    return int(tag)


def parse_key(key: str) -> tuple[list[tuple[str, bool]], str]:
    """``"(0040,0100)[0].Modality=CT"`` -> ``([("ScheduledProcedureStepSequence", True),
    ("Modality", False)], "CT")``: keywords, whether an item follows, and the value."""
    path, _, value = key.partition("=")
    parts = []
    for part in path.split("."):
        m = _PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad key {key!r}")
        parts.append((keyword_for_tag(_tag(m[1])) or m[1], bool(m[2])))
    return parts, value


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """No pydicom warnings (they also go to its log) while a run decodes answers: a value
    that does not decode is a difference the report shows."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


@contextmanager
def _no_validation() -> Iterator[None]:
    """pydicom neither warns nor logs about query values (wildcards, ranges, lists)."""
    saved = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode = saved


def identifier(keys: Sequence[str]) -> Dataset:
    """The C-FIND identifier of ``findscu -k`` keys (built the same way for both servers)."""
    ds = Dataset()
    charset = next((parse_key(k)[1] for k in keys if k.startswith("SpecificCharacterSet")), None)
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    with warnings.catch_warnings(), _no_validation():  # '*', '-' ... are not valid values
        warnings.simplefilter("ignore")
        for key in keys:
            parts, value = parse_key(key)
            if parts[0][0] == "SpecificCharacterSet":
                continue
            target = ds
            for i, (keyword, item) in enumerate(parts):
                tag = _tag(keyword)
                if item:
                    if tag not in target or not target[tag].value:
                        target.add(DataElement(tag, "SQ", DicomSequence([Dataset()])))
                    target = target[tag].value[0]
                elif i == len(parts) - 1:
                    vr = dictionary_VR(tag)
                    if vr == "SQ":
                        target.add(DataElement(tag, "SQ", DicomSequence([])))
                    else:
                        target.add(DataElement(tag, vr, value if value else None))
    return ds


@dataclass(frozen=True)
class Constraint:
    """A key of a query with a value (a matching key)."""

    path: KeyPath
    vr: str
    value: str


def constraints(query: Query) -> list[Constraint]:
    """The matching keys of a query (keys with a value), by keyword path."""
    out = []
    for key in query.keys:
        parts, value = parse_key(key)
        path = tuple(k for k, _ in parts)
        if value and path != ("SpecificCharacterSet",):
            out.append(Constraint(path, dictionary_VR(path[-1]), value))
    return out


def query_charset(query: Query) -> str | None:
    for key in query.keys:
        if key.startswith("SpecificCharacterSet="):
            return key.partition("=")[2]
    return None


def neutralized(query: Query, paths: Sequence[KeyPath]) -> Query:
    """The query with the values of ``paths`` removed (the keys still returned)."""
    keys = []
    for key in query.keys:
        parts, _ = parse_key(key)
        if tuple(k for k, _ in parts) in paths:
            keys.append(key.partition("=")[0])
        else:
            keys.append(key)
    return Query(query.number, tuple(keys), query.notes)


def requested(query: Query) -> dict[KeyPath, bool]:
    """Every requested key path, and whether it is a sequence."""
    out: dict[KeyPath, bool] = {}
    for key in query.keys:
        parts, _ = parse_key(key)
        for i in range(len(parts)):
            path = tuple(k for k, _ in parts[: i + 1])
            out[path] = parts[i][1] or dictionary_VR(path[-1]) == "SQ"
    return out


def sps_item_is_empty(query: Query) -> bool:
    return SPS_PREFIX in query.keys and not any(k.startswith(SPS_PREFIX + ".") for k in query.keys)


# ============================================================================ answers
Tree = dict[str, Any]  # keyword -> tuple[str, ...] (values) or list[Tree] (items)
Frozen = tuple[tuple[str, Any], ...]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _strip(vr: str, text: str) -> str:
    text = text.rstrip(" \x00")
    return text if vr in TEXT_VRS else text.lstrip(" ")


def answer_tree(ds: Dataset) -> Tree:
    """A pydicom dataset as an answer tree (``{keyword: values or items}``), decoded, padding
    stripped, without its Specific Character Set: what :func:`parse_identifier` must make of
    the same bytes (a test checks it)."""
    out: Tree = {}
    for elem in ds:
        if elem.tag == SCS_TAG:
            continue
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            out[name] = [answer_tree(item) for item in elem.value or []]
            continue
        value = elem.value
        if value is None or value == "" or value == b"":
            out[name] = ()
        elif isinstance(value, (MultiValue, list, tuple)):
            out[name] = tuple(_strip(elem.VR, _text(v)) for v in value)
        else:
            out[name] = (_strip(elem.VR, _text(value)),)
    return out


def freeze(tree: Tree) -> Frozen:
    """A hashable form of an answer tree."""
    return tuple(
        sorted(
            (k, tuple(freeze(i) for i in v) if isinstance(v, list) else v) for k, v in tree.items()
        )
    )


def show(tree: Tree, prefix: str = "") -> str:
    """An answer as ``key=value | ...`` (findscu path syntax), for reports."""
    parts = []
    for key, value in sorted(tree.items()):
        path = f"{prefix}{SPS_PREFIX if key == SPS and not prefix else key}"
        if isinstance(value, list):
            if not value:
                parts.append(f"{path}=<empty sequence>")
            for i, item in enumerate(value):
                parts.append(show(item, f"{path}[{i}].") if item else f"{path}[{i}]=<empty item>")
        else:
            joined = "\\".join(value)
            parts.append(f"{path}={joined}" if value else f"{path}=<zero-length>")
    return " | ".join(parts)


@dataclass
class Response:
    """What one C-FIND brought back: the final status (None: none came) and the answers,
    decoded into trees, with each answer's Specific Character Set."""

    status: int | None
    answers: list[Tree] = field(default_factory=list)
    labels: list[tuple[str, ...]] = field(default_factory=list)
    error: str = ""

    @property
    def status_class(self) -> str:
        if self.status is None:
            return "none"
        if self.status == 0:
            return "success"
        if self.status == 0xFE00:
            return "cancel"
        if self.status in (0x0001, 0x0107, 0x0116) or self.status >> 12 == 0xB:
            return "warning"
        return "failure"

    def describe(self) -> str:
        status = "no final status" if self.status is None else f"0x{self.status:04X}"
        return f"{status} ({self.status_class}), {len(self.answers)} answers{self.error}"


def _same(a: Sequence[Tree], b: Sequence[Tree]) -> bool:
    return Counter(freeze(t) for t in a) == Counter(freeze(t) for t in b)


# ============================================================================ servers and client
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    """A server did not start or did not answer."""


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        if process.poll() is not None:
            raise ServerError(
                f"exited with {process.returncode}: {log.read_text(errors='replace')}"
            )
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise ServerError(f"not listening on port {port} after {TIMEOUT} s")
        time.sleep(0.02)


@contextmanager
def server(name: str, command: list[str], port: int, log: Path) -> Iterator[int]:
    """Run a server process listening on ``port``; always stopped afterwards. DCMTK sets
    TCP_NODELAY when the environment says so (else each answer waits for a delayed ACK)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            _wait_listening(process, port, log)
        except ServerError as exc:
            raise ServerError(f"{name}: {exc}") from None
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wlmscpfs_command(root: Path, port: int, wlmscpfs: Path = WLMSCPFS) -> list[str]:
    """DCMTK's wlmscpfs: one process (so stopping it leaves no children), answers labelled
    with the file's character set (``-csk``) so they can be decoded. It cannot be bound to an
    address: it listens on all interfaces, on a free port, and is only ever called on
    127.0.0.1."""
    return [str(wlmscpfs), "-s", "-dhl", "-csk", "-dfp", str(root), str(port)]


def wlmserver_command(root: Path, port: int) -> list[str]:
    """wlmserver from this checkout, on loopback, without periodic rescans."""
    return [
        sys.executable,
        "-m",
        "wlmserver",
        "-q",
        "-dfp",
        str(root),
        "--bind",
        "127.0.0.1",
        "--rescan-interval",
        "0",
        str(port),
    ]


class Client:
    """A lean worklist client over one raw socket and one association, reused for every query.

    The request PDUs are built by ``tools/leanfind.py`` (command set in Implicit VR Little
    Endian, identifier in Explicit VR Little Endian, the only transfer syntax proposed), once
    per query, so both servers receive the same bytes. Answers are parsed by
    :func:`parse_identifier`: decoding them with pynetdicom and pydicom costs a millisecond
    each, which a few hundred queries with many answers cannot afford.
    """

    def __init__(self, port: int, aet: str = AE_TITLE) -> None:
        self.port, self.aet = port, aet
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def _connect(self) -> socket.socket:
        if self.sock is not None:
            return self.sock
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, bytearray()
        sock.sendall(leanfind.associate_rq(self.aet, "DIFFTEST"))
        pdu_type, _ = self._pdu()
        if pdu_type != 0x02:
            self.close()
            raise ServerError(f"association with port {self.port} ({self.aet}) not accepted")
        return sock

    def _pdu(self) -> tuple[int, bytes]:
        assert self.sock is not None
        while True:
            if len(self.buffer) >= 6:
                pdu_type, _, length = struct.unpack_from(">BBI", self.buffer)
                if len(self.buffer) >= 6 + length:
                    body = bytes(self.buffer[6 : 6 + length])
                    del self.buffer[: 6 + length]
                    return pdu_type, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ServerError("the server closed the connection")
            self.buffer += chunk

    def find(self, query: Query, request: bytes | None = None) -> Response:
        """Send one query (its PDUs, if already built) and receive every response."""
        if request is None:
            request = find_request(query)
        response = Response(None)
        try:
            self._connect().sendall(request)
            command, data = bytearray(), bytearray()
            status, has_data = -1, False
            while response.status is None:
                pdu_type, body = self._pdu()
                if pdu_type != 0x04:
                    raise ServerError(f"PDU type 0x{pdu_type:02X} instead of P-DATA")
                offset = 0
                while offset < len(body):
                    (length,) = struct.unpack_from(">I", body, offset)
                    header = body[offset + 5]
                    fragment = body[offset + 6 : offset + 4 + length]
                    offset += 4 + length
                    if header & 0x01:  # a command fragment
                        command += fragment
                        if header & 0x02:
                            status, has_data = leanfind.command_status(bytes(command))
                            command.clear()
                            if status not in PENDING and not has_data:
                                response.status = status
                        continue
                    data += fragment
                    if header & 0x02:
                        if status in PENDING:
                            tree, label = parse_identifier(bytes(data))
                            response.answers.append(tree)
                            response.labels.append(label)
                        else:
                            response.status = status
                        data.clear()
        except (OSError, ServerError, ValueError, struct.error) as exc:
            response.status = None
            response.error = f"; {type(exc).__name__}: {exc}"
            self.close()
        return response

    def close(self) -> None:
        """Release the association (if any) and close the socket."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(leanfind.RELEASE_RQ)
            self._pdu()
        except (OSError, ServerError, struct.error):
            pass
        finally:
            self.sock.close()
            self.sock = None


def find_request(query: Query) -> bytes:
    """The C-FIND-RQ PDUs of a query (message ID: the query's number)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return leanfind.find_request(identifier(query.keys), query.number % 0xFFFF + 1)


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_UNDEFINED = 0xFFFFFFFF
TEXT_DELIMITERS = {0x09, 0x0A, 0x0C, 0x0D}  # where ISO 2022 returns to G0 in text (as pydicom)


@lru_cache(maxsize=4096)
def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


#: Multi-byte character sets that only exist as code extensions (PS3.3 C.12.1.1.2, Table
#: C.12-4): never value 1 of Specific Character Set (an empty value 1 stands for ISO IR 6).
CODE_EXTENSIONS_ONLY = frozenset(
    {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
)


def label_problem(label: tuple[str, ...]) -> str:
    """What is wrong with an answer's Specific Character Set, or ``""``."""
    if label and label[0] in CODE_EXTENSIONS_ONLY:
        joined = "\\".join(label)
        return (
            f"answer labelled Specific Character Set {joined!r}: value 1 is missing "
            f"({label[0]} is a code extension, so it needs an empty value 1 or ISO 2022 IR 6 "
            "before it); decoders misread the text"
        )
    return ""


def parse_identifier(data: bytes) -> tuple[Tree, tuple[str, ...]]:
    """An Explicit VR Little Endian identifier as an answer tree, and its Specific Character
    Set; text decoded in that character set (as pydicom decodes it), padding stripped."""
    state: dict[str, Any] = {"encodings": convert_encodings(None), "label": ()}
    tree, _ = _parse_items(data, 0, len(data), state)
    return tree, state["label"]


def _parse_items(data: bytes, offset: int, end: int, state: dict[str, Any]) -> tuple[Tree, int]:
    tree: Tree = {}
    while offset < end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group == 0xFFFE:  # the end of an item of undefined length
            return tree, offset + 8
        vr = data[offset + 4 : offset + 6].decode("ascii")
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        tag = group << 16 | element
        if vr == "SQ":
            tree[_name(tag)], offset = _parse_sequence(data, offset, length, state)
            continue
        raw = data[offset : offset + length]
        offset += length
        if tag == SCS_TAG:
            names = [v.strip() for v in raw.decode("ascii").split("\\")]
            state["label"] = tuple(names) if any(names) else ()
            # decoded as meant even when mislabelled (the label is checked by label_problem)
            repaired = ["", *names] if label_problem(tuple(names)) else names
            state["encodings"] = convert_encodings(repaired)
            continue
        tree[_name(tag)] = _decode(vr, raw, state["encodings"])
    return tree, offset


def _parse_sequence(
    data: bytes, offset: int, length: int, state: dict[str, Any]
) -> tuple[list[Tree], int]:
    end = len(data) if length == _UNDEFINED else offset + length
    items = []
    while offset < end:
        group, element, item_length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise ValueError(f"no item in a sequence at byte {offset - 8}")
        if item_length == _UNDEFINED:
            item, offset = _parse_items(data, offset, len(data), state)
        else:
            item, _ = _parse_items(data, offset, offset + item_length, state)
            offset += item_length
        items.append(item)
    return items, offset


def _decode(vr: str, raw: bytes, encodings: list[str]) -> tuple[str, ...]:
    if not raw:
        return ()
    if vr in _BINARY:
        fmt = _BINARY[vr]
        count = len(raw) // struct.calcsize(fmt)
        return tuple(_strip(vr, str(v)) for v in struct.unpack(f"<{count}{fmt}", raw))
    if vr in TEXT_VRS:
        parts = [raw] if vr in SINGLE_VALUED_TEXT_VRS else raw.split(b"\\")
        if vr == "PN":
            texts = [str(PersonName(p, encodings)) for p in parts]
        else:
            texts = [decode_bytes(p, encodings, TEXT_DELIMITERS) for p in parts]
        return tuple(_strip(vr, t) for t in texts)
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
        return (raw.hex(),)
    return tuple(_strip(vr, t) for t in raw.decode("ascii", "replace").split("\\"))


# ============================================================================ matching models
def _alternatives(vr: str, value: str) -> list[str]:
    alternatives = [value] if vr in SINGLE_VALUED_TEXT_VRS else value.split("\\")
    return [a.rstrip(" ") if vr in TEXT_VRS else a.strip(" ") for a in alternatives]


def _star_only(alternative: str) -> bool:
    return alternative != "" and set(alternative) == {"*"}


def _pattern(alternative: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in alternative)
    return re.compile(body, re.S)


def reference_verdict(
    c: Constraint, values: Sequence[str], *, groups: bool = True, wildcards: bool = True
) -> bool:
    """Whether values match a constraint as wlmserver is documented to match them
    (README "Matching and answers"; PS3.4 C.2.2.2), on decoded text.

    A zero-length value and a star-only value are universal (also for an entry without a
    value); otherwise an entry without a value does not match. Alternatives are separated by
    backslashes; a multi-valued entry matches if any value does; a person name also matches by
    any ``=`` component group (unless ``groups`` is false); wildcards on the VRs C.2.2.2.4
    allows (unless ``wildcards`` is false: then ``*`` and ``?`` are characters); numbers by
    value. Not for DA, TM and DT (see :func:`datetime_verdict`).
    """
    alternatives = _alternatives(c.vr, c.value)
    if not c.value.strip(" ") or any(_star_only(a) for a in alternatives):
        return True
    candidates = list(values)
    if c.vr == "PN" and groups:
        candidates += [g for v in values if "=" in v for g in v.split("=") if g]
    for alternative in alternatives:
        if c.vr in NUMERIC_VRS:
            try:
                if any(float(v) == float(alternative) for v in candidates):
                    return True
            except ValueError:
                continue
        elif wildcards and c.vr in WILDCARD_VRS and ("*" in alternative or "?" in alternative):
            pattern = _pattern(alternative)
            if any(pattern.fullmatch(v) for v in candidates):
                return True
        elif alternative in candidates:
            return True
    return False


def _encode(vr: str, text: str, charset: str | None) -> bytes:
    names = [] if charset is None else charset.split("\\")
    encodings = convert_encodings(names or ["ISO_IR 6"])
    if vr == "PN":
        return PersonName(text).encode(encodings)
    if vr in TEXT_VRS:
        return encode_string(text, encodings)
    return text.encode("ascii", "replace")


def scpfs_verdict(
    c: Constraint, values: Sequence[str], query_cs: str | None, answer_cs: str | None
) -> bool:
    """Whether values match a constraint the way wlmscpfs 3.6.7 matches text: keys it does not
    match on always do; star-only is universal; otherwise bytes (the query's encoding against
    the file's) compared whole, ``?`` standing for one byte; ``*`` and ``?`` literal on the
    keys of :data:`SCPFS_LITERAL`; alternatives and multi-valued entries as wlmserver."""
    if c.path not in SCPFS_MATCHED:
        return True
    alternatives = _alternatives(c.vr, c.value)
    if not c.value.strip(" ") or any(_star_only(a) for a in alternatives):
        return True
    literal = c.path in SCPFS_LITERAL
    have = [_encode(c.vr, v, answer_cs) for v in values]
    for alternative in (_encode(c.vr, a, query_cs) for a in alternatives):
        if literal or not (b"*" in alternative or b"?" in alternative):
            if alternative in have:
                return True
            continue
        body = b"".join(
            b".*" if c == 0x2A else b"." if c == 0x3F else re.escape(bytes([c]))
            for c in alternative
        )
        pattern = re.compile(body, re.S)
        if any(pattern.fullmatch(v) for v in have):
            return True
    return False


@dataclass(frozen=True)
class Span:
    """A DA or TM query value: its form (``S`` single, ``R`` range ``a-b``, ``E`` open end
    ``a-``, ``B`` open start ``-b``) and its ends as written."""

    form: str
    lo: str | None
    hi: str | None


def span(text: str) -> Span | None:
    """The span of a DA or TM query value; None when universal."""
    text = text.strip()
    if not text or text == "-":
        return None
    if "-" not in text:
        return Span("S", text, text)
    lo, _, hi = text.partition("-")
    if lo and hi:
        return Span("R", lo, hi)
    return Span("E", lo, None) if lo else Span("B", None, hi)


def _tm(text: str) -> str:
    """A TM value as the 12-digit instant ``HHMMSSffffff`` it starts at."""
    main, _, fraction = text.replace(":", "").partition(".")
    return main.ljust(6, "0")[:6] + fraction.ljust(6, "0")[:6]


def _tm_end(text: str, precision: bool) -> str:
    """The last instant a TM value stands for: with ``precision``, the whole span of its
    precision (``10`` is 10:59:59.999999), else the instant it starts at."""
    if not precision:
        return _tm(text)
    main, _, fraction = text.replace(":", "").partition(".")
    main = main + "5959"[len(main) - 2 :] if len(main) < 6 else main
    return main[:6] + (fraction.ljust(6, "9")[:6] if fraction else "999999")


def _next_day(day: str) -> str:
    following = date(int(day[:4]), int(day[4:6]), int(day[6:8])) + timedelta(days=1)
    return following.strftime("%Y%m%d")


def _in_dates(d: Span, day: str) -> bool:
    return (d.lo is None or day >= d.lo) and (d.hi is None or day <= d.hi)


def datetime_verdict(
    d: Span | None,
    t: Span | None,
    day: str,
    time_: str,
    *,
    precision: bool,
    night: bool,
    standard_forms: bool,
) -> bool:
    """Whether an entry's SPS start date and time match the query's date and time.

    With all three options false, as wlmscpfs 3.6.7 does (measured): the date and time form one
    combined date-time range only when they have the same form (both ranges, both open ends,
    both open starts; or a date range with an open time), with a closed date range and an open
    time end ending at 00:00 of its last day; otherwise each is matched on its own; a time is
    the instant it starts at; a time range that ends before it starts matches nothing. The
    options switch on, one by one, what wlmserver documents: ``precision``, a time covers its
    precision (``10`` is 10:00 to 10:59:59); ``night``, a time range that ends before it starts
    crosses midnight (with a single date, the night from that day; with no date, late or
    early; with a date range, one date-time range, refused when it ends before it starts);
    ``standard_forms``, date and time form one combined range when both have the same form
    or the date is a single day (C.2.2.2.5.4), the range running to the end of its last day.
    """
    instant_time = _tm(time_)
    if t is None:
        return d is None or _in_dates(d, day)
    t_lo = None if t.lo is None else _tm(t.lo)
    t_hi = None if t.hi is None else _tm_end(t.hi, precision)
    crosses = t_lo is not None and t_hi is not None and t_lo > t_hi
    if standard_forms:
        combined = d is not None and (d.form == "S" or d.form == t.form)
    else:
        combined = d is not None and (
            d.form == "S"
            or (d.form == t.form and d.form in "REB")
            or (d.form == "R" and t.form in "EB")
        )
    if d is None or not combined:
        if crosses:
            time_ok = night and (instant_time >= t_lo or instant_time <= t_hi)  # type: ignore[operator]
        else:
            time_ok = (t_lo is None or instant_time >= t_lo) and (
                t_hi is None or instant_time <= t_hi
            )
        return time_ok and (d is None or _in_dates(d, day))
    d_lo, d_hi = d.lo, d.hi
    if night and crosses and d.form == "S" and d_lo is not None:
        d_hi = _next_day(d_lo)  # a single date: the night that starts on it
    open_time_end = "000000000000" if not standard_forms and d.form == "R" else "235959999999"
    lo = None if d_lo is None else d_lo + (t_lo or "000000000000")
    hi = None if d_hi is None else d_hi + (t_hi or open_time_end)
    instant = day + instant_time
    return (lo is None or instant >= lo) and (hi is None or instant <= hi)


# ============================================================================ comparison
#: Differences that are neither in :data:`INTENDED` nor the harness's: likely wlmserver bugs.
INVALID_CS = "invalid CS value answered"
#: Kinds of difference that look like wlmserver bugs (each its own xfail test). Empty: the two
#: found by the first runs (a date and a time of different forms combined into one range; a CS
#: value in lower case answered instead of refused) are fixed.
SUSPECTED: dict[str, str] = {}

Check = Callable[[Tree, "str | None"], bool]
"""A verdict on one answer (its tree and its character set)."""


@dataclass(frozen=True)
class Flag:
    """Matching keys on which wlmscpfs and wlmserver may intend to differ, with how each
    matches them: ``stages[0]`` is wlmscpfs's way, each further stage changes one respect
    (named by its kind) and the last is wlmserver's documented way."""

    constraints: tuple[Constraint, ...]
    stages: tuple[tuple[str, Check], ...]

    @property
    def paths(self) -> list[KeyPath]:
        return [c.path for c in self.constraints]


def in_table(path: KeyPath) -> bool:
    """Whether a key is in Table K.6-1 (a key inside one of its sequences counts as in)."""
    return (path[:2] if path[0] == SPS and len(path) > 1 else path[:1]) in TABLE_KEYS


def _on(path: KeyPath, test: Callable[[Sequence[str], str | None], bool]) -> Check:
    return lambda tree, cs: _matches_in(tree, path, lambda v: test(v, cs))


def _always(tree: Tree, cs: str | None) -> bool:
    return True


SPS_DATE = (SPS, "ScheduledProcedureStepStartDate")
SPS_TIME = (SPS, "ScheduledProcedureStepStartTime")


def flags(query: Query) -> list[Flag]:
    """The matching keys of a query on which wlmscpfs and wlmserver may intend to differ."""
    out = []
    qcs = query_charset(query)
    by_path = {c.path: c for c in constraints(query)}
    for c in by_path.values():
        if c.vr in ("DA", "TM", "DT"):
            continue
        reference = _on(c.path, lambda v, cs, c=c: reference_verdict(c, v))  # type: ignore[misc]
        if c.path not in WLM_MATCHED:
            continue  # a return key only, for both
        if c.path not in SCPFS_MATCHED:
            out.append(Flag((c,), (("", _always), (NOT_MATCHED, reference))))
        elif (
            (c.path in SCPFS_LITERAL and ("*" in c.value or "?" in c.value))
            or (c.vr in TEXT_VRS and (not c.value.isascii() or "?" in c.value))
            or c.vr == "PN"
            or (c.path in SCPFS_SINGLE_VALUED and "\\" in c.value)
        ):
            literal = c.path in SCPFS_LITERAL
            stages: tuple[tuple[str, Check], ...] = (
                ("", _on(c.path, lambda v, cs, c=c: scpfs_verdict(c, v, qcs, cs))),  # type: ignore[misc]
                (
                    CHARS,
                    _on(
                        c.path,
                        lambda v, cs, c=c, lit=literal: reference_verdict(  # type: ignore[misc]
                            c, v, groups=False, wildcards=not lit
                        ),
                    ),
                ),
                (
                    WILDCARD,
                    _on(c.path, lambda v, cs, c=c: reference_verdict(c, v, groups=False)),  # type: ignore[misc]
                ),
                (PN_GROUPS, reference),
            )
            out.append(Flag((c,), stages))
    d, t = by_path.get(SPS_DATE), by_path.get(SPS_TIME)
    if t is not None:
        d_span, t_span = None if d is None else span(d.value), span(t.value)

        def when(precision: bool, night: bool, standard_forms: bool) -> Check:
            def check(tree: Tree, cs: str | None) -> bool:
                items = tree.get(SPS)
                item = items[0] if isinstance(items, list) and items else {}
                days = item.get(SPS_DATE[1]) or (() if d_span else ("",))  # date not asked
                times = item.get(SPS_TIME[1]) or ()
                return any(
                    datetime_verdict(
                        d_span,
                        t_span,
                        day,
                        time_,
                        precision=precision,
                        night=night,
                        standard_forms=standard_forms,
                    )
                    for day in days
                    for time_ in times
                )

            return check

        pair = (t,) if d is None else (d, t)
        out.append(
            Flag(
                pair,
                (
                    ("", when(False, False, False)),
                    (PARTIAL_TIME, when(True, False, False)),
                    (NIGHT, when(True, True, False)),
                    (FORMS, when(True, True, True)),
                ),
            )
        )
    return out


def list_on_single_valued(query: Query) -> bool:
    """Whether the query holds a backslash list on a key wlmscpfs refuses lists on."""
    return any(
        c.path in SCPFS_SINGLE_VALUED and "\\" in c.value and not _invalid_cs(c)
        for c in constraints(query)
    )


def _invalid_cs(c: Constraint) -> bool:
    return c.vr == "CS" and re.fullmatch(r"[A-Z0-9 _*?\\]*", c.value) is None


def refusal_reasons(query: Query) -> list[str]:
    """Why wlmserver refuses a query (the REFUSED row): on its matching keys, date ranges that
    end before they start (a time range may: it crosses midnight), a date range and a time
    range that make a date-time range ending before it starts, ``-`` alone, wildcards in
    UIDs. The values of return keys are not looked at."""
    reasons = []
    matched = [c for c in constraints(query) if c.path in WLM_MATCHED]
    by_path = {c.path: c for c in matched}
    d, t = by_path.get(SPS_DATE), by_path.get(SPS_TIME)
    d_span = None if d is None or "\\" in d.value else span(d.value)
    t_span = None if t is None or "\\" in t.value else span(t.value)
    if d_span is not None and t_span is not None and d_span.form == t_span.form == "R":
        assert d_span.lo and d_span.hi and t_span.lo and t_span.hi
        if d_span.lo + _tm(t_span.lo) > d_span.hi + _tm_end(t_span.hi, precision=True):
            reasons.append("date-time range ends before it starts")
    for c in matched:
        where = ".".join(c.path)
        for alternative in _alternatives(c.vr, c.value):
            if c.vr == "UI" and ("*" in alternative or "?" in alternative):
                reasons.append(f"wildcard in UID {where}")
            if c.vr in ("DA", "TM", "DT") and alternative == "-":
                reasons.append(f"'-' alone in {where}")
            s = span(alternative) if c.vr in ("DA", "DT") else None
            if s is not None and s.lo is not None and s.hi is not None and s.lo > s.hi:
                reasons.append(f"reversed range in {where}")
    return reasons


def _lookup(tree: Tree, path: KeyPath) -> list[tuple[str, ...]]:
    """The values at ``path`` in an answer: one tuple per reached item (empty if absent)."""
    if len(path) == 1:
        value = tree.get(path[0])
        return [value] if isinstance(value, tuple) else [()]
    items = tree.get(path[0])
    if not isinstance(items, list):
        return [()]
    return [v for item in items for v in _lookup(item, path[1:])] or [()]


def _matches_in(tree: Tree, path: KeyPath, test: Callable[[Sequence[str]], bool]) -> bool:
    """Whether an answer matches at ``path`` (through sequences: if any item matches)."""
    return any(test(values) for values in _lookup(tree, path))


def _prune(tree: Tree, path: KeyPath, test: Callable[[Sequence[str]], bool]) -> Tree:
    """Keep, in the sequences along ``path`` below the SPS item, only the items that match."""
    if len(path) == 1:
        return tree
    out = dict(tree)
    items = tree.get(path[0])
    if isinstance(items, list):
        kept = [_prune(i, path[1:], test) for i in items]
        if path[0] != SPS:  # the SPS item is the entry itself, never pruned
            kept = [i for i in kept if _matches_in(i, path[1:], test)]
        out[path[0]] = kept
    return out


@dataclass
class Model:
    """What the generator wrote, for what wlmscpfs's answers do not say: attributes it does
    not return, and whether an entry has a sequence it was asked for."""

    by_uid: dict[str, WlFile]

    def top_values(self, uid: str, keyword: str) -> tuple[str, ...]:
        wl = self.by_uid.get(uid)
        return tuple(_values(wl.top, keyword)) if wl is not None else ()

    def lacks(self, tree: Tree, keyword: str, item: Tree | None = None) -> bool | None:
        """Whether the entry of an answer lacks a sequence (at the top, or in its SPS item,
        found by the SPS ID the answer holds); None when unknown."""
        wl = self.by_uid.get(_uid(tree))
        if wl is None:
            return None
        if item is None:
            return not wl.top.get(keyword)
        step_id = item.get("ScheduledProcedureStepID") or ()
        steps = [s for s in wl.steps if step_id and s.get("ScheduledProcedureStepID") == step_id[0]]
        return not steps[0].get(keyword) if len(steps) == 1 else None


def _uid(tree: Tree) -> str:
    values = tree.get("StudyInstanceUID")
    return values[0] if isinstance(values, tuple) and values else ""


def _all_empty(item: Tree) -> bool:
    return all(v == () or v == [] for v in item.values())


def _as_wlmserver_sequences(
    tree: Tree, keywords: Sequence[str], whole: Sequence[str], lacks: Callable[[str], bool | None]
) -> set[str]:
    """Requested sequences of an answer of wlmscpfs as wlmserver returns them: one the entry
    lacks empty (wlmscpfs leaves it out, or returns the query's item, values and all: EMPTY_SQ);
    one requested whole (no keys in its item) with each item as the entry has it, not with the
    zero-length keys of wlmscpfs's expansion list (EXPANSION)."""
    kinds = set()
    for keyword in keywords:
        value = tree.get(keyword)
        lacking = lacks(keyword)
        if lacking is None:  # unknown entry: what wlmscpfs returns for a lacking sequence
            lacking = value is None or (
                isinstance(value, list) and len(value) == 1 and _all_empty(value[0])
            )
        if lacking:
            if value != []:
                tree[keyword] = []
                kinds.add(EMPTY_SQ)
        elif keyword in whole and isinstance(value, list):
            trimmed = [{k: v for k, v in item.items() if v != ()} for item in value]
            if trimmed != value:
                tree[keyword] = trimmed
                kinds.add(EXPANSION)
    return kinds


def as_wlmserver_answers(
    query: Query, trees: Sequence[Tree], model: Model
) -> tuple[list[Tree], set[str]]:
    """wlmscpfs's answers turned into what wlmserver intends to answer, by the intended
    differences in what is returned (not in what matches); returns them and the kinds that
    changed anything."""
    kinds: set[str] = set()
    wanted = requested(query)
    outside = [p[0] for p in wanted if len(p) == 1 and not in_table(p)]
    sequences = [p for p, is_sequence in wanted.items() if is_sequence and p != (SPS,)]
    whole = [p for p in sequences if not any(len(q) > len(p) and q[: len(p)] == p for q in wanted)]
    top = [p[0] for p in sequences if len(p) == 1]
    top_whole = [p[0] for p in whole if len(p) == 1]
    in_sps = [p[1] for p in sequences if len(p) == 2 and p[0] == SPS]
    sps_whole = [p[1] for p in whole if len(p) == 2 and p[0] == SPS]
    if sps_item_is_empty(query):  # expanded: the SPS keys of Table K.6-1 (wlmserver)
        in_sps = sps_whole = [PROTOCOL_CODES]
    out = []
    for tree in trees:
        t = dict(tree)
        for keyword in outside:
            if keyword not in t:
                t[keyword] = model.top_values(_uid(t), keyword)
                kinds.add(OUTSIDE)
        kinds |= _as_wlmserver_sequences(
            t,
            top,
            top_whole,
            lambda k, t=t: model.lacks(t, k),  # type: ignore[misc]
        )
        if isinstance(t.get(SPS), list):
            items = []
            for item in t[SPS]:
                item = dict(item)
                if sps_item_is_empty(query):
                    for keyword in SCPFS_ONLY_EXPANSION:
                        if item.pop(keyword, None) is not None:
                            kinds.add(EXPANSION)
                kinds |= _as_wlmserver_sequences(
                    item,
                    in_sps,
                    sps_whole,
                    lambda k, t=t, item=item: model.lacks(t, k, item),  # type: ignore[misc]
                )
                items.append(item)
            t[SPS] = items
        out.append(t)
    return out, kinds


@dataclass
class Outcome:
    """The comparison of one query."""

    query: Query
    expected: Response  # wlmscpfs
    got: Response  # wlmserver
    kinds: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # why a difference is not intended
    neutral: Response | None = None

    @property
    def problem(self) -> str:
        return "; ".join(self.problems)

    @property
    def identical(self) -> bool:
        return not self.kinds and not self.problems

    def report(self, limit: int = 8) -> str:
        """A readable account of an unexplained difference."""
        lines = [
            f"query {self.query.number} ({'; '.join(self.query.notes)}):",
            f"  {self.query.findscu()}",
            f"  why: {self.problem}",
            f"  wlmscpfs: {self.expected.describe()}",
            f"  wlmserver: {self.got.describe()}",
        ]
        e = Counter(freeze(t) for t in self.expected.answers)
        g = Counter(freeze(t) for t in self.got.answers)
        by_key = {freeze(t): t for t in [*self.expected.answers, *self.got.answers]}
        only_e, only_g = list((e - g).elements()), list((g - e).elements())
        for title, items in (("only from wlmscpfs", only_e), ("only from wlmserver", only_g)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {show(by_key[k])}" for k in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... {len(items) - limit} more")
        lines += _paired_differences([by_key[k] for k in only_e], [by_key[k] for k in only_g])
        return "\n".join(lines)


def _identity(tree: Tree) -> tuple[str, str]:
    items = tree.get(SPS)
    step = items[0].get("ScheduledProcedureStepID", ()) if isinstance(items, list) and items else ()
    return _uid(tree), step[0] if step else ""


def _flat(tree: Tree, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{SPS_PREFIX if key == SPS and not prefix else key}"
        if isinstance(value, list):
            out[path] = f"<{len(value)} items>"
            for i, item in enumerate(value):
                out.update(_flat(item, f"{path}[{i}]."))
        else:
            out[path] = "\\".join(value) if value else "<zero-length>"
    return out


def _paired_differences(only_e: list[Tree], only_g: list[Tree], limit: int = 3) -> list[str]:
    """For answers of the same entry (Study Instance UID and SPS ID) on both sides, the keys
    whose values differ."""
    by_identity = {_identity(t): t for t in only_g}
    lines: list[str] = []
    for e in only_e:
        g = by_identity.get(_identity(e))
        if g is None or len(lines) >= limit:
            continue
        fe, fg = _flat(e), _flat(g)
        diffs = [
            f"{k}: wlmscpfs {fe.get(k, '<absent>')}, wlmserver {fg.get(k, '<absent>')}"
            for k in sorted(set(fe) | set(fg))
            if fe.get(k) != fg.get(k)
        ]
        lines.append(f"  same entry {_identity(e)[0]} {_identity(e)[1]}: " + "; ".join(diffs))
    return lines


class Comparer:
    """Compares the answers of both servers to one query and explains their differences."""

    def __init__(
        self, model: Model, multi_uids: set[str], ask_wlmscpfs: Callable[[Query], Response]
    ) -> None:
        self.model = model
        self.multi_uids = multi_uids
        self.ask_wlmscpfs = ask_wlmscpfs

    def compare(self, query: Query, expected: Response, got: Response) -> Outcome:
        """Compare both servers' responses to a query; classify any difference."""
        out = Outcome(query, expected, got)
        out.problems += sorted({label_problem(label) for label in got.labels} - {""})
        if any(_uid(t) in self.multi_uids for t in got.answers):
            out.kinds.add(MULTI_ITEM)
        e_class, g_class = expected.status_class, got.status_class
        reasons = refusal_reasons(query)
        invalid = [c for c in constraints(query) if _invalid_cs(c)]
        if "none" in (e_class, g_class):
            out.problems.append("no final status")
        elif e_class == g_class == "failure":
            pass  # both refuse the query
        elif g_class == "failure":
            if e_class == "success" and reasons and got.status == 0xA900 and not got.answers:
                out.kinds.add(REFUSED)
            else:
                out.problems.append("wlmserver fails where wlmscpfs answers")
        elif g_class != "success" or e_class not in ("success", "failure"):
            out.problems.append("final status classes differ")
        elif reasons:
            out.problems.append(
                f"wlmserver answers a query it should refuse ({'; '.join(reasons)})"
            )
        elif e_class == "failure" and invalid:
            out.problems.append(
                f"suspected wlmserver bug: {INVALID_CS} ({', '.join(c.value for c in invalid)})"
            )
        elif e_class == "failure" and not list_on_single_valued(query):
            out.problems.append("wlmscpfs fails where wlmserver answers")
        else:
            self._compare_answers(out)
        return out

    def _compare_answers(self, out: Outcome) -> None:
        query, expected, got = out.query, out.expected, out.got
        expected_trees, kinds = as_wlmserver_answers(query, expected.answers, self.model)
        if expected.status_class == "success" and _same(expected_trees, got.answers):
            out.kinds |= kinds
            e_labels = Counter(zip(map(freeze, expected_trees), expected.labels, strict=True))
            g_labels = Counter(zip(map(freeze, got.answers), got.labels, strict=True))
            if e_labels != g_labels:
                out.kinds.add(LABEL)
            return
        query_flags = flags(query)
        if not query_flags:
            out.problems.append("answers differ (no intended difference concerns this query)")
            return
        self._explain(out, query_flags, expected_trees, kinds)

    def _explain(
        self, out: Outcome, query_flags: list[Flag], expected_trees: list[Tree], kinds: set[str]
    ) -> None:
        """Ask wlmscpfs again without the flagged keys; filter its answers by how wlmscpfs
        matches those keys (must give its answers back) and by how wlmserver is documented to
        match them (must give wlmserver's answers); count the respects that made a difference."""
        query = out.query
        paths = sorted({p for f in query_flags for p in f.paths})
        shown = ", ".join(".".join(p[-2:] if p[0] == SPS else p) for p in paths)
        neutral = self.ask_wlmscpfs(neutralized(query, paths))
        out.neutral = neutral
        if neutral.status_class != "success":
            out.problems.append(f"wlmscpfs fails the query without {shown}: {neutral.describe()}")
            return
        trees, neutral_kinds = as_wlmserver_answers(query, neutral.answers, self.model)
        labels = ["\\".join(lab) if lab else None for lab in neutral.labels]
        answers = list(zip(trees, labels, strict=True))
        first = [f.stages[0][1] for f in query_flags]
        last = [f.stages[-1][1] for f in query_flags]
        if out.expected.status_class == "success":
            predicted = [t for t, cs in answers if all(check(t, cs) for check in first)]
            if not _same(predicted, expected_trees):
                out.problems.append(
                    f"not an intended difference: wlmscpfs's answers are not those of the "
                    f"query without {shown} filtered by how wlmscpfs matches them "
                    f"({len(expected_trees)} answered, {len(predicted)} so filtered)"
                )
                return
        reference = []
        for t, cs in answers:
            if all(check(t, cs) for check in last):
                for f in query_flags:
                    for c in f.constraints:
                        if len(c.path) > (2 if c.path[0] == SPS else 1):
                            t = _prune(t, c.path, lambda v, c=c: reference_verdict(c, v))  # type: ignore[misc]
                reference.append(t)
        if not _same(reference, out.got.answers):
            out.problems.append(
                f"wlmserver's answers are not those of the query without {shown} filtered by "
                f"wlmserver's documented matching ({len(reference)} so filtered, "
                f"{len(out.got.answers)} answered)"
            )
            return
        contributed = _contributions(query_flags, answers)
        if out.expected.status_class == "failure":
            contributed.add(LIST_VM1)
        suspected = sorted(contributed & set(SUSPECTED))
        if suspected:
            out.problems += [f"suspected wlmserver bug: {k}" for k in suspected]
        out.kinds |= kinds | neutral_kinds | (contributed - set(SUSPECTED))


def _contributions(query_flags: list[Flag], answers: list[tuple[Tree, str | None]]) -> set[str]:
    """The respects (stage kinds) that change the verdict on some answer that the other flags
    let through (as wlmscpfs or as wlmserver matches them)."""
    kinds = set()
    for f in query_flags:
        others = [g for g in query_flags if g is not f]
        for t, cs in answers:
            if not (
                all(g.stages[0][1](t, cs) for g in others)
                or all(g.stages[-1][1](t, cs) for g in others)
            ):
                continue
            verdicts = [check(t, cs) for _, check in f.stages]
            for (kind, _), before, after in zip(f.stages[1:], verdicts, verdicts[1:], strict=False):
                if before != after:
                    kinds.add(kind)
    return kinds


# ============================================================================ a run
@dataclass
class RunResult:
    """The figures and outcomes of one run."""

    seed: int
    files: int
    multi_item_files: int
    incomplete_files: int
    outcomes: list[Outcome]
    seconds: float
    multi_check: str = ""  # a problem with the claim that wlmscpfs skips multi-item files
    notes: Counter[str] = field(default_factory=Counter)

    @property
    def unexplained(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem]

    @property
    def identical(self) -> int:
        return sum(1 for o in self.outcomes if o.identical)

    def by_kind(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for o in self.outcomes:
            if not o.problem:
                counts.update(o.kinds)
        return counts

    def summary(self) -> str:
        """One figure line (and a coverage line)."""
        intended = sum(1 for o in self.outcomes if o.kinds and not o.problem)
        kinds = self.by_kind()
        by_kind = ", ".join(f"{k}: {kinds[k]}" for k in INTENDED_KINDS if kinds[k]) or "none"
        return (
            f"difftest seed {self.seed}: {self.files} files ({self.multi_item_files} multi-item, "
            f"{self.incomplete_files} incomplete); {len(self.outcomes)} queries: "
            f"{self.identical} identical, {intended} with intended differences ({by_kind}), "
            f"{len(self.unexplained)} unexplained; {self.seconds:.1f} s"
        )

    def problem_counts(self) -> Counter[str]:
        """Unexplained differences by what is wrong (the reason, without its details)."""
        return Counter(
            re.sub(r" \(.*", "", problem) for o in self.unexplained for problem in o.problems
        )

    def coverage(self) -> str:
        types = Counter(re.sub(r" \[.*\]$|\(.*", "", n).strip() for n in self.notes.elements())
        return "matching types: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items()))

    def report(self, limit: int = 20) -> str:
        """The unexplained differences, readable."""
        parts = [o.report() for o in self.unexplained[:limit]]
        if len(self.unexplained) > limit:
            parts.append(f"... and {len(self.unexplained) - limit} more unexplained differences")
        if self.multi_check:
            parts.insert(0, self.multi_check)
        return "\n\n".join(parts)


def _ask_all(
    client: Client, queries: Sequence[Query], requests: Sequence[bytes], out: list[Response]
) -> None:
    for query, request in zip(queries, requests, strict=True):
        try:
            out.append(client.find(query, request))
        except Exception as exc:  # a harness error shows as this query's problem, not a hang
            client.close()
            out.append(Response(None, error=f"; {type(exc).__name__}: {exc}"))


def run(
    seed: int,
    files: int,
    queries: int,
    workdir: Path,
    *,
    charsets: Weights = CHARSETS,
    wlmscpfs: Path = WLMSCPFS,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """Generate a store and queries from ``seed``, run both servers, compare every query."""
    started = time.monotonic()
    store, query_list = generate(seed, files, queries, charsets)
    wlm_root, scpfs_root = write_stores(store, workdir)
    model = Model({wl.uid: wl for wl in store})
    multi = [wl for wl in store if len(wl.steps) > 1]
    multi_uids = {wl.uid for wl in multi}
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    scpfs_port = free_port()
    wlm_port = free_port()
    while wlm_port == scpfs_port:
        wlm_port = free_port()
    with (
        _quiet_pydicom(),  # on values answers hold that are not valid for their VR
        server(
            "wlmscpfs",
            wlmscpfs_command(scpfs_root, scpfs_port, wlmscpfs),
            scpfs_port,
            logs / "wlmscpfs.log",
        ),
        server(
            "wlmserver", wlmserver_command(wlm_root, wlm_port), wlm_port, logs / "wlmserver.log"
        ),
    ):
        # first (wlmscpfs -s serves one association at a time): the multi-item files alone
        multi_check = _check_multi(scpfs_port, wlm_port, multi)
        scpfs, wlm = Client(scpfs_port), Client(wlm_port)
        try:
            if progress:
                progress(f"{len(store)} files written; {len(query_list)} queries to send")
            requests = [find_request(q) for q in query_list]
            expected: list[Response] = []
            got: list[Response] = []
            # both servers at once: each has its own client thread and association
            thread = threading.Thread(
                target=_ask_all, args=(scpfs, query_list, requests, expected), daemon=True
            )
            thread.start()
            _ask_all(wlm, query_list, requests, got)
            thread.join(timeout=len(query_list) * TIMEOUT)
            if thread.is_alive():
                raise ServerError("wlmscpfs queries did not finish")
            if progress:
                answers = sum(len(r.answers) for r in (*expected, *got))
                progress(f"queries sent: {time.monotonic() - started:.1f} s, {answers} answers")
            comparer = Comparer(model, multi_uids, scpfs.find)
            outcomes = [
                comparer.compare(q, e, g) for q, e, g in zip(query_list, expected, got, strict=True)
            ]
        finally:
            scpfs.close()
            wlm.close()
    notes: Counter[str] = Counter(n for q in query_list for n in q.notes)
    return RunResult(
        seed,
        len(store),
        len(multi),
        sum(1 for wl in store if wl.incomplete),
        outcomes,
        time.monotonic() - started,
        multi_check,
        notes,
    )


def _check_multi(scpfs_port: int, wlm_port: int, multi: Sequence[WlFile]) -> str:
    """The intended difference itself: wlmscpfs answers none of the multi-item files (it skips
    them as incomplete), wlmserver one answer per complete item."""
    query = Query(0, ("StudyInstanceUID", SPS_PREFIX + ".ScheduledProcedureStepID"))
    answers = {}
    for name, port in (("wlmscpfs", scpfs_port), ("wlmserver", wlm_port)):
        client = Client(port, MULTI_AE_TITLE)
        try:
            answers[name] = client.find(query)
        finally:
            client.close()
    complete = sum(wl.served_steps() for wl in multi)
    scpfs, wlm = answers["wlmscpfs"], answers["wlmserver"]
    if scpfs.status != 0 or scpfs.answers or wlm.status != 0 or len(wlm.answers) != complete:
        return (
            f"multi-item files: expected wlmscpfs to answer none of {len(multi)} files and "
            f"wlmserver {complete} steps; wlmscpfs: {scpfs.describe()}; wlmserver: {wlm.describe()}"
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--queries", type=int, default=600)
    p.add_argument("--keep", type=Path, help="write the stores and logs here (kept)")
    p.add_argument("--wlmscpfs", type=Path, default=WLMSCPFS)
    p.add_argument("--limit", type=int, default=20, help="unexplained differences shown")
    p.add_argument(
        "--ir87",
        action="store_true",
        help="files in the default repertoire and ISO 2022 IR 87 (Japanese) only",
    )
    args = p.parse_args(argv)
    if not args.wlmscpfs.exists():
        print(f"{args.wlmscpfs} not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="difftest-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = run(
                args.seed,
                args.files,
                args.queries,
                workdir,
                charsets=IR87_CHARSETS if args.ir87 else CHARSETS,
                wlmscpfs=args.wlmscpfs,
                progress=lambda m: print(m, file=sys.stderr),
            )
        except ServerError as exc:
            print(f"difftest: {exc}", file=sys.stderr)
            return 2
    if result.unexplained or result.multi_check:
        print(result.report(args.limit))
        print()
        for problem, count in result.problem_counts().most_common():
            print(f"{count:5d}  {problem}")
        print()
    print(result.coverage())
    print(result.summary())
    return 1 if result.unexplained or result.multi_check else 0


if __name__ == "__main__":
    sys.exit(main())
