"""Orders as a RIS gives them (JSON, CSV, dcmdump text) into complete worklist datasets.

What both ``wlmserver create`` and the store's JSON drops need, in one place: reading the
input forms, completing an entry as PS3.4 Table K.6-1 requires, and grouping the entries of one
requested procedure into one dataset with one Scheduled Procedure Step item per step.

Input forms (:func:`detect_format` tells them apart):

``json``
    A JSON object, or a list of them, one worklist entry each. Either the DICOM JSON model
    (PS3.18 F: ``{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "..."}]}}``) or a flat
    form with keywords as keys: ``{"PatientName": "DOE^JANE", "PatientID": "P1", ...,
    "Modality": "CT", ...}``, where SPS keys at the top make one scheduled procedure step, or
    ``"ScheduledProcedureStepSequence": [{...}, {...}]`` lists several. Lists give multiple
    values (``"ScheduledStationAETitle": ["CT01", "CT02"]``).
``csv``
    A header row of keywords, then one row per scheduled procedure step; empty cells are left
    out; ``\\`` separates multiple values.
``dump``
    ``dcmdump`` / ``dump2dcm`` text: ``(0010,0010) PN [DOE^JANE]`` lines, sequences with
    ``(fffe,e000)`` item and ``(fffe,e00d)`` / ``(fffe,e0dd)`` delimiter lines.

What the standard requires and a RIS rarely knows is filled in (:func:`complete`):
StudyInstanceUID (derived from the accession number, requested procedure ID and patient ID, so
the same order always gets the same UID), RequestedProcedureID (the accession number),
ScheduledProcedureStepID (the requested procedure ID and the step's number), and Specific
Character Set (ISO_IR 192 when any text is not ASCII). An entry that still lacks a Type 1
attribute, or has a value that is not valid for its VR, is refused with a message naming each
attribute, never its value.

One file holds one requested procedure (:func:`plan_orders`): the entries that name the same
accession number and requested procedure ID
(:func:`order_file_name`) are merged, one SPS item per step, in input order.
Their top-level attributes must agree, or the whole order is refused, naming the attributes
that differ; an order with a refused entry is refused whole.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from wlmserver.matching.answers import can_encode
from wlmserver.matching.keys import KEYS_BY_KEYWORD, REQUIRED_SPS, REQUIRED_TOP, Level
from wlmserver.store.valuerules import RULES, value_problem

SPS = "ScheduledProcedureStepSequence"
_SPS_TAG = 0x00400100
_CHARSET_TAG = 0x00080005
#: Top-level attributes :func:`complete` derives from others when an entry leaves them out.
_DERIVED = frozenset({"StudyInstanceUID", "RequestedProcedureID"})
_SH_LENGTH = 16  # ScheduledProcedureStepID is SH
#: dump2dcm's Media Storage SOP Class of worklist files.
WORKLIST_FILE_CLASS = "1.2.276.0.7230010.3.1.0.1"
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")


class EntryError(ValueError):
    """An input entry that cannot become a worklist file; lists every problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


# ------------------------------------------------------------------------------ reading input
def close_keyword(name: str) -> str | None:
    """The keyword ``name`` probably means (other case, a typo), or None: worklist keys
    (PS3.4 Table K.6-1) first, then the whole dictionary.

    Examples
    --------
    >>> close_keyword("Modalty"), close_keyword("patientname"), close_keyword("Xyzzy")
    ('Modality', 'PatientName', None)
    """
    word = name.strip()
    by_case = {k.lower(): k for k in keyword_dict}
    if word.lower() in by_case:
        return by_case[word.lower()]
    for choices in (list(KEYS_BY_KEYWORD), list(keyword_dict)):
        close = difflib.get_close_matches(word, choices, n=1, cutoff=0.8)
        if close:
            return close[0]
    return None


