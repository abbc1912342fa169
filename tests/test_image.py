"""The container image: the Dockerfile built and run for real, and the compose file.

The real build uses buildah (``buildah bud --isolation=chroot``), which needs no
daemon, and runs the image with ``buildah run``, whose container shares the host's
loopback.  Base images cannot be pulled here, so ``python:3.11-slim`` is a stand-in
made from Debian's packages (bookworm's Python is 3.11) and kept between runs in a
buildah store of its own under ``TIMEFAST_IMAGE_CACHE`` (default
``/var/cache/timefast-test``), labelled with a digest of what went into it; the test
makes it again when that digest changes.  Needs root, ``buildah`` and
``debootstrap`` (``.ci/run`` installs both); skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from websockets.sync.client import connect

from .helpers import BANNER, NodeProcess, NodeThread, new_wallet, result

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TIMEFAST_IMAGE_CACHE", "/var/cache/timefast-test"))
BASE = "docker.io/library/python:3.11-slim"
BASE_LABEL = "timefast.test.stand-in"
MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


# -- the Dockerfile and the compose file, read as text ---------------------------------

def _stages() -> list[dict[str, list[str]]]:
    """Each stage of the Dockerfile: instruction -> the arguments of each use."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[dict[str, list[str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            stages.append({})
        stages[-1].setdefault(word, []).append(rest)
    return stages


def test_compose_matches_the_image():
    """docker-compose.yml publishes the port the image listens on, keeps the data in
    a named volume on the image's data directory (so Docker fills it from the image,
    owner included), keeps the image's health check and restarts the node."""
    runtime = _stages()[-1]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(runtime["ENV"])))
    (volume_path,) = runtime["VOLUME"]
    (exposed,) = runtime["EXPOSE"]
    assert env["DATA_DIR"] == volume_path
    assert env["WS_ADDR"].rpartition(":")[2] == exposed

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    assert service["image"] == "time-masternode" and service["build"] == "."
    assert [p.rpartition(":")[2] for p in service["ports"]] == [exposed]
    service_env = dict(e.split("=", 1) for e in service.get("environment", []))
    ws_addr = service_env.get("WS_ADDR", env["WS_ADDR"])
    assert ws_addr.rpartition(":")[2] == exposed
    assert ws_addr.rpartition(":")[0] in ("0.0.0.0", "[::]", "")  # reachable from outside
    (mount,) = service["volumes"]
    source, target = mount.split(":")
    assert target == volume_path
    # A named volume, not a host directory: only a new named volume is filled from
    # the image, so only it comes owned by the node's user.
    assert source in compose["volumes"] and "/" not in source
    # No healthcheck here: the image's, which follows WS_ADDR, applies.
    assert "healthcheck" not in service
    assert "HEALTHCHECK" in runtime
    assert service["restart"] == "unless-stopped"


def _healthcheck(**env: Any) -> int:
    """deploy/healthcheck.py (the image's HEALTHCHECK) run with ``env``; its exit status."""
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
                          env={"PATH": os.environ["PATH"], **{k: str(v) for k, v in env.items()}},
                          capture_output=True).returncode


def test_healthcheck_follows_ws_addr_and_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=node.example"],
                   check=True, capture_output=True)
    plain = NodeThread(tmp_path / "plain").start()
    tls = NodeThread(tmp_path / "tls", TLS_CERT=cert, TLS_KEY=key).start()
    try:
        port = int(plain.ws_url.rpartition(":")[2])
        tls_port = int(tls.ws_url.rpartition(":")[2])
        # A wildcard WS_ADDR is probed on the loopback, on WS_ADDR's port.
        assert _healthcheck(WS_ADDR=f"0.0.0.0:{port}") == 0
        assert _healthcheck(WS_ADDR=f"127.0.0.1:{port}") == 0
        assert _healthcheck(WS_ADDR=f"0.0.0.0:{tls_port}") == 1
        # With TLS_CERT the node speaks https, under a name that is not the loopback's.
        assert _healthcheck(WS_ADDR=f"0.0.0.0:{tls_port}", TLS_CERT=cert, TLS_KEY=key) == 0
        assert _healthcheck(WS_ADDR=f"0.0.0.0:{port}", TLS_CERT=cert, TLS_KEY=key) == 1
    finally:
        plain.stop()
        tls.stop()
    assert _healthcheck(WS_ADDR=f"0.0.0.0:{port}") == 1


# -- buildah and the stand-in base image -----------------------------------------------

