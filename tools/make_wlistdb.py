"""Generate the bundled example worklist database from its readable source data.

``wlistdb/entries.json`` maps each AE title to a list of entries; an entry is an object with
``"file"`` (the ``.wl`` name) and DICOM attributes keyed by keyword: strings, lists of strings
for multi-valued attributes, lists of objects for sequences. This script writes each entry as
``wlistdb/<AETitle>/<file>``: a Part 10 file, explicit VR little endian, as DCMTK's
``dump2dcm`` writes worklist files, with text encoded in the entry's Specific Character Set.
Output is deterministic (byte-identical on every run), so ``--check`` can tell whether the
committed files match their source.

Usage::

    python3 tools/make_wlistdb.py            # regenerate wlistdb/
    python3 tools/make_wlistdb.py --check    # exit 1 naming each file that differs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
#: What DCMTK's dump2dcm uses as Media Storage SOP Class of worklist files.
WORKLIST_FILE_CLASS = "1.2.276.0.7230010.3.1.0.1"
#: A fixed, invented UID root for the derived SOP Instance UIDs.
UID_PREFIX = "1.2.826.0.1.3680043.10.1234.9."


def build_dataset(attributes: dict[str, Any]) -> Dataset:
    """Turn one entry's attributes (or a sequence item's) into a dataset.

    Raises
    ------
    ValueError
        A key is not a DICOM keyword.
    """
    ds = Dataset()
    charset = attributes.get("SpecificCharacterSet")
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in attributes.items():
        if keyword in ("file", "SpecificCharacterSet"):
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        if dictionary_VR(tag) == "SQ":
            setattr(ds, keyword, [build_dataset(item) for item in value])
        else:
            setattr(ds, keyword, value)
    return ds


def encode_entry(entry: dict[str, Any]) -> bytes:
    """The bytes of one ``.wl`` file."""
    ds = build_dataset(entry)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid(
        prefix=UID_PREFIX, entropy_srcs=[str(entry["StudyInstanceUID"]), str(entry["file"])]
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(UID_PREFIX + "1")  # fixed: no library version in the bytes
    meta.ImplementationVersionName = "WLMSERVER_EX"
    ds.file_meta = meta
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def planned_files(source: Path, out: Path) -> dict[Path, bytes]:
    """Every file the source asks for, with its bytes."""
    data = json.loads(source.read_text(encoding="utf-8"))
    files: dict[Path, bytes] = {}
    for aet, entries in data.items():
        for entry in entries:
            files[out / aet / entry["file"]] = encode_entry(entry)
    return files


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)


def main(argv: list[str] | None = None) -> int:
    """Generate (or ``--check``) the example database; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / "wlistdb" / "entries.json")
    parser.add_argument("--out", type=Path, default=ROOT / "wlistdb")
    parser.add_argument(
        "--check", action="store_true", help="report files that differ from the source; write none"
    )
    args = parser.parse_args(argv)
    files = planned_files(args.source, args.out)
    folders = {path.parent for path in files}
    stale = [
        path
        for folder in folders
        if folder.is_dir()
        for path in folder.iterdir()
        if path.suffix.lower() == ".wl" and path not in files
    ]
    if args.check:
        differing = [p for p, data in files.items() if not p.is_file() or p.read_bytes() != data]
        for path in sorted(differing + stale):
            print(f"differs from {args.source.name}: {path}")
        return 1 if differing or stale else 0
    for path, data in sorted(files.items()):
        _write_atomically(path, data)
        print(f"wrote {path}")
    for folder in sorted(folders):
        (folder / "lockfile").touch()  # wlmscpfs needs one in each AE folder
    for path in stale:
        path.unlink()
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
