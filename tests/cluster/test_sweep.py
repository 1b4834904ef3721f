"""``severstal sweep``: a two-fold debug ensemble trained and tuned end to end with the local executor;
a preempted job requeued by submitit resumes from last.ckpt; the sbatch scripts of a Slurm sweep
(against a stand-in ``sbatch``); bad arguments and configs as one error line, exit 2."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch
import yaml

from common_blocks.cluster.jobs import RunState, TrainJob
from common_blocks.cluster.local import run_local
from common_blocks.cluster.plan import PlannedRun, SweepPlan, plan_sweep
from common_blocks.cluster.resources import Resources
from common_blocks.errors import ConfigError, PipelineError
from common_blocks.inference.ensemble_config import load_ensemble_config
from common_blocks.inference.options import PredictOptions
from common_blocks.run_folder import TRAIN_LOSS, RunPaths
from common_blocks.training.config import load_config
from common_blocks.training.module import DefectModule
from tests.cli_contract import SEVERSTAL, as_in_a_terminal, assert_one_error_line, run_in_process, snapshot
from tests.repository import ROOT

DEBUG = ROOT / "configs" / "debug.yaml"
GATE = ROOT / "configs" / "debug_classifier.yaml"
# One quick epoch: 2 training batches of small crops (the full validation fold stays).
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "augment.crop_height=128",
    "augment.crop_width=256",
]


def _sets(*overrides: str) -> list[str]:
    return [argument for override in overrides for argument in ("--set", override)]


def _ensemble(
    tmp_path: Path, data_dir: Path, members: object = None, folds=(0, 1), gate: Path = GATE
) -> Path:
    folds = list(folds)
    path = tmp_path / "ensemble.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "runs_dir": str(tmp_path / "runs"),
                "data_dir": str(data_dir),
                "members": members or [{"config": str(DEBUG), "folds": folds}],
                "tta": ["none"],
                "gate": {"config": str(gate), "folds": folds},
                "search": {"min_areas": [0, 100], "gates": [0.0, 0.5]},
            }
        )
    )
    return path


@pytest.mark.slow
def test_local_sweep_trains_every_run_then_tunes_the_ensemble(tmp_path, synthetic_data):
    ensemble = _ensemble(tmp_path, synthetic_data)
    args = ["sweep", "--config", ensemble, "--executor", "local", "--array-parallelism", "2", *_sets(*QUICK)]
    outcome = run_in_process(*args)
    assert outcome.code == 0, outcome.stderr[-3000:] + outcome.stdout[-3000:]
    runs = tmp_path / "runs"
    for name in ("debug", "debug_classifier"):
        cfg = load_config(DEBUG if name == "debug" else GATE, [f"data.data_dir={synthetic_data}", *QUICK])
        for fold in (0, 1):
            paths = RunPaths.of(runs, name, fold)
            summary = json.loads(paths.summary.read_text())
            assert (summary["name"], summary["fold"], summary["config_digest"]) == (name, fold, cfg.digest())
            assert paths.best.is_file() and 0.0 <= summary["score"] <= 1.0
            assert f"{name}/fold{fold}: start: job " in outcome.stdout
    thresholds = json.loads((runs / "ensemble" / "thresholds.json").read_text())
    assert thresholds and (runs / "ensemble" / "oof.npz").is_file()
    assert "local CV" in outcome.stdout and str(runs / "sweep_logs") in outcome.stdout
    # The same sweep again: every run is finished with this config, so no job starts.
    before = snapshot(runs / "debug", runs / "debug_classifier")
    again = run_in_process(*args, "--train-only")
    assert again.code == 0, again.stderr[-3000:]
    assert again.stdout.count("finished already, skipped") == 4 and "job " not in again.stdout
    assert snapshot(runs / "debug", runs / "debug_classifier") == before


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:  # the field after the state: ppid
                found.append(int(entry.name))
    return found


def _step(path: Path) -> int:
    """The global step of a checkpoint; -1 while there is none (or it is being replaced)."""
    if not path.is_file():
        return -1
    try:
        return int(torch.load(path, weights_only=False, map_location="cpu")["global_step"])
    except Exception:  # noqa: BLE001 - being replaced right now; read again
        return -1


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_last_ckpt(tmp_path, synthetic_data):
    """The real submitit machinery: SIGUSR2 (what Slurm sends before a time limit or a preemption)
    mid-epoch; submitit calls TrainJob.checkpoint, requeues, and the new attempt continues from
    last.ckpt: one history in metrics.csv, each step once, and the final step count of one run."""
    steps = 10  # data.samples_per_epoch=40 at batch size 4
    cfg = load_config(
        DEBUG,
        [
            f"data.data_dir={synthetic_data}",
            "trainer.max_epochs=1",
            "trainer.checkpoint_every_n_steps=1",
            "data.samples_per_epoch=40",
            "augment.crop_height=128",
            "augment.crop_width=256",
        ],
    )
    paths = RunPaths.of(tmp_path / "runs", cfg.name, 0)
    executor = submitit.LocalExecutor(folder=tmp_path / "logs" / "%j", max_num_timeout=3)
    executor.update_parameters(timeout_min=10, tasks_per_node=1, gpus_per_node=0)
    job = executor.submit(TrainJob(cfg, 0, tmp_path / "runs", ROOT))
    deadline, step = time.time() + 120, -1
    while time.time() < deadline and not job.done():
        step = _step(paths.last)
        if 1 <= step <= steps - 4:  # mid-epoch, well before the end
            break
        time.sleep(0.1)
    tasks = _children(int(job.job_id))
    assert 1 <= step <= steps - 4 and len(tasks) == 1, f"no mid-epoch checkpoint in time (step {step})"
    os.kill(tasks[0], signal.SIGUSR2)
    summary = job.result()
    log = job.stdout()
    assert summary["skipped"] is False and paths.summary.is_file(), log
    assert "preempted or timed out; requeued" in log and "Requeued job" in log, log
    resumed = [line for line in log.splitlines() if "debug/fold0: resume from last.ckpt" in line]
    assert len(resumed) == 1 and log.count("debug/fold0: start") == 1, log
    resumed_at = int(resumed[0].rpartition("step ")[2].rstrip(")"))
    assert step <= resumed_at < steps
    final = torch.load(paths.last, weights_only=False, map_location="cpu")
    assert final["global_step"] == steps and final["epoch"] >= 0
    with open(paths.metrics, newline="") as file:
        trained = [int(row["step"]) for row in csv.DictReader(file) if row.get(TRAIN_LOSS)]
    assert trained == list(range(steps)), trained  # a restart would log from step 0 again


@pytest.mark.slow
def test_a_failed_run_is_named_and_the_oof_search_is_not_run(tmp_path, synthetic_data):
    """A job that fails (here: its data folder is gone since the sweep was planned) ends the local
    sweep with one error naming the run; the line of its traceback that says why is printed."""
    ensemble = load_ensemble_config(_ensemble(tmp_path, synthetic_data))
    cfg = load_config(DEBUG, [f"data.data_dir={tmp_path / 'gone'}", *QUICK])
    plan = SweepPlan(ensemble, [PlannedRun(TrainJob(cfg, 0, tmp_path / "runs", ROOT), RunState("start"))],
                     tmp_path / "runs", ROOT)  # fmt: skip
    lines: list[str] = []
    with pytest.raises(
        PipelineError, match=r"1 of 1 runs failed \(debug/fold0; see their logs\); the OOF search"
    ):
        run_local(plan, Resources(0, 10, 1), report=lines.append)
    failed = [line for line in lines if "debug/fold0: failed" in line]
    assert len(failed) == 1 and "DataError: " in failed[0] and "data directory not found" in failed[0], lines
    assert not any("OOF search:" in line for line in lines)


@pytest.mark.subprocess
@pytest.mark.slow
def test_ctrl_c_stops_a_local_sweep_with_one_line_and_keeps_last_ckpt(tmp_path, synthetic_data):
    """Ctrl-C (SIGINT to the terminal's process group: the sweep, submitit's controller and the job)
    mid-run: exit 130 with one ``interrupted:`` line naming the run, its last.ckpt kept, no summary."""
    ensemble = tmp_path / "one.yaml"
    ensemble.write_text(
        yaml.safe_dump({"data_dir": str(synthetic_data), "members": [{"config": str(DEBUG), "folds": [3]}]})
    )
    overrides = [
        "trainer.max_epochs=1",
        "trainer.checkpoint_every_n_steps=1",
        "data.samples_per_epoch=400",  # 100 steps: far longer than it takes to interrupt it
        "augment.crop_height=128",
        "augment.crop_width=256",
    ]
    args = [
        "sweep",
        "--config",
        ensemble,
        "--executor",
        "local",
        "--train-only",
        "--out-dir",
        tmp_path / "runs",
    ]
    process = subprocess.Popen(
        [SEVERSTAL, *map(str, args), *_sets(*overrides)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_in_a_terminal,
    )
    paths = RunPaths.of(tmp_path / "runs", "debug", 3)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and _step(paths.last) < 1:
        time.sleep(0.1)
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130 and len(lines) == 1, stderr
    assert lines[0].startswith(
        "interrupted: sweep one stopped (debug/fold3 was running; each keeps its last.ckpt)"
    )
    assert _step(paths.last) >= 1 and not paths.summary.exists()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` and ``srun`` stand-ins on PATH: sbatch keeps each script and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{tmp_path}"/sbatch_*.sh 2>/dev/null | wc -l)\n'
        f'cp "$1" "{tmp_path}/sbatch_$n.sh"\n'
        'echo "Submitted batch job $((4200 + n))"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


@pytest.mark.slow
def test_slurm_sweep_submits_one_array_and_the_oof_search_after_it(fake_slurm, synthetic_data):
    tmp_path = fake_slurm
    ensemble = _ensemble(tmp_path, synthetic_data)
    outcome = run_in_process(
        "sweep", "--config", ensemble, "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "2",
        "--timeout-min", "60", "--slurm-option", "account=steel", *_sets(*QUICK),
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr[-3000:]
    array, oof = (tmp_path / f"sbatch_{n}.sh" for n in (0, 1))
    script = array.read_text()
    for flag in (
        "--array=0-3%4",
        "--partition=gpu",
        "--gpus-per-node=2",
        "--ntasks-per-node=2",  # one DDP rank per GPU, as Lightning's SLURM environment expects
        "--nodes=1",
        "--time=60",
        "--signal=USR2@90",
        "--account=steel",
        "--job-name=ensemble-train",
    ):
        assert f"#SBATCH {flag}\n" in script, script
    assert "srun" in script and "submitit.core._submit" in script
    oof_script = oof.read_text()
    assert "#SBATCH --dependency=afterok:4200\n" in oof_script and "--array" not in oof_script
    for n in range(4):
        assert f"job 4200_{n}, log {tmp_path / 'runs' / 'sweep_logs' / f'4200_{n}'}" in outcome.stdout
    assert "OOF search: job 4201" in outcome.stdout and "afterok" in outcome.stdout
    two_nodes = run_in_process(
        "sweep", "--config", ensemble, "--executor", "slurm", "--num-nodes", "2", *_sets(*QUICK)
    )  # fmt: skip
    assert two_nodes.code == 0, two_nodes.stderr[-3000:]
    assert "#SBATCH --nodes=2\n" in (tmp_path / "sbatch_2.sh").read_text()  # one DDP run across two nodes


@pytest.mark.slow
def test_slurm_without_sbatch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    outcome = run_in_process("sweep", "--config", tmp_path / "e.yaml", "--executor", "slurm")
    assert_one_error_line(outcome, "sbatch and srun not found on PATH", "apt-get install slurm-wlm")


@pytest.mark.slow
def test_missing_submitit_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    outcome = run_in_process("sweep", "--config", tmp_path / "e.yaml", "--executor", "local")
    assert_one_error_line(outcome, "needs submitit", "pip install -c constraints.txt submitit")


def _refused(tmp_path, *args: object, members: object = None, gate: Path = GATE) -> str:
    ensemble = _ensemble(tmp_path, tmp_path / "data", members, gate=gate)
    outcome = run_in_process("sweep", "--config", ensemble, "--executor", "local", *args)
    line = assert_one_error_line(outcome)
    assert not (tmp_path / "runs" / "sweep_logs").exists()  # nothing submitted
    return line


def test_bad_configs_are_one_error_line_before_any_job(tmp_path, synthetic_data):
    args = ("--data-dir", synthetic_data)
    assert "trainer.max_epochs" in _refused(tmp_path, *args, "--set", "trainer.max_epochs=zero")
    assert "names a trained run" in _refused(tmp_path, *args, members=[{"config": "debug", "folds": [0]}])
    assert "fold 7 is out of range" in _refused(
        tmp_path, *args, members=[{"config": str(DEBUG), "folds": [0, 7]}]
    )
    assert "is a classifier; it belongs in gate" in _refused(
        tmp_path, *args, members=[{"config": str(GATE), "folds": [0, 1]}]
    )
    assert "gate: debug is neither a classifier nor a segmenter with a class head" in _refused(
        tmp_path, *args, gate=DEBUG
    )
    assert "data directory not found" in _refused(tmp_path, "--data-dir", tmp_path / "nowhere")


def test_the_oof_job_predicts_as_the_sweeps_options_say(tmp_path, synthetic_data, monkeypatch):
    """``--backend`` and ``--precision`` reach the OOF job: a precision this CPU cannot run is refused
    when the job starts, before any checkpoint is looked for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = plan_sweep(_ensemble(tmp_path, synthetic_data), train_only=True)
    job = plan.oof_job(PredictOptions(batch_size=2, workers=0, precision="fp16"))
    assert job.options.batch_size == 2
    with pytest.raises(ConfigError, match="fp16"):
        job()


