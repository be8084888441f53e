"""The flow operated as its users will: scraped by a real Prometheus, graphed, and alerted on.

One run of the real flow (a separate process, the real model, 2 workers) reads generated
events from the real Kafka broker, and a real ``profilestream serve`` (API keys on) consumes
its deltas and answers requests, while a real Prometheus (Debian's package, see
``tests/prometheus_server.py``) scrapes both every second with the deployed
``profilestream`` and ``profilestream-serve`` jobs and evaluates the deployed alert rules,
their ``for:`` shortened to seconds. The run sends steady traffic in phases (see
:class:`Traffic`: card testing, so that risk alerts are raised; more days of events, so that
demand buckets close; views days late); then a burst of malformed messages, which must fire
ProfilestreamDeadLetterRateHigh; then the flow is stopped, which must fire
ProfilestreamTargetDown. The tests ask Prometheus's HTTP API about the run: the targets,
every series the Grafana dashboard uses, every panel's queries
(read with the Grafana Foundation SDK, Grafana's variables substituted as Grafana would), the
alerts and rules; and ``promtool`` judges the flow's ``/metrics`` and runs the rules' unit
tests.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

from dataflow import metrics
from dataflow.serve.auth import Scope, new_key, write_keys
from dataflow.sim import (
    DEFAULT_END_MS,
    AnomalyConfig,
    GeneratedEvent,
    generate_events,
)
from operators.ingest.units import DAY_MS
from tests.support import ROOT
from tests.support.kafka_broker import KafkaBroker, free_port, kafka_flow_args, produce_all, send
from tests.support.prometheus_server import (
    ALERT_RULES,
    JOB,
    SERVE_JOB,
    PrometheusServer,
    prometheus_scraping,
    promtool,
)
from tests.support.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DASHBOARD = ROOT / "deploy" / "grafana" / "profilestream-dashboard.json"
N_EVENTS, N_USERS = 3000, 300  # the first phase's traffic; the second's is 600 events
RATE = 200  # generated events produced per second: 15 s of traffic, then 3 s
N_LATE = 20
#: Malformed messages after the generated events: ~25% of all input, far above the rule's 1%,
#: and ~1000 per 10 minutes, far above its 0.05/s (30 per 10 minutes).
BURST = 1000
SCRAPE_INTERVAL_S = 1.0  # the test config's; Grafana's "scrape interval" of the data source


@dataclass
class Run:
    prometheus: PrometheusServer
    instance: str  # host:port of the flow's /metrics, as Prometheus labels it
    serve_instance: str  # host:port of serve's ops port (/metrics), as Prometheus labels it
    flow_listens_on: set[str]  # the addresses the flow's /metrics port listens on
    start: float  # unix seconds: the flow started
    end: float  # unix seconds: the burst was alerted on; the flow stopped after
    targets_while_up: dict[str, Any]
    dead_letter_alerts_before_burst: list[dict[str, Any]]
    dead_letter_alerts_after_burst: list[dict[str, Any]]
    target_down_alerts: list[dict[str, Any]]
    metrics_text: bytes


@dataclass
class Traffic:
    """What the run sends, in phases; each phase waits until Prometheus has seen the last.

    Counters that Prometheus first scrapes after their increments (a labelled series appears
    with its first increment; a whole backlog can be counted between two scrapes) show no rate
    until they move again, and the event clock closes no demand bucket in the first 10 s of
    input. So ``first`` opens every series and starts the clock, and ``second`` moves them:
    two more days of events (card testing again: risk alerts; buckets closing: demand and its
    forecast error), then ``late``, views from days back (late for windows and demand).
    """

    first: list[GeneratedEvent]
    second: list[GeneratedEvent]
    late: list[GeneratedEvent]

    @classmethod
    def generate(cls) -> Traffic:
        card_testing = ("card_testing",)
        first = list(
            generate_events(
                N_EVENTS, N_USERS, seed=5, anomalies=AnomalyConfig(rate=0.05, kinds=card_testing)
            )
        )
        # The burst must land on a dead-letter series Prometheus already has.
        assert any(e.expected_reason == "invalid_json" for e in first)
        second = list(
            generate_events(
                600, N_USERS, seed=6, start_ms=DEFAULT_END_MS, span_days=2,
                anomalies=AnomalyConfig(rate=0.02, kinds=card_testing),
            )
        )  # fmt: skip
        return cls(first, second, late_views(first, N_LATE))


def late_views(events: list[GeneratedEvent], n: int) -> list[GeneratedEvent]:
    """Copies of the last views of ``n`` users, as new events five days older: each is late for
    its user's windows (older than their newest by more than the allowed lateness; their few
    events are all in the de-duplication memory, so it is applied, not refused) and for its
    category's demand bucket, closed days ago."""
    late: dict[str, GeneratedEvent] = {}
    for g in reversed(events):
        fields = json.loads(g.line) if g.expected_reason is None else {}
        if fields.get("type") == "view" and fields.get("category") and g.user_id not in late:
            fields |= {"event_id": f"late-{len(late)}", "ts": fields["ts"] - 5 * DAY_MS}
            late[g.user_id] = GeneratedEvent(json.dumps(fields).encode(), g.user_id, None)
        if len(late) == n:
            break
    return list(late.values())


