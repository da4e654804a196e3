"""What a person sees in a deployment's "Custom run" form: prefect.yaml's deployments deployed
(``prefect deploy --all``) to a real server with its UI, each deployment's run page
(/deployments/deployment/<id>/run) opened in headless Chromium. Every parameter's description,
and each field's of a settings object (the daily flow's ``decision``, the nightlies' ``config``),
renders as Prefect read it from the flow's docstring or the field's declaration (the UI renders it
as Markdown: a ``<name>`` in it would vanish as an HTML tag, as the daily flow's ``out`` once
rendered "empty: //musc."); every enumerated setting (a ``Literal``) is a select offering exactly
its choices, and no free-text field is. Marked slow (about two minutes); skipped, saying why,
without Chromium."""
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

import browser
from conftest import ROOT, prefect

pytestmark = pytest.mark.slow

# the settings a person picks from a list, per deployment (by their labels in the form)
ENUMERATED = {"daily-folder": {"Rule": ["calibrated", "reviewed"]},
              "mvtec-nightly": {"Quick Gelu": ["auto", "true", "false"], "Overlay Normalisation": ["set", "image"],
                                "Msm Precision": ["fp32", "bf16", "bf16-fast"], "Tile Mixing": ["aligned", "all"]}}
ENUMERATED["visa-nightly"] = ENUMERATED["mvtec-nightly"]
# what the docstrings say, as a person must read it (the past bug's field among them)
SAID = {"daily-folder": {"out": "Where the day's results go; empty: the folder musc inside the day's folder."},
        "mvtec-nightly": {"Backbone": "or timm:NAME", "Device": "cuda or cuda:N"}}
SAID["visa-nightly"] = SAID["mvtec-nightly"]

# Each property of the form: its label, its own description, the options of its own select(s) and
# whether it has a free-text field of its own (a nested property's are its own, not its parent's).
JS_PROPERTIES = """
const own = (el, sel) => Array.from(el.querySelectorAll(sel)).filter(x => x.closest('.schema-form-property') === el);
return Array.from(document.querySelectorAll('.schema-form-property')).map(el => {
  const label = own(el, '.schema-form-property__label')[0];
  const description = own(el, '.schema-form-property__description')[0];
  return {label: label ? label.innerText.trim() : '',
          description: description ? description.innerText : null,
          options: own(el, 'select option').map(o => o.value),
          text: own(el, 'input[type=text], input:not([type]), textarea').length > 0};
});
"""


def plain(text: str) -> str:
    return " ".join(text.split())


def expected(schema: dict) -> list[dict]:
    """The form's properties as the deployment's parameter schema declares them: each parameter
    (labelled by its name) and each field of a settings object it takes (labelled by its title),
    with its description and choices."""
    definitions = schema.get("definitions", {})

    def reference(prop: dict) -> dict | None:
        for choice in [prop, *prop.get("anyOf", [])]:
            if "$ref" in choice:
                return definitions[choice["$ref"].split("/")[-1]]
        return None

    found = []
    for name, prop in schema["properties"].items():
        found.append({"label": name, "description": prop.get("description", ""), "enum": prop.get("enum")})
        model = reference(prop)
        for field in (model or {}).get("properties", {}).values():
            found.append({"label": field["title"], "description": field.get("description", ""),
                          "enum": field.get("enum")})
    return found


@pytest.fixture(scope="module")
def deployed(ui_server):
    """A server with its UI (conftest's ``ui_server``) and every deployment of prefect.yaml on it;
    their names and ids."""
    prefect(ui_server, "work-pool", "create", "musc-pool", "--type", "process")
    prefect(ui_server, "deploy", "--all", timeout=400)
    deployments = httpx.post(f"{ui_server['api']}/deployments/filter", json={}).json()
    return ui_server, {d["name"]: d for d in deployments}


def open_form(driver, url: str, deployment: dict, models: list[str]) -> list[dict]:
    """The deployment's run form, every settings object shown (its toggle set to the object, not
    None); the form's properties (JS_PROPERTIES) once they have all rendered."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(f"{url}/deployments/deployment/{deployment['id']}/run")
    wait = WebDriverWait(driver, 60, 0.3)
    wait.until(lambda d: len(d.execute_script(JS_PROPERTIES)) >= len(deployment["parameter_openapi_schema"]
                                                                      ["properties"]))
    for model in models:  # an optional object starts as None: a person clicks its name to fill it in
        driver.execute_script("Array.from(document.querySelectorAll('button'))"
                              ".filter(b => b.innerText.trim() === arguments[0]).forEach(b => b.click())", model)
    count = len(expected(deployment["parameter_openapi_schema"]))
    wait.until(lambda d: len(d.execute_script(JS_PROPERTIES)) >= count)
    time.sleep(0.5)  # the last property's markdown
    return driver.execute_script(JS_PROPERTIES)


def test_every_run_form_says_what_its_docstrings_say(deployed, tmp_path):
    server, deployments = deployed
    names = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
    assert sorted(deployments) == sorted(names)
    problems = []
    with browser.browser(width=1100, height=1200) as driver:
        for name in names:
            deployment = deployments[name]
            schema = deployment["parameter_openapi_schema"]
            models = [ref.split("/")[-1] for prop in schema["properties"].values()
                      for ref in [prop.get("$ref", "")] + [c.get("$ref", "") for c in prop.get("anyOf", [])]
                      if ref and prop.get("type") != "array" and "items" not in prop]
            shown = open_form(driver, server["url"], deployment, models)
            picture = tmp_path / f"{name}.png"
            browser.screenshot(driver, picture)
            by_label = {}
            for prop in shown:
                by_label.setdefault(re.sub(r" \(Optional\)$", "", prop["label"]), prop)
            wrong = []
            for want in expected(schema):
                got = by_label.get(want["label"])
                if got is None:
                    wrong.append(f"{want['label']}: not in the form")
                    continue
                if plain(got["description"] or "") != plain(want["description"]):
                    wrong.append(f"{want['label']}: the form says {plain(got['description'] or '')!r}, "
                                 f"the declaration {plain(want['description'])!r}")
                if want["enum"] and (got["options"] != want["enum"] or got["text"]):
                    wrong.append(f"{want['label']}: choices {want['enum']} shown as options {got['options']}"
                                 + (" and a text field" if got["text"] else ""))
                if not want["enum"] and got["options"] and not set(got["options"]) <= {"", "true", "false"}:
                    wrong.append(f"{want['label']}: a select {got['options']} for a value not enumerated")
            for label, choices in ENUMERATED.get(name, {}).items():
                got = by_label.get(label)
                if got is None or got["options"] != choices:
                    wrong.append(f"{label}: expected a select of {choices}, got "
                                 f"{got and (got['options'] or 'free text')}")
            for label, text in SAID.get(name, {}).items():
                got = by_label.get(label)
                if got is None or text not in plain(got["description"] or ""):
                    wrong.append(f"{label}: expected {text!r} in its description, got "
                                 f"{got and plain(got['description'] or '')!r}")
            problems += [f"{name}: {line}" for line in wrong]
            if name == "daily-folder":
                daily = picture
            if wrong:
                problems.append(f"{name}: see {picture}")
    assert not problems, "\n".join(problems)
    assert daily.stat().st_size > 0  # the daily form's picture (docs/ui-run-form.png is one)
