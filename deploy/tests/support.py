"""What the deploy tests share: paths, the built manifests, the metric names the server exports."""

import json
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "marc-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "marc-dashboard.json"
METRICS_RS = REPO / "server" / "src" / "serve" / "metrics.rs"


def kustomize(overlay: str) -> list[dict]:
    """The objects `kubectl kustomize` builds from deploy/k8s/overlays/OVERLAY."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    """The only object of KIND (and NAME) in OBJECTS."""
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def exported_metrics() -> set[str]:
    """Every metric name the server declares (server/src/serve/metrics.rs)."""
    return set(re.findall(r'"(marc_[a-z_]+)"', METRICS_RS.read_text()))


def base_metric(series: str) -> str:
    """The declared name behind a histogram's or counter's exposed series name."""
    return re.sub(r"_(bucket|sum|count)$", "", series)


def metrics_in(expr: str) -> set[str]:
    """The marc_* metric names a PromQL expression reads (recording rules' names, `level:metric:ops`, left out)."""
    without_recorded = re.sub(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", "", expr)
    return {base_metric(m) for m in re.findall(r"\bmarc_[a-z_]+", without_recorded)}


def recording_rules() -> list[str]:
    """The names of the recording rules."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


def rule_expressions() -> list[str]:
    """The expression of every rule, recording or alerting."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def alert_expression(name: str) -> str:
    """The expression of the alerting rule `name`."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (expr,) = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == name]
    return expr


def dashboard_queries(job: str = ".+", instance: str = ".+", rate_interval: str = "30s") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, with the dashboard's variables substituted."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = []
    for panel in panels:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", rate_interval)
                .replace("$job", job)
                .replace("$instance", instance)
            )
            queries.append((panel["title"], expr))
    return queries
