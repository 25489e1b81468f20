"""The Kubernetes manifests of deploy/kserve/ pass the validators the API server would apply.

Core kinds: kubernetes-validate (strict: unknown fields are errors). KServe kinds (ServingRuntime,
ClusterServingRuntime, InferenceService): the CRDs' own OpenAPI schemas, vendored in tests/data/kserve_crds
(KServe v0.20.0), checked like `kubectl apply --validate=strict`. Nothing here talks to a cluster.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kserve"
CRDS = Path(__file__).parent / "data" / "kserve_crds"
K8S_VERSION = "1.32"  # a Kubernetes release KServe 0.20 supports
KSERVE_KINDS = {"ServingRuntime": "servingruntime", "ClusterServingRuntime": "clusterservingruntime",
                "InferenceService": "inferenceservice"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document under deploy/kserve, with the file it came from."""
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((str(path.relative_to(REPO)), doc))
    return docs


def strict_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes structural schema) -> JSON Schema that, like the API server in strict field
    validation, refuses unknown fields, and honours the x-kubernetes-* extensions."""
    if isinstance(node, list):
        return [strict_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_json_schema(value) for key, value in node.items()
           if not key.startswith("x-kubernetes-") and key != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **{k: v for k, v in out.items() if k != "anyOf"}}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    vendored = json.loads((CRDS / f"{KSERVE_KINDS[kind]}.json").read_text())
    schema = strict_json_schema(vendored["openAPIV3Schema"])
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                       "namespace": {"type": "string"}, "annotations": {"type": "object"},
                       "labels": {"type": "object"}},
        "additionalProperties": False}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["properties"]["apiVersion"] = {"const": f"{vendored['group']}/{vendored['version']}"}
    schema["properties"]["kind"] = {"const": kind}
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(doc["kind"]).iter_errors(doc)]


DOCS = documents()
KSERVE_DOCS = [(f, d) for f, d in DOCS if d["kind"] in KSERVE_KINDS]
CORE_DOCS = [(f, d) for f, d in DOCS if d["kind"] not in KSERVE_KINDS]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def test_the_deploy_folder_has_runtimes_services_and_storage_examples():
    kinds = sorted({doc["kind"] for _, doc in DOCS})
    assert kinds == ["InferenceService", "PersistentVolumeClaim", "Pod", "Secret", "ServiceAccount",
                     "ServingRuntime"], kinds
    assert len(by_kind("InferenceService")) == 2 and len(by_kind("ServingRuntime")) == 2


@pytest.mark.parametrize("source,doc", CORE_DOCS, ids=[f"{f}:{d['kind']}" for f, d in CORE_DOCS])
def test_core_kinds_pass_kubernetes_validate_strict(source, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("source,doc", KSERVE_DOCS, ids=[f"{f}:{d['kind']}" for f, d in KSERVE_DOCS])
def test_kserve_kinds_pass_their_crd_schema_strict(source, doc):
    assert crd_errors(doc) == []


@pytest.mark.parametrize("runtime", by_kind("ServingRuntime"), ids=lambda r: r["metadata"]["name"])
def test_runtimes_are_valid_cluster_runtimes_too_and_their_containers_valid_pod_containers(runtime):
    cluster = copy.deepcopy(runtime) | {"kind": "ClusterServingRuntime"}
    assert crd_errors(cluster) == []
    # The container and volume parts are core Kubernetes types: check them with the core schemas as a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime-check"},
           "spec": {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"].get("volumes", [])}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_the_validators_catch_a_misspelt_field():
    isvc = copy.deepcopy(by_kind("InferenceService")[0])
    isvc["spec"]["predictor"]["minReplica"] = isvc["spec"]["predictor"].pop("minReplicas")
    assert any("minReplica" in error for error in crd_errors(isvc))
    runtime = copy.deepcopy(by_kind("ServingRuntime")[0])
    runtime["spec"]["containers"][0]["readinessProbe"]["exec"]["cmd"] = ["x"]
    assert crd_errors(runtime)
    pvc = copy.deepcopy(by_kind("PersistentVolumeClaim")[0])
    pvc["spec"]["accessMode"] = ["ReadOnlyMany"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)


def test_each_service_names_an_existing_runtime_of_its_format_and_protocol():
    runtimes = {r["metadata"]["name"]: r for r in by_kind("ServingRuntime")}
    for isvc in by_kind("InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]["spec"]
        assert model["modelFormat"]["name"] in [f["name"] for f in runtime["supportedModelFormats"]]
        assert model["protocolVersion"] in runtime["protocolVersions"]
        # The wrapper reads PROTOCOL_VERSION; KServe sets it only for its stock TorchServe runtime.
        assert {"name": "PROTOCOL_VERSION", "value": model["protocolVersion"]} in model["env"]
        assert model["storageUri"].split("://")[0] in ("gs", "s3", "pvc")


def test_gpu_service_has_one_gpu_per_pod_and_every_service_keeps_a_warm_pod():
    services = {isvc["metadata"]["name"]: isvc["spec"]["predictor"] for isvc in by_kind("InferenceService")}
    gpu = [p for p in services.values() if "gpu" in p["model"]["runtime"]]
    assert len(gpu) == 1
    resources = gpu[0]["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    for predictor in services.values():
        assert predictor["minReplicas"] >= 1  # no scale to zero: a cold start reloads the model
        assert predictor["scaleMetric"] == "concurrency"
        # In-flight requests (up to the request timeout) finish before the pod is killed.
        assert predictor["terminationGracePeriodSeconds"] > predictor["timeout"]


def test_runtimes_start_production_mode_from_the_storage_layout_and_probe_ready_workers():
    for runtime in by_kind("ServingRuntime"):
        (container,) = runtime["spec"]["containers"]
        assert "--ts-config=/mnt/models/config/config.properties" in container["args"]
        assert "--model-store=/mnt/models/model-store" in container["args"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert "TS_SERVICE_ENVELOPE" not in env  # the handler speaks v1/v2 itself
        assert int(env["MODEL_LOAD_DELAY"]) * int(env["MODEL_LOAD_MAX_TRY"]) >= 1800
        for probe in ("readinessProbe", "startupProbe"):
            command = container[probe]["exec"]["command"]
            assert command[1] == "/home/model-server/readiness.py", command
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
        security = container["securityContext"]
        assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
    dockerfile = (REPO / "docker" / "Dockerfile.kserve").read_text()
    assert "readiness.py /home/model-server/readiness.py" in dockerfile
