"""How each step is taken, through the front door in process: precision (and fp16's gradient scaler), clipping,
accumulation and torch.compile, each off by default."""
import re
import subprocess
import sys

import pytest
import torch

from helpers import (MAIN, assert_refused, env_recording_in, query, recorded_numbers, run_in_process,
                     signal_at_step, tiny_in_process)
from training.recipe import resolve_precision


def numbers_without(db, run_id, *labels):
    """recorded_numbers of a run, leaving out the curves named `labels`."""
    curves, results = recorded_numbers(db, run_id)
    return [point for point in curves if point[1] not in labels], results


@pytest.mark.parametrize("device, bf16, setting, chosen", [
    ("cpu", None, "auto", "fp32"), ("mps", None, "auto", "fp32"), ("xpu", None, "auto", "bf16"),
    ("cuda", True, "auto", "bf16"), ("cuda", False, "auto", "fp16"),  # an A100 / a T4 or V100
    ("cpu", None, "bf16", "bf16"), ("cuda", True, "fp16", "fp16"), ("cuda", True, "off", "fp32")])
def test_auto_precision_is_what_the_device_computes_fast(monkeypatch, device, bf16, setting, chosen):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert resolve_precision(setting, torch.device(device)) == chosen


@pytest.mark.fault("kills")
@pytest.mark.slow
def test_fp16_trains_with_a_gradient_scaler_whose_state_a_resume_point_keeps(workdir, tmp_path, monkeypatch):
    fp16 = ("--config.training.precision=fp16", "--config.data.batch_size=32")
    reference = tmp_path / "reference"
    (reference / "configs").mkdir(parents=True)
    (reference / "configs" / "tiny.yml").write_text((workdir / "configs" / "tiny.yml").read_text())
    assert tiny_in_process(reference, *fp16).returncode == 0
    signal_at_step(monkeypatch, 20)
    assert tiny_in_process(workdir, *fp16).returncode == 143
    scaler = torch.load(workdir / "results" / "1" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    resumed = run_in_process(workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    db = workdir / "results" / "resultTable.db"
    assert recorded_numbers(db, 1) == recorded_numbers(reference / "results" / "resultTable.db", 1)
    [(environment,)] = query(db, "SELECT fragment FROM Fragments WHERE tag='environment'")
    assert '"precision": "fp16"' in environment  # the choice actually made, recorded with the run
    assert tiny_in_process(workdir).returncode == 0  # float32, the default on the CPU: a run of its own
    [(default,)] = query(db, "SELECT fragment FROM Fragments WHERE tag='environment' AND run_id=2")
    assert '"precision": "fp32"' in default


def test_clipping_logs_every_steps_norm_and_changes_the_numbers_only_where_it_clips(workdir):
    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir).returncode == 0
    assert tiny_in_process(workdir, "--config.training.grad_clip=1e9").returncode == 0  # never clips
    assert tiny_in_process(workdir, "--config.training.grad_clip=0.05").returncode == 0
    norms = query(db, "SELECT step, value FROM Logs WHERE run_id=2 AND label='grad_norm' ORDER BY step")
    assert [step for step, _ in norms] == list(range(1, 9))  # 4 steps an epoch, 2 epochs: one norm each
    assert all(value > 0.05 for _, value in norms)  # the norm before clipping
    assert numbers_without(db, 2, "grad_norm") == recorded_numbers(db, 1)
    assert numbers_without(db, 3, "grad_norm") != recorded_numbers(db, 1)
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=1 AND label='grad_norm'") == [(0,)]
    assert_refused(tiny_in_process(workdir, "--config.training.grad_clip=0"), "training.grad_clip")


@pytest.mark.slow
def test_two_micro_batches_give_the_language_models_curve_to_float_rounding(text_workdir):
    args = ("--experiment=charlm", "--config=configs/tiny_charlm.yml", "--verbose=0")
    db = text_workdir / "results" / "resultTable.db"
    assert run_in_process(text_workdir, *args).returncode == 0
    assert run_in_process(text_workdir, *args, "--config.training.accumulate=2").returncode == 0
    one, two = (recorded_numbers(db, run_id) for run_id in (1, 2))
    assert [point[:4] for point in one[0]] == [point[:4] for point in two[0]]  # the same steps: optimizer steps
    assert one != two  # summed in another order...
    for (*_, a), (*_, b) in zip(one[0] + one[1], two[0] + two[1]):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)  # ...to the same numbers
    # A batch of one window per micro-batch is the most it can be split into.
    assert_refused(run_in_process(text_workdir, *args, "--config.training.accumulate=17"),
                   "training.accumulate 17 splits each batch into 17 micro-batches")


def test_accumulation_splits_what_batchnorm_sees_and_refuses_more_micro_batches_than_images(workdir):
    assert tiny_in_process(workdir, "--config.training.accumulate=4").returncode == 0
    assert_refused(tiny_in_process(workdir, "--config.training.accumulate=129"),
                   "training.accumulate 129 splits each batch into 129 micro-batches", "as few as 128 samples")


@pytest.mark.fault("kills")
@pytest.mark.slow  # torch.compile takes tens of seconds on a CPU
def test_a_compiled_run_resumes_exactly_like_an_eager_one_and_a_duplicate_still_imports_no_torch(workdir, tmp_path,
                                                                                               monkeypatch):
    compiled = ("--config.training.compile=true", "--config.data.batch_size=32")
    reference = tmp_path / "reference"
    (reference / "configs").mkdir(parents=True)
    (reference / "configs" / "tiny.yml").write_text((workdir / "configs" / "tiny.yml").read_text())
    first = tiny_in_process(reference, *compiled, "--verbose=2")
    assert first.returncode == 0, first.stderr
    assert len(re.findall(r"torch.compile: the first step took [\d.]+ s \(compiling the model\)", first.stdout)) == 1
    signal_at_step(monkeypatch, 20)
    assert tiny_in_process(workdir, *compiled).returncode == 143
    resumed = run_in_process(workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert recorded_numbers(workdir / "results" / "resultTable.db", 1) == recorded_numbers(
        reference / "results" / "resultTable.db", 1)
    eager = tiny_in_process(workdir, "--config.data.batch_size=32")
    assert eager.returncode == 0  # not the same run: the compiler's kernels may round otherwise

    refused = subprocess.run([sys.executable, "-X", "importtime", str(MAIN), "--experiment=experiment1",
                              "--config=configs/tiny.yml", "--verbose=0", *compiled], cwd=workdir,
                             capture_output=True, text=True, timeout=120, env=env_recording_in(workdir))
    imported = {line.rsplit("|", 1)[1].strip() for line in refused.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert refused.returncode == 2 and not {name for name in imported if name.split(".")[0] == "torch"}
