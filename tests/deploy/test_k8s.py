"""The Kubernetes manifests, rendered per overlay and validated offline against a pinned
Kubernetes schema (kubernetes-validate, strict: unknown fields fail); the CRD and the wiring
between objects (selectors, ports, probes, keys) are checked here."""
from __future__ import annotations

import copy
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from deploy_harness import DEPLOY
from http_api.settings import ServerSettings
from kustomize_subset import render

import prometheus_rule  # noqa: E402, I001  (deploy/scripts, put on sys.path by deploy_harness)

# Pinned: the oldest Kubernetes the manifests target (managed clusters trail upstream by a year or
# more) and the newest schema kubernetes-validate ships. Every API used is GA in both.
K8S_VERSIONS = ["1.32.0", "1.37.0"]
K8S_VERSION = K8S_VERSIONS[0]
OVERLAYS = ["cpu", "cuda", "canary"]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def rendered(overlay: str) -> list[dict]:
    return render(DEPLOY / "k8s" / "overlays" / overlay)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_built_in_object_passes_strict_schema_validation(overlay, version):
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "NetworkPolicy", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    """Guards the test above against a validator that accepts anything."""
    deployment = copy.deepcopy(one(rendered("cpu"), "Deployment"))
    container(deployment)["livenesProbe"] = container(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the manifests are rendered by tests/deploy/kustomize_subset.py only")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered(overlay)}
    assert ours == theirs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_drain_and_rollout(overlay):
    docs = rendered(overlay)
    settings = one(docs, "ConfigMap")["data"]
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        server = container(deployment)
        port_names = {p["name"] for p in server["ports"]}
        assert server["livenessProbe"]["httpGet"]["path"] == "/health"
        assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
        startup = server["startupProbe"]
        assert startup["httpGet"]["path"] == "/ready"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load needs minutes, not seconds"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert server[probe]["httpGet"]["port"] in port_names
        assert {p["containerPort"] for p in server["ports"]} == {int(settings["CODE_ASSISTANT_PORT"])}
        pre_stop = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
        drain = float(settings["CODE_ASSISTANT_DRAIN_TIMEOUT_S"])
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain, "SIGKILL would cut the drain short"
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert server["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/tmp" in {m["mountPath"] for m in server["volumeMounts"]}, "a read-only root needs a writable /tmp"
        assert "cpu" in server["resources"]["requests"], "the HPA's CPU fallback needs a CPU request"
        assert selects(deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_server_settings_and_api_keys_come_from_the_secret(overlay):
    docs = rendered(overlay)
    settings = one(docs, "ConfigMap")
    fields = {f"CODE_ASSISTANT_{name.upper()}" for name in ServerSettings.model_fields}
    assert set(settings["data"]) <= fields, f"unknown settings: {set(settings['data']) - fields}"
    keys_file = settings["data"]["CODE_ASSISTANT_API_KEYS_FILE"]
    secret = one(docs, "Secret")
    for deployment in of_kind(docs, "Deployment"):
        server = container(deployment)
        assert {"configMapRef": {"name": settings["metadata"]["name"]}} in server["envFrom"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in server["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
        assert keys_file[len(mount["mountPath"]) + 1:] in secret["stringData"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_network_policy_reach_every_server_pod(overlay):
    docs = rendered(overlay)
    service, pdb, policy = one(docs, "Service"), one(docs, "PodDisruptionBudget"), one(docs, "NetworkPolicy")
    for deployment in of_kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        port_names = {p["name"] for p in container(deployment)["ports"]}
        assert selects(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
        assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
        assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
        assert any(p["port"] in port_names for rule in policy["spec"]["ingress"] for p in rule["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_scales_the_stable_deployment_on_in_flight_requests_with_cpu_fallback(overlay):
    docs = rendered(overlay)
    hpa, pdb = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["name"] in {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    types = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert types["Resource"]["resource"]["name"] == "cpu"
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert types["Pods"]["pods"]["metric"]["name"] in served
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "a node drain must be able to evict a pod"


def test_service_monitor_scrapes_the_service_port_and_labels_readiness():
    docs = rendered("cpu")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme"}
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert any(r.get("targetLabel") == "ready" for r in endpoint["relabelings"])
    # The rules select job="code-assistant"; the operator names the job after the Service.
    assert service["metadata"]["name"] == "code-assistant"


def test_cuda_overlay_requests_a_gpu_and_runs_on_cuda():
    docs = rendered("cuda")
    server = container(one(docs, "Deployment"))
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert server["image"].endswith("-cuda")
    assert one(docs, "ConfigMap")["data"]["CODE_ASSISTANT_DEVICE"] == "cuda"
    tolerations = one(docs, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    cpu = container(one(rendered("cpu"), "Deployment"))
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


def test_canary_runs_a_second_model_beside_stable_split_by_replicas():
    docs = rendered("canary")
    deployments = {d["metadata"]["labels"]["track"]: d for d in of_kind(docs, "Deployment")}
    assert set(deployments) == {"stable", "canary"}
    stable, canary = deployments["stable"], deployments["canary"]
    assert container(stable)["image"] != container(canary)["image"]
    assert canary["spec"]["replicas"] < stable["spec"]["replicas"]
    # Each Deployment owns only its own pods; the Service takes both.
    assert not selects(stable["spec"]["selector"]["matchLabels"], canary["spec"]["template"]["metadata"]["labels"])
    assert not selects(canary["spec"]["selector"]["matchLabels"], stable["spec"]["template"]["metadata"]["labels"])
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == stable["metadata"]["name"]
    assert {d["metadata"]["namespace"] for d in docs} == {"code-assistant"}


def test_prometheus_rule_is_the_rules_file_for_the_operator():
    """The operator loads rules from a PrometheusRule; it must say exactly what rules.yml says."""
    path = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
    assert path.read_text() == prometheus_rule.render(), \
        "stale: python deploy/scripts/prometheus_rule.py > deploy/k8s/base/prometheusrule.yaml"
    rule = one(rendered("cpu"), "PrometheusRule")
    assert set(rule["spec"]) == {"groups"}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    assert rule["spec"]["groups"] == rules["groups"]
    monitor = one(rendered("cpu"), "ServiceMonitor")
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]
