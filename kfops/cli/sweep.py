"""``kfops sweep``: run a W&B-format sweep spec locally (Optuna + kfp.local), or write it as a Katib Experiment.

Only argparse at import time; kfp, optuna, mlflow and torch load when the command runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from kfops.cli.console import csv_list


def _format_values(values: dict) -> str:
    shown = []
    for name, value in values.items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            value = f"{value:.4g}"
        shown.append(f"{name}={value}")
    return " ".join(shown)


def _base_config(args):
    from kfops.components.contracts import TrainConfig
    from kfops.components.train.entry import load_config_file

    values = load_config_file(args.config) if args.config else {}
    if args.device:
        values["device"] = args.device
    if args.epochs:
        values["epochs"] = args.epochs
    config = TrainConfig.from_dict(values)
    config.check()
    return config


def _write_katib(args, spec, console) -> int:
    import yaml

    from kfops.components.contracts import KfopsError
    from kfops.components.kfp_support import DEFAULT_IMAGE
    from kfops.components.sweep.katib import TrialData, TrialPod, build_experiment, experiment_name

    missing = [
        f for f in ("train_features", "validation_features", "feature_spec", "raw_train") if not getattr(args, f)
    ]
    if missing:
        flags = ", ".join("--" + f.replace("_", "-") for f in missing)
        raise KfopsError(
            f"--katib needs the data every trial reads: {flags} (s3:// URIs of preprocess's outputs; the "
            "kfops-katib-sweep pipeline fills them in itself)"
        )
    data = TrialData(
        args.train_features, args.validation_features, args.feature_spec, args.raw_train, data_sha256=args.data_sha256
    )
    pod = TrialPod(
        image=args.image or DEFAULT_IMAGE,
        env_secret=args.env_secret,
        service_account=args.service_account or "",
        cpu=args.trial_cpu,
        memory=args.trial_memory,
        gpus=args.trial_gpus,
        experiment=args.experiment,
        parent_run_id=args.parent_run_id or "",
        base=_base_config(args),
    )
    name = args.name or experiment_name(spec)
    manifest = build_experiment(spec, data, pod, name, args.namespace)
    Path(args.katib).parent.mkdir(parents=True, exist_ok=True)
    Path(args.katib).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    console.print(
        f"wrote Katib Experiment {args.namespace}/{name} ({manifest['spec']['algorithm']['algorithmName']}, "
        f"{spec.trials} trials, {spec.parallel} at a time) to {args.katib}\n  kubectl apply -f {args.katib}"
    )
    return 0


def _prepare(args, ws, console):
    """Run the data steps once (kfp.local, cached) and return the prepared artifacts."""
    # `kfops run`'s data flags, through the function that reads them for the training pipeline: every training
    # flag the sweep does not take gets `kfops run`'s default, so a flag added there cannot break this.
    import argparse
    import warnings

    from kfops.cli.run import add_training_flags, training_arguments
    from kfops.components.sweep.logic import PreparedData, _quiet
    from kfops.pipelines.local import run_pipeline
    from kfops.pipelines.sweep import sweep_prepare_pipeline

    defaults = argparse.ArgumentParser(add_help=False)
    add_training_flags(defaults)
    for name, value in vars(defaults.parse_args([])).items():
        if not hasattr(args, name):
            setattr(args, name, value)
    arguments = training_arguments(args, ws)
    wanted = sweep_prepare_pipeline.component_spec.inputs.keys()
    arguments = {k: v for k, v in arguments.items() if k in wanted}
    console.print(
        f"  data: {arguments.get('data_uri') or arguments.get('data_version')} · target '{arguments['target']}'"
    )
    started = time.perf_counter()
    log_path = ws.root / "logs" / f"sweep-prepare-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(str(log_path)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            task = run_pipeline(sweep_prepare_pipeline, arguments, ws, enable_caching=not args.no_cache)
    except RuntimeError as err:
        from kfops.components.contracts import KfopsError

        errors = [line for line in log_path.read_text().splitlines() if "KfopsError: " in line]
        detail = errors[-1].split("KfopsError: ", 1)[1] if errors else str(err).splitlines()[0]
        raise KfopsError(f"preparing the data failed: {detail} (log: {log_path})") from err
    outputs = task.outputs
    console.print(f"  [green]✓[/] data prepared  [dim]{time.perf_counter() - started:5.1f} s[/]")
    raw = outputs["raw_train"]
    return PreparedData(
        train_features=outputs["train_features"].path,
        validation_features=outputs["validation_features"].path,
        feature_spec=outputs["feature_spec"].path,
        raw_train=raw.path,
        data_sha256=outputs["data_sha256"],
        data_uri=raw.metadata.get("source", ""),
    )


def cmd_sweep(args) -> int:
    from kfops.cli.console import make_console
    from kfops.components.sweep.spec import load_spec

    console = make_console()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating tables" notes between our lines
    spec = load_spec(args.spec).with_overrides(trials=args.trials, parallel=args.parallel)
    for warning in spec.warnings:
        console.print(f"[yellow]warning[/] {args.spec}: {warning}")
    if args.katib:
        return _write_katib(args, spec, console)

    from kfops.components.sweep.logic import run_local_sweep
    from kfops.pipelines.local import configure_environment, workspace
    from kfops.pipelines.sweep import run_trial_locally

    ws = workspace(args.workspace)
    if args.artifact_store is None and os.environ.get("KFOPS_ARTIFACT_STORE"):
        args.artifact_store = os.environ["KFOPS_ARTIFACT_STORE"]
    configure_environment(ws)
    console.print(
        f"[bold]kfops sweep[/] {spec.name} · {spec.method}, {spec.metric} ({spec.goal}) · {spec.trials} trials, "
        f"{spec.parallel} at a time · workspace [cyan]{ws.root}[/]"
    )
    base = _base_config(args)
    data = _prepare(args, ws, console)

    def show(trial) -> None:
        mark = {"complete": "[green]✓[/]", "pruned": "[yellow]✂[/]", "failed": "[red]✗[/]"}[trial.state]
        message = trial.message.removeprefix(f"sweep: trial {trial.number} ")
        value = f"{spec.metric} {trial.value:.4f}" if trial.value is not None else message[:60]
        searched = {k: trial.values[k] for k in (p.name for p in spec.searched)}
        console.print(
            f"  {mark} trial {trial.number:<3} {value:<28} [dim]{_format_values(searched)} · {trial.seconds:.1f} s[/]"
        )

    outcome = run_local_sweep(
        spec,
        data,
        run_trial_locally,
        workspace=ws.root,
        base=base,
        experiment=args.experiment,
        tensorboard_root=ws.tensorboard,
        best_path=args.best_out,
        on_trial=None if args.json else show,
    )
    document = outcome.document
    if args.json:
        summary = {
            **document,
            "best_path": outcome.best_path,
            "seconds": round(outcome.seconds, 1),
            "trial_results": [
                {
                    "number": t.number,
                    "state": t.state,
                    "value": t.value,
                    "values": t.values,
                    "run_id": t.run_id,
                    "seconds": round(t.seconds, 2),
                    "train_seconds": round(t.train_seconds, 2),
                }
                for t in outcome.trials
            ],
        }
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    best = outcome.best
    counts = document["trials"]
    console.print(
        f"  best: trial {best.number} · {spec.metric} {best.value:.4f} · {_format_values(document['searched'])}\n"
        f"  trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed · "
        f"{outcome.seconds:.1f} s\n"
        f"  MLflow: parent run {outcome.parent_run_id}, best run {best.run_id} (experiment {outcome.experiment_id})\n"
        f"  best configuration: {outcome.best_path}\n"
        f"[dim]  train with it: kfops run {document['kfops_run_flags']}[/]"
    )
    return 0


def add_commands(sub) -> None:
    sweep = sub.add_parser(
        "sweep",
        help="run a hyperparameter sweep (W&B sweep.yaml format) locally, or write it as a Katib Experiment",
        description="Run a sweep spec's trials locally through the training component (kfp.local; one Optuna "
        "study, MLflow child runs of one parent run) and write the best configuration; with --katib, write the "
        "spec as a Katib Experiment instead. The data flags are `kfops run`'s.",
    )
    sweep.add_argument("spec", help="sweep spec YAML (W&B's sweep.yaml format; see components/sweep/README.md)")
    sweep.add_argument("--trials", type=int, help="trial budget (default: the spec's run_cap, else 10)")
    sweep.add_argument("--parallel", type=int, help="trials at once (default: the spec's kfops.parallel, else 1)")
    sweep.add_argument("--best-out", help="where to write the best configuration (default: the workspace)")
    sweep.add_argument("--config", help="YAML/JSON training parameters for what the spec does not search")
    sweep.add_argument("--epochs", type=int, help="epochs of each trial, unless the spec searches or fixes them")
    sweep.add_argument("--device", choices=["auto", "cpu", "cuda"])
    sweep.add_argument("--experiment", default="kfops-sweep", help="MLflow experiment (default kfops-sweep)")
    data = sweep.add_argument_group("data (as kfops run)")
    data.add_argument("--data")
    data.add_argument("--data-version")
    data.add_argument("--target")
    data.add_argument("--numeric", type=csv_list)
    data.add_argument("--categorical", type=csv_list)
    data.add_argument("--drop", type=csv_list)
    data.add_argument("--positive-class")
    data.add_argument("--task", choices=["auto", "binary", "multiclass", "regression"], default=None)
    data.add_argument("--time-column")
    data.add_argument("--split-by-time", action="store_true")
    data.add_argument("--validation-fraction", type=float)
    data.add_argument("--test-fraction", type=float)
    data.add_argument("--rows", type=int, default=100_000)
    data.add_argument("--data-seed", type=int, default=7)
    where = sweep.add_argument_group("where")
    where.add_argument("--workspace")
    where.add_argument("--artifact-store")
    where.add_argument("--no-cache", action="store_true", help="prepare the data again even if cached")
    where.add_argument("--json", action="store_true", help="print the result as JSON")
    katib = sweep.add_argument_group("Katib (--katib OUT.yaml writes the Experiment and runs nothing)")
    katib.add_argument("--katib", metavar="OUT.yaml")
    katib.add_argument("--name", help="Experiment name (default: from the spec's name)")
    katib.add_argument("--namespace", default="kubeflow-user")
    katib.add_argument("--image", help="trial image (default: the suite's)")
    katib.add_argument("--env-secret", default="kfops-training-env", help="Secret with MLflow and S3 settings")
    katib.add_argument("--service-account")
    katib.add_argument("--trial-cpu", default="1")
    katib.add_argument("--trial-memory", default="2Gi")
    katib.add_argument("--trial-gpus", type=int, default=0)
    katib.add_argument("--parent-run-id", help="MLflow parent run of the trials")
    for name in ("train-features", "validation-features", "feature-spec", "raw-train"):
        katib.add_argument(f"--{name}", help="s3:// URI of preprocess's output" if name != "raw-train" else None)
    katib.add_argument("--data-sha256", default="")
    sweep.set_defaults(func=cmd_sweep)
