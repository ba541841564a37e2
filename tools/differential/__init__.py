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
the documentation shows under "Differences from wlmscpfs" (``docs/reference/wlmscpfs.md``; a
test keeps the two in step); anything else is *unexplained* and reported with the query (as a
``findscu`` command), what wlmscpfs answered and what wlmserver answered. Differences in
matching are not taken on trust: the query is sent to wlmscpfs again without the keys concerned
(:func:`neutralized`), and its answers are filtered twice, by a model of how wlmscpfs matches
those keys (which must give wlmscpfs's own answers back) and by an independent reference of how
wlmserver is documented to match them (which must give wlmserver's answers); the respects in
which the two differ name the kinds. Respects that are not in the table but look like wlmserver
bugs are :data:`SUSPECTED`.

Usage::

    python3 tools/difftest.py --seed 7 --files 500 --queries 2000 [--keep DIR] [--ir87]

Exit status 0 when every difference is intended, 1 when any is not, 2 when a server could not
be started. Only 127.0.0.1 is used; every subprocess and network wait has a timeout.
"""

from __future__ import annotations

from pathlib import Path

WLMSCPFS = Path("/usr/bin/wlmscpfs")
MWL_FIND = "1.2.840.10008.5.1.4.31"
AE_TITLE = "WLM"  # the AE folder queried on both servers
MULTI_AE_TITLE = "MULTI"  # the multi-item files, unsplit, on both servers
TIMEOUT = 30.0  # seconds, for every subprocess and network wait
SPS = "ScheduledProcedureStepSequence"
SPS_PREFIX = "(0040,0100)[0]"  # how findscu -k spells the SPS item
SCS_TAG = 0x00080005
PENDING = (0xFF00, 0xFF01)
