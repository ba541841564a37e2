"""Generate the bundled example worklist database from its readable source data.

``wlistdb/entries.json`` maps each AE title to a list of entries. An entry is an object with
``"file"`` (the ``.wl`` name) and DICOM attributes keyed by pydicom keyword: a string for a
single value, a list of strings for a multi-valued attribute, a list of objects for a
sequence. This script writes each entry as ``<out>/<AETitle>/<file>``: a Part 10 file with a
File Meta header, Explicit VR Little Endian, the Media Storage SOP Class DCMTK's ``dump2dcm``
gives worklist files, and text encoded in the entry's Specific Character Set. It also puts an
empty ``lockfile`` in each AE folder (``wlmscpfs`` needs one) and removes the ``.wl`` files of
those folders that the source no longer lists.

Output is deterministic (byte-identical on every run), so ``--check`` can tell whether the
committed files match their source. Files are written atomically (a temporary file in the same
folder, then :func:`os.replace`), and only when their bytes change, so a server watching the
folders sees each changed file once, complete.

Usage::

    python3 tools/make_wlistdb.py            # regenerate wlistdb/
    python3 tools/make_wlistdb.py --check    # exit 1 naming each file that differs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path

from pydicom import config, dcmread
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import validate_value

ROOT = Path(__file__).resolve().parent.parent
#: The Media Storage SOP Class UID DCMTK's dump2dcm writes into worklist files.
WORKLIST_FILE_CLASS = "1.2.276.0.7230010.3.1.0.1"
#: A fixed, invented UID root for the derived Media Storage SOP Instance UIDs.
UID_PREFIX = "1.2.826.0.1.3680043.10.1234.9."
#: Fixed, so that no library version ends up in the bytes.
IMPLEMENTATION_CLASS_UID = UID_PREFIX + "1"
IMPLEMENTATION_VERSION_NAME = "WLMSERVER_EX"
#: AE folder names this tool accepts (AE titles usable as folder names on every system).
AE_FOLDER = re.compile(r"[A-Za-z0-9_-]{1,16}")
#: File names this tool manages: visible ``.wl`` files, no path parts.
WL_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.wl")
LOCKFILE = "lockfile"


def build_dataset(attributes: Mapping[str, object], where: str = "entry") -> Dataset:
    """Turn one entry's attributes (or one sequence item's) into a dataset.

    Parameters
    ----------
    attributes : Mapping[str, object]
        Keyword to value: a string, a list of strings (multi-valued) or, for a sequence, a
        list of objects. The key ``"file"`` is skipped.
    where : str
        Where the attributes come from, for error messages.

    Returns
    -------
    Dataset
        The attributes with the VRs of pydicom's data dictionary.

    Raises
    ------
    ValueError
        A key is not a DICOM keyword, or a value is not valid for its VR or VM.
    """
    ds = Dataset()
    for keyword, value in attributes.items():
        if keyword == "file":
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{where}: {keyword!r} is not a DICOM keyword")
        vr = dictionary_VR(tag)
        if vr == "SQ":
            if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
                raise ValueError(f"{where}: {keyword} must be a list of objects")
            items = [build_dataset(item, f"{where}.{keyword}[{n}]") for n, item in enumerate(value)]
            ds.add_new(tag, vr, items)
            continue
        raw = value if isinstance(value, list) else [value]
        values = [v for v in raw if isinstance(v, str)]
        if len(values) != len(raw):
            raise ValueError(f"{where}: {keyword} must be a string or a list of strings")
        if len(values) > 1 and dictionary_VM(tag) == "1":
            raise ValueError(f"{where}: {keyword} takes one value, not {len(values)}")
        for single in values:
            if "\\" in single:
                raise ValueError(f"{where}: {keyword}: write multiple values as a JSON list")
            try:
                validate_value(vr, single, config.RAISE)
            except ValueError as exc:
                raise ValueError(f"{where}: {keyword}: {exc}") from None
        ds.add_new(tag, vr, values[0] if len(values) == 1 else (values or ""))
    return ds


def _texts(value: object) -> list[str]:
    """Every string in a JSON value, sequence items included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


