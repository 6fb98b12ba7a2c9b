"""The code a kfops model needs to load and score, shipped inside the model (MLflow ``code_paths``).

A registered kfops model loads with no kfops install: ``mlflow models serve``, MLServer's MLflow runtime (KServe's
``modelFormat: mlflow``) or a plain ``mlflow.pyfunc.load_model`` in a venv of MLflow, the model's pip requirements
and nothing else. The model folder holds ``code/kfops/``: the package's ``__init__``, the contracts, the feature
transform, the scorers and the model-format classes (``RUNTIME_MODULES``), which MLflow puts first on
``sys.path`` when it loads the model. Where kfops is installed and imported (our own serving, evaluation, batch
prediction), the installed package is already in ``sys.modules`` and is the one used; ``model_store.load_pyfunc``
also takes the model's entry off ``sys.path`` again, so processes started later import the installed package.

Each module here imports only these modules, the standard library, numpy, pandas, MLflow and the family's own
library (torch, scikit-learn) at load and scoring time; tests/components/test_model_code.py loads a model with
kfops out of reach to hold that.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

# What loading and scoring import, by module name. Of the packages, ``kfops``, ``kfops.components`` and
# ``kfops.components.train`` bring only their ``__init__``; the contracts package comes whole.
RUNTIME_MODULES = (
    "kfops",
    "kfops.components",
    "kfops.components.contracts",
    "kfops.components.resources",
    "kfops.components.transform",
    "kfops.components.scoring",
    "kfops.components.train",
    "kfops.components.train.pyfunc",
    "kfops.components.train.loop",
    "kfops.components.train.gbdt",
    "kfops.components.train.user_module",
)


def write_model_code(directory: str | Path) -> Path:
    """Copy ``RUNTIME_MODULES`` into ``directory/kfops`` (the package layout, only those files); return that
    folder, for ``code_paths``."""
    root = Path(directory) / "kfops"
    for name in RUNTIME_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"model code: cannot find module {name}")
        relative = Path(*name.split("."))
        origin = Path(spec.origin)
        if spec.submodule_search_locations:  # a package: its __init__ and, below kfops.components, every module
            target = root.parent / relative
            target.mkdir(parents=True, exist_ok=True)
            whole = name not in ("kfops", "kfops.components", "kfops.components.train")
            files = sorted(origin.parent.glob("*.py")) if whole else [origin]
            for source in files:
                shutil.copyfile(source, target / source.name)
        else:
            target = root.parent / relative.with_suffix(".py")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target)
    return root
