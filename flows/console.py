"""What the command lines share: one error rule for every command (``command_of``: bad input ends in one
``error:`` line and exit status 2), running a flow with failures of Prefect, Ray or MLflow said in one line
(``run_flow``), and what a run prints (``print_summary``, ``print_plan``)."""

from __future__ import annotations

import functools
import os

import typer


def prepare_env() -> None:
    """Offline, quiet, local-by-default settings; must run before prefect/mlflow/ray are imported."""
    from tight_pipeline.settings import apply_local_defaults

    apply_local_defaults()


class UsageError(ValueError):
    """An option's value cannot be used (the message names the option)."""


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def service_failure(exc: BaseException) -> str | None:
    """One line saying which service failed to start and what to do, for failures of Prefect, Ray or MLflow."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    module = type(exc).__module__ or ""
    if "ephemeral Prefect API server" in text:
        limit = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        return (f"Prefect's temporary server did not start within {limit} s (its first start creates a database). "
                "Run again, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start a server "
                "(python infra/local/services.py start prefect) and set PREFECT_API_URL")
    if module.startswith("prefect") and ("connect" in text.lower() or "PREFECT_API_URL" in text):
        return (f"cannot reach the Prefect API at {os.environ.get('PREFECT_API_URL') or 'the temporary server'} "
                f"({text[:200]}); check PREFECT_API_URL or unset it to use a temporary local server")
    if module.startswith("ray") or ("ray" in text.lower() and ("gcs" in text.lower() or "ray.init" in text)):
        return (f"Ray did not start or could not be reached ({type(exc).__name__}: {text[:200]}); check RAY_ADDRESS "
                "(unset it for an embedded single-node Ray) and that RAY_TMPDIR is writable")
    if module.startswith("mlflow"):
        return (f"MLflow tracking failed at {os.environ.get('MLFLOW_TRACKING_URI') or 'the local store'} "
                f"({text[:200]}); check MLFLOW_TRACKING_URI or unset it for the local SQLite store")
    return None


def run_flow(flow, **kwargs) -> dict:
    """Run a Prefect flow; bad input and failures to start a service end in one line (exit status 2)."""
    try:
        return flow(**kwargs)
    except user_errors():
        raise  # the command's own rule (``command``) says it in one line
    except Exception as exc:  # noqa: BLE001 - services: say which one and what to do; anything else is a bug
        message = service_failure(exc)
        if message is None:
            raise
        fail(message)


def command_of(typer_app: typer.Typer):
    """``typer_app.command`` with the CLI's one error rule: bad input (``user_errors``) ends in one ``error:`` line
    and exit status 2, never a traceback; anything else is a bug and is raised."""

    def command(name: str | None = None, **kwargs):
        def wrap(fn):
            @functools.wraps(fn)
            def run(*args, **kw):
                try:
                    return fn(*args, **kw)
                except user_errors() as exc:
                    fail(str(exc))

            return typer_app.command(name, **kwargs)(run)

        return wrap

    return command


def user_errors():
    from tight_pipeline.method.specs import ModelError
    from tight_pipeline.method.items import InputError
    from tight_pipeline.pipeline.cluster import ClusterError, ComputeSettingError
    from tight_pipeline.pipeline.lease import RunLeaseHeld, RunLeaseLost
    from tight_pipeline.pipeline.submit import RemoteJobFailed
    from tight_pipeline.data.manifest import ManifestError
    from tight_pipeline.method.presets import PresetError
    from tight_pipeline.data.storage import ImageDecodeError, StorageError
    from tight_pipeline.data.variants import VariantError
    from tight_pipeline.method.region import RegionError
    from tight_pipeline.data.piebench import BenchError
    from tight_pipeline.review.decisions import DecisionError

    return (ModelError, InputError, ManifestError, PresetError, ImageDecodeError, StorageError, FileNotFoundError,
            VariantError, ClusterError, ComputeSettingError, RunLeaseHeld, RunLeaseLost, RemoteJobFailed, RegionError, UsageError, BenchError,
            DecisionError)


def print_summary(summary: dict) -> None:
    typer.echo("")
    for key in ("status_ok", "status_error", "status_invalid", "items_processed", "items_skipped_done_before",
                "items_changed_request", "wall_s"):
        if key in summary:
            typer.echo(f"  {key:28s} {summary[key]}")
    typer.echo(f"  images          {summary['output']}/<preset-hash>/<item_id>/<edit_id>.png")
    typer.echo(f"  parquet         {summary['scores']}")
    typer.echo(f"  contact sheet   {summary['contact_sheet']}")
    typer.echo(f"  mlflow run      {summary['mlflow_run_id']}  ({summary['mlflow']})")
    url = summary.get("prefect_flow_run_url")
    if url and os.environ.get("PREFECT_API_URL"):
        typer.echo(f"  prefect         {url}")
    else:
        typer.echo(f"  prefect         flow run {summary['prefect_flow_run_id']} (temporary server; "
                   f"`python infra/local/services.py start prefect` with PREFECT_HOME={os.environ.get('PREFECT_HOME')} shows it)")


def fail_over_limit(summary: dict, max_failure_rate: float) -> None:
    """Exit 2 when the run's failure rate is above ``--max-failure-rate`` (its rows are all written anyway)."""
    if summary["failed"]:
        fail(f"failure rate {summary['failure_rate']:.1%} exceeds --max-failure-rate {max_failure_rate:.1%} "
              "(every row was still written; see the error column)")


def print_plan(manifest: str, output: str, preset: str, model: str | None, variants: int = 0, styles: str = "",
               strengths: tuple[float, ...] = ()) -> None:
    import resource

    from tight_pipeline.pipeline.config import JobConfig

    from tight_pipeline.pipeline.planner import plan_job

    plan = plan_job(JobConfig(manifest=manifest, output=output, preset=preset, model=model, variants=variants,
                              styles=styles, strengths=strengths))
    for message in plan.invalid_sample[:20]:
        typer.echo(f"invalid: {message}", err=True)
    typer.echo(f"manifest {manifest}: {plan.items} items, {plan.invalid_rows} invalid rows "
               f"(planned in {plan.plan_s:.1f} s, peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    typer.echo(f"  {'preset':28s} {'to do':>10s} {'(changed)':>10s} {'done before':>12s} {'invalid':>8s}")
    for name, c in sorted(plan.by_preset.items()):
        typer.echo(f"  {name:28s} {c['todo']:>10d} {c['changed']:>10d} {c['done_before']:>12d} {c['invalid']:>8d}")
    typer.echo("  (done before = every edit ok for this model and for what it asks now; the workers also check that "
               "their PNGs exist;\n   changed = to do because an edit's prompt, mask, photo URI or region changed "
               "under the same ids)")
    if plan.changed_sample:
        typer.echo(f"  changed since their last run: {', '.join(plan.changed_sample)}"
                   + (f" and {plan.changed_items - len(plan.changed_sample)} more" if plan.changed_items > len(plan.changed_sample) else ""))
    if plan.rivals:
        typer.echo(f"  automatic strength weighs each edit against {len(plan.rivals)} rival phrases of this manifest: "
                   f"{', '.join(plan.rivals)}")
