"""Hostile and unlucky input a user meets (issue 22): each ends in one line and the right exit code, with nothing
written and nothing left behind, or runs as the README says. Two runs of one name at once, a vocabulary without
the answers, empty or non-string data, an empty model directory, a full disk, a too-long run name, Ctrl-C while
importing, wandb without network."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_synthetic_pubmedqa, run_script

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "baseline.baseline"


def out_dir(args: list[str]) -> Path:
    return Path(args[args.index("--output-dir") + 1])


def refused(capsys, code: int, *needles: str) -> str:
    """The one `error:` line of a refused run (exit 2, no traceback), checked for each needle."""
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last
    return last


def start_baseline(args: list[str], log: Path, **env) -> subprocess.Popen:
    """`python baseline/baseline.py ARGS` as a user starts it from a terminal: SIGINT at its default (a shell's
    background job would start it ignored), stderr to `log`."""
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "baseline/baseline.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, timeout_s: float = 300, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(every_s)


@pytest.mark.e2e
def test_a_run_in_progress_keeps_its_name(base_args, tmp_path, capsys):
    """Two runs of one --run-name at once: the second is refused before any work (--overwrite too); the first,
    interrupted, leaves nothing, and the name is free again."""
    log = tmp_path / "first.stderr"
    first = start_baseline([*base_args, "--run-name", "same", "--min-duration", "600"], log)
    try:
        wait_for(lambda: "timed passes" in log.read_text() or first.poll() is not None)
        assert first.poll() is None, log.read_text()[-2000:]
        for extra in ([], ["--overwrite"]):
            code = run_script(BASELINE, [*base_args, "--run-name", "same", *extra])
            refused(capsys, code, "is being written by a run in progress", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130, log.read_text()[-2000:]
    assert not out_dir(base_args).exists(), list(out_dir(base_args).rglob("*"))
    assert run_script(BASELINE, [*base_args, "--run-name", "same", "--min-passes", "0"]) == 0


@pytest.mark.e2e
def test_a_dead_runs_lock_blocks_nothing(base_args):
    """A run killed outright leaves its lock file; the kernel dropped its lock, so the next run goes ahead."""
    root = out_dir(base_args)
    root.mkdir(parents=True)
    (root / ".same.lock").write_text("999999999\n")
    assert run_script(BASELINE, [*base_args, "--run-name", "same", "--min-passes", "0"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["same"]


def test_a_vocabulary_without_the_answers_is_refused_before_loading(base_args, tokenizer_dir, tmp_path, capsys,
                                                                     monkeypatch):
    """A cut dict.txt maps `yes` and `maybe` to <unk>: their logits would be equal in every row."""
    cut = tmp_path / "vocab"
    cut.mkdir()
    lines = Path(tokenizer_dir, "dict.txt").read_text().splitlines(keepends=True)
    (cut / "dict.txt").write_text("".join(x for x in lines if x.split(" ")[0] not in ("yes", "maybe")))
    (cut / "bpecodes").write_bytes(Path(tokenizer_dir, "bpecodes").read_bytes())
    monkeypatch.setattr("evaluation.modeling.random_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code = run_script(BASELINE, [*base_args, "--tokenizer-dir", str(cut)])
    refused(capsys, code, "yes, no and maybe", "yes -> <unk> [3]", "maybe -> <unk> [3]")
    assert not out_dir(base_args).exists()


@pytest.mark.parametrize("field, value, message", [
    ("QUESTION", "  ", "has an empty QUESTION"),
    ("CONTEXTS", ["", " \n"], "has an empty CONTEXTS"),
    ("CONTEXTS", [], "has an empty CONTEXTS"),
    ("QUESTION", 7, "non-string QUESTION or CONTEXTS item (int)"),
    ("CONTEXTS", ["fine", None], "non-string QUESTION or CONTEXTS item (NoneType)"),
])
def test_empty_or_non_string_data_is_refused(base_args, tmp_path, capsys, field, value, message):
    (tmp_path / "data").mkdir()
    data = make_synthetic_pubmedqa(tmp_path / "data", n=8)
    pqal = json.loads((data / "ori_pqal.json").read_text())
    pmid = sorted(json.loads((data / "test_ground_truth.json").read_text()))[-1]
    pqal[pmid][field] = value
    (data / "ori_pqal.json").write_text(json.dumps(pqal))
    code = run_script(BASELINE, [*base_args, "--data-dir", str(data)])
    refused(capsys, code, f"PMID {pmid}", str(data / "ori_pqal.json"), message)
    assert not out_dir(base_args).exists()


@pytest.mark.parametrize("files, with_tokenizer_dir, message", [
    ([], True, "holds no config.json"),
    ([], False, "holds no config.json"),
    (["config.json"], False, "holds no tokenizer: pass --tokenizer-dir"),
])
def test_a_model_directory_without_a_model_is_refused(base_args, tmp_path, capsys, files, with_tokenizer_dir,
                                                      message):
    model = tmp_path / "model"
    model.mkdir()
    for name in files:
        (model / name).write_text(json.dumps({"model_type": "biogpt"}))
    args = [*base_args, "--model", str(model)]
    if not with_tokenizer_dir:
        args = args[:args.index("--tokenizer-dir")] + args[args.index("--tokenizer-dir") + 2:]
    refused(capsys, run_script(BASELINE, args), str(model), message)
    assert not out_dir(base_args).exists()


@pytest.mark.e2e
def test_a_full_disk_loses_the_run_in_one_line(base_args, capsys, monkeypatch):
    """ENOSPC on the last results file: nothing half-written, no temporary directory left, one line."""
    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "per_question.csv" and self.parent.name.startswith(".full."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    code = run_script(BASELINE, [*base_args, "--run-name", "full", "--min-passes", "0"])
    refused(capsys, code, os.strerror(errno.ENOSPC), str(out_dir(base_args)), "results (6 questions, every figure) "
                                                                             "are lost, nothing was written")
    assert not out_dir(base_args).exists(), list(out_dir(base_args).rglob("*"))


@pytest.mark.e2e
def test_a_run_name_too_long_for_the_file_system_is_refused(base_args, tmp_path, capsys):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    code = run_script(BASELINE, [*base_args, "--run-name", "r" * 300])
    refused(capsys, code, "--run-name is 300 bytes long", f"hold {limit}", f"at most {limit - 10}")
    assert not out_dir(base_args).exists()
    # the longest name allowed runs: its temporary sibling (".NAME." + 8 characters) fits
    assert run_script(BASELINE, [*base_args, "--run-name", "r" * (limit - 10), "--min-passes", "0"]) == 0
    assert (out_dir(base_args) / ("r" * (limit - 10)) / "results.json").is_file()


@pytest.mark.e2e
def test_ctrl_c_while_importing_is_one_line_and_exit_130(base_args, tmp_path):
    """SIGINT once torch's library is mapped, so while `evaluation` is still importing torch and transformers."""
    log = tmp_path / "stderr"
    proc = start_baseline(base_args, log)
    maps = Path(f"/proc/{proc.pid}/maps")

    def importing_torch() -> bool:
        try:
            return "libtorch_cpu" in maps.read_text()
        except OSError:  # ended
            return True
    wait_for(importing_torch, timeout_s=120, every_s=0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-2000:]
    text = log.read_text()
    assert text.strip().splitlines()[-1] == "interrupted; nothing written" and "Traceback" not in text, text[-2000:]
    assert not out_dir(base_args).exists()


