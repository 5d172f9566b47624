"""A real forwarder's /metrics, and the alert rules and dashboard shipped against it.

Every metric that deploy/prometheus/alerts.yml and deploy/grafana/*.json use must be one a
running forwarder exports (a renamed metric would otherwise silence an alert without anyone
noticing); label values never carry request data; the health gauges tell what an operator
needs to know.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from elido.forwarder.v1 import forwarder_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import DEPLOY, REPO, tool
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
_METRIC = re.compile(r"\b(forwarder_[a-z0-9_]+)\b")
# Prometheus' own series, not the forwarder's.
_PROMETHEUS_OWN = {"up"}
# Every label the forwarder may use; values come from fixed sets in the code.
_LABELS = {
    "kind",
    "disposition",
    "method",
    "code",
    "endpoint",
    "outcome",
    "cause",
    "result",
    "reason",
    "version",
    "python",
    "le",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _exported_names(text: str) -> set[str]:
    """Every sample name the exposition can contain, with or without samples yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created", ""),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def _wait(condition: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@pytest.fixture
def metered(forwarder_factory: Any, klaviyo_mock_thread: Any) -> tuple[ForwarderProcess, int]:
    port = _free_port()
    forwarder = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url,
        env={"FORWARDER_METRICS_LISTEN": f"127.0.0.1:{port}"},
    )
    return forwarder, port


def _dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in DASHBOARDS:
        walk(json.loads(path.read_text()))
    return exprs


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _used_metrics(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in _METRIC.findall(expr)}


def test_every_metric_the_alerts_and_dashboard_use_is_exported(
    metered: tuple[ForwarderProcess, int],
) -> None:
    _, port = metered
    exported = _exported_names(_scrape(port))
    alerts = [rule["expr"] for rule in _alert_rules()]
    dashboard = _dashboard_exprs()
    assert len(alerts) >= 10
    assert len(dashboard) >= 15
    for source, exprs in (("alerts.yml", alerts), ("dashboard", dashboard)):
        used = _used_metrics(exprs)
        assert used, source
        assert not used - exported, f"{source} uses metrics the forwarder does not export"
    # The health metrics are all watched somewhere.
    for name in (
        "forwarder_vault_up",
        "forwarder_store_up",
        "forwarder_build_info",
        "forwarder_delivery_leases_total",
        "forwarder_ratelimit_blocks_total",
    ):
        assert name in _used_metrics(alerts + dashboard), name


def test_the_metric_check_would_notice_a_renamed_metric(
    metered: tuple[ForwarderProcess, int],
) -> None:
    _, port = metered
    exported = _exported_names(_scrape(port))
    assert _used_metrics(["rate(forwarder_vault_upp[5m])"]) - exported == {"forwarder_vault_upp"}


def test_build_info_and_the_health_gauges(metered: tuple[ForwarderProcess, int]) -> None:
    _, port = metered
    text = _scrape(port)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _value(text, "forwarder_build_info", version=version) == 1.0
    start = _value(text, "forwarder_start_time_seconds")
    assert start is not None
    assert abs(start - time.time()) < 120
    _wait(lambda: _value(_scrape(port), "forwarder_vault_up") == 1.0, "forwarder_vault_up 1")
    text = _scrape(port)
    assert _value(text, "forwarder_store_up") == 1.0
    last = _value(text, "forwarder_housekeeping_last_success_timestamp_seconds")
    assert last is not None
    assert last > 0


