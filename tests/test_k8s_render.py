"""The kustomize tree under k8s/ renders, every rendered object is a valid Kubernetes object, and the overlays say
what they promise (dev: single replicas and the simulator; prod: operator resources, topics with enough partitions
and explicit retention; one image tag; Grafana's provisioning generated from grafana/ unchanged).

Rendering uses the preinstalled `kubectl kustomize` (v1.32); each overlay is rendered once per session (`render`).
Validation is offline, against the Kubernetes 1.32 JSON schemas shipped with `kubernetes-validate`, in strict
mode (unknown fields are errors). Custom resources of the Strimzi (Kafka, KafkaNodePool, KafkaTopic), Altinity
(ClickHouseInstallation) and Prometheus (ServiceMonitor) operators are skipped by kind: their CRDs are not
Kubernetes schemas and not installed here. Nothing here applies the manifests: there is no cluster on this machine.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from plantpulse.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ("k8s/base", "k8s/overlays/dev", "k8s/overlays/prod")
KUBERNETES_VERSION = "1.32.0"
OPERATOR_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "ClickHouseInstallation", "ServiceMonitor"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
GRAFANA_FILE_MAPS = ("grafana-datasources", "grafana-dashboard-provider", "grafana-dashboards", "grafana-alerting")

Doc = dict[str, Any]


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _rendered(path: str) -> tuple[Doc, ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed on this machine (it is on the project's machines)")
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed: {done.stderr.strip()}")
    return tuple(doc for doc in yaml.load_all(done.stdout, Loader=_LOADER) if doc)


def render(path: str) -> list[Doc]:
    """The objects `kubectl kustomize <path>` renders (rendered once per session; a fresh copy each call)."""
    return copy.deepcopy(list(_rendered(path)))


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Doc) -> Doc:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    """The object of that kind whose name is `name`, or `name-<hash>` for a generated ConfigMap."""
    found = [d for d in docs if d["kind"] == kind and (d["metadata"]["name"] == name or (
        kind == "ConfigMap" and d["metadata"]["name"].rsplit("-", 1)[0] == name))]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def flow_config(docs: list[Doc]) -> dict[str, str]:
    return dict(named(docs, "ConfigMap", "plantpulse-config")["data"])


def flow_env(docs: list[Doc]) -> dict[str, str]:
    container = pod_spec(named(docs, "StatefulSet", "plantpulse-flow"))["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*OVERLAYS, "k8s/overlays/prod/clickhouse", "grafana"])
def test_every_kustomization_renders(path: str) -> None:
    docs = render(path)
    assert docs and all({"apiVersion", "kind", "metadata"} <= doc.keys() for doc in docs)
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "an object is rendered twice"


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(path: str) -> None:
    """Strict validation (unknown fields fail) of every object but the operators' custom resources."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(path)
    checked, errors = [], []
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error}")
        checked.append(doc["kind"])
    assert errors == []
    # The application's kinds were among them (a skip list that swallowed everything would pass vacuously).
    assert {"StatefulSet", "Deployment", "Job", "Service", "ConfigMap", "NetworkPolicy", "ServiceAccount",
            "PodDisruptionBudget"} <= set(checked)


