"""The contracts between stages: what one stage writes and the next one reads.

Everything here is a small typed dataclass with a JSON round trip, so a stage can hand it to the next as an
artifact file or as artifact metadata, and serving can read what training wrote. Standard library only
(tests/test_architecture.py holds that).

This module holds the training chain's contracts and the payload log's; beside it, ``delivery`` (``DeploySpec``,
``CanaryThresholds``), ``monitoring`` (``DriftResult``), ``sweep`` (``SweepSpec``) and ``models`` (each model
family's own parameters: ``GbdtConfig``).
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

# 2 added the task (binary, multiclass, regression), the class list and the target's scale; a version-1 spec
# (kfops 0.1.0) is a binary classifier's and loads as one.
FEATURE_SPEC_VERSION = 2

# The learning tasks. A target is one of these; every stage past ingest reads the task from the feature spec.
TASK_BINARY = "binary"
TASK_MULTICLASS = "multiclass"
TASK_REGRESSION = "regression"
TASKS: tuple[str, ...] = (TASK_BINARY, TASK_MULTICLASS, TASK_REGRESSION)
# A multiclass model answers with each class's probability in a column of this prefix ("probability_setosa").
PROBABILITY_PREFIX = "probability_"
MAX_CLASSES = 50  # a classifier's most classes; a numeric target with more distinct values is a regression's

# The evaluation metric names, per task. The gate, sweeps, the CLI and the MLflow logging all use these
# names, so a threshold on "f1" means the same thing everywhere.
BINARY_METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "pr_auc",
    "val_loss",
)
MULTICLASS_METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "log_loss",
    "roc_auc_ovr",
    "val_loss",
)
# smape: the symmetric mean absolute percentage error, 2|y - p| / (|y| + |p|) averaged, a row where both are 0
# counting 0; unlike MAPE it stays finite when the target is 0.
REGRESSION_METRIC_NAMES: tuple[str, ...] = ("rmse", "mae", "r2", "median_ae", "smape", "val_loss")
TASK_METRIC_NAMES: dict[str, tuple[str, ...]] = {
    TASK_BINARY: BINARY_METRIC_NAMES,
    TASK_MULTICLASS: MULTICLASS_METRIC_NAMES,
    TASK_REGRESSION: REGRESSION_METRIC_NAMES,
}
# Every metric name of every task, the binary ones first.
METRIC_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n for names in TASK_METRIC_NAMES.values() for n in names))
LOWER_IS_BETTER = frozenset({"val_loss", "log_loss", "rmse", "mae", "median_ae", "smape"})
# Direction of improvement, for gates and sweeps.
HIGHER_IS_BETTER: dict[str, bool] = {name: name not in LOWER_IS_BETTER for name in METRIC_NAMES}

FeatureKind = Literal["numeric", "categorical"]
AUTO_BALANCE_BELOW = 0.2  # class_weighting "auto" weights the positive class when it is rarer than this
THRESHOLD_OBJECTIVE = re.compile(r"^(fixed|f1|youden|(precision|recall)>=(0?\.\d*[1-9]\d*|1(\.0*)?))$")

# Registry aliases, written down once.
ALIAS_CHALLENGER = "challenger"
ALIAS_CHAMPION = "champion"
ALIAS_PREVIOUS = "previous"


class KfopsError(ValueError):
    """A problem with the user's input or configuration, with a message that says what to fix."""


