"""Import Feast without letting it change the process's environment.

``feast.metrics`` sets ``PROMETHEUS_MULTIPROCESS_DIR`` and ``PROMETHEUS_MULTIPROC_DIR`` to a temporary folder when it
is imported (for its own Gunicorn feature server). Left set, every child process (``kfops serve --challenger``'s
predictors, kfp.local tasks) and any first import of prometheus_client after it would switch to multiprocess
metrics in a folder that disappears with this process. Each function that uses Feast calls ``import_feast()``
first; only the first call imports anything.
"""

from __future__ import annotations

import os

_FEAST_ENV = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def import_feast() -> None:
    before = {name: os.environ.get(name) for name in _FEAST_ENV}
    import feast  # noqa: F401 - its import is the point

    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
