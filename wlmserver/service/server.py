"""Build the Application Entity, own the index and the watcher, start and stop."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from wlmserver.config import Config, TransferSyntaxPreference, bundled_database
from wlmserver.service import fastpath as encode
from wlmserver.service import reactor, tls
from wlmserver.service.admission import Admission
from wlmserver.service.forwarder import Backoff, Forwarder
from wlmserver.service.handlers import handle_echo, handle_find
from wlmserver.service.mpps import handle_n_create, handle_n_set
from wlmserver.service.pacing import Pacing
from wlmserver.service.reload import LiveConfig, Reloader
from wlmserver.store.cache import IndexCache, log_cached_problems
from wlmserver.store.forward import ForwardQueue, forward_folder
from wlmserver.store.index import WorklistStore
from wlmserver.store.listing import ListingsAhead
from wlmserver.store.mpps import MppsStore, folder_problem
from wlmserver.store.mppsretention import MppsRetentionRuns
from wlmserver.store.retention import RetentionRuns, archive_problem
from wlmserver.store.watcher import Watcher

LOGGER = logging.getLogger(__name__)

#: Connections the kernel queues before the server accepts them (socketserver's default, 5,
#: refuses the sixth of a burst, e.g. the modalities of a ward all asking when the index is
#: ready, or a restart; the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 128

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"
#: PS3.4 F.7: N-CREATE and N-SET, on the same port and association policy as C-FIND.
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]

#: The transfer syntaxes accepted, most preferred first, per wlmscpfs option (``+x=``,
#: ``+xe``, ``+xb``, ``+xd``, ``+xi``). pynetdicom's acceptor takes, for each proposed
#: presentation context, the first of these the requestor proposed (PS3.8 9.3.3.2: the
#: acceptor chooses one of the proposed transfer syntaxes). As wlmscpfs's, these orders put
#: the preferred one first; after it, wlmserver takes implicit VR little endian (which every
#: DICOM application supports, PS3.5 10.1) before the retired explicit VR big endian, where
#: wlmscpfs takes big endian first. Deflated is accepted only when preferred, as wlmscpfs.
TRANSFER_SYNTAX_PREFERENCES: dict[TransferSyntaxPreference, list[UID]] = {
    "uncompr": (
        TRANSFER_SYNTAXES
        if sys.byteorder == "little"
        else [ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    ),
    "little": TRANSFER_SYNTAXES,
    "big": [ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    "deflated": [DeflatedExplicitVRLittleEndian, *TRANSFER_SYNTAXES],
    "implicit": [ImplicitVRLittleEndian],
}


class Listener(ThreadedAssociationServer):
    """pynetdicom's threaded server, with each accepted connection judged before a thread is
    started for it (:meth:`Admission.accept
    <wlmserver.service.admission.Admission.accept>`: the caps on connections waiting for
    their association request, per peer and in all, and on threads), and one log line instead
    of a traceback on stderr when a connection cannot be served (no thread can be started)."""

    admission: Admission | None = None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """socketserver's hook, in the listener's thread: False closes the connection."""
        if self.admission is None:
            return True
        refusal = self.admission.accept(request, str(client_address[0]))
        if refusal is None:
            return True
        LOGGER.warning(
            "connection from %s:%s closed: %s", client_address[0], client_address[1], refusal
        )
        return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver's hook for an exception while starting to serve a connection."""
        error = sys.exc_info()[1]
        LOGGER.warning(
            "connection from %s:%s closed: cannot serve it (%s: %s)",
            client_address[0],
            client_address[1],
            type(error).__name__,
            error,
        )


class MppsFolderError(ValueError):
    """The MPPS folder cannot be used (the message names it and says why)."""


class ArchiveFolderError(ValueError):
    """The archive folder cannot be used (the message names it and says why)."""


