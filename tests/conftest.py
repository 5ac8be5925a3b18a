"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import postgres_server
import pytest
import yaml
from dvc_repo import Background, clean_env, copy_workspace, kill_and_resume, make_clone, run


@pytest.fixture
def http_server(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; records each GET path."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}/", root=root, hits=hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _session_uses(session: pytest.Session, fixture: str) -> bool:
    """Whether a test this session runs uses `fixture` (directly or through another)."""
    return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(autouse=True)
def float32_policy_after():
    """Every test leaves Keras' global dtype policy float32. A test that runs train() sets
    the policy of `precision: auto`, mixed_bfloat16 where bfloat16 is native (AVX512_BF16,
    AMX, sm_80+); left in place, it would make a later test's models compute in bfloat16.
    Where no test of this process imported Keras, there is no policy to reset, and importing
    it here would cost seconds (TensorFlow) in processes that never need it."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_dtype_policy("float32")


# The fixtures of the end-to-end tests that share the session's tiny pipeline (`head_start`).
PIPELINE_FIXTURES = ("pipeline", "killed_and_resumed", "served")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config,
                                  items: list[pytest.Item]) -> Iterator[None]:
    """Under pytest-xdist (`-n 2 --dist loadgroup`, pyproject's addopts), every test that
    uses the shared pipeline runs on one worker: the tests change the pipeline's repo in
    turn, and a session fixture runs once per worker, so a second worker would build
    another. It is the largest group, so the scheduler hands it out first, and the
    pipeline starts with that worker's first test; the other worker takes everything else.

    xdist groups by a suffix `@<group>` that its own hook adds to each marked test's node
    id; with pytest 9.2 that no longer takes (pytest-xdist#1386: pytest keeps the id in
    `_id` now), so where the suffix is missing after every hook ran, it is added here."""
    for item in items:
        if set(PIPELINE_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("pipeline"))
    result = yield
    if hasattr(config, "workerinput") and config.getoption("loadgroup", False):
        for item in items:
            mark = item.get_closest_marker("xdist_group")
            if mark is not None and "@" not in item.nodeid:
                item._id = type(item._id).parse(f"{item.nodeid}@{mark.args[0]}")
    return result


class HeadStart:
    """The session's slowest setup, run in the background (`Background`) beside the
    in-process tests (a tiny `dvc repro` keeps about one of two cores busy) instead of
    after them. Only what the session's tests use:

    - `pipeline`: a `Background` whose result is the `pipeline` fixture's value;
    - `resume`: a `Background` running test_resume.py's kill-and-resume scenario
      (`dvc_repo.kill_and_resume`) beside it, on a `git clone` of the pipeline's first
      commit (the same sources, whatever changes in this working tree meanwhile);
    - `served`: a `Background` running test_postgres.py's scenario
      (`postgres_server.track_on_postgres`) on a copy of the pipeline's workspace taken
      as soon as its repro ends, before any test changes it; None where PostgreSQL
      cannot run (`postgres_server.unavailable()` says why).

    Each is None where the session does not use it. `start()` starts them all, once; asking
    for one starts them too. Their commands get the environment as it is at the start.
    """

    def __init__(self, session: pytest.Session, tmp_path_factory: pytest.TempPathFactory):
        self._session, self._tmp = session, tmp_path_factory
        self._jobs: SimpleNamespace | None = None

    @property
    def pipeline(self) -> Background | None:
        return self.start().pipeline

    @property
    def resume(self) -> Background | None:
        return self.start().resume

    @property
    def served(self) -> Background | None:
        return self.start().served

    def start(self) -> SimpleNamespace:
        """Start the jobs the session's tests use (once); returns them."""
        if self._jobs is not None:
            return self._jobs
        session, tmp_path_factory = self._session, self._tmp
        jobs = self._jobs = SimpleNamespace(pipeline=None, resume=None, served=None)
        resume = _session_uses(session, "killed_and_resumed")
        served = _session_uses(session, "served") and postgres_server.unavailable() is None
        if not (_session_uses(session, "pipeline") or resume or served):
            return jobs
        env = clean_env()
        path = tmp_path_factory.mktemp("clone")
        commit = make_clone(path)
        if resume:
            resume_repo = tmp_path_factory.mktemp("killed")
            run(["git", "clone", "-q", str(path), str(resume_repo)], resume_repo.parent)
        if served:
            pg_root = tmp_path_factory.mktemp("pg")

        def repro() -> SimpleNamespace:
            first_repro = run(["dvc", "repro"], path, env=env).stdout
            first_lock = yaml.safe_load((path / "dvc.lock").read_text())
            if served:
                copy_workspace(path, pg_root / "clone", mlflow_store=False)
            return SimpleNamespace(path=path, commit=commit, first_repro=first_repro,
                                   first_lock=first_lock)

        jobs.pipeline = Background(repro)
        if resume:
            jobs.resume = Background(lambda: kill_and_resume(resume_repo, env))
        if served:
            jobs.served = Background(
                lambda: postgres_server.track_on_postgres(pg_root, jobs.pipeline, env))
        return jobs

    def finish(self) -> None:
        """Let the jobs end (tests stopped early: -x, ^C), and stop the servers still
        running."""
        if self._jobs is None:
            return
        for job in (self._jobs.pipeline, self._jobs.resume, self._jobs.served):
            if job is not None:
                job.join()
        if self._jobs.served is not None:
            with contextlib.suppress(BaseException):
                self._jobs.served.result().stop()


@pytest.fixture(scope="session", autouse=True)
def head_start(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadStart]:
    """The session's `HeadStart`, started before the first test. Under pytest-xdist it
    starts when a test first asks for it instead: only the worker that runs the pipeline's
    group (see `pytest_collection_modifyitems`) builds the pipeline, from its first test."""
    jobs = HeadStart(request.session, tmp_path_factory)
    if not hasattr(request.config, "workerinput"):  # not an xdist worker
        jobs.start()
    yield jobs
    jobs.finish()


@pytest.fixture(scope="session")
def pipeline(head_start: HeadStart) -> SimpleNamespace:
    """A tiny copy of this repo in a git repo, after one real `dvc repro` (about a minute,
    started by `head_start` before the first test).

    Shared by test_pipeline.py, test_experiments.py, test_distribution.py, test_remote.py
    and test_postgres.py (which copy its workspace) and test_resume.py (which clones its
    first commit).
    Attributes: `path`, `commit` (the commit the repro ran at), `first_repro` (its stdout)
    and `first_lock` (the dvc.lock it wrote, parsed; later tests change the repo).
    """
    return head_start.pipeline.result()
