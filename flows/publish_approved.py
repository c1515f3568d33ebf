"""Publish what a person approved, in Prefect: a flow run that waits for a person.

    python -m flows.publish_approved --output s3://bucket/out --to s3://shop/images
    (or from the Prefect UI: the publish-approved deployment's run form)

The flow counts the output's review (approved / rejected / redo / stale / undecided, and how many approvals failed
their automatic checks), shows them as a Markdown artifact with the command that opens the review app, and
**pauses** (``pause_flow_run``) with a form (``PublishInput``: publish or hold, and who decides) that the Prefect UI
shows on the run's Resume button — or that ``resume_flow_run(id, run_input={...})`` answers from code. On
``publish`` it copies exactly the approved outputs (``review/publish.py``); on ``hold``, or when nobody answers
within ``timeout_s`` (the run then fails, naming the timeout), nothing is published. Either way the review is
mirrored to MLflow (``mirror_review``).
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.review_state import mirror, review_state, summary_markdown
from tight_pipeline.data import storage
from tight_pipeline.review.publish import publish

class PublishInput(RunInput):
    """The form the run waits on."""

    action: Literal["publish", "hold"] = "hold"
    reviewer: str



@flow(name="publish-approved", log_prints=True)
def publish_approved(output: str, to: str, timeout_s: int = 24 * 3600, poll_s: int = 10) -> dict:
    """Show the review's counts, wait for a person's publish / hold (``PublishInput``), then publish the approved
    outputs of ``output`` to ``to`` (``<to>/<item_id>/<edit_id>.png`` and ``<to>/published.parquet``)."""
    logger = get_run_logger()
    state = review_state(output)
    text = summary_markdown(output, state)
    create_markdown_artifact(markdown=text, key="publish-review", description="what publishing would copy")
    logger.info("waiting up to %d s for a person: Resume this run (publish or hold) in the Prefect UI", timeout_s)
    try:
        answer = pause_flow_run(wait_for_input=PublishInput.with_initial_data(description=text, action="hold"),
                                timeout=timeout_s, poll_interval=poll_s)
    except FlowPauseTimeout:
        logger.warning(mirror(output))
        raise TimeoutError(f"nobody answered within {timeout_s} s: nothing was published from "
                           f"{storage.redact(output)}") from None
    result = {"action": answer.action, "reviewer": answer.reviewer, "output": output, "to": to,
              "prefect_flow_run_id": str(flow_run.id)}
    if answer.action == "hold":
        logger.info("held by %s: nothing published", answer.reviewer)
        logger.info(mirror(output))
        return result | {"copied": 0, "unchanged": 0}
    done = publish(output, to)
    for line in done.lines():
        logger.info(line)
    logger.info(mirror(output))
    return result | {"copied": done.copied, "unchanged": done.unchanged, "skipped": done.skipped,
                     "published_list": done.manifest_uri}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--timeout-s", type=int, default=24 * 3600)
    args = parser.parse_args()
    print(publish_approved(args.output, args.to, args.timeout_s))
