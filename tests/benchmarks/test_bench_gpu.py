"""The GPU self-check (``benchmarks/bench_gpu.py --smoke`` on the CPU) and the GPU paths it measures,
tested where their logic does not need a GPU: the predictor's autocast, pinned memory exactly for a
GPU trainer (the accelerator is faked), cuDNN's benchmark mode on the GPU, fp32 probabilities under
mixed precision in validation."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench_gpu
from common_blocks.errors import ConfigError
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.predictor import EnsemblePredictor, WeightedModel, build_predictor
from common_blocks.run_folder import RunPaths
from common_blocks.training import runner
from common_blocks.training.config import load_config
from common_blocks.training.datamodule import SteelDataModule
from common_blocks.training.modes import CLASSIFICATION_MODE, MULTILABEL_MODE
from common_blocks.training.module import DefectModule
from tests.repository import ROOT
from tests.stand_ins import StandIn

# --- the smoke run ---------------------------------------------------------------------------------

CPU_STAGES = {
    "data": ("img_s",),
    "loader": ("img_s",),
    "train_fp32": ("step_alone_img_s", "pipeline_img_s", "pipeline_over_step", "step_alone_last_loss"),
    "train_bf16": ("step_alone_img_s", "pipeline_img_s", "pipeline_over_step", "step_alone_last_loss"),
    "predict_setup": ("images",),
    "predict_fp32": ("img_s", "max_abs_diff_vs_fp32"),
    "predict_bf16": ("img_s", "max_abs_diff_vs_fp32", "mean_abs_diff_vs_fp32", "decisions_changed"),
}
GPU_ONLY = ("train_fp16", "predict_fp16")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu") / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check: a loaded CI machine may take minutes
    )
    return run, out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_smoke_run_measures_every_stage(smoke):
    run, out = smoke
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["failed_stages"] == []
    assert report["environment"]["device"] == "cpu"
    stages = report["stages"]
    assert set(stages) == {*CPU_STAGES, *GPU_ONLY}
    for name in GPU_ONLY:
        assert stages[name]["status"] == "skipped" and "GPU-only" in stages[name]["reason"]
    for name, keys in CPU_STAGES.items():
        stage = stages[name]
        if stage["status"] == "skipped":  # bf16 on a CPU without bf16 instructions only
            assert "bf16" in name and "no bf16 instructions" in stage["reason"], stage
            continue
        assert stage["status"] == "ok", stage
        assert _number(stage["seconds"])
        for key in keys:
            assert _number(stage[key]) and stage[key] >= 0, (name, key, stage)
    for name in ("train_fp32", "train_bf16"):
        if stages[name]["status"] == "ok":
            assert stages[name]["step_alone_img_s"] > 0 and stages[name]["pipeline_img_s"] > 0
            assert stages[name]["step_alone_peak_gpu_mib"] is None  # no GPU: no GPU memory figure
    assert stages["predict_fp32"]["max_abs_diff_vs_fp32"] == 0
    if stages["predict_bf16"]["status"] == "ok":
        assert stages["predict_bf16"]["finite"] is True
        assert 0 < stages["predict_bf16"]["max_abs_diff_vs_fp32"] < 0.5


def test_a_failed_stage_is_recorded_and_the_others_still_run():
    stages = bench_gpu.Stages(bench_gpu.Device(cpu=True))

    def broken():
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    assert not stages.run("first", broken)
    assert stages.run("second", lambda: {"img_s": 1.5})
    assert stages.results["first"]["status"] == "failed"
    assert stages.results["first"]["error"] == "RuntimeError: CUDA out of memory."
    assert stages.results["second"]["img_s"] == 1.5 and stages.failed == ["first"]


@pytest.fixture
def torch_threads():
    """``main`` sets torch's threads (1 with --smoke): put them back for the rest of the session."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_failed_stage_makes_the_exit_status_1_and_the_json_says_what_did_not_run(
    tmp_path, monkeypatch, torch_threads
):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench_gpu, "generate", full_disk)
    out = tmp_path / "b.json"
    assert bench_gpu.main(["--smoke", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["failed_stages"] == ["data"]
    assert report["stages"]["data"]["error"] == "OSError: [Errno 28] No space left on device"
    later = {name: stage["status"] for name, stage in report["stages"].items() if name != "data"}
    assert set(later) == {*CPU_STAGES, *GPU_ONLY} - {"data"} and set(later.values()) == {"not_run"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--smoke", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["--smoke", "--workers", "many"], "--workers: expected an integer"),
        (["--smoke", "--out", ""], "--out: expected a path"),
        (["--smoke", "--bogus"], "unrecognized arguments: --bogus"),
        (["--smoke", "--out", "{tmp}"], "is a folder"),
        (["--smoke", "--work-dir", "{tmp}/file"], "is a file"),
    ],
)
def test_bad_arguments_are_one_error_line(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = [part.replace("{tmp}", str(tmp_path)) for part in argv]
    with pytest.raises(SystemExit) as exit_:
        bench_gpu.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_the_full_check_without_a_gpu_says_to_use_smoke(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_gpu.main([])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "no CUDA device" in err and "--smoke" in err


# --- the predictor's precision ---------------------------------------------------------------------


class AutocastRecorder(StandIn):
    """A stand-in network recording whether it ran under autocast, and to which dtype."""

    def __init__(self, task_mode: str) -> None:
        super().__init__(task_mode)
        self.seen: list[torch.dtype | None] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        channels = 4
        out = images[:, :1].repeat(1, channels, 1, 1)
        out = out.to(torch.bfloat16) if enabled else out
        return out.mean((-2, -1)) if self.task_mode == CLASSIFICATION_MODE else out


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_networks_run_under_the_precision_and_everything_after_them_in_fp32(precision, dtype):
    member, gate = AutocastRecorder(MULTILABEL_MODE), AutocastRecorder(CLASSIFICATION_MODE)
    predictor = EnsemblePredictor(
        [WeightedModel(member)], [WeightedModel(gate)], tta=["none", "hflip", "vflip"], precision=precision
    )
    images = torch.randn(2, 3, 8, 16)
    gate_probs, probs = predictor.gate_probabilities(images), predictor.probabilities(images).numpy()
    assert member.seen == [dtype] * 3 and gate.seen == [dtype]
    assert gate_probs.dtype == probs.dtype == "float32"
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_probabilities_are_close_to_fp32_on_the_cpu(debug_config):
    cfg = load_config(debug_config, ["data.scale=0.125"])
    torch.manual_seed(0)
    module = DefectModule(cfg.model_dump(mode="json"), 0).eval()
    images = torch.randn(2, 3, 256, 1600)
    probs = {
        precision: EnsemblePredictor(
            [WeightedModel(module)], tta=["none", "hflip"], precision=precision
        ).probabilities(images)
        for precision in ("fp32", "bf16")
    }
    assert probs["bf16"].dtype == torch.float32 and probs["bf16"].shape == (2, 4, 256, 1600)
    difference = (probs["bf16"] - probs["fp32"]).abs().max().item()
    assert 0 < difference < 0.02  # bf16 did run, and changes a probability by less than 0.02


@pytest.mark.parametrize(
    "precision, device, message",
    [
        ("fp16", "cpu", "precision fp16 needs a CUDA device"),
        ("half", "cpu", "precision: expected one of fp32, fp16, bf16, got 'half'"),
    ],
)
def test_a_precision_the_device_cannot_run_is_a_config_error(precision, device, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        EnsemblePredictor([WeightedModel(StandIn(MULTILABEL_MODE))], precision=precision, device=device)
    ensemble = EnsembleConfig.model_validate(
        {"name": "e", "runs_dir": tmp_path / "no-runs", "members": [{"config": "debug", "folds": [0]}]}
    )
    with pytest.raises(ConfigError, match=message):  # before it looks for checkpoints
        build_predictor(ensemble, device=device, precision=precision)


# --- training on a GPU, faked ----------------------------------------------------------------------


@pytest.fixture
def datamodule(synthetic_data, debug_config, tmp_path):
    cfg = load_config(
        debug_config,
        [
            f"data.data_dir={synthetic_data}",
            f"data.folds_file={tmp_path / 'folds.csv'}",
            "data.num_workers=1",
        ],
    )
    module = SteelDataModule(cfg, 0)
    module.prepare_data()
    module.setup("fit")
    return module


def _on(device: str) -> SimpleNamespace:
    """What the data module reads of an attached Trainer: the strategy's root device."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False)])
def test_loaders_pin_memory_exactly_when_the_trainer_runs_on_a_gpu(datamodule, device, pinned):
    datamodule.trainer = _on(device)
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert loader.pin_memory is pinned
        assert loader.persistent_workers is True  # one worker: kept alive across epochs


def test_a_real_cpu_trainer_gets_unpinned_loaders(datamodule):
    import lightning  # after common_blocks.training (imported above), which lightning needs first

    datamodule.trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert datamodule.train_dataloader().pin_memory is False


@pytest.mark.parametrize(
    "accelerator, cuda_visible, pinned",
    [("gpu", True, True), ("cpu", True, False), ("auto", True, True), ("auto", False, False)],
)
def test_without_a_trainer_the_config_decides(datamodule, monkeypatch, accelerator, cuda_visible, pinned):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_visible)
    datamodule.cfg = datamodule.cfg.model_copy(
        update={"trainer": datamodule.cfg.trainer.model_copy(update={"accelerator": accelerator})}
    )
    assert datamodule.trainer is None and datamodule.train_dataloader().pin_memory is pinned


@pytest.mark.parametrize("accelerator, benchmark", [("gpu", True), ("cpu", None)])
def test_cudnn_benchmark_is_on_for_gpu_training(debug_config, tmp_path, monkeypatch, accelerator, benchmark):
    seen = {}

    def trainer(**kwargs):
        seen.update(kwargs)
        return SimpleNamespace()

    monkeypatch.setattr(runner.L, "Trainer", trainer)
    runner.build_trainer(load_config(debug_config), RunPaths(tmp_path), accelerator, 1)
    assert seen["benchmark"] is benchmark and seen["accelerator"] == accelerator


def test_validation_scores_fp32_full_resolution_probabilities_under_mixed_precision(
    debug_config, monkeypatch
):
    module = DefectModule(load_config(debug_config, ["data.scale=0.125"]).model_dump(mode="json"))
    module.eval()
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    seen = []
    monkeypatch.setattr(module.val_score, "update", lambda probs, *rest: seen.append(probs))
    batch = {
        "image": torch.randn(2, 3, 256, 1600),
        "mask": torch.zeros(2, 4, 256, 1600, dtype=torch.uint8),
        "image_id": ["a.jpg", "b.jpg"],
    }
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        module.validation_step(batch, 0)
    (probs,) = seen
    assert probs.dtype == torch.float32 and probs.shape == (2, 4, 256, 1600)
    assert probs.device == batch["image"].device
