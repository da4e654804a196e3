"""Inspectors review a day in the Prefect UI: the daily deployment, run by a process worker against a
real server with its UI, pauses on a day with flagged parts; headless Chromium opens the run's
Resume form, sees each flagged part's picture and heat map, marks one good and one defect and
resumes; the verdicts reach scores.csv and the verdict history beside the pool, and the day's maps
artifact shows its parts' pictures and the trend plot. Meanwhile the next
day's run runs to its end; a day nobody reviews ends "not reviewed" after its wait, and a form sent
after that is refused. Marked slow (some minutes); skipped, saying why, without Chromium."""
import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

import browser
from conftest import ROOT, copy_pool, process_worker, start_run, wait_for


def verdicts_of(folder: Path) -> set:
    """The verdicts a day's scores.csv shows."""
    return set(pd.read_csv(folder / "scores.csv", keep_default_na=False)["verdict"])

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def worker(ui_server, tmp_path_factory):
    with process_worker(ui_server, ["--name", "daily-folder"], "daily", tmp_path_factory.mktemp("fail")) as started:
        yield started


def day_folder(root: Path, day: str, images: list[str], dataset: Path) -> Path:
    (root / day).mkdir(parents=True)
    for image in images:
        (root / day / image.replace("/", "_")).write_bytes((dataset / "fabric/test" / image).read_bytes())
    return root / day


def worker_log(server) -> str:
    return (server["home"] / "worker.log").read_text()[-4000:]


def wait_paused(server, run_id: str, timeout: float = 400) -> dict:
    run = wait_for(server, run_id, {"PAUSED"} | FINAL, timeout=timeout)
    assert run["state"]["type"] == "PAUSED", worker_log(server)
    return run


