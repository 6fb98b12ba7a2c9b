"""The imported family's scoring of models trained elsewhere: classes placed by name, labels-only pyfuncs, values,
and a signature's types; each failure names what does not fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfops.components.contracts import ColumnSpec, FeatureSpec, KfopsError
from kfops.components.train.imported import scores, typed_frame


def spec_of(task: str, classes=()) -> FeatureSpec:
    columns = [ColumnSpec("x", "numeric"), ColumnSpec("n", "numeric")]
    positive, negative = ("yes", "no") if task == "binary" else ("", "")
    return FeatureSpec(target="t", positive_class=positive, negative_class=negative, columns=columns, task=task,
                       classes=list(classes))  # fmt: skip


def frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=n), "n": rng.integers(0, 5, n).astype(float)})


def test_a_multiclass_models_columns_are_placed_by_class_name():
    from sklearn.linear_model import LogisticRegression

    rows = frame()
    labels = np.where(rows["x"] > 0.5, "high", np.where(rows["x"] < -0.5, "low", "mid"))
    model = LogisticRegression().fit(rows, labels)  # classes_ sorted: high, low, mid
    spec = spec_of("multiclass", ["low", "mid", "high"])  # the data's order differs
    answer = scores("native", model, rows, spec, None)
    proba = model.predict_proba(rows)
    assert np.allclose(answer[:, 0], proba[:, 1]) and np.allclose(answer[:, 2], proba[:, 0])
    with pytest.raises(KfopsError, match=r"the model's classes \['high'\] are not classes of the data"):
        scores("native", model, rows, spec_of("multiclass", ["low", "mid", "other"]), None)


def test_a_pyfunc_that_answers_labels_gives_hard_probabilities_and_a_regression_its_values():
    class Labels:  # a pyfunc's predict: one label per row
        def predict(self, rows):
            return pd.Series(np.where(rows["x"] > 0, "yes", "no"))

    rows = frame()
    binary = scores("pyfunc", Labels(), rows, spec_of("binary"), None)
    assert set(binary) == {0.0, 1.0} and np.array_equal(binary == 1.0, rows["x"].to_numpy() > 0)

    class Named:  # a pyfunc's predict: one probability column per class, by name
        def predict(self, rows):
            return pd.DataFrame({"probability_no": 1 - rows["x"].abs() / 10, "probability_yes": rows["x"].abs() / 10})

    assert np.allclose(scores("pyfunc", Named(), rows, spec_of("binary"), None), rows["x"].abs() / 10)

    from sklearn.linear_model import Ridge

    target = 3 * rows["x"] + 1
    ridge = Ridge(alpha=1e-6).fit(rows, target)
    assert np.allclose(scores("native", ridge, rows, spec_of("regression"), None), target, atol=1e-3)


def test_the_signature_types_the_rows_and_refuses_what_it_cannot_take():
    rows = frame().assign(n=[1.0, 2.0, 3.0] * 20)
    typed = typed_frame(rows, {"x": "double", "n": "long"})
    assert typed["n"].dtype == "int64" and typed["x"].dtype == "float64"
    with pytest.raises(KfopsError, match=r"column 'n' must be whole numbers for the model \(signature long\)"):
        typed_frame(rows.assign(n=1.5), {"x": "double", "n": "long"})
    with pytest.raises(KfopsError, match="the model's input column 'z' is not among the features"):
        typed_frame(rows, {"z": "double"})


def test_an_import_from_a_source_nobody_configured_needs_trust(tmp_path, capsys):
    from kfops.cli import main
    from kfops.components.train.imported import check_trusted_source

    for trusted in ("models:/churn/3", "models:/churn@champion", "runs:/abc/model", str(tmp_path), "s3://kfops/m/1"):
        check_trusted_source(trusted, "s3://kfops", trust=False)
    for foreign in ("s3://someone-else/model", "s3://kfops-other/model", "https://example.com/model.tar"):
        with pytest.raises(KfopsError, match=r"pass --trust"):
            check_trusted_source(foreign, "s3://kfops", trust=False)
        check_trusted_source(foreign, "s3://kfops", trust=True)
    # Refused before anything is fetched or loaded, by both commands, naming the URI and the store.
    data = tmp_path / "ref.csv"
    frame().assign(t=["yes", "no"] * 30).to_csv(data, index=False)
    common = ["--target", "t", "--workspace", str(tmp_path / "ws")]
    assert main(["models", "import", "--model-uri", "s3://elsewhere/m", "--reference-data", str(data), *common]) == 2
    err = capsys.readouterr().err
    assert "s3://elsewhere/m is outside the sources kfops trusts" in err and "--trust" in err
    assert main(["run", "--data", str(data), "--imported-model", "s3://elsewhere/m", *common]) == 2
    assert "s3://elsewhere/m is outside the sources kfops trusts" in capsys.readouterr().err
