"""Batch prediction with a real registered model: the pyfunc model's own answers row for row, shards that cover
every row exactly once, retries that overwrite, clear errors, and S3 (moto) in and out."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfops.components import storage
from kfops.components.batch_predict.logic import predict_batch, score_planned_shard, summarize_batch
from kfops.components.batch_predict.plan import plan_batch, plan_shards, scan_inputs
from kfops.components.batch_predict.reading import _chunks
from kfops.components.batch_predict.records import MANIFEST_FILE, PLAN_FILE, BatchPlan, Shard
from kfops.components.contracts import KfopsError
from tests.components.champion import Champion, register_champion


@pytest.fixture(scope="module")
def champion(tmp_path_factory, prepared, fast_config) -> Champion:
    return register_champion(tmp_path_factory.mktemp("batch-champion"), prepared, fast_config)


def read_output(folder: str | Path) -> pd.DataFrame:
    return pd.read_parquet(folder).reset_index(drop=True)


def assert_matches_pyfunc(champion: Champion, out: pd.DataFrame, rows: pd.DataFrame, ids: list[str]) -> None:
    """``out`` holds one prediction per id of ``ids`` (rows in that order), equal to the pyfunc model's."""
    assert len(out) == len(ids) and out["request_id"].is_unique
    indexed = out.set_index("request_id").loc[ids].reset_index()
    expected = champion.expected(rows)
    assert indexed["prediction"].tolist() == expected["prediction"].astype(str).tolist()
    np.testing.assert_allclose(indexed["probability"], expected["probability"], rtol=1e-6, atol=1e-7)
    assert set(out["model"]) == {champion.name} and set(out["model_version"]) == {champion.version}


# ------------------------------------------------------------------------------------------------ correctness
def test_parquet_folder_scores_like_the_pyfunc_model_row_for_row(tmp_path, champion):
    rows = champion.rows
    folder = tmp_path / "in"
    (folder / "day=2").mkdir(parents=True)
    # Two files, small row groups: shards cut at row-group boundaries and across files.
    pq.write_table(pa.Table.from_pandas(rows.iloc[:250], preserve_index=False), folder / "a.parquet", row_group_size=60)
    pq.write_table(
        pa.Table.from_pandas(rows.iloc[250:], preserve_index=False), folder / "day=2" / "b.parquet", row_group_size=45
    )
    (folder / "_SUCCESS").write_text("")  # marker files are not input
    seen_rows: list[int] = []
    plans: list[BatchPlan] = []
    manifest = predict_batch(
        str(folder),
        str(tmp_path / "out"),
        champion.ref,
        tracking_uri=champion.tracking_uri,
        shards=3,
        chunk_rows=50,
        on_plan=plans.append,
        on_rows=seen_rows.append,
    )
    out = read_output(tmp_path / "out")  # the _plan/_manifest/_shards files are invisible to readers
    ids = [f"a.parquet:{i}" for i in range(250)] + [f"day=2/b.parquet:{i}" for i in range(len(rows) - 250)]
    assert_matches_pyfunc(champion, out, rows, ids)

    plan = plans[0]
    assert plan.model_ref == f"models:/{champion.name}/{champion.version}"  # the alias pinned once
    assert len(plan.shards) == 3 and sum(s.rows for s in plan.shards) == len(rows)
    assert sum(seen_rows) == len(rows) and max(seen_rows) <= 50
    assert manifest["total_rows"] == len(rows) == manifest["planned_rows"]
    assert manifest["model_version"] == champion.version and manifest["stale_files"] == []
    assert [Path(f).name for f in manifest["files"]] == [f"part-0000{i}-of-00003.parquet" for i in range(3)]
    assert [s["rows"] for s in manifest["shards"]] == [s.rows for s in plan.shards]
    written = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert written["files"] == manifest["files"] and (tmp_path / "out" / PLAN_FILE).exists()


