"""The Kubernetes manifests: valid for real Kubernetes versions (strict schemas), and safe.

``kubernetes-validate`` checks every document against the OpenAPI schemas of the Kubernetes
release, rejecting unknown fields (strict). 1.30 is the oldest release the manifests need
(native sidecar containers, gRPC probes); the newest the package ships is checked too.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ingest_sidecar._config import load_config as load_sidecar_config
from server._config import load_config
from tests.deploy.conftest import DEPLOY

MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
VERSIONS = ["1.30.0", "1.37.0"]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in _documents(path):
            key = (doc["kind"], f"{path.stem}/{doc['metadata']['name']}")
            found[key] = doc
    return found


def _one(kind: str, file: str) -> dict[str, Any]:
    (doc,) = [d for (k, name), d in _all().items() if k == kind and name.startswith(f"{file}/")]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_in_strict_mode(path: Path, version: str) -> None:
    documents = _documents(path)
    assert documents
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = _one("Deployment", "forwarder-postgres")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_the_shipped_set() -> None:
    kinds = {kind for kind, _ in _all()}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
        "ServiceAccount",
    } <= kinds


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize(
    ("kind", "file"),
    [
        ("Deployment", "forwarder-postgres"),
        ("StatefulSet", "forwarder-sqlite"),
        ("Deployment", "sidecar"),
    ],
)
def test_pods_run_unprivileged_on_a_read_only_root(kind: str, file: str) -> None:
    workload = _one(kind, file)
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"] for v in pod["volumes"]}
    volumes |= {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    for container in _containers(workload):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounts <= volumes, container["name"]


@pytest.mark.parametrize(
    ("kind", "file"), [("Deployment", "forwarder-postgres"), ("StatefulSet", "forwarder-sqlite")]
)
def test_forwarder_probes_ask_the_grpc_health_service(kind: str, file: str) -> None:
    workload = _one(kind, file)
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    # Readiness asks for the service itself: it answers NOT_SERVING while draining.
    assert container["readinessProbe"]["grpc"]["service"] == "elido.forwarder.v1.ForwarderService"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/elido-forwarder"} <= mounts
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    config = _one("ConfigMap", "forwarder-common")["data"]
    assert float(config["FORWARDER_GRACE_S"]) < grace


def test_replicas_on_postgresql_read_the_database_url_from_a_secret_file() -> None:
    deployment = _one("Deployment", "forwarder-postgres")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    path = env["FORWARDER_DATABASE_URL_FILE"]["value"]
    assert "FORWARDER_DATABASE_URL" not in env  # never the URL itself in the environment
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert Path(path).name in [item["path"] for item in volume["secret"]["items"]]
    budget = _one("PodDisruptionBudget", "forwarder-postgres")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_sqlite_form_is_one_pod_with_its_own_volume() -> None:
    statefulset = _one("StatefulSet", "forwarder-sqlite")
    assert statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FORWARDER_DB_PATH"].startswith("/var/lib/elido-forwarder/")


def test_the_network_policy_selects_the_forwarder_and_admits_the_sidecar() -> None:
    policy = _one("NetworkPolicy", "forwarder-common")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for kind, file in (("Deployment", "forwarder-postgres"), ("StatefulSet", "forwarder-sqlite")):
        labels = _one(kind, file)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    proxy_labels = _one("Deployment", "sidecar")["spec"]["template"]["metadata"]["labels"]
    admitted = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer and 50051 in [p["port"] for p in rule["ports"]]
    ]
    assert any(labels.items() <= proxy_labels.items() for labels in admitted)


def test_the_forwarder_settings_are_ones_the_forwarder_accepts(tmp_path: Path) -> None:
    settings = dict(_one("ConfigMap", "forwarder-common")["data"])
    # The files the pod mounts (secrets, the Vault CA), made here at the same names.
    for name, value in list(settings.items()):
        if value.startswith("/") and name.endswith(("_FILE", "CACERT")):
            stand_in = tmp_path / name.lower()
            stand_in.write_text("0c1e7e6a-stand-in\n")
            settings[name] = str(stand_in)
    secret_id = tmp_path / "vault-secret-id"
    secret_id.write_text("0c1e7e6a-secret-id\n")
    settings["VAULT_SECRET_ID_FILE"] = str(secret_id)
    config = load_config(settings)
    assert config.server.listen == "0.0.0.0:50051"
    assert config.server.metrics_listen == "0.0.0.0:9464"


def test_the_sidecar_runs_as_a_native_sidecar_with_a_valid_configuration(
    tmp_path: Path,
) -> None:
    deployment = _one("Deployment", "sidecar")
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # starts before the proxy, stops after it
    (proxy,) = pod["containers"]
    shared = {m["name"] for m in sidecar["volumeMounts"]} & {
        m["name"] for m in proxy["volumeMounts"]
    }
    assert shared == {"edge-logs"}
    text = _one("ConfigMap", "sidecar")["data"]["sidecar.toml"]
    raw = tomllib.loads(text)
    logs = next(m for m in proxy["volumeMounts"] if m["name"] == "edge-logs")["mountPath"]
    assert raw["tail"]["path"].startswith(logs + "/")
    spool = next(m for m in sidecar["volumeMounts"] if m["name"] == "spool")["mountPath"]
    assert raw["spool"]["directory"].startswith(spool + "/")
    # The file loads with the sidecar's own loader (its token file replaced by a local one).
    token = tmp_path / "token"
    token.write_text("t0ken")
    path = tmp_path / "sidecar.toml"
    path.write_text(text.replace(raw["stream"]["token_file"], str(token)))
    config = load_sidecar_config(path, env={})
    assert config.stream.target.endswith(":50051")
    assert config.http.host == "127.0.0.1"
    assert os.fspath(config.tail_checkpoint_path).startswith(spool + "/")
