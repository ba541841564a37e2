"""The table of intended differences, and what wlmscpfs matches and how."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import SPS


@dataclass(frozen=True)
class Intended:
    """One row of the table of intended differences ("Differences from wlmscpfs", in
    docs/reference/wlmscpfs.md).

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
    """The table of intended differences as the documentation shows it (markdown)."""
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
#: Keys wlmserver matches on by default (docs/querying.md, "Matching and answers"): wlmscpfs's,
#: and three that name one order or step; every other key is a return key only (PS3.4 K.2.2.1.1.2).
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