@pytest.mark.e2e
def test_wandb_without_network_is_bounded_and_logs_offline(base_args, tmp_path):
    """A well-formed key and no way to reach the server: the online start gives up within WANDB_INIT_TIMEOUT and
    the run is logged offline, with the `wandb sync` hint."""
    args = [*base_args, "--wandb", "auto", "--min-passes", "1", "--run-name", "w", "--limit", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_API_KEY="0123456789abcdef" * 2 + "01234567", WANDB_INIT_TIMEOUT="3", HF_HUB_OFFLINE="1",
               WANDB_BASE_URL="http://127.0.0.1:9")  # nothing listens there, with or without network
    r = subprocess.run([sys.executable, "baseline/baseline.py", *args], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if "the online run did not start" in x)
    assert "limit 3 s" in line and "so the run was logged offline in" in line and "`wandb sync " in line, line
    assert list((out_dir(base_args) / "wandb").glob("offline-run-*/*.wandb"))
    assert (out_dir(base_args) / "w" / "results.json").is_file()


def test_wandb_start_is_bounded_by_default(monkeypatch):
    from evaluation.tracking import init_timeout_s

    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    assert init_timeout_s() <= 15  # wandb's own default, 90 s, kept a run without network waiting that long


@pytest.mark.parametrize("module", ["baseline.baseline", "pruning.pruning", "quantization.qat",
                                    "quantization.quant_int8_dynamic_eval", "precision_reduction.precision_experiments",
                                    "tensor_rewriting.tensor_experiments", "tensor_rewriting.attention_experiments",
                                    "evaluation.matrix", "evaluation.report", "evaluation.gpu_check"])
def test_help_works(module, capsys):
    """--help of every script (argparse %-formats help strings: a bare '%' in one ended in a traceback)."""
    assert run_script(module, ["--help"]) == 0
    assert "usage:" in capsys.readouterr().out
