"""The configuration: one base config.properties plus overlays, every shipped variant rendered by the
launcher's render_config, the frontend's memory following the workers and batch size, and the client's
limits tied to the server's."""

from __future__ import annotations

import re

import pytest
import yaml

from scripts import launcher
from tests.torchserve_harness import REPO

# --------------------------------------------------------------------------- configuration


def test_config_properties_defaults_are_secure():
    props = launcher.read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "true"
    assert props["install_py_dep_per_model"] == "false"
    assert props["default_workers_per_model"] == "1"
    assert props["metrics_mode"] == "prometheus"
    assert "vmargs" not in props  # computed when rendered, never written by hand
    assert "-Xmx" in launcher.render_config()[1]["vmargs"]
    # No URL of any kind may be registered: models come by name from model_store only.
    patterns = props["allowed_urls"].split(",")
    for url in ("http://evil.example/x.mar", "https://evil.example/x.mar", "file:///etc/passwd",
                f"file://{REPO}/model_store/demo.mar", "s3://bucket/x.mar"):
        assert not any(re.fullmatch(p, url) for p in patterns), url


def test_rendered_config_overrides_ports_and_works_from_any_directory(tmp_path):
    env = {"TS_INFERENCE_PORT": "18080", "TS_MANAGEMENT_PORT": "18081", "TS_GRPC_MANAGEMENT_PORT": "17071"}
    text, props = launcher.render_config(launcher.env_overrides(env))
    assert props["inference_address"] == "http://127.0.0.1:18080"
    assert props["management_address"] == "http://127.0.0.1:18081"
    assert props["grpc_management_port"] == "17071"
    assert props["metrics_address"] == "http://127.0.0.1:8082"  # untouched
    assert props["model_store"] == str(REPO / "model_store")
    assert props["metrics_config"] == str(REPO / "config" / "metrics.yaml")
    assert "# --- Security ---" in text  # comments kept
    (tmp_path / "rendered.properties").write_text(text)
    assert launcher.read_properties(tmp_path / "rendered.properties") == props
    with pytest.raises(launcher.CtlError, match="TS_METRICS_PORT"):
        launcher.env_overrides({"TS_METRICS_PORT": "80a"})


def test_metrics_yaml_declares_every_metric_the_handler_registers():
    from ts.metrics.metric_type_enum import MetricTypes

    from handler.ts_metrics import HandlerMetrics

    class RecordingCache:
        def __init__(self):
            self.added = {}

        def add_metric_to_cache(self, name, unit, dimension_names, metric_type):
            self.added[name] = (metric_type.value, list(dimension_names))

    cache = RecordingCache()
    HandlerMetrics(cache, "m")
    declared = yaml.safe_load((REPO / "config" / "metrics.yaml").read_text())["model_metrics"]
    by_name = {m["name"]: (kind, m["dimensions"]) for kind, metrics in declared.items() for m in metrics}
    assert cache.added, "HandlerMetrics registered nothing"
    for name, (kind, dims) in cache.added.items():
        assert name in by_name, f"{name} is not declared in config/metrics.yaml: it would never reach /metrics"
        assert by_name[name] == (kind, dims), f"{name}: yaml {by_name[name]} != handler {(kind, dims)}"
    assert {m.value for m in MetricTypes} >= set(declared)




# --------------------------------------------------------------------------- one base, overlays, rendered


def test_the_image_config_is_the_base_plus_overlays_rendered():
    """docker/config.properties is generated: re-render it with the command docs/serving.md gives."""
    overlays = (REPO / "config" / "production.properties", REPO / "config" / "docker.properties")
    text, _ = launcher.render_config(overlays=overlays)
    assert (REPO / "docker" / "config.properties").read_text() == text, (
        "docker/config.properties is stale: scripts/torchserve_ctl.py render-config --overlay "
        "config/production.properties --overlay config/docker.properties --out docker/config.properties")


@pytest.mark.parametrize(("key", "value"), [("cors_allowed_origin", "x\ncors_allowed_origin=*"),
                                            ("model_store", "a\rb"), ("bad key", "1"), ("k=v", "1")])
def test_an_override_cannot_inject_lines_or_keys(key, value):
    with pytest.raises(launcher.CtlError):
        launcher.render_config({key: value})


# --------------------------------------------------------------------------- frontend memory


def _mib(flag: str, vmargs: str) -> int:
    return int(re.search(rf"{flag}(\d+)m", vmargs).group(1))


@pytest.mark.parametrize("capacity", [launcher.Capacity(1, 16), launcher.Capacity(4, 128),
                                      launcher.RECOMMENDED_MAX, launcher.Capacity(32, 256)])
def test_the_frontend_heap_holds_a_full_queue_and_every_worker_batch(capacity):
    """A queued request and every request inside a worker's batch is a heap copy of its body."""
    props = launcher.render_config(capacity=capacity)[1]
    body, replies = int(props["max_request_size"]), int(props["max_response_size"])
    needed = (int(props["job_queue_size"]) * body + capacity.workers * capacity.batch_size * body
              + capacity.workers * replies + 256 * 2**20)
    assert _mib("-Xmx", props["vmargs"]) * 2**20 >= needed
    assert _mib("-XX:MaxDirectMemorySize=", props["vmargs"]) * 2**20 >= int(props["job_queue_size"]) * body


def test_the_largest_recommended_configuration_fits_every_shipped_file():
    """--workers auto's most per GPU at the largest batch size recommended: what the image is sized for."""
    from scripts.launcher.workers import WORKERS_PER_GPU

    assert launcher.RECOMMENDED_MAX.workers >= WORKERS_PER_GPU
    image = launcher.read_properties(REPO / "docker" / "config.properties")
    assert image["vmargs"] == launcher.render_config(capacity=launcher.RECOMMENDED_MAX)[1]["vmargs"]
    small, large = (launcher.render_config(capacity=launcher.Capacity(w, 128))[1]["vmargs"] for w in (1, 16))
    assert _mib("-Xmx", large) > _mib("-Xmx", small)


# --------------------------------------------------------------------------- client limits = server limits


def test_the_clients_limits_are_the_servers():
    """The client splits requests at MAX_PAIRS_PER_REQUEST pairs and MAX_REQUEST_BYTES of JSON: the handler's
    max_pairs_per_request and every shipped TorchServe's max_request_size must admit such a request."""
    from handler.settings import Settings
    from instructor_client.batching import MAX_PAIRS_PER_REQUEST, MAX_REQUEST_BYTES

    assert Settings().max_pairs_per_request == MAX_PAIRS_PER_REQUEST
    variants = [launcher.render_config()[1], launcher.read_properties(REPO / "docker" / "config.properties"),
                launcher.render_config(overlays=(REPO / "config" / "kserve.properties",))[1]]
    for props in variants:
        # Headroom for the envelope the client adds around the pairs (field names, brackets).
        assert int(props["max_request_size"]) >= MAX_REQUEST_BYTES + 64 * 1024, props["max_request_size"]


def test_the_readme_states_the_auto_policy_the_launcher_applies():
    from scripts.launcher.workers import CORES_PER_GPU_WORKER, WORKERS_PER_GPU

    text = " ".join((REPO / "README.md").read_text().split())
    assert f"up to {WORKERS_PER_GPU} per GPU" in text and f"({CORES_PER_GPU_WORKER} cores per worker)" in text
