"""KFP wrappers for ingest: an uncached step that versions the data and a cached step that splits it.

The version step always runs, so changed data is always noticed; it hands only the sha256 on, so the split
and everything after it hit the KFP cache exactly when the data version and parameters are the same.
"""

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from kfops.components.kfp_support import component_op


def version_data(
    data_uri: str,
    data_version: str,
    artifact_store: str,
    target: str,
    numeric_features: list,
    categorical_features: list,
    drop_columns: list,
    time_column: str,
    positive_class: str,
    task: str,
    expectation_suite: str,
) -> NamedTuple(
    "VersionOutputs", [("sha256", str), ("schema_json", str), ("rows", int), ("source", str), ("suite_sha256", str)]
):
    """Read and check the data (local path or s3:// URI), snapshot it content-addressed, return its sha256.

    The expectation suite's sha256 is returned too, so the cached validation step reruns when the suite
    file changes even though its path does not.

    Returns:
        sha256: sha256 of the data snapshot.
        schema_json: The data's schema (columns, kinds, task) as JSON.
        rows: Rows in the data.
        source: Where the data was read from.
        suite_sha256: sha256 of the expectation suite's file; empty without one.
    """
    import hashlib
    from collections import namedtuple

    from kfops.components import storage
    from kfops.components.contracts import KfopsError, schema_to_json
    from kfops.components.ingest.logic import version_data

    version, schema = version_data(
        data_uri=data_uri,
        store=artifact_store,
        target=target,
        data_version=data_version,
        numeric=numeric_features,
        categorical=categorical_features,
        drop=drop_columns,
        time_column=time_column,
        positive_class=positive_class,
        task=task,
    )
    print(f"data version {version.sha256} ({version.rows} rows) from {version.source} at {version.uri}")
    print(f"task: {schema.task} (target '{schema.target}')")
    suite_sha256 = ""
    if expectation_suite:
        try:
            suite_sha256 = hashlib.sha256(storage.read_bytes(expectation_suite)).hexdigest()
        except FileNotFoundError as err:
            raise KfopsError(f"expectation suite {expectation_suite} does not exist") from err
    outputs = namedtuple("VersionOutputs", ["sha256", "schema_json", "rows", "source", "suite_sha256"])
    return outputs(version.sha256, schema_to_json(schema), version.rows, version.source, suite_sha256)


def split_data(
    data_sha256: str,
    artifact_store: str,
    target: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    time_column: str,
    split_by_time: bool,
    train: Output[Dataset],
    validation: Output[Dataset],
    test: Output[Dataset],
):
    """Split the stored snapshot into train/validation/test Parquet files (stratified, or by time).

    Args:
        seed: Seed of the random split.

    Returns:
        train: The training split (Parquet).
        validation: The validation split (Parquet).
        test: The test split (Parquet).
    """
    from kfops.components.contracts import SplitConfig
    from kfops.components.datasets import read_snapshot
    from kfops.components.ingest.logic import split_frame, write_split

    frame, version = read_snapshot(artifact_store, data_sha256)
    config = SplitConfig(
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=int(seed),
        time_column=time_column,
        by_time=split_by_time,
    )
    splits = split_frame(frame, target, config)
    for name, artifact in (("train", train), ("validation", validation), ("test", test)):
        part = splits[name]
        write_split(part, artifact.path)
        artifact.metadata.update(
            {
                "split": name,
                "rows": len(part),
                "columns": len(part.columns),
                "sha256": data_sha256,
                "source": version.source,
                "snapshot": version.uri,
            }
        )


version_data_op = component_op(version_data)
split_data_op = component_op(split_data)
