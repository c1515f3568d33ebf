"""The job's cluster: how actors ask for GPUs and CPUs (by the model's device, never by a snapshot of the
cluster), the actor pool, which Ray to join (embedded, an address, never ray://), the weights' digest
resolved where the actors run; and the errors that stop a run before any work."""

from __future__ import annotations

import json
import logging
import os


from tight_pipeline.method.specs import ModelSpec
from tight_pipeline.method.fingerprints import WeightsNotFound, model_digest

from tight_pipeline.pipeline.config import JobConfig

log = logging.getLogger("tight_pipeline.pipeline.cluster")


# -- Ray ----------------------------------------------------------------------------------------------
class ClusterError(RuntimeError):
    """The cluster cannot run the job as configured (no actor started in time, no weights where they run)."""


class ComputeSettingError(ValueError):
    """Pool settings no cluster can satisfy (the message names the setting)."""


def check_compute(config: JobConfig) -> None:
    """Raise ``ComputeSettingError`` naming the setting for pool settings no cluster can satisfy (and
    ``ClusterError`` for a Ray address the job cannot use)."""
    check_ray_address()
    if config.actors < 1:
        raise ComputeSettingError(f"actors must be at least 1 (got {config.actors})")
    if not 0 <= config.min_actors <= config.actors:
        raise ComputeSettingError(f"min_actors must be between 0 and actors={config.actors} (got {config.min_actors})")
    if config.actor_cpus <= 0:
        raise ComputeSettingError(f"actor_cpus must be positive (got {config.actor_cpus:g})")
    if config.gpus_per_actor is not None and config.gpus_per_actor < 0:
        raise ComputeSettingError(f"gpus_per_actor must be 0 or more (got {config.gpus_per_actor:g})")
    if config.batch_size < 0 or config.actor_wait_s <= 0:
        raise ComputeSettingError("batch_size must be 0 (the model's max_batch) or more, and actor_wait_s positive")


def gpus_per_actor(config: JobConfig, spec: ModelSpec, cluster_gpus: float) -> float:
    """GPUs each actor asks for: the setting, else the spec's device (``JobConfig.gpus_per_actor``)."""
    if config.gpus_per_actor is not None:
        return float(config.gpus_per_actor)
    if spec.device == "cuda":
        return 1.0
    if spec.device == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    return 0.0


def actor_pool(config: JobConfig):
    """A fixed pool of ``actors``, or one that follows the autoscaler from ``min_actors`` up to ``actors``."""
    import ray.data

    low = config.min_actors or config.actors
    # actor_pipeline batches run in each actor at once (threads): one on the model, the others on CPU work.
    threads = {"max_concurrent_calls_per_actor": config.actor_pipeline,
               "enable_true_multi_threading": config.actor_pipeline > 1}
    if low == config.actors:
        return ray.data.ActorPoolStrategy(size=config.actors, **threads)
    return ray.data.ActorPoolStrategy(min_size=low, max_size=config.actors, initial_size=low, **threads)


