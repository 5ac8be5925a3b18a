"""`dvc plots show` and `dvc plots diff` draw every chart of dvc.yaml's `plots:` with no network.

The charts are Vega-Lite specs that vega-embed draws in the page DVC writes. dvc-render's
own page loads vega, vega-lite and vega-embed from a CDN, so offline they are blank; so
.dvc/config names plots/template.html, which inlines vendored builds
(scripts/vendor_plots.py). Here, in a throw-away git + DVC copy of this repo, with small
history.csv and quality.csv written directly (no training): the real `dvc plots show` and
`dvc plots diff` (workspace against HEAD, written with `-o` to a folder outside the repo),
each page opened from disk in real headless Chromium with the network off, and each chart's
SVG read back from the DOM Chromium dumps (the template has vega-embed draw SVG, not canvas,
so the marks are elements of the page). Every chart must draw one line per revision and
field, through all of that revision's epochs. With dvc-render's CDN page, none does.

The network is off at the kernel: Chromium runs in a new network namespace (`unshare -rn`),
whose only interface is a loopback that is down, so no packet of any kind (DNS, HTTP, QUIC,
WebSocket, prefetch) has a route, whatever Chromium's own settings. Where user namespaces
are not allowed it falls back on Chromium's flags: every request, loopback included, through
a proxy on a closed port, and every host name resolved to nothing. test_network_is_off
proves whichever is used: the same page with its scripts served by an HTTP server on this
machine's 127.0.0.1 draws every chart when that is reachable, and must draw nothing, with no
request seen by the server, when the network is off.

Skips only where Chromium is missing (CI installs it: scripts/ci_services.sh).
Run with `pytest tests/test_plots.py -q` (about 15 s).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dvc_render.base import Renderer
from dvc_repo import REPO, commit_all, make_clone, run

# epochs of the committed CSVs (HEAD) and of the workspace's: lines of different lengths tell
# the two revisions apart in `dvc plots diff`.
EPOCHS = {"HEAD": 6, "workspace": 9}
# Inlined builds, as scripts/vendor_plots.py writes them: name, version, then the code.
INLINED = re.compile(r"<!-- (\S+) (\S+), \S+: plots/LICENSE-\S+ -->\s*<script>(.*?)</script>",
                     re.DOTALL)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]  # virtual time: let vega finish drawing, in ~1 s
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def _charts() -> dict[str, list[str]]:
    """dvc.yaml's charts (not images): the page's div id of each -> the fields it plots."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    return {Renderer.remove_special_chars(name): [f for fields in spec["y"].values()
                                                  for f in fields]
            for item in plots if isinstance(item, dict) for name, spec in item.items()}


