"""The Kubernetes base (`deploy/k8s/base`) and the Dockerfile agree with each
other and with Prism: no cluster runs here, so what can be checked without
one is checked — every resource kustomize lists exists and parses, selectors
and probe ports line up, the config is mounted where the container reads it,
the ports the config listens on are the ports the pod exposes, and the
shipped config starts a real `prism` (backends and issuer unreachable here;
Prism connects to them lazily)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, NatsServer, PrismProcess

BASE = REPO / "deploy" / "k8s" / "base"


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((BASE / name).read_text())
    assert isinstance(document, dict), name
    return document


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    kustomization = load("kustomization.yaml")
    found = {}
    for name in kustomization["resources"]:
        document = load(name)
        found[document["kind"]] = document
    assert set(found) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    return found


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def shipped_config(resources: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    text: str = resources["ConfigMap"]["data"]["prism.toml"]
    return text, tomllib.loads(text)


def test_selectors_match_the_pods(resources: dict[str, dict[str, Any]]) -> None:
    deployment = resources["Deployment"]
    labels = pod_labels(deployment)
    assert deployment["spec"]["replicas"] == 3
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        resources["Service"]["spec"]["selector"],
        resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items(), selector
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert resources["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    # A voluntary disruption never takes the service below two replicas.
    assert resources["PodDisruptionBudget"]["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_ports_probes_and_config_mount_agree(resources: dict[str, dict[str, Any]]) -> None:
    deployment = resources["Deployment"]
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    _, config = shipped_config(resources)
    assert int(config["server"]["listen"].rsplit(":", 1)[1]) == ports["grpc"]
    assert int(config["telemetry"]["metrics_listen"].rsplit(":", 1)[1]) == ports["metrics"]
    # Probes use grpc.health.v1 on the gRPC port.
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["grpc"], probe
    # Every Service port targets a named container port.
    for port in resources["Service"]["spec"]["ports"]:
        assert port["targetPort"] in ports, port
        assert port["port"] == ports[port["targetPort"]]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # The config file the container is told to read is the ConfigMap's key.
    args = c["args"]
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert str(config_path.parent) == mounts["config"]
    assert volumes["config"]["configMap"]["name"] == resources["ConfigMap"]["metadata"]["name"]
    assert config_path.name in resources["ConfigMap"]["data"]
    # State and the component cache live on the writable volume (the root
    # filesystem is read-only).
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in c["env"]}
    for path in (config["admin"]["state_dir"], env["XDG_CACHE_HOME"]):
        assert path.startswith(mounts["data"] + "/"), path
    # Pods get longer to stop than Prism drains for.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace * 1000 > config["server"]["shutdown_grace_ms"]


def test_the_image_runs_as_the_user_the_pod_expects() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    pod = load("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert int(user.group(1)) == pod["runAsUser"]
    assert 'CMD ["prism", "health"' in dockerfile
    assert "EXPOSE 8980" in dockerfile


def test_the_shipped_config_starts_prism(resources: dict[str, dict[str, Any]], tmp_path: Path, nats_server: NatsServer) -> None:
    text, config = shipped_config(resources)
    # Only the state directory moves (to a temp dir) and the control store
    # is a real local NATS (it is read at start): the rest is as shipped.
    state_dir = config["admin"]["state_dir"]
    text = text.replace(f'state_dir = "{state_dir}"', f'state_dir = "{tmp_path / "state"}"')
    store = config["backends"][config["admin"]["store"]]
    assert store["type"] == "nats" and store["jetstream"] is True
    assert f'url = "{store["url"]}"' in text
    text = text.replace(f'url = "{store["url"]}"', f'url = "{nats_server.url}"')
    prism = PrismProcess(tmp_path, text, metrics=True)
    assert prism.addr and prism.metrics_url.endswith("/metrics")
    prism.stop()
