"""Promotion and rollback against a real sqlite MLflow registry holding a real trained model.

The race tests run two OS processes that promote two blessed versions of one model at the same moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kfops.components import registry as promotion
from kfops.components.contracts import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    TAG_BLESSED,
    TAG_METRIC_PREFIX,
    KfopsError,
)
from kfops.components.registry import parse_model_ref, promote, resolve_version, rollback
from tests.conftest import train_prepared

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, prepared, fast_config):
    """(store URI, model URI of one trained model, client); versions are registered from that one model."""
    import mlflow

    root = tmp_path_factory.mktemp("promotion")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", str(root / "art"))
        outcome = train_prepared(
            prepared,
            fast_config,
            str(root / "model"),
            str(root / "tb"),
            experiment="promotion",
            tracking_uri=uri,
            data_sha256=prepared["sha256"],
        )
    mlflow.set_tracking_uri(uri)
    return uri, outcome.model_uri, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def make_model(registry, name: str, versions: list[tuple[bool, float | None]]) -> list[str]:
    """Register one version per (blessed, f1_macro or None) of the trained model under ``name``."""
    import mlflow

    uri, model_uri, client = registry
    mlflow.set_tracking_uri(uri)
    numbers = []
    for blessed, f1 in versions:
        number = str(mlflow.register_model(model_uri, name).version)
        client.set_model_version_tag(name, number, TAG_BLESSED, "true" if blessed else "false")
        if f1 is not None:
            client.set_model_version_tag(name, number, TAG_METRIC_PREFIX + "f1_macro", f"{f1:.6g}")
        numbers.append(number)
    return numbers


def aliases(client, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


@pytest.fixture
def fast_settle(monkeypatch):
    monkeypatch.setattr(promotion, "SETTLE_SLEEP_S", (0.01, 0.03))


# ------------------------------------------------------------------------------------------------ references
@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("fraud@champion", ("fraud", "alias", "champion")),
        ("fraud/3", ("fraud", "version", "3")),
        ("fraud", ("fraud", "latest", "")),
        ("fraud/latest", ("fraud", "latest", "")),
    ],
)
def test_parse_model_ref(ref, expected):
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "fraud@", "@champion", "fraud/", "fraud/x", "fraud/0", "a/1@b", "/3"])
def test_parse_model_ref_errors_name_the_ref(ref):
    with pytest.raises(KfopsError) as err:
        parse_model_ref(ref)
    assert (repr(ref) in str(err.value)) if ref else ("empty" in str(err.value))


def test_resolve_version_errors(registry):
    client = registry[2]
    (number,) = make_model(registry, "resolve", [(True, 0.8)])
    client.set_registered_model_alias("resolve", "challenger", number)
    assert str(resolve_version(client, "resolve", "@challenger").version) == number
    assert str(resolve_version(client, "resolve", "").version) == number
    assert str(resolve_version(client, "resolve", number).version) == number
    with pytest.raises(KfopsError, match="model 'nope' does not exist"):
        resolve_version(client, "nope", "1")
    with pytest.raises(KfopsError, match="model resolve has no version 7"):
        resolve_version(client, "resolve", "7")
    with pytest.raises(KfopsError, match="model resolve has no alias 'foo'"):
        resolve_version(client, "resolve", "@foo")


# ------------------------------------------------------------------------------------------------ promote
def test_promote_refuses_an_unblessed_version_unless_forced(registry, fast_settle):
    client = registry[2]
    (number,) = make_model(registry, "unblessed", [(False, 0.9)])
    with pytest.raises(KfopsError, match="not blessed"):
        promote(client, "unblessed", number)
    assert aliases(client, "unblessed") == {}
    result = promote(client, "unblessed", number, force=True)
    assert result.won and result.champion == number and aliases(client, "unblessed") == {ALIAS_CHAMPION: number}


def test_promote_sets_champion_and_previous_and_is_idempotent(registry, fast_settle):
    client = registry[2]
    one, two = make_model(registry, "chain", [(True, 0.80), (True, 0.85)])
    first = promote(client, "chain", one)
    assert first.won and first.champion == one and first.previous == "" and first.replaced == ""
    second = promote(client, "chain", two)
    assert second.won and not second.repaired and second.replaced == one
    assert aliases(client, "chain") == {ALIAS_CHAMPION: two, ALIAS_PREVIOUS: one}
    again = promote(client, "chain", two)
    assert again.won and "already is champion" in again.message
    assert aliases(client, "chain") == {ALIAS_CHAMPION: two, ALIAS_PREVIOUS: one}


def test_a_blessed_version_promoted_on_its_own_replaces_the_champion(registry, fast_settle):
    # The gate judged it against the champion on the same test rows; recorded metrics from other test data do
    # not overrule that. The metric rule settles only promotions that overlap.
    client = registry[2]
    best, worse, untagged = make_model(registry, "keep", [(True, 0.90), (True, 0.70), (True, None)])
    promote(client, "keep", best)
    result = promote(client, "keep", worse)
    assert result.won and result.replaced == best
    assert aliases(client, "keep") == {ALIAS_CHAMPION: worse, ALIAS_PREVIOUS: best}
    assert promote(client, "keep", untagged).won
    assert aliases(client, "keep") == {ALIAS_CHAMPION: untagged, ALIAS_PREVIOUS: worse}


def test_the_race_rule_orders_by_metric_direction_then_version():
    from kfops.components.registry import _Candidate, beats

    assert beats(_Candidate("1", 0.2, True), _Candidate("2", 0.3, True), "val_loss")  # lower loss wins
    assert beats(_Candidate("2", 0.3, True), _Candidate("1", 0.2, True), "f1_macro")
    assert beats(_Candidate("1", 0.1, True), _Candidate("2", None, True), "f1_macro")  # a tag beats none
    assert beats(_Candidate("3", 0.5, True), _Candidate("2", 0.5, True), "f1_macro")  # tie: newer wins


def test_unknown_promotion_metric(registry, fast_settle):
    client = registry[2]
    (one,) = make_model(registry, "loss", [(True, 0.2)])
    with pytest.raises(KfopsError, match="unknown metric"):
        promote(client, "loss", one, metric="auc")


def test_rollback_restores_and_a_second_rollback_undoes_it(registry, fast_settle):
    client = registry[2]
    one, two = make_model(registry, "roll", [(True, 0.8), (True, 0.9)])
    promote(client, "roll", one)
    with pytest.raises(KfopsError, match="no previous version"):
        rollback(client, "roll")
    promote(client, "roll", two)
    back = rollback(client, "roll")
    assert back.champion == one and back.previous == two
    assert aliases(client, "roll") == {ALIAS_CHAMPION: one, ALIAS_PREVIOUS: two}
    rollback(client, "roll")
    assert aliases(client, "roll") == {ALIAS_CHAMPION: two, ALIAS_PREVIOUS: one}


def test_rollback_without_champion_or_model(registry):
    client = registry[2]
    make_model(registry, "nochamp", [(True, 0.8)])
    with pytest.raises(KfopsError, match="no champion"):
        rollback(client, "nochamp")
    with pytest.raises(KfopsError, match="model 'ghost' does not exist"):
        rollback(client, "ghost")


# ------------------------------------------------------------------------------------------------ interleavings
class Interleaving:
    """A real client whose first write of `champion` to ``ours`` lets a rival writer act just before or after it."""

    def __init__(self, client, name: str, ours: str, rival: str, rival_lands: str):
        self.client, self.name, self.ours, self.rival, self.rival_lands = client, name, ours, rival, rival_lands
        self.done = False

    def __getattr__(self, attr):
        return getattr(self.client, attr)

    def set_registered_model_alias(self, name, alias, version):
        rival_acts = not self.done and alias == ALIAS_CHAMPION and str(version) == self.ours
        if rival_acts:
            self.done = True
            now = time.time()
            # The rival claimed, wrote and finished while we were between our read and our write.
            self.client.set_registered_model_tag(name, promotion.CLAIM_PREFIX + self.rival, f"{now:.3f}/{now:.3f}")
            if self.rival_lands == "before":
                self.client.set_registered_model_alias(name, alias, self.rival)
        self.client.set_registered_model_alias(name, alias, version)
        if rival_acts and self.rival_lands == "after":
            self.client.set_registered_model_alias(name, alias, self.rival)


def test_a_winner_repairs_a_worse_rival_that_wrote_last(registry, fast_settle):
    client = registry[2]
    ours, rival = make_model(registry, "repair", [(True, 0.9), (True, 0.8)])
    result = promote(Interleaving(client, "repair", ours, rival, "after"), "repair", ours)
    assert result.won and result.repaired and result.champion == ours
    assert aliases(client, "repair")[ALIAS_CHAMPION] == ours
    assert aliases(client, "repair").get(ALIAS_PREVIOUS) == rival  # no champion before: the one it displaced


def test_a_loser_leaves_a_better_rival_in_place(registry, fast_settle):
    client = registry[2]
    ours, rival = make_model(registry, "leave", [(True, 0.8), (True, 0.9)])
    result = promote(Interleaving(client, "leave", ours, rival, "after"), "leave", ours)
    assert not result.won and not result.repaired and result.champion == rival
    assert "f1_macro 0.9 vs 0.8" in result.message
    assert aliases(client, "leave")[ALIAS_CHAMPION] == rival


def test_a_slow_loser_undoes_its_own_late_write(registry, fast_settle):
    client = registry[2]
    old, ours, rival = make_model(registry, "slow", [(True, 0.5), (True, 0.8), (True, 0.9)])
    promote(client, "slow", old)
    # The rival finished before our write landed: nobody else is left to put it back.
    result = promote(Interleaving(client, "slow", ours, rival, "before"), "slow", ours)
    assert not result.won and result.champion == rival
    assert aliases(client, "slow") == {ALIAS_CHAMPION: rival, ALIAS_PREVIOUS: old}


# ------------------------------------------------------------------------------------------------ the race
def _race_worker() -> None:
    """One racing process: argv = URI, JSON list of [model name, version] per round, barrier dir, my index."""
    import mlflow

    uri, rounds, barrier, me = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.get_registered_model(rounds[0][0])  # connect before the start line
    for index, (name, version) in enumerate(rounds):
        (barrier / f"ready-{index}-{me}").touch()
        # Generous: on a loaded 2-CPU CI machine the other process may still be importing MLflow.
        deadline = time.time() + 120
        while len(list(barrier.glob(f"ready-{index}-*"))) < 2:
            if time.time() > deadline:
                raise SystemExit("the other racer never arrived")
            time.sleep(0.001)
        started = time.time()
        result = promote(client, name, version)
        print(json.dumps({**result.__dict__, "started": started, "ended": time.time()}), flush=True)


def test_two_processes_racing_agree_on_the_winner(registry, tmp_path):
    client = registry[2]
    rounds = []  # (name, version of racer 0, version of racer 1, winner, champion before)
    plans = [
        # (champion before?, f1 of racer 0, f1 of racer 1): the better metric wins, else the newer version.
        (False, 0.90, 0.80),
        (False, 0.80, 0.90),
        (True, 0.90, 0.85),
        (True, 0.85, 0.85),
    ]
    for index, (with_champion, f1_a, f1_b) in enumerate(plans):
        name = f"race-{index}"
        old, a, b = make_model(registry, name, [(True, 0.5), (True, f1_a), (True, f1_b)])
        if with_champion:
            promote(client, name, old)
        winner = a if f1_a > f1_b else b  # on a tie the newer version, b
        rounds.append((name, a, b, winner, old if with_champion else ""))

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = "from tests.components.test_promotion import _race_worker; _race_worker()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, registry[0], json.dumps([[r[0], r[1 + i]] for r in rounds]), barrier, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    finished = [proc.communicate(timeout=300) for proc in procs]
    # Both racers' errors at once: when one crashes, the other only says the crashed one never arrived.
    failures = [
        f"racer {i}: {err[-2000:]}"
        for i, (proc, (_, err)) in enumerate(zip(procs, finished, strict=True))
        if proc.returncode
    ]
    assert not failures, "\n".join(failures)
    outputs = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out, _ in finished]

    for index, (name, a, b, winner, old) in enumerate(rounds):
        results = [outputs[0][index], outputs[1][index]]
        loser = b if winner == a else a
        final = aliases(client, name)
        assert final[ALIAS_CHAMPION] == winner, (name, results)
        assert final.get(ALIAS_PREVIOUS, "") != final[ALIAS_CHAMPION]
        assert final.get(ALIAS_PREVIOUS, "") in ({old, loser} if old else {"", loser})
        for result in results:
            # Each process says truthfully whether it won, and names the final champion.
            assert result["won"] == (result["version"] == winner), (name, results)
            assert result["champion"] == winner, (name, results)
        # They really ran at the same time.
        assert max(r["started"] for r in results) < min(r["ended"] for r in results)