def test_a_segmenter_with_a_class_head_may_be_the_sweeps_gate(tmp_path, synthetic_data):
    tree = {**yaml.safe_load(DEBUG.read_text()), "name": "debug_head", "class_head": {}}
    head = tmp_path / "debug_head.yaml"
    head.write_text(yaml.safe_dump(tree))
    plan = plan_sweep(
        _ensemble(tmp_path, synthetic_data, [{"config": str(head), "folds": [0, 1]}], gate=head)
    )
    assert sorted((run.job.cfg.name, run.job.fold) for run in plan.runs) == [
        ("debug_head", 0),
        ("debug_head", 1),
    ]


def test_a_run_folder_that_cannot_be_continued_is_refused_before_any_job(tmp_path, synthetic_data):
    paths = RunPaths.of(tmp_path / "runs", "debug", 1)
    paths.root.mkdir(parents=True)
    paths.last.write_bytes(b"not a checkpoint")
    line = _refused(tmp_path, "--data-dir", synthetic_data)
    assert "debug/fold1: cannot continue the run" in line and "--overwrite" in line
    assert paths.last.read_bytes() == b"not a checkpoint"


@pytest.mark.slow
def test_a_last_ckpt_of_another_model_is_refused_before_any_job(tmp_path, synthetic_data):
    """A classifier's last.ckpt in the segmenter's run folder: --resume would refuse it, so the sweep
    refuses it before queueing anything, in one short line that names the file."""
    from common_blocks.training.runner import train_fold

    classifier = load_config(GATE, [f"data.data_dir={synthetic_data}", *QUICK])
    train_fold(classifier, 1, tmp_path / "other")
    paths = RunPaths.of(tmp_path / "runs", "debug", 1)
    paths.root.mkdir(parents=True)
    foreign = RunPaths.of(tmp_path / "other", classifier.name, 1).last.read_bytes()
    paths.last.write_bytes(foreign)
    line = _refused(tmp_path, "--data-dir", synthetic_data)
    assert "debug/fold1: cannot continue the run" in line and "its weights do not fit the model" in line
    assert len(line) < 700 and paths.last.read_bytes() == foreign


