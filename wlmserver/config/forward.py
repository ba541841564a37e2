"""Where MPPS messages are forwarded to: ``--mpps-forward AET@HOST:PORT``."""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds the RIS has to accept the association and to answer each message
#: (``--mpps-forward-timeout``): twice pynetdicom's and DCMTK's 30 s ACSE default, so that a
#: busy RIS is waited for rather than sent a message again (see
#: :mod:`wlmserver.service.forwarder`).
DEFAULT_TIMEOUT = 60.0


def valid_ae_title(title: str) -> bool:
    """Whether a title can be an AE title on the wire: 1 to 16 characters of the default
    repertoire, not only spaces, no backslash, no control character (PS3.5 6.2, AE).

    Examples
    --------
    >>> [valid_ae_title(t) for t in ("RIS", "MY RIS", "", "   ", "A" * 17, "A\\\\B", "É")]
    [True, True, False, False, False, False, False]
    """
    return (
        0 < len(title) <= 16
        and bool(title.strip())
        and title.isascii()
        and title.isprintable()
        and "\\" not in title
    )


@dataclass(frozen=True)
class ForwardTarget:
    """Another MPPS SCP (a RIS) that receives every N-CREATE and N-SET accepted.

    Attributes
    ----------
    ae_title : str
        Its AE title (the called AE title).
    host : str
        Its host name or address.
    port : int
        Its port.
    """

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ForwardTarget:
        """Read ``AET@HOST:PORT`` (an IPv6 address in brackets: ``RIS@[::1]:104``).

        Raises
        ------
        ValueError
            Saying which part is wrong.

        Examples
        --------
        >>> ForwardTarget.parse("RIS@ris.example.org:104")
        ForwardTarget(ae_title='RIS', host='ris.example.org', port=104)
        >>> str(ForwardTarget.parse("RIS@[::1]:11112"))
        'RIS@[::1]:11112'
        >>> ForwardTarget.parse("ris.example.org:104")
        Traceback (most recent call last):
        ...
        ValueError: 'ris.example.org:104': give AET@HOST:PORT (no AE title before @)
        """
        aet, at, rest = text.strip().rpartition("@")
        if not at or not aet:
            raise ValueError(f"{text!r}: give AET@HOST:PORT (no AE title before @)")
        if not valid_ae_title(aet):
            raise ValueError(
                f"{text!r}: the AE title {aet!r} is not 1 to 16 characters without "
                "backslashes or control characters"
            )
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text!r}: give AET@HOST:PORT (no host or no port)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or any(c.isspace() or c in "/@[]" for c in host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or address")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: the port {port!r} is not a number from 1 to 65535")
        return cls(aet, host, int(port))