def test_vault_down_shows_in_the_gauge_while_intake_goes_on(
    forwarder_factory: Any, klaviyo_mock_thread: Any
) -> None:
    port = _free_port()
    forwarder = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url,
        env={"FORWARDER_METRICS_LISTEN": f"127.0.0.1:{port}", "VAULT_ADDR": "http://127.0.0.1:9"},
    )
    _wait(lambda: "forwarder_housekeeping_last_success" in _scrape(port), "housekeeping")
    _wait(
        lambda: (
            (_value(_scrape(port), "forwarder_housekeeping_last_success_timestamp_seconds") or 0)
            > 0
        ),
        "a housekeeping round",
    )
    text = _scrape(port)
    assert _value(text, "forwarder_vault_up") == 0.0
    assert _value(text, "forwarder_store_up") == 1.0
    # Intake does not need Vault.
    click = pb.Click(click_id="metrics-vault-down", workspace_id=new_workspace_id("m"))
    click.identifiers.email = "jane@example.com"
    click.click_time.GetCurrentTime()
    answer = forwarder.stub().ForwardClick(
        pb.ForwardClickRequest(click=click), metadata=forwarder.ingest(), timeout=10
    )
    assert answer.disposition == pb.CLICK_DISPOSITION_NO_INTEGRATION


def test_label_values_never_carry_request_data(
    metered: tuple[ForwarderProcess, int], klaviyo_mock_thread: Any
) -> None:
    forwarder, port = metered
    stub = forwarder.stub()
    workspaces = [new_workspace_id("card") for _ in range(3)]
    sent: list[str] = []
    for workspace in workspaces:
        key = "pk_" + secrets.token_hex(17)
        klaviyo_mock_thread.add_key(key, "acct-" + workspace)
        stub.RegisterIntegration(
            pb.RegisterIntegrationRequest(workspace_id=workspace, private_key=key),
            metadata=forwarder.admin(),
            timeout=10,
        )
        for i in range(3):
            click = pb.Click(click_id=f"{workspace}-click-{i}", workspace_id=workspace)
            click.identifiers.email = f"user{i}@{workspace}.example"
            click.click_time.GetCurrentTime()
            stub.ForwardClick(
                pb.ForwardClickRequest(click=click), metadata=forwarder.ingest(), timeout=10
            )
            sent.append(click.click_id)
    _wait(
        lambda: (
            (_value(_scrape(port), "forwarder_delivered_events_total", endpoint="events") or 0)
            >= len(sent)
        ),
        "the clicks to be delivered",
    )
    text = _scrape(port)
    series = 0
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("forwarder_"):
            continue
        for sample in family.samples:
            series += 1
            assert set(sample.labels) <= _LABELS, (sample.name, sample.labels)
            for value in sample.labels.values():
                assert "@" not in value
                assert not any(w in value for w in workspaces), (sample.name, value)
                assert not value.startswith("pk_")
    assert series > 20
    acquired = _value(text, "forwarder_delivery_leases_total", result="acquired")
    assert acquired is not None
    assert acquired >= 1


def _promtool() -> str | None:
    return tool("promtool")


def test_alert_rules_are_well_formed() -> None:
    names = set()
    for rule in _alert_rules():
        assert re.fullmatch(r"Forwarder[A-Za-z]+", rule["alert"]), rule
        assert rule["alert"] not in names
        names.add(rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert _series_names(rule["expr"]) - _PROMETHEUS_OWN <= _used_metrics([rule["expr"]])


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right"}


def _series_names(expr: str) -> set[str]:
    """Names of series an expression selects: identifiers that are not functions, keywords,
    label names in matchers or in by/without clauses."""
    text = re.sub(r"\{[^}]*\}", "", expr)  # label matchers (and their strings)
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names if n not in _KEYWORDS and not re.fullmatch(r"\d+\w*", n)}


def test_the_series_name_parser_finds_what_an_expression_selects() -> None:
    expr = 'sum by (cause) (increase(forwarder_x_total{a="b"}[1h])) > 0 and up == 0'
    assert _series_names(expr) == {"forwarder_x_total", "up"}


@pytest.mark.skipif(_promtool() is None, reason="promtool is not installed")
def test_promtool_accepts_the_alert_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    promtool = _promtool()
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The dashboard's queries, with Grafana's variables filled in, as recording rules.
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", "elido-forwarder"),
        }
        for i, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_well_formed() -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"]
        assert dashboard["title"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert {"datasource", "job"} <= variables
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0
            assert grid["x"] + grid["w"] <= 24
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert 'job="$job"' in target["expr"], (panel["title"], target["expr"])
