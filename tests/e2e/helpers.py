"""Helpers the e2e runs share."""

from __future__ import annotations

import json

from kfops.cli import main


def run_json(capsys, *args) -> dict:
    """`kfops run ... --json`: its summary, after asserting it succeeded (its output in the failure message)."""
    code = main(["run", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out[out.index("{") :])
