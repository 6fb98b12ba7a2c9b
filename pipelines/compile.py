"""Compile the suite's pipelines and components to YAML, deterministically.

``pipelines/compiled/training.yaml`` (CPU) and ``training-gpu.yaml`` (training in the CUDA image on one GPU,
placed by ``pipelines/placement.py``: its tolerations, nodeSelector and accelerator type are pipeline parameters whose
defaults ``placement`` sets) are what users upload in the Kubeflow UI; each component's YAML sits beside its code so it
can be loaded on its own with ``kfp.components.load_component_from_file``. The files are committed; a test
fails when they differ from a fresh compile.

Target backends: the YAML is pipeline-spec schema 2.1.0 as written by the KFP SDK 2.17; it needs a KFP
backend of 2.5 or newer (KFP 2.x, as in Kubeflow 1.9+).
"""

from __future__ import annotations

import filecmp
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kfops.components.kfp_support import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE

if TYPE_CHECKING:
    from kfops.pipelines.placement import GpuPlacement

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def _component_functions():
    from kfops.components.ab_analysis.component import ab_analysis, ab_analysis_uri
    from kfops.components.batch_predict.component import plan_batch, score_batch_shard, summarize_batch
    from kfops.components.deploy.component import deploy
    from kfops.components.evaluate.component import evaluate
    from kfops.components.features.component import materialize
    from kfops.components.gate.component import gate
    from kfops.components.ingest.component import split_data, version_data
    from kfops.components.monitor.component import monitor_drift, monitor_drift_dataset
    from kfops.components.outcomes.component import outcome_performance
    from kfops.components.preprocess.component import preprocess
    from kfops.components.register.component import promote, register
    from kfops.components.rollout.component import rollout
    from kfops.components.sweep.component import katib_sweep
    from kfops.components.train.component import train, train_distributed
    from kfops.components.validate.component import validate_data

    return {
        "ingest/version_data.yaml": version_data,
        "ingest/split_data.yaml": split_data,
        "validate/validate_data.yaml": validate_data,
        "preprocess/preprocess.yaml": preprocess,
        "train/train.yaml": train,
        "train/train_distributed.yaml": train_distributed,
        "sweep/katib_sweep.yaml": katib_sweep,
        "evaluate/evaluate.yaml": evaluate,
        "gate/gate.yaml": gate,
        "register/register.yaml": register,
        "register/promote.yaml": promote,
        "ab_analysis/ab_analysis.yaml": ab_analysis,
        "ab_analysis/ab_analysis_uri.yaml": ab_analysis_uri,
        "deploy/deploy.yaml": deploy,
        "rollout/rollout.yaml": rollout,
        "monitor/monitor_drift.yaml": monitor_drift,
        "monitor/monitor_drift_dataset.yaml": monitor_drift_dataset,
        "batch_predict/plan_batch.yaml": plan_batch,
        "batch_predict/score_batch_shard.yaml": score_batch_shard,
        "batch_predict/summarize_batch.yaml": summarize_batch,
        "outcomes/outcome_performance.yaml": outcome_performance,
        "features/materialize.yaml": materialize,
    }


def component_dir() -> Path:
    """Where component YAML lives: beside the component code (the package's components folder)."""
    import kfops.components

    return Path(kfops.components.__file__).resolve().parent


def _targets(image: str, cuda_image: str, output_dir: Path, components_dir: Path, placement: GpuPlacement | None):
    from kfops.components.kfp_support import component_op
    from kfops.pipelines.batch_prediction import build_batch_prediction_pipeline
    from kfops.pipelines.continuous_training import build_continuous_training_pipeline
    from kfops.pipelines.deployment import build_deployment_pipeline
    from kfops.pipelines.feature_materialization import build_feature_materialization_pipeline
    from kfops.pipelines.training import build_training_pipeline

    yield output_dir / "training.yaml", build_training_pipeline(image, cuda_image, accelerator="cpu")
    yield (
        output_dir / "training-gpu.yaml",
        build_training_pipeline(image, cuda_image, accelerator="gpu", placement=placement),
    )
    yield output_dir / "deployment.yaml", build_deployment_pipeline(image)
    yield output_dir / "continuous-training.yaml", build_continuous_training_pipeline(image, cuda_image)
    yield output_dir / "batch-prediction.yaml", build_batch_prediction_pipeline(image)
    yield output_dir / "feature-materialization.yaml", build_feature_materialization_pipeline(image)
    from kfops.pipelines.sweep import build_katib_sweep_pipeline

    yield output_dir / "katib-sweep.yaml", build_katib_sweep_pipeline(image)
    for relative, func in _component_functions().items():
        yield components_dir / relative, component_op(func, image)


def compile_all(
    image: str | None = None,
    cuda_image: str | None = None,
    output_dir: str | Path | None = None,
    components_dir: str | Path | None = None,
    placement: GpuPlacement | None = None,
) -> list[Path]:
    """Write every pipeline and component YAML; return the paths written. ``placement``: the GPU training
    pipeline's placement defaults (None: ``GpuPlacement()``, tolerating ``nvidia.com/gpu:NoSchedule``)."""
    from kfp import compiler
    from kfp.dsl.graph_component import GraphComponent

    from kfops.pipelines.cluster_env import with_cluster_env

    image, cuda_image = image or DEFAULT_IMAGE, cuda_image or DEFAULT_CUDA_IMAGE
    out = Path(output_dir) if output_dir else COMPILED_DIR
    comps = Path(components_dir) if components_dir else component_dir()
    written = []
    for path, func in _targets(image, cuda_image, out, comps, placement):
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(func, GraphComponent):  # a pipeline: credentials from Kubernetes objects (cluster_env.py)
            with_cluster_env(func)
        compiler.Compiler().compile(func, str(path))
        _stable_header(path)
        written.append(path)
    return written


_HEADER_DEFAULT = re.compile(r"^(#    (\w+): \w+ \[Default: )(.*)(\])$")


def _stable_header(path: Path) -> None:
    """Rewrite the defaults of list and dict parameters in the YAML's header comment from the YAML itself.

    KFP writes the spec with sorted keys but renders the header's defaults from protobuf Structs, whose key order
    changes from one process to the next (a default toleration's key, operator and effect came out in any
    order), which would make the committed YAML differ on every compile."""
    import yaml

    text = path.read_text(encoding="utf-8")
    header_end = next((i for i, line in enumerate(text.splitlines()) if not line.startswith("#")), 0)
    lines = text.splitlines(keepends=True)
    spec = next(yaml.safe_load_all(text))
    defaults = {
        name: parameter["defaultValue"]
        for name, parameter in spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).items()
        if isinstance(parameter.get("defaultValue"), dict | list)
    }
    for i in range(header_end):
        match = _HEADER_DEFAULT.match(lines[i].rstrip("\n"))
        if match and match.group(2) in defaults:
            lines[i] = f"{match.group(1)}{defaults[match.group(2)]}{match.group(4)}\n"
    path.write_text("".join(lines), encoding="utf-8")


def stale_files(
    image: str | None = None, cuda_image: str | None = None, placement: GpuPlacement | None = None
) -> list[str]:
    """Committed YAML files that differ from a fresh compile (or are missing)."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(
            image,
            cuda_image,
            output_dir=Path(tmp, "pipelines"),
            components_dir=Path(tmp, "components"),
            placement=placement,
        )
        for path in fresh:
            relative = path.relative_to(tmp)
            committed = (
                COMPILED_DIR / relative.name
                if relative.parts[0] == "pipelines"
                else component_dir() / Path(*relative.parts[1:])
            )
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(committed))
    return stale
