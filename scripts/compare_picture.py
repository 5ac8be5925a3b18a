"""Render MLflow's "compare runs" view (params side by side, metric charts) to a PNG.

Starts `mlflow ui` on 127.0.0.1 (a free port) against the tracking store, opens the
UI's compare-runs page for a few runs in headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright: no browser download), waits until it has rendered the runs, their
parameters, metrics and a chart, makes `--metric` the one metric of the Parallel
Coordinates Plot (MLflow picks the first shared one, d_fake; its params stay the
differing ones), saves a screenshot, and stops the browser and the server, also on
errors. Needs no network.

Run from the repo root (or anywhere), after a few `dvc exp run`s:
    python scripts/compare_picture.py [--store sqlite:///path/mlflow.db] [--runs ID,ID,...]
                                      [--count 3] [--metric NAME] [--out docs/compare.png]
Defaults: the store `sqlite:///<repo root>/mlflow.db`, artifacts under the `mlruns`
folder next to the database file; the `--count` most recent FINISHED runs of the
`dcgan` experiment tagged `dvc_exp_name` (made by `dvc exp run`), else the most recent
finished ones; the metric frechet_distance. Needs `apt-get install -y chromium` and
`pip install -r requirements-docs.txt`. Exits 2 when Chromium or Playwright is missing,
the store is missing or has no such runs, or a run lacks the metric; 1 when the server
or the page fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Page, sync_playwright
except ImportError:
    sync_playwright = None

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
EXPERIMENT = "dcgan"
WIDTH, HEIGHT, MAX_HEIGHT = 1400, 1100, 6000  # viewport; the tallest picture, in pixels
RENDER_TIMEOUT_MS = 90_000
# Playwright adds --headless, --no-sandbox, its profile dir and most no-network switches;
# these make sure nothing reaches out (QUIC, sync, component updates, crash uploads).
CHROMIUM_FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-breakpad"]
ASSISTANT_CLOSE = '[data-component-id$="assistant.chat_panel.close"]'  # opens by itself
# The Parallel Coordinates Plot's Metrics selector (a multiple Select after its label), its
# chips and their crosses; polled: the plot's SVG has an axis for `metric`, none for `dropped`.
METRICS_SELECT = 'div:text-is("Metrics:") + div'
CHIP, CHIP_REMOVE = '[class*="selection-item-content"]', '[class*="selection-item-remove"]'
AXES_JS = """({metric, dropped}) => {
  const titles = [...document.querySelectorAll(".pcp-plot .axis-title")].map(t => t.textContent);
  return titles.includes(metric) && !dropped.some(d => titles.includes(d));
}"""
# Polled in the page: false until every run id, the "Run details", "Parameters" and
# "Metrics" sections and a chart are shown with no spinner, and the page has stayed the
# same for a second; then how much <main> scrolls and where the Metrics section ends.
RENDERED_JS = """({ids, round, assistant}) => {
  const main = document.querySelector("main") || document.body;
  const $$ = selector => [...document.querySelectorAll(selector)];
  const headers = $$("[class*=collapse-header]"), sections = headers.map(h => h.innerText.trim());
  const metrics = headers[sections.indexOf("Metrics")]?.closest("[class*=collapse-item]");
  const state = {text: main.innerText, sections, overflow: main.scrollHeight - main.clientHeight,
    spinners: $$('[role="progressbar"], [class*="spinner" i], [class*="skeleton" i]').length,
    plots: $$(".js-plotly-plot .main-svg").length, assistant: $$(assistant).length,
    metricsBottom: metrics ? Math.ceil(metrics.getBoundingClientRect().bottom) : null};
  const ready = ids.every(id => state.text.includes(id)) && state.plots && !state.spinners
    && ["Run details", "Parameters", "Metrics"].every(s => sections.includes(s));
  const key = JSON.stringify(state), last = window.__comparePicture;
  if (ready && last?.round === round && last.key === key)
    return performance.now() - last.since >= 1000 && state;
  window.__comparePicture = ready && {round, key, since: performance.now()};
  return false;
}"""


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO_ROOT / 'mlflow.db'}",
                        help="tracking store URI (default: the repo's mlflow.db)")
    parser.add_argument("--runs", default="", help="comma-separated run ids to compare")
    parser.add_argument("--count", type=int, default=3, help="how many recent runs (default 3)")
    parser.add_argument("--metric", default="frechet_distance",
                        help="the Parallel Coordinates Plot's metric (default frechet_distance)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "compare.png",
                        help="PNG to write (default docs/compare.png)")
    return parser.parse_args()


def sqlite_path(store: str) -> Path | None:
    """The database file of a `sqlite:///` store URI, else None."""
    prefix = "sqlite:///"
    return Path(store[len(prefix):]).resolve() if store.startswith(prefix) else None


def pick_runs(client: MlflowClient, run_ids: list[str], count: int) -> list[Run]:
    """The given runs, or the `count` latest finished `dcgan` runs, `dvc exp run` ones first."""
    if run_ids:
        return [client.get_run(run_id) for run_id in run_ids]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    order, finished = ["attributes.start_time DESC"], "attributes.status = 'FINISHED'"
    ids = [experiment.experiment_id]
    tagged = client.search_runs(ids, f"{finished} and tags.dvc_exp_name != ''",
                                order_by=order, max_results=count)
    return tagged or client.search_runs(ids, finished, order_by=order, max_results=count)


@contextlib.contextmanager
def mlflow_ui(store: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Serve `store` with `mlflow ui` in its own session for the `with` block: (URL, process).

    Telemetry and the background job runner are off. On exit the whole process group
    (gunicorn/uvicorn workers included) gets SIGTERM, then SIGKILL for what is left.
    """
    with socket.socket() as sock:  # a port that nothing listens on right now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    database = sqlite_path(store)
    artifacts = (database.parent if database else REPO_ROOT).joinpath("mlruns").as_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
               "--default-artifact-root", artifacts, "--artifacts-destination", artifacts,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        with contextlib.suppress(ProcessLookupError):  # leftovers, and a server that hung
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def wait_healthy(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `base`/health until it answers; fail if the server quits or takes 2 minutes."""
    deadline = time.monotonic() + 120
    while server.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health", timeout=2):
            return
        time.sleep(0.3)
    last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
    state = "did not answer" if server.returncode is None else f"exited ({server.returncode})"
    raise RuntimeError(f"mlflow ui {state}: {last}")


def differing(runs: list[Run]) -> list[str]:
    """The sections ("Parameters", "Metrics") whose values are not the same in all runs."""
    sections = {"Parameters": [run.data.params for run in runs],
                "Metrics": [run.data.metrics for run in runs]}
    return [name for name, values in sections.items() if any(v != values[0] for v in values)]


def wait_rendered(page: Page, runs: list[Run], round_: int) -> dict[str, Any]:
    """Wait until the compare view is rendered and steady for a second; return its state."""
    arg = {"ids": [run.info.run_id for run in runs], "round": round_, "assistant": ASSISTANT_CLOSE}
    try:
        return page.wait_for_function(RENDERED_JS, arg=arg, polling=250,
                                      timeout=RENDER_TIMEOUT_MS).json_value()
    except PlaywrightError as error:
        text = " ".join(page.locator("body").inner_text(timeout=5000).split())
        raise RuntimeError(f"the compare page did not render in {RENDER_TIMEOUT_MS // 1000} s; "
                           f"it shows: {text[:300]!r}") from error


def select_metric(page: Page, metric: str) -> None:
    """Make `metric` the only chip of the Parallel Coordinates Plot's Metrics selector and wait
    until the plot's SVG has redrawn with its axis, and without the removed ones. Raises
    RuntimeError if the selector, the option or the axis does not show up."""
    select = page.locator(METRICS_SELECT)
    try:
        dropped = [chip for chip in select.locator(CHIP).all_inner_texts() if chip != metric]
        while select.locator(CHIP_REMOVE).count():  # MLflow's pick: the first shared metric
            cross = select.locator(CHIP_REMOVE).first.element_handle()
            cross.click()
            cross.wait_for_element_state("hidden")  # React has dropped the chip
        select.get_by_role("combobox").click()
        page.keyboard.type(metric)  # the list is virtual: only the options in view exist
        page.locator(f'[class*="select-item-option"][title={json.dumps(metric)}]').click()
        select.locator(f"{CHIP}:text-is({json.dumps(metric)})").wait_for()
        page.keyboard.press("Escape")  # a multiple Select keeps its list open
        if (chips := select.locator(CHIP).all_inner_texts()) != [metric]:
            raise RuntimeError(f"the Metrics selector holds {chips}, not [{metric!r}]")
        page.wait_for_function(AXES_JS, arg={"metric": metric, "dropped": dropped}, polling=250,
                               timeout=RENDER_TIMEOUT_MS)
    except PlaywrightError as error:  # one line, saying what failed
        first = (str(error).strip().splitlines() or [repr(error)])[0]
        raise RuntimeError(f"could not plot {metric!r} in the Parallel Coordinates Plot: "
                           f"{first}") from error


def capture(page: Page, base: str, runs: list[Run], metric: str) -> bytes:
    """Open the compare view of `runs`, wait, tidy it, plot `metric`; a PNG down to Metrics."""
    ids = [run.info.run_id for run in runs]  # route: /compare-runs?runs=[...]&experiments=[...]
    experiments = sorted({run.info.experiment_id for run in runs})
    query = urllib.parse.urlencode({"runs": json.dumps(ids, separators=(",", ":")),
                                    "experiments": json.dumps(experiments, separators=(",", ":"))})
    page.goto(f"{base}/#/compare-runs?{query}")
    wait_rendered(page, runs, 1)
    close = page.locator(ASSISTANT_CLOSE)
    if close.count():  # the MLflow Assistant side panel
        close.first.click()
    select_metric(page, metric)
    for section in differing(runs):
        switch = page.get_by_role("switch", name=f"{section} - Show diff only", exact=True)
        if switch.count():
            switch.check()
    page.mouse.move(0, 0)  # the clicks leave the pointer, and a hover look, on the page
    state = wait_rendered(page, runs, 2)
    # Grow the viewport so <main> needs no scrolling (the clicks may have scrolled it).
    height = min(HEIGHT + state["overflow"], MAX_HEIGHT)
    page.set_viewport_size({"width": WIDTH, "height": height})
    page.locator("main").evaluate("main => main.scrollTo(0, 0)")
    state = wait_rendered(page, runs, 3)
    if state["metricsBottom"]:  # crop below the Metrics section
        height = min(height, state["metricsBottom"] + 16)
    return page.screenshot(clip={"x": 0, "y": 0, "width": WIDTH, "height": height})


def render(store: str, runs: list[Run], metric: str, out: Path) -> None:
    """Serve `store` with `mlflow ui`, screenshot its compare view of `runs` into `out`."""
    with tempfile.TemporaryDirectory(prefix="compare_picture_", ignore_cleanup_errors=True) as tmp:
        tmp_dir = Path(tmp)
        # Keep what the browser writes in the temp dir: the profile and Chromium's
        # org.chromium.Chromium.* socket dir go in $TMPDIR (the latter is left behind when
        # Chromium is killed), and Debian's wrapper writes ~/.config/chromium unless XDG_*.
        os.environ["TMPDIR"] = tmp
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_dir / "config"),
               "XDG_CACHE_HOME": str(tmp_dir / "cache")}
        log = tmp_dir / "mlflow.log"
        with mlflow_ui(store, log) as (base, server), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                                 env=env)  # starts while the server boots
            wait_healthy(base, server, log)
            with browser:
                page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                png = capture(page, base, runs, metric)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)


def fail(message: str, code: int) -> int:
    """Print a one-line error; return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def main() -> int:
    """Pick the runs, render the picture, print where it went and what it compares."""
    args = parse_args()
    # The server runs in its own session: on SIGTERM, unwind so that it is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if sync_playwright is None:
        return fail("this script needs Playwright: pip install playwright==1.65.2 "
                    f"(no browser download: it drives {CHROMIUM})", 2)
    if not CHROMIUM.exists():
        return fail(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`", 2)
    database = sqlite_path(args.store)
    if database and not database.is_file():  # MLflow would create an empty one
        return fail(f"no database {database}", 2)
    run_ids = [run_id.strip() for run_id in args.runs.split(",") if run_id.strip()]
    try:
        runs = pick_runs(MlflowClient(tracking_uri=args.store), run_ids, args.count)
    except MlflowException as error:
        return fail(error.message, 2)
    if not runs:
        return fail(f"no finished runs of experiment {EXPERIMENT!r} in {args.store}", 2)
    missing = [run.info.run_name for run in runs if args.metric not in run.data.metrics]
    if missing:  # the plot would draw a made-up value for them
        return fail(f"no metric {args.metric!r} in run(s) {', '.join(missing)}", 2)
    try:
        render(args.store, runs, args.metric, args.out)
    except (RuntimeError, OSError, PlaywrightError) as error:
        # One line: the first of the message, and how the browser exited (Playwright's log).
        lines = str(error).strip().splitlines() or [repr(error)]
        exited = [line.strip(" -") for line in lines if "process did exit" in line]
        return fail("; ".join(lines[:1] + exited[-1:]), 1)
    except KeyboardInterrupt:  # the server and the browser are stopped by now
        return 130
    print(args.out)
    for run in runs:
        print(f"  {run.info.run_name} ({run.info.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