def _second_stage(tmp_path: Path) -> Path:
    """A full-image fine-tune of the debug model that starts from its crops stage (configs/debug.yaml)."""
    tree = yaml.safe_load(DEBUG.read_text())
    tree.update(name="debug_full", init_from=str(DEBUG))
    tree["augment"] = {"crop_height": None, "crop_width": None}
    path = tmp_path / "debug_full.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.slow
def test_slurm_sweep_submits_each_stage_after_the_one_before(fake_slurm, synthetic_data):
    tmp_path = fake_slurm
    ensemble = _ensemble(
        tmp_path, synthetic_data, [{"config": str(_second_stage(tmp_path)), "folds": [0, 1]}]
    )
    outcome = run_in_process("sweep", "--config", ensemble, "--executor", "slurm", *_sets(*QUICK))
    assert outcome.code == 0, outcome.stderr[-3000:]
    first, second, oof = ((tmp_path / f"sbatch_{n}.sh").read_text() for n in (0, 1, 2))
    assert (
        "#SBATCH --array=0-3%4\n" in first and "--dependency" not in first
    )  # debug and the gate, 2 folds each
    assert "#SBATCH --array=0-1%2\n" in second and "#SBATCH --dependency=afterok:4200\n" in second
    assert "#SBATCH --dependency=afterok:4201\n" in oof
    assert "debug_full/fold1: start: job 4201_1" in outcome.stdout and "(after array 4200)" in outcome.stdout


