"""Deployment and monitoring files under infra/: they parse, hang together, and pass promtool."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import (
    ALERTS,
    DASHBOARDS_DIR,
    PROMETHEUS_DIR,
    REPO_ROOT,
    alert_rules,
    dashboard_exprs,
    dashboard_files,
    exposed_series_names,
    load_dashboard,
    metric_names,
    panels,
    with_grafana_defaults,
)
from tests.tools import require

INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"
COMPOSE = INFRA / "docker-compose.yml"
GRAFANA = INFRA / "grafana"
DATASOURCE_UID = "prometheus"


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yml", ".yaml"})


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def promtool() -> str:
    return require("promtool", "prometheus")


def run_promtool(*args: str, cwd: Path = REPO_ROOT) -> None:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- all YAML


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_under_infra_parses(path: Path) -> None:
    assert load_all(path), f"{path} holds no document"


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_config_passes_promtool() -> None:
    run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_alert_rules_pass_promtool() -> None:
    run_promtool("check", "rules", str(ALERTS))


def test_alert_rules_unit_tests_pass() -> None:
    run_promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))


def test_prometheus_loads_the_alert_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert [PROMETHEUS_DIR / f for f in config["rule_files"]] == [ALERTS]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "atlas"]
    assert job["metrics_path"] == "/metrics"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_a_duration_a_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def test_the_agreed_alerts_exist() -> None:
    queried = {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    assert {
        "up",
        "atlas_consumer_lag",
        "atlas_consumer_lag_status",
        "atlas_outbox_backlog",
        "atlas_outbox_oldest_unpublished_age_seconds",
        "http_requests_total",
        "atlas_circuit_breaker_state",
        "atlas_events_total",
        "atlas_relay_leader",
    } <= queried


# --------------------------------------------------------------------------- PromQL names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        (
            'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route=~"/v1.*"}[5m])))',
            {"x_bucket"},
        ),
        ("sum(rate(a_total[$__rate_interval])) / sum(rate(b_total[1m]))", {"a_total", "b_total"}),
        ('max by (status) (s{status=~"STALL|STOP"}) == 1', {"s"}),
        ("sum(x) without (instance) > 1e3 and on (job) y offset 5m", {"x", "y"}),
        ('count_values("version", build_info) or vector(0)', {"build_info"}),
        ("rate(ns:metric_total[5m:1m])", {"ns:metric_total"}),
        ('sum(a{instance=~"$instance", job="atlas"}) by (le)', {"a"}),
    ],
)
def test_metric_names_are_found_in_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exposed_names_follow_each_family_type() -> None:
    text = (
        "# HELP c_total A counter never incremented.\n"
        "# TYPE c_total counter\n"
        "# HELP h A histogram.\n"
        "# TYPE h histogram\n"
        'h_bucket{le="+Inf"} 0.0\n'
        "h_count 0.0\n"
        "h_sum 0.0\n"
        "# HELP g A gauge.\n"
        "# TYPE g gauge\n"
        "g 1.0\n"
    )
    names = exposed_series_names(text)
    assert {"c_total", "h_bucket", "h_sum", "h_count", "g"} <= names
    assert "c" not in names


# --------------------------------------------------------------------------- Grafana


def grafana_datasources() -> list[dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    sources: list[dict[str, Any]] = doc["datasources"]
    return sources


def test_grafana_provisions_the_datasource_the_dashboards_use() -> None:
    (source,) = grafana_datasources()
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_grafana_dashboard_provider_reads_the_mounted_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "atlas.yml").read_text())
    (provider,) = doc["providers"]
    path = provider["options"]["path"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]


def test_the_four_dashboards_exist_with_unique_uids() -> None:
    docs = [load_dashboard(p) for p in dashboard_files()]
    titles = {d["title"] for d in docs}
    assert titles == {
        "Atlas / System Overview",
        "Atlas / API Performance",
        "Atlas / Database",
        "Atlas / Kafka",
    }
    uids = [d["uid"] for d in docs]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_every_panel_has_a_datasource_and_targets(path: Path) -> None:
    dashboard = load_dashboard(path)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids), "panel ids repeat"
    shown = list(panels(dashboard))
    assert shown
    for panel in shown:
        title = panel.get("title")
        assert panel["datasource"]["uid"] == DATASOURCE_UID, title
        assert panel["targets"], title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == DATASOURCE_UID, title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, title


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker: each expression becomes a recording rule."""
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": with_grafana_defaults(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    assert rules
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


