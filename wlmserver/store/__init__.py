"""From a worklist database's files to an in-memory index of entries.

A dropped file is read safely (:mod:`~wlmserver.store.files`) by the format its name says
(:mod:`~wlmserver.store.formats`: ``.wl`` files, :mod:`~wlmserver.store.wlfile`; JSON drops,
:mod:`~wlmserver.store.jsondrop`, which share :mod:`~wlmserver.store.orders` with
``wlmserver create``), split into one entry per scheduled procedure step, and kept per AE
folder as an immutable snapshot with lookups (:mod:`~wlmserver.store.index`,
:mod:`~wlmserver.store.lookup`), current through file events (:mod:`~wlmserver.store.watcher`),
and kept between runs in an index cache whose every file is checked before use
(:mod:`~wlmserver.store.cache`). MPPS instances are kept apart, one DICOM file each, read back
at start (:mod:`~wlmserver.store.mpps`).
It uses :mod:`wlmserver.matching` and nothing above it.
"""
