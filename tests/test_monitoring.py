"""monitoring/: the Prometheus alert rules pass ``promtool check rules``, every Grafana query is valid PromQL
(checked by promtool as a recording rule), and every metric they name is one a real TorchServe serving the
handler exports on /metrics (scraped here after successful and refused requests)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.torchserve_harness import REPO, build_with_script, register_with_script, running_torchserve

MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: install Debian's prometheus package (apt-get install -y prometheus)")

# Series Prometheus makes itself, and counters TorchServe only creates at their first event (declared in
# config/metrics.yaml, checked there instead of in the scrape).
PROMETHEUS_OWN = {"up"}
FIRST_EVENT_ONLY = {"Requests5XX"}
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                 "unless", "le", "inf", "nan"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, grouping labels, functions left out)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"(?<![A-Za-z0-9_:])\d[\d.]*(?:[eE][+-]?\d+)?", "", expr)  # numbers such as 1e-9
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as Prometheus sees them once Grafana has filled them in."""
    return expr.replace("$__rate_interval", "5m").replace("$model", ".*")


@needs_promtool
def test_the_alert_rules_pass_promtool():
    proc = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_queries())} rules found" in proc.stdout


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": grafana_to_promql(expr)}
        for index, expr in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for expr in dashboard_queries():
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr


@pytest.mark.torchserve
def test_every_metric_the_dashboard_and_alerts_name_is_exported(tiny_models, tmp_path):
    store = tmp_path / "store"
    build_with_script(str(tiny_models["tiny-instructor-gated"]), "tiny", store, "--max-pairs-per-request", "4")
    with running_torchserve(store) as ts:
        register_with_script(ts, "tiny", "--workers", "1")
        for body in ({"inputs": ["Represent the title:", "tides"]}, {"inputs": [["", "x " * 2000]]},
                     {"inputs": 3}, {"inputs": [["", "x"]] * 5}):
            ts.call("POST", "/predictions/tiny", body)
        time.sleep(1)  # the frontend's metrics are updated after the response is sent
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{ts.ports['metrics']}/metrics", timeout=30).read()
    exported = {line.split("{")[0].split(" ")[0] for line in scraped.decode().splitlines()
                if line and not line.startswith("#")}
    exported |= {name[: -len(suffix)] for name in exported for suffix in _HISTOGRAM_SUFFIXES if name.endswith(suffix)}
    declared = yaml.safe_load((REPO / "config" / "metrics.yaml").read_text())
    declared_names = {metric["name"] for section in ("ts_metrics", "model_metrics")
                      for kind in declared.get(section, {}).values() for metric in kind}
    assert declared_names >= FIRST_EVENT_ONLY
    named = set().union(*map(metric_names, dashboard_queries() + alert_queries()))
    missing = sorted(named - exported - PROMETHEUS_OWN - FIRST_EVENT_ONLY)
    assert not missing, f"queried but not exported: {missing}; exported: {sorted(exported)}"
    assert {"InstructorItems", "ts_inference_requests_total", "InstructorEncodeSeconds_bucket"} <= named
