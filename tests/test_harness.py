"""The harness's own promise: a declared dev dependency or a component that is missing skips a test
on a developer's machine, naming what to install, and fails it under CI=true (a broken install must
not pass as green)."""
import subprocess
import sys
from pathlib import Path

PROBE = '''
import sys
sys.path.insert(0, {tests!r})
from conftest import require, unavailable

def test_needs_a_module():
    require("llmos_no_such_module")

def test_needs_a_component():
    unavailable("the frobnicator is not installed")
'''


def run_probe(tmp_path, ci: str) -> str:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE.format(tests=str(Path(__file__).parent)))
    env = {"PATH": "/usr/bin:/bin", "CI": ci}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", str(probe)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    return done.stdout


def test_missing_pieces_skip_on_a_developer_machine(tmp_path):
    out = run_probe(tmp_path, ci="")
    assert "2 skipped" in out and "llmos_no_such_module is not installed: run `make dev`" in out


def test_missing_pieces_fail_under_ci(tmp_path):
    out = run_probe(tmp_path, ci="true")
    assert "2 failed" in out
    assert "No module named 'llmos_no_such_module'" in out and "the frobnicator is not installed (CI=true" in out