class WorklistServer:
    """A running Modality Worklist SCP.

    Parameters
    ----------
    config : Config
        What to serve and how.
    forward_backoff : Backoff or None
        With ``--mpps-forward``: the waits between attempts while the RIS is unavailable
        (default 1 s doubling to 60 s; tests shorten it).
    forward_idle_release : float
        With ``--mpps-forward``: seconds without a message before the association to the RIS
        is released.

    Notes
    -----
    ``with WorklistServer(Config(data_files_path=root, port=0)) as server:`` indexes ``root``,
    starts watching it and listens on a free port (``server.port``) until the block ends.
    """

    def __init__(
        self,
        config: Config,
        *,
        forward_backoff: Backoff | None = None,
        forward_idle_release: float = 2.0,
    ) -> None:
        self.config = config
        #: The configuration each new association is pinned to (see :mod:`.reload`).
        self.live = LiveConfig(config)
        self._admission: Admission | None = None
        self._forward_backoff = forward_backoff
        self._forward_idle_release = forward_idle_release
        self.store = WorklistStore(
            config.data_files_path,
            reject_incomplete=config.reject_incomplete,
            json_drops=config.json_drops,
            max_file_size=config.max_file_size,
            follow_links=config.follow_links,
            workers=config.index_workers,
        )
        self._listings: ListingsAhead | None = None
        #: The index cache (``--index-cache``), or None.
        self.cache = (
            IndexCache(config.index_cache, self.store) if config.index_cache is not None else None
        )
        #: After a full index, the index cache is written once no association has been open
        #: for this many seconds, or after ``cache_wait`` seconds at most.
        self.cache_quiet = 1.0
        self.cache_wait = 60.0
        #: After the first index, the cache is written again (when quiet, as above) once
        #: ``cache_changes`` files changed since it was written, or ``cache_interval`` seconds
        #: after the first change since then; the index is looked at every ``cache_check``
        #: seconds. A crash then costs reading those files again, never a full index.
        self.cache_changes = 1000
        self.cache_interval = 600.0
        self.cache_check = 10.0
        #: With ``--mpps-forward``: the queue of messages for the RIS, which the MPPS store
        #: writes with each instance and the forwarder sends.
        self.forward_queue = (
            ForwardQueue(forward_folder(config.mpps_path), config.forward_limits)
            if config.mpps_forward is not None
            else None
        )
        #: The MPPS instances (``--mpps-folder``), read back from :meth:`start` on, while the
        #: port is already open (see :meth:`_load_mpps`).
        self.mpps = MppsStore(config.mpps_path, config.mpps_limits, self.forward_queue)
        #: The sender of accepted MPPS requests to the RIS (``--mpps-forward``), made at start
        #: and started once the MPPS instances are read.
        self.forwarder: Forwarder | None = None
        #: The MPPS retention runs (``--mpps-retention-days``), from then on, or None.
        self.mpps_retention: MppsRetentionRuns | None = None
        self._mpps_loader: threading.Thread | None = None
        self._mpps_started = threading.Lock()  # the loader's starts against stop()
        self.watcher: Watcher | None = None
        #: The retention runs (``--retention-days``), started with the watcher, or None.
        self.retention: RetentionRuns | None = None
        self._server: Any = None
        self._indexer: threading.Thread | None = None
        self._indexed = threading.Event()
        #: Set when the server stops: the indexer's wait for a quiet moment ends.
        self._stopping = threading.Event()
        self._pacing: Pacing | None = None
        # TLS: the TLS listener when it is beside the plain one (--tls-port), and the
        # handshakes of the TLS listener's connections
        self._tls_server: Any = None
        self._handshakes: tls.Handshakes | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> Any:
        config = self.config
        encode.install()
        reactor.install()
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            # pynetdicom's standard handlers format every PDU and DIMSE message for a debug
            # log (a tenth of a short association's CPU); only bind them when it is shown
            _config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=config.ae_title)
        syntaxes = TRANSFER_SYNTAX_PREFERENCES[config.transfer_syntax_preference]
        ae.add_supported_context(MODALITY_WORKLIST_FIND, syntaxes)
        ae.add_supported_context(VERIFICATION, syntaxes)
        ae.add_supported_context(MODALITY_PERFORMED_PROCEDURE_STEP, syntaxes)
        ae.acse_timeout = config.acse_timeout
        ae.dimse_timeout = config.dimse_timeout
        ae.network_timeout = config.network_timeout
        # the association limits are the handlers' (see admission.Admission): pynetdicom's own
        # count includes connections that never send a request, so its limit is only a
        # safety net here
        ae.maximum_associations = _safety_net(config)
        ae.maximum_pdu_size = config.max_pdu
        return ae

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.config.port

    @property
    def tls_port(self) -> int | None:
        """The port TLS is served on: ``port`` itself, the ``--tls-port`` one, or None."""
        if not self.config.tls_enabled:
            return None
        if self.config.tls_port is None:
            return self.port
        if self._tls_server is not None:
            return int(self._tls_server.server_address[1])
        return self.config.tls_port

    def start(self, wait: bool = True) -> None:
        """Start watching the database, accepting associations, and indexing.

        Associations are accepted (and C-ECHO answered) while the database is indexed and
        the MPPS instances are read; a C-FIND (and an N-CREATE or N-SET) waits for them. With
        ``wait`` (the default) this returns once both are complete. With an index cache, a
        full index is written to it once no association has been open for
        :attr:`cache_quiet` seconds (:attr:`cache_wait` at most): the modalities that waited
        are answered first.
        """
        root = self.config.data_files_path
        if not root.is_dir():
            raise FileNotFoundError(f"the database root {root} is not a folder")
        # TLS: read the key and certificates first (a TlsSetupError names the file)
        tls_context = tls.server_context(self.config) if self.config.tls_enabled else None
        self._check_mpps_folder()
        self._check_archive_folder()
        self._prepare_forwarder()
        self._load_mpps()
        # watch first, so that no change made while indexing is missed
        self.watcher = Watcher(
            self.store, poll=self.config.poll, rescan_interval=self.config.rescan_interval
        )
        self.watcher.start()
        # with an index cache, the files are listed and stat'ed in a child process from now
        # (1.4 s at 100,000 files), while the server starts and the cache is read back; after
        # the watcher started, so that no change made after a folder was listed is missed
        self._listings = self.store.list_ahead() if self.cache is not None else None
        self._admission = admission = Admission(self.config)
        # every association gets the configuration current when its connection opened
        live = self.live
        self._pacing = Pacing.from_config(self.config)
        # --sleep-before/-during/-after: answers slowed on purpose
        find = handle_find if self._pacing is None else self._pacing.find
        handlers = [
            (evt.EVT_CONN_OPEN, live.connection_open, [admission]),
            (evt.EVT_REQUESTED, live.requested, [self.store, admission]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_FIND, live.find, [find, self.store, self.mpps]),
        ]
        handlers += [
            (evt.EVT_N_CREATE, handle_n_create, [self.mpps, self.forwarder]),
            (evt.EVT_N_SET, handle_n_set, [self.mpps, self.forwarder]),
        ]
        tls_handlers = list(handlers)
        if tls_context is not None:
            # after handle_connection_open, which applies the per-host connection limit
            self._handshakes = tls.Handshakes(self.config)
            tls_handlers.append((evt.EVT_CONN_OPEN, self._handshakes.on_connection_open))
        main_is_tls = tls_context is not None and self.config.tls_port is None
        try:
            self._server = self._listen(
                self.config.port,
                tls_handlers if main_is_tls else handlers,
                tls_context if main_is_tls else None,
            )
            if tls_context is not None and self.config.tls_port is not None:
                try:
                    self._tls_server = self._listen(self.config.tls_port, tls_handlers, tls_context)
                except OSError as exc:
                    exc.tls_port = self.config.tls_port  # type: ignore[attr-defined]
                    raise
        except BaseException:
            if self._server is not None:
                self._server.shutdown()
                self._server = None
            self.watcher.stop()
            self._stop_mpps()
            raise
        for server in (self._server, self._tls_server):
            if server is not None:  # socketserver listens with a backlog of 5
                server.socket.listen(LISTEN_BACKLOG)
        self._indexer = threading.Thread(target=self._index, name="wlmserver-indexer", daemon=True)
        self._indexer.start()
        if self.config.retention_days is not None:  # the first run once the index is complete
            self.retention = RetentionRuns(
                self.store, self.config.retention, self.config.archive_folder
            )
            self.retention.start()
        if wait:
            self.wait_indexed()

    def _listen(self, port: int, handlers: list[Any], context: ssl.SSLContext | None) -> Any:
        """Listen on ``port`` with a :class:`Listener` in a thread of its own, as pynetdicom's
        ``start_server(block=False)`` does with its own server class."""
        server = self.ae.make_server(
            (self.config.bind, port),
            evt_handlers=handlers,
            ssl_context=context,
            server_class=Listener,
        )
        server.admission = self._admission
        thread = threading.Thread(
            target=server.serve_forever, name=f"AcceptorServer@{port}", daemon=True
        )
        thread.start()
        self.ae._servers.append(server)  # as start_server does: its shutdown() removes it
        return server

    def reconfigure(self, config: Config, tls_context: ssl.SSLContext | None = None) -> None:
        """Serve new associations with ``config`` (a reload, see :mod:`.reload`): open
        associations keep theirs; new TLS handshakes use ``tls_context`` when given.

        ``config`` must differ from the running one in reloadable settings only
        (:data:`wlmserver.service.reload.LIVE`)."""
        self.config = config
        if self._admission is not None:
            self._admission.use(config)
        if self._handshakes is not None:
            self._handshakes.use(config)
        main_is_tls = self.config.tls_port is None
        for listener in (self._server if main_is_tls else None, self._tls_server):
            if listener is not None and tls_context is not None:
                listener.ssl_context = tls_context  # read at each accept
        self.ae.maximum_associations = _safety_net(config)
        if self.retention is not None and config.retention_days is None:
            self.retention.stop()
            self.retention = None
        elif self.retention is not None:
            self.retention.policy = config.retention
        elif config.retention_days is not None and self._server is not None:
            self.retention = RetentionRuns(self.store, config.retention, config.archive_folder)
            self.retention.start()
        self.live.replace(config)  # last: a new association sees all of the above

    def _check_mpps_folder(self) -> None:
        """Refuse an MPPS folder that is (inside) an AE folder; make one given with
        ``--mpps-folder`` now (one that cannot be made stops the start). The default one
        (``<root>/.mpps``) is made at the first N-CREATE, and when it cannot be (a read-only
        database) MPPS is refused with 0x0110 and a warning says so now."""
        folder = self.config.mpps_path
        root = self.config.data_files_path
        problem = folder_problem(folder, root)
        if problem is not None:
            raise MppsFolderError(f"--mpps-folder {folder}: {problem}; give a folder of its own")
        retention = self.config.mpps_retention_days
        if retention is not None and (
            self.config.retention_days is None or retention < self.config.retention_days
        ):
            raise MppsFolderError(
                f"--mpps-retention-days {retention} needs --retention-days N, N at most "
                f"{retention} (a step whose MPPS is archived would be answered again)"
            )
        if self.config.mpps_folder is not None:
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.listdir(folder)
            except OSError as exc:
                raise MppsFolderError(f"--mpps-folder {folder}: {exc.strerror or exc}") from exc
        elif not folder.exists() and not os.access(root, os.W_OK):
            LOGGER.warning(
                "MPPS: %s cannot be made (the database root is not writable): N-CREATE will "
                "fail until --mpps-folder names a writable folder",
                folder,
            )

    def _load_mpps(self) -> None:
        """Read the MPPS instances back on a thread of their own (the port opens meanwhile;
        C-FIND, N-CREATE and N-SET wait for them), then start the forwarder and the MPPS
        retention runs."""
        explicit = self.config.mpps_folder is not None

        def loaded() -> None:
            # the index is long-lived: out of the collector's generations, as the worklist
            # index (see _index), so that full collections do not walk it
            gc.freeze()
            with self._mpps_started:
                if self._stopping.is_set():
                    return
                if self.forwarder is not None:
                    self.forwarder.start()
                days = self.config.mpps_retention
                if days is not None:
                    self.mpps_retention = MppsRetentionRuns(self.mpps, days)
                    self.mpps_retention.start()

        def failed(exc: OSError) -> None:
            LOGGER.warning(
                "MPPS not stored: cannot use %s (%s); N-CREATE and N-SET will fail until "
                "--mpps-folder names a writable folder",
                self.config.mpps_path,
                exc.strerror or exc,
            )

        self._mpps_loader = self.mpps.load_in_background(
            explicit or self.forward_queue is not None, loaded, failed
        )

    def _check_archive_folder(self) -> None:
        """Refuse an archive folder inside the database's AE folders, or one given without
        retention days; make it (0700) when absent."""
        folder = self.config.archive_folder
        if folder is None:
            return
        if self.config.retention_days is None:
            raise ArchiveFolderError(f"--archive-folder {folder} needs --retention-days N")
        problem = archive_problem(folder, self.config.data_files_path)
        if problem is not None:
            raise ArchiveFolderError(
                f"--archive-folder {folder}: {problem}; give a folder outside the AE folders"
            )
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveFolderError(f"--archive-folder {folder}: {exc.strerror or exc}") from exc

    def _prepare_forwarder(self) -> None:
        """With ``--mpps-forward``: make the queue's folder (``<mpps folder>/forward``) now,
        a folder that cannot be used stops the start, and the forwarder, which starts once
        the MPPS store has opened the queue (:meth:`_load_mpps`)."""
        target, queue = self.config.mpps_forward, self.forward_queue
        if target is None or queue is None:
            return
        try:
            queue.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.listdir(queue.folder)
        except OSError as exc:
            raise MppsFolderError(
                f"--mpps-forward: cannot use the queue folder {queue.folder}: {exc.strerror or exc}"
            ) from exc
        self.forwarder = Forwarder(
            queue,
            target,
            self.config.mpps_forward_aet or self.config.ae_title,
            backoff=self._forward_backoff,
            idle_release=self._forward_idle_release,
            timeout=self.config.mpps_forward_timeout,
        )

    def _stop_mpps(self, timeout: float = 5.0) -> None:
        """Stop the MPPS retention runs and the forwarder; write the MPPS index file."""
        with self._mpps_started:
            self._stopping.set()
        self.mpps.cancel_load()
        if self._mpps_loader is not None:
            self._mpps_loader.join()
            self._mpps_loader = None
        if self.mpps_retention is not None:
            self.mpps_retention.stop()
            self.mpps_retention = None
        if self.forwarder is not None:
            self.forwarder.stop(timeout)
        if self.mpps.unusable is None and self.mpps.dirty:
            self.mpps.save_index()

    def _index(self) -> None:
        started = time.perf_counter()
        # While the index grows, each full collection walks all of it: 15 of them cost a
        # quarter of indexing 100,000 files (37 s -> 28 s without). Garbage made meanwhile
        # is collected right after.
        collecting = gc.isenabled()
        gc.disable()
        cached = None
        corrected = 0
        try:
            # the index cache's states are taken as the index's own, and every file's
            # signature is checked against the disk before its entries are served
            listings, self._listings = self._listings, None
            cached = self.cache.load() if self.cache is not None else None
            if cached is None and listings is not None:
                # no cache to check: every folder is read whole, and each file is stat'ed
                # just before it is read (the child would only take the cores from them)
                listings.cancel()
                listings = None
            corrected = self.store.scan(cached, listings)
        finally:
            # The index is long-lived: move it out of the garbage collector's generations.
            # Otherwise every full collection walks it while holding the GIL (1.3 s at 100,000
            # entries, about every 30 s even when idle), stalling every association. It is
            # frozen without a collection first (1.8 s at 100,000 entries, the first answer
            # waiting): indexing makes no cyclic garbage (539 unreachable objects after 10,000
            # files as after 100,000, all from start-up), so there is nothing worth collecting.
            gc.freeze()
            if collecting:
                gc.enable()
            self.store.ready.set()
            self._indexed.set()
        if cached is not None:
            log_cached_problems(self.store, cached)
            LOGGER.info("index cache: %d files were out of date (read again or dropped)", corrected)
        self._log_summary(time.perf_counter() - started)
        if self.cache is not None:
            if (
                cached is not None
                and not corrected
                and cached.keys() == set(self.store.folder_names())
            ):
                self.cache.mark_current()  # the cache file already holds this index
            else:
                self._save_cache_when_quiet()
            self._keep_cache()

    def _keep_cache(self) -> None:
        """Write the index cache again after large changes and periodically, until the
        server stops (see :attr:`cache_changes`, :attr:`cache_interval`). A write that
        failed (logged once by the cache) is tried again only :attr:`cache_interval` later."""
        assert self.cache is not None
        dirty_since: float | None = None
        not_before = 0.0
        while not self._stopping.wait(self.cache_check):
            changes = self.cache.changes()
            now = time.monotonic()
            if not changes:
                dirty_since = None
                continue
            dirty_since = now if dirty_since is None else dirty_since
            due = changes >= self.cache_changes or now - dirty_since >= self.cache_interval
            if due and now >= not_before:
                LOGGER.debug("index cache: %d files changed since it was written", changes)
                if self._save_cache_when_quiet():
                    dirty_since = None
                else:
                    not_before = time.monotonic() + self.cache_interval

    def _save_cache_when_quiet(self) -> bool:
        """Write the index cache after a full index, once no association has been open for
        :attr:`cache_quiet` seconds (or :attr:`cache_wait` seconds at most).

        Writing it costs seconds of CPU at 100,000 entries (2.6 s, of which one 1.3 s call
        holds the interpreter lock), and the modalities that waited for the index all ask at
        once when it is ready: their answers come first. A server stopped before then writes
        it on its way out (:meth:`stop`). Returns whether the cache file holds the index (or
        will, from :meth:`stop`): False when it could not be written.
        """
        assert self.cache is not None
        deadline = time.monotonic() + self.cache_wait
        quiet_since = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if self._associations_open():
                quiet_since = now
            elif now - quiet_since >= self.cache_quiet:
                break
            self._stopping.wait(min(0.2, self.cache_quiet))
        if self._stopping.is_set():
            return True  # stop() writes it
        return self.cache.save() or self.cache.changes() == 0

    def _associations_open(self) -> bool:
        """Whether any association (or connection not yet one) is open."""
        return any(
            server is not None and bool(server.active_associations)
            for server in (self._server, self._tls_server)
        )

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait for the first full index of the database and for the MPPS instances to be
        read (what a C-FIND waits for); whether both are done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._indexed.wait(timeout):
            return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.mpps.wait_loaded(left)

    def _log_summary(self, seconds: float) -> None:
        snapshots = self.store.snapshots()
        for folder in snapshots:
            LOGGER.info(
                "AE folder %s: %d entries from %d files served, %d files not served",
                folder.name,
                len(folder.entries),
                len(folder.files) - folder.rejected,
                folder.rejected,
            )
        if not snapshots:
            LOGGER.warning(
                "%s holds no AE folder: create %s/<AETitle>/ and put .wl files in it",
                self.config.data_files_path,
                self.config.data_files_path,
            )
        LOGGER.info("indexed %d AE folders in %.2f s", len(snapshots), seconds)

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, end the associations, stop the watcher, write the index cache.

        Associations still open are given ``grace`` seconds to finish what they are doing
        (an answer stream, a release), then aborted (:func:`end_associations`): all are gone
        within ``grace`` + :data:`ABORT_WAIT` seconds, also those of a peer that stopped
        reading, whose thread was blocked in a send for the network timeout (60 s: systemd's
        stop timeout killed the server first, and no index cache was written).
        """
        self._stopping.set()
        if self._pacing is not None:
            self._pacing.stop()  # the sleeps of --sleep-* end at once
        if self._server is not None:
            if self._handshakes is not None:
                # TLS: end the handshakes first; shutdown() joins the connection threads
                self._handshakes.abort(grace)
            associations = list(self._server.active_associations)
            self._server.shutdown()
            self._server = None
            if self._tls_server is not None:  # TLS beside plain TCP (--tls-port)
                associations += self._tls_server.active_associations
                self._tls_server.shutdown()
                self._tls_server = None
            end_associations(associations, grace)
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        # after the associations: the requests they accepted are queued by now
        self._stop_mpps()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self._indexer is not None:
            self._indexer.join()
            self._indexer = None
            if self.cache is not None and self._indexed.is_set():
                self.cache.save()  # only when the index changed since it was last written

    def __enter__(self) -> WorklistServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Seconds :func:`end_associations` waits for aborted associations to end, twice: once for
#: an A-ABORT to go out, once more after their connections were shut down.
ABORT_WAIT = 0.5


def _shut_down(assoc: Any) -> None:
    """Shut an association's connection down under it: a thread blocked sending to a peer
    that stopped reading gets an error at once, and the upper layer sees the transport close
    (Evt17). The plain socket's shutdown, also under TLS (``SSLSocket.shutdown`` would drop
    the TLS object another thread may be writing with)."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def end_associations(associations: Sequence[Any], grace: float) -> list[Any]:
    """End acceptor associations within ``grace`` + 2 × :data:`ABORT_WAIT` seconds; those
    still alive then (logged).

    A connection that has no association yet is shut down at once (an A-ABORT is not valid
    before the association request; pynetdicom's ``kill`` waited for its ACSE timeout, 30 s).
    An association has ``grace`` seconds to finish, then is sent an A-ABORT (PS3.8 7.3) and,
    if it has not ended :data:`ABORT_WAIT` seconds later (its peer does not read, so neither
    the A-ABORT nor the rest of an answer can go out), its connection is shut down under it.
    pynetdicom's own blocking ``abort`` waited behind the blocked send for the network
    timeout.
    """
    deadline = time.monotonic() + grace
    for assoc in associations:
        if not assoc.is_established:
            _shut_down(assoc)
    for assoc in associations:
        if assoc.is_established:
            assoc.join(max(0.0, deadline - time.monotonic()))
    stuck = [a for a in associations if a.is_alive()]
    for assoc in stuck:
        if assoc.is_established:
            with contextlib.suppress(Exception):
                assoc.abort(block=False)  # queued: the DUL thread sends it if it can
    for wait in (ABORT_WAIT, ABORT_WAIT):
        deadline = time.monotonic() + wait
        for assoc in stuck:
            assoc.join(max(0.0, deadline - time.monotonic()))
        stuck = [a for a in stuck if a.is_alive()]
        for assoc in stuck:
            _shut_down(assoc)
    if stuck:
        LOGGER.warning("%d associations did not end when stopping: left behind", len(stuck))
    return stuck


