"""wlmserver: a DICOM Modality Worklist SCP serving wlmscpfs-style folders of ``.wl`` files.

The ``*.wl`` files under ``<root>/<CalledAETitle>/`` are indexed once and watched; a C-FIND
answers once per matching scheduled procedure step (PS3.4 Annex K).
"""

from wlmserver.config import Config
from wlmserver.service.server import WorklistServer, run

__all__ = ["Config", "WorklistServer", "__version__", "run"]
__version__ = "0.1.0"
