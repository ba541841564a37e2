"""DICOM TLS: the server's TLS context, and each connection's handshake in its own thread.

The security profile is that of DICOM PS3.15 Annex B for TLS secure transport connections:
the BCP 195 profiles (B.10 Non-Downgrading BCP 195, B.12 BCP 195 RFC 8996, 9325; DCMTK's
default ``+py``), which replace the retired Basic TLS profile of B.1 (its 3DES cipher suite
is not offered). Concretely, on Python's :mod:`ssl` (OpenSSL) defaults:

- TLS 1.2 at least (RFC 8996: no TLS 1.0 or 1.1, no SSL); TLS 1.3 preferred when the client
  offers it (OpenSSL always picks the highest version both support);
- for TLS 1.2, only the AEAD cipher suites with forward secrecy that RFC 9325 4.2
  recommends: ECDHE with AES-GCM or ChaCha20-Poly1305 (no DHE: its key length is not set
  here, which B.13 forbids; no CBC, no RC4, no 3DES, no anonymous suites); TLS 1.3's own
  suites as OpenSSL has them;
- no TLS compression, no renegotiation (Python's defaults, with ``OP_NO_RENEGOTIATION``);
- the peer's certificate is checked only against the certificates given (``+cf``, ``+cd``),
  never the system's trust store: a certificate any public CA signed is not trusted.

pynetdicom's TLS listener wraps each accepted socket with ``do_handshake_on_connect=True`` in
its accept loop: a client that connects and sends nothing (a plain DICOM client waiting for
the server to speak, a port scanner) would stop the whole listener until it leaves. Here the
listener's context wraps sockets without a handshake (:class:`DeferredHandshakeContext`), and
:class:`Handshakes` performs it on ``EVT_CONN_OPEN``, which pynetdicom fires in the
connection's own thread before the association's threads start, within the ACSE timeout (the
time a peer has for its A-ASSOCIATE-RQ, PS3.8 9.1.5). A failed handshake is one log line
naming the peer and the reason, and the connection is closed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from wlmserver.config import Config
from wlmserver.config.certificates import identities_of
from wlmserver.service import reactor

LOGGER = logging.getLogger(__name__)

#: The oldest TLS version negotiated (PS3.15 B.10, B.12; RFC 8996).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: TLS 1.2 cipher suites (OpenSSL names): RFC 9325 4.2's AEAD suites with ECDHE.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"

#: ``-rc``, ``-vc``, ``-ic``: how a client certificate is checked (see :class:`Config`).
PEER_CERT_MODES = {
    "require": ssl.CERT_REQUIRED,
    "verify": ssl.CERT_OPTIONAL,
    "ignore": ssl.CERT_NONE,
}

#: What the server writes into an association's ``__dict__``: the TLS version it negotiated,
#: and the identities of the client's verified certificate (``[access.certificates]``).
_VERSION_KEY = "_wlmserver_tls"
_PEER_KEY = "_wlmserver_tls_peer"


class TlsSetupError(ValueError):
    """A TLS file or setting the server cannot use; the message is one line naming it."""


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSL context whose :meth:`wrap_socket` never performs the handshake.

    pynetdicom's ``AssociationServer.get_request`` wraps accepted sockets in its accept loop;
    the handshake is done later, by :class:`Handshakes`, in the connection's own thread.
    """

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


class _EncryptedKey(Exception):
    """Raised by the password callback: the key file is encrypted (no password is read)."""


def _no_password() -> str:
    raise _EncryptedKey