def _safety_net(config: Config) -> int:
    """pynetdicom's own association limit, above the handlers' (see :class:`Admission`): it
    counts every connection, those waiting for their request too."""
    return (
        max(
            config.max_associations * 4,
            config.max_associations + 4 * config.max_associations_per_peer,
        )
        + config.max_pending_connections
    )


def run(
    config: Config,
    ready_message: str | None = None,
    argv: Sequence[str] | None = None,
    args: argparse.Namespace | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM; a second one exits at once. SIGHUP reloads the
    configuration from ``argv`` (see :mod:`.reload`) and rescans the database.

    On the first SIGINT or SIGTERM the server stops accepting, gives open associations a
    moment to finish their answers, stops the watcher and returns 0; a second signal while
    that runs ends the process at once (status 130), whatever a stalled peer is doing.

    Parameters
    ----------
    config : Config
        What to serve.
    ready_message : str or None
        Printed on stdout once the database is indexed (``{port}``, ``{tls_port}``).
    argv : sequence of str or None
        The command line ``config`` was loaded from, read again on SIGHUP; None: SIGHUP
        only rescans the database.
    args : argparse.Namespace or None
        The options parsed from it, so that a reload names logging options that changed.

    Returns
    -------
    int
        The process exit status: 0 after a signal, 1 when the server cannot start.
    """
    if _is_bundled(config.data_files_path):
        LOGGER.warning(
            "serving the bundled EXAMPLE database %s: its patients are fictional; give "
            "-dfp ROOT to serve real worklists",
            config.data_files_path,
        )
    _warn_test_options(config)
    server = WorklistServer(config)
    try:
        server.start(wait=False)
    except (tls.TlsSetupError, MppsFolderError, ArchiveFolderError) as exc:
        LOGGER.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        failed = getattr(exc, "tls_port", None)  # TLS: the --tls-port listener's error
        where = config if failed is None else dataclasses.replace(config, port=failed)
        LOGGER.error("cannot start: %s", _start_failure(exc, where))
        return 1
    LOGGER.info("listening on port %d; indexing %s", server.port, config.data_files_path)
    for line in policy_lines(config):
        LOGGER.info("%s", line)
    if server.tls_port is not None:
        LOGGER.info("%s", tls.describe(config, server.tls_port))
    stop = threading.Event()
    rescan = threading.Event()
    received: list[int] = []

    # The handlers only set flags (and the second stop writes one raw line): a handler runs
    # between two bytecodes of the main thread, which may be inside a logging call holding a
    # non-reentrant lock (the rate limit's); logging from the handler could then wait forever.
    def on_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            with contextlib.suppress(OSError):
                os.write(2, f"wlmserver: signal {signum} again: exiting at once\n".encode())
            os._exit(130)  # not SystemExit: that would wait for association threads
        received.append(signum)
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        rescan.set()  # the loop below checks it twice a second

    reloader = Reloader(server, argv, args)

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hangup)
    server.wait_indexed()
    if ready_message:
        print(ready_message.format(port=server.port, tls_port=server.tls_port), flush=True)
    try:
        while not stop.wait(0.5):
            if rescan.is_set():
                rescan.clear()
                reloader.hangup()
        LOGGER.info("signal %d: shutting down", received[0] if received else 0)
    finally:
        server.stop()
    LOGGER.info("stopped")
    return 0


def policy_lines(config: Config) -> list[str]:
    """What the start-up log says of the configuration file, the allow-lists and the
    modality profiles (AE titles and networks only: no patient data).

    Examples
    --------
    >>> from wlmserver.config.access import Access, AllowList
    >>> policy_lines(Config(Path("."), access=Access(AllowList(("CT*",)))))
    ['access: calling AE titles CT*; any address']
    >>> policy_lines(Config(Path("."), retention_days=90))[0][:54]
    'retention: steps scheduled more than 90 days ago are n'
    """
    lines = []
    if config.config_file is not None:
        lines.append(f"configuration file {config.config_file}")
    access = config.access
    if access.is_open:
        if config.config_file is not None:
            lines.append("access: anyone who reaches the port (no allow-list)")
    else:
        for where, allow in (("access", access.everyone), *access.called.items()):
            titles = allow.calling_ae_titles
            hosts = allow.hosts
            said = [
                "any calling AE title"
                if titles is None
                else f"calling AE titles {', '.join(titles) or '(none)'}",
                "any address"
                if hosts is None
                else f"addresses {', '.join(map(str, hosts)) or '(none)'}",
            ]
            prefix = where if where == "access" else f"access to {where}"
            lines.append(f"{prefix}: {'; '.join(said)}")
        if not access.certificates.is_empty:
            lines.append(access.certificates.describe())
    for profile in config.profiles.profiles:
        names = ", ".join(profile.calling_ae_titles) or "every other calling AE title"
        lines.append(f"profile {profile.name}: {names}")
    if config.retention_days is not None:
        archive = config.archive_folder
        lines.append(
            f"retention: steps scheduled more than {config.retention_days} days ago are not "
            "served; "
            + (
                f"files whose every step is are moved to {archive}/<AET>/"
                if archive is not None
                else "their files stay (no --archive-folder)"
            )
        )
    return lines


def _warn_test_options(config: Config) -> None:
    """One warning per wlmscpfs option that makes the server fail its SCUs on purpose."""
    if config.refuse_associations:
        LOGGER.warning("every association will be refused (--refuse)")
    sleeps = [
        f"--sleep-{name} {seconds:g}"
        for name, seconds in (
            ("before", config.sleep_before_find),
            ("during", config.sleep_during_find),
            ("after", config.sleep_after_find),
        )
        if seconds
    ]
    if sleeps:
        LOGGER.warning("C-FIND responses are delayed on purpose: %s", ", ".join(sleeps))


def _is_bundled(root: Path) -> bool:
    try:
        return bool(root.resolve() == bundled_database().resolve())
    except OSError:
        return False


def _start_failure(exc: OSError, config: Config) -> str:
    """What stopped the server from starting, in words that say what to do."""
    if exc.errno == errno.EADDRINUSE:
        where = f"{config.bind}:{config.port}" if config.bind else f"port {config.port}"
        return f"{where} is already in use (another wlmserver or wlmscpfs?); choose another port"
    if exc.errno == errno.EACCES and config.port < 1024:
        return f"port {config.port} needs privileges (ports below 1024): choose one above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--bind {config.bind}: no such address on this machine"
    return str(exc)
