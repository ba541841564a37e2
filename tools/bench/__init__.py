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


class BenchmarkError(RuntimeError):
    """A server could not be started or did not answer."""
