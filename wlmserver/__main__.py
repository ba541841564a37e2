"""``python -m wlmserver``: the same as the ``wlmserver`` command."""

import sys

from wlmserver.cli import main

sys.exit(main())
