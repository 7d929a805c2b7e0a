"""The `python` tool: run code in a separate, contained process; return its output and charts.

    box = Toolbox.build("python")
    r = box.call("python", {"code": "import matplotlib.pyplot as plt; plt.plot([1, 4, 9])"})
    r.text      # "exit 0\n[1 chart]" plus stdout and stderr
    r.images    # [PNG bytes]: every figure left open is saved, as a notebook would show it
    describe_layers()   # what contains the code on this machine (printed by `llmos tools`)

Layers, strongest first; each one the machine cannot provide is named by `describe_layers()`, at
the start of `llmos serve`/`llmos chat` with the python tool, and in docs/tools.md:

- bubblewrap (Debian `bubblewrap`), when it runs here: new network, PID, IPC and UTS namespaces
  (no network at all, loopback included; every process the code starts dies with it), a read-only
  view of the filesystem with the user's home hidden, and under root also any folder closed to other
  users on the way to the Python installation (only the installation is bound back), a private
  writable folder as the working directory and a size-capped private /tmp.
- An unprivileged user: when llmos runs as root the code runs as `nobody` (root ignores
  RLIMIT_NPROC and may read /etc/shadow), with no capabilities and no way back.
- Resource limits (setrlimit): CPU seconds, address space (memory), file size (and so output
  size: stdout and stderr go to files), process count; a wall-clock limit kills the whole sandbox.

Without bubblewrap the code runs under the limits and the unprivileged user only, in a network
namespace where the kernel allows one, else behind a seccomp filter that refuses every socket but a
Unix one (`pyseccomp` over the system's libseccomp), without the read-only view or the private /tmp,
and a child process that leaves the session may outlive the call. Under root that mode also needs a
Python installation that `nobody` can read (a root-only home hides it): otherwise the tool refuses
to run and says so. The mode in force is `Sandbox().mode` ("bwrap" or "limits").
"""
from __future__ import annotations

import ctypes
import errno
import os
import pwd
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llmos.tools.registry import Tool, ToolConfig, ToolError, ToolResult, register

NOBODY = "nobody"
WORKDIR = "/tmp/work"  # the code's working directory inside bubblewrap (in its private /tmp)
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000

# Runs inside the sandbox: drop to the unprivileged user, run the code, save the charts left open.
RUNNER = r"""
import os, sys
uid = int(sys.argv[1])
if os.getuid() == 0 and uid != 0:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
os.environ.update(MPLBACKEND="Agg", MPLCONFIGDIR=os.path.join(os.getcwd(), ".mpl"), HOME=os.getcwd())
sys.argv = ["tool.py"]
source = open(".tool.py", encoding="utf-8").read()
try:
    exec(compile(source, "tool.py", "exec"), {"__name__": "__main__"})
finally:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        for i, n in enumerate(plt.get_fignums()):
            plt.figure(n).savefig(f"figure_{i + 1}.png", dpi=80)
"""

EXEC_LINE = next(i for i, line in enumerate(RUNNER.split("\n"), 1) if line.startswith("    exec("))
RUNNER_FRAME = f'  File "<string>", line {EXEC_LINE}, in <module>\n'  # cut from tracebacks: not the user's


@dataclass
class Limits:
    cpu_s: int = 10
    wall_s: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16  # any one file, stdout and stderr included
    tmp_mb: int = 64  # the private /tmp
    processes: int = 32  # beyond those the user already runs
    output_chars: int = 8_000  # of stdout and of stderr, returned to the model
    images: int = 4
    image_bytes: int = 2_000_000


@lru_cache(maxsize=1)
def bwrap_works() -> str | None:
    """None when bubblewrap can build a sandbox here, else why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        run = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--", "true"],
                             capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap could not start: {e}"
    if run.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {run.stderr.decode(errors='replace').strip()[:200]}"
    return None


def _unprivileged_uid() -> int:
    """The uid the code runs as: `nobody` under root, else the user's own."""
    if os.getuid() != 0:
        return os.getuid()
    try:
        return pwd.getpwnam(NOBODY).pw_uid
    except KeyError:
        return 65534


