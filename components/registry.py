"""Promotion and rollback of registered model versions, following the alias policy in ``contracts``.

A blessed version promoted on its own replaces the champion: the gate has already judged it against that
champion, re-scored on the same test split (its change thresholds are where "not worse than the champion" is
said), and comparing the versions' recorded metrics here would compare scores on different test data.

MLflow aliases have no compare-and-set: two pipeline runs that finish at once can both read the same champion and
both write their own version. So between promotions that overlap, the winner is defined by a rule every writer
applies the same way, not by who writes last:

    the winner is the version with the better value of the promotion metric (tag ``kfops.metric.<metric>`` on the
    version; direction from HIGHER_IS_BETTER; a version without the tag loses to one with it), then the newer
    (higher) version number.

``promote`` announces itself with a claim (a tag ``kfops.promotion.claim.<version>`` on the registered model,
holding its start time and, once finished, its end time), moves ``previous`` and ``champion``, then re-reads the
registered model a few times after short random sleeps. Every writer drives ``champion`` towards the best of: its
own version, the version the alias points to, and the versions of claims that overlap its own run. Because each
writer writes its claim before it reads the others', of two overlapping writers at least one sees the other, and
the one that sees drives the alias to the winner; a writer stops only after several reads in a row agree, so the
``won`` it reports is the state it left. A claim that had already ended when this promotion first read the model
is a sequential predecessor (its effect is already in the champion read then) and is ignored, so no clocks are
compared; claims older than ``CLAIM_TTL_S`` (a crashed writer's) are deleted.

Plain Python: MLflow is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass

from kfops.components import retry
from kfops.components.contracts import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    DEFAULT_PROMOTION_METRIC,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    TAG_BLESSED,
    TAG_METRIC_PREFIX,
    KfopsError,
)

log = logging.getLogger(__name__)

MAX_MODEL_NAME = 63  # a Kubernetes DNS label: the name also names the InferenceService
_DATA_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")
CLAIM_PREFIX = "kfops.promotion.claim."
CLAIM_TTL_S = 120.0  # claims older than this are stale (a crashed writer) and deleted
SETTLE_SLEEP_S = (0.05, 0.15)  # random sleep before each re-read, so a concurrent writer's alias lands first
STABLE_READS = 3  # reads in a row that must agree before a writer stops
MAX_SETTLE_READS = 20


def model_name_from_data(source: str, target: str) -> str:
    """A registered-model name drawn from a data file and its target (``churn.csv``, ``Exited`` ->
    ``churn-exited``): lower-case letters, digits and dashes, at most 63, so it is a valid MLflow model name and a
    Kubernetes name for the InferenceService that serves it."""
    import re

    stem = source.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in _DATA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

    tail = slug(target)[: MAX_MODEL_NAME // 2]
    head = slug(stem)
    if head and not head[0].isalpha():
        head = "m-" + head
    head = head[: MAX_MODEL_NAME - len(tail) - 1].rstrip("-")  # a long file name gives way to the target
    name = "-".join(part for part in (head, tail) if part) or "model"
    return name if name[0].isalpha() else "m-" + name


@dataclass
class PromotionResult:
    name: str
    version: str  # the version this call tried to promote (or, for rollback, rolled back to)
    champion: str  # the version `champion` points to at the end ("" if none)
    previous: str  # the version `previous` points to at the end ("" if none)
    won: bool  # whether `version` is champion at the end
    repaired: bool = False  # whether a concurrent writer's alias had to be overwritten again
    message: str = ""
    replaced: str = ""  # the champion before this call, when this call replaced it ("" otherwise)


# ------------------------------------------------------------------------------------------------ references
def parse_model_ref(ref: str) -> tuple[str, str, str]:
    """Split "NAME@ALIAS", "NAME/VERSION" or "NAME" into (name, kind, value), kind "alias", "version" or "latest"."""
    text = (ref or "").strip()
    usage = "expected NAME@ALIAS, NAME/VERSION or NAME (latest version)"
    if not text:
        raise KfopsError(f"empty model reference; {usage}")
    if "@" in text and "/" in text:
        raise KfopsError(f"model reference {ref!r} has both '@' and '/'; {usage}")
    if "@" in text:
        name, _, alias = text.partition("@")
        if not name or not alias or "@" in alias:
            raise KfopsError(f"model reference {ref!r} is not valid; {usage}")
        return name, "alias", alias
    if "/" in text:
        name, _, version = text.partition("/")
        if version == "latest" and name:
            return name, "latest", ""
        if not name or not version.isdigit() or int(version) < 1:
            raise KfopsError(f"model reference {ref!r} is not valid: the version must be a number >= 1; {usage}")
        return name, "version", str(int(version))
    return text, "latest", ""


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise KfopsError(f"model '{name}' does not exist") from err
        raise KfopsError(f"cannot read model '{name}': {err.message}") from err


def _aliases(model) -> dict[str, str]:
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _versions(client, name: str) -> list[int]:
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise KfopsError(f"cannot list the versions of model '{name}': {err.message}") from err
    return sorted(int(v.version) for v in found)


def resolve_version(client, name: str, ref_part: str = ""):
    """The ModelVersion for ``ref_part`` of model ``name``: "@alias", "alias", a version number, or "" (latest)."""
    from mlflow.exceptions import MlflowException

    model = _registered_model(client, name)
    part = str(ref_part or "").strip().lstrip("/")
    if part in ("", "latest"):
        numbers = _versions(client, name)
        if not numbers:
            raise KfopsError(f"model '{name}' has no versions")
        part = str(numbers[-1])
    if part.isdigit():
        try:
            return client.get_model_version(name, part)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise KfopsError(f"cannot read version {part} of model '{name}': {err.message}") from err
            numbers = _versions(client, name)
            known = ", ".join(map(str, numbers)) if numbers else "none"
            raise KfopsError(f"model {name} has no version {part} (its versions: {known})") from err
    alias = part.lstrip("@")
    aliases = _aliases(model)
    if alias not in aliases:
        known = ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "none"
        raise KfopsError(f"model {name} has no alias '{alias}' (its aliases: {known})")
    try:
        return client.get_model_version(name, aliases[alias])
    except MlflowException as err:
        raise KfopsError(f"model {name}: alias '{alias}' points to version {aliases[alias]}: {err.message}") from err


def resolve_ref(client, ref: str):
    """The ModelVersion for "NAME@ALIAS", "NAME/VERSION" or "NAME"."""
    name, kind, value = parse_model_ref(ref)
    return resolve_version(client, name, "@" + value if kind == "alias" else value)


# ------------------------------------------------------------------------------------------------ the rule
@dataclass(frozen=True)
class _Candidate:
    version: str
    value: float | None  # the promotion metric, None when the version has no (finite) tag for it
    blessed: bool

    def key(self, metric: str) -> tuple:
        """Sort key: larger wins. Having the metric, then its value (oriented), then the version number."""
        if self.value is None:
            return (0, 0.0, int(self.version))
        return (1, self.value if HIGHER_IS_BETTER[metric] else -self.value, int(self.version))

    def describe(self, metric: str) -> str:
        shown = "no tag" if self.value is None else f"{self.value:.6g}"
        return f"version {self.version} ({metric} {shown})"


def _candidate(version) -> _Candidate:
    tags = version.tags or {}
    return _Candidate(str(version.version), None, tags.get(TAG_BLESSED, "").lower() == "true")


def _with_metric(candidate: _Candidate, version, metric: str) -> _Candidate:
    raw = (version.tags or {}).get(TAG_METRIC_PREFIX + metric)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        value = None
    if value is not None and not math.isfinite(value):
        value = None
    return _Candidate(candidate.version, value, candidate.blessed)


def beats(a: _Candidate, b: _Candidate, metric: str) -> bool:
    return a.key(metric) > b.key(metric)


def _reason(winner: _Candidate, loser: _Candidate, metric: str) -> str:
    if winner.value is not None and loser.value is None:
        return f"version {loser.version} has no {metric} tag"
    if winner.value is not None and winner.value != loser.value:
        direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        return f"{metric} {winner.value:.6g} vs {loser.value:.6g}, {direction} is better"
    return f"equal {metric}, the newer version wins"


# ------------------------------------------------------------------------------------------------ claims
def _parse_claim(value: str) -> tuple[float, float | None] | None:
    start, _, end = str(value).partition("/")
    try:
        return float(start), (float(end) if end else None)
    except ValueError:
        return None


def _finished_claims(tags: dict) -> dict[str, str]:
    """The claims of promotions that had already finished when this one read the model first."""
    return {
        key: value
        for key, value in (tags or {}).items()
        if key.startswith(CLAIM_PREFIX) and (claim := _parse_claim(value)) is not None and claim[1] is not None
    }


def _overlapping_claims(client, name: str, tags: dict, ours: str, finished: dict[str, str], now: float) -> list[str]:
    """Versions whose promotion overlaps ours: every claim but ours and those in ``finished`` (the ones that
    had ended before we started, unchanged since). Deletes claims older than CLAIM_TTL_S on the way."""
    from mlflow.exceptions import MlflowException

    versions = []
    for key, value in (tags or {}).items():
        if not key.startswith(CLAIM_PREFIX):
            continue
        version = key[len(CLAIM_PREFIX) :]
        claim = _parse_claim(value)
        if claim is None or not version.isdigit():
            continue
        start, end = claim
        if max(start, end or 0.0) < now - CLAIM_TTL_S:
            with contextlib.suppress(MlflowException):  # another writer cleaned it up first
                client.delete_registered_model_tag(name, key)
            continue
        if version != ours and finished.get(key) != value:
            versions.append(version)
    return versions


class _Promotion:
    """One call of ``promote``: the state it reads and writes."""

    def __init__(self, client, name: str, metric: str):
        self.client = client
        self.name = name
        self.metric = metric
        self.cache: dict[str, _Candidate | None] = {}

    def candidate(self, version: str) -> _Candidate | None:
        """The version as a candidate; None if it was deleted."""
        from mlflow.exceptions import MlflowException

        version = str(version)
        if version not in self.cache:
            try:
                found = self.client.get_model_version(self.name, version)
            except MlflowException:
                self.cache[version] = None
            else:
                self.cache[version] = _with_metric(_candidate(found), found, self.metric)
        return self.cache[version]

    def read(self):
        model = _registered_model(self.client, self.name)
        return _aliases(model), dict(model.tags or {})

    def best(self, versions) -> _Candidate:
        found = [c for c in (self.candidate(v) for v in set(versions)) if c is not None]
        if not found:
            raise KfopsError(f"model {self.name}: versions {sorted(set(versions))} were deleted during promotion")
        return max(found, key=lambda c: c.key(self.metric))

    def write(self, champion: str, before: str, observed: str) -> None:
        """Move `previous` then `champion`. `previous` is the champion before this promotion, else the one we
        saw in its place; never the new champion itself."""
        previous = before if before and before != champion else observed if observed and observed != champion else ""
        if previous:
            self.client.set_registered_model_alias(self.name, ALIAS_PREVIOUS, previous)
        self.client.set_registered_model_alias(self.name, ALIAS_CHAMPION, champion)

    def fix_previous(self, before: str) -> tuple[str, str]:
        """Make sure `previous` is not `champion`; returns (champion, previous) as they are at the end."""
        from mlflow.exceptions import MlflowException

        aliases, _ = self.read()
        champion, previous = aliases.get(ALIAS_CHAMPION, ""), aliases.get(ALIAS_PREVIOUS, "")
        if previous and previous == champion:
            try:
                if before and before != champion:
                    self.client.set_registered_model_alias(self.name, ALIAS_PREVIOUS, before)
                    previous = before
                else:
                    self.client.delete_registered_model_alias(self.name, ALIAS_PREVIOUS)
                    previous = ""
            except MlflowException as err:
                log.warning("model %s: could not fix alias previous: %s", self.name, err.message)
        return champion, previous


# ------------------------------------------------------------------------------------------------ promote
def promote(
    client,
    name: str,
    version,
    metric: str = DEFAULT_PROMOTION_METRIC,
    force: bool = False,
) -> PromotionResult:
    """Make ``version`` the champion of model ``name`` if it is blessed and wins the rule (see the module doc).

    ``force`` skips the blessing check (an operator's explicit choice); concurrent promotions are still resolved
    by the rule.
    """
    from mlflow.exceptions import MlflowException

    retry.configure()  # the CLI's promote gets the pipeline's retries too (a database restart gives 500s)
    if metric not in METRIC_NAMES:
        raise KfopsError(f"promote: unknown metric '{metric}'; known: {', '.join(METRIC_NAMES)}")
    ours_version = resolve_version(client, name, str(version))
    ours = str(ours_version.version)
    state = _Promotion(client, name, metric)
    me = state.candidate(ours)
    if not me.blessed and not force:
        value = (ours_version.tags or {}).get(TAG_BLESSED, "not set")
        raise KfopsError(
            f"model {name} version {ours} is not blessed ({TAG_BLESSED} is {value}): only a version the gate "
            "blessed may become champion; pass force to override"
        )

    aliases, tags = state.read()
    finished = _finished_claims(tags)  # read before we claim: these promotions precede ours
    before = aliases.get(ALIAS_CHAMPION, "")
    if before == ours:
        message = f"model {name}: version {ours} already is champion; nothing to do"
        log.info(message)
        return PromotionResult(name, ours, ours, aliases.get(ALIAS_PREVIOUS, ""), won=True, message=message)
    # Announce, then look at who else is promoting now. Writing the claim before reading the others' means that
    # of two overlapping promotions at least one sees the other.
    started = time.time()
    claim_key = CLAIM_PREFIX + ours
    client.set_registered_model_tag(name, claim_key, f"{started:.3f}")
    repaired = False
    try:
        aliases, tags = state.read()
        rivals = _overlapping_claims(client, name, tags, ours, finished, time.time())
        target = state.best([ours, *rivals])
        if target.version != ours:
            log.info("model %s: %s is being promoted at the same time and wins", name, target.describe(metric))
        else:
            state.write(ours, before, aliases.get(ALIAS_CHAMPION, ""))
            log.info("model %s: champion -> version %s (was %s)", name, ours, before or "none")

        # Settle: re-read until several reads in a row agree. A writer re-writes its own version when it wins
        # against what it reads, and undoes its own write when an overlapping promotion wins; it never moves a
        # rival's alias to a third version (that rival's writer is still running and settles it).
        stable = 0
        for _ in range(MAX_SETTLE_READS):
            time.sleep(random.uniform(*SETTLE_SLEEP_S))
            aliases, tags = state.read()
            observed = aliases.get(ALIAS_CHAMPION, "")
            rivals = _overlapping_claims(client, name, tags, ours, finished, time.time())
            # The champion from before this promotion is not a contender (see the module doc); an alias a rival
            # wrote is.
            target = state.best([ours, *rivals, *([observed] if observed and observed != before else [])])
            if target.version == observed or (target.version != ours and observed != ours):
                stable = stable + 1 if target.version == observed else 0
                if stable >= STABLE_READS:
                    break
                continue
            stable = 0
            if target.version == ours:
                repaired = True
                seen = state.candidate(observed)
                log.warning(
                    "model %s: a concurrent promotion moved champion to version %s; version %s wins (%s), "
                    "writing it again",
                    name,
                    observed or "none",
                    ours,
                    _reason(me, seen, metric) if seen is not None else "that version is gone",
                )
            else:
                log.info("model %s: %s wins a concurrent promotion; champion -> it", name, target.describe(metric))
            state.write(target.version, before, observed)
        else:
            log.warning("model %s: the champion alias did not settle after %d reads", name, MAX_SETTLE_READS)
    finally:
        try:
            client.set_registered_model_tag(name, claim_key, f"{started:.3f}/{time.time():.3f}")
        except MlflowException as err:
            log.warning("model %s: could not close the promotion claim of version %s: %s", name, ours, err.message)

    champion, previous = state.fix_previous(before)
    if champion == ours:
        message = f"model {name}: version {ours} is champion, previous is {previous or 'none'}"
        if repaired:
            message += " (a concurrent promotion had moved champion; it was written again)"
    elif target.version == ours:
        message = (
            f"model {name}: version {ours} wins but champion points to version {champion or 'none'}: the alias "
            f"kept changing for {MAX_SETTLE_READS} reads; promote again"
        )
    elif champion == target.version:
        message = (
            f"model {name}: version {champion} is champion, not version {ours}: a concurrent promotion of version "
            f"{champion} won ({_reason(target, me, metric)})"
        )
    else:
        message = (
            f"model {name}: version {ours} is not champion: version {target.version} is being promoted at the same "
            f"time and wins ({_reason(target, me, metric)}); champion points to version {champion or 'none'}"
        )
    log.info(message)
    won = champion == ours
    return PromotionResult(
        name, ours, champion, previous, won=won, repaired=repaired, message=message, replaced=before if won else ""
    )


# ------------------------------------------------------------------------------------------------ rollback
def rollback(client, name: str) -> PromotionResult:
    """`champion` goes back to `previous`; the version rolled back from becomes `previous`."""
    retry.configure()
    aliases = _aliases(_registered_model(client, name))
    champion, previous = aliases.get(ALIAS_CHAMPION, ""), aliases.get(ALIAS_PREVIOUS, "")
    if not champion:
        raise KfopsError(f"rollback: model {name} has no champion to roll back")
    if not previous:
        raise KfopsError(f"rollback: model {name} has no previous version to roll back to (champion is {champion})")
    if previous == champion:
        raise KfopsError(f"rollback: model {name}: previous and champion both point to version {champion}")
    # Champion first: serving follows it; `previous` then records what was rolled back from.
    client.set_registered_model_alias(name, ALIAS_CHAMPION, previous)
    client.set_registered_model_alias(name, ALIAS_PREVIOUS, champion)
    message = f"model {name}: rolled back, version {previous} is champion, version {champion} is previous"
    log.info(message)
    return PromotionResult(name, previous, previous, champion, won=True, message=message, replaced=champion)
