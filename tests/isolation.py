"""What libraries change for the whole process, put back after every test (tests/conftest.py uses it).

kfp.local swaps ``builtins.print`` for an indenting one while a task runs and can leave it behind (two tasks
that overlap restore each other's copy); ``pipelines/local.py`` and MLflow's fluent API set environment
variables and module globals; a few tests change the working directory. Left in place, any of these makes a
later test pass or fail by the order the tests ran in.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
from collections.abc import Iterator

# MLflow's module-level state: (module, attribute)
_MLFLOW_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)


def _mlflow_state() -> dict[tuple[str, str], object]:
    return {
        (module, name): getattr(sys.modules[module], name)
        for module, name in _MLFLOW_GLOBALS
        if module in sys.modules and hasattr(sys.modules[module], name)
    }


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Restore ``builtins.print``, the environment, the working directory and MLflow's globals on exit, and end
    an MLflow run left active."""
    print_function = builtins.print
    environment = dict(os.environ)
    cwd = os.getcwd()
    mlflow_state = _mlflow_state()
    try:
        yield
    finally:
        builtins.print = print_function
        if dict(os.environ) != environment:
            os.environ.clear()
            os.environ.update(environment)
        if os.getcwd() != cwd:
            os.chdir(cwd)
        fluent = sys.modules.get("mlflow.tracking.fluent")
        if fluent is not None and fluent.active_run() is not None:
            with contextlib.suppress(Exception):
                fluent.end_run()
        for module, name in _MLFLOW_GLOBALS:
            if module in sys.modules and hasattr(sys.modules[module], name):
                setattr(sys.modules[module], name, mlflow_state.get((module, name)))
