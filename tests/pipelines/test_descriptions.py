"""The Kubeflow UI form: every compiled pipeline and component parameter (and output) has a one-line description,
written from one source (``kfp_support.DESCRIPTIONS`` and the wrappers' own docstring entries), and the training
pipeline's common parameters come first."""

# no `from __future__ import annotations`: KFP reads the test wrappers' annotations as types
import inspect
from pathlib import Path

import pytest
import yaml

from kfops.components.kfp_support import DESCRIPTIONS, described, missing_descriptions, own_descriptions
from kfops.pipelines.compile import COMPILED_DIR, compile_all

PIPELINES = sorted(COMPILED_DIR.glob("*.yaml"))


def _definitions(path: Path):
    """(where, name, definition) for each input and output of every pipeline and executor component in ``path``."""
    spec = next(yaml.safe_load_all(path.read_text()))
    components = {"root": spec["root"], **spec.get("components", {})}
    for component, body in components.items():
        if component != "root" and "executorLabel" not in body:
            continue  # a DAG of the pipeline (a condition): its inputs are pipeline channels
        for kind in ("inputDefinitions", "outputDefinitions"):
            for section in ("parameters", "artifacts"):
                for name, definition in body.get(kind, {}).get(section, {}).items():
                    yield f"{component} {kind}", name, definition


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("compiled")
    return compile_all(output_dir=out / "pipelines", components_dir=out / "components")


def test_every_compiled_parameter_and_output_has_a_one_line_description(compiled):
    assert len(compiled) == 7 + 22
    missing, multiline = [], []
    for path in compiled:
        for where, name, definition in _definitions(path):
            description = definition.get("description", "")
            if not description.strip():
                missing.append(f"{path.name}: {where} {name}")
            elif "\n" in description:
                multiline.append(f"{path.name}: {where} {name}")
    assert missing == [], "no description (add one to kfp_support.DESCRIPTIONS or the wrapper's docstring)"
    assert multiline == []


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_the_committed_pipelines_show_descriptions(path):
    assert all(d.get("description") for _, _, d in _definitions(path)), path


def test_a_missing_description_is_caught():
    from kfp import dsl

    def wrapper(target: str, mystery: int) -> str:
        """Does a thing."""
        return target * mystery

    component = dsl.component(func=described(wrapper))
    assert missing_descriptions(component) == ["input mystery", "output Output"]
    assert component.component_spec.inputs["target"].description == DESCRIPTIONS["target"]
    assert component.component_spec.description == "Does a thing."


def test_a_wrappers_own_entries_win_and_describe_outputs():
    from kfp import dsl
    from kfp.dsl import Dataset, Output

    def wrapper(seed: int, data_sha256: str, part: Output[Dataset]) -> int:
        """Splits.

        Args:
            seed: Seed of this step's own shuffle, which is long enough to wrap
                onto a second line.

        Returns:
            part: The part written.
            Output: Rows written.
        """
        return seed

    component = dsl.component(func=described(wrapper))
    inputs, outputs = component.component_spec.inputs, component.component_spec.outputs
    assert inputs["seed"].description == (
        "Seed of this step's own shuffle, which is long enough to wrap onto a second line."
    )
    assert inputs["data_sha256"].description == DESCRIPTIONS["data_sha256"]
    assert outputs["part"].description == "The part written." and outputs["Output"].description == "Rows written."
    assert missing_descriptions(component) == []
    assert component.component_spec.description == "Splits."
    # applying it again (a second pipeline built with the same wrapper) writes the same text
    assert described(wrapper).__doc__ == wrapper.__doc__


def test_a_bad_docstring_entry_is_refused():
    with pytest.raises(ValueError, match="not a 'name: description' entry"):
        own_descriptions("Does.\n\nArgs:\n  seed - the seed\n")


def test_the_common_training_parameters_come_first():
    from kfops.pipelines.training import build_training_pipeline, training_pipeline

    for pipeline in (training_pipeline, build_training_pipeline(accelerator="gpu")):
        names = list(inspect.signature(pipeline.pipeline_func).parameters)
        assert names[:4] == ["data_uri", "data_version", "target", "model_name"], names[:6]
        assert list(pipeline.component_spec.inputs)[:4] == names[:4]
        # the docstring KFP reads lists them in the same order
        args = own_descriptions(pipeline.pipeline_func.__doc__)[1]["Args"]
        assert list(args)[:4] == names[:4]


def test_every_shared_parameter_group_is_described():
    from kfops.pipelines.parameters import (
        DATA_PARAMETERS,
        DEPLOYMENT_PARAMETERS,
        RENAMED_DESCRIPTIONS,
        TRAIN_PARAMETERS,
    )

    for p in (*DATA_PARAMETERS, *DEPLOYMENT_PARAMETERS, *TRAIN_PARAMETERS):
        assert DESCRIPTIONS.get(p.name, "").strip(), f"{p.name} has no description in kfp_support.DESCRIPTIONS"
    assert RENAMED_DESCRIPTIONS["canary_steps"].startswith(DESCRIPTIONS["steps"])
