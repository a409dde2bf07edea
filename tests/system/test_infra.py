"""infra/ as far as it can be checked without a Docker engine or a cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalised as pip does)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*\"?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\",;#]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
    return out


def k8s_docs() -> list[dict[str, Any]]:
    docs = [d for p in sorted((INFRA / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return [d for d in docs if d["kind"] != "Kustomization"]


def test_every_pinned_dependency_of_pyproject_is_locked_at_the_same_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = pins("\n".join(f'"{d}"' for d in project["dependencies"] + project["optional-dependencies"]["dev"]))
    locked = pins((ROOT / "constraints.txt").read_text())
    assert "matplotlib" in direct  # the report runs from the product CLI
    for name, version in direct.items():
        assert locked.get(name) == version, f"{name}: pyproject {version}, constraints.txt {locked.get(name)}"


def test_the_image_installs_the_package_with_the_lock() -> None:
    docker = (INFRA / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    python = re.search(r"^FROM python:(\d+\.\d+)", docker, re.M)
    assert python and project["project"]["requires-python"].startswith(f">={python[1]},")
    assert "pip install -c constraints.txt ." in docker
    assert "grep '^torch==' constraints.txt" in docker  # torch at the locked version, from the CPU index
    top_level = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    for package in top_level:
        assert f"COPY {package} ./{package}" in docker, package
    ignore = (INFRA / "Dockerfile.dockerignore").read_text()
    for package in top_level:
        assert f"!{package}/**" in ignore
    assert 'ENTRYPOINT ["vitalstream"]' in docker and "USER vitalstream" in docker
    assert project["project"]["scripts"]["vitalstream"] == "cli.main:main"


def test_compose_has_kraft_kafka_prefect_server_worker_and_the_deployments() -> None:
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller" and "KAFKA_ZOOKEEPER_CONNECT" not in kafka
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "zookeeper" not in services
    prefect_version = pins((ROOT / "constraints.txt").read_text())["prefect"]
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{prefect_version}-python3.11"
    assert services["prefect-worker"]["entrypoint"][:4] == ["prefect", "worker", "start", "--pool"]
    assert "prefect --no-prompt deploy --all" in services["deploy"]["command"][0]
    assert services["prefect-worker"]["environment"]["VITALSTREAM_BOOTSTRAP"] == "kafka:9092"
    assert services["prefect-worker"]["build"]["dockerfile"] == "infra/Dockerfile"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose client")
def test_docker_compose_accepts_the_file() -> None:
    r = subprocess.run(
        ["docker-compose", "-f", str(INFRA / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_k8s_scoring_workers_never_outnumber_the_partitions() -> None:
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "vitalstream-scoring") in kinds and ("ConfigMap", "vitalstream-settings") in kinds
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    scoring = next(d for d in docs if d["kind"] == "StatefulSet")
    container = scoring["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    replicas = scoring["spec"]["replicas"]
    assert 1 <= replicas <= int(settings["VITALSTREAM_PARTITIONS"])
    assert int(env["VITALSTREAM_INSTANCE_COUNT"]) == replicas
    assert (
        "VITALSTREAM_INSTANCE=" in container["command"][-1] and "vitalstream run --follow" in container["command"][-1]
    )
    scheduler = next(d for d in docs if d["kind"] == "Deployment")
    assert scheduler["spec"]["replicas"] == 1
    only = scheduler["spec"]["template"]["spec"]["containers"][0]["args"]
    assert only[:2] == ["serve", "--only"] and "scoring" not in only[2].split(",")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # one lake for every worker


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl client")
def test_kustomize_renders_the_manifests() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(INFRA / "k8s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rendered = list(yaml.safe_load_all(r.stdout))
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"vitalstream"}


@pytest.mark.integration
def test_the_images_install_resolves_to_exactly_the_lock(tmp_path: Path) -> None:
    """What `pip install -c constraints.txt .` (the Dockerfile's step) would install, resolved without
    installing: every package at the version constraints.txt locks, none unlocked."""
    import json
    import sys

    report = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "-c",
         str(ROOT / "constraints.txt"), "--report", str(report), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    locked = pins((ROOT / "constraints.txt").read_text())
    resolved = {
        re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"].split("+")[0]  # 2.13.0+cpu
        for i in json.loads(report.read_text())["install"]
    }
    resolved.pop("vitalstream")
    assert {n: v for n, v in resolved.items() if locked.get(n) != v} == {}
