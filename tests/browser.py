"""Headless-Chromium helpers for the browser tests (tests/test_ui.py): a real Prefect server and its
UI, local HTML reports.

Requirements (Debian 12 bookworm):
    apt-get install -y chromium chromium-driver      # /usr/lib/chromium/chromium, /usr/bin/chromedriver
    pip install selenium            # the "test" extra; tested 4.51.0

Nothing here downloads anything: Selenium Manager is bypassed by passing both the
chromedriver path and the browser binary explicitly.

Tested with Prefect 3.9.1 (server UI "V1" = default at /, "V2" at /v2/...), Chromium 156.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/lib/chromium/chromium")  # real ELF, not the /usr/bin shell wrapper
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")


def unavailable() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} missing: install Debian's {package} (scripts/test.sh does, as root)"
    return None

# JS snippets -------------------------------------------------------------------------------
JS_IMAGES = "return Array.from(document.images).map(i=>[i.src.slice(0,40), i.complete, i.naturalWidth])"
JS_IMAGES_DONE = "return Array.from(document.images).every(i=>i.complete)"
# Prefect V1 UI table artifact: <table class="p-table__table"> ... <td class="p-table-data"><span
# class="artifact-data-table__cell">TEXT</span>; string cells additionally wrap an <article
# class="markdown-renderer">. V2 UI: <table data-slot="table"> with th/td[data-slot=table-cell].
JS_TABLE = """
const t = document.querySelector(arguments[0] || 'table');
if (!t) return null;
const head = Array.from(t.querySelectorAll('thead th')).map(e => e.innerText.trim());
const rows = Array.from(t.querySelectorAll('tbody tr'))
   .map(r => Array.from(r.querySelectorAll('td')).map(e => e.innerText.trim()))
   .filter(r => r.length);
return {head, rows};
"""
JS_OVERFLOW = """
const de = document.documentElement;
const out = {page: [de.scrollWidth, de.clientWidth], tables: []};
document.querySelectorAll('table').forEach(t => {
  let p = t.parentElement;  // nearest scroll container (or the table itself)
  while (p && p !== document.body && !(p.scrollWidth > p.clientWidth + 1)) p = p.parentElement;
  out.tables.push({table: [t.scrollWidth, t.clientWidth],
                   overflowing_ancestor: p && p !== document.body ? [p.className.toString().slice(0,60), p.scrollWidth, p.clientWidth] : null});
});
return out;
"""


# Prefect server -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout: float = 90.0, interval: float = 0.5) -> float:
    """Poll url until HTTP 200; returns seconds waited."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except Exception as e:  # connection refused while starting
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{url} not healthy after {timeout}s: {last!r}")


