"""Run an llmos command and interrupt it at a chosen point of its own work: the fault-injection tests.

    python tests/fault_child.py kill=ckpt:2 -- pretrain ...        # SIGKILL halfway through writing
                                                                 # this process's 2nd checkpoint
    python tests/fault_child.py kill=step:5 -- pretrain ...        # SIGKILL after this process's 5th step
    python tests/fault_child.py signal=SIGINT:10 -- pretrain ...   # Ctrl-C after the 10th step, as a user would
    torchrun ... tests/fault_child.py signal=SIGTERM:3 rank=1 -- pretrain ...   # only rank 1 is signalled

(Settings are KEY=VALUE words, not --options, which torchrun would try to read as its own.)
Points of `kill=WHERE:N` (N counts within this process, from 1): `step` (after the N-th training
step), `ckpt` (half of the N-th checkpoint's bytes written to its temp file), `metrics` (half of the
N-th metrics line written), `eval` (inside the N-th evaluation), `params` (while the final params
file is written: its temp file made, not yet renamed). Counting within the process, not by global step, makes every point reachable after
any resume, and choosing points by count rather than by time makes the test the same on any machine.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys

import torch

from llmos import params
from llmos.cli import main
from llmos.train import loop


def die_midway(f, data: bytes) -> None:
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill: str | None, sig: str | None, rank: int | None) -> None:
    if rank is not None and int(os.environ.get("RANK", "0")) != rank:
        return
    kill_at, kill_n = kill.split(":") if kill else ("", "0")
    sig_name, sig_step = sig.split(":") if sig else ("", "0")
    counts: dict[str, int] = {}

    def reached(where: str) -> bool:
        """Count one more `where` event; true when it is the one to kill at."""
        counts[where] = counts.get(where, 0) + 1
        return kill_at == where and counts[where] == int(kill_n)

    train_step, save, write_metrics = loop.Trainer.train_step, torch.save, loop.Trainer.write_metrics
    run_evaluation, save_bytes = loop.Trainer.run_evaluation, params.save

    def step(self, n):
        result = train_step(self, n)
        if reached("step"):
            os.kill(os.getpid(), signal.SIGKILL)
        if sig_name and counts["step"] == int(sig_step):
            os.kill(os.getpid(), getattr(signal, sig_name))
        return result

    def checkpoint(obj, f, *args, **kwargs):
        if reached("ckpt"):
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            die_midway(f, buffer.getvalue())
        return save(obj, f, *args, **kwargs)

    def metrics(self, record):
        if self.is_main and reached("metrics"):
            with open(self.metrics_path, "ab") as f:
                die_midway(f, (json.dumps(record) + "\n").encode())
        return write_metrics(self, record)

    def evaluation(self):
        if reached("eval"):
            os.kill(os.getpid(), signal.SIGKILL)
        return run_evaluation(self)

    def params_bytes(*args, **kwargs):
        data = save_bytes(*args, **kwargs)
        if reached("params"):  # the temp file is made, nothing written to it, no rename yet
            os.kill(os.getpid(), signal.SIGKILL)
        return data

    loop.Trainer.train_step, loop.torch.save, loop.Trainer.write_metrics = step, checkpoint, metrics
    loop.Trainer.run_evaluation, params.save = evaluation, params_bytes


if __name__ == "__main__":
    split = sys.argv.index("--")
    settings = dict(word.split("=", 1) for word in sys.argv[1:split])
    assert set(settings) <= {"kill", "signal", "rank"}, settings
    install(settings.get("kill"), settings.get("signal"), int(settings["rank"]) if "rank" in settings else None)
    sys.exit(main(sys.argv[split + 1:]))