def test_jsonl_and_csv_with_id_column_and_passthrough(tmp_path, champion):
    rows = champion.rows.iloc[:300].reset_index(drop=True)
    folder = tmp_path / "in"
    folder.mkdir()
    lines = rows.iloc[:150].to_json(orient="records", lines=True).splitlines()  # NaN as null
    lines.insert(40, "")  # a blank line is skipped
    (folder / "a.jsonl").write_text("\n".join(lines))  # and no newline at the end
    rows.iloc[150:].to_csv(folder / "b.csv", index=False)
    manifest = predict_batch(
        str(folder),
        str(tmp_path / "out"),
        champion.ref,
        tracking_uri=champion.tracking_uri,
        shard_rows=70,
        id_column="transaction_id",
        passthrough=["customer_id", "channel"],
        output_format="jsonl",
        chunk_rows=32,
    )
    text = "".join(Path(f).read_text() for f in manifest["files"])
    out = pd.DataFrame([json.loads(line) for line in text.splitlines()])  # as written: labels and ids are text
    ids = rows["transaction_id"].astype(str).tolist()
    assert_matches_pyfunc(champion, out, rows, ids)
    by_id = out.set_index("request_id").loc[ids]
    assert by_id["customer_id"].astype(str).tolist() == rows["customer_id"].astype(str).tolist()
    assert by_id["channel"].tolist() == rows["channel"].tolist()
    assert manifest["total_rows"] == 300 and manifest["planned_rows"] == 301  # the blank line was planned
    assert len(manifest["files"]) >= 4  # 301 lines at 70 a shard


def test_parquet_passthrough_keeps_types_and_a_model_folder_works(tmp_path, champion):
    import mlflow

    rows = champion.rows.iloc[:120].reset_index(drop=True)
    rows.to_parquet(tmp_path / "in.parquet", index=False)
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{champion.name}/{champion.version}", tracking_uri=champion.tracking_uri
    )
    manifest = predict_batch(
        str(tmp_path / "in.parquet"), str(tmp_path / "out"), folder, passthrough=["event_time", "customer_id"]
    )
    out = read_output(tmp_path / "out")
    assert manifest["model_ref"] == folder and out["request_id"].tolist() == [f"in.parquet:{i}" for i in range(120)]
    schema, source = pq.read_schema(manifest["files"][0]), pq.read_schema(tmp_path / "in.parquet")
    assert schema.field("customer_id").type == pa.int64()
    assert schema.field("event_time").type == source.field("event_time").type  # a timestamp stays one
    assert out["customer_id"].tolist() == rows["customer_id"].tolist()


# ------------------------------------------------------------------------------------------------ planning
def _write_inputs(folder: Path, rng: random.Random) -> list[tuple[str, int]]:
    """Random files whose rows carry their own global position in column ``i``; returns (name, rows)."""
    folder.mkdir(parents=True)
    made, position = [], 0
    for n in range(rng.randint(1, 4)):
        rows = rng.choice([0, 1, 2, rng.randint(3, 40), rng.randint(41, 400)])
        values = list(range(position, position + rows))
        kind = rng.choice(["parquet", "jsonl", "csv", "quoted"])
        name = f"f{n}.{'csv' if kind == 'quoted' else kind}"
        if kind == "parquet":
            table = pa.table({"i": pa.array(values, pa.int64()), "x": pa.array([1.5] * rows)})
            pq.write_table(table, folder / name, row_group_size=rng.choice([1, 7, 64, 1000]))
        elif kind == "jsonl":
            ending = rng.choice(["\n", ""]) if rows else ""
            (folder / name).write_text("\n".join(json.dumps({"i": v, "x": 1.5}) for v in values) + ending)
        elif kind == "csv":
            (folder / name).write_text("i,x\n" + "".join(f"{v},1.5\n" for v in values))
        else:  # a quoted field with a newline: never cut inside this file
            (folder / name).write_text("i,x,note\n" + "".join(f'{v},1.5,"a\nb"\n' for v in values))
        made.append((name, rows))
        position += rows
    return made


def test_shards_cover_every_row_exactly_once_for_many_layouts(tmp_path):
    rng = random.Random(1234)
    for case in range(25):
        folder = tmp_path / f"case{case}"
        made = _write_inputs(folder, rng)
        total = sum(rows for _, rows in made)
        files = scan_inputs(str(folder))
        assert [f.rows for f in files] == [rows for _, rows in made]
        if total == 0:
            with pytest.raises(KfopsError, match="has no rows"):
                plan_shards(files, shards=2)
            continue
        wanted = rng.randint(1, 9)
        by_count = rng.random() < 0.5
        shards = plan_shards(files, shards=wanted) if by_count else plan_shards(files, shard_rows=wanted * 10)
        assert all(s.rows > 0 for s in shards) and sum(s.rows for s in shards) == total
        assert [s.index for s in shards] == list(range(len(shards))) and {s.count for s in shards} == {len(shards)}
        if by_count:
            assert len(shards) <= wanted
        # Read every piece back (through a JSON round trip, as a ParallelFor item travels): the rows seen, in
        # order, are each row exactly once.
        seen: list[int] = []
        for shard in shards:
            travelled = Shard.from_dict(json.loads(json.dumps(shard.to_dict())))
            for piece in travelled.pieces:
                for chunk in _chunks(piece, ["i"], [], chunk_rows=rng.choice([1, 5, 1000])):
                    seen.extend(chunk.frame["i"].astype(int).tolist())
        assert seen == list(range(total)), f"case {case}: {made}"