def _user_processes(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _unshare_network() -> bool:
    """Move this process into a new network namespace (only loopback, down). Needs root or user
    namespaces; False when neither is allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWNET | CLONE_NEWUSER
    return libc.unshare(flags) == 0


def _refuse_sockets() -> None:
    """A seccomp filter on this process and its children: socket() fails with EACCES for every
    family but AF_UNIX (set no_new_privs first, which also forbids gaining privileges by exec)."""
    import pyseccomp
    rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    rules.add_rule(pyseccomp.ERRNO(errno.EACCES), "socket", pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
    rules.load()


@lru_cache(maxsize=1)
def network_layer() -> str:
    """How the limits mode cuts the network here: "namespace", "seccomp" or "" (not at all)."""
    probe = "from llmos.tools.python_sandbox import _unshare_network as u; raise SystemExit(0 if u() else 1)"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0:
        return "namespace"
    try:
        import pyseccomp  # noqa: F401
        probe = "from llmos.tools.python_sandbox import _refuse_sockets as r; r()"
        if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0:
            return "seccomp"
    except (ImportError, OSError):  # no libseccomp on this system
        pass
    return ""


def bind_back(paths: list[Path], covered: set[Path]) -> list[str]:
    """bubblewrap arguments that show `paths` (read-only) again inside folders covered by a tmpfs,
    their parents made 0755 (bubblewrap would make them owner-only)."""
    args, made = [], set(covered)
    for path in sorted(paths):
        if any(folder in path.parents for folder in covered):
            for parent in reversed(path.parents):
                if any(folder in parent.parents for folder in covered) and parent not in made:
                    args += ["--perms", "0755", "--dir", str(parent)]
                    made.add(parent)
            args += ["--ro-bind", str(path), str(path)]
    return args


def _closed_folder(path: Path) -> Path | None:
    """The outermost folder on the way to `path` that other users cannot enter, or None."""
    for folder in [*reversed(path.parents), path]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


def unreachable_python(uid: int) -> str | None:
    """Why `uid` could not run this Python installation (a folder it cannot enter), or None."""
    if uid == os.getuid():
        return None
    for path in {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}:
        if (closed := _closed_folder(path)) is not None:
            return f"{closed} is closed to other users, and the Python installation lies inside it"
    return None


class Sandbox:
    def __init__(self, limits: Limits | None = None, mode: str | None = None):
        self.limits = limits or Limits()
        self.mode = mode or ("bwrap" if bwrap_works() is None else "limits")
        self.uid = _unprivileged_uid()

    def layers(self) -> dict[str, str]:
        """Each containment layer and whether it is in force here."""
        user = "runs as nobody (llmos runs as root)" if os.getuid() == 0 else "runs as the user (not root)"
        limits = (f"{self.limits.cpu_s} s CPU, {self.limits.wall_s:g} s wall, {self.limits.memory_mb} MB memory, "
                  f"{self.limits.file_mb} MB per file and output, {self.limits.processes} processes")
        if self.mode == "bwrap":
            return {"network": "none (network namespace, loopback included)",
                    "filesystem": f"read-only view, home hidden, private {WORKDIR} and /tmp ({self.limits.tmp_mb} MB)",
                    "processes": "own PID namespace: every process dies with the call",
                    "user": user, "limits": limits}
        why = bwrap_works() or "chosen"
        network = {"namespace": "none (network namespace)", "seccomp": "sockets refused (seccomp filter)",
                   "": "OPEN: neither a network namespace nor seccomp is available"}[network_layer()]
        blocked = unreachable_python(self.uid)
        return {"network": f"{network}; no bubblewrap: {why}",
                "filesystem": "NOT read-only: ordinary permissions of the user it runs as; private working folder",
                "processes": "process group killed after the call; a child that leaves the session may survive",
                "user": user + (f"; CANNOT RUN: {blocked}" if blocked else ""), "limits": limits}

    def _preexec(self, nproc: int):
        limits = self.limits

        def setup():
            os.setsid()
            mb = 1024 * 1024
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb,) * 2)
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if self.mode == "limits" and not _unshare_network():
                try:
                    _refuse_sockets()
                except (ImportError, OSError):  # reported by layers(): the network stays open
                    pass
        return setup

    def _command(self, work: Path) -> tuple[list[str], str]:
        """The argv to run and the working directory the code sees."""
        python = [sys.executable, "-I", "-c", RUNNER, str(self.uid)]
        if self.mode != "bwrap":
            return python, str(work)
        cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--perms", "1777", "--size", str(self.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        # Hidden behind empty folders: the user's home, and any folder the code's user could not enter
        # on the way to the Python installation (root's home, when it runs as nobody); the
        # installation itself is then bound back, read-only.
        needed = sorted({Path(p).resolve() for p in (sys.prefix, sys.base_prefix, Path(sys.executable).parent)})
        hidden = {Path.home().resolve()}
        if self.uid != os.getuid():
            hidden |= {closed for path in needed if (closed := _closed_folder(path)) is not None}
        hidden = {h for h in hidden if not any(other in h.parents for other in hidden)}  # outermost only
        for folder in sorted(hidden):
            cmd += ["--perms", "0755", "--tmpfs", str(folder)]
        cmd += bind_back(needed, hidden | {Path("/tmp")})  # the private /tmp hides a checkout there too
        cmd += ["--bind", str(work), WORKDIR, "--chdir", WORKDIR,
                "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1"]
        if os.getuid() == 0:  # keep only what the runner needs to become nobody
            cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        return cmd + ["--"] + python, WORKDIR

    def run(self, code: str) -> ToolResult:
        limits = self.limits
        if self.mode == "limits" and (blocked := unreachable_python(self.uid)):
            raise ToolError(f"the python tool cannot run here: it would run as nobody, but {blocked}; "
                            "install bubblewrap (Debian: apt-get install bubblewrap) or run llmos as an ordinary user")
        with tempfile.TemporaryDirectory(prefix="llmos-python-") as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            (work / ".tool.py").write_text(code, encoding="utf-8")
            if os.getuid() == 0:
                os.chown(work, self.uid, -1)
                os.chmod(tmp, 0o755)
            out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
            argv, _ = self._command(work)
            env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
            nproc = _user_processes(self.uid) + limits.processes
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                        preexec_fn=self._preexec(nproc), close_fds=True)
                timed_out = False
                try:
                    proc.wait(timeout=limits.wall_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    self._kill(proc)
            return self._result(proc.returncode, timed_out, work, out_path, err_path)

    def _kill(self, proc: subprocess.Popen) -> None:
        """End the process group (and with bubblewrap, the whole PID namespace with it)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def _result(self, code: int, timed_out: bool, work: Path, out_path: Path, err_path: Path) -> ToolResult:
        limits = self.limits
        parts = []
        if timed_out:
            parts.append(f"stopped: the code ran past the {limits.wall_s:g}-second wall-clock limit")
        elif _signal(code) == signal.SIGXCPU:
            parts.append(f"stopped: the code used more than {limits.cpu_s} seconds of CPU")
        elif _signal(code) == signal.SIGXFSZ:
            parts.append(f"stopped: a file or the output passed {limits.file_mb} MB")
        elif _signal(code) is not None:
            parts.append(f"stopped by signal {_signal(code).name}")
        elif max(out_path.stat().st_size, err_path.stat().st_size) >= limits.file_mb * 1024 * 1024:
            parts.append(f"stopped: the output passed {limits.file_mb} MB")  # Python ignores SIGXFSZ
        else:
            parts.append(f"exit {code}")
        for name, path in (("stdout", out_path), ("stderr", err_path)):
            with open(path, "rb") as f:
                data = f.read(limits.output_chars * 4 + 1)
            text = data.decode("utf-8", errors="replace")
            if len(text) > limits.output_chars or path.stat().st_size > len(data):
                text = text[:limits.output_chars] + f"\n[... {path.stat().st_size:,} bytes in all, cut]"
            text = text.replace(RUNNER_FRAME, "")
            if text.strip():
                parts.append(f"{name}:\n{text.rstrip()}")
        if "MemoryError" in parts[-1] or "Cannot allocate memory" in parts[-1]:
            parts.append(f"(the memory limit is {limits.memory_mb} MB)")
        if "Resource temporarily unavailable" in parts[-1]:
            parts.append(f"(the code may start at most {limits.processes} processes)")
        images = []
        for png in sorted(work.glob("*.png"))[:limits.images]:
            if not png.is_symlink() and png.stat().st_size <= limits.image_bytes:
                images.append(png.read_bytes())
        if images:
            parts.append(f"[{len(images)} chart{'s' if len(images) > 1 else ''}]")
        return ToolResult("\n".join(parts), images=images, error=timed_out or code != 0)


def _signal(code: int) -> signal.Signals | None:
    """The signal that ended the code: a negative return code, or bubblewrap's 128 + signal."""
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def describe_layers(sandbox: Sandbox | None = None) -> str:
    sandbox = sandbox or Sandbox()
    lines = [f"python tool: mode {sandbox.mode}"]
    lines += [f"  {k}: {v}" for k, v in sandbox.layers().items()]
    return "\n".join(lines)


@register("python")
def tools(config: ToolConfig) -> list[Tool]:
    sandbox = Sandbox(Limits(wall_s=config.python_wall_s, memory_mb=config.python_memory_mb))
    return [Tool("python", "Run Python 3 code in a sandbox without network; print results. numpy and matplotlib "
                 "are available; figures left open are returned as charts.",
                 {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"],
                  "additionalProperties": False},
                 lambda args: sandbox.run(args["code"]))]
