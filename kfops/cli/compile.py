"""`kfops compile`: the pipelines and components to YAML (and `--check` for stale committed YAML)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from kfops.cli.console import EXIT_FAILURE


def _checked(parse_name: str) -> Callable[[str], str]:
    """An argparse type that checks one option value with ``pipelines.placement``'s parser and keeps its text, so
    a bad value is refused at parse time, naming the option and the value."""

    def check(text: str) -> str:
        from kfops.components.contracts import KfopsError
        from kfops.pipelines import placement

        if parse_name == "parse_toleration" and text == placement.NO_TOLERATION:
            return text
        try:
            getattr(placement, parse_name)(text)
        except KfopsError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        return text

    return check


def _placement(args):
    from kfops.pipelines.placement import GpuPlacement

    return GpuPlacement.from_options(args.gpu_toleration, args.gpu_node_selector, args.accelerator_type)


def cmd_compile(args) -> int:
    from kfops.pipelines.compile import compile_all, stale_files

    placement = _placement(args)
    if args.check:
        stale = stale_files(image=args.image, cuda_image=args.cuda_image, placement=placement)
        if stale:
            print("out of date (run `kfops compile`):\n  " + "\n  ".join(stale), file=sys.stderr)
            return EXIT_FAILURE
        print("compiled pipelines and components are current")
        return 0
    components_dir = Path(args.output_dir, "components") if args.output_dir else None
    for path in compile_all(
        image=args.image,
        cuda_image=args.cuda_image,
        output_dir=args.output_dir,
        components_dir=components_dir,
        placement=placement,
    ):
        print(f"wrote {path}")
    return 0


def add_commands(sub) -> None:
    comp = sub.add_parser("compile", help="compile pipelines and components to YAML")
    comp.add_argument("--image", help="the suite's component image")
    comp.add_argument("--cuda-image", help="the CUDA variant, for GPU training")
    comp.add_argument(
        "--output-dir", help="write pipelines here (components under its components/) instead of beside the code"
    )
    gpu = comp.add_argument_group(
        "GPU placement",
        "defaults of training-gpu.yaml's pipeline parameters gpu_tolerations, gpu_node_selector "
        "and accelerator_type (a run may change them)",
    )
    gpu.add_argument(
        "--gpu-toleration",
        action="append",
        type=_checked("parse_toleration"),
        metavar="KEY[=VALUE][:EFFECT]",
        help="a taint the GPU training pod tolerates (repeatable; replaces the default nvidia.com/gpu:NoSchedule; "
        "no value: any value; 'none': no toleration)",
    )
    gpu.add_argument(
        "--gpu-node-selector",
        action="append",
        default=[],
        type=_checked("parse_node_selector"),
        metavar="KEY=VALUE",
        help="a node label the GPU training pod requires, e.g. cloud.google.com/gke-accelerator=nvidia-l4 (repeatable)",
    )
    gpu.add_argument(
        "--accelerator-type",
        type=_checked("check_accelerator_type"),
        metavar="NAME",
        help="the GPU's extended resource name (default nvidia.com/gpu; amd.com/gpu, ...)",
    )
    comp.add_argument("--check", action="store_true", help="exit 1 if the committed YAML is out of date")
    comp.set_defaults(func=cmd_compile)
