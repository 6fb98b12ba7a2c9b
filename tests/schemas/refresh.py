"""Write the committed schema copies in tests/schemas/ from the upstream files in ../shared/schemas/.

Only what validation reads is kept: each CRD's group, kind and versions with their OpenAPI v3 schema, and from
Katib's OpenAPI document its ``components.schemas``. ``description`` texts and printer columns are stripped; the
API's structure (fields, types, enums, required lists, patterns, formats, x-kubernetes-* markers) stays as it is.

    python tests/schemas/refresh.py            # rewrite the copies (make schemas-refresh)
    python tests/schemas/refresh.py --check    # exit 1 when a copy is stale

The output is deterministic (sorted keys), so a stale copy shows as a diff and as a failing test
(tests/manifests/test_schema_copies.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
UPSTREAM = HERE.parents[1].parent / "shared" / "schemas"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def strip(node):
    """The schema without its prose: a ``description`` whose value is text is documentation, while a property
    that happens to be named ``description`` maps to a schema (a dict) and is kept."""
    if isinstance(node, list):
        return [strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: strip(value) for key, value in node.items() if not (key == "description" and isinstance(value, str))}


def crd_copy(crd: dict) -> dict:
    """What validation needs of a CRD: its names and each version's schema (no printer columns)."""
    spec = crd["spec"]
    versions = [
        {
            "name": version["name"],
            "served": version.get("served", True),
            "storage": version.get("storage", False),
            "schema": {"openAPIV3Schema": strip(version["schema"]["openAPIV3Schema"])},
        }
        for version in spec["versions"]
    ]
    return {
        "apiVersion": crd["apiVersion"],
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": {
            "group": spec["group"],
            "names": {"kind": spec["names"]["kind"], "plural": spec["names"]["plural"]},
            "scope": spec.get("scope", "Namespaced"),
            "versions": versions,
        },
    }


def openapi_copy(document: dict) -> dict:
    """Katib's OpenAPI document, reduced to the component schemas that ``$ref``s point into."""
    return {
        "openapi": document.get("openapi", ""),
        "info": {k: v for k, v in document.get("info", {}).items() if k in ("title", "version")},
        "components": {"schemas": strip(document["components"]["schemas"])},
    }


def render(value: dict) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def copies(upstream: Path = UPSTREAM) -> dict[str, str]:
    """Relative path under tests/schemas -> the text of its copy, for every schema file under ``upstream``."""
    out: dict[str, str] = {}
    for path in sorted(upstream.glob("*/*")):
        relative = path.relative_to(upstream)
        if path.suffix in (".yaml", ".yml"):
            for document in yaml.load_all(path.read_text(), Loader=_Loader):
                if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                    out[str(relative.with_suffix(".json"))] = render(crd_copy(document))
        elif path.suffix == ".json":
            out[str(relative)] = render(openapi_copy(json.loads(path.read_text())))
    return out


def stale(upstream: Path = UPSTREAM, target: Path = HERE) -> list[str]:
    """The copies that differ from what ``upstream`` gives, are missing, or have no upstream any more."""
    wanted = copies(upstream)
    present = {str(p.relative_to(target)) for p in target.glob("*/*.json")}
    problems = [f"{name}: missing" for name in sorted(set(wanted) - present)]
    problems += [f"{name}: no upstream file any more" for name in sorted(present - set(wanted))]
    problems += [
        f"{name}: differs from {upstream / Path(name).parent}"
        for name in sorted(set(wanted) & present)
        if (target / name).read_text() != wanted[name]
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=UPSTREAM, help="the upstream schemas folder")
    parser.add_argument("--check", action="store_true", help="only report stale copies (exit 1 if any)")
    args = parser.parse_args(argv)
    if not args.upstream.is_dir():
        print(f"no upstream schemas at {args.upstream}: pass --upstream DIR", file=sys.stderr)
        return 2
    if args.check:
        problems = stale(args.upstream)
        for line in problems:
            print(line)
        return 1 if problems else 0
    wanted = copies(args.upstream)
    for old in HERE.glob("*/*.json"):
        if str(old.relative_to(HERE)) not in wanted:
            old.unlink()
    for name, text in wanted.items():
        (HERE / name).parent.mkdir(parents=True, exist_ok=True)
        (HERE / name).write_text(text)
    print(f"wrote {len(wanted)} schema copies under {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