def test_a_day_is_reviewed_in_the_ui_while_the_next_runs(ui_server, worker, pool_file, tiny_dataset, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    api = ui_server["api"]
    root = tmp_path / "incoming"
    parts = ["good/000.png", "hole/000.png", "hole/001.png", "stain/000.png", "stain/001.png"]
    first = day_folder(root, "2026-12-01", parts, tiny_dataset)
    day_folder(root, "2026-12-02", ["good/000.png"], tiny_dataset)
    third = day_folder(root, "2026-12-03", ["hole/000.png", "stain/001.png"], tiny_dataset)
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    common = {"pool": str(pool), "root": str(root),
              "decision": {"threshold": 0.55}}  # between good (0.34) and defects (0.64 to 0.82)

    reviewed = start_run(ui_server, "daily-folder", **common, day="2026-12-01", review_wait_s=900)
    wait_paused(ui_server, reviewed)
    table = pd.read_csv(first / "musc/scores.csv", keep_default_na=False)
    flagged = table[table["decision"] == "anomalous"].sort_values("score", ascending=False)
    assert len(flagged) >= 2 and (table["decision"] == "normal").any()  # the form asks about the flagged only
    names = [Path(p).name for p in flagged["path"]]

    nobody = start_run(ui_server, "daily-folder", **common, day="2026-12-03", review_wait_s=20)
    following = start_run(ui_server, "daily-folder", **common, day="2026-12-02")
    run = wait_for(ui_server, following, FINAL, timeout=400)  # the next day runs while a day awaits review
    assert run["state"]["type"] == "COMPLETED", worker_log(ui_server)
    assert httpx.get(f"{api}/flow_runs/{reviewed}").json()["state"]["type"] == "PAUSED"

    with browser.browser(width=1400, height=1400) as driver:
        driver.get(browser.url_flow_run(ui_server["url"], reviewed))
        wait = WebDriverWait(driver, 60, 0.3)
        resume = wait.until(lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button")
                                            if b.text.strip() == "Resume"), None))
        resume.click()
        dialog = wait.until(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "[role=dialog], .p-modal")), None))
        wait.until(lambda d: all(name in dialog.text for name in names))
        wait.until(lambda d: d.execute_script(
            "return Array.from(arguments[0].querySelectorAll('img')).filter(i => i.complete && i.naturalWidth > 0)"
            ".length", dialog) >= len(names))
        sizes = driver.execute_script("return Array.from(arguments[0].querySelectorAll('img'))"
                                      ".map(i => [i.naturalWidth, i.src.slice(0, 22)])", dialog)
        assert len(sizes) == len(names) and all(w > 0 and src == "data:image/png;base64," for w, src in sizes), sizes
        driver.save_screenshot(str(tmp_path / "review.png"))
        choose(dialog, names[0], "defect")
        choose(dialog, names[1], "good")
        write(dialog, f"note on {names[0]}", "a hole, checked at the line")  # a note of its own per part
        write(dialog, "reviewed by", "ana")
        submit = next(b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click()", submit)
        try:
            WebDriverWait(driver, 60, 0.5).until(lambda d: httpx.get(f"{api}/flow_runs/{reviewed}").json()
                                                 ["state"]["type"] != "PAUSED")
        except Exception:  # the form not taken: say what the dialog and the server say
            driver.save_screenshot(str(tmp_path / "submitted.png"))
            server_log = (Path(ui_server["home"]) / "server.log").read_text(errors="replace")
            pytest.fail("the run stayed paused after Submit; the page says: "
                        + driver.execute_script("return document.body.innerText")[-1500:]
                        + "\nthe server's log ends: " + server_log[-3000:])
        run = wait_for(ui_server, reviewed, FINAL, timeout=120)
        assert run["state"]["type"] == "COMPLETED", worker_log(ui_server)

        from flows.daily import pool_name  # the day at a glance: flagged parts pictured, the trend, the rest
        versions = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {
            "key": {"any_": [f"musc-daily-{pool_name(pool)}-maps"]}, "flow_run_id": {"any_": [reviewed]}}}).json()
        assert len(versions) == 2  # the day when scored, and again once reviewed
        maps = max(versions, key=lambda artifact: artifact["created"])
        assert "review: 2 verdict(s) recorded" in maps["description"]
        browser.open_artifact(driver, ui_server["url"], maps["id"], min_images=len(table) + 1)
        states = browser.image_states(driver)
        assert len(states) == len(table) + 1 and not browser.broken_images(driver), states  # each part, the trend
        text = driver.execute_script("return document.body.innerText")
        assert "Flagged parts" in text and "Trend" in text and all(name in text for name in names)
    table = pd.read_csv(first / "musc/scores.csv", keep_default_na=False).set_index("path")
    top, second = flagged["path"].iloc[0], flagged["path"].iloc[1]
    assert table.loc[top, "verdict"] == "defect" and table.loc[second, "verdict"] == "good"
    assert set(table.drop(index=[top, second])["verdict"]) == {""}  # the rest not reviewed
    history = pd.read_csv(pool.with_name(pool.stem + ".verdicts.csv"), keep_default_na=False)
    assert sorted(zip(history["name"], history["verdict"], history["note"], history["reviewer"])) == sorted(
        [(top, "defect", "a hole, checked at the line", "ana"), (second, "good", "", "ana")])
    assert set(history["day"]) == {"2026-12-01"}
    assert httpx.get(f"{api}/flow_runs/{reviewed}").json()["state"]["name"] == "Reviewed"
    tables = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {
        "key": {"any_": [f"musc-daily-{pool_name(pool)}"]}, "flow_run_id": {"any_": [reviewed]}}}).json()
    newest = max(tables, key=lambda artifact: artifact["created"])
    assert "review: 2 verdict(s) recorded" in newest["description"]  # published again after the review
    assert sorted(row["verdict"] for row in (json.loads(newest["data"]) if isinstance(newest["data"], str)
                                            else newest["data"]) if row["verdict"]) == ["defect", "good"]
    events = []
    for _ in range(30):  # the form's verdicts are events too, as musc review's
        events = httpx.post(f"{api}/events/filter", json={"filter": {"event": {
            "name": ["musc.part.confirmed", "musc.part.dismissed"]}}}).json()["events"]
        if len(events) >= 2:
            break
        time.sleep(1)
    assert sorted((e["event"], e["payload"]["part"]) for e in events) == sorted(
        [("musc.part.confirmed", top), ("musc.part.dismissed", second)]), events

    run = wait_for(ui_server, nobody, FINAL, timeout=400)  # its 20 s wait ran out: it ends, not reviewed
    assert run["state"]["type"] == "COMPLETED", worker_log(ui_server)
    assert run["state"]["name"] == "Not reviewed"  # told apart from a reviewed day
    assert verdicts_of(third / "musc") == {""}
    part = pd.read_csv(third / "musc/scores.csv")["part"][0]
    late = httpx.post(f"{api}/flow_runs/{nobody}/resume",
                      json={"run_input": {f"part_{part[:16]}": "defect"}}).json()  # a form sent too late
    assert late["status"] == "ABORT" and "not paused" in late["details"]["reason"], late
    assert verdicts_of(third / "musc") == {""}
    assert httpx.get(f"{api}/flow_runs/{nobody}").json()["state"]["type"] == "COMPLETED"
    assert len(pd.read_csv(pool.with_name(pool.stem + ".verdicts.csv"))) == 2  # nothing added


def choose(dialog, part: str, verdict: str) -> None:
    """Pick ``verdict`` in the form's choice titled ``part`` (the UI adds " (Optional)")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    field = next(f for f in dialog.find_elements(By.CSS_SELECTOR, ".schema-form-property")
                 if f.find_element(By.CSS_SELECTOR, ".schema-form-property__label").text.split(" (")[0] == part)
    Select(field.find_element(By.CSS_SELECTOR, "select")).select_by_value(verdict)


def write(dialog, title: str, text: str) -> None:
    """Type ``text`` into the form's text field titled ``title``."""
    from selenium.webdriver.common.by import By
    field = next(f for f in dialog.find_elements(By.CSS_SELECTOR, ".schema-form-property")
                 if f.find_element(By.CSS_SELECTOR, ".schema-form-property__label").text.split(" (")[0] == title)
    field.find_element(By.CSS_SELECTOR, "textarea, input").send_keys(text)