def test_planning_is_balanced_and_never_cuts_a_quoted_csv(tmp_path):
    pq.write_table(pa.table({"i": list(range(1000))}), tmp_path / "big.parquet", row_group_size=1000)
    shards = plan_shards(str(tmp_path / "big.parquet"), shards=4)
    assert [s.rows for s in shards] == [250] * 4  # one row group larger than a shard is cut inside
    assert all(p.row_groups == [0, 1] for s in shards for p in s.pieces)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "quoted.csv").write_text("i,note\n" + "".join(f'{v},"x\ny"\n' for v in range(100)))
    only = plan_shards(str(tmp_path / "q"), shards=4)
    assert len(only) == 1 and only[0].rows == 100
    many = plan_shards(str(tmp_path / "big.parquet"), shard_rows=300)
    assert [s.rows for s in many] == [250] * 4  # ceil(1000 / 300) shards, balanced


# ------------------------------------------------------------------------------------------------ idempotency
def test_retried_shard_overwrites_and_a_failure_leaves_nothing(tmp_path, champion):
    champion.rows.to_parquet(tmp_path / "in.parquet", index=False, row_group_size=100)
    out = tmp_path / "out"
    plan = plan_batch(str(tmp_path / "in.parquet"), str(out), champion.ref, champion.tracking_uri, shards=3)
    first = score_planned_shard(plan.shards[0], champion.tracking_uri)
    before = pd.read_parquet(first.output)
    again = score_planned_shard(plan.shards[0], champion.tracking_uri)  # a retry: same names, same content
    assert again.output == first.output and pd.read_parquet(again.output).equals(before)

    def crash(n: int) -> None:
        raise RuntimeError("killed mid-shard")

    with pytest.raises(RuntimeError, match="killed"):
        score_planned_shard(plan.shards[1], champion.tracking_uri, on_rows=crash)
    assert sorted(p.name for p in out.iterdir()) == ["_plan.json", "_shards", "part-00000-of-00003.parquet"]
    with pytest.raises(KfopsError, match=r"2 of 3 shard\(s\).*part-00001-of-00003 \(no receipt\)"):
        summarize_batch(str(out))
    for shard in plan.shards[1:]:
        score_planned_shard(shard, champion.tracking_uri)
    manifest = summarize_batch(str(out), expected_shards=3)
    assert manifest["total_rows"] == len(champion.rows) == len(read_output(out))
    with pytest.raises(KfopsError, match="2 shard"):
        summarize_batch(str(out), expected_shards=2)

    # A new plan with another shard count: its own parts; the old ones are named as stale, never counted.
    manifest = predict_batch(str(tmp_path / "in.parquet"), str(out), champion.ref, champion.tracking_uri, shards=2)
    assert manifest["total_rows"] == len(champion.rows) and len(manifest["stale_files"]) == 3
    # A receipt from an older plan does not count for the new one.
    old = plan.shards[0].receipt_uri(str(out))
    new_plan = plan_batch(str(tmp_path / "in.parquet"), str(out), champion.ref, champion.tracking_uri, shards=3)
    assert new_plan.plan_id != plan.plan_id and Path(old).exists()
    with pytest.raises(KfopsError, match="from another plan"):
        summarize_batch(str(out))


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_names_the_file_and_the_column(tmp_path, champion):
    def plan(path, **kwargs):
        return plan_batch(str(path), str(tmp_path / "out"), champion.ref, champion.tracking_uri, **kwargs)

    rows = champion.rows.iloc[:50]
    rows.drop(columns=["amount"]).to_parquet(tmp_path / "no_amount.parquet")
    with pytest.raises(KfopsError, match=r"no_amount\.parquet has no feature column\(s\) \['amount'\]"):
        plan(tmp_path / "no_amount.parquet")
    rows.to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(KfopsError, match=r"ok\.parquet has no requested column\(s\) \['order_id'\]"):
        plan(tmp_path / "ok.parquet", id_column="order_id")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(KfopsError, match=r"cannot read Parquet file .*broken\.parquet"):
        plan(tmp_path / "broken.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KfopsError, match=r"no \.parquet, \.jsonl or \.csv files under"):
        plan(tmp_path / "empty")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(KfopsError, match="has no rows"):
        plan(tmp_path / "empty.jsonl")
    with pytest.raises(KfopsError, match="does not exist"):
        plan(tmp_path / "nowhere.parquet")
    (tmp_path / "data.csv.gz").write_bytes(b"")
    with pytest.raises(KfopsError, match="compressed text"):
        plan(tmp_path / "data.csv.gz")
    with pytest.raises(KfopsError, match="clash with the output columns"):
        plan(tmp_path / "ok.parquet", passthrough=["prediction"])

    text = rows.astype({"amount": object}).copy()
    text.loc[text.index[7], "amount"] = "twelve"
    text.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(KfopsError, match=r"text\.csv row 7: column 'amount' must be numeric, got 'twelve'"):
        predict_batch(str(tmp_path / "text.csv"), str(tmp_path / "out2"), champion.ref, champion.tracking_uri)
    assert not list((tmp_path / "out2").glob("part-*"))  # nothing half-written

    good = rows.iloc[:1].to_json(orient="records", lines=True).strip()
    (tmp_path / "bad.jsonl").write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(KfopsError, match=r"bad\.jsonl line 3 is not valid JSON"):
        predict_batch(str(tmp_path / "bad.jsonl"), str(tmp_path / "out3"), champion.ref, champion.tracking_uri)
    missing_id = rows.copy()
    missing_id["order_id"] = ["o1", None] + [f"o{i}" for i in range(2, len(rows))]
    missing_id.to_parquet(tmp_path / "ids.parquet")
    with pytest.raises(KfopsError, match=r"ids\.parquet row 1: id column 'order_id' is empty"):
        predict_batch(
            str(tmp_path / "ids.parquet"),
            str(tmp_path / "o4"),
            champion.ref,
            champion.tracking_uri,
            id_column="order_id",
        )


# ------------------------------------------------------------------------------------------------ S3
def test_s3_input_and_output(champion, s3_env):
    rows = champion.rows.iloc[:200].reset_index(drop=True)
    storage.write_bytes("s3://batch/in/part-a.parquet", rows.iloc[:120].to_parquet(index=False))
    storage.write_bytes("s3://batch/in/part-b.jsonl", rows.iloc[120:].to_json(orient="records", lines=True).encode())
    manifest = predict_batch(
        "s3://batch/in/", "s3://batch/out/", champion.ref, champion.tracking_uri, shards=3, chunk_rows=40
    )
    assert manifest["output_uri"] == "s3://batch/out" and manifest["total_rows"] == 200
    assert all(f.startswith("s3://batch/out/part-") for f in manifest["files"])
    import io

    out = pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(f))) for f in manifest["files"]], ignore_index=True)
    ids = [f"part-a.parquet:{i}" for i in range(120)] + [f"part-b.jsonl:{i}" for i in range(80)]
    assert_matches_pyfunc(champion, out, rows, ids)
    assert json.loads(storage.read_bytes("s3://batch/out/_manifest.json"))["files"] == manifest["files"]
    listed = [uri for uri, _ in storage.list_files("s3://batch/out")]
    assert listed == manifest["files"]  # _plan, _manifest and _shards/ are hidden from listings
    # A folder named like a file (as Spark writes them) is a folder.
    storage.write_bytes("s3://batch/spark.parquet/part-0.parquet", rows.iloc[:30].to_parquet(index=False))
    (shard,) = plan_shards("s3://batch/spark.parquet", shards=1)
    assert [(p.name, p.rows) for p in shard.pieces] == [("part-0.parquet", 30)]


# ------------------------------------------------------------------------------------------------ CLI
def test_kfops_predict_direct(tmp_path, champion, capsys):
    from kfops.cli import main

    champion.rows.to_parquet(tmp_path / "in.parquet", index=False)
    common = ["--model", champion.ref, "--tracking-uri", champion.tracking_uri, "--input", str(tmp_path / "in.parquet")]
    assert main(["predict", *common, "--output", str(tmp_path / "out"), "--shards", "2", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["mode"] == "direct" and manifest["total_rows"] == len(champion.rows)
    assert manifest["manifest_uri"] == str(tmp_path / "out" / MANIFEST_FILE) and len(manifest["files"]) == 2
    assert main(["predict", *common, "--output", str(tmp_path / "out2")]) == 0
    assert (
        f"{len(champion.rows):,} prediction(s) by {champion.name} version {champion.version}" in capsys.readouterr().out
    )
    assert main(["predict", *common, "--output", str(tmp_path / "o"), "--id-column", "nope"]) == 2
    assert "has no requested column(s) ['nope']" in capsys.readouterr().err
