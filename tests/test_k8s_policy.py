"""Policy over the rendered manifests of every overlay: every container of every workload is limited, probed and
locked down; credentials are only referenced; the flow's StatefulSet keeps its cluster, drains within its grace
period and is scraped; the NetworkPolicies cover every component and still let only the named connections through.

The workloads are whatever `kubectl kustomize` renders (tests/test_k8s_render.py `render`, once per session), not
a hand-made list, so a workload added later is held to the same rules. The operators' custom resources (Strimzi,
Altinity) are not workloads here: their pods are made by the operators, which set their own probes. No cluster
runs on this machine, so the rules are checked on the manifests, and the NetworkPolicies are evaluated by
tests/test_least_privilege.py's evaluator, not by a CNI.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import test_least_privilege as least
from tests.test_k8s_render import OVERLAYS, Doc, flow_config, flow_env, named, pod_spec, render, workloads

ROOT = Path(__file__).resolve().parents[1]
PLANTPULSE = [sys.executable, "-m", "plantpulse.cli"]
RESOURCES = ("cpu", "memory")


def _containers(workload: Doc, init: bool = True) -> list[Doc]:
    spec = pod_spec(workload)
    return list(spec["containers"]) + (list(spec.get("initContainers", [])) if init else [])


def _violations(path: str, rule: Any) -> list[str]:
    """What `rule(workload, docs)` reports (strings) over every workload the overlay renders."""
    docs = render(path)
    found = [f"{w['kind']}/{w['metadata']['name']}: {problem}" for w in workloads(docs) for problem in rule(w, docs)]
    return found


def test_the_rules_see_every_component() -> None:
    names = {w["metadata"]["name"] for w in workloads(render("k8s/overlays/dev"))}
    assert {"plantpulse-flow", "plantpulse-notifier", "grafana", "plantpulse-migrations", "plantpulse-simulator",
            "kafka", "plantpulse-topics", "clickhouse", "minio", "plantpulse-lake-bucket"} == names


def _resources(w: Doc, docs: list[Doc]) -> list[str]:
    return [f"{c['name']}: no {kind} {resource}" for c in _containers(w) for kind in ("requests", "limits")
            for resource in RESOURCES if resource not in c.get("resources", {}).get(kind, {})]


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_container_has_requests_and_limits(path: str) -> None:
    assert _violations(path, _resources) == []


def _probes(w: Doc, docs: list[Doc]) -> list[str]:
    if w["kind"] in ("Job", "CronJob"):
        job = w["spec"]["jobTemplate"]["spec"] if w["kind"] == "CronJob" else w["spec"]
        return [] if job.get("activeDeadlineSeconds", 0) > 0 and job.get("backoffLimit", -1) >= 0 else [
            "a Job needs activeDeadlineSeconds and backoffLimit"]
    return [f"{c['name']}: no {probe}" for c in _containers(w, init=False)
            for probe in ("livenessProbe", "readinessProbe") if probe not in c]


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_long_running_container_has_liveness_and_readiness_probes(path: str) -> None:
    """Jobs run to completion (their exit is their health): instead of probes they must have a deadline and a
    retry limit, so a hung or failing run ends. Init containers cannot have these probes."""
    assert _violations(path, _probes) == []


def _effective(pod: Doc, container: Doc, key: str) -> Any:
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def _locked_down(w: Doc, docs: list[Doc]) -> list[str]:
    pod = pod_spec(w)
    problems = [f"pod: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    problems += [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    for c in _containers(w):
        context = c.get("securityContext", {})
        checks = {
            "runAsNonRoot": _effective(pod, c, "runAsNonRoot") is True,
            "runAsUser not 0": (_effective(pod, c, "runAsUser") or 1) != 0,
            "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation false": context.get("allowPrivilegeEscalation") is False,
            "not privileged": context.get("privileged", False) is False,
            "drop ALL capabilities": context.get("capabilities", {}).get("drop") == ["ALL"]
            and not context.get("capabilities", {}).get("add"),
            "seccomp RuntimeDefault": (_effective(pod, c, "seccompProfile") or {}).get("type") == "RuntimeDefault",
        }
        problems += [f"{c['name']}: {rule}" for rule, ok in checks.items() if not ok]
    return problems


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_container_runs_locked_down(path: str) -> None:
    assert _violations(path, _locked_down) == []


def _writable(w: Doc, docs: list[Doc]) -> list[str]:
    pod = pod_spec(w)
    writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v}
    writable |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
    data_dir = flow_config(docs)["DATA_DIR"]
    problems = []
    for c in _containers(w):
        mounts = {m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in writable and not m.get("readOnly")}
        if not mounts:
            problems.append(f"{c['name']}: no writable volume")
        if c["image"].split(":")[0].endswith("plantpulse"):
            wanted = {"/tmp"} | ({data_dir} if c.get("args", [""])[0] in ("run", "notify", "sim") else set())
            problems += [f"{c['name']}: {path} not writable" for path in sorted(wanted - mounts)]
    return problems


@pytest.mark.parametrize("path", OVERLAYS)
def test_read_only_containers_get_writable_volumes_where_they_write(path: str) -> None:
    """Every container gets a writable emptyDir or volume claim; PlantPulse's containers at /tmp and, where they keep
    files (flow: recovery store, notifier: ledger, simulator: fleet metadata), at DATA_DIR."""
    assert _violations(path, _writable) == []


def _token(w: Doc, docs: list[Doc]) -> list[str]:
    pod = pod_spec(w)
    accounts = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == pod.get(
        "serviceAccountName") and d["metadata"].get("namespace") == w["metadata"].get("namespace")]
    problems = [] if pod.get("automountServiceAccountToken") is False else ["the pod mounts a token"]
    if len(accounts) != 1 or accounts[0].get("automountServiceAccountToken") is not False:
        problems.append(f"its own ServiceAccount {pod.get('serviceAccountName')} with no token mounted")
    return problems


@pytest.mark.parametrize("path", OVERLAYS)
def test_no_pod_mounts_a_service_account_token(path: str) -> None:
    assert _violations(path, _token) == []


def _credentials(w: Doc, docs: list[Doc]) -> list[str]:
    pod = pod_spec(w)
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v or (
        "projected" in v and all("secret" in s for s in v["projected"]["sources"]))}
    problems = []
    for c in _containers(w):
        problems += [f"{c['name']}: {v['name']} inline" for v in c.get("env", [])
                     if least._SECRET_NAME.search(v["name"]) and ("value" in v or "secretKeyRef" not in v["valueFrom"])]
        for source in c.get("envFrom", []):
            if not set(source) <= {"configMapRef", "secretRef", "prefix"}:
                problems.append(f"{c['name']}: envFrom {source}")
            if "configMapRef" not in source:
                continue
            config = next(d for d in docs if d["kind"] == "ConfigMap"
                          and d["metadata"]["name"] == source["configMapRef"]["name"])
            secret_dirs = [m["mountPath"] + "/" for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
            for key, value in config["data"].items():
                # Only the path of a file of a mounted Secret may have a secret-looking name (`*__FILE`).
                if least._SECRET_NAME.search(key) and not (
                        key.endswith("__FILE") and any(value.startswith(d) for d in secret_dirs)):
                    problems.append(f"{c['name']}: ConfigMap key {key}")
    return problems


@pytest.mark.parametrize("path", OVERLAYS)
def test_credentials_are_referenced_never_inlined(path: str) -> None:
    """Secret-looking variables come from a Secret (secretKeyRef), whole Secrets only by envFrom secretRef, a
    Secret's file only through a secret volume; no overlay renders a Secret object or binds a Role."""
    assert _violations(path, _credentials) == []
    docs = render(path)
    assert [d["metadata"]["name"] for d in docs if d["kind"] in ("Secret", "RoleBinding", "ClusterRoleBinding")] == []


