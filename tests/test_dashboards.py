"""What deploy/ ships for a hub's monitoring: the Prometheus alert rules (promtool's own
check and the unit tests beside them, README's sample rule the same as the file's) and
the Grafana dashboard (valid JSON on Grafana's 24-column grid, every query valid PromQL on
metrics that the server extension really exports, every one filtered by the user variable).
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kernel_doctor.diagnosis.causes import CAUSES

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "kernel-doctor-rules.yml"
RULES_TESTS = REPO / "deploy" / "prometheus" / "kernel-doctor-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "kernel-doctor.json"
README = REPO / "README.md"

METRIC = re.compile(r"kernel_doctor_[a-z_]+")
SELECTOR = re.compile(r"(kernel_doctor_[a-z_]+)(\{[^}]*\})?")
CAUSE_MATCHER = re.compile(r'\bcause\s*=~?\s*"([^"]*)"')
GRID_COLUMNS = 24
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana puts in for its variables, as a query over an hour with a 15 s scrape
# interval would get them ("All" users is the variable's allValue, .*).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "${user}": ".*",
    "$user": ".*",
}
USER_QUERY = "label_values(kernel_doctor_supervised_kernels, user)"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def load_yaml(text: str) -> Any:
    # PyYAML comes with jupyter_server (through jupyter_events), a test dependency.
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    return yaml.safe_load(text)


def exported_metrics() -> set[str]:
    """The names of the series the server extension's metrics expose, from
    prometheus_client's registry once the module has registered them: a counter's
    ``_total`` (and ``_created``), a gauge's own name (a gauge with labels has no samples
    before its first kernel, so the family's name counts)."""
    from prometheus_client import REGISTRY

    importlib.import_module("kernel_doctor.server.metrics")
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("kernel_doctor_"):
            continue
        names.update(sample.name for sample in family.samples)
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    found = dashboard()["panels"]
    assert isinstance(found, list) and found
    return found


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def rules() -> list[dict[str, Any]]:
    groups = load_yaml(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def variable(name: str) -> dict[str, Any]:
    (found,) = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    assert isinstance(found, dict)
    return found


def grafana_to_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


# Prometheus: the alert rules ----------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout, result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_has_unit_tests_that_fire_and_that_do_not() -> None:
    tests = load_yaml(RULES_TESTS.read_text())["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    for rule in rules():
        mine = [check for check in checks if check["alertname"] == rule["alert"]]
        assert any(check["exp_alerts"] for check in mine), f"{rule['alert']} never fires"
        assert any(not check["exp_alerts"] for check in mine), f"{rule['alert']} always fires"


def test_readme_alert_rule_is_the_rules_files() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if "KernelsDyingOfMemory" in b]
    (readme_group,) = load_yaml(block)["groups"]
    (group,) = load_yaml(RULES.read_text())["groups"]
    assert readme_group["name"] == group["name"] == "kernel-doctor"
    (readme_rule,) = [r for r in readme_group["rules"] if r.get("alert") == "KernelsDyingOfMemory"]
    (rule,) = [r for r in group["rules"] if r.get("alert") == "KernelsDyingOfMemory"]
    assert readme_rule == rule


def test_rules_use_exported_metrics_causes_and_the_user_label() -> None:
    exported = exported_metrics()
    for rule in rules():
        expr = rule["expr"]
        assert set(METRIC.findall(expr)) <= exported, expr
        for matched in CAUSE_MATCHER.findall(expr):
            assert set(matched.split("|")) <= set(CAUSES), expr
        # Who the alert is about: every alert is per user.
        assert re.search(r"\bby \([^)]*\buser\b", expr), expr
        assert "{{ $labels.user }}" in rule["annotations"]["summary"], rule


# Grafana: the dashboard ---------------------------------------------------------------


def test_dashboard_top_level() -> None:
    board = dashboard()
    required = {"uid", "title", "schemaVersion", "panels", "templating", "time", "tags"}
    assert required <= board.keys(), required - board.keys()
    assert board["uid"] == "kernel-doctor"
    assert board["title"] == "kernel-doctor: kernel deaths"
    assert board["schemaVersion"] == 39
    assert board.get("id") is None  # importable into any Grafana


def test_dashboard_variables() -> None:
    datasource = variable("datasource")
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    user = variable("user")
    assert user["type"] == "query" and user["datasource"] == DATASOURCE
    query = user["query"]
    assert (query["query"] if isinstance(query, dict) else query) == USER_QUERY
    assert user["multi"] is True and user["includeAll"] is True
    assert set(METRIC.findall(USER_QUERY)) <= exported_metrics()


def test_panels_ids_types_and_texts() -> None:
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), ids
    for panel in panels():
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel.get("title", "").strip(), panel["id"]
        assert panel.get("description", "").strip(), panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), panel["title"]
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def test_panels_on_the_grid_without_overlapping() -> None:
    boxes = []
    for panel in panels():
        grid = panel["gridPos"]
        x, y, w, h = (grid[key] for key in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0, panel["title"]
        assert x + w <= GRID_COLUMNS, panel["title"]
        boxes.append((panel["title"], x, y, w, h))
    for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in itertools.combinations(boxes, 2):
        apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
        assert apart, f"{a!r} and {b!r} overlap"


def test_dashboard_uses_exported_metrics_causes_and_the_user_variable() -> None:
    exported = exported_metrics()
    for expr in dashboard_exprs():
        names = METRIC.findall(expr)
        assert names, f"no kernel-doctor metric in {expr}"
        assert set(names) <= exported, f"{expr}: not exported: {set(names) - exported}"
        for name, labels in SELECTOR.findall(expr):
            assert 'user=~"$user"' in labels, f"{name} not filtered by $user in {expr}"
        for matched in CAUSE_MATCHER.findall(expr):
            assert set(matched.split("|")) <= set(CAUSES), expr


def test_dashboard_queries_are_promql(tmp_path: Path) -> None:
    records = [
        {"record": f"kd:dashboard:{n}", "expr": grafana_to_promql(expr)}
        for n, expr in enumerate(dashboard_exprs(), 1)
    ]
    path = tmp_path / "dashboard-queries.yml"
    # JSON is YAML: promtool reads it as a rules file.
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout, result.stdout
