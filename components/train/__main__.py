"""``python -m kfops.components.train``: see ``entry.py``."""

import sys

from kfops.components.train.entry import main

sys.exit(main())
