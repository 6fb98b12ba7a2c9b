"""``python -m kfops.components.train``: training as a plain command, for the places a KFP component cannot go.

Katib runs it as each trial's container command; Kubeflow Trainer runs it under ``torchrun`` on every node of a
TrainJob (``torchrun --nproc-per-node 2 -m kfops.components.train ...`` does the same on one machine). The data
are ``preprocess``'s outputs, local paths or ``s3://`` URIs::

    python -m kfops.components.train --train-features s3://kfops/.../train_features \\
        --validation-features ... --feature-spec ... --raw-train ... \\
        --learning-rate 0.003 --hidden-sizes 64,32 --config best.yaml --experiment my-sweep

``--config`` reads a YAML/JSON mapping of training parameters (the ``best`` section of a sweep's
``best.yaml`` works as it is); flags override it. After every epoch and at the end it prints metrics as
``name=value`` (``val_loss=0.0123 val_f1_macro=0.91``), the format of Katib's StdOut metrics collector; the
last values printed are the best epoch's. Exit status 2 for bad input, with the message on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from kfops.components.contracts import KfopsError, TrainConfig

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
PRINTED_METRICS = ("train_loss", "val_loss", "val_accuracy")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace("[", "").replace("]", "").split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,32, got {text!r}") from err


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _number(text: str) -> int | float | str:
    """A --model-param value as the number it spells (``63``, ``0.05``); other text is left for the family's
    config to refuse by name."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kfops.components.train",
        description="Train the suite's classifier on preprocessed splits (local paths or s3:// URIs) and log it to "
        "MLflow; under torchrun, data-parallel.",
    )
    data = parser.add_argument_group("data (preprocess's outputs)")
    data.add_argument("--train-features", required=True)
    data.add_argument("--validation-features", required=True)
    data.add_argument("--feature-spec", required=True)
    data.add_argument("--raw-train", required=True, help="raw training split: the model's input example")
    data.add_argument("--data-sha256", default="")
    data.add_argument("--data-uri", default="", help="where the data came from (the kfops.data_uri tag)")
    model = parser.add_argument_group("hyperparameters (default: TrainConfig's, or --config)")
    model.add_argument("--config", help="YAML or JSON mapping of training parameters")
    model.add_argument("--hidden-sizes", type=_int_list)
    model.add_argument("--dropout", type=float)
    model.add_argument("--learning-rate", type=float)
    model.add_argument("--batch-size", type=int)
    model.add_argument("--epochs", type=int)
    model.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    model.add_argument("--weight-decay", type=float)
    model.add_argument("--class-weighting", choices=["auto", "none", "balanced"])
    model.add_argument("--early-stopping-patience", type=int)
    model.add_argument("--seed", type=int)
    model.add_argument("--device", choices=["auto", "cpu", "cuda"])
    model.add_argument("--threshold", type=float, dest="decision_threshold")
    model.add_argument("--threshold-objective", help="fixed, f1, youden, precision>=P or recall>=R")
    model.add_argument("--no-cuda-graphs", action="store_true", help="do not capture the step as a CUDA graph")
    model.add_argument("--model-family", choices=["mlp", "gbdt", "module", "imported"])
    model.add_argument("--imported-model", help="the imported family's MLflow model URI")
    model.add_argument("--model-module", help="the module family's Python file (local or s3://)")
    model.add_argument("--model-params", help="the family's own parameters as JSON (gbdt: '{\"max_leaf_nodes\": 63}')")
    model.add_argument(
        "--model-param",
        action="append",
        default=[],
        type=_tag,
        metavar="NAME=VALUE",
        help="one of the family's own parameters, over --model-params (repeatable; what a Katib trial passes)",
    )
    track = parser.add_argument_group("tracking")
    track.add_argument("--experiment", default="kfops-training")
    track.add_argument("--mlflow-tracking-uri", default="", help="default: MLFLOW_TRACKING_URI")
    track.add_argument("--parent-run-id", default="", help="log as a child of this MLflow run (a sweep's)")
    track.add_argument("--run-name", default="")
    track.add_argument("--tag", type=_tag, action="append", default=[], help="KEY=VALUE tag on the run (repeatable)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--model-dir", help="also save the pyfunc model here (it is always logged to the run)")
    out.add_argument("--tensorboard-root", default="", help="copy TensorBoard events to <root>/<run_id>")
    out.add_argument("--checkpoint-uri", default="", help="folder or s3:// prefix: checkpoint, and resume from it")
    out.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)")
    return parser


