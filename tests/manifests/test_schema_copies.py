"""The committed schema copies (tests/schemas/): current against their upstream files, free of prose, and in use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.crd_schemas import SCHEMAS_ROOT, schema_errors
from tests.schemas import refresh


def _texts(node, found: list[str], where: str = "") -> list[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                found.append(where)
            _texts(value, found, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _texts(item, found, f"{where}[{index}]")
    return found


def test_copies_are_current_against_the_upstream_folder():
    if not refresh.UPSTREAM.is_dir():
        pytest.skip(f"no upstream schemas at {refresh.UPSTREAM} to compare with (the copies are what tests use)")
    assert refresh.stale() == [], "stale schema copies: run `make schemas-refresh`"


def test_stale_copies_are_reported(tmp_path):
    upstream = tmp_path / "upstream" / "demo"
    upstream.mkdir(parents=True)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [{"name": "Age", "type": "date", "jsonPath": ".metadata.age"}],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A widget.",
                            "properties": {"description": {"type": "string", "description": "Its own text."}},
                        }
                    },
                }
            ],
        },
    }
    (upstream / "widgets.yaml").write_text(json.dumps(crd))
    target = tmp_path / "copies"
    (target / "demo").mkdir(parents=True)
    assert refresh.stale(upstream.parent, target) == ["demo/widgets.json: missing"]
    [(name, text)] = refresh.copies(upstream.parent).items()
    copy = json.loads(text)
    schema = copy["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # prose and printer columns go; a property named "description" stays
    assert schema == {"type": "object", "properties": {"description": {"type": "string"}}}
    assert "additionalPrinterColumns" not in copy["spec"]["versions"][0]
    (target / name).write_text(text)
    assert refresh.stale(upstream.parent, target) == []
    (target / name).write_text(text.replace('"string"', '"integer"'))
    assert refresh.stale(upstream.parent, target) == [f"demo/widgets.json: differs from {upstream}"]


@pytest.mark.parametrize("path", sorted(SCHEMAS_ROOT.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_copy_is_stripped_of_descriptions(path: Path):
    assert _texts(json.loads(path.read_text()), []) == []


def test_the_copies_are_what_validation_uses():
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "demo"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"}, "storageUri": "s3://m/1"}}},
    }
    assert schema_errors(isvc) == []
    isvc["spec"]["predictor"]["canaryTrafficPercnt"] = 10
    assert any("canaryTrafficPercnt" in error for error in schema_errors(isvc))
