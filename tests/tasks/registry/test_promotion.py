"""The promotion gate on a real sqlite MLflow registry: first, better, worse, equal, too small a
gain, a champion scored on other data, two processes at once, and promote/rollback by hand."""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_models.encoder import load_encoder
from ssl_models.evaluation import extract_features
from tasks.core.config import load_config
from tasks.core.layout import Layout
from tasks.core.results import Prepared, Pretrained
from tasks.evaluation.scoring import probe_accuracy
from tasks.image.prepared import load_labeled
from tasks.image.register import register_and_gate
from tasks.registry.models import log_encoder_model
from tasks.registry.promotion import registry_lock
from tasks.registry.registration import gate_tags
from tasks.registry.tracking import use_store
from tests.conftest import make_registrable_project, register_stage, write_probe_metrics

NAME = "ssl-encoder"
BIN = Path(sys.executable).parent


def client(uri: str) -> MlflowClient:
    return MlflowClient(uri, registry_uri=uri)


def champion(uri: str) -> int:
    return int(client(uri).get_model_version_by_alias(NAME, "champion").version)


def test_first_version_becomes_champion_and_the_decision_is_recorded(tmp_path, mlflow_store):
    record = register_stage(make_registrable_project(tmp_path / "a", 0.5), load_config(None))
    assert record["version"] == 1 and record["champion"] is True
    assert "first champion" in record["decision"]
    version = client(mlflow_store).get_model_version(NAME, "1")
    assert set(version.aliases) == {"challenger", "champion"}
    assert version.tags["gate/decision"] == "promoted" and version.tags["gate/reason"] == "first"
    run = client(mlflow_store).get_run(record["run_id"])
    assert run.data.tags["gate/decision"] == "promoted"
    assert run.data.metrics["gate/challenger_probe_acc"] == 0.5


def test_the_same_weights_get_no_new_version(tmp_path, mlflow_store):
    first = register_stage(make_registrable_project(tmp_path / "a", 0.5), load_config(None))
    # Another run with the very same weights (a rerun that changed only evaluation params), scored anew
    again = register_stage(make_registrable_project(tmp_path / "b", 0.55), load_config(None))
    versions = client(mlflow_store).search_model_versions(f"name = '{NAME}'")
    assert [int(v.version) for v in versions] == [1] and first["version"] == again["version"] == 1
    assert "promotion gate" in client(mlflow_store).get_registered_model(NAME).description
    assert again["champion"] is True and "stays champion: the same weights" in again["decision"]
    assert client(mlflow_store).get_model_version(NAME, "1").tags["probe_acc"] == repr(0.55)  # re-tagged with today's score
    other = register_stage(make_registrable_project(tmp_path / "c", 0.6, encoder_seed=1), load_config(None))
    assert other["version"] == 2


@pytest.mark.parametrize(
    ("second", "min_improvement", "promoted"),
    [(0.6, 0.0, True), (0.4, 0.0, False), (0.5, 0.0, False), (0.52, 0.05, False), (0.55, 0.05, True)],
    ids=["better", "worse", "equal", "gain-below-min", "gain-exactly-min"],
)
def test_gate_on_the_same_evaluation_data(tmp_path, mlflow_store, second, min_improvement, promoted):
    cfg = load_config(None, [f"register.min_improvement={min_improvement}"])
    register_stage(make_registrable_project(tmp_path / "a", 0.5), cfg)
    record = register_stage(make_registrable_project(tmp_path / "b", second, encoder_seed=1), cfg)

    assert record["champion"] is promoted
    assert champion(mlflow_store) == (2 if promoted else 1)
    assert int(client(mlflow_store).get_model_version_by_alias(NAME, "challenger").version) == 2
    version = client(mlflow_store).get_model_version(NAME, "2")
    tags = version.tags
    assert tags["gate/decision"] == tags["gate"] == ("promoted" if promoted else "rejected")
    # A rejected version holds @challenger alone: its tag and its description's first words say why
    assert set(version.aliases) == ({"challenger", "champion"} if promoted else {"challenger"})
    expected = "Promoted to @champion by the promotion gate." if promoted else "Rejected by the promotion gate: not made @champion"
    assert version.description.startswith(expected), version.description[:200]
    assert tags["gate/champion_version"] == "1"
    assert float(tags["gate/champion_probe_acc"]) == 0.5 and float(tags["gate/challenger_probe_acc"]) == second
    assert tags["gate/champion_reevaluated"] == "false"  # same data: the champion's recorded score is comparable
    run = client(mlflow_store).get_run(record["run_id"])
    assert run.data.metrics["gate/champion_probe_acc"] == 0.5
    assert run.data.metrics["gate/challenger_probe_acc"] == second
    assert run.data.tags["gate/decision"] == tags["gate/decision"]


@pytest.mark.parametrize("changed", ["data", "protocol"])
def test_champion_scored_differently_is_re_evaluated_on_the_current_data(tmp_path, mlflow_store, changed):
    # The champion's recorded 0.99 is on other data (or by another probe), so it must not be used.
    register_stage(make_registrable_project(tmp_path / "a", 0.99), load_config(None))
    cfg = load_config(None, ["evaluate.probe_weight_decays=[0.5]"] if changed == "protocol" else [])
    b = make_registrable_project(tmp_path / "b", 0.0, data_seed=1 if changed == "data" else 0, encoder_seed=1)
    champion_encoder, labeled = load_encoder(tmp_path / "a" / "models" / "encoder"), load_labeled(b.labeled)
    train_x, test_x = (extract_features(champion_encoder, labeled[f"{split}_images"]) for split in ("train", "test"))
    expected = probe_accuracy(train_x, labeled["train_labels"], test_x, labeled["test_labels"], cfg.evaluate)
    write_probe_metrics(b, expected + 0.1)

    record = register_stage(b, cfg)

    tags = client(mlflow_store).get_model_version(NAME, "2").tags
    assert tags["gate/champion_reevaluated"] == "true"
    assert tags["gate/champion_probe_acc"] == f"{expected:.4f}"  # rounded for people; the metric is exact
    assert record["champion"] is True and champion(mlflow_store) == 2


