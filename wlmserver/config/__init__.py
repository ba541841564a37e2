"""The server's configuration: one frozen dataclass, the only home of defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wlmserver.config.access import Access
from wlmserver.config.forward import DEFAULT_TIMEOUT as DEFAULT_FORWARD_TIMEOUT
from wlmserver.config.forward import ForwardTarget
from wlmserver.config.profiles import Profiles
from wlmserver.matching.answers import CharsetPolicy
from wlmserver.matching.encoding import DEFAULT_DEFLATE_LEVEL
from wlmserver.matching.retention import RetentionPolicy
from wlmserver.matching.stepstatus import DEFAULT_HIDDEN
from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE
from wlmserver.store.forward import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, QueueLimits
from wlmserver.store.mpps import (
    DEFAULT_MAX_FOLDER,
    DEFAULT_MAX_INSTANCE,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_REQUEST,
    MppsLimits,
    default_folder,
)

#: The default bounds of the request-capture folder (``-rfp``): a capture is a debugging aid
#: of a few hundred bytes per query; 10,000 files is hours of a busy department's queries.
DEFAULT_MAX_CAPTURE_FILES = 10_000
DEFAULT_MAX_CAPTURE_SIZE = 64 * 1024 * 1024

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "WLMSERVER"

#: wlmscpfs's preferred network transfer syntaxes (``+x=``, ``+xe``, ``+xb``, ``+xd``, ``+xi``).
TransferSyntaxPreference = Literal["uncompr", "little", "big", "deflated", "implicit"]


def bundled_database() -> Path:
    """The example database served when no ``-dfp`` is given.

    In a source checkout (or an editable install) that is the checkout's ``wlistdb/``; in an
    installed wheel, the copy packaged inside ``wlmserver/``.
    """
    package = Path(__file__).resolve().parent.parent  # wlmserver/
    checkout = package.parent / "wlistdb"
    if checkout.is_dir():
        return checkout
    return package / "wlistdb"


@dataclass(frozen=True)
class Config:
    """Everything the server needs to know.

    Attributes
    ----------
    data_files_path : Path
        The database root: ``<root>/<CalledAETitle>/*.wl`` (``-dfp``).
    port : int
        TCP port to listen on (0 picks a free one).
    bind : str
        Address to listen on (all interfaces by default, as wlmscpfs).
    ae_title : str
        The server's own AE title, used in logs and when no called AE title applies.
    reject_incomplete : bool
        Skip entries lacking a Type 1 attribute (``-efr``, default) or serve them (``-dfr``).
    expand_empty_sps : bool
        Expand an empty SPS item in a query to the Table K.6-1 SPS keys (``-nse`` turns off).
    charset_policy : CharsetPolicy
        Which character set non-ASCII answers carry (``-csk``/``-cs0`` keep the file's,
        ``-cs1`` prefers ISO_IR 100); UTF-8 whenever the preferred one cannot encode it.
    pn_case_insensitive : bool
        Match PN values insensitive to case and accents.
    fail_invalid_query : bool
        Answer an invalid query with a failure status (default) or, with ``--no-fail``, with
        success and no matches.
    any_aet_folder : str or None
        A folder to serve for called AE titles that have no folder of their own.
    acse_timeout, dimse_timeout, network_timeout : float or None
        Timeouts in seconds (``-ta``, ``-td``); None waits forever.
    max_associations : int
        Parallel associations at most (``--max-associations``): connections that sent an
        A-ASSOCIATE-RQ; more are rejected (transient, local limit exceeded).
    max_associations_per_peer : int
        Parallel associations of one peer host (an IPv4 address, or an IPv6 /64) at most
        (``--max-associations-per-peer``), and connections of one host still waiting for
        their A-ASSOCIATE-RQ at most, so that one host cannot take every slot.
    max_pending_connections : int
        Connections still waiting for their A-ASSOCIATE-RQ at most, from all hosts
        (``--max-pending-connections``); one more is closed at once. With
        ``max_associations`` it bounds the threads (two per connection; see
        :func:`wlmserver.service.admission.thread_limit`).
    max_identifier_size : int
        A C-FIND identifier longer than this many bytes is refused (status 0xC000) before it
        is decoded (``--max-identifier-size``).
    max_value_length : int
        A query value longer than this many characters is refused (status 0xC000)
        (``--max-value-length``).
    max_answers : int
        Answers per C-FIND at most; after that many, the query ends with 0xA700 Refused: Out
        of Resources (``--max-answers``; 0: no limit).
    log_json : bool
        Log one JSON object per line (``--log-json``); read by the command line only.
    max_pdu : int
        Maximum PDU size received (``-pdu``).
    poll : float or None
        Poll the file system every ``poll`` seconds instead of using inotify (``--poll``).
    rescan_interval : float
        Seconds between full consistency rescans of the database (0: never).
    request_file_path : Path or None
        Write each C-FIND identifier into this folder (``--request-file-path``).
    request_file_format : str
        The request file names (``--request-file-format``; see :mod:`wlmserver.service.capture`).
    json_drops : bool
        Also serve ``*.json`` drop files (``--json-drops``; see :mod:`wlmserver.store.jsondrop`).
    max_file_size : int
        Dropped files larger than this many bytes are not read (``--max-file-size``, in MiB).
    follow_links : bool
        Serve files and AE folders whose symbolic links lead out of the database root
        (``--follow-links``).
    index_cache : Path or None
        A private folder to keep the index in between runs (see :mod:`wlmserver.store.cache`),
        so a restart is served in seconds; None: none, every start indexes the whole
        database. The command line's default is the user's or the service's cache folder
        (:func:`wlmserver.config.cachedir.default_index_cache`; ``--index-cache DIR``,
        ``--no-index-cache``); a Config made in Python has none unless given.
    index_workers : int or None
        Worker processes reading files when many are to be read (``--index-workers``; see
        :mod:`wlmserver.store.workers`); 0: none; None: one per CPU (none on one CPU).
    mpps_folder : Path or None
        The folder of its own MPPS instances are kept in, one DICOM file each
        (``--mpps-folder``; see :mod:`wlmserver.store.mpps`); None: ``<root>/.mpps``
        (:attr:`mpps_path`).
    hide_statuses : frozenset of str
        Step statuses not answered (``--hide-status``; by default COMPLETED and
        DISCONTINUED), whether the file or an MPPS says so (see
        :mod:`wlmserver.matching.stepstatus`); a query asking for a status is not affected.
    retention_days : int or None
        Steps scheduled more than this many days ago are not served (``--retention-days``;
        see :mod:`wlmserver.matching.retention`); None: every step is served (:attr:`retention`).
    archive_folder : Path or None
        Where files whose every step is past retention are moved, ``DIR/<AET>/<file>``
        (``--archive-folder``, with ``retention_days`` only; see
        :mod:`wlmserver.store.retention`); None: files stay, their old steps only hidden.
    mpps_forward : ForwardTarget or None
        Another MPPS SCP (the RIS) every accepted N-CREATE and N-SET is forwarded to, from
        an on-disk queue in ``<mpps folder>/forward`` (``--mpps-forward AET@HOST:PORT``; see
        :mod:`wlmserver.service.forwarder`); None: not forwarded.
    mpps_forward_aet : str or None
        The calling AE title towards it (``--mpps-forward-aet``); None: ``ae_title``.
    mpps_forward_timeout : float
        Seconds the RIS has to accept the forwarder's association and to answer each
        message (``--mpps-forward-timeout``; default 60); a message it did not answer in time
        is sent again later, and answers are then waited for longer.
    max_mpps_size : int
        An N-CREATE or N-SET data set longer than this many bytes is refused with 0x0213
        before it is decoded (``--max-mpps-size``; see :class:`~wlmserver.store.mpps.MppsLimits`).
    max_mpps_instance_size : int
        An instance longer than this many bytes once an N-SET is applied is refused with
        0x0213 (``--max-mpps-instance-size``).
    max_mpps_instances, max_mpps_folder_size : int
        An N-CREATE is refused with 0x0213 once the MPPS folder holds this many instances, or
        this many bytes of them (``--max-mpps-instances``, ``--max-mpps-folder-size``).
    max_forward_messages, max_forward_size : int
        With ``mpps_forward``: a request is refused with 0x0213 once the forwarding queue
        holds this many messages, or bytes (``--max-forward-messages``,
        ``--max-forward-size``; see :class:`~wlmserver.store.forward.QueueLimits`).
    max_capture_files, max_capture_size : int
        With ``request_file_path``: no request is captured once the folder holds this many
        files, or bytes (``--max-capture-files``, ``--max-capture-size``); the query is
        answered as always.
    mpps_retention_days : int or None
        Finished MPPS instances (COMPLETED, DISCONTINUED) that ended more than this many days
        ago move to ``<mpps folder>/archive/`` (``--mpps-retention-days``); None: the value of
        ``retention_days`` (:attr:`mpps_retention`), so both are off unless retention is set.
    access : Access
        Who may ask: calling AE title and address allow-lists (``--allow-calling-aet``,
        ``--allow-host`` and the configuration file's ``[access]``).
    profiles : Profiles
        Modality profiles by calling AE title (the configuration file's ``[profiles]``).
    config_file : Path or None
        The configuration file read (``--config``), for logs.
    refuse_associations : bool
        Refuse every association: A-ASSOCIATE-RJ rejected-permanent, service-user, no reason
        given (``--refuse``; PS3.8 9.3.4), to test SCUs.
    reject_without_implementation_uid : bool
        Reject an association whose A-ASSOCIATE-RQ carries no Implementation Class UID,
        which PS3.7 D.3.3.2 requires (``--reject``), the same way.
    sleep_before_find, sleep_during_find, sleep_after_find : float
        Seconds a C-FIND waits on purpose, to test SCUs' timeouts (``--sleep-before``,
        ``--sleep-during``, ``--sleep-after``; 0: not at all): before the query is matched,
        before each response, and after the final response (before the association's next
        message, a release or another request is handled).
    transfer_syntax_preference : TransferSyntaxPreference
        Which transfer syntax of those a requestor proposes is accepted
        (``+x=``, ``+xe``, ``+xb``, ``+xd``, ``+xi``; see
        :data:`wlmserver.service.server.TRANSFER_SYNTAX_PREFERENCES`).
    compression_level : int
        zlib level of deflated answers, 0-9 (``+cl``, with ``+xd`` only; default 6, as
        DCMTK's).

    TLS (PS3.15 Annex B, BCP 195; see :mod:`wlmserver.service.tls`):

    tls_key, tls_cert : Path or None
        The server's PEM private key and certificate (``+tls KEY CERT``); TLS is served when
        both are set.
    tls_ca_files, tls_ca_dirs : tuple of Path
        Trusted certificates (CAs or self-signed peers) for verifying a client's certificate:
        PEM files (``+cf``) and folders of PEM files (``+cd``).
    tls_peer_cert : str or None
        ``"require"`` a valid client certificate (``-rc``), ``"verify"`` one only when
        presented (``-vc``), or ``"ignore"`` client certificates (``-ic``); None: require
        when trusted certificates are given, else ignore (:attr:`tls_peer_cert_mode`).
    tls_port : int or None
        Serve TLS on this port while ``port`` stays plain TCP (``--tls-port``; 0 picks a free
        one); None: with TLS, ``port`` itself is TLS.
    """

    data_files_path: Path
    port: int = DEFAULT_PORT
    bind: str = ""
    ae_title: str = DEFAULT_AE_TITLE
    reject_incomplete: bool = True
    expand_empty_sps: bool = True
    charset_policy: CharsetPolicy = CharsetPolicy.FILE
    pn_case_insensitive: bool = False
    fail_invalid_query: bool = True
    any_aet_folder: str | None = None
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = None
    network_timeout: float | None = 60.0
    max_associations: int = 50
    max_associations_per_peer: int = 10
    max_pending_connections: int = 50
    max_identifier_size: int = 65536
    max_value_length: int = 1024
    max_answers: int = 0
    log_json: bool = False
    max_pdu: int = 16384
    poll: float | None = None
    rescan_interval: float = 60.0
    request_file_path: Path | None = None
    request_file_format: str = "#t.dump"
    json_drops: bool = False
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    follow_links: bool = False
    index_cache: Path | None = None
    index_workers: int | None = None
    mpps_folder: Path | None = None
    hide_statuses: frozenset[str] = DEFAULT_HIDDEN
    retention_days: int | None = None
    archive_folder: Path | None = None
    mpps_forward: ForwardTarget | None = None
    mpps_forward_aet: str | None = None
    mpps_forward_timeout: float = DEFAULT_FORWARD_TIMEOUT
    max_mpps_size: int = DEFAULT_MAX_REQUEST
    max_mpps_instance_size: int = DEFAULT_MAX_INSTANCE
    max_mpps_instances: int = DEFAULT_MAX_INSTANCES
    max_mpps_folder_size: int = DEFAULT_MAX_FOLDER
    max_forward_messages: int = DEFAULT_MAX_MESSAGES
    max_forward_size: int = DEFAULT_MAX_BYTES
    max_capture_files: int = DEFAULT_MAX_CAPTURE_FILES
    max_capture_size: int = DEFAULT_MAX_CAPTURE_SIZE
    mpps_retention_days: int | None = None
    # access control and modality profiles
    access: Access = field(default_factory=Access)
    profiles: Profiles = field(default_factory=Profiles)
    config_file: Path | None = None
    # wlmscpfs parity
    refuse_associations: bool = False
    reject_without_implementation_uid: bool = False
    sleep_before_find: float = 0.0
    sleep_during_find: float = 0.0
    sleep_after_find: float = 0.0
    transfer_syntax_preference: TransferSyntaxPreference = "uncompr"
    compression_level: int = DEFAULT_DEFLATE_LEVEL
    # TLS
    tls_key: Path | None = None
    tls_cert: Path | None = None
    tls_ca_files: tuple[Path, ...] = ()
    tls_ca_dirs: tuple[Path, ...] = ()
    tls_peer_cert: str | None = None
    tls_port: int | None = None

    @property
    def mpps_path(self) -> Path:
        """Where MPPS instances are kept: ``mpps_folder``, or ``<root>/.mpps`` (a dot-name
        is never an AE title, so never served as an AE folder)."""
        return (
            self.mpps_folder
            if self.mpps_folder is not None
            else default_folder(self.data_files_path)
        )

    @property
    def mpps_limits(self) -> MppsLimits:
        """The MPPS store's bounds (``--max-mpps-*``)."""
        return MppsLimits(
            self.max_mpps_size,
            self.max_mpps_instance_size,
            self.max_mpps_instances,
            self.max_mpps_folder_size,
        )

    @property
    def forward_limits(self) -> QueueLimits:
        """The forwarding queue's bounds (``--max-forward-*``)."""
        return QueueLimits(self.max_forward_messages, self.max_forward_size)

    @property
    def mpps_retention(self) -> int | None:
        """Days after which finished MPPS instances are archived: ``mpps_retention_days``,
        else ``retention_days`` (None: never).

        Examples
        --------
        >>> Config(Path("."), retention_days=90).mpps_retention
        90
        >>> Config(Path("."), retention_days=90, mpps_retention_days=400).mpps_retention
        400
        >>> Config(Path(".")).mpps_retention is None
        True
        """
        return (
            self.mpps_retention_days
            if self.mpps_retention_days is not None
            else (self.retention_days)
        )

    @property
    def retention(self) -> RetentionPolicy:
        """Which steps are past retention: ``policy.hides(entry, today)`` is what the C-FIND
        handler asks of each candidate (:class:`~wlmserver.matching.retention.RetentionPolicy`)."""
        return RetentionPolicy(self.retention_days)

    @property
    def tls_enabled(self) -> bool:
        """Whether TLS is served (``+tls KEY CERT``)."""
        return self.tls_key is not None and self.tls_cert is not None

    @property
    def tls_peer_cert_mode(self) -> str:
        """``tls_peer_cert``, or its default: ``"require"`` when trusted certificates are
        given, else ``"ignore"``."""
        if self.tls_peer_cert is not None:
            return self.tls_peer_cert
        return "require" if self.tls_ca_files or self.tls_ca_dirs else "ignore"
