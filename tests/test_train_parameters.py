"""The training parameters have one source of truth, ``TrainConfig``: every place that lists them again (the KFP
train wrappers, the training and sweep pipelines, ``kfops run``'s flags) is checked against it here, names, types
and defaults, so they cannot drift. They stay separate typed parameters, as the Kubeflow UI shows them."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from kfops.components.contracts import TrainConfig

# TrainConfig field -> its name as a pipeline and component parameter; None: not a parameter
PARAMETER_NAME = {"decision_threshold": "threshold", "cuda_graphs": None}
# what a wrapper derives instead of taking: wrapper -> {parameter: from what}
DERIVED = {"train_distributed": {"device": "cuda when gpus_per_node > 0, else cpu"}}


def parameters() -> list[tuple[str, type, object]]:
    """(parameter name, type, default) for every TrainConfig field that is a pipeline parameter."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        name = PARAMETER_NAME.get(f.name, f.name)
        if name is None:
            continue
        kind = typing.get_origin(hints[f.name]) or hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append((name, kind, default))
    return out


def test_every_field_is_accounted_for():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PARAMETER_NAME) <= names
    assert len(parameters()) == len(names) - sum(v is None for v in PARAMETER_NAME.values())


@pytest.mark.parametrize("wrapper", ["train", "train_distributed"])
def test_the_train_wrappers_take_each_parameter_with_its_type(wrapper):
    from kfops.components.train import component

    signature = inspect.signature(getattr(component, wrapper))
    for name, kind, _ in parameters():
        if name in DERIVED.get(wrapper, {}):
            assert name not in signature.parameters, f"{wrapper} takes {name}, listed as derived"
            continue
        assert name in signature.parameters, f"{wrapper} has no parameter {name}"
        assert signature.parameters[name].annotation in (kind, kind.__name__), (wrapper, name)


def test_the_training_pipeline_defaults_are_trainconfigs():
    from kfops.pipelines.training import training_pipeline

    inputs = training_pipeline.component_spec.inputs
    for name, _, default in parameters():
        assert name in inputs, f"the training pipeline has no parameter {name}"
        assert inputs[name].default == default, (name, inputs[name].default, default)


def test_the_sweep_trial_pipeline_takes_each_parameter():
    from kfops.pipelines import sweep

    trial = next(
        getattr(sweep, n)
        for n in dir(sweep)
        if hasattr(getattr(sweep, n), "component_spec") and "hidden_sizes" in getattr(sweep, n).component_spec.inputs
    )
    for name, _, _ in parameters():
        assert name in trial.component_spec.inputs, f"the sweep's trial pipeline has no parameter {name}"


def test_kfops_run_has_a_flag_for_each_and_passes_it_on(tmp_path):
    from kfops.cli import build_parser
    from kfops.cli.run import training_arguments
    from kfops.components.workspace import workspace

    given = {
        "hidden_sizes": ("7,5", [7, 5]),
        "dropout": ("0.3", 0.3),
        "learning_rate": ("0.02", 0.02),
        "batch_size": ("64", 64),
        "epochs": ("3", 3),
        "optimizer": ("sgd", "sgd"),
        "weight_decay": ("0.01", 0.01),
        "class_weighting": ("balanced", "balanced"),
        "early_stopping_patience": ("9", 9),
        "seed": ("5", 5),
        "device": ("cpu", "cpu"),
        "threshold": ("0.4", 0.4),
        "threshold_objective": ("fixed", "fixed"),  # what --threshold alone also sets
        "model_family": ("module", "module"),
        "model_module": (__file__, __file__),
        "model_params": ('{"max_leaf_nodes": 15}', {"max_leaf_nodes": 15}),
    }
    # one family at a time: the imported family's own flag is checked on its own below
    assert set(given) | {"imported_model"} == {name for name, _, _ in parameters()}, "a field with no case here"
    argv = ["run", "--data", str(tmp_path / "x.csv"), "--target", "y"]
    for name, (text, _) in given.items():
        argv += [f"--{name.replace('_', '-')}", text]
    args = build_parser().parse_args(argv)
    arguments = training_arguments(args, workspace(tmp_path / "ws"))
    for name, (_, value) in given.items():
        assert arguments.get(name) == value, f"kfops run --{name.replace('_', '-')} does not reach the pipeline"
    argv = ["run", "--data", str(tmp_path / "x.csv"), "--target", "y", "--imported-model", "models:/churn/3"]
    arguments = training_arguments(build_parser().parse_args(argv), workspace(tmp_path / "ws"))
    assert (arguments["imported_model"], arguments["model_family"]) == ("models:/churn/3", "imported")


def test_kfops_run_threshold_flags(tmp_path):
    from kfops.cli import build_parser
    from kfops.cli.run import training_arguments
    from kfops.components.contracts import KfopsError
    from kfops.components.workspace import workspace

    def arguments(*flags):
        args = build_parser().parse_args(["run", "--data", str(tmp_path / "x.csv"), "--target", "y", *flags])
        return training_arguments(args, workspace(tmp_path / "ws"))

    assert "threshold_objective" not in arguments()  # the pipeline's default: f1 on the validation split
    assert arguments("--threshold", "0.3")["threshold_objective"] == "fixed"
    assert arguments("--threshold-objective", "recall>=0.9")["threshold_objective"] == "recall>=0.9"
    with pytest.raises(SystemExit, match="drop --threshold-objective"):
        arguments("--threshold", "0.3", "--threshold-objective", "youden")
    with pytest.raises(KfopsError, match="threshold_objective"):
        arguments("--threshold-objective", "accuracy")