def fields_from_parameters(
    cls: type, parameters: Mapping[str, Any], renamed: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``{field: value}`` for each field of the dataclass ``cls`` whose parameter is in ``parameters`` (a KFP
    wrapper's ``locals()``, say); a field's parameter has the field's name unless ``renamed`` maps it. A wrapper
    builds its config from its typed parameters this way instead of naming each one twice."""
    renamed = renamed or {}
    names = {f: renamed.get(f, f) for f in cls.__dataclass_fields__}
    return {f: parameters[p] for f, p in names.items() if p in parameters}


@dataclass
class DataVersion:
    """A content-addressed snapshot of a dataset in the artifact store."""

    sha256: str
    uri: str  # where the snapshot lives (local path or s3:// URI)
    source: str  # where the data came from
    rows: int
    columns: list[str]
    dtypes: dict[str, str]
    created_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataVersion:
        return cls(**json.loads(text))


@dataclass
class Schema:
    """Which columns are the target, features (by kind), time and dropped."""

    target: str
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    time_column: str = ""
    positive_class: str = ""
    negative_class: str = ""
    task: str = TASK_BINARY
    classes: list[str] = field(default_factory=list)  # a classifier's target values, sorted

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical


def schema_to_json(schema: Schema) -> str:
    return json.dumps(schema.__dict__, sort_keys=True)


def schema_from_json(text: str) -> Schema:
    return Schema(**json.loads(text))


@dataclass
class SplitConfig:
    """How a snapshot is split into train, validation and test."""

    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    time_column: str = ""
    by_time: bool = False  # newest rows go to validation and test (no look-ahead), else stratified at random

    def check(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise KfopsError(f"split: {name} must be between 0 and 0.5, got {value}")
        if self.validation_fraction + self.test_fraction >= 0.8:
            raise KfopsError(
                "split: validation_fraction + test_fraction must leave at least 20% for training, got "
                f"{self.validation_fraction + self.test_fraction:.2f}"
            )


@dataclass
class ColumnSpec:
    """One input feature as training saw it: kind, fitted statistics and vocabulary."""

    name: str
    kind: FeatureKind
    # numeric
    mean: float = 0.0
    std: float = 1.0
    median: float = 0.0
    min: float = 0.0
    max: float = 0.0
    missing_fraction: float = 0.0
    add_missing_indicator: bool = False
    # categorical
    vocabulary: list[str] = field(default_factory=list)
    frequencies: list[float] = field(default_factory=list)

    @property
    def width(self) -> int:
        """How many model inputs this column becomes."""
        if self.kind == "numeric":
            return 2 if self.add_missing_indicator else 1
        return len(self.vocabulary) + 1  # one-hot plus the unknown bucket


@dataclass
class FeatureSpec:
    """The fitted feature transform: the contract between training and serving."""

    target: str
    positive_class: str
    negative_class: str
    columns: list[ColumnSpec]
    dropped_columns: list[str] = field(default_factory=list)
    # Every other column of the training data (ids, timestamps, entity keys, dropped or undeclared columns): serving
    # accepts them beside the features, keeps them out of the model and writes them to the payload log. Specs
    # written before this field (kfops 0.1.0) load with it empty; ``passthrough_columns`` falls back to dropped.
    non_feature_columns: list[str] = field(default_factory=list)
    data_sha256: str = ""
    train_rows: int = 0
    positive_rate: float = 0.0
    version: int = FEATURE_SPEC_VERSION
    task: str = TASK_BINARY
    # multiclass: the classes in the order of the model's outputs (binary: [negative, positive])
    classes: list[str] = field(default_factory=list)
    # multiclass: each class's share of the training rows, in ``classes`` order (the prior baseline)
    class_shares: list[float] = field(default_factory=list)
    # regression: the training target's mean and standard deviation (the network learns the standardised target)
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def labels(self) -> list[str]:
        """A classifier's classes in the order of its outputs; none for regression."""
        if self.task == TASK_REGRESSION:
            return []
        return self.classes or [self.negative_class, self.positive_class]

    @property
    def output_width(self) -> int:
        """The network's outputs: one logit (binary), one per class (multiclass), one value (regression)."""
        return len(self.labels) if self.task == TASK_MULTICLASS else 1

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def passthrough_columns(self) -> list[str]:
        """The training data's columns that are neither features nor the target, as serving accepts them."""
        features = set(self.feature_names) | {self.target}
        names = self.non_feature_columns or self.dropped_columns
        return [n for n in dict.fromkeys(names) if n not in features]

    @property
    def input_width(self) -> int:
        return sum(c.width for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KfopsError(f"feature spec has no column '{name}'; it has: {', '.join(self.feature_names)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        data = dict(data)
        version = data.get("version", 1)
        if version not in (1, FEATURE_SPEC_VERSION):
            raise KfopsError(
                f"feature spec version {version} is not supported (this kfops reads 1 to {FEATURE_SPEC_VERSION})"
            )
        if data.get("task", TASK_BINARY) not in TASKS:
            raise KfopsError(f"feature spec: task {data['task']!r} is not one of {', '.join(TASKS)}")
        data["version"] = FEATURE_SPEC_VERSION  # version 1 had no task: a binary classifier's, as the defaults say
        data["columns"] = [ColumnSpec(**c) for c in data["columns"]]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise KfopsError(f"cannot read feature spec {path}: {err}") from err


# The model families training fits: the torch MLP, gradient-boosted trees (scikit-learn's HistGradientBoosting), or
# what the user's module's train() returns, or a model trained elsewhere (imported).
MODEL_FAMILY_MLP = "mlp"
MODEL_FAMILY_GBDT = "gbdt"
MODEL_FAMILY_MODULE = "module"  # the user's own training code (model_module)
MODEL_FAMILY_IMPORTED = "imported"  # a model trained elsewhere, brought in from MLflow (imported_model)
MODEL_FAMILIES: tuple[str, ...] = (MODEL_FAMILY_MLP, MODEL_FAMILY_GBDT, MODEL_FAMILY_MODULE, MODEL_FAMILY_IMPORTED)


@dataclass
class TrainConfig:
    """Training parameters: the model family and its parameters. The MLP's (its head follows the feature spec's
    task) are fields here; another family's are ``model_params`` (for gbdt, ``contracts.models.GbdtConfig``).
    Each field but those in ``NOT_PARAMETERS`` is a pipeline parameter (``pipelines/parameters.py`` derives them
    from here) under its own name or the one in ``PARAMETER_NAMES``."""

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.1
    learning_rate: float = 3e-3
    batch_size: int = 512  # at most: small data gets smaller batches, 8 steps an epoch (train.loop)
    epochs: int = 12
    optimizer: str = "adamw"  # adam, adamw or sgd
    weight_decay: float = 1e-4
    # none, balanced (weights positives by the class ratio), or auto: balanced when positives are under
    # AUTO_BALANCE_BELOW of the training rows
    class_weighting: str = "auto"
    early_stopping_patience: int = 3
    seed: int = 42
    device: str = "auto"  # auto, cpu or cuda
    decision_threshold: float = 0.5  # positive-class probability at which the model predicts the positive class
    # How the decision threshold is set: chosen on the validation split for f1 (of the positive class), youden
    # (TPR - FPR), precision>=P or recall>=R; or fixed at decision_threshold.
    threshold_objective: str = "f1"
    cuda_graphs: bool = True  # capture the training step as a CUDA graph on GPU
    model_family: str = MODEL_FAMILY_MLP  # one of MODEL_FAMILIES
    model_params: dict = field(default_factory=dict)  # the family's own parameters (gbdt: GbdtConfig fields)
    model_module: str = ""  # the module family's Python file (local path or s3://): see train/user_module.py
    imported_model: str = ""  # the imported family's MLflow model: models:/..., runs:/..., a folder or s3://

    # field -> its name as a pipeline and component parameter, where the two differ
    PARAMETER_NAMES: ClassVar[dict[str, str]] = {"decision_threshold": "threshold"}
    # fields the pipelines do not take (left at their defaults)
    NOT_PARAMETERS: ClassVar[tuple[str, ...]] = ("cuda_graphs",)

    def check(self) -> None:
        if not self.hidden_sizes or any(int(h) <= 0 for h in self.hidden_sizes):
            raise KfopsError(f"train: hidden_sizes must be positive integers, got {self.hidden_sizes}")
        if not 0.0 <= self.dropout < 1.0:
            raise KfopsError(f"train: dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0:
            raise KfopsError(f"train: learning_rate must be positive, got {self.learning_rate}")
        if self.batch_size <= 0:
            raise KfopsError(f"train: batch_size must be positive, got {self.batch_size}")
        if self.epochs <= 0:
            raise KfopsError(f"train: epochs must be positive, got {self.epochs}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise KfopsError(f"train: optimizer must be adam, adamw or sgd, got '{self.optimizer}'")
        if self.class_weighting not in ("none", "balanced", "auto"):
            raise KfopsError(f"train: class_weighting must be none, balanced or auto, got '{self.class_weighting}'")
        if not THRESHOLD_OBJECTIVE.match(self.threshold_objective):
            raise KfopsError(
                "train: threshold_objective must be fixed, f1, youden, precision>=P or recall>=R (P, R in (0, 1]), "
                f"got '{self.threshold_objective}'"
            )
        if not 0.0 < self.decision_threshold < 1.0:
            raise KfopsError(f"train: threshold must be between 0 and 1, got {self.decision_threshold}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise KfopsError(f"train: device must be auto, cpu or cuda, got '{self.device}'")
        if self.model_family not in MODEL_FAMILIES:
            raise KfopsError(f"train: model_family must be {', '.join(MODEL_FAMILIES)}, got '{self.model_family}'")
        if (self.model_family == MODEL_FAMILY_MODULE) != bool(self.model_module):
            raise KfopsError(
                "train: model_module (a Python file) goes with model_family module and only with it; got family "
                f"'{self.model_family}' and module {self.model_module!r}"
            )
        if (self.model_family == MODEL_FAMILY_IMPORTED) != bool(self.imported_model):
            raise KfopsError(
                "train: imported_model (an MLflow model URI) goes with model_family imported and only with it; got "
                f"family '{self.model_family}' and imported_model {self.imported_model!r}"
            )
        if not isinstance(self.model_params, dict):
            raise KfopsError(f"train: model_params must be a mapping of parameter to value, got {self.model_params!r}")
        if self.model_family == MODEL_FAMILY_GBDT:
            self.gbdt()
        if self.model_family != MODEL_FAMILY_MLP and self.device == "cuda":
            raise KfopsError(
                f"train: {self.model_family} trains on the CPU; use device auto or cpu (or model_family mlp)"
            )
        if self.model_params and self.model_family == MODEL_FAMILY_MLP:
            raise KfopsError(
                f"train: model_params {sorted(self.model_params)} are another family's; the mlp's parameters are "
                "fields of their own (hidden_sizes, dropout, ...)"
            )

    def gbdt(self):
        """The gbdt family's parameters, typed and checked (a ``contracts.models.GbdtConfig``)."""
        from kfops.components.contracts.models import GbdtConfig

        return GbdtConfig.from_dict(self.model_params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise KfopsError(f"train: unknown parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls(**data)
        # kfp.local delivers ints inside list parameters as floats.
        cfg.hidden_sizes = [int(h) for h in cfg.hidden_sizes]
        if isinstance(cfg.model_params, str):  # JSON text, as a flag or a YAML file may give it
            try:
                cfg.model_params = json.loads(cfg.model_params) if cfg.model_params.strip() else {}
            except json.JSONDecodeError as err:
                raise KfopsError(f"train: model_params is not JSON: {err}: {cfg.model_params!r}") from err
        if cfg.model_params is None:
            cfg.model_params = {}
        if cfg.model_module and "model_family" not in data:
            cfg.model_family = MODEL_FAMILY_MODULE  # a module is its own family
        if cfg.imported_model and "model_family" not in data:
            cfg.model_family = MODEL_FAMILY_IMPORTED
        if cfg.model_family == MODEL_FAMILY_GBDT and isinstance(cfg.model_params, dict):
            # typed as the family's config says (kfp.local delivers the ints inside a dict parameter as floats)
            typed = cfg.gbdt()
            cfg.model_params = {name: getattr(typed, name) for name in cfg.model_params}
        cfg.batch_size, cfg.epochs = int(cfg.batch_size), int(cfg.epochs)
        cfg.early_stopping_patience, cfg.seed = int(cfg.early_stopping_patience), int(cfg.seed)
        return cfg

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> TrainConfig:
        """The config from a train wrapper's parameters: each field given under its parameter name (a field
        with none keeps its default; other names are ignored)."""
        return cls.from_dict(fields_from_parameters(cls, parameters, cls.PARAMETER_NAMES))

    def to_parameters(self) -> dict[str, Any]:
        """The fields as pipeline arguments (``from_parameters`` backwards): each under its parameter name, those
        in ``NOT_PARAMETERS`` left out, float fields as floats (KFP checks a float parameter's type)."""
        hints = typing.get_type_hints(type(self))
        out = {}
        for f in fields(self):
            if f.name not in self.NOT_PARAMETERS:
                value = getattr(self, f.name)
                out[self.PARAMETER_NAMES.get(f.name, f.name)] = float(value) if hints[f.name] is float else value
        return out


@dataclass
class EvaluationResult:
    """Metrics of one model on one split, under METRIC_NAMES."""

    metrics: dict[str, float]
    confusion_matrix: list[list[int]]  # rows: actual [negative, positive]; columns: predicted
    labels: list[str]  # [negative_class, positive_class]
    threshold: float = 0.5
    rows: int = 0

    def to_json(self) -> str:
        # Undefined metrics (ROC-AUC with one class present) are null: NaN is not JSON.
        data = asdict(self)
        data["metrics"] = {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()}
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> EvaluationResult:
        data = json.loads(text)
        data["metrics"] = {k: (float("nan") if v is None else float(v)) for k, v in data["metrics"].items()}
        return cls(**data)


# ------------------------------------------------------------------------------------------------ release
# Which alias moves when, written down once; every component and command follows it:
#   gate      moves no alias: it writes the verdict (TAG_BLESSED) that every later step checks.
#   register  a new version; a blessed one also becomes `challenger`. An unblessed or failed run moves nothing.
#   deploy    moves no alias: it serves a blessed version (never an unblessed one), as a canary beside the
#             version serving now, or at 100% when nothing serves yet.
#   promote   a blessed version becomes `champion`; the version it replaces becomes `previous`. In the pipelines:
#             directly after register (no deployment), after a first deployment, or at a canary's last step.
#   rollout   at its last step, promote (above), and `challenger` is removed from the promoted version. A canary
#             rolled back (a breach, or no verdict) leaves `champion` on the stable version (moved back there if it
#             had been promoted already, the canary becoming `previous`) and loses `challenger`, so nothing
#             redeploys it by alias; the version is tagged kfops.rollout.status / kfops.rollout.reason.
#   rollback  (kfops models rollback) `champion` goes back to `previous`; the version rolled back from becomes
#             `previous`, so a second rollback undoes the first.
TAG_BLESSED = "kfops.blessed"  # "true" / "false": the gate writes it on the MLflow run, register on the version
TAG_BLESSING_MESSAGE = "kfops.blessing.message"
TAG_GATE_THRESHOLDS = "kfops.gate.thresholds"  # the rules the gate judged by, as JSON
TAG_NAIVE_PREFIX = (
    "kfops.gate.naive."  # the naive baseline's scores on the same test rows, e.g. kfops.gate.naive.roc_auc
)
TAG_BLESSING_BASELINE = "kfops.blessing.baseline_version"
TAG_METRIC_PREFIX = "kfops.metric."  # test metrics on the model version, e.g. kfops.metric.f1_macro
# The metric that breaks a tie between two blessed versions racing to become champion.
DEFAULT_PROMOTION_METRIC = "f1_macro"


@dataclass
class MetricCheck:
    """One row of the gate's table: a metric against its thresholds and the baseline."""

    metric: str
    value: float | None
    verdict: Literal["pass", "fail", "skipped"]
    lower: float | None = None
    upper: float | None = None
    baseline: float | None = None
    change: float | None = None  # candidate minus baseline (absolute) or relative change, per the rule
    reason: str = ""


@dataclass
class Blessing:
    """The gate's verdict on a candidate model: the contract between evaluation and release."""

    blessed: bool
    candidate: str  # what was judged: a model version or run id
    baseline_version: str = ""  # the champion it was compared with ("" when there was none)
    checks: list[MetricCheck] = field(default_factory=list)
    message: str = ""
    thresholds: dict[str, Any] = field(default_factory=dict)  # the rules judged, as configured
    naive_baseline: dict[str, float] = field(default_factory=dict)  # the class-prior baseline's scores, same rows

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False, default=str)

    @classmethod
    def from_json(cls, text: str) -> Blessing:
        data = json.loads(text)
        data["checks"] = [MetricCheck(**c) for c in data.get("checks", [])]
        return cls(**data)


class StopTraining(Exception):
    """Raised by a training run's ``on_epoch`` callback to end training after that epoch (a sweep's pruner does)."""


# ------------------------------------------------------------------------------------------------ the payload log
# What serving writes for each scored row, and where: the predictor writes it, outcomes, monitoring, A/B analysis
# and the stored-format tests read it.
#
#     <sink>/model=<model name>/date=YYYY-MM-DD/<UTC write time>-<uuid4 hex>.jsonl   (or .parquet)
#     <sink>/outcomes/date=YYYY-MM-DD/...                                            (ground truth, by request id)
#
# A record is the meta columns, the raw non-feature columns of the training data the request sent (ids, timestamps:
# FeatureSpec.passthrough_columns, only when sent; one named like a meta or prediction column is written as
# ``input_<name>``), the features the request sent (raw), then the prediction columns. ``log_format`` is the record
# format's version; records without it (kfops 0.1.0) are version 1.
PAYLOAD_LOG_FORMAT_VERSION = 1
PAYLOAD_META_COLUMNS = ("request_id", "timestamp", "model", "model_version", "variant", "log_format")
PAYLOAD_PREDICTION_COLUMNS = ("prediction", "probability")
OUTCOMES_DIR = "outcomes"
_PARTITION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


def payload_log_partition(model: str, day: str) -> tuple[str, str]:
    """The folders a payload-log file of ``model`` written on ``day`` (YYYY-MM-DD) goes in, below the sink."""
    return f"model={model}", f"date={day}"


def outcomes_partition(day: str) -> tuple[str, str]:
    """The folders an outcomes file written on ``day`` goes in, below the payload log's sink."""
    return OUTCOMES_DIR, f"date={day}"


def partitions_of(path: str) -> dict[str, str]:
    """The ``key=value`` folder names in a file's path (the deepest wins)."""
    parts = path.replace("\\", "/").split("/")[:-1]
    return {m.group(1): m.group(2) for part in parts if (m := _PARTITION.match(part))}


def check_payload_log_format(values: Any, source: str) -> None:
    """A KfopsError naming ``source`` when a payload-log record's ``log_format`` is newer than this release
    reads; missing values are the first format."""
    newest = max((int(v) for v in values if v is not None and v == v), default=PAYLOAD_LOG_FORMAT_VERSION)
    if newest > PAYLOAD_LOG_FORMAT_VERSION:
        raise KfopsError(
            f"{source}: payload-log records of format {newest}, newer than this kfops reads "
            f"(format {PAYLOAD_LOG_FORMAT_VERSION}); upgrade kfops to read them"
        )
