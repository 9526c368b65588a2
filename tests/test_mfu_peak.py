"""MFU against a fixed peak per device kind, so runs compare: the YAML's `mfu_peak_flops`, else a matmul peak
measured once and recorded in the user's cache; tokens/s comes first on the step line; the report card says
where the peak came from."""
import json
import re

import pytest
import torch

from experiments import PRETRAIN, TOKENIZER, data


def test_the_peak_is_measured_once_per_device_kind_and_then_read_back(tmp_path, monkeypatch):
    from rlkit.lib.training import speed

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    speed.peak_flops.cache_clear()
    measured, source = speed.peak_flops(torch.device("cpu"), torch.float32)
    file = tmp_path / "rlkit" / "matmul_peak.json"
    key = speed.device_key(torch.device("cpu"), torch.float32)
    recorded = json.loads(file.read_text())
    assert recorded[key]["flops"] == measured > 0 and str(file) in source and key in source
    recorded[key]["flops"] = 1.25e9  # what an earlier measurement recorded: used as is, not measured again
    file.write_text(json.dumps(recorded))
    speed.peak_flops.cache_clear()
    assert speed.peak_flops(torch.device("cpu"), torch.float32)[0] == 1.25e9
    assert speed.Meter(torch.device("cpu"), torch.float32, 100).peak == 1.25e9
    assert speed.peak_flops(torch.device("cpu"), torch.float32, 3e9) == (3e9, "mfu_peak_flops in the YAML")
    speed.peak_flops.cache_clear()


def test_a_peak_recorded_on_a_busy_machine_is_measured_again_when_a_run_beats_it(tmp_path, monkeypatch):
    """A recorded peak below what a run achieves (MFU over 100%) was measured on a busy machine: it is measured
    again and raised to the larger of that and the achieved rate; MFU is then at most 100%."""
    from rlkit.lib.training import speed

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    key = speed.device_key(torch.device("cpu"), torch.float32)
    speed.record(key, 1e6)  # far below any CPU's matmul rate
    speed.peak_flops.cache_clear()
    meter = speed.Meter(torch.device("cpu"), torch.float32, flops_per_token=10 ** 6)
    assert meter.peak == 1e6
    meter.add(1000)
    _, mfu = meter.read()
    again = json.loads((tmp_path / "rlkit" / "matmul_peak.json").read_text())[key]["flops"]
    assert 0 < mfu <= 1.0 and again == meter.peak > 1e8 and speed.peak_flops(torch.device("cpu"), torch.float32)[0] == again
    configured = speed.Meter(torch.device("cpu"), torch.float32, flops_per_token=10 ** 6, peak=1e6)
    configured.add(1000)
    assert configured.read()[1] > 1.0 and configured.peak == 1e6  # the YAML's peak is the user's: kept as given
    speed.peak_flops.cache_clear()


def test_mfu_uses_the_yamls_peak_and_the_card_says_so(cli, experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = experiment({"tokenizer": {**TOKENIZER, "data": data(300)},
                       "pretrain": {**PRETRAIN, "data": data(300), "steps": 2, "log_every": 1}},
                      mfu_peak_flops=2.5e7)
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    flops = int(re.search(r"([\d,]+) FLOPs/token", result.stdout).group(1).replace(",", ""))
    lines = re.findall(r"^\[pretrain\] step +\d+/2 \| ([\d,]+) tok/s \| loss .* \| MFU ([\d.]+)%$", result.stdout, re.M)
    assert len(lines) == 2  # tokens/s first, right after the step
    for tok_s, mfu in lines:
        assert float(mfu) / 100 == pytest.approx(int(tok_s.replace(",", "")) * flops / 2.5e7, rel=0.02, abs=1e-3)
    card = (tmp_path / "runs/tiny/report.md").read_text()
    assert "| mfu_peak | 2.5e-05 TFLOP/s, mfu_peak_flops in the YAML |" in card
    assert "| stage | tokens/s | steps |" in card


def test_a_peak_that_is_not_positive_is_one_line(cli, experiment):
    path = experiment({"tokenizer": TOKENIZER}, mfu_peak_flops=0)
    result = cli("check", path)
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        f"error: {path}: mfu_peak_flops: 0.0 must be a positive FLOP/s figure, e.g. 1.98e14 (or leave it out: the "
        "device's recorded matmul peak)"]
