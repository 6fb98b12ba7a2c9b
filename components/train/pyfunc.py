"""The one model artifact: an MLflow pyfunc holding the torch module and the feature spec.

``predict`` takes a DataFrame of raw feature rows (the columns of the training data, any extra columns
ignored) and returns one row per input, by the feature spec's task: a binary classifier's ``prediction`` (the
class label as it appeared in the training data) and ``probability`` (of the positive class); a multiclass
one's ``prediction``, ``probability`` (of the predicted class) and ``probability_<class>`` for every class; a
regression's ``prediction`` (the value, in the target's units). Serving, batch prediction, evaluation and deployment all
load this artifact, so every one of them transforms rows with the same code as training.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc

# the contracts are standard library only: imported once here, not on every scored batch
from kfops.components.contracts import PROBABILITY_PREFIX, TASK_MULTICLASS, TASK_REGRESSION

# The model folder's format: network.json records it (a folder without the field is format 1, as 0.1.0 wrote);
# a folder of a newer format is refused with a message instead of loading wrongly.
MODEL_FORMAT_VERSION = 1
NETWORK_FILE = "network.pt"
NETWORK_CONFIG_FILE = "network.json"
FEATURE_SPEC_FILE = "feature_spec.json"


def read_model_config(context, key: str) -> dict:
    """The model folder's config file ``context.artifacts[key]`` (JSON); a KfopsError when its format is newer
    than this kfops reads (a folder without the field is format 1, as 0.1.0 wrote)."""
    from kfops.components.contracts import KfopsError

    config = json.loads(Path(context.artifacts[key]).read_text())
    version = int(config.get("format_version", 1))
    if version > MODEL_FORMAT_VERSION:
        raise KfopsError(
            f"model format {version} ({context.artifacts[key]}) is newer than this kfops reads "
            f"(up to {MODEL_FORMAT_VERSION}): upgrade kfops to load it"
        )
    return config


def write_model_config(path: Path, family: str, **fields) -> Path:
    """A family's config file beside its fitted model, with the model format's version (``read_model_config``
    reads it back)."""
    path.write_text(json.dumps({"format_version": MODEL_FORMAT_VERSION, "family": family, **fields}, indent=2))
    return path


def _pickle_to(path: Path, obj) -> Path:
    import pickle

    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def save_network(
    directory: str | Path,
    model,
    input_width: int,
    hidden_sizes: list[int],
    dropout: float,
    threshold: float = 0.5,
    outputs: int = 1,
) -> tuple[Path, Path]:
    """Write the torch weights and the architecture they need; return both paths."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / NETWORK_FILE
    torch.save(model.state_dict(), weights)
    config = directory / NETWORK_CONFIG_FILE
    config.write_text(
        json.dumps(
            {
                "format_version": MODEL_FORMAT_VERSION,
                "input_width": input_width,
                "hidden_sizes": list(hidden_sizes),
                "dropout": dropout,
                "threshold": threshold,
                "outputs": outputs,
            },
            indent=2,
        )
    )
    return weights, config


