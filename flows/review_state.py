"""The review's state of an output, its summary and its MLflow mirror: what the CLI, the review app's callback and
the publish-approved flow share. Imports no Prefect (the CLI's decide and publish stay light).
"""

from __future__ import annotations

from tight_pipeline.data import scores, storage
from tight_pipeline.reporting import tracking
from tight_pipeline.review import decisions
from tight_pipeline.review.publish import held_back

STATE_COLUMNS = ["run_id", "status", "edit_uri", "preset", "adapter_scale", "checks_failed"]


def review_state(output: str):
    """The output's current ok outputs with their decisions (``decisions.with_state``; bytes not re-read)."""
    rows = scores.read_latest(output, STATE_COLUMNS)
    return decisions.with_state(output, rows[rows["status"] == "ok"], check_bytes=False)


def mirror(output: str) -> str:
    """Mirror the output's review to MLflow; one line saying where (or why not: MLflow down never stops a review)."""
    try:
        found = tracking.mirror_review(review_state(output))
    except Exception as exc:  # noqa: BLE001 - the decisions are written; the mirror is a copy
        return f"review not mirrored to MLflow ({type(exc).__name__}: {storage.redact(str(exc))[:200]})"
    return (f"review mirrored to MLflow run(s) {', '.join(found.values())}" if found else
            "review not mirrored: no MLflow run of this output's runs was found")


def summary_markdown(output: str, state) -> str:
    counts = state["review_state"].value_counts()
    failed = int(held_back(state).sum())
    lines = [f"### Review of `{storage.redact(output)}`", "", "| state | outputs |", "| --- | --- |"]
    lines += [f"| {name} | {int(counts.get(name, 0))} |" for name in tracking.REVIEW_STATES]
    lines += ["", f"{failed} approved outputs failed their automatic checks without an override: they are not "
                  f"published." if failed else "",
              f"Open the review: `tight-pipeline review --output {storage.redact(output)}`. "
              f"**Publish** copies exactly the approved outputs; **hold** publishes nothing."]
    return "\n".join(lines)
