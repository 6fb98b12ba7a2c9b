"""A new local MLflow store copied from the cached template is the store MLflow itself would have created."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from kfops.components import sqlite_store
from kfops.components.tracking import set_tracking

# Written when a row is inserted: equal only by chance between two stores made at different moments.
CLOCK_COLUMNS = {"creation_time", "last_update_time"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One template for the module, made by the first test that needs it (MLflow's migrations run once)."""
    return tmp_path_factory.mktemp("kfops-cache")


@pytest.fixture
def cached(cache, monkeypatch) -> Path:
    monkeypatch.setenv("KFOPS_CACHE_DIR", str(cache))
    return cache


def statement_lines(sql: str | None) -> tuple[str, ...]:
    """A CREATE statement's lines in a fixed order: MLflow's own migrations write a table's CHECK constraints in an
    order that varies from one creation to the next (alembic's batch mode rebuilds tables from a set)."""
    return tuple(sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))


def contents(path: Path) -> dict:
    """Every table's, index's and trigger's SQL, and every table's rows, clock columns left out."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        schema = sorted(
            (kind, name, table, statement_lines(sql))
            for kind, name, table, sql in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
        )
        rows = {}
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            cursor = db.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            rows[table] = sorted(
                (tuple(v for n, v in zip(names, row, strict=True) if n not in CLOCK_COLUMNS) for row in cursor),
                key=str,
            )
    return {"schema": schema, "rows": rows}


def open_with_mlflow(uri: str):
    """What a step does first: open the store through MLflow's client and read it."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True), mlflow.MlflowClient().get_experiment("0")


def test_a_copied_store_is_the_store_mlflow_creates(cached, tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    by_mlflow = tmp_path / "by-mlflow" / "mlflow.db"
    by_mlflow.parent.mkdir()
    open_with_mlflow(f"sqlite:///{by_mlflow}")
    copied = tmp_path / "copied" / "mlflow.db"

    assert sqlite_store.ensure_store(f"sqlite:///{copied}") is True
    runs, default_experiment = open_with_mlflow(f"sqlite:///{copied}")

    assert runs.empty
    assert default_experiment.name == "Default"
    assert contents(copied) == contents(by_mlflow)
    with contextlib.closing(sqlite3.connect(copied)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(_get_latest_schema_revision(),)]
    SqlAlchemyStore._engine_map.pop(f"sqlite:///{by_mlflow}", None).dispose()
    SqlAlchemyStore._engine_map.pop(f"sqlite:///{copied}", None).dispose()


def test_the_template_is_made_once_and_reused(cached, tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    assert sqlite_store.ensure_store(f"sqlite:///{tmp_path / 'first.db'}") is True
    template = sqlite_store.template_path()
    assert template.parent.parent == cached and template.is_file()
    made = template.stat().st_mtime_ns

    def no_migrations(*_args, **_kwargs):
        raise AssertionError("the migrations ran again")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    assert sqlite_store.ensure_store(f"sqlite:///{tmp_path / 'second.db'}") is True
    assert template.stat().st_mtime_ns == made
    assert sqlite_store.template_key() in template.name


def test_set_tracking_creates_a_missing_store_from_the_template(cached, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    set_tracking(uri)
    assert (tmp_path / "ws" / "mlflow.db").is_file()
    experiment = mlflow.create_experiment("kfops-training", artifact_location=str(tmp_path / "art"))
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("loss", 0.5)
    assert mlflow.get_run(run.info.run_id).data.metrics == {"loss": 0.5}


def test_an_existing_store_is_never_touched(cached, tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"someone else's file")
    assert sqlite_store.ensure_store(f"sqlite:///{path}") is False
    assert path.read_bytes() == b"someone else's file"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:///:memory:", "postgresql://u@h/db", "sqlite://"])
def test_other_stores_are_left_to_mlflow(cached, uri):
    assert sqlite_store.sqlite_path(uri) is None
    assert sqlite_store.ensure_store(uri) is False


def test_a_failed_template_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    """The cache's folder is a file here: nothing can be made under it, and no store is half-written."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("KFOPS_CACHE_DIR", str(blocker))
    target = tmp_path / "ws" / "mlflow.db"
    assert sqlite_store.ensure_store(f"sqlite:///{target}") is False
    assert not target.exists()  # for MLflow to create when it first opens it, as it always did


def test_the_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("KFOPS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sqlite_store.cache_dir() == tmp_path / "kfops"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert sqlite_store.cache_dir() == Path.home() / ".cache" / "kfops"