def test_the_validator_rejects_what_a_cluster_would_reject() -> None:
    """Positive control: a misspelt field and a wrong type fail validation."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    flow = named(render("k8s/base"), "StatefulSet", "plantpulse-flow")
    misspelt = {**flow, "spec": {**flow["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = {**flow, "spec": {**flow["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", OVERLAYS)
def test_grafana_configmaps_are_the_files_of_grafana_byte_for_byte(path: str) -> None:
    """The provisioning ConfigMaps Grafana mounts are generated from grafana/provisioning (one source): every file
    is an entry, unchanged; the access settings are grafana/grafana-access.env, entry for entry."""
    docs = render(path)
    rendered = sorted((key, value) for name in GRAFANA_FILE_MAPS
                      for key, value in named(docs, "ConfigMap", name)["data"].items())
    files = sorted(p for p in (ROOT / "grafana" / "provisioning").rglob("*") if p.is_file())
    assert rendered == sorted((p.name, p.read_bytes().decode()) for p in files)
    env_lines = (ROOT / "grafana" / "grafana-access.env").read_text().splitlines()
    expected = dict(line.split("=", 1) for line in env_lines if line and not line.startswith("#"))
    assert named(docs, "ConfigMap", "grafana-access")["data"] == expected
    # ...and the Grafana Deployment mounts exactly these (the generated, hash-suffixed names).
    grafana = pod_spec(named(docs, "Deployment", "grafana"))
    mounted = {v["configMap"]["name"] for v in grafana["volumes"] if "configMap" in v}
    generated = {named(docs, "ConfigMap", name)["metadata"]["name"] for name in GRAFANA_FILE_MAPS}
    assert mounted == generated
    mounts = {m["mountPath"] for m in grafana["containers"][0]["volumeMounts"]}
    provider = yaml.safe_load(named(docs, "ConfigMap", "grafana-dashboard-provider")["data"]["plantpulse.yaml"])
    assert provider["providers"][0]["options"]["path"] in mounts  # where the dashboards are looked for


def _components(docs: list[Doc]) -> set[str]:
    return {w["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
            for w in workloads(docs) if w["kind"] != "CronJob"}


def test_dev_overlay_runs_everything_once_and_the_simulator() -> None:
    docs = render("k8s/overlays/dev")
    replicas = {w["metadata"]["name"]: w["spec"]["replicas"] for w in workloads(docs) if "replicas" in w["spec"]}
    assert replicas and set(replicas.values()) == {1}, replicas
    assert int(flow_env(docs)["BYTEWAX_REPLICAS"]) == 1
    assert "simulator" in _components(docs)
    simulator = next(w for w in workloads(docs) if pod_spec(w)["containers"][0].get("args", [""])[0] == "sim")
    assert simulator["kind"] == "Deployment"
    # The backing services the brief asks for, as StatefulSets: Kafka (KRaft, official image), ClickHouse, MinIO.
    images = {named(docs, "StatefulSet", n)["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0]
              for n in ("kafka", "clickhouse", "minio")}
    assert images == {"apache/kafka", "clickhouse/clickhouse-server", "minio/minio"}
    kafka_env = {e["name"]: e.get("value") for e in pod_spec(named(docs, "StatefulSet", "kafka"))["containers"][0]["env"]}
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # No operator manages topics in dev: the Job does, with the one topic creator.
    topics = named(docs, "Job", "plantpulse-topics")
    assert pod_spec(topics)["containers"][0]["args"] == ["topics", "ensure"]
    assert not [d for d in docs if d["kind"] in OPERATOR_KINDS]
    bootstrap = flow_config(docs)["KAFKA_BOOTSTRAP_SERVERS"]
    service = bootstrap.split(".")[0]
    assert named(docs, "Service", service)["metadata"]["namespace"] == bootstrap.split(".")[1] == "kafka"


@pytest.mark.parametrize("path", ["k8s/base", "k8s/overlays/prod"])
def test_only_dev_runs_the_simulator(path: str) -> None:
    docs = render(path)
    assert "simulator" not in _components(docs)
    assert not [w for w in workloads(docs) if pod_spec(w)["containers"][0].get("args", [""])[0] == "sim"]


def test_prod_topics_have_partitions_for_every_worker_and_explicit_retention() -> None:
    """Every topic `plantpulse topics ensure` would create is a Strimzi KafkaTopic with at least as many partitions
    as the flow has workers (replicas x BYTEWAX_WORKERS_PER_PROCESS, read from the rendered StatefulSet), and the
    retention/cleanup of connectors.topics.topic_configs, spelled out."""
    from connectors.topics import topic_configs

    docs = render("k8s/overlays/prod")
    flow = named(docs, "StatefulSet", "plantpulse-flow")
    env = flow_env(docs)
    workers = flow["spec"]["replicas"] * int(env["BYTEWAX_WORKERS_PER_PROCESS"])
    assert workers == 8 and int(env["BYTEWAX_REPLICAS"]) == flow["spec"]["replicas"]
    config = flow_config(docs)
    settings = Settings.model_validate({k.lower(): v for k, v in config.items()})
    expected = topic_configs(settings)
    topics = {t["metadata"]["name"]: t for t in docs if t["kind"] == "KafkaTopic"}
    assert set(topics) == set(expected)
    kafka = next(d for d in docs if d["kind"] == "Kafka")
    for name, topic in topics.items():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["partitions"] >= workers, name
        assert topic["spec"]["partitions"] == settings.topic_partitions  # what `topics ensure` would create
        assert {k: str(v) for k, v in topic["spec"]["config"].items() if k in expected[name]} == expected[name]
        assert int(topic["spec"]["config"]["retention.ms"]) > 0
        assert topic["spec"]["replicas"] == 3
    # The flow reaches the bootstrap Service Strimzi creates for this Kafka (<name>-kafka-bootstrap).
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka['metadata']['name']}-kafka-bootstrap.kafka.svc:9092"
    pools = [d for d in docs if d["kind"] == "KafkaNodePool"]
    assert pools and all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"] for p in pools)
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    # No topics Job and no Kafka/ClickHouse StatefulSets beside the operators.
    assert {w["metadata"]["name"] for w in workloads(docs)} == {
        "plantpulse-flow", "plantpulse-notifier", "grafana", "plantpulse-migrations"}


def test_prod_clickhouse_is_an_altinity_installation_on_the_encrypted_disk() -> None:
    docs = render("k8s/overlays/prod")
    chi = next(d for d in docs if d["kind"] == "ClickHouseInstallation")
    config = flow_config(docs)
    # The operator names the installation's Service clickhouse-<name>.
    assert config["CLICKHOUSE_URL"] == f"http://clickhouse-{chi['metadata']['name']}.clickhouse.svc:8123"
    assert named(docs, "ConfigMap", "grafana-settings")["data"]["CLICKHOUSE_HOST"] == \
        f"clickhouse-{chi['metadata']['name']}.clickhouse.svc"
    pod = chi["spec"]["templates"]["podTemplates"][0]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "clickhouse"  # what the NetworkPolicies name
    disk = named(docs, "ConfigMap", "plantpulse-encrypted-disk")
    assert disk["metadata"]["namespace"] == chi["metadata"]["namespace"] == "clickhouse"
    # The operator writes spec.configuration.files into config.d/: the very file the engine test loads.
    xml = (ROOT / "k8s/overlays/prod/clickhouse/clickhouse-encrypted-disk.xml").read_text()
    assert chi["spec"]["configuration"]["files"] == {"config.d/plantpulse-encrypted-disk.xml": xml}
    container = pod["spec"]["containers"][0]
    assert [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
            if e["name"] == "CLICKHOUSE_DISK_KEY_HEX"] == ["clickhouse-disk-key"]
    claims = chi["spec"]["templates"]["volumeClaimTemplates"]
    assert {c["spec"]["storageClassName"] for c in claims} == {named(docs, "StorageClass", "plantpulse-encrypted")[
        "metadata"]["name"]}


def _plantpulse_images(docs: list[Doc]) -> set[str]:
    containers = [c for w in workloads(docs) for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", [])]
    return {c["image"] for c in containers if c["image"].split(":")[0].rsplit("/", 1)[-1] == "plantpulse"}


@pytest.mark.parametrize("path", OVERLAYS)
def test_one_images_entry_sets_every_plantpulse_container(path: str) -> None:
    """The `images:` entry of the kustomization is the one place the PlantPulse image is chosen."""
    docs = render(path)
    entry = next(i for i in yaml.safe_load((ROOT / path / "kustomization.yaml").read_text())["images"]
                 if i["name"] == "plantpulse")
    assert _plantpulse_images(docs) == {f"{entry.get('newName', 'plantpulse')}:{entry['newTag']}"}


def test_the_backing_services_run_the_images_of_the_compose_file() -> None:
    """One version of each backing service across the two ways of deploying: the images the dev overlay runs
    (Kafka, ClickHouse, MinIO and its client, Grafana) are the ones docker-compose.yml runs."""
    compose_file = ROOT / "docker-compose.yml"
    if not compose_file.exists():
        pytest.skip("docker-compose.yml is not in this tree")
    compose = {s.get("image") for s in yaml.safe_load(compose_file.read_text())["services"].values()}
    docs = render("k8s/overlays/dev")
    ours = {c["image"] for w in workloads(docs) for c in pod_spec(w)["containers"] + pod_spec(w).get(
        "initContainers", []) if "plantpulse" not in c["image"]}
    assert {image.split(":")[0] for image in ours} == {
        "apache/kafka", "clickhouse/clickhouse-server", "minio/minio", "minio/mc", "grafana/grafana"}
    assert ours <= compose, sorted(ours - compose)
    prod = render("k8s/overlays/prod")
    chi = next(d for d in prod if d["kind"] == "ClickHouseInstallation")
    assert {c["image"] for c in chi["spec"]["templates"]["podTemplates"][0]["spec"]["containers"]} <= compose
