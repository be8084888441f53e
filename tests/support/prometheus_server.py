"""A real Prometheus (Debian's package) that scrapes a test's flow and evaluates the real alerts.

When ``prometheus`` or ``promtool`` is not on PATH, Debian's ``prometheus`` package is
installed with ``apt-get install -y --no-install-recommends prometheus`` (the test command runs
as root on Debian; the package lists are refreshed once if the install fails). A test starts
one server on a free loopback port, in a temporary folder, with a configuration made from
``deploy/prometheus/prometheus.yml``: its ``profilestream`` job (same name, path and labels)
scraping the test's flow instead of ``stream-host-*``, scrape and evaluation every second, and
the rules of ``deploy/prometheus/alerts.yml`` verbatim but for their ``for:`` durations,
shortened to :data:`ALERT_FOR` so an alert can fire within a test. The server stops when the
test is done. With ``CI=true`` a Prometheus that cannot start fails the tests that need it;
elsewhere they are skipped, loudly, as the Kafka and Redis tests are.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import yaml

from tests.support import ROOT
from tests.support.kafka_broker import free_port
from tests.support.server_process import ServerProcess, ensure_debian_package
from tests.support.server_process import unavailable as server_unavailable

PACKAGE = "prometheus"
DEPLOY = ROOT / "deploy" / "prometheus"
SCRAPE_CONFIG = DEPLOY / "prometheus.yml"
ALERT_RULES = DEPLOY / "alerts.yml"
JOB = "profilestream"
SERVE_JOB = "profilestream-serve"
#: What every ``for:`` of the alert rules becomes: pending for two evaluations, then firing.
ALERT_FOR = "2s"

T = TypeVar("T")


def ensure_prometheus() -> tuple[str, str]:
    """The paths of ``prometheus`` and ``promtool``, installing Debian's package if missing."""
    prometheus, promtool = ensure_debian_package(PACKAGE, "prometheus", "promtool")
    return prometheus, promtool


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip loudly elsewhere."""
    server_unavailable("Prometheus", reason, "these tests need Debian's prometheus package")


def promtool() -> str:
    """The path of ``promtool`` (installing the package if needed), or a skip/failure."""
    try:
        return ensure_prometheus()[1]
    except Exception as exc:
        unavailable(str(exc))


def shortened_alert_rules(for_: str = ALERT_FOR) -> str:
    """``alerts.yml`` with every ``for:`` duration replaced by ``for_``, and nothing else changed
    (the expressions, labels and annotations stay byte for byte)."""
    original = ALERT_RULES.read_text()
    rewritten = re.sub(r"^(\s+for:\s*)\S+[ \t]*$", rf"\g<1>{for_}", original, flags=re.MULTILINE)
    before, after = yaml.safe_load(original), yaml.safe_load(rewritten)
    for group in before["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    if before != after:
        raise RuntimeError(f"rewriting the for: durations of {ALERT_RULES} changed more than them")
    return rewritten


def scrape_config_for(targets: Mapping[str, Sequence[str]], rules_path: Path) -> dict[str, Any]:
    """The deployed scrape config, reduced to the static jobs named in ``targets`` (job name:
    ``host:port`` list), each aimed at its targets with its own labels and relabelling."""
    deployed = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {j["job_name"]: j for j in deployed["scrape_configs"]}
    scrape = []
    for name, addresses in targets.items():
        job = jobs[name]
        labels = {
            k: v for c in job.get("static_configs", []) for k, v in c.get("labels", {}).items()
        }
        static: dict[str, Any] = {"targets": list(addresses)}
        if labels:
            static["labels"] = labels
        scrape.append({**job, "static_configs": [static]})
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_path)],
        "scrape_configs": scrape,
    }


class PrometheusServer(ServerProcess):
    """One Prometheus on loopback, in its own folder, scraping ``targets`` (deployed job name:
    addresses) every second."""

    stop_timeout_s = 15.0

    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[str]]) -> None:
        self.workdir = workdir
        self.targets = dict(targets)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        super().__init__()

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def configure(self) -> Path:
        """Write the configuration and the shortened rules; the configuration's path."""
        rules = self.workdir / "alerts.yml"
        rules.write_text(shortened_alert_rules())
        config = scrape_config_for(self.targets, rules)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def start(self, timeout_s: float = 30.0) -> None:
        binary, _ = ensure_prometheus()
        if not self.config_path.exists():
            self.configure()
        command = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"prometheus was not ready within {timeout_s}s: {tail}")

    def api(self, path: str, **params: str | float | Sequence[str]) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(
            {k: v if isinstance(v, str | float | int) else list(v) for k, v in params.items()},
            doseq=True,
        )
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:  # a bad query: Prometheus says why in the body
            reason = exc.read().decode(errors="replace")
            raise AssertionError(f"{url}: {exc.code} {reason}") from exc
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query, now: the vector's samples."""
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        return list(self.api("series", **{"match[]": [match]}, start=start, end=end))

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts, of rule ``name`` if given."""
        found = self.api("alerts")["alerts"]
        return [a for a in found if name is None or a["labels"]["alertname"] == name]

    def wait_for(self, check: Callable[[], T], what: str, timeout_s: float) -> T:
        """Poll ``check`` every half second until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout_s}s; {self.log_tail(10)}")
            time.sleep(0.5)


@contextmanager
def prometheus_scraping(targets: Mapping[str, Sequence[str]]) -> Iterator[PrometheusServer]:
    """A started Prometheus scraping ``targets`` (deployed job name: ``host:port`` list) with
    the deployed jobs; stopped and removed after."""
    server = PrometheusServer(Path(tempfile.mkdtemp(prefix="prometheus-")), targets)
    try:
        try:
            _, tool = ensure_prometheus()
        except Exception as exc:
            unavailable(str(exc))
        # A configuration or rules Prometheus refuses is the project's fault: fail, never skip.
        config = server.configure()
        checked = subprocess.run(
            [tool, "check", "config", str(config)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            pytest.fail(
                f"promtool refuses the test's configuration:\n{checked.stdout}{checked.stderr}"
            )
        try:
            server.start()
        except Exception as exc:
            unavailable(str(exc))
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
