"""Profiles: a small shareable file that makes an agent (the talk's "custom GPTs").

    profile = Profile.load("tutor.json")     # LlmosError naming the bad field
    profile.write("copy.json")               # atomic
    llmos os --model M --profile tutor.json

A profile is JSON: {"name": "tutor", "system_prompt": "You teach ...", "tools": ["calculator"],
"allow": [], "files": ["notes/ch1.md"], "budget": 2048}. Only "name" is required. `tools` are the
tools offered (beside the memory tools), `allow` those whose side effects need no confirmation,
`files` documents put in archival memory when the session first uses the profile (as untrusted
"document" text: a shared profile's files are someone else's words). Relative file paths are
relative to the profile file, so a folder with a profile and its files can be shared as it is.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmos.common import LlmosError, atomic_write

FIELDS = {"name": str, "system_prompt": str, "tools": list, "allow": list, "files": list, "budget": int}


@dataclass
class Profile:
    name: str
    system_prompt: str = ""
    tools: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    budget: int = 0  # 0: the command line's --budget
    folder: Path = field(default=Path("."), repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise LlmosError(f"cannot read the profile {path}: {e.strerror}") from None
        except ValueError as e:
            raise LlmosError(f"the profile {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise LlmosError(f"the profile {path} must be a JSON object with at least a \"name\"")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise LlmosError(f"the profile {path} has unknown field(s) {', '.join(unknown)}; "
                             f"fields are: {', '.join(FIELDS)}")
        for key, kind in FIELDS.items():
            if key in data and not isinstance(data[key], kind) or (kind is list and key in data
                                                                   and not all(isinstance(x, str) for x in data[key])):
                want = "a list of strings" if kind is list else kind.__name__
                raise LlmosError(f"the profile {path}: \"{key}\" must be {want}")
        if not data.get("name"):
            raise LlmosError(f"the profile {path} needs a \"name\"")
        profile = cls(**data, folder=path.parent)
        for name in profile.files:
            if not profile.file_path(name).is_file():
                raise LlmosError(f"the profile {path} names the file {name}, which is not there "
                                 f"(paths are relative to the profile's folder)")
        return profile

    def file_path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.folder / path

    def write(self, path: str | Path) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "folder"}
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
