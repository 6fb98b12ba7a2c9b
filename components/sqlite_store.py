"""A new local MLflow store (sqlite) copied from a migrated empty template instead of migrated from scratch.

MLflow creates a sqlite tracking store by creating its first tables and then running every alembic migration
since (more than 60 scripts): 1.3-3.6 s on 2 cores, paid by every cold ``kfops run`` in a new workspace. The
migrated, empty database is the same every time for one MLflow version and schema head, so it is made once, by
MLflow's own code (``SqlAlchemyStore``), kept in the user's cache (``$XDG_CACHE_HOME/kfops`` or
``~/.cache/kfops``; ``KFOPS_CACHE_DIR`` to move it), keyed by both, and copied into each new store.

The one row MLflow writes into a new store that depends on where it is opened, the Default experiment (id 0, its
artifact location resolved from the opening process's working directory), is taken out of the template: MLflow
adds it the first time it opens the copy, exactly as it does for a store it created. A store that already exists
is never touched; anything that keeps the template from being made or copied (a read-only cache, a private MLflow
function gone in a later release) leaves the store for MLflow to create as it always did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
DEFAULT_EXPERIMENT_ID = 0


def cache_dir() -> Path:
    """Where kfops keeps what it makes once per machine: ``KFOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kfops``, else
    ``~/.cache/kfops``."""
    if os.environ.get("KFOPS_CACHE_DIR"):
        return Path(os.environ["KFOPS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kfops"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store (or an in-memory one)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def template_key() -> str:
    """The MLflow version and its schema head, which together fix what an empty migrated store holds."""
    import mlflow
    from mlflow.store.db.utils import _get_latest_schema_revision

    return f"mlflow-{mlflow.__version__}-{_get_latest_schema_revision()}"


def template_path() -> Path:
    return cache_dir() / "mlflow-store" / f"{template_key()}.db"


def make_template(path: Path) -> Path:
    """Create the empty migrated store at ``path`` with MLflow's own code, less the Default experiment's row."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kfops-store-", dir=path.parent) as folder:
        building = Path(folder) / "mlflow.db"
        uri = f"{SQLITE_PREFIX}{building}"
        store = SqlAlchemyStore(uri, str(Path(folder) / "artifacts"))
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(uri, None)  # a throwaway file: keep no engine on it
        with contextlib.closing(sqlite3.connect(building)) as db, db:
            db.execute("DELETE FROM experiments WHERE experiment_id = ?", (DEFAULT_EXPERIMENT_ID,))
        os.replace(building, path)  # atomic: another process making the same template at once is harmless
    log.info("made the empty MLflow store template %s", path)
    return path


def ensure_store(tracking_uri: str) -> bool:
    """Create the sqlite store ``tracking_uri`` names from the cached template when it does not exist yet; True
    when it was copied. Any other URI, an existing file, or a failure to make or copy the template: False, and
    MLflow creates the store itself when it first opens it."""
    target = sqlite_path(tracking_uri)
    if target is None or target.exists():
        return False
    try:
        template = template_path()
        if not template.is_file():
            make_template(template)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(template, staged)
            os.link(staged, target)  # fails if the store appeared meanwhile: never overwrite one
        finally:
            os.unlink(staged)
    except FileExistsError:
        return False
    except Exception as err:  # an optimisation only: MLflow's own creation is always there to fall back on
        log.warning("could not create %s from a template (%s); MLflow creates it", target, err)
        return False
    return True
