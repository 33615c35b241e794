"""Dockerfiles and Kubernetes manifests, checked against the code they run.

No container engine runs here, so the images are not built: the Dockerfiles are read as
text (instructions joined across continuation lines), and the manifests are parsed with
yaml.safe_load_all. What they claim (ports, probe paths, environment variable names, the
user) is compared with what the manager and the delegate actually serve and read.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs, no py.typed
import pytest
import yaml

from delegate.config import ENV
from manager.server.app import ManagerConfig, build_app, open_store
from shared.datadir import secure_data_dir
from shared.limits import Timings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
KUBE = REPO / "deploy" / "kubernetes"
MANAGER_PORT = ManagerConfig(data_dir=Path()).port
# The only variable the manager reads (manager/cli.py).
MANAGER_ENV = {"TETHER_DATA_DIR"}
DELEGATE_ENV = set(ENV.values())
# What an image is built from: the sources and the hash-pinned lock.
BUILD_SOURCES = {
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "requirements",
    "shared",
    "manager",
    "delegate",
}


# -- helpers --------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def docs(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    loaded = list(yaml.safe_load_all((KUBE / name).read_text()))
    return {(d["kind"], d["metadata"]["name"]): d for d in loaded if d}


def mount_of(c: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount ``path`` lies in (the mount itself, or below it)."""
    for m in c["volumeMounts"]:
        if PurePosixPath(path).is_relative_to(m["mountPath"]):
            found: dict[str, Any] = m
            return found
    raise AssertionError(f"{path} is on no mounted volume")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    c: dict[str, Any] = only
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounted_file(workload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume a file path lies in, and the file's name inside that volume."""
    c = container(workload)
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    for m in c["volumeMounts"]:
        mount = PurePosixPath(m["mountPath"])
        if PurePosixPath(path).parent == mount:
            return volumes[m["name"]], PurePosixPath(path).name
    raise AssertionError(f"{path} is on no mounted volume")


@pytest.fixture
async def served_paths(tmp_path: Path) -> AsyncIterator[set[str]]:
    store = open_store(tmp_path)
    await store.open()
    try:
        app, _ = await build_app(ManagerConfig(data_dir=tmp_path), store)
        yield {
            r.resource.canonical
            for r in app.router.routes()
            if r.method == "GET" and r.resource is not None
        }
    finally:
        await store.close()


MANAGER = docs("manager.yaml")
DELEGATE = docs("delegate.yaml")
# The placeholders for those who keep the token in a file; never in delegate.yaml itself.
DELEGATE_SECRETS = docs("delegate-secret.yaml.example")
STATEFULSET = MANAGER["StatefulSet", "tether-manager"]
DEPLOYMENT = DELEGATE["Deployment", "tether-delegate"]


# -- Dockerfiles ----------------------------------------------------------------------------

DOCKERFILES = ["Dockerfile.manager", "Dockerfile.delegate"]


DIGEST_PIN = re.compile(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}")


def base_images(dockerfile: Path) -> list[str]:
    """The image each stage starts FROM, with ``${ARG}`` replaced by the ARG's default."""
    defaults: dict[str, str] = {}
    bases = []
    for word, args in instructions(dockerfile):
        if word == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip()
        elif word == "FROM":
            image = args.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return bases


def test_images_pin_one_base_by_digest() -> None:
    """Every stage of both images starts from the same digest-pinned base, never a bare tag."""
    bases = [base for name in DOCKERFILES for base in base_images(DOCKER / name)]
    assert len(bases) == 2 * len(DOCKERFILES)
    assert all(DIGEST_PIN.fullmatch(base) for base in bases), bases
    assert len(set(bases)) == 1


def test_the_digest_check_catches_a_bare_tag(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE=python:3.11-slim-bookworm\nFROM ${BASE} AS build\n")
    assert base_images(dockerfile) == ["python:3.11-slim-bookworm"]
    assert not DIGEST_PIN.fullmatch(base_images(dockerfile)[0])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    users = [args for word, args in final_stage(DOCKER / name) if word == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0


@pytest.mark.parametrize("name", ["Dockerfile.manager", "Dockerfile.delegate"])
def test_images_bake_in_no_secret(name: str) -> None:
    steps = instructions(DOCKER / name)
    for word, args in steps:
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Z_][A-Z0-9_]*)=", args) or [args.split("=")[0]]
            assert not [n for n in names if re.search("TOKEN|SECRET|PASSWORD|KEY", n)], args
        if word == "COPY" and "--from=" not in args:
            sources = args.split()[:-1]
            assert set(sources) <= BUILD_SOURCES


@pytest.mark.parametrize("name", ["Dockerfile.manager", "Dockerfile.delegate"])
def test_images_install_only_from_the_hash_pinned_lock(name: str) -> None:
    """Every pip install takes the lock by hash, or the built wheel without its dependencies:
    nothing is resolved afresh at image build time."""
    installs = [
        part.strip()
        for word, args in instructions(DOCKER / name)
        if word == "RUN"
        for part in args.split("&&")
        if "pip install" in part or "pip wheel" in part
    ]
    assert installs
    for step in installs:
        assert "--require-hashes -r requirements/" in step or "--no-deps" in step, step
    assert any("requirements/runtime.txt" in step for step in installs)


def test_build_context_excludes_everything_but_the_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == BUILD_SOURCES
    assert {"**/*.pem", "**/*.key"} <= set(lines)


@pytest.mark.parametrize("name", ["Dockerfile.manager", "Dockerfile.delegate"])
def test_image_env_names_are_ones_the_code_reads(name: str) -> None:
    for word, args in instructions(DOCKER / name):
        if word == "ENV":
            tether = {n for n in re.findall(r"([A-Z_][A-Z0-9_]*)=", args) if n.startswith("TETHER")}
            assert tether <= MANAGER_ENV | DELEGATE_ENV


async def test_manager_image_exposes_the_port_and_checks_a_served_health_path(
    served_paths: set[str],
) -> None:
    steps = dict(final_stage(DOCKER / "Dockerfile.manager"))
    assert steps["EXPOSE"] == str(MANAGER_PORT)
    check = steps["HEALTHCHECK"]
    url = re.search(r"https://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert url is not None
    assert int(url.group(1)) == MANAGER_PORT
    assert url.group(2) in served_paths
    cmd = json.loads(steps["CMD"])
    assert cmd[cmd.index("--listen") + 1] == f"0.0.0.0:{MANAGER_PORT}"


def test_images_user_is_the_one_kubernetes_runs_as() -> None:
    for name, workload in (("manager", STATEFULSET), ("delegate", DEPLOYMENT)):
        users = [a for w, a in final_stage(DOCKER / f"Dockerfile.{name}") if w == "USER"]
        uid, _, gid = users[-1].partition(":")
        security = pod_spec(workload)["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))


# -- Kubernetes: the manager ----------------------------------------------------------------


def test_manager_ports_are_the_managers_listen_port() -> None:
    c = container(STATEFULSET)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"https": MANAGER_PORT}
    assert c["args"][c["args"].index("--listen") + 1] == f"0.0.0.0:{MANAGER_PORT}"
    for service in (
        MANAGER["Service", "tether-manager"],
        MANAGER["Service", "tether-manager-pods"],
    ):
        (port,) = service["spec"]["ports"]
        assert port["port"] == MANAGER_PORT
        assert port["targetPort"] in ports
        selector = service["spec"]["selector"]
        labels = STATEFULSET["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    assert STATEFULSET["spec"]["serviceName"] == "tether-manager-pods"
    assert MANAGER["Service", "tether-manager-pods"]["spec"]["clusterIP"] == "None"


async def test_manager_probes_use_https_on_served_paths(served_paths: set[str]) -> None:
    c = container(STATEFULSET)
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["scheme"] == "HTTPS"
        assert probe["path"] in served_paths
        assert probe["port"] in {p["name"] for p in c["ports"]}


def test_manager_data_dir_is_the_persistent_volume() -> None:
    c = container(STATEFULSET)
    env = env_of(c)
    assert set(env) <= MANAGER_ENV
    (claim,) = STATEFULSET["spec"]["volumeClaimTemplates"]
    # Inside the volume, not its root: the kubelet then leaves it alone (see the next test).
    mount = mount_of(c, env["TETHER_DATA_DIR"])
    assert mount["name"] == claim["metadata"]["name"]
    assert PurePosixPath(env["TETHER_DATA_DIR"]).parent == PurePosixPath(mount["mountPath"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "--data-dir" not in c["args"]


def test_manager_tls_flags_name_files_in_the_tls_secret() -> None:
    c = container(STATEFULSET)
    args = c["args"]
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
        volume, name = mounted_file(STATEFULSET, args[args.index(flag) + 1])
        assert volume["secret"]["secretName"] == "tether-manager-tls"
        assert name == key


# -- Kubernetes: the delegate ---------------------------------------------------------------


def test_delegate_env_names_are_ones_the_delegate_reads() -> None:
    env = env_of(container(DEPLOYMENT))
    assert set(env) <= DELEGATE_ENV
    # The token only ever as a file from the Secret, never as a value in the manifest.
    assert ENV["token"] not in env
    assert ENV["token_file"] in env


def test_delegate_token_file_is_the_secrets_key() -> None:
    env = env_of(container(DEPLOYMENT))
    volume, name = mounted_file(DEPLOYMENT, env[ENV["token_file"]])
    secret = DELEGATE_SECRETS["Secret", volume["secret"]["secretName"]]
    assert name in secret["stringData"]


def test_delegate_ca_file_is_in_the_configmap() -> None:
    env = env_of(container(DEPLOYMENT))
    volume, name = mounted_file(DEPLOYMENT, env[ENV["ca_file"]])
    config_map = DELEGATE_SECRETS["ConfigMap", volume["configMap"]["name"]]
    assert name in config_map["data"]


def test_delegate_data_dir_is_writable_and_url_is_https() -> None:
    c = container(DEPLOYMENT)
    env = env_of(c)
    mount = mount_of(c, env[ENV["data_dir"]])
    assert not mount.get("readOnly", False)
    assert mount["mountPath"] != env[ENV["data_dir"]]
    assert env[ENV["manager_url"]].startswith("https://")


def test_delegate_grace_period_covers_its_shutdown() -> None:
    t = Timings()
    grace = pod_spec(DEPLOYMENT)["terminationGracePeriodSeconds"]
    assert grace > t.shutdown_grace + t.kill_grace


@pytest.mark.parametrize("workload", [STATEFULSET, DEPLOYMENT], ids=["manager", "delegate"])
def test_workloads_run_non_root_read_only_without_capabilities(workload: dict[str, Any]) -> None:
    pod = pod_spec(workload)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    security = container(workload)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # Something must be writable: /tmp at least, on its own volume.
    assert "/tmp" in {m["mountPath"] for m in container(workload)["volumeMounts"]}


def test_applying_the_delegate_manifest_replaces_no_secret_or_ca() -> None:
    """`kubectl create secret ...` then `kubectl apply -f delegate.yaml` keeps the real
    token and CA: the file holds the Deployment alone."""
    assert set(DELEGATE) == {("Deployment", "tether-delegate")}
    kinds = {kind for kind, _ in DELEGATE_SECRETS}
    assert kinds == {"Secret", "ConfigMap"}


@pytest.mark.parametrize("workload", [STATEFULSET, DEPLOYMENT], ids=["manager", "delegate"])
def test_fs_group_never_makes_a_key_group_readable(workload: dict[str, Any]) -> None:
    """With fsGroup, the kubelet makes a volume's files group-readable whenever its root is
    not as the kubelet set it; the process keeps its data dir 0700 and refuses a
    group-readable key. So the kubelet may change ownership only on a root mismatch, and
    the data dir is a directory below the root, which the process never changes."""
    security = pod_spec(workload)["securityContext"]
    assert "fsGroup" in security
    assert security["fsGroupChangePolicy"] == "OnRootMismatch"
    env = env_of(container(workload))
    data_dir = env.get("TETHER_DATA_DIR") or env[ENV["data_dir"]]
    assert mount_of(container(workload), data_dir)["mountPath"] != data_dir


def test_secure_data_dir_leaves_the_volume_root_as_the_kubelet_made_it(tmp_path: Path) -> None:
    """What the kubelet checks on the next mount (group, g+rwx, setgid on the root) stays
    as it was after the process made and secured its data dir below it."""
    root = tmp_path / "volume"
    root.mkdir()
    os.chmod(root, 0o2770)
    secure_data_dir(root / "data")
    key = root / "data" / "master.key"
    key.write_bytes(b"k")
    os.chmod(key, 0o600)
    secure_data_dir(root / "data")
    assert stat.S_IMODE(root.stat().st_mode) == 0o2770
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o700


MANIFESTS = [*sorted(KUBE.glob("*.yaml")), KUBE / "delegate-secret.yaml.example"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path: Path) -> None:
    """Strictly (an unknown field fails), against the schemas kubernetes-validate ships:
    no network."""
    resources = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert resources
    for resource in resources:
        kubernetes_validate.validate(resource, "1.30.0", strict=True)


def test_the_schema_check_fails_on_a_misspelt_field() -> None:
    broken = json.loads(json.dumps(DEPLOYMENT))
    pod_spec(broken)["securityContext"]["fsGroupChangePolicyy"] = "OnRootMismatch"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_the_delegate_docker_run_example_mounts_the_ca_it_names() -> None:
    comment = " ".join(
        line.lstrip("# ").rstrip("\\ ")
        for line in (DOCKER / "Dockerfile.delegate").read_text().splitlines()
        if line.startswith("#")
    )
    run = comment[
        comment.index("docker run") : comment.index("tether-delegate", comment.index("docker run"))
    ]
    ca = re.search(r"-e TETHER_CA_FILE=(\S+)", run)
    assert ca is not None
    assert f":{ca.group(1)}:ro" in run
    token = re.search(r"-e TETHER_TOKEN_FILE=(\S+)", run)
    assert token is not None
    assert f":{token.group(1)}:ro" in run


def test_the_build_context_holds_the_license_files_the_wheel_needs() -> None:
    """setuptools refuses to build when a ``license-files`` entry matches nothing."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for name in DOCKERFILES:
        copied = {
            source
            for word, args in instructions(DOCKER / name)
            if word == "COPY" and "--from=" not in args
            for source in args.split()[:-1]
        }
        for pattern in project["license-files"]:
            assert pattern in BUILD_SOURCES
            assert pattern in copied, name
