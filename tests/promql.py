"""The PromQL that infra/ queries (dashboards, alert rules) and the metric names in it.

Shared by the unit tier (syntax, structure) and the integration tier (every queried name is
served by a live worker's /metrics).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO_ROOT / "infra" / "prometheus"
DASHBOARDS_DIR = REPO_ROOT / "infra" / "grafana" / "dashboards"
ALERTS = PROMETHEUS_DIR / "alerts.yml"

# Series that Prometheus makes itself rather than a worker exposes.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "inf", "nan", "atan2"}
)
_GRAFANA_VAR = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")

# Grafana's variables, replaced by values PromQL accepts, for syntax checks.
GRAFANA_DEFAULTS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: bare, or followed by `{` or `[`.

    Strings, label matchers, ranges and grouping clauses are removed first, so label names and
    values never count; identifiers followed by `(` are functions or aggregations.
    """
    text = _GRAFANA_VAR.sub("", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def with_grafana_defaults(expr: str) -> str:
    for variable, value in GRAFANA_DEFAULTS.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels({"panels": panel.get("panels", [])})
        else:
            yield panel


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, expression) of every dashboard target."""
    for path in dashboard_files():
        for panel in panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel.get('title')}", target.get("expr", "")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_exprs() -> Iterator[tuple[str, str]]:
    for rule in alert_rules():
        yield f"alerts.yml: {rule.get('alert') or rule.get('record')}", rule["expr"]


def queried_names(exprs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """Metric name -> where it is queried, without the series Prometheus makes itself."""
    found: dict[str, set[str]] = {}
    for where, expr in exprs:
        for name in metric_names(expr) - SYNTHETIC:
            found.setdefault(name, set()).add(where)
    return found


_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exposed_series_names(exposition: str) -> set[str]:
    """Every series name an exposition serves or declares.

    A family declared without samples yet (a labelled counter never incremented) still counts:
    its names follow from its type (a counter `x` is queried as `x_total`, a histogram as
    `x_bucket`, `x_sum`, `x_count`). A counter's bare family name is not a series name.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        suffixes = _SERIES_SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names