# ---------------------------------------------------------------------------------------------------------------
# The flow.


@pytest.mark.parametrize("path", OVERLAYS)
def test_flow_is_ready_when_consuming_and_keeps_its_cluster(path: str) -> None:
    docs = render(path)
    flow = named(docs, "StatefulSet", "plantpulse-flow")
    pod = pod_spec(flow)
    container = pod["containers"][0]
    config, env = flow_config(docs), flow_env(docs)
    metrics = next(p for p in container["ports"] if p["containerPort"] == int(config["METRICS_PORT"]))
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": metrics["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": metrics["name"]}
    assert container["args"] == ["run"]
    assert int(env["BYTEWAX_REPLICAS"]) == flow["spec"]["replicas"]
    # A drain closes the current epoch with a snapshot: the grace period is several snapshot intervals.
    assert pod["terminationGracePeriodSeconds"] >= 3 * float(config["SNAPSHOT_INTERVAL_SECONDS"])
    selector = flow["spec"]["selector"]["matchLabels"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"] == selector
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget"
                  and d["spec"]["selector"]["matchLabels"] == selector)
    assert budget["spec"]["maxUnavailable"] == 1
    assert flow["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
    service = named(docs, "Service", flow["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == selector
    assert service["spec"]["publishNotReadyAddresses"] is True  # peers find each other before /ready


@pytest.mark.parametrize("path", OVERLAYS)
def test_flow_and_notifier_carry_scrape_annotations(path: str) -> None:
    docs = render(path)
    config = flow_config(docs)
    ports = {"plantpulse-flow": config["METRICS_PORT"], "plantpulse-notifier": "9465"}
    for name, port in ports.items():
        workload = next(w for w in workloads(docs) if w["metadata"]["name"] == name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    for term in selector.get("matchExpressions", []):
        value = labels.get(term["key"])
        if term["operator"] == "In" and value not in term["values"]:
            return False
        if term["operator"] == "Exists" and value is None:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_prod_service_monitor_scrapes_the_flow_and_the_notifier() -> None:
    docs = render("k8s/overlays/prod")
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [s for s in docs if s["kind"] == "Service" and "namespace" not in s["metadata"]
                and _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))]
    assert {s["metadata"]["name"] for s in services} == {"plantpulse-flow", "plantpulse-notifier-metrics"}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for service in services:
        port = next(p for p in service["spec"]["ports"] if p["name"] == "metrics")
        pods = [w for w in workloads(docs) if _selects({"matchLabels": service["spec"]["selector"]},
                                                      w["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, service["metadata"]["name"]
        container_ports = {p["containerPort"]: p.get("name") for c in _containers(pods[0]) for p in c.get("ports", [])}
        target = port.get("targetPort", port["port"])
        assert target in container_ports or target in container_ports.values()
        assert port["port"] in container_ports  # the Service's port is the one the pod serves metrics on


# ---------------------------------------------------------------------------------------------------------------
# NetworkPolicies.


def _policies(path: str) -> list[Doc]:
    return [d for d in render(path) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_workload_is_named_by_a_network_policy(path: str) -> None:
    """Besides the default deny, some policy names each workload's pods (in its namespace): a new component
    cannot run with no connection at all by accident, nor with one nobody wrote down."""
    policies = [p for p in _policies(path) if p["spec"]["podSelector"]]
    for w in workloads(render(path)):
        labels = w["spec"]["template"]["metadata"]["labels"]
        namespace = w["metadata"].get("namespace", least.APP)
        mine = [p for p in policies if p["metadata"].get("namespace", least.APP) == namespace
                and _selects(p["spec"]["podSelector"], labels)]
        assert mine, f"no NetworkPolicy names {w['kind']}/{w['metadata']['name']}"


def test_dev_overlay_keeps_the_least_privilege_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The least-privilege assertions of tests/test_least_privilege.py hold in dev too, and dev's own components
    connect exactly where they must: the simulator and the topics Job to Kafka, the flow and the bucket Job to
    MinIO, nobody else to MinIO."""
    policies = _policies("k8s/overlays/dev")
    least.test_network_policies_default_deny_and_allow_only_the_named_connections(render("k8s/overlays/dev"))
    extra = {
        "simulator": (least.APP, {"app.kubernetes.io/name": "plantpulse", "app.kubernetes.io/component": "simulator"}),
        "topics-job": (least.APP, {"app.kubernetes.io/name": "plantpulse",
                                   "app.kubernetes.io/component": "kafka-topics"}),
        "bucket-job": (least.APP, {"app.kubernetes.io/name": "plantpulse",
                                   "app.kubernetes.io/component": "lake-bucket"}),
        "minio": (least.APP, {"app.kubernetes.io/name": "minio"}),
    }
    for pod, place in extra.items():
        monkeypatch.setitem(least.PODS, pod, place)
    sources = [p for p in least.PODS if p not in ("kafka", "clickhouse", "dns", "minio")]
    assert {s for s in sources if least._connects(policies, s, "kafka", least.KAFKA_PORT)} == {
        "flow", "notifier", "ingress", "simulator", "topics-job"}
    assert {s for s in sources if least._connects(policies, s, "minio", 9000)} == {"flow", "bucket-job"}
    assert {s for s in sources if least._connects(policies, s, "clickhouse", least.CLICKHOUSE_PORT)} == {
        "flow", "notifier", "grafana", "analyst", "access-job"}
    # The jobs and the simulator reach nothing outside the cluster.
    for pod in ("simulator", "topics-job", "bucket-job"):
        assert not least._connects(policies, pod, least.S3, 443)


@pytest.mark.parametrize("path", ["k8s/base", "k8s/overlays/prod"])
def test_the_migrations_job_is_the_access_job_of_the_policies(path: str) -> None:
    job = named(render(path), "Job", "plantpulse-migrations")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert least.PODS["access-job"][1].items() <= labels.items()
    container = pod_spec(job)["containers"][0]
    # What it runs exists in this tree: the one-shot "schema + users" command.
    if container.get("command"):
        assert container["command"][:2] == ["python", "-m"]
        assert callable(getattr(importlib.import_module(container["command"][2]), "main", None))
    else:
        done = subprocess.run([*PLANTPULSE, *container["args"], "--help"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    from connectors.clickhouse_access import USERS

    given = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(USERS.values()) | {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"} <= given


def test_the_minio_lake_policy_is_the_compose_one() -> None:
    """The bucket-only MinIO policy of the k8s component and of docker/ are one policy (compared as JSON)."""
    component = json.loads((ROOT / "k8s/components/minio/lake-policy.json").read_text())
    compose = ROOT / "docker/minio-lake-policy.json"
    if not compose.exists():
        pytest.skip("docker/minio-lake-policy.json is not in this tree")
    assert component == json.loads(compose.read_text())
    resources = {r for s in component["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::plantpulse-lake", "arn:aws:s3:::plantpulse-lake/*"}
