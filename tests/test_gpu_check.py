"""evaluation.gpu_check: refuses a machine without CUDA in one line; its table names each failure's reason."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation import gpu_check, matrix

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.e2e
def test_without_cuda_one_line_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "evaluation.gpu_check", "--out", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip().splitlines()[-1]]  # one line, no traceback
    assert p.stderr.startswith("error: no CUDA device here") and not (tmp_path / "out").exists()


def test_runs_every_variant_on_cuda_and_tables_the_reasons(tmp_path, monkeypatch, capsys):
    """With CUDA faked: every registry variant goes to the matrix with --device cuda, and the table gives a
    failure's last error line and a skip's reason."""
    seen = {}

    def fake_run_matrix(variants, out, common, resume=False):
        seen["variants"], seen["common"] = variants, common
        matrix.write_error(out / "precision-int8", {"command": "x", "returncode": 1,
                                                   "stderr_tail": "Traceback ...\nRuntimeError: CUDA kernel missing"})
        matrix.write_error(out / "precision-fp8", {"command": "x", "returncode": None, "skipped": True,
                                                  "reason": "fp8 needs compute capability >= 8.9"})
        return [{"name": "baseline", "status": "ok"}, {"name": "precision-int8", "status": "failed"},
                {"name": "precision-fp8", "status": "skipped"}]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "environment", lambda: {"gpu": "Fake H100", "torch": torch.__version__})
    monkeypatch.setattr(gpu_check, "run_matrix", fake_run_matrix)
    gpu_check.main(["--out", str(tmp_path), "--data-dir", "/data"])
    assert seen["variants"] == list(matrix.variants())
    assert seen["common"][seen["common"].index("--device") + 1] == "cuda" and "/data" in seen["common"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| precision-int8 | FAILS | RuntimeError: CUDA kernel missing |" in md
    assert "| precision-fp8 | skipped | fp8 needs compute capability >= 8.9 |" in md
    assert "| baseline | works |  |" in md and "- gpu: Fake H100" in md and "1 fail" in md
    assert json.loads((tmp_path / "gpu_check.json").read_text())["environment"]["gpu"] == "Fake H100"
