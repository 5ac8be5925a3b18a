"""Fixtures shared by the test modules."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dvc_repo import make_clone, run


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


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny copy of this repo in a git repo, after one real `dvc repro` (about a minute).

    Shared by test_pipeline.py, test_experiments.py, test_remote.py (which copies it) and
    test_resume.py. Attributes: `path`, `commit` (the commit the repro ran at), `first_repro`
    (its stdout) and `first_lock` (the dvc.lock it wrote, parsed; later tests change the repo).
    """
    path = tmp_path_factory.mktemp("clone")
    commit = make_clone(path)
    first_repro = run(["dvc", "repro"], path).stdout
    first_lock = yaml.safe_load((path / "dvc.lock").read_text())
    return SimpleNamespace(path=path, commit=commit, first_repro=first_repro,
                           first_lock=first_lock)
