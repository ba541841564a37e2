"""Write each incoming C-FIND identifier to a folder (wlmscpfs's ``--request-file-path``).

File names come from ``--request-file-format`` (default ``#t.dump``, as wlmscpfs) with the
placeholders of wlmscpfs: ``#a`` calling AE title, ``#c`` called AE title, ``#i`` process ID,
``#p`` patient ID of the request, ``#t`` time stamp (``YYYYMMDDhhmmss_ffffff``). Every value
put into a name is reduced to ``A-Z a-z 0-9 . _ -`` (no path separators, no leading dot), so
request data such as a patient ID ``../../etc`` cannot write outside the folder. An existing
name gets ``_2``, ``_3`` ... before its suffix.

A name ending in ``.dump`` or ``.txt`` gets ``dcmdump``-style text (what ``dump2dcm``,
``wlmserver create`` and ``wlmserver query --request`` read); any other name gets a DICOM file.
Request files hold patient data: the folder should be as private as the database.

The folder is bounded (:class:`CaptureLimits`: ``--max-capture-files``, ``--max-capture-size``):
once it holds that much, no request is captured (:class:`CaptureFull`, which the C-FIND handler
logs as one rate-limited warning) and the query is answered as always. A capture is a
debugging aid (wlmscpfs's ``-rfp``); refusing a modality's worklist because the aid's folder is
full would make the aid the outage. Nothing captured is ever removed: an administrator empties
the folder, and capturing resumes (the folder is counted again at most every
:data:`RECOUNT_SECONDS` while it is full).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DEFAULT_FORMAT = "#t.dump"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: While a capture folder is full, it is counted again (a listing) at most this often.
RECOUNT_SECONDS = 10.0


@dataclass(frozen=True)
class CaptureLimits:
    """How much a capture folder holds at most.

    Attributes
    ----------
    files : int
        Files (``--max-capture-files``).
    size : int
        Bytes (``--max-capture-size``).
    """

    files: int
    size: int


class CaptureFull(OSError):
    """The capture folder holds as much as its limits allow (``strerror`` says which)."""


class _Tally:
    """Files and bytes in one capture folder: counted once, then kept by the captures, and
    counted again (at most every :data:`RECOUNT_SECONDS`) while it looks full."""

    def __init__(self) -> None:
        self.files = self.size = 0
        self.counted = -1e9

    def count(self, folder: Path) -> None:
        files = size = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_size
        self.files, self.size, self.counted = files, size, time.monotonic()


_TALLIES: dict[str, _Tally] = {}
_TALLY_LOCK = threading.Lock()


def _make_room(folder: Path, size: int, limits: CaptureLimits) -> _Tally:
    """The folder's tally, once a capture of ``size`` bytes fits; raises :class:`CaptureFull`."""
    with _TALLY_LOCK:
        tally = _TALLIES.setdefault(str(folder.absolute()), _Tally())
        if tally.counted < 0:
            tally.count(folder)

        def fits() -> bool:
            return tally.files < limits.files and tally.size + size <= limits.size

        if not fits() and time.monotonic() - tally.counted >= RECOUNT_SECONDS:
            tally.count(folder)  # an administrator may have emptied it
        if fits():
            return tally
        if tally.files >= limits.files:
            raise CaptureFull(
                errno.EDQUOT, f"it holds {tally.files} files (--max-capture-files): not captured"
            )
        raise CaptureFull(
            errno.EDQUOT,
            f"it holds {tally.size // 1048576} MiB (--max-capture-size): not captured",
        )


def safe_part(text: str) -> str:
    """One value made safe for a file name.

    Examples
    --------
    >>> safe_part("../../etc/passwd"), safe_part("CT 01"), safe_part("")
    ('_.._etc_passwd', 'CT_01', '_')
    """
    cleaned = _UNSAFE.sub("_", text.strip())[:64].lstrip(".")
    return cleaned or "_"