def config_from(args) -> TrainConfig:
    """TrainConfig from ``--config`` (if any) with the flags on top."""
    values: dict = {}
    if args.config:
        values = load_config_file(args.config)
    for name in TrainConfig.__dataclass_fields__:
        flag = getattr(args, name, None)
        if flag is not None and name != "cuda_graphs":
            values[name] = flag
    if args.no_cuda_graphs:
        values["cuda_graphs"] = False
    if args.model_param:
        params = values.get("model_params") or {}
        if isinstance(params, str):
            params = TrainConfig.from_dict({"model_params": params}).model_params
        values["model_params"] = dict(params) | {name: _number(value) for name, value in args.model_param}
    config = TrainConfig.from_dict(values)
    config.check()
    return config


def load_config_file(path: str) -> dict:
    """Training parameters from YAML or JSON: a mapping of TrainConfig fields, or a sweep's best.yaml (its
    ``best`` section)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise KfopsError(f"cannot read training configuration {path}: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("best"), dict):
        data = data["best"]
    if not isinstance(data, dict):
        raise KfopsError(f"{path}: expected a mapping of training parameters, got {type(data).__name__}")
    data = {("decision_threshold" if k == "threshold" else k): v for k, v in data.items()}
    return data


def _local(uri: str, folder: Path, name: str) -> str:
    from kfops.components import storage

    if not storage.is_s3(uri):
        if not Path(uri).exists():
            raise KfopsError(f"train: {uri} does not exist")
        return uri
    return str(storage.download_to(uri, folder / name))


def print_metrics(values: dict[str, float], prefix: str = "") -> None:
    """One line of ``name=value`` pairs: what Katib's StdOut collector reads."""
    pairs = " ".join(f"{name}={value:.6g}" for name, value in values.items())
    print(f"{prefix}{pairs}", flush=True)


def run(args) -> int:
    from kfops.components.train import distributed
    from kfops.components.train.checkpoint import CheckpointStore
    from kfops.components.train.logic import train_model

    config = config_from(args)
    context = distributed.init_from_env(config.device)
    main_rank = context is None or context.is_main
    try:
        with tempfile.TemporaryDirectory(prefix="kfops-train-") as tmp:
            folder = Path(tmp)
            paths = {
                name: _local(uri, folder, name)
                for name, uri in (
                    ("train_features", args.train_features),
                    ("validation_features", args.validation_features),
                    ("feature_spec", args.feature_spec),
                    ("raw_train", args.raw_train),
                )
            }
            checkpoint = CheckpointStore(args.checkpoint_uri, args.checkpoint_every) if args.checkpoint_uri else None

            def report(row: dict[str, float]) -> None:
                shown = {k: v for k, v in row.items() if k in PRINTED_METRICS or k.startswith("val_")}
                print_metrics(shown, prefix=f"epoch {int(row['epoch'])}: ")

            outcome = train_model(
                paths["train_features"],
                paths["validation_features"],
                paths["feature_spec"],
                paths["raw_train"],
                config,
                args.model_dir or str(folder / "model"),
                str(folder / "tensorboard"),
                experiment=args.experiment,
                tracking_uri=args.mlflow_tracking_uri,
                data_uri=args.data_uri or args.raw_train,
                data_sha256=args.data_sha256,
                tensorboard_root=args.tensorboard_root,
                run_name=args.run_name,
                parent_run_id=args.parent_run_id,
                tags=dict(args.tag),
                epoch_hook=report if main_rank else None,
                checkpoint=checkpoint,
            )
    finally:
        distributed.shutdown()
    if main_rank:
        print(
            f"MLflow run {outcome.run_id}: best epoch {outcome.best_epoch} of {outcome.epochs_run} on "
            f"{outcome.world_size} process(es), {outcome.samples_per_second:,.0f} samples/s on {outcome.device}"
        )
        # Last, so Katib's "latest" strategy reads the best epoch's values.
        print_metrics(outcome.val_metrics)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except KfopsError as err:
        print(f"train: {str(err).removeprefix('train: ')}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