def _keyword_of(name: str) -> str:
    match = _TAG.match(name.strip())
    if match:
        keyword = keyword_for_tag(int(match.group(1) + match.group(2), 16))
        if keyword:
            return str(keyword)
    elif tag_for_keyword(name.strip()) is not None:
        return name.strip()
    close = None if match else close_keyword(name)
    hint = f"; did you mean {close!r}?" if close else ""
    raise EntryError([f"{name}: not a DICOM keyword or tag{hint}"])


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        ds_items = []
        for item in items:
            if not isinstance(item, dict):
                raise EntryError([f"{keyword}: items must be objects"])
            ds_items.append(from_flat(item, sps_at_top=False))
        setattr(ds, keyword, ds_items)
        return
    if isinstance(value, list):
        value = [str(v) for v in value]
    elif value is None:
        value = ""
    else:
        value = str(value)
    setattr(ds, keyword, value)


def from_flat(obj: dict[str, Any], *, sps_at_top: bool = True) -> Dataset:
    """A dataset from the flat form (keywords as keys); SPS keys at the top make one step."""
    ds = Dataset()
    step = Dataset()
    problems = []
    for name, value in obj.items():
        try:
            keyword = _keyword_of(name)
            row = KEYS_BY_KEYWORD.get(keyword)
            target = step if sps_at_top and row is not None and row.level is Level.SPS else ds
            _set(target, keyword, value)
        except EntryError as exc:
            problems.extend(exc.problems)
    if problems:
        raise EntryError(problems)
    if len(step):
        if SPS in ds:
            raise EntryError([f"SPS keys both at the top and in {SPS}"])
        ds.ScheduledProcedureStepSequence = [step]
    return ds


def _is_dicom_json(obj: dict[str, Any]) -> bool:
    return bool(obj) and all(re.fullmatch(r"[0-9A-Fa-f]{8}", k) for k in obj)


def entries_from_json(text: str) -> Iterator[Dataset]:
    """The entries of a JSON document (one object or a list; DICOM JSON or flat)."""
    document = json.loads(text)
    objects = document if isinstance(document, list) else [document]
    for obj in objects:
        yield _json_entry(obj)


def _json_entry(obj: object) -> Dataset:
    if not isinstance(obj, dict):
        raise EntryError(["each JSON entry must be an object"])
    return Dataset.from_json(obj) if _is_dicom_json(obj) else from_flat(obj)


def entries_from_csv(text: str) -> Iterator[Dataset]:
    """One entry per CSV row (header: keywords; ``\\`` separates values)."""
    for row in csv.DictReader(io.StringIO(text)):
        yield from_flat(_csv_object(row))


def _csv_object(row: dict[str, str | None]) -> dict[str, Any]:
    return {
        k.strip(): (v.split("\\") if "\\" in v else v)
        for k, v in row.items()
        if k and v not in (None, "")
    }


def read_entries(text: str, form: str) -> Iterator[Dataset | EntryError]:
    """The entries of an input, each read on its own (``form``: a key of :data:`READERS`): a
    dataset, or an :class:`EntryError` saying why that entry (JSON object, CSV row) cannot be
    read, so that one misspelled keyword refuses its entry, not the input.

    Raises
    ------
    EntryError, ValueError
        The input cannot be read as ``form`` at all (not JSON, a dump line ...).
    """
    if form == "json":
        document = json.loads(text)
        objects = document if isinstance(document, list) else [document]
        for obj in objects:
            yield _entry_or_error(partial(_json_entry, obj))
    elif form == "csv":
        for row in csv.DictReader(io.StringIO(text)):
            yield _entry_or_error(partial(from_flat, _csv_object(row)))
    else:
        yield from READERS[form](text)


def _entry_or_error(read: Callable[[], Dataset]) -> Dataset | EntryError:
    try:
        with warnings.catch_warnings():  # pydicom's value warnings: refused later instead
            warnings.simplefilter("ignore")
            return read()
    except EntryError as exc:
        return exc
    except (ValueError, KeyError, TypeError) as exc:
        return EntryError([f"cannot read it ({exc})"])


_DUMP_LINE = re.compile(r"^\s*\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)\s+(\S+)\s*(.*)$")