class Buildah:
    """``buildah`` on the test's own store, so nothing touches the host's images."""

    def __init__(self) -> None:
        if sys.platform != "linux" or os.geteuid() != 0:
            pytest.skip("building and running the image needs root (buildah --isolation="
                        "chroot, debootstrap)")
        for tool in ("buildah", "debootstrap"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed (.ci/run installs it with apt-get)")
        self.argv = ["buildah", "--root", str(CACHE / "storage"),
                     "--runroot", "/run/timefast-test"]
        CACHE.mkdir(parents=True, exist_ok=True)
        probe = subprocess.run([*self.argv, "info"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"buildah cannot run here: {probe.stderr.strip()[-500:]}")

    def __call__(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([*self.argv, *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            pytest.fail(f"buildah {' '.join(args)} failed ({done.returncode}):\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def image(self, name: str) -> dict[str, Any] | None:
        """The image's Docker-format record, or None if the store has no such image."""
        done = subprocess.run([*self.argv, "inspect", "--type", "image", name],
                              capture_output=True)
        return orjson.loads(done.stdout) if done.returncode == 0 else None

    def config(self, name: str) -> dict[str, Any]:
        """The image's Docker configuration (User, Cmd, Volumes, Healthcheck...)."""
        image = self.image(name)
        assert image is not None, name
        return dict(image["Docker"]["config"])


def _make_stand_in(b: Buildah, key: str) -> None:
    """``python:3.11-slim`` from Debian's packages: Python 3.11 with its headers and
    pip, ``python`` and ``pip`` on the PATH, pip allowed to install system-wide, and
    the host's CA bundle (package downloads may pass a proxy the host trusts)."""
    ctr = b("from", "scratch")
    try:
        root = Path(b("mount", ctr))
        packages = "python3,python3-dev,python3-pip,python3-venv,ca-certificates"
        done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}",
                               "bookworm", str(root), MIRROR],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}"
                        f"\n{done.stderr[-3000:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        if HOST_CA.is_file():
            shutil.copyfile(HOST_CA, root / "etc/ssl/certs/ca-certificates.crt")
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        (root / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
        b("umount", ctr)
        b("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "--env", "LANG=C.UTF-8", "--cmd", "python3", "--label", f"{BASE_LABEL}={key}", ctr)
        b("commit", "--format", "docker", ctr, BASE)
    finally:
        b("rm", ctr, check=False)


def _stand_in(b: Buildah) -> None:
    """Make the stand-in unless the store holds one made the same way from the same CA
    bundle (the key: a digest of ``_make_stand_in``'s code and of that bundle)."""
    digest = hashlib.sha256(inspect.getsource(_make_stand_in).encode())
    digest.update(MIRROR.encode())
    if HOST_CA.is_file():
        digest.update(HOST_CA.read_bytes())
    key = digest.hexdigest()[:16]
    have = b.image(BASE)
    if have is not None and (have["Docker"]["config"].get("Labels") or {}).get(
            BASE_LABEL) == key:
        return
    if have is not None:
        b("rmi", "--force", BASE)
    _make_stand_in(b, key)


@contextlib.contextmanager
def _store(b: Buildah) -> Iterator[None]:
    """The store to this run alone (runs share the stand-in's name), cleared of what
    a killed run left there: every container and every image but the stand-in."""
    with open(CACHE / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        b("rm", "--all")
        for image in orjson.loads(b("images", "--json") or "[]"):
            if BASE not in (image.get("names") or []):
                b("rmi", "--force", image["id"])
        yield


# -- running the image -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _leaf_descendant(pid: int) -> int:
    """The one process under ``pid`` with no children: the container's command."""
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            parents[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    while True:
        children = [c for c, parent in parents.items() if parent == pid]
        if not children:
            return pid
        (pid,) = children


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
    assert uid is not None
    return int(uid.group(1))


def _fill_like_docker(b: Buildah, image: str, path: str, volume: Path) -> None:
    """Make ``volume`` what Docker makes of a new named volume mounted on ``path``: a
    copy of the image's directory there (its owner, mode and contents), or an empty
    root-owned 0755 directory where the image has none."""
    volume.mkdir()
    os.chmod(volume, 0o755)
    ctr = b("from", image)
    try:
        point = Path(b("mount", ctr)) / path.lstrip("/")
        if point.is_dir():
            subprocess.run(["cp", "-a", f"{point}/.", str(volume)], check=True)
            st = point.stat()
            os.chown(volume, st.st_uid, st.st_gid)
            os.chmod(volume, st.st_mode & 0o7777)
    finally:
        b("rm", ctr, check=False)


class Run:
    """One ``docker run`` of the image: a container from it, the node on ``volume``."""

    def __init__(self, b: Buildah, image: str, volume: Path, env: dict[str, str]) -> None:
        self.b = b
        self.config = b.config(image)
        self.ctr = b("from", "--name", f"timefast-test-{uuid.uuid4().hex[:12]}", image)
        b("config", *[a for k, v in env.items() for a in ("--env", f"{k}={v}")], self.ctr)
        (path,) = self.config["Volumes"]
        self.node = NodeProcess(volume, argv=[
            *b.argv, "run", "--isolation=chroot", "-v", f"{volume}:{path}", self.ctr, "--",
            *self.config["Cmd"]])
        self.pid = 0

    def start(self) -> Run:
        self.node.start(timeout=120)
        assert self.node.proc is not None
        self.pid = _leaf_descendant(self.node.proc.pid)
        return self

    def healthcheck(self) -> int:
        """The image's HEALTHCHECK, run in the container as Docker runs it."""
        kind, *cmd = self.config["Healthcheck"]["Test"]
        argv = cmd if kind == "CMD" else ["/bin/sh", "-c", *cmd]
        return subprocess.run([*self.b.argv, "run", "--isolation=chroot", self.ctr, "--",
                               *argv], capture_output=True).returncode

    def stop(self) -> int:
        """``docker stop``: SIGTERM to the container's command; its exit status."""
        os.kill(self.pid, signal.SIGTERM)
        assert self.node.proc is not None
        return self.node.proc.wait(60)

    def remove(self) -> None:
        if self.node.proc is not None and self.node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.node.kill()
        self.b("rm", self.ctr, check=False)


def _banner(run: Run) -> str:
    return next(line for line in run.node.log if BANNER.search(line))


def _recv_until(ws: Any, type_: str) -> list[dict[str, Any]]:
    got = []
    for _ in range(50):
        got.append(orjson.loads(ws.recv(timeout=30)))
        if got[-1]["type"] == type_:
            return got
    raise AssertionError(f"no {type_} in {got}")


@pytest.mark.timeout(1800)
def test_image_runs_the_node_on_a_new_volume_and_keeps_its_data(tmp_path, capsys):
    b = Buildah()
    tag = f"localhost/time-masternode-test:{uuid.uuid4().hex[:12]}"
    runs: list[Run] = []
    with _store(b):
        _stand_in(b)
        try:
            started = time.monotonic()
            b("bud", "--isolation=chroot", "--format", "docker", "-t", tag, str(ROOT))
            built_in = time.monotonic() - started
            size = orjson.loads(b("images", "--json", tag))[0]["size"]
            base = orjson.loads(b("images", "--json", BASE))[0]["size"]
            with capsys.disabled():
                print(f"\nimage {tag}: {size} (on the stand-in {BASE}: {base}),"
                      f" built in {built_in:.0f} s")
            config = b.config(tag)
            (path,) = config["Volumes"]
            volume = tmp_path / "volume"
            _fill_like_docker(b, tag, path, volume)
            probe = b("from", tag)
            try:
                root = Path(b("mount", probe))
                users = {f[0]: int(f[2]) for f in (line.split(":") for line in
                         (root / "etc/passwd").read_text().splitlines())}
                # The compiler stays in the build stage.
                assert not (root / "usr/bin/g++").exists()
            finally:
                b("rm", probe, check=False)
            node_uid = users[config["User"]]
            assert node_uid != 0

            port = _free_port()
            env = {"WS_ADDR": f"127.0.0.1:{port}", "RPC_ADDR": "127.0.0.1:0"}
            runs.append(first := Run(b, tag, volume, env))
            first.start()
            assert _uid_of(first.pid) == node_uid
            assert (volume / "masternode.key").stat().st_uid == node_uid
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
                assert orjson.loads(r.read())["status"] == "ok"
            assert first.healthcheck() == 0

            _, address = new_wallet()
            with connect(f"ws://127.0.0.1:{port}") as ws:
                ws.send(orjson.dumps({"type": "Subscribe",
                                      "data": {"addresses": [address]}}).decode())
                assert orjson.loads(ws.recv(timeout=30))["type"] == "Subscribed"
                txid = result(first.node.rpc_url, "faucet", address, 1000)
                got = _recv_until(ws, "TransactionFinalized")
                assert got[-1]["data"]["txid"] == txid
                assert {"txid": txid, "vout": 0} in [
                    m["data"]["outpoint"] for m in got if m["type"] == "UtxoStateChange"
                    and m["data"]["state"] == "Unspent"]
                result(first.node.rpc_url, "generate", 1)
                got = _recv_until(ws, "NewBlock")
                assert got[-1]["data"]["height"] == 1
                assert ["TransactionConfirmed", txid] in [
                    [m["type"], m["data"].get("txid")] for m in got]
            banner = _banner(first)

            assert first.stop() == 0
            assert "stopped" in "".join(first.node.log)
            assert first.healthcheck() != 0

            # `docker run` again on the same volume: same key, same chain, same coins.
            runs.append(second := Run(b, tag, volume, env))
            second.start()
            again = _banner(second)
            key = re.compile(r"masternode (\w+)")
            assert key.findall(again) == key.findall(banner)
            assert "height 1," in again
            assert result(second.node.rpc_url, "gettransaction", txid)["block_height"] == 1
            with connect(f"ws://127.0.0.1:{port}") as ws:
                ws.send(orjson.dumps({"type": "Subscribe",
                                      "data": {"addresses": [address]}}).decode())
                sub = orjson.loads(ws.recv(timeout=30))
                assert sub["data"]["snapshot"][address]["balance"] == 1000
            assert second.stop() == 0
        finally:
            for run in runs:
                run.remove()
            b("rmi", "--force", tag, check=False)
