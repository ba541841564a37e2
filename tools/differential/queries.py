"""The generated queries, and the C-FIND identifiers built from them."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from random import Random

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from . import AE_TITLE, SPS_PREFIX
from .intended import NUMERIC_VRS, PROTOCOL_CODES
from .store import CHARSETS, DAYS, FIRST_DAY, Item, Weights, WlFile, generate_store, pick_weighted


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


def item_values(item: Item, keyword: str) -> list[str]:
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
            pools.setdefault(keyword, []).extend(item_values(wl.top, keyword))
        for step in wl.steps:
            for keyword, _ in SPS_MATCH_KEYS:
                if "." in keyword:
                    seq, sub = keyword.split(".")
                    for code in step.get(seq, []):
                        pools.setdefault(keyword, []).extend(item_values(code, sub))
                else:
                    pools.setdefault(keyword, []).extend(item_values(step, keyword))
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
        scope = pick_weighted(
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
    count = pick_weighted(rng, ((0, 0.15), (1, 0.45), (2, 0.28), (3, 0.12)))
    choices = [(("top", k), w) for k, w in TOP_MATCH_KEYS] + [
        (("sps", k), w) for k, w in SPS_MATCH_KEYS
    ]
    for _ in range(count):
        level, keyword = pick_weighted(rng, choices)
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
def quiet_pydicom() -> Iterator[None]:
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