def test_the_business_row_is_on_the_overview() -> None:
    overview = load_dashboard(DASHBOARDS_DIR / "system-overview.json")
    names = {n for p in panels(overview) for t in p["targets"] for n in metric_names(t["expr"])}
    assert {
        "atlas_transfers_total",
        "atlas_money_moved_total",
        "atlas_accounts_opened_total",
        "atlas_accounts_closed_total",
    } <= names


# --------------------------------------------------------------------------- Kubernetes


def k8s_objects() -> dict[str, list[dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for resource in kustomization["resources"]:
        for doc in load_all(K8S / resource):
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def only(kind: str) -> dict[str, Any]:
    (obj,) = k8s_objects()[kind]
    return obj


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from workload["spec"]["template"]["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert set(k8s_objects()) == {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "Job",
    }


def test_no_secret_values_are_committed() -> None:
    assert "Secret" not in k8s_objects()
    config = only("ConfigMap")["data"]
    assert not {"DATABASE_URL", "REDIS_URL"} & set(config)


def test_worker_deployment_probes_and_lifecycle() -> None:
    deployment = only("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    (worker,) = containers(deployment)
    assert worker["args"] == ["atlas", "worker"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"http": int(only("ConfigMap")["data"]["ATLAS_WEB_PORT"])}
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert worker["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert {"requests", "limits"} <= set(worker["resources"])
    assert worker["resources"]["limits"]["memory"]


def test_worker_settings_come_from_the_configmap_and_a_secret() -> None:
    config_name = only("ConfigMap")["metadata"]["name"]
    for workload in (only("Deployment"), only("Job")):
        for container in containers(workload):
            assert {"configMapRef": {"name": config_name}} in container["envFrom"]
            env = env_of(container)
            assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "atlas-secrets"
    (worker,) = containers(only("Deployment"))
    assert env_of(worker)["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "atlas-secrets"


def test_each_worker_advertises_its_pod_ip() -> None:
    (worker,) = containers(only("Deployment"))
    env = env_of(worker)
    host = env["ATLAS_WEB_HOST"]
    if "valueFrom" in host:
        assert host["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    else:
        reference = re.fullmatch(r"\$\((\w+)\)", host["value"])
        assert reference, host
        var = reference.group(1)
        assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        names = list(env)
        assert names.index(var) < names.index("ATLAS_WEB_HOST"), "$(VAR) needs VAR first"
    assert only("ConfigMap")["data"]["ATLAS_WEB_BIND"] == "0.0.0.0"


def test_service_and_pdb_select_the_worker_pods() -> None:
    deployment = only("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = only("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (worker,) = containers(deployment)
    port_names = {p["name"] for p in worker["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    pdb = only("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert {"minAvailable", "maxUnavailable"} & set(pdb["spec"])


def test_migration_job_runs_atlas_migrate_once() -> None:
    job = only("Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    (migrate,) = containers(job)
    assert migrate["args"] == ["atlas", "migrate"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    selector = only("Deployment")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job_labels.items(), "the Service must not select the Job"


# --------------------------------------------------------------------------- Docker


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_keeps_the_local_stack_and_adds_the_full_profile() -> None:
    services = compose()["services"]
    for name in ("kafka", "postgres", "redis"):
        assert "profiles" not in services[name], f"{name} must start without a profile"
    full = {n for n, s in services.items() if "full" in s.get("profiles", [])}
    assert {"migrate", "prometheus", "grafana", "jaeger"} <= full
    workers = sorted(n for n in full if n.startswith("worker"))
    assert workers
    for name in workers:
        worker = services[name]
        assert worker["command"] == ["atlas", "worker"]
        assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert worker["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    hosts = [services[n]["environment"]["ATLAS_WEB_HOST"] for n in workers]
    assert len(set(hosts)) == len(hosts), "each worker needs its own ATLAS_WEB_HOST"
    assert services["migrate"]["command"] == ["atlas", "migrate"]

    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "atlas"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{h}:6066" for h in hosts}


def test_compose_refers_to_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            context = (INFRA / build["context"]).resolve()
            assert context == REPO_ROOT, name
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name}: {source}"


def test_dockerfile_builds_a_non_root_worker_image() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/live", text, re.MULTILINE)
    assert 'CMD ["atlas", "worker"]' in text
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "README.md", "streams/", "tables/", "web/", "migrations/"):
        assert f"!{needed}" in ignored, needed