def start_flow(kafka: KafkaBroker, tag: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    topics = {n: f"{n}-{tag}" for n in ("events", "deltas", "dlq", "segments", "alerts", "demand")}
    for topic in topics.values():
        kafka.create_topic(topic, partitions=3)
    command = [
        sys.executable, "-m", "dataflow", "run",
        *kafka_flow_args(
            kafka.bootstrap, topics["events"], topics["deltas"], topics["dlq"], 2, port
        ),
        "--segments-topic", topics["segments"], "--alerts-topic", topics["alerts"],
        "--demand-topic", topics["demand"],
        # Low enough that the users waiting while the model loads hold the input for a
        # while, so the held-input panel has data; high enough not to hold it afterwards.
        "--max-users-waiting", "50",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def start_serve(
    kafka: KafkaBroker, tag: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """``profilestream serve`` over the flow's deltas and segments, with an API key file:
    (the process, the API's URL, the ops port's host:port, a key that reads profiles)."""
    secret, key = new_key("dashboards", frozenset({Scope.PROFILES, Scope.SEGMENTS}))
    keys = workdir / "keys.json"
    write_keys(keys, [key])
    api_port, ops_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "dataflow", "serve", "--brokers", kafka.bootstrap,
        "--deltas-topic", f"deltas-{tag}", "--segments-topic", f"segments-{tag}",
        "--serve-store", f"sqlite://{workdir / 'profiles.db'}", "--serve-keys-file", str(keys),
        "--serve-http-port", str(api_port), "--serve-ops-port", str(ops_port),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (workdir / "serve.log").open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    return process, f"http://127.0.0.1:{api_port}", f"127.0.0.1:{ops_port}", secret


class Clients(threading.Thread):
    """Dashboards' traffic to serve, five requests a second: a profile, an unknown user, a
    request without a key (200, 404 and 401 in the request metrics)."""

    def __init__(self, api: str, secret: str, user: str) -> None:
        super().__init__(daemon=True)
        self.api, self.secret, self.user = api, secret, user
        self.done = threading.Event()

    def run(self) -> None:
        paths = [(f"/users/{self.user}", True), ("/users/nobody-here", True), ("/segments", False)]
        n = 0
        while not self.done.wait(0.2):
            path, keyed = paths[n % len(paths)]
            n += 1
            headers = {"Authorization": f"Bearer {self.secret}"} if keyed else {}
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(self.api + path, headers=headers), timeout=5
                ) as answer:
                    answer.read()
            except (urllib.error.URLError, ConnectionError):
                pass  # 4xx are HTTPErrors; a serve not up yet refuses the connection


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def firing(prometheus: PrometheusServer, name: str) -> list[dict[str, Any]]:
    return [a for a in prometheus.alerts(name) if a["state"] == "firing"]


def produce_steadily(kafka: KafkaBroker, topic: str, generated: list[GeneratedEvent]) -> None:
    """Keyed by user id, at :data:`RATE` messages a second: traffic, not a backlog, so that
    every scrape sees events arrive (a rate() needs increases between scrapes)."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20})
    chunk = RATE // 4
    started = time.monotonic()
    for n, g in enumerate(generated, 1):
        send(producer, topic, g.user_id.encode(), g.line)
        if n % chunk == 0:
            producer.flush(30)
            time.sleep(max(0.0, started + n / RATE - time.monotonic()))
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not deliver every message to {topic}")


@pytest.fixture(scope="module")
def run(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    traffic = Traffic.generate()
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    instance = f"127.0.0.1:{port}"
    workdir = tmp_path_factory.mktemp("observability")
    log = workdir / "flow.log"
    serve, api, serve_instance, secret = start_serve(kafka, tag, workdir)
    some_user = next(g.user_id for g in traffic.first if g.expected_reason is None)
    clients = Clients(api, secret, some_user)
    try:
        with prometheus_scraping({JOB: [instance], SERVE_JOB: [serve_instance]}) as prom:
            start = time.time()
            flow = start_flow(kafka, tag, port, log)
            clients.start()
            try:

                def flow_alive() -> None:
                    assert flow.poll() is None, f"the flow exited: {log.read_text()[-3000:]}"

                def scraped() -> bool:
                    flow_alive()
                    return prom.value(f'up{{job="{JOB}"}}') == 1

                prom.wait_for(scraped, "successful scrape of the flow", 120)
                prom.wait_for(
                    lambda: prom.value(f'up{{job="{SERVE_JOB}"}}') == 1, "a scrape of serve", 60
                )
                flow_listens_on = listening_addresses(port)
                sent: list[GeneratedEvent] = []

                def phase(events: list[GeneratedEvent], also: str = "") -> None:
                    """Send ``events`` steadily; wait until a scrape has counted every one (and,
                    if given, until ``also`` returns something)."""
                    produce_steadily(kafka, f"events-{tag}", events)
                    sent.extend(events)
                    valid = sum(g.expected_reason is None for g in sent)

                    def counted() -> bool:
                        flow_alive()
                        in_deltas = prom.value("sum(profilestream_events_per_delta_sum)") or 0
                        dead = prom.value("sum(profilestream_dead_letters_total)") or 0
                        done = in_deltas >= valid and dead >= len(sent) - valid
                        return done and (not also or bool(prom.query(also)))

                    prom.wait_for(counted, f"{len(sent)} events counted (and {also or '-'})", 240)

                phase(traffic.first, also="profilestream_demand_forecasts_scored_total")
                phase(traffic.second)
                phase(traffic.late)
                targets = prom.api("targets", state="active")
                before = prom.alerts("ProfilestreamDeadLetterRateHigh")
                with urllib.request.urlopen(f"http://{instance}/metrics", timeout=10) as answer:
                    metrics_text = answer.read()

                produce_all(
                    kafka.bootstrap,
                    f"events-{tag}",
                    ((f"u-burst-{i % 50}".encode(), b'{"event_id": ') for i in range(BURST)),
                )

                def dead_letters_alerted() -> list[dict[str, Any]]:
                    flow_alive()
                    return firing(prom, "ProfilestreamDeadLetterRateHigh")

                after = prom.wait_for(dead_letters_alerted, "dead-letter alert firing", 60)
                end = time.time()
            finally:
                stop_processes(flow)
            down = prom.wait_for(
                lambda: firing(prom, "ProfilestreamTargetDown"), "target-down alert firing", 30
            )
            yield Run(
                prom, instance, serve_instance, flow_listens_on, start, end, targets, before,
                after, down, metrics_text,
            )  # fmt: skip
    finally:
        clients.done.set()
        stop_processes(serve)


def scraped_target(run: Run, job: str) -> dict[str, Any]:
    [target] = [t for t in run.targets_while_up["activeTargets"] if t["labels"]["job"] == job]
    assert target["health"] == "up", target
    assert target["lastError"] == ""
    return target


def test_prometheus_scrapes_the_flow_with_the_deployed_job(run: Run) -> None:
    target = scraped_target(run, JOB)
    # Hosts carry the labels the dashboard's variables select by, as pods do.
    assert target["labels"] == {
        "instance": run.instance, "job": JOB, "deployment": "vm", "namespace": "vm",
        "pod": "127.0.0.1",
    }  # fmt: skip
    assert target["scrapeUrl"] == f"http://{run.instance}/metrics"
    # Up through the run. (A scrape can time out now and then while the model has both cores:
    # the test's scrape timeout is its 1 s interval.)
    [up] = run.prometheus.query_range(f'up{{job="{JOB}"}}', run.start, run.end, 1)
    values = [v for _, v in up["values"]]
    assert values.count("1") > 0.5 * len(values[values.index("1") :]), values


def test_prometheus_scrapes_serve_with_the_deployed_job(run: Run) -> None:
    target = scraped_target(run, SERVE_JOB)
    assert target["labels"]["namespace"] == "vm" and target["labels"]["pod"] == "127.0.0.1"
    assert target["scrapeUrl"] == f"http://{run.serve_instance}/metrics"
    requests = run.prometheus.query(
        f'sum by (status) (profilestream_serve_request_seconds_count{{job="{SERVE_JOB}"}})'
    )
    statuses = {r["metric"]["status"] for r in requests if float(r["value"][1]) > 0}
    assert {"200", "401", "404"} <= statuses, statuses


def test_the_flow_serves_metrics_on_loopback_only(run: Run) -> None:
    assert run.flow_listens_on == {"127.0.0.1"}


# --- the Grafana dashboard -------------------------------------------------------------------


def load_dashboard() -> Any:
    """The dashboard as the Grafana Foundation SDK parses it (its plugins registered, so
    Prometheus targets are ``prometheus.Dataquery``)."""
    with warnings.catch_warnings():  # "prefer dashboardv2": Grafana 12's schema, not the
        warnings.simplefilter("ignore", DeprecationWarning)  # classic one deploy/ ships
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    return Dashboard.from_json(json.loads(DASHBOARD.read_text()))


def panels(dashboard: Any) -> list[Any]:
    """Every panel, including those inside rows."""
    from grafana_foundation_sdk.models.dashboard import RowPanel

    found = []
    for panel in dashboard.panels or []:
        if isinstance(panel, RowPanel):
            found += panel.panels
        else:
            found.append(panel)
    return found


def prometheus_targets(dashboard: Any) -> list[tuple[str, Any]]:
    """(panel title, target) for every query of every panel; all must be Prometheus queries."""
    from grafana_foundation_sdk.models import prometheus

    found = []
    for panel in panels(dashboard):
        assert panel.targets, f"panel {panel.title!r} has no queries"
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), (panel.title, target.to_json())
            source = target.datasource or panel.datasource
            assert source is not None and source.type_val == "prometheus", panel.title
            assert target.expr and not target.hide, (panel.title, target.ref_id)
            found.append((panel.title, target))
    return found


#: A PromQL series selector: a metric name directly followed by its label matchers.
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def dashboard_metrics(dashboard: Any) -> set[str]:
    """The metric names the dashboard's queries and template variables select."""
    exprs = [target.expr for _, target in prometheus_targets(dashboard)]
    names = {name for expr in exprs for name in SELECTOR.findall(expr)}
    for variable in dashboard.templating.list_val:
        if variable.type_val == "query":
            names |= {m.group(1) for m in [LABEL_VALUES.fullmatch(query_of(variable))] if m}
    return names


#: ``label_values(metric, label)`` or ``label_values(metric{matchers}, label)``.
LABEL_VALUES = re.compile(
    r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*(\w+)\s*\)"
)


def query_of(variable: Any) -> str:
    query = variable.query
    return str(query["query"] if isinstance(query, dict) else query)


def template_values(dashboard: Any, run: Run) -> dict[str, str]:
    """Each template variable as Grafana would interpolate it into a PromQL regex matcher:
    a query variable's values (looked up as Grafana does, the variables before it
    substituted into its selector) all selected, escaped and, if more than one, joined as
    ``(a|b)``."""
    values: dict[str, str] = {}
    for variable in dashboard.templating.list_val:
        if variable.type_val == "datasource":
            continue  # chooses where the queries go; not in any expression
        assert variable.type_val == "query", f"no substitution for {variable.type_val} variables"
        found = LABEL_VALUES.fullmatch(query_of(variable))
        assert found, f"variable {variable.name}: cannot resolve {query_of(variable)!r}"
        metric, matchers, label = found.groups()
        selector = interpolate(metric + (matchers or ""), values, SCRAPE_INTERVAL_S, 0)
        options = run.prometheus.api(
            f"label/{label}/values", **{"match[]": [selector]}, start=run.start, end=run.end
        )
        assert options, f"variable {variable.name} has no values"
        escaped = [grafana_regex_escape(o) for o in options]
        values[variable.name] = escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"
    return values


def grafana_regex_escape(value: str) -> str:
    """Grafana's ``prometheusSpecialRegexEscape``: regex metacharacters escaped, with the
    backslash doubled as a PromQL string literal needs."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(expr: str, variables: dict[str, str], interval_s: float, range_s: float) -> str:
    """Grafana's interpolation: its built-in variables, then the dashboard's, as ``$name`` or
    ``${name}``. ``$__rate_interval`` is max($__interval + scrape interval, 4 x scrape interval)."""
    rate_interval_s = max(interval_s + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)
    builtins = {
        "__rate_interval_ms": f"{int(rate_interval_s * 1000)}",
        "__rate_interval": f"{int(rate_interval_s * 1000)}ms",
        "__interval_ms": f"{int(interval_s * 1000)}",
        "__interval": f"{int(interval_s * 1000)}ms",
        "__range_ms": f"{int(range_s * 1000)}",
        "__range_s": f"{int(range_s)}",
        "__range": f"{int(range_s)}s",
    }
    substitutions = {**builtins, **variables}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in substitutions, f"no value for ${name} in {expr}"
        return substitutions[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, expr)


def test_every_series_the_dashboard_uses_exists(run: Run) -> None:
    names = dashboard_metrics(load_dashboard())
    assert {"profilestream_events_total", "bytewax_kafka_consumer_lag"} <= names
    missing = [n for n in sorted(names) if not run.prometheus.series(n, run.start, run.end)]
    assert not missing, f"the dashboard graphs series Prometheus never scraped: {missing}"


#: A query of how fast a counter moves: flat at zero through the run, its panel shows nothing.
RATE_QUERY = re.compile(r"\b(?:rate|irate|increase)\(")


def test_every_dashboard_panel_shows_data(run: Run) -> None:
    """Each panel's queries, run as Grafana runs them over the time of the run (a range query,
    step $__interval: the scrape interval at this zoom), return numbers; and rates not only
    zeros: rare events (risk alerts, late events, closing demand buckets) were provoked, so
    every counter the dashboard graphs moves. (A gauge may rightly stay at zero: the lag of a
    flow that keeps up, the units of a quiet hour.)"""
    dashboard = load_dashboard()
    variables = template_values(dashboard, run)
    assert variables == {"namespace": "vm", "pod": "127\\\\.0\\\\.0\\\\.1"}
    interval_s, range_s = SCRAPE_INTERVAL_S, run.end - run.start
    empty = []
    for title, target in prometheus_targets(dashboard):
        expr = interpolate(target.expr, variables, interval_s, range_s)
        result = run.prometheus.query_range(expr, run.start, run.end, interval_s)
        numbers = [float(v) for series in result for _, v in series["values"]]
        shown = [n for n in numbers if math.isfinite(n)]
        if not shown or (not any(shown) and RATE_QUERY.search(expr)):
            empty.append(f"{title} [{target.ref_id}] ({len(shown)} values): {expr}")
    assert not empty, "panels without data (or rates only zero):\n" + "\n".join(empty)


def exposed_name(metric: MetricWrapperBase) -> str:
    """The name a prometheus-client metric's main series has on /metrics."""
    [family] = metric.describe()
    assert isinstance(family, Metric)
    suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
    return family.name + suffix


