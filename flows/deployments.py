"""The scheduled deployments, read from ``infra/prefect/prefect.yaml`` — the one definition (``prefect deploy`` reads
the same file, so the two ways of registering them cannot disagree).

    tight-pipeline deploy                  # register them with the Prefect server at PREFECT_API_URL
    tight-pipeline deploy --pool-type kubernetes   # ... on a Kubernetes work pool (infra/prefect/k8s-base-job-template.json)
    tight-pipeline deploy --serve          # register them without a work pool and run them from this process

Site values are ``{{ $TP_* }}`` placeholders resolved from the environment, as ``prefect deploy`` resolves them
(a placeholder becomes the variable's text); ``tight-pipeline deploy`` fills the unset ones from the file's ``site_defaults``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


class DeploymentFileError(ValueError):
    """prefect.yaml is missing, invalid, or names a flow or parameter that does not exist."""


@dataclass(frozen=True)
class Definition:
    """One deployment of prefect.yaml with its site values resolved."""

    name: str
    entrypoint: str  # path:flow, relative to the code folder
    parameters: dict
    crons: tuple[tuple[str, str], ...]  # (cron, timezone)
    concurrency_limit: int | None
    work_pool: str | None
    job_variables: dict
    pull_steps: list
    tags: tuple[str, ...]
    description: str


POOL_TYPES = ("process", "kubernetes")
IMAGE_CODE_DIR = Path("/opt/tight-pipeline")  # where the image keeps infra/prefect (infra/docker/Dockerfile)


def prefect_file() -> Path:
    """``$TP_PREFECT_FILE``; else the first ``infra/prefect/prefect.yaml`` of: this checkout, the working directory,
    ``$TP_CODE_DIR``, the image's /opt/tight-pipeline (an installed wheel keeps no infra/ beside its code)."""
    if os.environ.get("TP_PREFECT_FILE"):
        return Path(os.environ["TP_PREFECT_FILE"])
    roots = [ROOT, Path.cwd()] + ([Path(os.environ["TP_CODE_DIR"])] if os.environ.get("TP_CODE_DIR") else []) + \
        [IMAGE_CODE_DIR]
    candidates = [r / "infra" / "prefect" / "prefect.yaml" for r in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DeploymentFileError("no prefect.yaml in " + ", ".join(str(c.parent) for c in candidates)
                              + " (set TP_PREFECT_FILE)")


def base_job_template(path: Path | None = None) -> dict:
    """The Kubernetes work pool's base job template, kept beside prefect.yaml."""
    import json

    path = path or prefect_file().parent / "k8s-base-job-template.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DeploymentFileError(f"{path} does not exist: a kubernetes pool needs its base job template") from None


def site_values(raw: dict, env: dict | None = None) -> dict[str, str]:
    """The environment over the file's ``site_defaults``."""
    env = dict(os.environ if env is None else env)
    return {**{k: str(v) for k, v in (raw.get("site_defaults") or {}).items()}, **env}


def load(path: Path | None = None, env: dict | None = None) -> list[Definition]:
    """Read, validate (Prefect's ``PrefectYamlModel``) and resolve the deployments of ``path``."""
    from prefect.cli.deploy._models import PrefectYamlModel

    path = path or prefect_file()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DeploymentFileError(f"{path} does not exist (set TP_PREFECT_FILE)") from None
    PrefectYamlModel.model_validate(raw)  # what `prefect deploy` accepts
    values = site_values(raw, env)
    resolved = _apply_env({"pull": raw.get("pull") or [], "deployments": raw.get("deployments") or []}, values)
    out = []
    for d in resolved["deployments"]:
        unresolved = [k for k, v in _flatten(d) if isinstance(v, str) and "{{" in v]
        if unresolved:
            raise DeploymentFileError(f"deployment {d.get('name')!r}: unresolved placeholders in {', '.join(unresolved)}")
        pool = d.get("work_pool") or {}
        out.append(Definition(
            name=d["name"], entrypoint=d["entrypoint"],
            # A placeholder gives text: "8" → 8, "1.5" → 1.5, "null" → None, as the flows' types expect.
            parameters={k: _scalar(v) for k, v in (d.get("parameters") or {}).items()},
            crons=tuple((s["cron"], s.get("timezone", "UTC")) for s in d.get("schedules") or []),
            concurrency_limit=d.get("concurrency_limit"), work_pool=pool.get("name"),
            job_variables=dict(pool.get("job_variables") or {}), pull_steps=list(d.get("pull") or resolved["pull"]),
            tags=tuple(d.get("tags") or ()), description=d.get("description") or ""))
    return out


_ENV_PLACEHOLDER = re.compile(r"{{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*}}")


def _apply_env(value: Any, values: dict[str, str]) -> Any:
    """``{{ $NAME }}`` → ``values[NAME]`` as text (what ``prefect deploy`` does with the environment); an unknown
    name is left as it is (``load`` then names it)."""
    if isinstance(value, str):
        return _ENV_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _apply_env(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_apply_env(v, values) for v in value]
    return value


def _scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parsed = yaml.safe_load(value) if value.strip() else value
    return parsed if isinstance(parsed, (int, float, bool)) or parsed is None else value


def _flatten(value: Any, prefix: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def load_flow(definition: Definition, code_dir: Path = ROOT):
    """The flow object an entrypoint names; every parameter of the definition must be one the flow accepts."""
    import inspect

    from prefect.flows import load_flow_from_entrypoint

    file, _, name = definition.entrypoint.partition(":")
    flow = load_flow_from_entrypoint(f"{code_dir / file}:{name}")
    accepted = set(inspect.signature(flow.fn).parameters)
    unknown = sorted(set(definition.parameters) - accepted)
    if unknown:
        raise DeploymentFileError(f"deployment {definition.name!r}: {flow.name} has no parameter {', '.join(unknown)}")
    return flow


def register(definitions: list[Definition] | None = None, create_pool: bool = True,
             pool_type: str = "process") -> list[dict]:
    """Create or update each deployment at the Prefect server (PREFECT_API_URL), on its work pool, with its
    schedules, concurrency limit and pull steps. A missing work pool is created as ``pool_type`` (``kubernetes``:
    with the base job template beside prefect.yaml); an existing pool of another type is an error, not a
    silent mismatch. Returns flow, name, id, cron and pool of each."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    if pool_type not in POOL_TYPES:
        raise DeploymentFileError(f"pool type {pool_type!r}: use one of {', '.join(POOL_TYPES)}")
    template = base_job_template() if pool_type == "kubernetes" and create_pool else None
    out = []
    with get_client(sync_client=True) as client:
        for d in definitions or load():
            flow = load_flow(d)
            if d.work_pool and create_pool:
                try:
                    pool = client.read_work_pool(d.work_pool)
                except ObjectNotFound:
                    client.create_work_pool(WorkPoolCreate(name=d.work_pool, type=pool_type,
                                                           **({"base_job_template": template} if template else {})))
                else:
                    if pool.type != pool_type:
                        raise DeploymentFileError(
                            f"work pool {d.work_pool!r} is a {pool.type} pool, not {pool_type}: deploy with "
                            f"--pool-type {pool.type}, or name another pool with TP_WORK_POOL")
            flow_id = client.create_flow_from_name(flow.name)
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=d.name, entrypoint=d.entrypoint, parameters=d.parameters,
                description=d.description, tags=list(d.tags), work_pool_name=d.work_pool,
                job_variables=d.job_variables, pull_steps=d.pull_steps, concurrency_limit=d.concurrency_limit,
                schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron=c, timezone=tz)) for c, tz in d.crons],
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
            )
            out.append({"flow": flow.name, "name": d.name, "id": str(deployment_id),
                        "cron": ", ".join(c for c, _ in d.crons), "pool": d.work_pool or "-"})
    return out


def build_served(definitions: list[Definition] | None = None):
    """The same deployments as runner deployments of this process (``--serve``: no work pool, no worker)."""
    from prefect.client.schemas.schedules import CronSchedule

    return [load_flow(d).to_deployment(name=d.name, parameters=d.parameters, tags=list(d.tags),
                                       description=d.description, concurrency_limit=d.concurrency_limit,
                                       schedules=[CronSchedule(cron=c, timezone=tz) for c, tz in d.crons])
            for d in definitions or load()]


if __name__ == "__main__":
    from prefect import serve

    serve(*build_served())
