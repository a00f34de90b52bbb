"""``python -m lte_cuda``: the ``lte-sr`` command line."""

import sys

from .cli import main

sys.exit(main())
