"""--paired: the reference computation (fp32 eager PyTorch on the same model, questions and decode mode: what the
baseline runs) in a second process, its timed passes alternating with the run's (A B, B A, ...). A speed-up is then
a ratio of passes timed side by side, which the machine's drift over minutes or hours cannot fake.

A process of its own, not a second model in this one: the run's memory, RSS and GPU peaks stay the run's own, and
the two never share the CPU, since each waits while the other's pass runs."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from pathlib import Path

import torch

from .config import Options, RunConfig, UsageError

NAME = "paired fp32-eager reference"


def reference_config(cfg: RunConfig) -> RunConfig:
    """The baseline's run of the same model and questions: fp32, eager, SDPA attention, nothing applied."""
    return dataclasses.replace(cfg, technique="baseline", options=Options(), attn_implementation="sdpa",
                               reference=None, paired=False, wandb="disabled")


def _serve(conn, cfg: RunConfig, threads: int) -> None:
    """The reference process: resolve and load as a baseline run does, answer a cold pass with its rows, then time
    one pass per request until the pipe closes."""
    from .harness import pass_runner
    from .modeling import load_model, resolve_device
    from .resolve import resolve

    devnull = os.open(os.devnull, os.O_WRONLY)  # the run prints its own lines; this one's are the same again
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.device)
        run = resolve(cfg, device, Path(os.devnull))
        one_pass = pass_runner(load_model(cfg, device), cfg, run)
        cold = one_pass()
        rows = {q.pmid: {"prediction": p, "gold": q.label, "logits": cold.logits[i] if cold.logits else None}
                for i, (q, p) in enumerate(zip(run.questions, cold.predictions))}
        conn.send(("ready", rows))
        while conn.recv() == "pass":
            t0 = time.perf_counter()
            one_pass()
            conn.send(("pass", time.perf_counter() - t0))
    except EOFError:  # the run ended
        pass
    except BaseException as e:  # noqa: BLE001  reported by the run, in one line
        conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


class PairedReference:
    """The reference process, started and loaded (its cold pass done) on entry; `rows` are its answers (PMID ->
    prediction, gold, logits), timed_pass() runs one timed pass there and returns its seconds."""

    def __init__(self, cfg: RunConfig):
        self.cfg = reference_config(cfg)

    def __enter__(self):
        print(f"--paired: starting the {NAME} in a second process (load and cold pass)", flush=True)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA or thread state inherited
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, self.cfg, torch.get_num_threads()), daemon=True)
        # started with SIGINT ignored: Ctrl-C is the run's to report (one line), the reference just ends with it
        default = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.process.start()
        finally:
            signal.signal(signal.SIGINT, default)
        child.close()
        self.rows = self._answer("ready")
        return self

    def _answer(self, expected: str):
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise UsageError(f"the {NAME} process died (exit code {self.process.exitcode}; out of memory?)")
        if kind == "error":
            raise UsageError(f"the {NAME} failed: {value}")
        assert kind == expected, (kind, expected)
        return value

    def timed_pass(self) -> float:
        self.conn.send("pass")
        return self._answer("pass")

    def __exit__(self, *exc):
        try:
            self.conn.send("stop")
        except OSError:  # it has gone already
            pass
        self.conn.close()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
        return False

