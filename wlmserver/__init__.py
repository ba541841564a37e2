"""wlmserver: a DICOM Modality Worklist SCP serving wlmscpfs-style folders of ``.wl`` files.

The ``*.wl`` files under ``<root>/<CalledAETitle>/`` are indexed once and watched; a C-FIND
answers once per matching scheduled procedure step (PS3.4 Annex K).

``Config``, ``WorklistServer`` and ``run`` are imported when first used (PEP 562): a process
that only reads files (a worker of the first index) does not import the network stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wlmserver.version import __version__

if TYPE_CHECKING:
    from wlmserver.config import Config
    from wlmserver.service.server import WorklistServer, run

__all__ = ["Config", "WorklistServer", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name == "Config":
        from wlmserver.config import Config

        return Config
    if name in ("WorklistServer", "run"):
        from wlmserver.service import server

        return getattr(server, name)
    raise AttributeError(f"module 'wlmserver' has no attribute {name!r}")
