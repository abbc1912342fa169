"""The Dockerfile, compose file and systemd unit do what the seed shows.

No Docker engine runs here, so the Dockerfile's own steps are run in clean virtual
environments: the build stage's `pip wheel` commands make the wheels, the runtime
stage's `pip install` installs them, and the image's CMD and HEALTHCHECK run
against each other.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for line in DOCKERFILE.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    return stages


def test_dockerfile_shape():
    _build, runtime = _stages()
    assert [w for w, _ in runtime][-1] == "CMD"
    assert dict(runtime)["CMD"] == '["time-masternode"]'
    assert dict(runtime)["EXPOSE"] == "8765"
    assert dict(runtime)["USER"] not in ("root", "0")
    assert "VOLUME" in dict(runtime)
    assert "/health" in dict(runtime)["HEALTHCHECK"]
    assert any("--from=build" in rest for w, rest in runtime if w == "COPY")


def test_compose_and_systemd_follow_the_seed():
    compose = (ROOT / "docker-compose.yml").read_text()
    for needle in ("image: time-masternode", '"8765:8765"', "WS_ADDR=0.0.0.0:8765",
                   "restart: unless-stopped"):
        assert needle in compose
    unit = (ROOT / "deploy" / "time-masternode.service").read_text()
    for needle in ("Description=TIME Coin Masternode", 'Environment="WS_ADDR=0.0.0.0:8765"',
                   "Restart=always", "RestartSec=10", "WantedBy=multi-user.target"):
        assert needle in unit
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start and exec_start.group(1).endswith("/time-masternode")


UNIT = ROOT / "deploy" / "time-masternode.service"


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this environment's time-masternode, which
    ``verify`` checks exists."""
    exe = Path(sys.executable).parent / "time-masternode"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", UNIT.read_text(), flags=re.M)
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_systemd_unit_is_hardened():
    settings = dict(re.findall(r"^(\w+)=(.*)$", UNIT.read_text(), re.M))
    assert int(settings["LimitNOFILE"]) >= 10_000 + 64 + 100  # MAX_CONNECTIONS + RPC + own
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    data_dir = re.search(r'^Environment="DATA_DIR=(\S+)"', UNIT.read_text(), re.M)
    assert data_dir and settings["ReadWritePaths"] == data_dir.group(1)
    for name in ("PrivateTmp", "ProtectHome", "PrivateDevices", "ProtectKernelTunables",
                 "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        assert name in settings, name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
def test_systemd_unit_verifies_and_rates_ok(tmp_path):
    unit = _unit_here(tmp_path)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    # Exposure 0.0 (locked down) to 10.0 (none); the seed's unit rates 9.2 UNSAFE.
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                        "--no-pager", str(unit)], capture_output=True, text=True,
                       cwd=tmp_path)
    if "--offline" in p.stderr and "unrecognized" in p.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (systemd < 250)")
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", p.stdout)
    assert p.returncode == 0 and level and float(level.group(1)) <= 2.0, p.stdout[-500:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(900)
def test_dockerfile_steps_build_and_run(tmp_path):
    build, runtime = _stages()
    wheels = tmp_path / "wheels"
    venv_build, venv_run = tmp_path / "build-venv", tmp_path / "run-venv"
    for v in (venv_build, venv_run):
        subprocess.run([sys.executable, "-m", "venv", str(v)], check=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for word, rest in build:
        if word == "RUN" and rest.startswith("pip "):
            cmd = rest.replace("/wheels", str(wheels))
            argv = [str(venv_build / "bin" / "pip"), *shlex.split(cmd)[1:]]
            argv = [a for part in argv for a in (
                [str(p) for p in wheels.glob(Path(part).name)] if "*" in part else [part])]
            subprocess.run(argv, cwd=ROOT, check=True, env=env, capture_output=True)
    installs = [rest for w, rest in runtime if w == "RUN" and rest.startswith("pip install")]
    assert installs
    for cmd in installs:
        head = cmd.split("&&")[0].replace("/wheels/*.whl", "").split()
        subprocess.run([str(venv_run / "bin" / "pip"), *head[1:],
                        *map(str, wheels.glob("*.whl"))], check=True, env=env,
                       capture_output=True)
    port = _free_port()
    envs = dict(re.findall(r"(\w+)=(\S+)", dict(runtime)["ENV"]))
    envs.update(WS_ADDR=f"127.0.0.1:{port}", RPC_ADDR=f"127.0.0.1:{_free_port()}",
                DATA_DIR=str(tmp_path / "data"))
    cmd = dict(runtime)["CMD"].strip('[]"')
    node = subprocess.Popen([str(venv_run / "bin" / cmd)], env={**env, **envs},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = dict(runtime)["HEALTHCHECK"].split(" CMD ", 1)[1].replace("8765", str(port))
        health = health.replace("python ", f"{venv_run / 'bin' / 'python'} ", 1)
        deadline = time.time() + 30
        while True:
            rc = subprocess.run(health, shell=True, capture_output=True).returncode
            if rc == 0 or time.time() > deadline:
                break
            time.sleep(0.3)
        assert rc == 0
        node.terminate()
        assert node.wait(30) == 0
        rc = subprocess.run(health, shell=True, capture_output=True).returncode
        assert rc != 0  # the check fails once the node is gone
    finally:
        node.kill()