def _check_readable(path: Path, what: str, option: str) -> None:
    """A one-line error unless ``path`` is a readable file."""
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise TlsSetupError(f"{option}: the {what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsSetupError(f"{option}: the {what} {path} is a folder, not a file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TlsSetupError(f"{option}: cannot read the {what} {path}: {reason}") from None


def _load_identity(context: ssl.SSLContext, key: Path, cert: Path) -> None:
    """The server's private key and certificate (``+tls KEY CERT``), checked one by one so
    that an error names the file at fault."""
    _check_readable(key, "private key file", "+tls")
    _check_readable(cert, "certificate file", "+tls")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, OSError, ValueError):
        raise TlsSetupError(
            f"+tls: the certificate file {cert} holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=_no_password)
    except _EncryptedKey:
        raise TlsSetupError(
            f"+tls: the private key file {key} is encrypted; give it without a password "
            "(openssl pkey -in KEY -out KEY.plain), readable only by the server's user"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsSetupError(
                f"+tls: the private key {key} does not belong to the certificate {cert}"
            ) from None
        raise TlsSetupError(
            f"+tls: the private key file {key} holds no PEM private key "
            "(-----BEGIN ... PRIVATE KEY-----)"
        ) from None


def _certificate_files(folder: Path) -> list[Path]:
    """The files of a folder (``+cd``) that hold a PEM certificate, by name."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except FileNotFoundError:
        raise TlsSetupError(f"+cd: the folder {folder} does not exist") from None
    except NotADirectoryError:
        raise TlsSetupError(f"+cd: {folder} is not a folder (use +cf for a file)") from None
    except OSError as exc:
        raise TlsSetupError(f"+cd: cannot read the folder {folder}: {exc.strerror}") from None
    found = []
    for path in files:
        try:
            text = path.read_bytes()
        except OSError:
            continue  # a file only root may read (a key) in a shared certificate folder
        if b"-----BEGIN CERTIFICATE-----" in text:
            found.append(path)
    if not found:
        raise TlsSetupError(f"+cd: the folder {folder} holds no PEM certificate file")
    return found


def _load_trusted(context: ssl.SSLContext, files: tuple[Path, ...], dirs: tuple[Path, ...]) -> None:
    """The certificates trusted to verify a peer (``+cf``, ``+cd``).

    A ``+cd`` folder is read file by file (every file holding a PEM certificate), not as
    OpenSSL's hashed directory (DCMTK's ``+cd``): a folder of ``.pem`` files works without
    ``c_rehash``, and what is trusted is known at start.
    """
    named = [("+cf", path) for path in files]
    for folder in dirs:
        named += [("+cd", path) for path in _certificate_files(folder)]
    for option, path in named:
        _check_readable(path, "certificate file", option)
        try:
            context.load_verify_locations(cafile=str(path))
        except (ssl.SSLError, ValueError):
            raise TlsSetupError(
                f"{option}: the certificate file {path} holds no PEM certificate "
                "(-----BEGIN CERTIFICATE-----)"
            ) from None


def server_context(config: Config) -> DeferredHandshakeContext:
    """The TLS context of the server's TLS listener (see the module docstring).

    Parameters
    ----------
    config : Config
        ``tls_key``, ``tls_cert``, ``tls_ca_files``, ``tls_ca_dirs`` and
        :attr:`Config.tls_peer_cert_mode`.

    Returns
    -------
    DeferredHandshakeContext
        A server context: TLS 1.2 or 1.3, BCP 195 cipher suites, the server's certificate,
        the trusted certificates and the client certificate check.

    Raises
    ------
    TlsSetupError
        A file is missing, unreadable or not what it should be, the key does not match the
        certificate, or a client certificate is to be checked with no trusted certificates.
    """
    if config.tls_key is None or config.tls_cert is None:
        raise TlsSetupError("TLS needs a private key and a certificate (+tls KEY CERT)")
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    _load_identity(context, config.tls_key, config.tls_cert)
    _load_trusted(context, config.tls_ca_files, config.tls_ca_dirs)
    mode = config.tls_peer_cert_mode
    if mode != "ignore" and not (config.tls_ca_files or config.tls_ca_dirs):
        option = "-rc" if mode == "require" else "-vc"
        raise TlsSetupError(
            f"{option}: client certificates cannot be verified without trusted certificates "
            "(+cf FILE or +cd DIR)"
        )
    context.verify_mode = PEER_CERT_MODES[mode]
    return context


def failure_reason(
    exc: BaseException, seconds: float | None, timeout_name: str = "ACSE timeout"
) -> tuple[str, int]:
    """Why a handshake failed, in words, and the level to log it at.

    A peer that closed the connection without a word (a TCP health check) is INFO; every
    other failure is a WARNING.

    Examples
    --------
    >>> failure_reason(TimeoutError(), 30.0)
    ('no TLS handshake within 30 s (ACSE timeout)', 30)
    """
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {seconds:g} s ({timeout_name})", logging.WARNING
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or "not signed by a trusted certificate"
        return f"certificate verify failed: {detail}", logging.WARNING
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return "closed by the peer", logging.INFO
    if isinstance(exc, ssl.SSLError):
        code = str(exc.reason or "")
        words = code.lower().replace("_", " ")
        if code in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
            return "not a TLS client (a DICOM client without TLS?)", logging.WARNING
        if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate (one is required)", logging.WARNING
        if code in ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW"):
            return "the client offers no TLS version from 1.2 on", logging.WARNING
        if code == "NO_SHARED_CIPHER":
            return "no cipher suite in common (BCP 195 ones only)", logging.WARNING
        if "ALERT" in code:
            return f"the client refused the handshake ({words})", logging.WARNING
        return words or str(exc), logging.WARNING
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__, logging.WARNING
    return type(exc).__name__, logging.WARNING


def _handshake(sock: ssl.SSLSocket, seconds: float | None) -> None:
    """The server side of a TLS handshake, done within ``seconds`` in all (a peer sending one
    byte at a time cannot stretch it); the socket's timeout is left as it was."""
    deadline = None if seconds is None else time.monotonic() + seconds
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                readers, writers = [sock], []
            except ssl.SSLWantWriteError:
                readers, writers = [], [sock]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            ready = select.select(readers, writers, [], remaining)
            if not (ready[0] or ready[1]):
                raise TimeoutError
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)