#: The streams besides deltas and dead letters, and the metrics that show each.
STREAMS: dict[str, list[MetricWrapperBase]] = {
    "windows": [metrics.LATE_EVENTS],  # events left out of the hour/day/week windows
    "segments": [metrics.SEGMENT_MEMBERS, metrics.SEGMENT_TRANSITIONS],
    "risk alerts": [metrics.ALERTS],
    "category demand": [
        metrics.DEMAND_ACTUAL,
        metrics.DEMAND_FORECAST,
        metrics.DEMAND_ABS_ERROR,
        metrics.DEMAND_FORECASTS_SCORED,
        metrics.DEMAND_LATE_EVENTS,
    ],
}


def test_dashboard_has_panels_for_windows_segments_alerts_and_demand() -> None:
    graphed = dashboard_metrics(load_dashboard())
    for stream, shown_by in STREAMS.items():
        missing = [exposed_name(m) for m in shown_by if exposed_name(m) not in graphed]
        assert not missing, f"no panel shows the {stream} stream's {missing}"


# --- the alert rules -------------------------------------------------------------------------


def test_rules_are_the_deployed_ones_and_evaluate_cleanly(run: Run) -> None:
    deployed = yaml.safe_load(ALERT_RULES.read_text())
    names = [r["alert"] for g in deployed["groups"] for r in g["rules"]]
    loaded = [r for g in run.prometheus.api("rules")["groups"] for r in g["rules"]]
    assert [r["name"] for r in loaded] == names
    broken = [(r["name"], r["lastError"]) for r in loaded if r["health"] != "ok"]
    assert not broken, broken


