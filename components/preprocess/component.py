"""KFP wrapper for preprocess: fit the feature spec on train, transform every split."""

from kfp.dsl import Artifact, Dataset, Input, Output

from kfops.components.kfp_support import component_op


def preprocess(
    train: Input[Dataset],
    validation: Input[Dataset],
    test: Input[Dataset],
    schema_json: str,
    data_sha256: str,
    max_categories: int,
    min_frequency: int,
    feature_spec: Output[Artifact],
    train_features: Output[Dataset],
    validation_features: Output[Dataset],
    test_features: Output[Dataset],
):
    """Fit the transform on the training split only; write the FeatureSpec JSON and float32 matrices.

    Returns:
        feature_spec: The fitted feature transform (FeatureSpec JSON).
        train_features: The training split, transformed.
        validation_features: The validation split, transformed.
        test_features: The test split, transformed.
    """
    import pandas as pd

    from kfops.components.contracts import schema_from_json
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.transform import encode_labels, save_matrix, transform_features

    schema = schema_from_json(schema_json)
    frames = {
        name: pd.read_parquet(a.path) for name, a in (("train", train), ("validation", validation), ("test", test))
    }
    spec = fit_feature_spec(
        frames["train"],
        schema.target,
        schema.numeric,
        schema.categorical,
        schema.positive_class,
        schema.negative_class,
        dropped=schema.dropped,
        data_sha256=data_sha256,
        max_categories=int(max_categories),
        min_frequency=int(min_frequency),
        task=schema.task,
        classes=schema.classes,
    )
    spec.save(feature_spec.path)
    feature_spec.metadata.update(
        {
            "features": len(spec.columns),
            "input_width": spec.input_width,
            "target": spec.target,
            "positive_class": spec.positive_class,
            "task": spec.task,
            "sha256": data_sha256,
        }
    )
    for name, artifact in (("train", train_features), ("validation", validation_features), ("test", test_features)):
        frame = frames[name]
        features = transform_features(spec, frame, source=f"{name} split")
        save_matrix(artifact.path, features, encode_labels(spec, frame[spec.target], source=f"{name} split"))
        artifact.metadata.update(
            {"split": name, "rows": len(frame), "columns": int(features.shape[1]), "sha256": data_sha256}
        )


preprocess_op = component_op(preprocess)