class TabularClassifier(mlflow.pyfunc.PythonModel):
    """Raw rows in, the task's answer out (class and probabilities, or a value). The class keeps its name, which
    models already registered pickle a reference to."""

    def load_context(self, context) -> None:
        import torch

        from kfops.components.contracts import FeatureSpec
        from kfops.components.resources import cpu_limit
        from kfops.components.train.loop import build_mlp

        self.spec = FeatureSpec.load(context.artifacts["feature_spec"])
        config = read_model_config(context, "network_config")
        self.threshold = float(config.get("threshold", 0.5))
        network = build_mlp(
            config["input_width"], config["hidden_sizes"], config["dropout"], int(config.get("outputs", 1))
        )
        network.load_state_dict(torch.load(context.artifacts["network"], map_location="cpu", weights_only=True))
        network.eval()
        self.network = network
        # Small requests are fastest on few threads; never more than the container may use.
        torch.set_num_threads(min(cpu_limit(), torch.get_num_threads()))

    def predict_proba(self, frame):
        """``score_frame`` of raw rows (a regression's values, despite the name kept for stored models)."""
        return self.score_frame(frame, source="model input")

    # The scoring seam, from raw rows to ``score_matrix``'s answer: a frame (evaluation, batch prediction) or
    # checked columns (serving's small batches). A family that scores raw rows itself (an imported model)
    # overrides these two; the others transform with the feature spec and score the matrix.
    def score_frame(self, frame, source: str = "input"):
        from kfops.components.transform import transform_features

        return self.score_matrix(transform_features(self.spec, frame, source=source))

    def score_columns(self, columns: dict, rows: int):
        from kfops.components.transform import transform_columns

        return self.score_matrix(transform_columns(self.spec, columns, rows))

    def score_matrix(self, features):
        """The network's answer (float64) for an already transformed float32 feature matrix, by task: the
        positive-class probability (binary), each class's probability (multiclass: rows of k), the prediction in
        the target's units (regression)."""
        import torch

        with torch.inference_mode():
            logits = self.network(torch.from_numpy(features)).squeeze(-1)
            if self.spec.task == TASK_MULTICLASS:
                return torch.softmax(logits.reshape(len(features), -1), dim=-1).numpy().astype("float64")
            if self.spec.task == TASK_REGRESSION:
                values = logits.numpy().astype("float64")
                return values * self.spec.target_std + self.spec.target_mean
            return torch.sigmoid(logits).numpy().astype("float64")

    def labels(self, probability):
        """The predicted class per row (object array of labels): at the model's decision threshold (binary), the
        most probable class (multiclass)."""
        import numpy as np

        if self.spec.task == TASK_MULTICLASS:
            return np.asarray(self.spec.labels, dtype=object)[np.argmax(probability, axis=1)]
        return np.where(probability >= self.threshold, self.spec.positive_class, self.spec.negative_class).astype(
            object
        )

    def outputs(self, scores) -> dict:
        """The columns ``predict`` answers with, from ``score_matrix``'s scores (serving builds its answers from
        these too)."""
        if self.spec.task == TASK_REGRESSION:
            return {"prediction": scores}
        if self.spec.task == TASK_MULTICLASS:
            out = {"prediction": self.labels(scores), "probability": scores.max(axis=1)}
            out.update({PROBABILITY_PREFIX + label: scores[:, i] for i, label in enumerate(self.spec.labels)})
            return out
        return {"prediction": self.labels(scores), "probability": scores}

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return pd.DataFrame(self.outputs(self.predict_proba(model_input)))


# ------------------------------------------------------------------------------------------------ gbdt
ESTIMATOR_FILE = "estimator.pkl"
TREES_CONFIG_FILE = "trees.json"