def request_name(fmt: str, *, calling: str, called: str, patient_id: str, when: datetime) -> str:
    """The file name of one request (placeholders replaced by safe values)."""
    values = {
        "a": safe_part(calling),
        "c": safe_part(called),
        "i": str(os.getpid()),
        "p": safe_part(patient_id),
        "t": when.strftime("%Y%m%d%H%M%S_%f"),
    }
    name = re.sub(r"#([acipt])", lambda m: values[m.group(1)], fmt)
    name = _UNSAFE.sub("_", name).lstrip(".")
    return name or values["t"]


def dump_text(ds: Dataset, indent: int = 0) -> str:
    """The dataset as ``dcmdump``-style lines that ``dump2dcm`` reads back."""
    lines = []
    pad = "  " * indent
    for element in ds:
        tag = f"({element.tag.group:04x},{element.tag.element:04x})"
        if element.VR == "SQ":
            lines.append(f"{pad}{tag} SQ (Sequence)")
            for item in element.value:
                lines.append(f"{pad}  (fffe,e000) na (Item)")
                body = dump_text(item, indent + 2)
                if body:
                    lines.append(body)
                lines.append(f"{pad}  (fffe,e00d) na (ItemDelimitationItem)")
            lines.append(f"{pad}(fffe,e0dd) na (SequenceDelimitationItem)")
            continue
        value = element.value
        if value is None or value == "":
            text = ""
        elif element.VM > 1:
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        lines.append(f"{pad}{tag} {element.VR} [{text}]")
    return "\n".join(lines)


def write_request(
    folder: Path,
    fmt: str,
    identifier: Dataset,
    *,
    calling: str,
    called: str,
    notes: tuple[str, ...] = (),
    limits: CaptureLimits | None = None,
) -> Path:
    """Write one request; returns its path.

    ``notes`` (the modality profile that applied, and what it added to the query) head a text
    dump as ``#`` comment lines, which ``dump2dcm`` skips; a DICOM-format capture holds the
    identifier only.

    Raises
    ------
    CaptureFull
        The folder holds what ``limits`` allow (nothing is written).
    OSError
        The folder cannot be written.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the requests hold patient data
    name = request_name(
        fmt,
        calling=calling,
        called=called,
        patient_id=str(identifier.get("PatientID", "") or ""),
        when=datetime.now(),
    )
    data = _request_bytes(name, identifier, notes)
    tally = _make_room(folder, len(data), limits) if limits is not None else None
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for n in range(1, _MAX_SAME_NAME + 1):
        path = folder / (name if n == 1 else f"{stem}_{n}.{suffix}" if dot else f"{name}_{n}")
        try:  # created exclusively: two captures of one name never overwrite each other
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
        except FileExistsError:
            continue
        with open(fd, "wb") as handle:
            handle.write(data)
        if tally is not None:
            with _TALLY_LOCK:
                tally.files += 1
                tally.size += len(data)
        return path
    raise FileExistsError(f"{_MAX_SAME_NAME} request files named {name} already exist")


_MAX_SAME_NAME = 10_000
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _request_bytes(name: str, identifier: Dataset, notes: tuple[str, ...] = ()) -> bytes:
    """A request as ``dcmdump`` text (``.dump``, ``.txt`` names) or as a DICOM file."""
    if name.lower().endswith((".dump", ".txt")):
        comments = "".join(f"# {' '.join(note.split())}\n" for note in notes)
        text = comments + dump_text(identifier) + "\n"
        charset = identifier.get("SpecificCharacterSet", "") or ""
        first = charset if isinstance(charset, str) else (list(charset) or [""])[0]
        try:  # in the request's own character set, as dump2dcm expects
            return text.encode(python_encoding.get(str(first), "utf-8"))
        except (UnicodeError, LookupError):
            return text.encode("utf-8")
    ds = Dataset()
    ds.update(identifier)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.31")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