@dataclass
class PrefectServer:
    """Real `prefect server start` in its own process group, temp PREFECT_HOME (sqlite)."""
    prefect_exe: str = field(default_factory=lambda: str(Path(sys.executable).with_name("prefect")))
    port: int = 0
    home: str = ""
    proc: subprocess.Popen | None = None
    log_path: str = ""
    startup_s: float = 0.0
    v2_ui: bool = False  # True -> PREFECT_SERVER_UI_V2_ENABLED (/ redirects to /v2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def client_env(self) -> dict:
        """Env for a *client* process (flow run) talking to this server."""
        return {**os.environ, "PREFECT_API_URL": self.api_url, "PREFECT_HOME": self.home,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def start(self, timeout: float = 120.0) -> "PrefectServer":
        self.port = self.port or free_port()
        self.home = self.home or tempfile.mkdtemp(prefix="prefect-home-")
        self.log_path = os.path.join(self.home, "server.log")
        env = {**os.environ,
               "PREFECT_HOME": self.home,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_API_URL": f"{self.url}/api",
               "PREFECT_SERVER_UI_V2_ENABLED": "true" if self.v2_ui else "false",
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        env.pop("PREFECT_API_URL", None)  # the server must not think it is a client of another server
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.prefect_exe, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # own process group -> killpg cleans up uvicorn + services
        try:
            self.startup_s = wait_http_ok(f"{self.api_url}/health", timeout)
        except Exception:
            self.stop()
            raise RuntimeError("prefect server failed to start:\n" + Path(self.log_path).read_text()[-3000:])
        return self

    def stop(self, keep_home: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        if self.home and not keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# Prefect UI URL patterns (V1 UI, the default at "/"; prefix "/v2" for the V2 UI) ------------
def url_flow_run(base: str, flow_run_id: str, tab: str | None = None, v2: bool = False) -> str:
    # NB: V1 ignores ?tab=Artifacts on a fresh load (falls back to ?tab=Logs) -> click the tab,
    # see open_flow_run_artifacts_tab. V2 honours ?tab=Artifacts.
    return f"{base}{'/v2' if v2 else ''}/runs/flow-run/{flow_run_id}" + (f"?tab={tab}" if tab else "")


def url_artifact(base: str, artifact_id: str, v2: bool = False) -> str:
    return f"{base}{'/v2' if v2 else ''}/artifacts/artifact/{artifact_id}"  # renders the content


def url_artifact_key(base: str, key: str, v2: bool = False) -> str:
    return f"{base}{'/v2' if v2 else ''}/artifacts/key/{key}"  # version timeline only, no content


# Browser (Selenium) ----------------------------------------------------------------------------
def make_driver(width: int = 1400, height: int = 1000, extra_args: tuple = ()):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
              "--no-first-run", "--disable-extensions", *extra_args):
        opts.add_argument(a)
    # explicit Service path => Selenium Manager never runs (it would try the network)
    drv = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, log_output=subprocess.DEVNULL))
    drv.set_page_load_timeout(60)
    return drv


@contextlib.contextmanager
def browser(**kw):
    d = make_driver(**kw)
    try:
        yield d
    finally:
        d.quit()