def _dump_value(rest: str) -> str:
    bracket = re.match(r"^\[(.*)\]", rest)
    if bracket:
        return bracket.group(1)
    if rest.startswith("(no value") or rest.startswith("(Sequence") or rest.startswith("(Item"):
        return ""
    return rest.split("#", 1)[0].strip()


def entries_from_dump(text: str) -> Iterator[Dataset]:
    """One entry from ``dcmdump``/``dump2dcm`` text (nested sequences included)."""
    root = Dataset()
    # frames: a dataset being filled, or [parent dataset, sequence keyword, items]
    stack: list[Any] = [root]

    def close_sequence() -> None:
        parent, keyword, items = stack.pop()
        setattr(parent, keyword, items)

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DUMP_LINE.match(line)
        if not match:
            raise EntryError([f"line {number}: not a dump line"])
        tag = int(match.group(1) + match.group(2), 16)
        vr, rest = match.group(3).upper(), match.group(4).strip()
        if tag == 0xFFFEE000:  # item start
            if not isinstance(stack[-1], list):
                raise EntryError([f"line {number}: an item outside a sequence"])
            item = Dataset()
            stack[-1][2].append(item)
            stack.append(item)
        elif tag == 0xFFFEE00D:  # item end
            if len(stack) < 3 or not isinstance(stack[-1], Dataset):
                raise EntryError([f"line {number}: an item end without an item"])
            stack.pop()
        elif tag == 0xFFFEE0DD:  # sequence end
            if not isinstance(stack[-1], list):
                raise EntryError([f"line {number}: a sequence end without a sequence"])
            close_sequence()
        elif (tag >> 16) == 0x0002 or (tag & 0xFFFF) == 0:
            continue  # file meta and group lengths are written anew
        else:
            if not isinstance(stack[-1], Dataset):
                raise EntryError([f"line {number}: an attribute outside an item"])
            keyword = keyword_for_tag(tag)
            if not keyword:
                raise EntryError([f"line {number}: ({match.group(1)},{match.group(2)}) unknown"])
            if vr == "SQ":
                stack.append([stack[-1], keyword, []])
                continue
            if keyword in stack[-1]:
                continue  # an attribute given twice: the first counts, as with dump2dcm
            value = _dump_value(rest)
            setattr(stack[-1], keyword, value.split("\\") if "\\" in value else value)
    while len(stack) > 1:  # sequences left open at the end of the text
        if isinstance(stack[-1], Dataset):
            stack.pop()
        else:
            close_sequence()
    yield root