def inside_ray_job() -> bool:
    """True in a driver that Ray's job server started (``ray job submit``, a KubeRay RayJob)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


# Environment the workers need from the driver (they do not inherit it): offline hub, the object store endpoint,
# configs. Credentials are never passed through Ray: workers get them from their own environment (pod secrets).
WORKER_ENV = ("HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "TIGHT_PIPELINE_CONFIGS")


# What a submitted job's runtime env carries from the submitter: offline hub and configs, never credentials (the head
# and the workers have their own, from the cluster's secrets).
SUBMIT_ENV = ("HF_HUB_OFFLINE", "TIGHT_PIPELINE_CONFIGS")


def ray_mode() -> str:
    """How this process uses Ray, from ``RAY_ADDRESS``: ``embedded`` (unset: a loopback single-node Ray of its own),
    ``submit`` (``http(s)://HEAD:8265``, the job API: the run goes to the cluster as a Ray Job, from any host),
    ``driver`` (a GCS address, or inside a Ray Job: this process joins the cluster, so it must be on a Ray node)."""
    if inside_ray_job():
        return "driver"
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        return "embedded"
    if address.startswith(("http://", "https://")):
        return "submit"
    return "driver"


def job_api_address() -> str:
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"RAY_ADDRESS={address or '(unset)'} is not Ray's job API (http://HEAD:8265)")
    return address


def _same_address(a: str, b: str) -> bool:
    """Two ``host:port`` addresses of one GCS: the same port and a host resolving to a common IP."""
    import socket as _socket

    (ha, _, pa), (hb, _, pb) = a.rpartition(":"), b.rpartition(":")
    if pa != pb:
        return False

    def ips(host: str) -> set[str]:
        try:
            return {info[4][0] for info in _socket.getaddrinfo(host, None)}
        except OSError:
            return {host}

    return ha == hb or bool(ips(ha) & ips(hb))


def local_raylet_sockets(gcs_address: str | None = None) -> list[str]:
    """The raylet sockets this process can open, of the cluster at ``gcs_address`` (``host:port``; None or
    ``auto``: any cluster): Ray's driver looks up a raylet *process* on this host and talks to it through its Unix
    socket, and aborts the interpreter when it cannot (a host that is not a Ray node). A raylet of another cluster
    on the same host (a test's embedded Ray, a second cluster) is no node of this one: a driver that took it for one
    hangs."""
    import socket as _socket

    import psutil

    wanted = None if gcs_address in (None, "", "auto") else gcs_address.split("://")[-1]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not cmd or not os.path.basename(cmd[0]).startswith("raylet"):
            continue
        args = dict(arg[2:].split("=", 1) for arg in cmd[1:] if arg.startswith("--") and "=" in arg)
        if wanted is not None and not _same_address(args.get("gcs-address", ""), wanted):
            continue
        path = args.get("raylet_socket_name")
        if not path:
            continue
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(path)
            found.append(path)
        except OSError:
            pass  # a raylet of another host (another mount namespace), or a dead socket file
        finally:
            probe.close()
    return found


def check_ray_address() -> None:
    """Raise ``ClusterError`` for a ``RAY_ADDRESS`` this process cannot use, in one line saying which one to use.

    Measured (Ray 2.60): Ray Data's executor fails over Ray Client ("'Worker' object has no attribute
    'core_worker'") after the plan is written; a driver joining by the GCS address from a host without a raylet
    aborts the interpreter ("Failed to connect to socket ... raylet"). Both are refused here, before any work."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if inside_ray_job() or not address:
        return
    submit_hint = (f"set RAY_ADDRESS to the head's job API (e.g. http://{_host_of(address)}:8265): the run is then "
                   "submitted as a Ray Job and its driver runs on the head")
    if address.startswith("ray://"):
        raise ClusterError(f"RAY_ADDRESS={address}: Ray Data jobs do not run over Ray Client (ray://); "
                           f"{submit_hint}, or use the GCS address (HEAD:6379) from a process on a Ray node")
    if ray_mode() == "driver" and not local_raylet_sockets(address):
        raise ClusterError(f"RAY_ADDRESS={address} is the cluster's GCS address, which only a process on a Ray node "
                           f"can use (a driver needs a raylet on its own host, and this host has none); {submit_hint}")


def _host_of(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0] or "HEAD"


def connect_ray(num_cpus: int | None = None):
    """Attach to ``RAY_ADDRESS`` when set; otherwise start an embedded, loopback-only, single-node Ray."""
    # Environment first: Ray reads some of these when it is imported.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    check_ray_address()
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost"):
            # A loopback cluster (infra/local): without this the driver dials the node's public IP and hangs.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(token_file)):
            os.environ["RAY_AUTH_MODE"] = "token"  # clusters started with a token refuse drivers without it
    else:
        # Loopback only: without this Ray listens on every interface (its dashboard, GCS and object manager).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # Ray 2.60 turns token auth on for a new local cluster and says so on the console ("Token authentication is
        # enabled ... Set RAY_AUTH_MODE=disabled to opt out"): the protection stays, the notice is not for our users.
        # (Setting RAY_AUTH_MODE here instead breaks a process that imported ray before: its client sends no token.)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if ray_mode() == "submit":
        raise ClusterError(f"RAY_ADDRESS={address} is the job API: this process submits Ray Jobs and joins no cluster "
                           "(tight_pipeline.pipeline.submit)")
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": {k: os.environ[k] for k in WORKER_ENV if k in os.environ}}
    if inside_ray_job():
        # The job's own runtime env (``ray job submit --runtime-env``, a RayJob's runtimeEnvYAML) applies to every
        # worker, and a driver env with a key it already sets is a merge error: add only the keys it lacks.
        job_env = (json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]).get("runtime_env") or {}).get("env_vars") or {}
        extra = {k: v for k, v in runtime_env["env_vars"].items() if k not in job_env}
        ray.init(runtime_env={"env_vars": extra} if extra else None, log_to_driver=True)
    elif address:
        ray.init(runtime_env=runtime_env, log_to_driver=True)
    else:
        tmp = os.environ.get("RAY_TMPDIR") or f"/tmp/tpray-{os.getuid()}"
        os.makedirs(tmp, exist_ok=True)
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=tmp,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=True,
            logging_level=logging.WARNING,
        )
    return ray


def resolve_digest(config: JobConfig, spec: ModelSpec) -> str:
    """The model's digest (``model_digest``), computed where the weights are.

    Here when this machine has them; otherwise (a RayJob head or a Prefect flow pod without the weights cache) in
    a Ray task placed like an actor (same GPU request), so it runs on a node that mounts the cache. Never a digest
    of missing weights: when no node has them the run stops with ``WeightsNotFound`` naming what is missing."""
    try:
        return model_digest(spec)
    except WeightsNotFound as here:
        local_miss = here
    connect_ray()
    import ray

    gpus = gpus_per_actor(config, spec, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(_remote_digest).options(num_cpus=min(1.0, config.actor_cpus), num_gpus=gpus, max_retries=2)
    try:
        return ray.get(task.remote(spec), timeout=config.actor_wait_s)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"{local_miss}; and no worker with {gpus:g} GPU(s) started within "
                           f"actor_wait_s={config.actor_wait_s:g} s to fingerprint them where they are") from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)  # the task's own exception, without Ray's traceback
        if isinstance(cause, WeightsNotFound):
            raise WeightsNotFound(f"{local_miss}; on the workers too: {cause}") from None
        raise


def _remote_digest(spec: ModelSpec) -> str:
    try:
        return model_digest(spec)
    except WeightsNotFound as exc:  # re-raised plainly so the driver can tell it from a crash
        raise WeightsNotFound(str(exc)) from None