@pytest.mark.slow
def test_local_sweep_starts_a_stage_from_its_earlier_stage_of_the_same_fold(tmp_path, synthetic_data):
    stage = _second_stage(tmp_path)
    ensemble = _ensemble(tmp_path, synthetic_data, [{"config": str(stage), "folds": [0]}], folds=(0,))
    args = ["sweep", "--config", ensemble, "--executor", "local", "--array-parallelism", "2", "--train-only"]
    outcome = run_in_process(*args, *_sets(*QUICK))
    assert outcome.code == 0, outcome.stderr[-3000:] + outcome.stdout[-3000:]
    runs = tmp_path / "runs"
    first, later = RunPaths.of(runs, "debug", 0), RunPaths.of(runs, "debug_full", 0)
    assert outcome.stdout.index("debug/fold0: done") < outcome.stdout.index("debug_full/fold0: start")
    assert load_config(later.config).init_from == str(DEBUG)
    # the later stage's first checkpoint moved on from the earlier stage's best weights, not from scratch
    start = torch.load(first.best, weights_only=True)["state_dict"]
    end = torch.load(later.best, weights_only=True)["state_dict"]
    assert start.keys() == end.keys()
    distance = sum((end[k].float() - start[k].float()).norm() for k in start if start[k].is_floating_point())
    fresh = DefectModule(load_config(later.config).model_dump(mode="json")).state_dict()
    from_scratch = sum(
        (end[k].float() - fresh[k].float()).norm() for k in start if start[k].is_floating_point()
    )
    assert distance < from_scratch