def test_a_burst_of_malformed_messages_fires_the_dead_letter_alert(run: Run) -> None:
    # The generated input's ~1% of malformed messages, spread over 7 reasons, stays quiet.
    assert run.dead_letter_alerts_before_burst == []
    [alert] = run.dead_letter_alerts_after_burst
    assert alert["labels"] == {
        "alertname": "ProfilestreamDeadLetterRateHigh",
        "severity": "warning",
        "reason": "invalid_json",
    }
    assert float(alert["value"]) > 0.1  # the burst's share of input, well over the 1% threshold
    assert alert["annotations"]["summary"].endswith(
        "of input goes to the dead-letter topic as invalid_json"
    )


def test_a_stopped_flow_fires_target_down(run: Run) -> None:
    [alert] = run.target_down_alerts
    assert alert["labels"] == {
        "alertname": "ProfilestreamTargetDown",
        "severity": "critical",
        "job": JOB,
        "instance": run.instance,
        "deployment": "vm",
        "namespace": "vm",
        "pod": "127.0.0.1",
    }
    assert alert["annotations"]["summary"] == (
        f"profilestream process {run.instance} is not serving /metrics"
    )


# --- the exposition --------------------------------------------------------------------------


def test_promtool_accepts_the_flows_metrics(run: Run) -> None:
    assert b"profilestream_events_total{" in run.metrics_text
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=run.metrics_text, capture_output=True, check=False
    )
    report = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0 and not report.strip(), report


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    """deploy/prometheus/alerts_test.yml: the rules on constructed series, hours of them."""
    checked = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=ALERT_RULES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
