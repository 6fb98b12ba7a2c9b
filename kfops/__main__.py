"""`python -m kfops` is the `kfops` command."""

import sys

from kfops.cli import main

sys.exit(main())