def _offline() -> tuple[list[str], list[str], str]:
    """How to start Chromium with no network: command prefix, flags, and how, in words."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"],
                                                  capture_output=True).returncode == 0:
        return ["unshare", "-rn"], [], "a network namespace of its own"
    return [], ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--host-resolver-rules=MAP * ~NOTFOUND"], "a dead proxy (no user namespaces)"


class _LineMarks(HTMLParser):
    """Vega's SVG line marks in a page: for each id'd element (DVC's chart divs), the
    (revision, field, number of vertices) of each line it drew. Vega labels each line mark
    'epoch: 1; loss: 1.2; rev: workspace; field: d_loss' (the first point)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str | None] = []
        self.lines: dict[str, list[tuple[str, str, int]]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        here = attr.get("id") or (self.ids[-1] if self.ids else None)
        if attr.get("aria-roledescription") == "line mark" and here:
            label = dict(item.split(": ", 1) for item in (attr.get("aria-label") or "").split("; ")
                         if ": " in item)
            vertices = len(re.findall(r"[ML]", attr.get("d") or ""))
            self.lines.setdefault(here, []).append((label.get("rev"), label.get("field"),
                                                    vertices))
        if tag not in VOID:
            self.ids.append(here)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.ids.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self.ids:
            self.ids.pop()


def line_marks(page: Path, chromium: SimpleNamespace, profile: Path) -> dict:
    """Open `page` from disk in headless Chromium with the network off; the line marks of
    the DOM once the page has settled (see _LineMarks)."""
    cmd = [*chromium.prefix, chromium.path, *FLAGS, *chromium.flags,
           f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-3000:]
    parser = _LineMarks()
    parser.feed(proc.stdout)
    return parser.lines


def _write_csvs(repo: Path, epochs: int, shift: float) -> None:
    """history.csv and quality.csv, as train writes them, for `epochs` epochs."""
    rows = range(1, epochs + 1)
    (repo / "data/train/history.csv").write_text("epoch,d_fake,d_loss,d_real,g_loss\n" + "".join(
        f"{e},{0.5 - 0.01 * e},{1.3 - 0.05 * e + shift},{0.5 + 0.02 * e},{2 - 0.1 * e}\n"
        for e in rows))
    (repo / "data/train/quality.csv").write_text("epoch,frechet_distance,frechet_distance_raw\n"
                                                 + "".join(f"{e},{90 / e + shift},{95 / e}\n"
                                                           for e in rows))


@pytest.fixture(scope="module")
def chromium() -> SimpleNamespace:
    """Chromium, and how to start it with no network; skips where it is not installed."""
    path = shutil.which("chromium") or shutil.which("/usr/bin/chromium")
    if path is None:
        pytest.skip("Chromium is not installed (`chromium` on PATH or /usr/bin/chromium); "
                    "scripts/ci_services.sh installs it with apt-get")
    prefix, flags, how = _offline()
    return SimpleNamespace(path=path, prefix=prefix, flags=flags, how=how)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A copy of this repo with EPOCHS["HEAD"] epochs of CSVs committed and
    EPOCHS["workspace"] in the workspace; `show`: the page of `dvc plots show` (dvc_plots/),
    `diff`: that of `dvc plots diff -o <a folder outside the repo>`."""
    repo = tmp_path_factory.mktemp("plots-repo")
    make_clone(repo)
    # The copied dvc.lock names outputs this copy has no cache for (data/generated), and
    # then DVC loads no plot of the revision at all; without it the plots are dvc.yaml's.
    (repo / "dvc.lock").unlink()
    _write_csvs(repo, EPOCHS["HEAD"], shift=0.0)
    commit_all(repo, "short run")
    _write_csvs(repo, EPOCHS["workspace"], shift=0.3)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "diff"
    run(["dvc", "plots", "show"], repo)
    run(["dvc", "plots", "diff", "-o", str(elsewhere)], repo)
    return SimpleNamespace(repo=repo, show=repo / "dvc_plots" / "index.html",
                           diff=elsewhere / "index.html")


def _assert_drawn(lines: dict, revisions: dict[str, int]) -> None:
    """Every chart of dvc.yaml drew each of its fields for each revision, every epoch."""
    for chart, fields in _charts().items():
        drawn = lines.get(chart, [])
        assert drawn, f"chart {chart!r} drew no line (blank chart)"
        assert {(rev, field) for rev, field, _ in drawn} == \
            {(rev, field) for rev in revisions for field in fields}, chart
        for rev, field, vertices in drawn:
            assert vertices == revisions[rev], (chart, rev, field, vertices)


def test_show_draws_every_chart_offline(pages: SimpleNamespace, chromium: SimpleNamespace,
                                        tmp_path: Path) -> None:
    _assert_drawn(line_marks(pages.show, chromium, tmp_path / "profile"),
                  {"workspace": EPOCHS["workspace"]})


def test_diff_elsewhere_draws_both_revisions_offline(pages: SimpleNamespace,
                                                     chromium: SimpleNamespace,
                                                     tmp_path: Path) -> None:
    assert not pages.diff.is_relative_to(pages.repo)
    _assert_drawn(line_marks(pages.diff, chromium, tmp_path / "profile"), EPOCHS)


def test_network_is_off(pages: SimpleNamespace, chromium: SimpleNamespace, tmp_path: Path,
                        http_server: SimpleNamespace) -> None:
    """The show page with its inlined builds served by an HTTP server on this machine's
    127.0.0.1 instead: it draws every chart where 127.0.0.1 can be reached (the control:
    only host names blocked), and no chart, with no request made, where the network is off.
    So the checks above could not have passed by fetching anything."""
    page = pages.show.read_text(encoding="utf-8")
    for name, _, code in INLINED.findall(page):
        (http_server.root / f"{name}.js").write_text(code, encoding="utf-8")
        page = page.replace(f"<script>{code}</script>",
                            f'<script src="{http_server.url}{name}.js"></script>')
    scripts = {f"/{path.name}" for path in http_server.root.iterdir()}
    assert len(scripts) == 3, "the page no longer inlines the 3 builds"
    served = pages.show.with_name("served.html")
    served.write_text(page, encoding="utf-8")

    reachable = SimpleNamespace(path=chromium.path, prefix=[],
                                flags=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
    assert sorted(line_marks(served, reachable, tmp_path / "control")) == sorted(_charts())
    assert set(http_server.hits) == scripts
    http_server.hits.clear()
    assert line_marks(served, chromium, tmp_path / "profile") == {}, chromium.how
    assert http_server.hits == [], f"Chromium reached 127.0.0.1 through {chromium.how}"


def test_dvc_uses_the_template_that_inlines_the_vendored_builds() -> None:
    """.dvc/config names plots/template.html (DVC resolves it against .dvc/); the template
    loads nothing from the network and inlines the builds plots/NOTICE.md records."""
    setting = run(["dvc", "config", "plots.html_template"], REPO).stdout.strip()
    template = (REPO / ".dvc" / setting).resolve()
    assert template == REPO / "plots" / "template.html"
    text = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{scripts}" not in text  # no CDN <script> tags
    assert not re.search(r"<script[^>]*\ssrc=", text)
    notice = (REPO / "plots" / "NOTICE.md").read_text(encoding="utf-8")
    inlined = INLINED.findall(text)
    assert [name for name, _, _ in inlined] == ["vega", "vega-lite", "vega-embed"]
    for name, version, code in inlined:
        digest = hashlib.sha256(code.encode("utf-8")).hexdigest()
        assert f"| {name} | {version} | " in notice and f"`{digest}`" in notice, name
        assert (REPO / "plots" / f"LICENSE-{name}").is_file()
