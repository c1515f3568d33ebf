"""The production topology on hosts that are hosts: each role on a private host of its own, on one machine.

    unshare -n -- bash -c 'ip link set lo up && exec python infra/local/topology.py --workdir DIR --report R.json'

Root, from a network namespace of its own (``make drills`` does it through tests/test_topology.py): this process is
the operator's laptop, joined to a private bridge; every role runs on its own host (infra/local/netns.py: a network
namespace with its own address on that bridge, no route elsewhere, its own temp folder and host name), so nothing
meets through a shared loopback or a shared socket file:

    prefect   the Prefect server              s3       SeaweedFS (manifest, images, outputs, Parquet rows)
    worker    a Prefect process worker: the flow runs run here, and it is NOT a Ray node
    head      the Ray head, no GPU, token auth on; its job API runs every flow's work as a Ray Job
    gpu-1/2/3 Ray nodes that each declare one GPU (no CUDA here: the model runs on CPU while Ray schedules by GPU)
    mlflow    the MLflow server (artifacts to S3, uploaded by the flow run with boto3)

As an operator would: deploy from ``infra/prefect/prefect.yaml`` (``tight-pipeline deploy``, RAY_ADDRESS the head's job
API), trigger the nightly localization through the Prefect API, start the GPU nodes while it waits for actors, kill
one mid-run (a replacement joins, as KubeRay would), trigger it again during the run; show that a driver joining by
the GCS address from the worker host is refused in one line, and that the job API refuses a submission without the
token; cancel a flow run and see its Ray job stopped; start two ``run``s for one output from two hosts (the worker's
and the operator's) within 100 ms and see exactly one work. It writes what it saw to ``--report`` (JSON) and stops everything it started, by PID, and
deletes the namespaces. The assertions are in tests/test_topology.py.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra.local import services  # noqa: E402
from infra.local.netns import HOST_TMP, Host, PrivateHosts, kill_namespace  # noqa: E402
from infra.local.services import SeaweedS3, stop_pids, wait_http  # noqa: E402

POOL = "drill-pool"
N_ITEMS = 8
IMAGES = ["good.png", "cmyk.jpg", "gray.png", "palette.png", "rgba.png", "good.jpg"]
GCS, DASHBOARD, PREFECT, MLFLOW = 6379, 8265, 4200, 5000
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


LOG: Path | None = None


def log(message: str) -> None:
    line = f"[topology {time.strftime('%H:%M:%S')}] {message}"
    if LOG is not None:
        with open(LOG, "a") as f:
            f.write(line + "\n")
    try:
        print(line, flush=True)
    except OSError:  # the caller is gone (stdout closed): the file has it, and cleanup must still run
        pass


class Topology:
    def __init__(self, workdir: Path, hosts: PrivateHosts):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hosts = hosts
        self.procs: list[subprocess.Popen] = []
        self.report: dict = {"events": []}
        self.token = secrets.token_hex(32)
        self.base = {k: v for k, v in os.environ.items()
                     if not k.startswith(("RAY_", "PREFECT_", "MLFLOW_", "AWS_", "TP_", "TMPDIR"))}
        self.base.update({
            "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
        })
        self.s3_env: dict[str, str] = {}

    def event(self, what: str, **fields) -> None:
        self.report["events"].append({"t": time.time(), "what": what, **fields})
        log(what + (f" {fields}" if fields else ""))

    def host_env(self, host: Host, extra: dict | None = None) -> dict:
        """What a process on ``host`` sees: its own home and temp folder, the S3 secret (as every pod has it)."""
        home = self.dir / "hosts" / host.name
        home.mkdir(parents=True, exist_ok=True)
        return {**self.base, "HOME": str(home), "TMPDIR": HOST_TMP, "RAY_TMPDIR": HOST_TMP,
                "TIGHT_PIPELINE_HOME": str(home / "tight-pipeline"), "PREFECT_HOME": str(home / "prefect"),
                "TP_DRILL_HOST": host.name, **self.s3_env, **(extra or {})}

    def ray_env(self, host: Host) -> dict:
        """A Ray node's: token auth on (the Secret KubeRay hands every Ray container), multi-node on one machine."""
        return self.host_env(host, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "TP_DRILL_NODE": host.name})

    def spawn(self, host: Host, name: str, args: list[str], env: dict) -> subprocess.Popen:
        out = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(host.argv(args), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def on(self, host: Host, args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(host.argv(args), env=env, capture_output=True, text=True, timeout=timeout)

    # -- hosts and services ---------------------------------------------------------------------------------------
    def start_hosts(self) -> None:
        for name in ("prefect", "s3", "mlflow", "worker", "head", "gpu-1", "gpu-2", "gpu-3"):
            self.hosts.add(name)
        self.h = self.hosts.hosts
        self.operator_ip = self.hosts.join()
        self.report["hosts"] = {name: h.ip for name, h in self.h.items()} | {"operator": self.operator_ip}
        self.event("hosts up", **self.report["hosts"])

    def start_services(self) -> None:
        s3h, ph, mh = self.h["s3"], self.h["prefect"], self.h["mlflow"]
        self.s3 = SeaweedS3(self.dir / "seaweedfs", host=s3h.ip, launcher=tuple(s3h.argv([])))
        prefect_api = f"http://{ph.ip}:{PREFECT}/api"
        self.spawn(ph, "prefect-server", [services._bin("prefect"), "server", "start", "--host", ph.ip, "--port",
                                          str(PREFECT)], self.host_env(ph, {"PREFECT_UI_API_URL": prefect_api}))
        self.s3.start()
        self.s3_env = self.s3.env()
        self.s3.filesystem().mkdir("drill")
        self.event("s3 up", endpoint=self.s3.endpoint)
        # Artifacts go to S3 straight from the client (boto3), as a tracking server without an artifact proxy has it.
        self.spawn(mh, "mlflow-server", [services._bin("mlflow"), "server", "--host", mh.ip, "--port", str(MLFLOW),
                                         "--workers", "1", "--backend-store-uri",
                                         f"sqlite:///{self.dir / 'mlflow.db'}", "--default-artifact-root",
                                         "s3://drill/mlartifacts", "--no-serve-artifacts"],
                   self.host_env(mh, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))
        self.prefect_api, self.mlflow_uri = prefect_api, f"http://{mh.ip}:{MLFLOW}"
        # The operator's own clients (Prefect, MLflow, Ray's job and state APIs, S3), with the operator's token.
        os.environ.update({"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_uri, **self.s3_env,
                           "PREFECT_HOME": str(self.dir / "operator-prefect"), "RAY_AUTH_MODE": "token",
                           "RAY_AUTH_TOKEN": self.token})
        wait_http(f"{prefect_api}/health", timeout=240)
        wait_http(f"{self.mlflow_uri}/health", timeout=240)
        self.event("prefect and mlflow up", prefect=prefect_api, mlflow=self.mlflow_uri)

    def start_head(self) -> None:
        head = self.h["head"]
        proc = self.on(head, [services._bin("ray"), "start", "--head", f"--port={GCS}", f"--node-ip-address={head.ip}",
                              "--num-cpus=1", "--num-gpus=0", "--include-dashboard=true", f"--dashboard-host={head.ip}",
                              f"--dashboard-port={DASHBOARD}", f"--temp-dir={HOST_TMP}/ray", "--disable-usage-stats"],
                       self.ray_env(head), timeout=240)
        if proc.returncode:
            raise RuntimeError(f"ray head did not start: {proc.stderr[-2000:]}")
        self.gcs, self.job_api = f"{head.ip}:{GCS}", f"http://{head.ip}:{DASHBOARD}"
        wait_http(f"{self.job_api}/api/version", timeout=120, ok=(200, 401))
        self.event("ray head up (no GPU, token auth)", gcs=self.gcs, job_api=self.job_api)

    def start_gpu_node(self, name: str) -> None:
        host = self.h[name]
        proc = self.on(host, [services._bin("ray"), "start", f"--address={self.gcs}", f"--node-ip-address={host.ip}",
                              "--num-cpus=1", "--num-gpus=1", f"--temp-dir={HOST_TMP}/ray", "--disable-usage-stats"],
                       self.ray_env(host), timeout=240)
        if proc.returncode:
            raise RuntimeError(f"ray node {name} did not start: {proc.stderr[-2000:]}")
        self.event("gpu node up", node=name, ip=host.ip)

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
        """Ray's view of the nodes (id, address, state, GPUs), from the head's state API, with the token."""
        from ray.util.state import list_nodes

        return [{"node_id": n.node_id, "ip": n.node_ip, "state": n.state, "gpus": (n.resources_total or {}).get("GPU", 0),
                 "is_head": n.is_head_node}
                for n in list_nodes(address=self.job_api, limit=100, raise_on_missing_output=False)]

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.job_api)

    # -- the scenario ---------------------------------------------------------------------------------------------
    def write_inputs(self) -> None:
        from tests.corpus import image_files
        from tight_pipeline.testing.tiny_models import make_tiny_model

        self.model = str(make_tiny_model(self.dir / "models" / "tiny-sdxl"))  # the shared weights volume
        fs = self.s3.filesystem()
        for name in IMAGES:
            fs.pipe(f"drill/in/img/{name}", image_files()[name])
        rows = [{"item_id": f"p-{i}", "image_uri": f"img/{IMAGES[i % len(IMAGES)]}", "source_prompt": "a product photo",
                 "locales": {"de-DE": "ein Produktfoto", "fr-FR": "une photo de produit"}} for i in range(N_ITEMS)]
        fs.pipe("drill/in/manifest.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n").encode())
        fs.pipe("drill/in/small.jsonl", ("\n".join(json.dumps(r) for r in rows[:3]) + "\n").encode())
        self.report["items"] = N_ITEMS

    def deploy(self) -> None:
        self.site = {"TP_CODE_DIR": str(ROOT), "TP_WORK_POOL": POOL, "TP_RAY_ADDRESS": self.job_api,
                     "TP_MLFLOW_TRACKING_URI": self.mlflow_uri, "TP_MODEL": self.model,
                     "TP_ACTORS": "2", "TP_MIN_ACTORS": "2", "TP_GPUS_PER_ACTOR": "1", "TP_BATCH_SIZE": "1",
                     "TP_FLOW_TIMEOUT_S": "1200", "TP_CATALOG_MANIFEST": "s3://drill/in/manifest.jsonl",
                     "TP_CATALOG_OUTPUT": "s3://drill/out"}
        proc = subprocess.run([services._bin("tight-pipeline"), "deploy"], env={**os.environ, **self.site},
                              capture_output=True, text=True, timeout=300, cwd=self.dir)
        self.report["deploy"] = {"rc": proc.returncode, "out": proc.stdout[-2000:], "err": proc.stderr[-2000:]}
        if proc.returncode:
            raise RuntimeError(f"deploy failed: {proc.stderr[-2000:]}")
        self.event("deployed from infra/prefect/prefect.yaml", ray_address=self.job_api)
        # The worker's own environment: the Prefect server, the S3 secret and the Ray token (its pod's Secrets); no
        # RAY_ADDRESS or MLflow URI: those come from the deployment's job variables.
        worker = self.h["worker"]
        self.worker = self.spawn(worker, "prefect-worker",
                                 [services._bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                                 self.host_env(worker, {"PREFECT_API_URL": self.prefect_api,
                                                        "RAY_AUTH_TOKEN": self.token}))
        self.event("process worker started on its own host", pid=self.worker.pid)

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

    def pngs(self, output: str = "drill/out") -> int:
        return len(self.s3.filesystem().glob(f"{output}/*/*/reconstruction.png"))

    def ray_job_of(self, flow_run_id: str) -> dict | None:
        for job in self.jobs().list_jobs():
            if (job.metadata or {}).get("prefect_flow_run_id") == flow_run_id:
                return {"submission_id": job.submission_id, "status": job.status.value, "start": job.start_time,
                        "end": job.end_time, "entrypoint": job.entrypoint, "runtime_env": job.runtime_env}
        return None

    def check_refusals(self) -> None:
        """What cannot work is refused, in one line, before any work: a driver by the GCS address on a host with no
        raylet (the worker's), and a submission without the token."""
        worker = self.h["worker"]
        env = self.host_env(worker, {"RAY_ADDRESS": self.gcs, "RAY_AUTH_TOKEN": self.token})
        t0 = time.time()
        proc = self.on(worker, [services._bin("tight-pipeline"), "run", "--manifest", "s3://drill/in/small.jsonl",
                                "--output", "s3://drill/gcs", "--model", self.model], env, timeout=180)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        self.report["gcs_driver"] = {"rc": proc.returncode, "wall_s": time.time() - t0, "errors": errors,
                                     "aborted": "Failed to connect to socket" in proc.stderr + proc.stdout,
                                     "tail": proc.stderr[-1500:]}
        self.event("GCS-address driver on the worker host refused", rc=proc.returncode, errors=errors)
        # What that driver did before the check: ray.init by the GCS address aborts the interpreter (a fatal check).
        t0 = time.time()
        raw = self.on(worker, [sys.executable, "-c", f"import ray; ray.init(address='{self.gcs}'); print('joined')"],
                      {**env, "RAY_AUTH_MODE": "token"}, timeout=120)
        self.report["raw_gcs_driver"] = {"rc": raw.returncode, "wall_s": time.time() - t0,
                                         "aborted": "Failed to connect to socket" in raw.stderr + raw.stdout,
                                         "joined": "joined" in raw.stdout,
                                         "fatal": [x[:300] for x in raw.stderr.splitlines() if " C " in x[:40]][:3]}
        self.event("plain ray.init by the GCS address on the worker host", rc=raw.returncode,
                   aborted=self.report["raw_gcs_driver"]["aborted"])
        # The job API without the token: the raw HTTP answer, and what `run` says.
        try:
            urllib.request.urlopen(f"{self.job_api}/api/jobs/", timeout=10)
            code = 200
        except urllib.error.HTTPError as exc:
            code = exc.code
        env = {k: v for k, v in self.host_env(worker, {"RAY_ADDRESS": self.job_api}).items()
               if not k.startswith("RAY_AUTH")}
        proc = self.on(worker, [services._bin("tight-pipeline"), "run", "--manifest", "s3://drill/in/small.jsonl",
                                "--output", "s3://drill/notoken", "--model", self.model], env, timeout=180)
        self.report["tokenless"] = {"http": code, "rc": proc.returncode,
                                    "errors": [x for x in proc.stderr.splitlines() if x.startswith("error:")]}
        self.event("tokenless submission refused", http=code, rc=proc.returncode)

    def run_scenario(self) -> None:
        from prefect.deployments import run_deployment

        first = run_deployment("catalog-localization/nightly-localization", timeout=0)
        self.report["first_run"] = str(first.id)
        self.event("nightly localization triggered through the Prefect API", flow_run=str(first.id))
        self.wait_state(first.id, {"RUNNING"}, timeout=300)
        self.event("first run RUNNING on the worker host; no GPU node yet")
        self.check_refusals()  # meanwhile the run plans on the head, then waits for actors that need a GPU
        self.report["pngs_before_gpus"] = self.pngs()
        self.report["first_ray_job_before_gpus"] = self.ray_job_of(str(first.id))
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
        one = self.wait_state(first.id, FINAL, timeout=900)
        self.report["first"] = one
        self.report["first_ray_job"] = self.ray_job_of(str(first.id))
        self.event("first run ended", state=one["state_name"])
        two = self.wait_state(second.id, FINAL, timeout=600)
        self.report["second"] = two
        self.event("second run ended", state=two["state_name"])
        self.report["nodes_at_end"] = self.nodes()
        self.collect_rows("s3://drill/out", "rows")

    def cancel_a_flow_run(self) -> None:
        """A flow run cancelled in Prefect stops its Ray job (the worker stops the flow-run process; the submitter
        stops the job on its way out)."""
        from prefect import get_client
        from prefect.deployments import run_deployment
        from prefect.states import Cancelling

        run = run_deployment("catalog-localization/nightly-localization", timeout=0,
                             parameters={"output": "s3://drill/cancelled"})
        flow_run_id = str(run.id)
        self.report["cancel_run"] = flow_run_id
        deadline, job = time.time() + 300, None
        while time.time() < deadline:
            job = self.ray_job_of(flow_run_id)
            if job and job["status"] == "RUNNING" and self.pngs("drill/cancelled") >= 1:
                break
            time.sleep(1)
        self.report["cancel_job_before"] = job
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
        t_cancel = time.time()
        self.event("flow run cancelled through the Prefect API", flow_run=flow_run_id, ray_job=job and job["submission_id"])
        self.report["cancelled"] = self.wait_state(run.id, {"CANCELLED", "FAILED", "CRASHED", "COMPLETED"}, timeout=180)
        deadline = time.time() + 120
        while time.time() < deadline:
            job = self.ray_job_of(flow_run_id)
            if job and job["status"] in {"STOPPED", "SUCCEEDED", "FAILED"}:
                break
            time.sleep(1)
        self.report["cancel_job_after"] = job
        self.report["cancel_to_stopped_s"] = time.time() - t_cancel
        self.event("its Ray job ended", status=job and job["status"], after_s=round(time.time() - t_cancel, 1))

    def race(self) -> None:
        """Two `run`s for one output, from two hosts, within 100 ms: the worker host and the operator's laptop, both
        submitting to the job API with the token. The output's lease lets exactly one work."""
        worker = self.h["worker"]
        args = [services._bin("tight-pipeline"), "run", "--manifest", "s3://drill/in/small.jsonl", "--output",
                "s3://drill/race", "--preset", "draft", "--model", self.model, "--actors", "1", "--gpus-per-actor", "1",
                "--batch-size", "1"]
        laptop = {**self.base, "HOME": str(self.dir / "hosts" / "operator"), **self.s3_env,
                  "RAY_ADDRESS": self.job_api, "RAY_AUTH_TOKEN": self.token,
                  "TIGHT_PIPELINE_HOME": str(self.dir / "hosts" / "operator" / "tight-pipeline")}
        commands = {"worker": (worker.argv(args), self.host_env(worker, {"RAY_ADDRESS": self.job_api,
                                                                          "RAY_AUTH_TOKEN": self.token})),
                    "operator": (args, laptop)}
        procs, started = {}, {}
        for name, (argv, env) in commands.items():
            started[name] = time.time()
            procs[name] = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.event("two runs for one output started", spread_ms=round(1000 * abs(started["operator"] - started["worker"]), 1))
        out = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=900)
            out[name] = {"rc": proc.returncode, "errors": [x for x in stderr.splitlines() if x.startswith("error:")],
                         "tail": stderr[-1500:]}
        self.report["race"] = {"started": started, "runs": out}
        self.event("both runs ended", rcs={k: v["rc"] for k, v in out.items()})
        self.collect_rows("s3://drill/race", "race_rows")

    def collect_rows(self, output: str, key: str) -> None:
        from tight_pipeline.data import scores

        every = scores.read(output).to_pandas()  # every version of every row, not only the latest
        self.report[key] = every[["run_id", "item_id", "edit_id", "preset_hash", "status", "error", "worker",
                                  "node_id", "gpu_ids", "finished_at"]].to_dict("records")

    def check_mlflow(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.mlflow_uri)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        self.report["mlflow_runs"] = []
        for r in runs:
            artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id)]
            self.report["mlflow_runs"].append({"name": r.info.run_name, "status": r.info.status,
                                               "prefect_flow_run_id": r.data.tags.get("prefect_flow_run_id"),
                                               "artifact_uri": r.info.artifact_uri, "artifacts": artifacts})

    def check_prefect(self) -> None:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        self.report["prefect_runs"] = [{"id": str(r.id), "state": r.state.type.value if r.state else None,
                                        "deployment_id": str(r.deployment_id)} for r in runs]

    def stop(self) -> None:
        pids = []
        for name in ("head", "gpu-1", "gpu-2", "gpu-3"):
            pids += self.node_pids(name)
        import psutil

        for proc in self.procs:
            try:
                pids.append(proc.pid)
                pids += [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                pass
        for proc in psutil.process_iter(["pid", "environ"]):  # anything else started on a drill host
            try:
                if (proc.info.get("environ") or {}).get("TP_DRILL_HOST") and proc.pid != os.getpid():
                    pids.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        stop_pids(sorted(set(pids)), grace=5)
        if getattr(self, "s3", None) is not None:
            self.s3.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    global LOG
    args.workdir.mkdir(parents=True, exist_ok=True)
    LOG = args.workdir / "topology.log"
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt("SIGTERM")))
    t0 = time.time()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    for ns in {line.split()[0] for line in listed if line.startswith("tpd")}:
        kill_namespace(ns)  # hosts of a drill that was killed before it could clean up
    with PrivateHosts(f"tpd{os.getpid() % 100000}") as hosts:
        topo = Topology(args.workdir, hosts)
        try:
            topo.start_hosts()
            topo.start_services()
            topo.start_head()
            topo.write_inputs()
            topo.deploy()
            topo.run_scenario()
            topo.cancel_a_flow_run()
            topo.race()
            topo.check_mlflow()
            topo.check_prefect()
            topo.report["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - written to the report, which the test reads
            topo.report["ok"] = False
            topo.report["error"] = "".join(traceback.format_exception(exc))[-6000:]
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
