"""MLflow's own UI in headless Chromium, read as a new user reads it: a registered build shows its
accuracy in words, its tensor signature, the Triton model that serves it, and the golden set it was
judged on, each where MLflow puts such things."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import register as stage
from pipelines.register import RegisterInputs
from registry.events import Actor
from registry.settings import RegistrySettings
from registry.store import Store
from tests.browser import chromium, wait_for

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]


@pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)
def test_a_registered_build_reads_right_in_the_mlflow_ui(
    settings: RegistrySettings, store: Store, make_project: Callable[..., RegisterInputs], tmp_path: Path
) -> None:
    registration = stage.register(make_project(git=True), settings, Actor(name="ui-tester"))
    run = store.client.get_run(str(registration.run_id))
    url, model = str(settings.tracking_uri), settings.model_name
    words = "accuracy 90.0% (2.0 points lower than the base model) on the golden set (1 question)"

    with chromium(tmp_path / "profile") as browser:
        browser.get(f"{url}/#/models/{model}")
        text = wait_for(browser, lambda t: f"version 3 is {model}-v3" in t)
        browser.save_screenshot(str(tmp_path / "registered-model.png"))
        # The description's placeholder once rendered as "its own Triton model -v.".
        assert f"version 3 is {model}-v3" in text and "Triton model -v." not in text, text

        browser.get(f"{url}/#/models/{model}/versions/{registration.version}")
        text = wait_for(browser, lambda t: "Inputs (1)" in t and words in t)
        assert words in text and "drop +" not in text, text
        assert "Inputs (1)" in text and "Outputs (1)" in text, text  # not "Inputs (0)": the signature is there
        assert f"triton.model\n{model}-v1" in text, text  # the Triton model that serves it
        from selenium.webdriver.common.by import By

        browser.find_element(By.XPATH, "//*[text()='Inputs (1)']").click()
        text = wait_for(browser, lambda t: "messages" in t)
        browser.save_screenshot(str(tmp_path / "model-version.png"))
        assert "messages" in text, text

        browser.get(f"{url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        text = wait_for(browser, lambda t: "validate.accuracy" in t and "Datasets" in t)
        browser.save_screenshot(str(tmp_path / "run.png"))
        digest = run.inputs.dataset_inputs[0].dataset.digest
        assert f"Datasets\ngolden ({digest})\nEvaluation" in text, text  # not "Datasets: None"
        assert words in text, text  # the run's own description
        assert "validate.accuracy\n0.9\n" in text, text  # the gate's figure among the run's metrics
    print(f"MLflow UI screenshots: {tmp_path}")