def save_trees(directory: str | Path, estimator, threshold: float = 0.5, outputs: int = 1) -> tuple[Path, Path]:
    """Write the fitted scikit-learn estimator (pickled, as MLflow's sklearn flavour does) and what loading it
    needs; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = _pickle_to(directory / ESTIMATOR_FILE, estimator)
    config = write_model_config(
        directory / TREES_CONFIG_FILE, "gbdt", estimator=type(estimator).__name__, threshold=threshold, outputs=outputs
    )
    return weights, config


class TreeModel(TabularClassifier):
    """The gbdt family in the same format: the feature spec's transform, then the fitted HistGradientBoosting.
    Everything but loading and scoring the matrix is TabularClassifier's, so serving, batch prediction and
    evaluation use it unchanged."""

    def load_context(self, context) -> None:
        import pickle

        from kfops.components.contracts import FeatureSpec

        self.spec = FeatureSpec.load(context.artifacts["feature_spec"])
        config = read_model_config(context, "trees_config")
        self.threshold = float(config.get("threshold", 0.5))
        self.width = int(config.get("outputs", 1))
        # Unpickling runs code, as loading any MLflow model does: load models only from a registry or folder you trust.
        with open(context.artifacts["estimator"], "rb") as fh:
            self.estimator = pickle.load(fh)

    def score_matrix(self, features):
        from kfops.components.train.gbdt import class_scores

        scores = class_scores(self.estimator, features, self.spec.task, self.width)
        if self.spec.task == TASK_REGRESSION:
            return scores * self.spec.target_std + self.spec.target_mean
        return scores


# ------------------------------------------------------------------------------------------------ the user's module
MODULE_CONFIG_FILE = "module.json"
FITTED_FILE = "fitted.pkl"


def save_module_model(directory: str | Path, fitted, module_path: str | Path, threshold: float = 0.5) -> dict[str, str]:
    """Write what the user's ``train()`` returned (pickled), a copy of the module's file, and what loading them
    needs; return the artifacts (name -> path)."""
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module_copy = directory / Path(module_path).name
    shutil.copyfile(module_path, module_copy)
    fitted_path = _pickle_to(directory / FITTED_FILE, fitted)
    config = write_model_config(
        directory / MODULE_CONFIG_FILE,
        "module",
        module_file=module_copy.name,
        fitted=type(fitted).__module__ + "." + type(fitted).__qualname__,
        threshold=threshold,
    )
    return {"fitted": str(fitted_path), "module_file": str(module_copy), "module_config": str(config)}


class ModuleModel(TabularClassifier):
    """The user's own model in the same format: the feature spec's transform, then what their module's
    ``train()`` returned (see ``train/user_module.py``). The module's file travels in the model and is imported
    before unpickling, so the classes it defines load wherever the model does."""

    def load_context(self, context) -> None:
        import pickle

        from kfops.components.contracts import FeatureSpec
        from kfops.components.train.user_module import load_module

        self.spec = FeatureSpec.load(context.artifacts["feature_spec"])
        config = read_model_config(context, "module_config")
        self.threshold = float(config.get("threshold", 0.5))
        load_module(context.artifacts["module_file"])
        # Unpickling runs code, as loading any MLflow model does: load models only from a registry or folder you trust.
        with open(context.artifacts["fitted"], "rb") as fh:
            self.fitted = pickle.load(fh)

    def score_matrix(self, features):
        from kfops.components.train.user_module import module_scores

        return module_scores(self.fitted, features, self.spec)


# ------------------------------------------------------------------------------------------------ imported
IMPORTED_CONFIG_FILE = "imported.json"


def save_imported(directory: str | Path, model_dir: str | Path, source: str, how: str, columns, threshold: float):
    """The imported model's folder (copied whole) and what scoring it needs; the artifacts (name -> path)."""
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inner = directory / "imported_model"
    shutil.copytree(model_dir, inner)
    config = write_model_config(
        directory / IMPORTED_CONFIG_FILE,
        "imported",
        source=source,
        scores_with=how,
        signature_columns=columns,
        threshold=threshold,
    )
    return {"imported_model": str(inner), "imported_config": str(config)}


class ImportedModel(TabularClassifier):
    """A model trained elsewhere in the same format: the original MLflow model inside, fed the feature spec's
    raw columns (typed as its signature wants), answering in the task's terms (``train/imported.py``)."""

    def load_context(self, context) -> None:
        from kfops.components.contracts import FeatureSpec
        from kfops.components.train.imported import load

        self.spec = FeatureSpec.load(context.artifacts["feature_spec"])
        config = read_model_config(context, "imported_config")
        self.threshold = float(config.get("threshold", 0.5))
        self.columns = config.get("signature_columns")
        self.how, self.model = load(context.artifacts["imported_model"])

    def score_frame(self, frame, source: str = "input"):
        from kfops.components.train.imported import scores
        from kfops.components.transform import model_input_frame

        return scores(self.how, self.model, model_input_frame(self.spec, frame, source=source), self.spec, self.columns)

    def score_columns(self, columns: dict, rows: int):
        import pandas as pd

        return self.score_frame(pd.DataFrame({name: columns[name] for name in self.spec.feature_names}))

    def score_matrix(self, features):
        from kfops.components.contracts import KfopsError

        raise KfopsError("an imported model scores raw rows (score_frame), not the feature spec's matrix")
