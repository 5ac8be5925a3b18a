"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib
import http.server
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
    AMX, sm_80+); left in place, it would make a later test's models compute in bfloat16."""
    yield
    import keras  # here, not at the top: collecting the tests needs no TensorFlow

    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="session", autouse=True)
def head_start(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The session's slowest setup, started in the background before the first test, so
    that it runs beside the in-process tests (a tiny `dvc repro` keeps about one of two
    cores busy) instead of after them. Only what the session's tests use:

    - `pipeline`: a `Background` whose result is the `pipeline` fixture's value;
    - `resume`: a `Background` running test_resume.py's kill-and-resume scenario
      (`dvc_repo.kill_and_resume`) beside it, on a `git clone` of the pipeline's first
      commit (the same sources, whatever changes in this working tree meanwhile);
    - `served`: a `Background` running test_postgres.py's scenario
      (`postgres_server.track_on_postgres`) on a copy of the pipeline's workspace taken
      as soon as its repro ends, before any test changes it; None where PostgreSQL
      cannot run (`postgres_server.unavailable()` says why).

    Each is None where the session does not use it. Their commands get the environment as
    it is now, before any test changes os.environ.
    """
    session = request.session
    jobs = SimpleNamespace(pipeline=None, resume=None, served=None)
    resume = _session_uses(session, "killed_and_resumed")
    served = _session_uses(session, "served") and postgres_server.unavailable() is None
    if _session_uses(session, "pipeline") or resume or served:
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
    yield jobs
    # Tests stopped early (-x, ^C): let the jobs end, and stop the servers still running.
    for job in (jobs.pipeline, jobs.resume, jobs.served):
        if job is not None:
            job.join()
    if jobs.served is not None:
        with contextlib.suppress(BaseException):
            jobs.served.result().stop()


@pytest.fixture(scope="session")
def pipeline(head_start: SimpleNamespace) -> SimpleNamespace:
    """A tiny copy of this repo in a git repo, after one real `dvc repro` (about a minute,
    started by `head_start` before the first test).

    Shared by test_pipeline.py, test_experiments.py, test_distribution.py, test_remote.py
    and test_postgres.py (which copy its workspace) and test_resume.py (which clones its
    first commit).
    Attributes: `path`, `commit` (the commit the repro ran at), `first_repro` (its stdout)
    and `first_lock` (the dvc.lock it wrote, parsed; later tests change the repo).
    """
    return head_start.pipeline.result()
