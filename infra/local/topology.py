"""The production topology in miniature: every service of a deployment, as separate processes on loopback.

    unshare -n -- bash -c 'ip link set lo up && exec python infra/local/topology.py --workdir DIR --report R.json'

Run inside a private network namespace of its own (root; ``make drills`` does it through tests/test_topology.py): a
multi-node Ray cluster listens on every interface (``../shared/STACK.md``), and in the namespace every interface is
loopback. What it starts, as a cluster has it:

- SeaweedFS (S3: manifest, images, outputs, Parquet rows), an MLflow server, a Prefect server;
- a Ray head with **no GPU** (its dashboard serves the job API), and, a little later, two Ray worker nodes that each
  declare one GPU (``ray start --num-gpus 1``; no CUDA here, so the model runs on CPU while Ray schedules by GPU);
- a Prefect **process work-pool worker**.

Then, as an operator would: deploy from ``infra/prefect/prefect.yaml`` (``tight-pipeline deploy``, site values from
TP_* variables), trigger the nightly localization through the Prefect API, start the GPU nodes while the run waits
for actors, kill one GPU node mid-run (and start a replacement, as KubeRay would), trigger the deployment a second
time during the run, and submit the same job as a Ray Job (``ray job submit -- tight-pipeline run ...``, what a
KubeRay RayJob does). It writes what it saw to ``--report`` (JSON) and stops everything it started, by PID. The
assertions are in tests/test_topology.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra.local import services  # noqa: E402
from infra.local.services import HOST, SeaweedS3, free_port, stop_pids, wait_http  # noqa: E402

POOL = "drill-pool"
N_ITEMS = 8
IMAGES = ["good.png", "cmyk.jpg", "gray.png", "palette.png", "rgba.png", "good.jpg"]


def log(message: str) -> None:
    print(f"[topology {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Topology:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        # Ray's socket paths must stay under 108 bytes: a short folder of its own, not one inside the workdir.
        self.ray_dir = Path(tempfile.mkdtemp(prefix="tptopo", dir="/tmp"))
        self.report: dict = {"events": []}
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "PREFECT_", "MLFLOW_", "AWS_", "TP_"))}
        self.env.update({
            "TIGHT_PIPELINE_HOME": str(self.dir / "home"), "PREFECT_HOME": str(self.dir / "prefect"),
            "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
            # Multi-node on one machine needs this (STACK.md); the namespace keeps every listener private.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_TMPDIR": str(self.ray_dir),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        })

    def event(self, what: str, **fields) -> None:
        self.report["events"].append({"t": time.time(), "what": what, **fields})
        log(what + (f" {fields}" if fields else ""))

    def spawn(self, name: str, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        out = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    # -- services -------------------------------------------------------------------------------------------
    def start_services(self) -> None:
        os.environ.update(self.env)
        self.s3 = SeaweedS3(self.dir / "seaweedfs").start()
        self.env.update(self.s3.env())
        self.event("s3 up", endpoint=self.s3.endpoint)
        prefect_port, mlflow_port = free_port(), free_port()
        self.spawn("prefect-server", [services._bin("prefect"), "server", "start", "--host", HOST, "--port",
                                      str(prefect_port)], {"PREFECT_UI_API_URL": f"http://{HOST}:{prefect_port}/api"})
        self.spawn("mlflow-server", [services._bin("mlflow"), "server", "--host", HOST, "--port", str(mlflow_port),
                                     "--workers", "1", "--backend-store-uri", f"sqlite:///{self.dir / 'mlflow.db'}",
                                     "--default-artifact-root", (self.dir / "mlartifacts").as_uri()],
                   {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.env["PREFECT_API_URL"] = f"http://{HOST}:{prefect_port}/api"
        self.env["MLFLOW_TRACKING_URI"] = f"http://{HOST}:{mlflow_port}"
        os.environ.update(self.env)  # this process's Prefect client (imported later) talks to this server
        wait_http(f"http://{HOST}:{prefect_port}/api/health", timeout=180)
        wait_http(f"http://{HOST}:{mlflow_port}/health", timeout=180)
        self.event("prefect and mlflow up", prefect=self.env["PREFECT_API_URL"], mlflow=self.env["MLFLOW_TRACKING_URI"])

    def start_head(self) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        subprocess.run([services._bin("ray"), "start", "--head", f"--port={self.gcs_port}", f"--node-ip-address={HOST}",
                        "--num-cpus=1", "--num-gpus=0", "--include-dashboard=true", f"--dashboard-host={HOST}",
                        f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.ray_dir}",
                        "--disable-usage-stats"],
                       env={**self.env, "TP_DRILL_NODE": "head"}, check=True, capture_output=True, text=True,
                       timeout=180)
        self.ray_address = f"{HOST}:{self.gcs_port}"
        if (Path.home() / ".ray" / "auth_token").exists():
            # Ray 2.60 clusters require a token by default: drivers, `ray job submit` and the state API send it.
            self.env["RAY_AUTH_MODE"] = "token"
        wait_http(f"http://{HOST}:{self.dashboard_port}/api/version", timeout=120, ok=(200, 401))
        self.event("ray head up (no GPU)", address=self.ray_address, dashboard=self.dashboard_port)

    def start_gpu_node(self, name: str) -> None:
        subprocess.run([services._bin("ray"), "start", f"--address={self.ray_address}", f"--node-ip-address={HOST}",
                        "--num-cpus=1", "--num-gpus=1", f"--temp-dir={self.ray_dir}", "--disable-usage-stats"],
                       env={**self.env, "TP_DRILL_NODE": name}, check=True, capture_output=True, text=True,
                       timeout=180)
        self.event("gpu node up", node=name)

    def node_pids(self, name: str) -> list[int]:
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "environ"]):
            try:
                if (proc.info.get("environ") or {}).get("TP_DRILL_NODE") == name and proc.pid != os.getpid():
                    found.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def nodes(self) -> list[dict]:
        """Ray's view of the nodes (id, state, GPUs), from the state API of the head's dashboard."""
        from ray.util.state import list_nodes

        return [{"node_id": n.node_id, "state": n.state, "gpus": (n.resources_total or {}).get("GPU", 0),
                 "is_head": n.is_head_node}
                for n in list_nodes(address=f"http://{HOST}:{self.dashboard_port}", limit=100, raise_on_missing_output=False)]

    # -- the scenario -----------------------------------------------------------------------------------------
    def write_inputs(self) -> None:
        from tests.corpus import image_files
        from tight_pipeline.testing.tiny_models import make_tiny_model

        self.model = str(make_tiny_model(self.dir / "models" / "tiny-sdxl"))
        fs = self.s3.filesystem()
        fs.mkdir("drill")
        for name in IMAGES:
            fs.pipe(f"drill/in/img/{name}", image_files()[name])
        rows = [{"item_id": f"p-{i}", "image_uri": f"img/{IMAGES[i % len(IMAGES)]}", "source_prompt": "a product photo",
                 "locales": {"de-DE": "ein Produktfoto", "fr-FR": "une photo de produit"}} for i in range(N_ITEMS)]
        fs.pipe("drill/in/manifest.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n").encode())
        self.report["items"] = N_ITEMS

    def deploy(self) -> None:
        self.site = {"TP_CODE_DIR": str(ROOT), "TP_WORK_POOL": POOL, "TP_RAY_ADDRESS": self.ray_address,
                     "TP_MLFLOW_TRACKING_URI": self.env["MLFLOW_TRACKING_URI"], "TP_MODEL": self.model,
                     "TP_ACTORS": "2", "TP_MIN_ACTORS": "2", "TP_GPUS_PER_ACTOR": "1", "TP_BATCH_SIZE": "1",
                     "TP_FLOW_TIMEOUT_S": "1200", "TP_CATALOG_MANIFEST": "s3://drill/in/manifest.jsonl",
                     "TP_CATALOG_OUTPUT": "s3://drill/out"}
        proc = subprocess.run([services._bin("tight-pipeline"), "deploy"], env={**self.env, **self.site},
                              capture_output=True, text=True, timeout=300, cwd=self.dir)
        self.report["deploy"] = {"rc": proc.returncode, "out": proc.stdout[-2000:], "err": proc.stderr[-2000:]}
        if proc.returncode:
            raise RuntimeError(f"deploy failed: {proc.stderr[-2000:]}")
        self.event("deployed from infra/prefect/prefect.yaml")
        # The worker: its own environment has the S3 credentials (a pod secret) but no RAY_ADDRESS or MLflow URI:
        # those come from the deployment's job variables.
        self.worker = self.spawn("prefect-worker", [services._bin("prefect"), "worker", "start", "--pool", POOL,
                                                    "--type", "process"])
        self.event("process worker started", pid=self.worker.pid)

    def flow_run(self, flow_run_id) -> dict:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(flow_run_id)
        return {"id": str(fr.id), "state": fr.state.type.value if fr.state else None,
                "state_name": fr.state.name if fr.state else None, "work_pool": fr.work_pool_name,
                "infrastructure_pid": fr.infrastructure_pid,
                "start": fr.start_time.timestamp() if fr.start_time else None,
                "end": fr.end_time.timestamp() if fr.end_time else None}

    def wait_state(self, flow_run_id, states: set[str], timeout: float) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.flow_run(flow_run_id)
            if info["state"] in states:
                return info
            time.sleep(1)
        raise TimeoutError(f"flow run {flow_run_id} not in {states} after {timeout:.0f} s: {self.flow_run(flow_run_id)}")

    def pngs(self) -> int:
        return len(self.s3.filesystem().glob("drill/out/*/*/reconstruction.png"))

    def run_scenario(self) -> None:
        from prefect.deployments import run_deployment

        os.environ.update(self.env)
        first = run_deployment("catalog-localization/nightly-localization", timeout=0)
        self.report["first_run"] = str(first.id)
        self.event("nightly localization triggered through the Prefect API", flow_run=str(first.id))
        self.wait_state(first.id, {"RUNNING"}, timeout=300)
        self.event("first run RUNNING on the worker; no GPU node yet")
        time.sleep(20)  # the run plans, then waits for actors that need a GPU
        self.report["pngs_before_gpus"] = self.pngs()
        self.start_gpu_node("gpu-1")
        self.start_gpu_node("gpu-2")
        self.report["nodes_at_start"] = self.nodes()
        deadline = time.time() + 600
        while self.pngs() < 1 and time.time() < deadline:
            time.sleep(0.5)
        self.event("first item written", pngs=self.pngs())
        second = run_deployment("catalog-localization/nightly-localization", timeout=0)
        self.report["second_run"] = str(second.id)
        self.report["first_state_at_second_trigger"] = self.flow_run(first.id)["state"]
        self.event("second trigger while the first runs", flow_run=str(second.id))
        killed = self.node_pids("gpu-2")
        self.report["pngs_at_kill"] = self.pngs()
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.event("gpu-2 killed (SIGKILL to its raylet and workers)", pids=len(killed))
        time.sleep(5)
        self.start_gpu_node("gpu-3")  # what KubeRay does when a pod is lost
        one = self.wait_state(first.id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=900)
        self.report["first"] = one
        self.event("first run ended", state=one["state_name"])
        two = self.wait_state(second.id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=600)
        self.report["second"] = two
        self.event("second run ended", state=two["state_name"])
        self.report["nodes_at_end"] = self.nodes()
        self.collect_rows("s3://drill/out", "rows")

    def submit_ray_job(self) -> None:
        runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": self.env["MLFLOW_TRACKING_URI"],
                                    "PREFECT_API_URL": self.env["PREFECT_API_URL"]}}
        args = [services._bin("ray"), "job", "submit", f"--address=http://{HOST}:{self.dashboard_port}",
                "--runtime-env-json", json.dumps(runtime_env), "--",
                "tight-pipeline", "run", "--manifest", "s3://drill/in/manifest.jsonl", "--output", "s3://drill/jobout",
                "--preset", "draft", "--model", self.model, "--actors", "2", "--gpus-per-actor", "1",
                "--batch-size", "1"]
        t0 = time.time()
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=900)
        self.report["ray_job"] = {"rc": proc.returncode, "wall_s": time.time() - t0, "out": proc.stdout[-4000:],
                                  "err": proc.stderr[-2000:]}
        self.event("ray job submitted and ended", rc=proc.returncode)
        self.collect_rows("s3://drill/jobout", "job_rows")

    def collect_rows(self, output: str, key: str) -> None:
        from tight_pipeline.data import scores

        os.environ.update(self.env)
        every = scores.read(output).to_pandas()  # every version of every row, not only the latest
        self.report[key] = every[["run_id", "item_id", "edit_id", "preset_hash", "status", "error", "worker",
                                  "node_id", "gpu_ids", "finished_at"]].to_dict("records")

    def check_mlflow(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.env["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        self.report["mlflow_runs"] = [{"name": r.info.run_name, "status": r.info.status,
                                       "prefect_flow_run_id": r.data.tags.get("prefect_flow_run_id")} for r in runs]

    def stop(self) -> None:
        pids = []
        for name in ("head", "gpu-1", "gpu-2", "gpu-3"):
            pids += self.node_pids(name)
        for proc in self.procs:
            try:
                pids.append(proc.pid)
                for child in __import__("psutil").Process(proc.pid).children(recursive=True):
                    pids.append(child.pid)
            except Exception:  # noqa: BLE001 - already gone
                pass
        stop_pids(sorted(set(pids)), grace=5)
        if getattr(self, "s3", None) is not None:
            self.s3.stop()
        import shutil

        shutil.rmtree(self.ray_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    topo = Topology(args.workdir)
    t0 = time.time()
    try:
        topo.start_services()
        topo.start_head()
        topo.write_inputs()
        topo.deploy()
        topo.run_scenario()
        topo.submit_ray_job()
        topo.check_mlflow()
        topo.report["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - written to the report, which the test reads
        topo.report["ok"] = False
        topo.report["error"] = "".join(traceback.format_exception(exc))[-6000:]
        if isinstance(exc, subprocess.CalledProcessError):
            topo.report["error"] += f"\n{exc.stderr[-3000:] if exc.stderr else ''}"
        log(topo.report["error"])
    finally:
        topo.report["wall_s"] = time.time() - t0
        try:
            topo.stop()
        finally:
            args.report.write_text(json.dumps(topo.report, indent=1, default=str))
    return 0 if topo.report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
