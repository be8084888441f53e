"""Write prometheusrule.yaml: deploy/prometheus/alerts.yml as a Prometheus Operator rule.

    python deploy/prometheus-operator/make_rule.py

One source of truth for the alerts; a test fails while this file is stale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
RULE = HERE / "prometheusrule.yaml"
HEADER = "# Made from ../prometheus/alerts.yml by make_rule.py: edit those, not this.\n"


def prometheus_rule() -> str:
    """The PrometheusRule object holding the alert groups of ``alerts.yml``."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "profilestream",
            "labels": {"app.kubernetes.io/name": "profilestream"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    RULE.write_text(prometheus_rule())
