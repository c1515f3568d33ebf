"""The Prefect flow that waits for a person (flows/publish_approved.py): it pauses with a form, is resumed through
Prefect's API with a RunInput (what the UI's Resume form sends) and publishes; a hold or a timeout publishes
nothing."""

from __future__ import annotations

import threading
import time

import pytest

from tight_pipeline.data import storage
from tight_pipeline.review import decisions
from tests.test_review import _output, _rows, _sha


def _paused_run(name: str, after: float, timeout: float = 60.0):
    """The id of the publish-approved run started after ``after`` once it is Paused."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def find():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=20)
            return [r for r in runs if r.name == name and r.state and r.state.is_paused()]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = asyncio.run(find())
        if found:
            return found[0].id
        time.sleep(0.5)
    raise AssertionError(f"no paused run {name} within {timeout} s")


def _start(out, to, **kwargs):
    from flows.publish_approved import publish_approved

    name = f"publish-{time.monotonic_ns()}"
    box: dict = {}

    def body():
        try:
            box["result"] = publish_approved.with_options(flow_run_name=name)(out, to, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return name, thread, box


def _decided(tmp_path):
    out = _output(tmp_path)
    rows = _rows(out)
    decisions.write(out, [decisions.Decision.about(rows["h1", "a"], "approve", "ana"),
                          decisions.Decision.about(rows["h1", "b"], "reject", "ana")])
    return out, rows


@pytest.mark.drill
def test_the_publish_flow_waits_for_a_person_and_publishes_on_their_answer(tmp_path, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    out, rows = _decided(tmp_path)
    to = str(tmp_path / "shop")
    name, thread, box = _start(out, to, timeout_s=120, poll_s=1)
    run_id = _paused_run(name, time.time())
    assert not storage.exists(f"{to}/published.parquet")  # nothing before the person answers
    resume_flow_run(run_id, run_input={"action": "publish", "reviewer": "ben"})
    thread.join(120)
    assert "error" not in box, box.get("error")
    assert box["result"]["action"] == "publish" and box["result"]["copied"] == 1
    assert _sha(f"{to}/a/blue.png") == _sha(rows["h1", "a"].edit_uri)
    assert not storage.exists(f"{to}/b/blue.png")


@pytest.mark.drill
def test_a_hold_or_a_timeout_publishes_nothing(tmp_path, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    out, _ = _decided(tmp_path)
    to = str(tmp_path / "shop")
    name, thread, box = _start(out, to, timeout_s=120, poll_s=1)
    resume_flow_run(_paused_run(name, time.time()), run_input={"action": "hold", "reviewer": "ben"})
    thread.join(120)
    assert box["result"]["action"] == "hold" and box["result"]["copied"] == 0
    name, thread, box = _start(out, to, timeout_s=3, poll_s=1)
    thread.join(120)
    assert isinstance(box.get("error"), TimeoutError) and "nothing was published" in str(box["error"])
    assert not storage.exists(f"{to}/published.parquet") and not storage.exists(f"{to}/a/blue.png")