def encode_entry(entry: Mapping[str, object], where: str = "entry") -> bytes:
    """The bytes of one ``.wl`` file.

    Parameters
    ----------
    entry : Mapping[str, object]
        One entry of the source: ``"file"`` and the attributes, ``StudyInstanceUID`` among
        them.
    where : str
        Where the entry comes from, for error messages.

    Returns
    -------
    bytes
        A Part 10 file in Explicit VR Little Endian. Its Media Storage SOP Instance UID is
        derived from the Study Instance UID and the file name, so the bytes depend on the
        entry alone.

    Raises
    ------
    ValueError
        The entry is not valid, holds non-ASCII text without a Specific Character Set, or
        a text does not survive encoding in its character set.
    """
    ds = build_dataset(entry, where)
    if "StudyInstanceUID" not in ds:
        raise ValueError(f"{where}: StudyInstanceUID is required")
    if "SpecificCharacterSet" not in ds:
        for text in _texts(entry):
            if not text.isascii():
                raise ValueError(f"{where}: {text!r} needs a SpecificCharacterSet")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid(
        prefix=UID_PREFIX, entropy_srcs=[str(ds.StudyInstanceUID), str(entry.get("file"))]
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    charset = entry.get("SpecificCharacterSet", "ISO_IR 6 (ASCII)")
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # pydicom warns, then writes "?" or worse
        try:
            ds.save_as(buffer, enforce_file_format=True)
        except UserWarning as exc:
            raise ValueError(f"{where}: cannot be written in {charset}: {exc}") from None
    data = buffer.getvalue()
    if dcmread(BytesIO(data)) != ds:  # the values must read back as they are in the source
        raise ValueError(f"{where}: a text does not survive encoding in {charset}")
    return data


def planned_files(source: Path, out: Path) -> dict[Path, bytes]:
    """Every ``.wl`` file the source asks for, with its bytes.

    Parameters
    ----------
    source : Path
        The JSON source (``{"<AETitle>": [entry, ...], ...}``).
    out : Path
        The database root the files go under.

    Returns
    -------
    dict[Path, bytes]
        ``out/<AETitle>/<file>`` to the file's bytes, in source order.

    Raises
    ------
    ValueError
        The source is not in the expected form, names an AE folder or file this tool does
        not manage, lists a file twice, or holds an entry that is not valid.
    """
    data = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected an object of AE titles")
    files: dict[Path, bytes] = {}
    for aet, entries in data.items():
        if not AE_FOLDER.fullmatch(aet):
            raise ValueError(f"{source}: {aet!r} is not a usable AE folder name")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{source}: {aet}: expected a list of entries")
        names: set[str] = set()
        for n, entry in enumerate(entries):
            name = entry.get("file")
            where = f"{aet}[{n}] ({name})"
            if not isinstance(name, str) or not WL_FILE.fullmatch(name):
                raise ValueError(f"{where}: 'file' must be a plain name ending in .wl")
            if name.lower() in names:
                raise ValueError(f"{where}: {name} is listed twice")
            names.add(name.lower())
            files[out / aet / name] = encode_entry(entry, where)
    return files


def stale_files(files: Mapping[Path, bytes]) -> list[Path]:
    """The ``.wl`` files in the planned AE folders that the source no longer lists.

    Parameters
    ----------
    files : Mapping[Path, bytes]
        The planned files (from :func:`planned_files`).

    Returns
    -------
    list[Path]
        Sorted; only names this tool would manage (visible files ending in ``.wl``).
    """
    folders = {path.parent for path in files}
    return sorted(
        path
        for folder in folders
        if folder.is_dir()
        for path in folder.iterdir()
        if WL_FILE.fullmatch(path.name) and path.is_file() and path not in files
    )


def differing_files(files: Mapping[Path, bytes]) -> list[Path]:
    """The planned files that are missing or hold other bytes.

    Parameters
    ----------
    files : Mapping[Path, bytes]
        The planned files (from :func:`planned_files`).

    Returns
    -------
    list[Path]
        Sorted.
    """
    return sorted(p for p, data in files.items() if not p.is_file() or p.read_bytes() != data)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    Parameters
    ----------
    path : Path
        The target; its folder is created if needed.
    data : bytes
        The file's content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; a served file should be readable
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Generate (or ``--check``) the example database.

    Parameters
    ----------
    argv : list[str] | None
        The command line arguments; ``None`` for ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 1 when ``--check`` finds a file that differs from the source.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT / "wlistdb" / "entries.json",
        help="the JSON source data (default: wlistdb/entries.json of this checkout)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "wlistdb",
        help="the database root to write (default: wlistdb/ of this checkout)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming each file that differs from what would be generated",
    )
    args = parser.parse_args(argv)
    files = planned_files(args.source, args.out)
    folders = sorted({path.parent for path in files})
    differing = differing_files(files)
    stale = stale_files(files)
    missing_locks = [f / LOCKFILE for f in folders if not (f / LOCKFILE).is_file()]
    if args.check:
        for path in differing:
            print(f"differs from {args.source.name}: {_shown(path)}")
        for path in stale:
            print(f"not in {args.source.name}: {_shown(path)}")
        for path in missing_locks:
            print(f"missing: {_shown(path)}")
        return 1 if differing or stale or missing_locks else 0
    for path in differing:
        write_atomically(path, files[path])
        print(f"wrote {_shown(path)}")
    for path in missing_locks:
        path.touch()
        print(f"wrote {_shown(path)}")
    for path in stale:
        path.unlink()
        print(f"removed {_shown(path)}")
    print(f"{len(files)} files in {len(folders)} AE folders match {args.source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
