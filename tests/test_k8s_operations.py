"""The operations of README "Deploy to Kubernetes" (scale, upgrade, roll back, restore from recovery), as far as they
can run without a cluster: the edits the README tells you to make to k8s/overlays/prod/kustomization.yaml are made
to a copy of the tree and rendered, and the names the kubectl commands use are checked against what renders.

What cannot run here: `kubectl apply/scale/wait/delete` against a cluster (there is none on this machine). The
process side of a scale step (stop N processes, resume M from pod 0's recovery store) is tests/test_rescaling.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from plantpulse.settings import Settings
from tests.test_k8s_render import Doc, flow_config, flow_env, named, pod_spec, render, workloads

ROOT = Path(__file__).resolve().parents[1]
PROD = "k8s/overlays/prod/kustomization.yaml"
# The names README "Deploy to Kubernetes" uses in its kubectl commands.
STATEFULSET = "plantpulse-flow"
FLOW_PODS = "app.kubernetes.io/component=telemetry-flow"
STORE_CLAIM = "recovery-plantpulse-flow-0"
JOBS = ("plantpulse-migrations",)
# The lines of the prod overlay the README tells you to edit.
REPLICAS_LINE = "    count: 4"
BYTEWAX_REPLICAS_LINE = '                  - {name: BYTEWAX_REPLICAS, value: "4"}'
TAG_LINE = "    newTag: 0.1.0"


def _edited_prod(tmp_path: Path, edits: dict[str, str]) -> list[Doc]:
    """Render k8s/overlays/prod from a copy of the tree with `edits` (old line -> new line) made to its
    kustomization.yaml, each line found exactly once."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed on this machine (it is on the project's machines)")
    for directory in ("k8s", "grafana"):
        shutil.copytree(ROOT / directory, tmp_path / directory, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    text = (tmp_path / PROD).read_text()
    for old, new in edits.items():
        assert text.splitlines().count(old) == 1, f"{PROD} has no single line {old!r}"
        text = text.replace(old + "\n", new + "\n")
    (tmp_path / PROD).write_text(text)
    done = subprocess.run(["kubectl", "kustomize", str(tmp_path / "k8s/overlays/prod")],
                          capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _flow_settings(docs: list[Doc], pod: str) -> Settings:
    fields = {k.lower(): v for k, v in {**flow_config(docs), **flow_env(docs)}.items()}
    return Settings.model_validate({**fields, "bytewax_pod_name": pod})


@pytest.mark.parametrize("processes", [1, 3, 8])
def test_scaling_prod_to_m_processes_renders_a_cluster_of_m(tmp_path: Path, processes: int) -> None:
    """README scale step 2: set `count` and BYTEWAX_REPLICAS to M in the prod overlay. Every pod then finds its
    place among M addresses, and the telemetry topic still has a partition for every worker."""
    docs = _edited_prod(tmp_path, {
        REPLICAS_LINE: f"    count: {processes}",
        BYTEWAX_REPLICAS_LINE: BYTEWAX_REPLICAS_LINE.replace('"4"', f'"{processes}"'),
    })
    flow = named(docs, "StatefulSet", STATEFULSET)
    assert flow["spec"]["replicas"] == processes
    for ordinal in range(processes):
        process_id, addresses = _flow_settings(docs, f"{STATEFULSET}-{ordinal}").cluster()
        assert process_id == ordinal and addresses is not None and len(addresses) == processes
        assert addresses[ordinal].startswith(f"{STATEFULSET}-{ordinal}.{flow['spec']['serviceName']}:")
    workers = processes * int(flow_env(docs)["BYTEWAX_WORKERS_PER_PROCESS"])
    telemetry = next(t for t in docs if t["kind"] == "KafkaTopic" and t["metadata"]["name"] == "telemetry")
    assert telemetry["spec"]["partitions"] >= workers


def test_the_largest_planned_scale_is_what_the_topics_allow() -> None:
    """README: at most partitions / workers-per-process processes (16 / 2 = 8) without repartitioning."""
    docs = render("k8s/overlays/prod")
    partitions = {t["spec"]["partitions"] for t in docs if t["kind"] == "KafkaTopic"}
    per_process = int(flow_env(docs)["BYTEWAX_WORKERS_PER_PROCESS"])
    assert partitions == {16} and 16 // per_process == 8


def test_the_flow_pod_selector_of_the_readme_selects_the_flow_only() -> None:
    """`kubectl wait --for=delete pod -l app.kubernetes.io/component=telemetry-flow` waits for the flow's pods and
    for no other workload's."""
    key, value = FLOW_PODS.split("=")
    for path in ("k8s/overlays/dev", "k8s/overlays/prod"):
        matching = [w["metadata"]["name"] for w in workloads(render(path))
                    if w["spec"]["template"]["metadata"].get("labels", {}).get(key) == value]
        assert matching == [STATEFULSET]


def test_the_recovery_store_is_pod_zeros_claim_and_outlives_scaling() -> None:
    """Scale to 0 and back, upgrades and restores keep the store: it is on the claim recovery-plantpulse-flow-0
    (claim template `recovery` of the StatefulSet, ordinal 0), which the StatefulSet never deletes."""
    for path in ("k8s/base", "k8s/overlays/dev", "k8s/overlays/prod"):
        docs = render(path)
        flow = named(docs, "StatefulSet", STATEFULSET)
        template = flow["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        assert f"{template}-{STATEFULSET}-0" == STORE_CLAIM
        assert flow["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
        mount = next(m for m in pod_spec(flow)["containers"][0]["volumeMounts"] if m["name"] == template)
        assert Path(flow_config(docs)["RECOVERY_DIR"]).is_relative_to(mount["mountPath"])


def test_upgrading_and_rolling_back_is_one_line_of_the_prod_overlay(tmp_path: Path) -> None:
    """README upgrade: change `newTag` in k8s/overlays/prod/kustomization.yaml; roll back: change it back. Every
    PlantPulse container (flow, notifier, migrations Job) follows; no other image changes."""
    upgraded = _edited_prod(tmp_path, {TAG_LINE: "    newTag: 0.2.0"})
    current = render("k8s/overlays/prod")

    def images(docs: list[Doc]) -> dict[str, set[str]]:
        return {w["metadata"]["name"]: {c["image"] for c in pod_spec(w)["containers"]} for w in workloads(docs)}

    before, after = images(current), images(upgraded)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {STATEFULSET, "plantpulse-notifier", *JOBS}
    assert all(after[name] == {"plantpulse:0.2.0"} for name in changed)
    for job in JOBS:  # Jobs are immutable: the README deletes them before applying; they must be there to delete
        assert named(current, "Job", job)["spec"]["ttlSecondsAfterFinished"] > 0


def test_the_restore_manifests_recreate_pod_zeros_claim_from_its_snapshot() -> None:
    """README restore: k8s/restore/recovery-snapshot.yaml snapshots recovery-plantpulse-flow-0 and
    recovery-from-snapshot.yaml recreates that claim from the snapshot, as the prod StatefulSet's pod 0 would claim
    it (class, access modes, size, labels of its selector). The claim validates against the Kubernetes schema; the
    VolumeSnapshot is a CRD of the CSI snapshotter (not validated). Restoring needs a cluster with a CSI driver."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    snapshot = yaml.safe_load((ROOT / "k8s/restore/recovery-snapshot.yaml").read_text())
    claim = yaml.safe_load((ROOT / "k8s/restore/recovery-from-snapshot.yaml").read_text())
    kubernetes_validate.validate(claim, "1.32.0", strict=True)
    assert snapshot["kind"] == "VolumeSnapshot" and snapshot["apiVersion"] == "snapshot.storage.k8s.io/v1"
    assert snapshot["spec"]["source"]["persistentVolumeClaimName"] == claim["metadata"]["name"] == STORE_CLAIM
    assert claim["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                           "name": snapshot["metadata"]["name"]}
    flow = named(render("k8s/overlays/prod"), "StatefulSet", STATEFULSET)
    template = flow["spec"]["volumeClaimTemplates"][0]["spec"]
    for key in ("storageClassName", "accessModes", "resources"):
        assert claim["spec"][key] == template[key], key
    assert claim["metadata"]["labels"] == flow["spec"]["selector"]["matchLabels"]
