"""What ``kfops submit``, ``upload`` and ``schedule`` are given, checked before any call to KFP: the compiled
pipeline and its parameters, typed arguments, the token, the host, intervals and cron expressions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kfops.components.contracts import KfopsError

# ------------------------------------------------------------------------------------------------ inputs
TOKEN_ENV = "KFOPS_KFP_TOKEN"
COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def suite_pipelines() -> dict[str, Path]:
    """The suite's compiled pipelines by name (``training`` -> pipelines/compiled/training.yaml)."""
    return {path.stem: path for path in sorted(COMPILED_DIR.glob("*.yaml"))}


def resolve_pipeline(ref: str) -> Path:
    """A compiled pipeline file: ``ref`` as a path, else a suite pipeline's name."""
    path = Path(ref)
    if path.is_file():
        return path
    known = suite_pipelines()
    if ref in known:
        return known[ref]
    raise KfopsError(
        f"pipeline '{ref}' is neither a file nor one of the suite's pipelines ({', '.join(known) or 'none compiled'})"
    )


@dataclass(frozen=True)
class PipelineParameter:
    name: str
    type: str  # STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT
    required: bool


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline YAML: its name, root parameters and content hash."""

    path: Path
    name: str
    description: str
    parameters: dict[str, PipelineParameter]
    sha256: str

    @property
    def default_version(self) -> str:
        """The version name ``kfops upload`` gives it: the suite's version and the file's content hash, so the
        same file uploads once and a changed file gets a new version."""
        from kfops import __version__

        return f"{__version__}-{self.sha256[:12]}"


def read_package(path: str | Path) -> PipelinePackage:
    """Read a compiled pipeline (KFP IR YAML); anything else is an error naming the file."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        documents = [d for d in yaml.load_all(raw, Loader=loader) if d is not None]
    except (OSError, yaml.YAMLError) as err:
        raise KfopsError(f"cannot read pipeline {path}: {err}") from err
    spec = documents[0] if documents else None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise KfopsError(
            f"{path} is not a compiled Kubeflow pipeline (no pipelineInfo/root): compile it with `kfops compile`"
        )
    declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    parameters = {
        name: PipelineParameter(
            name=name,
            type=str(decl.get("parameterType", "STRING")),
            required=not decl.get("isOptional", False) and "defaultValue" not in decl,
        )
        for name, decl in declared.items()
    }
    info = spec["pipelineInfo"]
    return PipelinePackage(
        path=path,
        name=str(info.get("name", path.stem)),
        description=str(info.get("description", "")),
        parameters=parameters,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _typed(parameter: PipelineParameter, value: Any, given_as_text: bool) -> Any:
    """``value`` as the parameter's type; text from the command line is parsed, file values are checked."""
    kind, name = parameter.type, parameter.name
    wrong = KfopsError(f"parameter '{name}' is {kind}: cannot use {value!r}")
    if kind == "STRING":
        return value if isinstance(value, str) or given_as_text else str(value)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise wrong
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise wrong
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise wrong
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise wrong from err
    if kind in ("LIST", "STRUCT"):
        wanted = list if kind == "LIST" else dict
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise KfopsError(f"parameter '{name}' is {kind}: {value!r} is not JSON ({err})") from err
        if not isinstance(value, wanted):
            raise wrong
        return value
    return value


def parse_arguments(
    package: PipelinePackage, pairs: list[str] | None = None, params_file: str | Path | None = None
) -> dict[str, Any]:
    """Pipeline arguments from a YAML/JSON mapping file and ``NAME=VALUE`` pairs (pairs win), typed and checked
    against the pipeline's parameters."""
    import yaml

    raw: dict[str, tuple[Any, bool]] = {}
    if params_file:
        try:
            loaded = yaml.safe_load(Path(params_file).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise KfopsError(f"cannot read parameters file {params_file}: {err}") from err
        if not isinstance(loaded, dict):
            raise KfopsError(f"{params_file}: expected a mapping of parameter names to values")
        raw |= {str(k): (v, False) for k, v in loaded.items()}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise KfopsError(f"--param {pair!r}: expected NAME=VALUE")
        raw[name.strip()] = (value, True)
    unknown = sorted(set(raw) - set(package.parameters))
    if unknown:
        raise KfopsError(
            f"pipeline {package.name} has no parameter {', '.join(repr(u) for u in unknown)}; "
            f"its parameters: {', '.join(sorted(package.parameters))}"
        )
    arguments = {name: _typed(package.parameters[name], value, text) for name, (value, text) in raw.items()}
    missing = sorted(p.name for p in package.parameters.values() if p.required and p.name not in arguments)
    if missing:
        raise KfopsError(f"pipeline {package.name} needs {', '.join(missing)} (--param NAME=VALUE)")
    return arguments


def read_token(token_file: str | Path | None, environ: Mapping[str, str]) -> str | None:
    """The bearer token: the file's content, else KFOPS_KFP_TOKEN, else None."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise KfopsError(f"cannot read the token file {token_file}: {err.strerror or err}") from err
        if not token:
            raise KfopsError(f"the token file {token_file} is empty")
        return token
    token = (environ.get(TOKEN_ENV) or "").strip()
    return token or None


def validate_host(host: str | None) -> str:
    """The KFP API base URL without a trailing slash (http(s)://host[:port][/path])."""
    parsed = urlparse(host or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise KfopsError(
            f"--host {host!r} is not a URL: give the Kubeflow Pipelines endpoint, e.g. http://localhost:8080 "
            "(a port-forward of ml-pipeline-ui) or https://kubeflow.example.com/pipeline"
        )
    return host.rstrip("/")


def parse_interval(text: str) -> int:
    """'90s', '30m', '6h', '1d' or plain seconds -> seconds (at least 60)."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise KfopsError(f"--every {text!r}: expected a duration like 30m, 6h, 1d or a number of seconds")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds < 60:
        raise KfopsError(f"--every {text!r}: recurring runs must be at least 60 s apart")
    return seconds


def check_cron(expression: str) -> str:
    """KFP's cron has six fields, seconds first (robfig/cron); a five-field crontab line is an error saying so."""
    fields = expression.split()
    if len(fields) == 5:
        raise KfopsError(
            f"--cron {expression!r}: Kubeflow Pipelines cron has 6 fields, seconds first; "
            f"did you mean '0 {expression}'?"
        )
    if len(fields) != 6:
        raise KfopsError(
            f"--cron {expression!r}: expected 6 space-separated fields (second minute hour day month weekday)"
        )
    return " ".join(fields)
