"""The UIs as a catalog manager sees them: Prefect and MLflow servers on loopback, one `tight-pipeline run`, then
headless Chromium (Debian's, driven through its ChromeDriver) loads the pages and checks what renders.

Skipped where Chromium is not installed, except in CI (``CI=true``), where ``.ci/run`` installs it and a missing
browser fails. ``TP_SCREENSHOTS=folder`` keeps the screenshots (the README's come from here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.drill]  # `make drills` (CI runs it after `make test`)

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (BROWSER and DRIVER):
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs Debian's chromium and chromium-driver for tests/test_browser.py (.ci/run installs them)")
    pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Prefect and MLflow servers on free loopback ports, state in a temporary home; stopped by PID."""
    from infra.local import services

    home = tmp_path_factory.mktemp("ui-home")
    saved = {k: os.environ.get(k) for k in ("TIGHT_PIPELINE_HOME", "PREFECT_PORT", "MLFLOW_PORT", "PREFECT_HOME")}
    os.environ.update(TIGHT_PIPELINE_HOME=str(home), PREFECT_PORT=str(services.free_port()),
                      MLFLOW_PORT=str(services.free_port()), PREFECT_HOME=str(home / "prefect"))
    env: dict[str, str] = {}
    try:
        env.update(services.start("prefect"))
        env.update(services.start("mlflow"))
        yield {**env, "TIGHT_PIPELINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    finally:
        services.stop("mlflow")
        services.stop("prefect")
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from flows.cli import app; app()", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def _open(driver, url: str, until: str, timeout: float = 90):
    """Load ``url`` and wait until the rendered page's text contains ``until``; returns the text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: until in d.find_element(By.TAG_NAME, "body").text)
    return driver.find_element(By.TAG_NAME, "body").text


def _shot(driver, name: str) -> None:
    folder = os.environ.get("TP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _api(url: str, body: dict) -> list:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_a_manager_sees_the_run_its_pictures_mlflow_and_the_schedules(servers, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from tight_pipeline.demo import write_catalog_demo_inputs

    manifest = write_catalog_demo_inputs(str(tmp_path / "in"), count=2)
    run = _cli(["run", "--manifest", manifest, "--output", str(tmp_path / "out"), "--preset", "catalog-draft"], servers)
    assert run.returncode == 0, run.stderr[-2000:]
    flow_run_url = re.search(r"prefect\s+(http\S+/flow-run/(\S+))", run.stdout)
    mlflow_url = re.search(r"mlflow run\s+\S+\s+\((http\S+)\)", run.stdout).group(1)
    assert flow_run_url, run.stdout
    prefect_ui, flow_run_id = flow_run_url.group(1).split("/flow-runs/")[0], flow_run_url.group(2)

    # Prefect: the run's links artifact says it succeeded, links to MLflow, and shows the pictures.
    api = servers["PREFECT_API_URL"]
    artifacts = _api(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert {"catalog-localization-links", "catalog-localization-summary", "catalog-localization-worst-items",
            "catalog-localization-progress"} <= set(by_key)
    text = _open(browser, f"{prefect_ui}/artifacts/artifact/{by_key['catalog-localization-links']['id']}", "succeeded")
    assert "rows: ok 6" in text and "MLflow run" in text
    links = {a.text: a.get_attribute("href") for a in browser.find_elements("tag name", "a") if a.text}
    assert links["MLflow run"] == mlflow_url
    WebDriverWait(browser, 60).until(lambda d: all(
        d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
        for i in d.find_elements("tag name", "img") if "get-artifact" in (i.get_attribute("src") or "")))
    pictures = [i.get_attribute("src") for i in browser.find_elements("tag name", "img")
                if "get-artifact" in (i.get_attribute("src") or "")]
    assert any("contact_sheet.png" in p for p in pictures) and any("worst_items.png" in p for p in pictures)
    _shot(browser, "prefect_run_links.png")

    text = _open(browser, f"{prefect_ui}/artifacts/artifact/{by_key['catalog-localization-worst-items']['id']}", "psnr_vs_input")
    assert "edit_change" in text
    _shot(browser, "prefect_worst_items.png")

    # MLflow: the run the link opens, with its metrics, on the model-training side of the UI.
    text = _open(browser, mlflow_url, "rows_ok")
    assert "catalog-localization-" in text and "Model training" in text
    _shot(browser, "mlflow_run.png")

    # Schedules: registered with `tight-pipeline deploy`, listed on the Deployments page.
    deploy = _cli(["deploy"], {**servers})
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    text = _open(browser, f"{prefect_ui}/deployments", "monthly-tradeoff")
    assert "nightly-localization" in text and "weekly-variants" in text
    _shot(browser, "prefect_deployments.png")
