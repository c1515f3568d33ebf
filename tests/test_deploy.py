"""What a platform engineer deploys, checked here where it cannot run: the image's install steps in a fresh venv
(a wheel, not the repository), the KubeRay manifests against the CRD schemas, the Prefect deployment file against
Prefect's own model and the flows' signatures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.drill
def test_the_image_s_install_steps_give_a_wheel_install_that_edits(tmp_path):
    """infra/docker/install.sh (what the Dockerfile runs) in a fresh venv; then, from a folder that is not the
    repository, the installed command lists the presets (configs are package data) and runs a smoke edit with the
    demo model (its weights are package data too)."""
    venv = tmp_path / "venv"
    had_build = (ROOT / "build").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "TIGHT_PIPELINE"))}
    proc = subprocess.run(["bash", str(ROOT / "infra/docker/install.sh"), "all", str(venv)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ROOT / "build").exists() == had_build  # the wheel is built from a copy: no build/ left in the checkout
    cli = venv / "bin" / "tight-pipeline"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["TIGHT_PIPELINE_HOME"] = str(tmp_path / "home")
    # Installed as a wheel: the package is the venv's, not this checkout's.
    where = subprocess.run([venv / "bin" / "python", "-c", "import tight_pipeline, flows; print(tight_pipeline.__file__,"
                            " flows.__file__)"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and str(ROOT) not in where.stdout and "site-packages" in where.stdout, where
    presets = subprocess.run([cli, "presets"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert presets.returncode == 0 and "balanced" in presets.stdout and "catalog-balanced" in presets.stdout, presets
    from PIL import Image

    Image.new("RGB", (96, 80), (200, 40, 40)).save(elsewhere / "mug.png")
    edit = subprocess.run([cli, "edit", "mug.png", "--source-prompt", "a red mug", "--edit", "a blue mug",
                           "--preset", "smoke", "--out", "edited"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert edit.returncode == 0, edit.stderr[-3000:]
    assert (elsewhere / "edited" / "edit_01.png").exists() and (elsewhere / "edited" / "scores.json").exists()


# -- the KubeRay manifests --------------------------------------------------------------------------------------
def _crd_schema(kind: str) -> dict:
    import gzip
    import json

    return json.loads(gzip.decompress((ROOT / "tests" / "schemas" / f"kuberay-{kind}-v1.json.gz").read_bytes()))


def _strict(schema):
    """Unknown fields are errors (what the API server's strict field validation does with a structural schema)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get(
                "x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _manifests() -> dict[str, dict]:
    import yaml

    docs = {}
    for path in sorted((ROOT / "infra" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{path.name}:{doc['kind']}"] = doc
    return docs


def _pod_specs(doc: dict):
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    yield "head", spec["headGroupSpec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group


def test_kuberay_manifests_validate_strictly_against_the_crd_schemas():
    import jsonschema

    schemas = {"RayCluster": _crd_schema("rayclusters"), "RayJob": _crd_schema("rayjobs")}
    checked = 0
    for doc in _manifests().values():
        if doc["kind"] in schemas:
            jsonschema.validate(doc, _strict(schemas[doc["kind"]]))
            checked += 1
    assert checked == 2
    # The strict check is not vacuous: a misspelt field fails it.
    bad = _manifests()["rayjob.yaml:RayJob"]
    bad["spec"]["ttlSecondAfterFinished"] = 60
    with pytest.raises(jsonschema.ValidationError, match="ttlSecondAfterFinished"):
        jsonschema.validate(bad, _strict(schemas["RayJob"]))


def test_kuberay_manifests_can_run_on_a_real_cluster():
    """The deploy review's blockers, each as a check that failed on the old files."""
    docs = _manifests()
    job, cluster = docs["rayjob.yaml:RayJob"], docs["raycluster.yaml:RayCluster"]
    for doc in (job, cluster):
        for group, spec in _pod_specs(doc):
            params = spec["rayStartParams"]
            # The submitter and metrics reach the dashboard over the pod network: no loopback bind in a cluster.
            assert params.get("dashboard-host", "0.0.0.0") != "127.0.0.1", (doc["kind"], group)
            container = spec["template"]["spec"]["containers"][0]
            assert container["resources"].get("requests"), (doc["kind"], group)  # never evicted first
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert mounts["/models/hf"]["readOnly"] is True  # the driver fingerprints weights where it runs too
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("HF_HOME") == "/models/hf"
            if group != "head":
                assert params["num-gpus"] == "1" and spec["minReplicas"] == 0  # autoscales from zero
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                    spec["template"]["spec"]["tolerations"]
            else:
                assert params["num-cpus"] == "0"  # no actor lands on the head
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 300 and job["spec"]["activeDeadlineSeconds"] > 0
    # A RayJob can run again: a generated name (kubectl create), never a fixed one that the last run still holds.
    assert "name" not in job["metadata"] and job["metadata"]["generateName"].endswith("-")
    # Ray token auth on both, from the Secret the flow runs present too (KubeRay >= 1.6 reads authOptions.secretName).
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["authOptions"] == {"mode": "token", "secretName": "tight-pipeline-ray-token"}
    # The cache claim is shareable by many nodes and filled by a Job that mounts it writable (the only writer).
    claim = docs["cache.yaml:PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "hf-cache" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    fill = docs["weights-fill.yaml:Job"]["spec"]["template"]["spec"]
    assert fill["volumes"][0]["persistentVolumeClaim"]["claimName"] == "hf-cache"
    assert not fill["containers"][0]["volumeMounts"][0].get("readOnly")
    env = {e["name"]: e["value"] for e in fill["containers"][0]["env"]}
    assert env == {"HF_HOME": "/models/hf", "HF_HUB_OFFLINE": "0"}
    # The entrypoint uses only options the CLI has, and asks for an autoscaling pool with a bounded wait.
    _check_cli_options(job["spec"]["entrypoint"])
    assert "--min-actors" in job["spec"]["entrypoint"] and "--actor-wait" in job["spec"]["entrypoint"]
    # The job's runtime env sets a key the driver also forwards (HF_HUB_OFFLINE): tight_pipeline.pipeline.cluster.connect_ray
    # must then add only what it lacks (tests/test_topology.py submits such a job for real).
    import yaml

    assert "HF_HUB_OFFLINE" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]


def _check_cli_options(entrypoint: str) -> None:
    import shlex

    import typer.main

    from flows.cli import app

    args = shlex.split(entrypoint)
    assert args[:2] == ["tight-pipeline", "run"]
    command = typer.main.get_command(app).commands["run"]
    known = {opt for p in command.params for opt in getattr(p, "opts", ()) if opt.startswith("--")}
    used = {a for a in args[2:] if a.startswith("--")}
    assert used <= known, used - known


def test_the_apply_path_holds_no_secret_and_everything_it_names_exists():
    """`kubectl apply -k infra/k8s` must never overwrite a real Secret with the example's CHANGE-ME."""
    import yaml

    kustomization = yaml.safe_load((ROOT / "infra/k8s/kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((ROOT / "infra/k8s" / r).is_file() for r in resources)
    assert "rayjob.yaml" not in resources and "weights-fill.yaml" not in resources  # one object per run: create
    assert "namespace" not in kustomization  # it would move the worker out of its namespace
    kinds = {doc["kind"] for name, doc in _manifests().items()}
    assert "Secret" not in kinds
    examples = [doc for doc in yaml.safe_load_all((ROOT / "infra/k8s/examples/secrets.yaml").read_text())]
    assert {d["metadata"]["name"] for d in examples} == {"tight-pipeline-s3", "tight-pipeline-ray-token"}
    assert "auth_token" in examples[1]["stringData"]  # the key KubeRay and the flow-run pods read


def test_one_image_tag_the_project_s_version():
    """Every tight-pipeline image named under infra/ carries the version of pyproject.toml (the one source)."""
    import re
    import tomllib

    import yaml

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    found = []
    for path in sorted((ROOT / "infra").rglob("*")):
        if path.is_file() and path.suffix in {".yaml", ".json", ".md", ""} | {".sh"} or path.name == "Dockerfile":
            found += [(path.name, tag) for tag in re.findall(r"tight-pipeline:([0-9][\w.+-]*)", path.read_text())]
    assert len(found) >= 6 and {tag for _, tag in found} == {version}, found
    images = yaml.safe_load((ROOT / "infra/k8s/kustomization.yaml").read_text())["images"]
    assert images == [{"name": "registry.example.com/tight-pipeline", "newName": "registry.example.com/tight-pipeline",
                       "newTag": version}]


def test_the_network_policy_opens_the_head_only_to_the_prefect_namespace_the_operator_and_ray():
    policy = _manifests()["networkpolicy.yaml:NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}} and policy["policyTypes"] == ["Ingress"]
    sources = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), rule  # an empty `from` would admit the whole pod network
        for peer in rule["from"]:
            key = peer.get("namespaceSelector", peer.get("podSelector"))["matchLabels"]
            sources[tuple(key.values())[0]] = sorted(p["port"] for p in rule.get("ports", []))
    assert sources["yes"] == []  # Ray pods among themselves: every port
    assert sources["prefect"] == [8265]  # flow runs: the job API only, never the GCS
    assert 8265 in sources["kuberay-system"] and sources["monitoring"] == [8080]
    cluster = _manifests()["raycluster.yaml:RayCluster"]
    assert policy and cluster["metadata"]["namespace"] == _manifests()["networkpolicy.yaml:NetworkPolicy"]["metadata"]["namespace"]


# -- the Prefect worker and its Kubernetes work pool -------------------------------------------------------------
def _base_job_template() -> dict:
    import json

    return json.loads((ROOT / "infra/prefect/k8s-base-job-template.json").read_text())


def test_the_worker_deployment_runs_a_kubernetes_pool_with_the_repo_s_template_and_only_the_rbac_it_needs():
    import yaml

    docs = {f"{d['kind']}:{d['metadata']['name']}": d for d in
            yaml.safe_load_all((ROOT / "infra/k8s/prefect-worker.yaml").read_text())}
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"prefect"}
    worker = docs["Deployment:tight-pipeline-prefect-worker"]["spec"]["template"]["spec"]
    command = worker["containers"][0]["command"]
    assert command[:3] == ["prefect", "worker", "start"] and command[command.index("--type") + 1] == "kubernetes"
    # The pool prefect.yaml deploys to, the template this repository keeps (at the image's path for it).
    prefect_yaml = yaml.safe_load((ROOT / "infra/prefect/prefect.yaml").read_text())
    assert command[command.index("--pool") + 1] == prefect_yaml["site_defaults"]["TP_WORK_POOL"]
    template = command[command.index("--base-job-template") + 1]
    assert template.startswith("/opt/tight-pipeline/") and (ROOT / template.removeprefix("/opt/tight-pipeline/")).is_file()
    assert worker["serviceAccountName"] == "tight-pipeline-prefect-worker"
    rules = docs["Role:tight-pipeline-prefect-worker"]["rules"]
    assert {r for rule in rules for r in rule["resources"]} == {"jobs", "pods", "pods/log", "pods/status", "events"}
    assert "ClusterRole" not in {d["kind"] for d in docs.values()}  # namespace-scoped: pods in prefect only
    env = {e["name"]: e["value"] for e in worker["containers"][0]["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == "prefect"  # what the Role allows it to watch
    flow_runs = docs["ServiceAccount:tight-pipeline-flow-runs"]
    assert flow_runs["automountServiceAccountToken"] is False
    assert _base_job_template()["variables"]["properties"]["service_account_name"]["default"] == "tight-pipeline-flow-runs"


def test_the_base_job_template_builds_a_flow_run_job_with_prefect_s_own_kubernetes_worker_model():
    """What prefect-kubernetes' worker does with the template and a deployment's job variables, run here."""
    import asyncio
    import uuid

    import jsonschema
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    from flows import deployments

    template = _base_job_template()
    # Every job-configuration key the worker's model has is templated (nothing of Prefect's default dropped).
    default = KubernetesWorker.get_default_base_job_template()
    assert set(default["job_configuration"]) == set(template["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    definition = {d.name: d for d in deployments.load(env={})}["nightly-localization"]
    jsonschema.validate(definition.job_variables, template["variables"])  # what the server checks at deploy time

    async def build():
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(
            template, definition.job_variables, client=object())
        config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly"))
        return config

    config = asyncio.run(build())
    manifest = config.job_manifest
    assert config.namespace == manifest["metadata"]["namespace"] == "prefect"
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_ADDRESS"] == "http://tight-pipeline-head-svc.tight-pipeline.svc:8265"  # fully qualified job API
    assert env["RAY_AUTH_MODE"] == "token"
    # The token: a file from the Secret, never a value in the job's variables, payload or logs.
    from tight_pipeline.pipeline.submit import MOUNTED_TOKEN

    assert env["RAY_AUTH_TOKEN_PATH"] == MOUNTED_TOKEN and "RAY_AUTH_TOKEN" not in env
    mount = next(m for m in container["volumeMounts"] if m["name"] == "ray-token")
    volume = next(v for v in pod["volumes"] if v["name"] == "ray-token")
    assert mount["mountPath"] == os.path.dirname(MOUNTED_TOKEN) and mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "tight-pipeline-ray-token"
    assert volume["secret"]["items"] == [{"key": "auth_token", "path": os.path.basename(MOUNTED_TOKEN)}]
    assert container["envFrom"] == [{"secretRef": {"name": "tight-pipeline-s3"}}]
    assert not any(k.startswith("AWS_SECRET") for k in env)  # S3 keys come from the Secret, not the template
    assert container["image"] == definition.job_variables["image"] and container["resources"]["requests"]
    assert pod["serviceAccountName"] == "tight-pipeline-flow-runs" and pod["nodeSelector"]
    assert container["args"] == ["prefect", "flow-run", "execute"] and pod["restartPolicy"] == "Never"
    assert manifest["spec"]["backoffLimit"] == 0  # a failed flow run is not blindly re-run: the next run resumes
    # The check is not vacuous: a variable of the wrong type is refused as the server would refuse it.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"env": ["not", "a", "mapping"]}, template["variables"])


# -- the Prefect deployments -------------------------------------------------------------------------------------
def test_prefect_yaml_is_the_one_definition_and_resolves_site_values_from_the_environment(tmp_path):
    from flows import deployments

    env = {"TP_RAY_ADDRESS": "http://head:8265", "TP_CATALOG_OUTPUT": "s3://b/out", "TP_WORK_POOL": "pool-x"}
    defs = {d.name: d for d in deployments.load(env=env)}
    assert set(defs) == {"nightly-localization", "weekly-variants", "monthly-tradeoff", "publish-approved"}
    for d in defs.values():
        flow = deployments.load_flow(d)  # the entrypoint exists, every parameter is one the flow accepts
        assert flow.timeout_seconds is None or flow.timeout_seconds > 0
        assert d.concurrency_limit == 1 and d.work_pool == "pool-x"
        assert d.job_variables["env"]["RAY_ADDRESS"] == "http://head:8265"  # every deployment reaches the job API
        assert d.job_variables["env"]["MLFLOW_TRACKING_URI"].startswith("http")  # not SQLite in a throw-away pod
        assert d.job_variables["env"]["TP_FLOW_TIMEOUT_S"] and d.job_variables["image"]
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/tight-pipeline"}}]
    nightly = defs["nightly-localization"]
    assert nightly.parameters["output"] == "s3://b/out" and nightly.crons == (("0 2 * * *", "UTC"),)
    assert nightly.parameters["model"] == "sdxl-ip-plus"  # a real model on GPUs, not the demo default
    # What `prefect deploy` would do with an unset variable: stop, naming it.
    raw = (ROOT / "infra" / "prefect" / "prefect.yaml").read_text().replace("site_defaults:", "unused_defaults:")
    path = tmp_path / "prefect-no-defaults.yaml"
    path.write_text(raw)
    with pytest.raises(deployments.DeploymentFileError, match="unresolved placeholders"):
        deployments.load(path, env={})


def test_a_deployment_without_a_preset_gets_the_model_family_s_default():
    """A FLUX model run through a deployment once got the SDXL preset (the flows defaulted to "balanced" while the
    CLI chose by family) and every item errored: both now choose in one place."""
    import inspect

    from flows.catalog_localization import catalog_localization
    from flows.variant_generation import variant_generation
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.pipeline.config import default_preset

    for flow in (catalog_localization, variant_generation):
        assert inspect.signature(flow.fn).parameters["preset"].default is None
    assert default_preset(None, resolve_model_spec("tiny-flux")) == "flux-balanced"
    assert default_preset(None, resolve_model_spec("catalog-demo")) == "balanced"
    assert default_preset("faithful", resolve_model_spec("tiny-flux")) == "faithful"