# ------------------------------------------------------------------------------ completing
def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def stable_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (PS3.5 B.2: ``2.25.`` and a name-based UUID as integer).

    Examples
    --------
    >>> stable_uid("A1", "RP1", "P1") == stable_uid("A1", "RP1", "P1")
    True
    >>> stable_uid("A1", "RP1", "P1").startswith("2.25.")
    True
    """
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'wlmserver:' + name).int}"


def _walk_text(ds: Dataset, where: str = "") -> Iterator[tuple[str, str]]:
    """``(attribute path, text)`` of every value in a character-set VR."""
    for element in ds:
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                yield from _walk_text(item, f"{where}{element.keyword}[{n}].")
        elif element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value:
            values = element.value if element.VM > 1 else [element.value]
            yield from ((f"{where}{element.keyword}", str(v)) for v in values)


def _invalid(ds: Dataset, where: str = "") -> Iterator[str]:
    """One problem per value not valid for its VR, saying what to type
    (:func:`~wlmserver.store.valuerules.value_problem`)."""
    for element in ds:
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                yield from _invalid(item, f"{where}{element.keyword}[{n}].")
            continue
        if element.VR not in RULES or element.value in (None, ""):
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            problem = value_problem(element.VR, value)
            if problem is not None:
                yield f"{where}{element.keyword}: {problem}"


def step_id(procedure: str, n: int) -> str:
    """``<procedure>.<n>``, the procedure shortened so that ``.<n>`` always fits in 16 characters.

    Examples
    --------
    >>> step_id("A100", 2)
    'A100.2'
    >>> step_id("ACC0123456789012", 1), step_id("ACC0123456789012", 12)
    ('ACC01234567890.1', 'ACC0123456789.12')
    """
    suffix = f".{n}"
    return procedure[: max(0, _SH_LENGTH - len(suffix))] + suffix


def _derive_step_ids(steps: Sequence[Dataset], procedure: str) -> None:
    """Give each step without a ScheduledProcedureStepID ``<procedure>.<n>`` (``n``: its place),
    never one that another step of the procedure already has."""
    used = {_text(step, "ScheduledProcedureStepID") for step in steps} - {""}
    for n, step in enumerate(steps, start=1):
        if _text(step, "ScheduledProcedureStepID"):
            continue
        number = n
        while step_id(procedure, number) in used:
            number += len(steps)
        step.ScheduledProcedureStepID = step_id(procedure, number)
        used.add(step.ScheduledProcedureStepID)


def _same_step_ids(steps: Sequence[Dataset]) -> Iterator[str]:
    """One problem per ScheduledProcedureStepID that more than one step has (a modality, and
    MPPS, could not tell those steps apart)."""
    places: dict[str, list[int]] = {}
    for n, step in enumerate(steps, start=1):
        value = _text(step, "ScheduledProcedureStepID")
        if value:
            places.setdefault(value, []).append(n)
    for numbers in places.values():
        if len(numbers) > 1:
            listed = ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
            yield f"SPS items {listed}: the same ScheduledProcedureStepID"


def complete(ds: Dataset) -> Dataset:
    """Fill in what the standard requires and a RIS rarely knows; refuse what is still wrong.

    Raises
    ------
    EntryError
        Naming every missing Type 1 attribute and every invalid value.
    """
    steps = list(ds.get(SPS, None) or [])
    accession = _text(ds, "AccessionNumber")
    if not _text(ds, "RequestedProcedureID") and accession:
        ds.RequestedProcedureID = accession
    procedure = _text(ds, "RequestedProcedureID")
    if not _text(ds, "StudyInstanceUID") and (accession or procedure):
        ds.StudyInstanceUID = stable_uid(accession, procedure, _text(ds, "PatientID"))
    if procedure:
        _derive_step_ids(steps, procedure)
    texts = list(_walk_text(ds))
    if "SpecificCharacterSet" not in ds and not all(t.isascii() for _, t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    problems = []
    declared = ds.get("SpecificCharacterSet", "") or ""
    charset = tuple(str(v) for v in declared) if not isinstance(declared, str) else (declared,)
    named = "\\".join(charset) or "ISO_IR 6"
    for where, text in texts:
        if not text.isascii() and not can_encode([text], charset):
            problems.append(
                f"{where}: has characters {named} cannot hold "
                "(leave out SpecificCharacterSet, or use ISO_IR 192)"
            )
    if not steps:
        problems.append(f"no scheduled procedure step (no SPS keys and no {SPS})")
    for alternatives in REQUIRED_TOP:
        if not any(_text(ds, k) or ds.get(k) for k in alternatives):
            problems.append(f"{' or '.join(alternatives)} missing")
    for n, step in enumerate(steps, start=1):
        label = f"SPS item {n}: " if len(steps) > 1 else ""
        for alternatives in REQUIRED_SPS:
            if not any(_text(step, k) or step.get(k) for k in alternatives):
                problems.append(f"{label}{' or '.join(alternatives)} missing")
    problems.extend(_same_step_ids(steps))
    problems.extend(_invalid(ds))
    if problems:
        raise EntryError(problems)
    return ds


# ------------------------------------------------------------------------------ one file per order
def order_file_name(accession: str, procedure: str = "") -> str:
    """The file of a requested procedure: ``order-<key>.wl``, the key a hash of its accession
    number and requested procedure ID (the accession number when there is none).

    Stable, so that writing an order again replaces its file, and not identifying: file names
    reach the log at INFO, and an accession number is patient data.

    Examples
    --------
    >>> order_file_name("A100") == order_file_name("A100", "A100")
    True
    >>> order_file_name("A100"), order_file_name("A100", "RP2") != order_file_name("A100")
    ('order-a84ba212b9efdbf04033.wl', True)
    """
    key = "\0".join(("wlmserver order", accession, procedure or accession))
    return f"order-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:20]}.wl"


def file_name(ds: Dataset) -> str:
    """The file an entry goes to (:func:`order_file_name`; without an accession number and
    requested procedure ID, a key from the patient ID)."""
    accession = _text(ds, "AccessionNumber")
    procedure = _text(ds, "RequestedProcedureID")
    if not accession and not procedure:
        accession = "patient\0" + (_text(ds, "PatientID") or "entry")
    return order_file_name(accession, procedure)


READERS = {"json": entries_from_json, "csv": entries_from_csv, "dump": entries_from_dump}
#: What one entry of each input form is called in messages.
ENTRY_WORDS = {"json": "entry", "csv": "row", "dump": ""}


def detect_format(text: str, path: Path | None) -> str:
    """``json``, ``csv`` or ``dump``, from the suffix or the first character."""
    suffix = path.suffix.lower().lstrip(".") if path else ""
    if suffix in READERS:
        return suffix
    if suffix == "txt":
        return "dump"
    start = text.lstrip()[:1]
    if start in ("{", "["):
        return "json"
    if start == "(" or start == "#":
        return "dump"
    return "csv"


@dataclass(frozen=True)
class InputEntry:
    """One entry of the input: a CSV row, a JSON entry, or a dump file.

    Attributes
    ----------
    source : str
        The input it came from (a file name, or ``-``).
    number : int
        Its place in that input, from 1 (CSV: row 1 is the first row after the header).
    word : str
        What it is called in messages: ``row``, ``entry``, or ``""`` when it is the whole input.
    dataset : Dataset
        What was read.
    """

    source: str
    number: int
    word: str
    dataset: Dataset

    @property
    def label(self) -> str:
        """``orders.csv row 2``, ``orders.json entry 3``, ``order.dump``."""
        return f"{self.source} {self.word} {self.number}" if self.word else self.source


def describe_entries(entries: Sequence[InputEntry]) -> str:
    """The entries' labels, by input: ``orders.csv rows 1, 2 and more.json entry 3``.

    Examples
    --------
    >>> row = lambda n: InputEntry("orders.csv", n, "row", Dataset())
    >>> describe_entries([row(1), row(2), InputEntry("a.dump", 1, "", Dataset())])
    'orders.csv rows 1, 2 and a.dump'
    >>> describe_entries([InputEntry("a.json", n, "entry", Dataset()) for n in (1, 2)])
    'a.json entries 1, 2'
    """
    by_source: dict[str, list[InputEntry]] = {}
    for entry in entries:
        by_source.setdefault(entry.source, []).append(entry)
    parts = []
    for source, group in by_source.items():
        word = group[0].word
        if not word:
            parts.append(source)
            continue
        plural = ("entries" if word == "entry" else f"{word}s") if len(group) > 1 else word
        parts.append(f"{source} {plural} {', '.join(str(e.number) for e in group)}")
    return " and ".join(parts)


@dataclass
class Order:
    """One output file: the input entries of one requested procedure.

    Attributes
    ----------
    name : str
        The file name (:func:`file_name`).
    entries : list of InputEntry
        Its input entries, in input order; each gives one or more steps.
    dataset : Dataset or None
        The completed, merged dataset; None when the order is refused.
    problems : list of str
        Why it is refused (attribute names, never values).
    """

    name: str
    entries: list[InputEntry] = field(default_factory=list)
    dataset: Dataset | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """How many scheduled procedure steps the file holds."""
        return len(self.dataset.get(SPS, None) or []) if self.dataset is not None else 0


def _canonical(value: Any) -> Any:
    """A value in a form that compares as the written file would (``""`` for no value)."""
    if isinstance(value, (DicomSequence, list, tuple)) and all(
        isinstance(v, Dataset) for v in value
    ):
        return tuple(_level(item) for item in value) if value else ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        values = tuple(str(v).strip() for v in value)
        return values if any(values) else ""
    return str(value).strip()


def _level(ds: Dataset) -> tuple[tuple[int, Any], ...]:
    """The attributes of a dataset level that have a value: ``(tag, canonical value)``."""
    pairs = ((int(e.tag), _canonical(e.value)) for e in ds)
    return tuple((tag, value) for tag, value in pairs if value != "")


def _disagreements(completed: Sequence[Dataset]) -> list[str]:
    """The keywords of the top-level (order) attributes that the completed entries do not all
    have alike. Specific Character Set is left out: text is compared decoded, and the merged
    file gets one that holds all of it (or is refused)."""
    skip = (_SPS_TAG, _CHARSET_TAG)
    levels = [{t: v for t, v in _level(ds) if t not in skip} for ds in completed]
    tags = sorted({tag for level in levels for tag in level})
    return [
        keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        for tag in tags
        if any(level.get(tag) != levels[0].get(tag) for level in levels[1:])
    ]


def _order_name(ds: Dataset) -> str:
    """The file an entry goes to; its RequestedProcedureID defaults as :func:`complete` does
    it (so an entry that gives the default and one that leaves it out are alike)."""
    if not _text(ds, "RequestedProcedureID") and _text(ds, "AccessionNumber"):
        ds.RequestedProcedureID = _text(ds, "AccessionNumber")
    return file_name(ds)


def plan_orders(entries: Iterable[InputEntry]) -> list[Order]:
    """Group input entries into orders (one per output file), merge and complete each.

    Entries that go to the same file (:func:`file_name`: the same accession number and
    requested procedure ID) are one requested procedure: one file whose Scheduled Procedure
    Step Sequence holds the steps of every entry, in input order, numbered as
    :func:`complete` numbers them. The order is refused whole when an entry of it is refused
    on its own, or when its entries differ in a top-level attribute (patient, visit, request,
    requested procedure: the problem names each such attribute).

    Returns
    -------
    list of Order
        In the order of each one's first entry; ``dataset`` set when it can be written.
    """
    orders: dict[str, Order] = {}
    with warnings.catch_warnings():  # pydicom's value warnings (with the value): refused below
        warnings.simplefilter("ignore")
        for entry in entries:
            name = _order_name(entry.dataset)
            orders.setdefault(name, Order(name)).entries.append(entry)
        for order in orders.values():
            _complete_order(order)
    return list(orders.values())


def _complete_order(order: Order) -> None:
    if len(order.entries) == 1:
        try:
            order.dataset = complete(order.entries[0].dataset)
        except EntryError as exc:
            order.problems = exc.problems
        return
    completed = []
    for entry in order.entries:  # each on its own first, so a problem names its entry
        try:
            completed.append(complete(deepcopy(entry.dataset)))
        except EntryError as exc:
            order.problems.append(f"{entry.label}: {'; '.join(exc.problems)}")
    differing = _disagreements(completed) if len(completed) > 1 else []
    given = {keyword_for_tag(tag) for entry in order.entries for tag, _ in _level(entry.dataset)}
    derived = [k for k in differing if k in _DERIVED and k not in given]
    if len(derived) < len(differing):  # a derived value differs because what it is made of does
        differing = [k for k in differing if k not in derived]
    if differing:
        order.problems.append(
            "these entries go to one file (the same AccessionNumber and RequestedProcedureID) "
            f"but differ in {', '.join(differing)}; give each step the same order attributes"
        )
    if order.problems:
        order.problems.insert(0, "one requested procedure, refused whole")
        return
    merged = completed[0]  # the order's attributes, completed; its steps as they were given
    merged.ScheduledProcedureStepSequence = [
        deepcopy(step) for entry in order.entries for step in entry.dataset.get(SPS, None) or []
    ]
    try:
        order.dataset = complete(merged)
    except EntryError as exc:
        order.problems = exc.problems