class Handshakes:
    """The TLS handshakes of one listener's connections (one per server).

    Bind :meth:`on_connection_open` to ``EVT_CONN_OPEN`` *after* the server's own handler
    (which applies the per-host connection limit: a connection it closed is not shaken hands
    with). :meth:`abort` ends the handshakes still running when the server stops.

    Parameters
    ----------
    config : Config
        The ACSE timeout (else the network timeout) bounds each handshake.
    """

    def __init__(self, config: Config) -> None:
        self._timeout = _handshake_timeout(config)
        self._lock = threading.Condition()
        self._running: set[ssl.SSLSocket] = set()
        self._stopping = False

    @property
    def timeout_name(self) -> str:
        """Which timeout bounds a handshake ("ACSE timeout"), for the log."""
        return self._timeout[0]

    @property
    def seconds(self) -> float | None:
        """The seconds a handshake may take (None: no bound)."""
        return self._timeout[1]

    def use(self, config: Config) -> None:
        """Bound the handshakes from now on by ``config``'s timeouts (a reload)."""
        self._timeout = _handshake_timeout(config)  # one reference: never half of each

    def on_connection_open(self, event: Any) -> None:
        """``EVT_CONN_OPEN``: perform the handshake; on failure log one line and close.

        pynetdicom fires it in the connection's thread, before the association's threads
        start: nothing else uses the socket meanwhile. A closed connection is seen by the
        upper layer as the transport closing (Evt17), and the association ends.
        """
        assoc = event.assoc
        sock = getattr(assoc.dul.socket, "socket", None)
        if not isinstance(sock, ssl.SSLSocket) or assoc.__dict__.get("_wlmserver_end"):
            return  # not TLS, or already closed by the connection limit
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._running.add(sock)
        if stopping:  # accepted while the server stops: closed at once
            self._failed(assoc, sock, ConnectionAbortedError(), *self._timeout)
            return
        name, seconds = self._timeout
        try:
            _handshake(sock, seconds)
        except Exception as exc:  # ssl.SSLError, OSError, TimeoutError, ValueError (closed)
            self._failed(assoc, sock, exc, name, seconds)
            return
        finally:
            with self._lock:
                self._running.discard(sock)
                self._lock.notify_all()
        assoc.__dict__[_PEER_KEY] = identities_of(sock.getpeercert() or {})
        assoc.__dict__[_VERSION_KEY] = sock.version()
        if LOGGER.isEnabledFor(logging.DEBUG):
            cipher = sock.cipher()
            LOGGER.debug(
                "TLS from %s:%s: %s, %s, client certificate %s",
                assoc.requestor.address,
                assoc.requestor.port,
                sock.version(),
                cipher[0] if cipher else "-",
                "verified" if sock.getpeercert() else "not asked for or not verified",
            )

    def _failed(
        self,
        assoc: Any,
        sock: ssl.SSLSocket,
        exc: BaseException,
        timeout_name: str,
        seconds: float | None,
    ) -> None:
        reason, level = failure_reason(exc, seconds, timeout_name)
        if self._stopping:
            reason, level = "the server is stopping", logging.DEBUG
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        LOGGER.log(
            level,
            "TLS handshake from %s failed: %s",
            peer,
            reason,
            extra={"fields": {"event": "tls_handshake", "peer": peer, "reason": reason}},
        )
        reactor.close_early(assoc, sock, "closed at the TLS handshake")

    def abort(self, wait: float = 2.0) -> None:
        """End the handshakes still running, and close connections accepted from now on (the
        server stops), waiting up to ``wait`` seconds for their threads to see it.

        Call it before the listener's ``shutdown()``: that joins the connection threads, so
        it would wait for each handshake's deadline."""
        deadline = time.monotonic() + wait
        with self._lock:
            self._stopping = True
            for sock in list(self._running):
                with contextlib.suppress(OSError):
                    # the plain socket's shutdown, so the SSL object stays for the thread
                    # in the handshake, which then reads the end of the connection
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            while self._running and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))


def _handshake_timeout(config: Config) -> tuple[str, float | None]:
    """The timeout bounding a handshake: the ACSE timeout, else the network timeout."""
    timeouts = (
        ("ACSE timeout", config.acse_timeout),
        ("network timeout", config.network_timeout),
    )
    found = [(name, seconds) for name, seconds in timeouts if seconds is not None]
    return found[0] if found else ("no timeout", None)


def peer_identities(assoc: Any) -> frozenset[str] | None:
    """The identities of the client's verified certificate (empty: it presented none), or
    None when the association is not over TLS (see
    :func:`wlmserver.config.certificates.identities_of`)."""
    try:
        found = assoc.__dict__.get(_PEER_KEY)
    except AttributeError:
        return None
    return found if isinstance(found, frozenset) else None


def negotiated_version(assoc: Any) -> str | None:
    """The TLS version of an association's connection ("TLSv1.3"), or None (plain TCP)."""
    try:
        return assoc.__dict__.get(_VERSION_KEY)  # type: ignore[no-any-return]
    except AttributeError:
        return None


def describe(config: Config, port: int) -> str:
    """The log line saying where TLS is served and how clients are checked."""
    mode = config.tls_peer_cert_mode
    clients = {
        "require": "a client certificate signed by a trusted certificate is required",
        "verify": "a client certificate is verified when one is presented",
        "ignore": "client certificates are not asked for",
    }[mode]
    return f"TLS (1.2 or 1.3) on port {port}; {clients}"