def _register_in_process(root: str, uri: str, probe_acc: float, barrier, results) -> None:
    """One pipeline's register stage, synchronised with the other right before the part that races."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    layout, config = Layout.at(root), load_config(None).resolved()
    use_store(layout.root, "ssl-pipeline")
    prepared, pretrained = Prepared.load(layout), Pretrained.load(layout)
    tags = gate_tags(config, prepared.eval_data_version, probe_acc)
    model_id = log_encoder_model(pretrained.encoder_dir, NAME, pretrained.run_id, tags)
    barrier.wait(timeout=300)  # both have logged their model; register + gate at the same moment
    results.put("ready")
    version, decision = register_and_gate(layout.root, config, model_id, tags, prepared.labeled)
    results.put({"version": int(version.version), "promoted": decision.promoted, "against": decision.champion_version})


def test_two_runs_at_once_neither_share_a_champion_nor_lose_a_version(tmp_path, mlflow_store):
    register_stage(make_registrable_project(tmp_path / "champion", 0.5), load_config(None))
    # Two equal challengers, both better than the champion: only one may win; the other
    # must then be compared with the winner (a tie, so it loses), not with version 1.
    layouts = [make_registrable_project(tmp_path / f"c{i}", 0.6, encoder_seed=i + 1) for i in range(2)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_register_in_process, args=(str(layout.root), mlflow_store, 0.6, barrier, results)) for layout in layouts
    ]
    # Hold the registry lock while both arrive, so the test does not depend on their timing:
    # nothing may be registered while it is held; on release they go one after the other.
    with registry_lock(tmp_path):
        for process in processes:
            process.start()
        assert [results.get(timeout=600) for _ in processes] == ["ready", "ready"]
        time.sleep(5)  # ample time to register and gate, were they not waiting for the lock
        assert [int(v.version) for v in client(mlflow_store).search_model_versions(f"name='{NAME}'")] == [1]
    outcomes = sorted((results.get(timeout=600) for _ in processes), key=lambda r: r["version"])
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]

    versions = sorted(int(v.version) for v in client(mlflow_store).search_model_versions(f"name='{NAME}'"))
    assert versions == [1, 2, 3]
    assert [r["version"] for r in outcomes] == [2, 3]
    winners = [r for r in outcomes if r["promoted"]]
    losers = [r for r in outcomes if not r["promoted"]]
    assert len(winners) == 1 and len(losers) == 1
    assert winners[0]["against"] == 1
    assert losers[0]["against"] == winners[0]["version"]
    assert champion(mlflow_store) == winners[0]["version"]


def _sslpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sslpipe"), *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )


def test_promote_and_rollback_by_hand_through_the_cli(tmp_path, mlflow_store):
    for i, acc in enumerate((0.5, 0.6, 0.4)):  # v1 champion, v2 wins, v3 loses
        register_stage(make_registrable_project(tmp_path / f"p{i}", acc, encoder_seed=i), load_config(None))
    assert champion(mlflow_store) == 2

    out = _sslpipe("promote", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "version 3 is now @champion (was version 2)" in out.stdout
    assert champion(mlflow_store) == 3
    promoted = client(mlflow_store).get_model_version(NAME, "3")
    assert promoted.tags["gate"] == "promoted" and promoted.tags["gate/reason"] == "manual"
    assert promoted.description.startswith("Promoted to @champion by hand (`sslpipe promote`), replacing version 2")
    assert "Rejected by the promotion gate" in promoted.description  # what the gate said stays below

    steps = [(_sslpipe("rollback", cwd=tmp_path), 2), (_sslpipe("rollback", cwd=tmp_path), 1)]
    for out, expected in steps:
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"rolled back to version {expected}" in out.stdout
    assert champion(mlflow_store) == 1

    nothing = _sslpipe("rollback", cwd=tmp_path)
    assert nothing.returncode == 2 and "nothing to roll back" in nothing.stderr
    unknown = _sslpipe("promote", "9", cwd=tmp_path)
    assert unknown.returncode == 2 and "has no version '9' (versions: 1, 2, 3)" in unknown.stderr
    for out in (nothing, unknown):
        assert "Traceback" not in out.stderr + out.stdout
    assert champion(mlflow_store) == 1


def test_the_gate_compares_text_encoders_with_text_encoders_only(tmp_path, mlflow_store):
    from tasks.registry.promotion import PromotionError, gate

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    client.create_registered_model("mixed")
    source = tmp_path / "model"
    source.mkdir()
    image = client.create_model_version("mixed", str(source), tags={"probe_acc": "0.3"})  # no modality tag: an image encoder
    client.set_registered_model_alias("mixed", "champion", image.version)
    text = client.create_model_version("mixed", str(source), tags={"probe_acc": "0.7", "modality": "text"})
    with pytest.raises(PromotionError, match="is an image encoder, version 2 a text one: the gate compares like with like"):
        gate(client, "mixed", text, 0.7, "champion", 0.0, rescore=lambda version: pytest.fail("nothing is re-scored across modalities"))
    assert client.get_registered_model("mixed").aliases["champion"] == image.version