def wait_for(driver, css: str | None = None, text: str | None = None, timeout: float = 30.0,
             images: bool = True, min_images: int = 0, settle: float = 0.3):
    """Wait for SPA render: readyState complete, optional CSS selector present, optional text in
    body, and (optionally) every <img> complete. Returns the element for css (or None)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    w = WebDriverWait(driver, timeout, poll_frequency=0.2)
    w.until(lambda d: d.execute_script("return document.readyState") == "complete")
    el = None
    if css:
        el = w.until(lambda d: (d.find_elements(By.CSS_SELECTOR, css) or [None])[0])
    if text:
        w.until(lambda d: text in d.execute_script("return document.body.innerText"))
    if min_images:  # big markdown renders asynchronously: "no <img> yet" is vacuously "all complete"
        w.until(lambda d: d.execute_script("return document.images.length") >= min_images)
    if images:
        w.until(lambda d: d.execute_script(JS_IMAGES_DONE))
    time.sleep(settle)  # let Vue/React finish layout after the last mutation
    return el


def image_states(driver) -> list:
    """[[src[:40], complete, naturalWidth], ...]; loaded <=> complete and naturalWidth > 0
    (a broken image is complete=True with naturalWidth=0)."""
    return driver.execute_script(JS_IMAGES)


def broken_images(driver) -> list:
    return [s for s in image_states(driver) if not (s[1] and s[2] > 0)]


def read_table(driver, css: str = "table") -> dict | None:
    """{'head': [...], 'rows': [[cell text, ...], ...]} for the first matching table."""
    return driver.execute_script(JS_TABLE, css)


def overflow(driver) -> dict:
    return driver.execute_script(JS_OVERFLOW)


JS_CONTENT_HEIGHT = """
// Prefect's layout scrolls inside an inner element, not the document, so CDP
// captureBeyondViewport alone still yields one viewport. Find the tallest scroller.
let h = document.documentElement.scrollHeight;
document.querySelectorAll('*').forEach(e => {
  const s = getComputedStyle(e).overflowY;
  if ((s === 'auto' || s === 'scroll') && e.scrollHeight > e.clientHeight)
    h = Math.max(h, e.scrollHeight + e.getBoundingClientRect().top);
});
return Math.ceil(h);
"""


def screenshot(driver, path: str | os.PathLike, full_page: bool = True, max_height: int = 12000) -> str:
    """PNG screenshot. full_page: temporarily grow the window to the content height
    (works for inner scroll containers too), then restore the size."""
    path = str(path)
    if not full_page:
        driver.save_screenshot(path)
        return path
    size = driver.get_window_size()
    h = min(max_height, max(size["height"], driver.execute_script(JS_CONTENT_HEIGHT)))
    try:
        driver.set_window_size(size["width"], h + 20)
        time.sleep(0.5)
        h2 = min(max_height, driver.execute_script(JS_CONTENT_HEIGHT))  # re-layout may change height
        if h2 > h:
            driver.set_window_size(size["width"], h2 + 20)
            time.sleep(0.5)
        driver.save_screenshot(path)
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def open_artifact(driver, base: str, artifact_id: str, v2: bool = False, timeout: float = 30.0,
                  min_images: int = 0):
    """Open an artifact detail page and wait until its content rendered
    (pass min_images = number of images you expect, for markdown with images)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url_artifact(base, artifact_id, v2))
    if v2:
        # V2 (React) has no stable class names; the title becomes "Artifact: <key> • Prefect Server"
        # once the artifact is fetched, and the "Artifact | Raw" tabs render with the content.
        WebDriverWait(driver, timeout, 0.2).until(lambda d: d.title.startswith("Artifact:"))
        wait_for(driver, text="Raw", timeout=timeout, min_images=min_images, settle=0.5)
    else:
        # V1 (Vue): content lives in section.artifact-data-view (markdown: article.markdown-renderer,
        # table: table.p-table__table, progress: div.artifact-data-progress). NB the "Show raw data"
        # button only exists in the wide (>= ~1280 px) layout; narrow layouts use Artifact/Details/Raw tabs.
        wait_for(driver, css=".artifact-data-view", timeout=timeout, min_images=min_images)


def open_flow_run_artifacts_tab(driver, base: str, flow_run_id: str, v2: bool = False,
                                timeout: float = 30.0, expect_cards: bool = True) -> str:
    """Show the Artifacts tab of a flow run; returns the tab's innerText.
    Cards link to /artifacts/artifact/<id>; they show type/key/description only, no content.
    V1 renders the cards in a virtual scroller: use a tall window (e.g. 1400x2200) or scroll,
    otherwise off-screen cards (e.g. the "Task runs" group) are not in the DOM."""
    card = 'a[href*="/artifacts/artifact/"]'
    if v2:
        driver.get(url_flow_run(base, flow_run_id, "Artifacts", v2=True))  # V2 honours ?tab=
        wait_for(driver, css=card if expect_cards else "main", timeout=timeout)
        time.sleep(0.5)
        return driver.execute_script("return (document.querySelector('main') || document.body).innerText")
    driver.get(url_flow_run(base, flow_run_id))  # V1 drops ?tab=Artifacts on a fresh load -> click
    tab = wait_for(driver, css="li.p-tab#artifacts", timeout=timeout)
    tab.click()
    wait_for(driver, css="#artifacts-content " + (card if expect_cards else ".flow-run-artifacts"), timeout=timeout)
    time.sleep(0.5)
    return driver.execute_script("return document.querySelector('#artifacts-content').innerText")


def open_local_html(driver, path: str | os.PathLike, timeout: float = 30.0):
    """Open a local HTML file (relative <img src> next to it load fine over file://)."""
    driver.get(Path(path).resolve().as_uri())
    wait_for(driver, timeout=timeout)
