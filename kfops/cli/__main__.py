"""``python -m kfops.cli``: the ``kfops`` command."""

import sys

from kfops.cli import main

sys.exit(main())
