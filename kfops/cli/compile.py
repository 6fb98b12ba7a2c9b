"""`kfops compile`: the pipelines and components to YAML (and `--check` for stale committed YAML)."""

from __future__ import annotations

import sys
from pathlib import Path

from kfops.cli.console import EXIT_FAILURE


def cmd_compile(args) -> int:
    from kfops.pipelines.compile import compile_all, stale_files

    if args.check:
        stale = stale_files(image=args.image, cuda_image=args.cuda_image)
        if stale:
            print("out of date (run `kfops compile`):\n  " + "\n  ".join(stale), file=sys.stderr)
            return EXIT_FAILURE
        print("compiled pipelines and components are current")
        return 0
    components_dir = Path(args.output_dir, "components") if args.output_dir else None
    for path in compile_all(
        image=args.image, cuda_image=args.cuda_image, output_dir=args.output_dir, components_dir=components_dir
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
    comp.add_argument("--check", action="store_true", help="exit 1 if the committed YAML is out of date")
    comp.set_defaults(func=cmd_compile)
