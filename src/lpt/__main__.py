"""``python -m lpt``: the ``lpt`` command where no console script is installed (a checkout on PYTHONPATH)."""

import sys

from lpt.cli import main

sys.exit(main())
