"""``python -m kfops.serving --model REF --name NAME --host 0.0.0.0 --port 8080``: what a serving image runs."""

import sys

from kfops.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
