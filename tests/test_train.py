"""Two-stage training end to end on a tiny synthetic dataset: weights, exact resumption, DDP over gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from i2preg.config import deep_update, load_config
from i2preg.data.synthetic import generate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, sequences=[0, 1], frames=2, seed=11, progress=False)
    return root


def tiny_config(root: Path, **train) -> dict:
    cfg = load_config("tiny")
    cfg["data"].update(root=str(root), train_sequences=["00"], val_sequences=["01"])
    return deep_update(cfg, {"train": train})


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``body`` as a Python script (Lightning's ddp strategy re-launches the script per rank)."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)


KILLABLE_TRAIN = """
    import os, sys, yaml
    import lightning as L
    from i2preg import train as training

    cfg = yaml.safe_load(open(sys.argv[1]))
    kill_stage, kill_step, kill_hook = (sys.argv[3] if len(sys.argv) > 3 else "0:0:batch").split(":")

    class Kill(L.Callback):
        def kill(self, trainer, module, hook):
            if (module.stage, trainer.global_step, hook) == (int(kill_stage), int(kill_step), kill_hook):
                os._exit(17)  # as abrupt as a kill -9: nothing is saved on the way out

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.kill(trainer, module, "batch")

        def on_validation_start(self, trainer, module):
            self.kill(trainer, module, "val")

    training.train(cfg, sys.argv[2], resume=True, callbacks=[Kill()])
"""


def test_two_stages_write_loadable_weights_with_config(tiny_root, tmp_path):
    from i2preg.assembly import full_config
    from i2preg.model.icl import ICL
    from i2preg.train import train

    cfg = tiny_config(tiny_root, stage1_epochs=1, stage2_epochs=1)
    final = train(cfg, tmp_path / "run")
    assert final == tmp_path / "run" / "model.safetensors" and (tmp_path / "run" / "stage1.safetensors").exists()
    with safe_open(str(final), "pt") as f:
        stored = yaml.safe_load(f.metadata()["config"])
    assert stored["model"] == full_config(cfg)["model"]
    model = ICL(stored["model"])
    model.load_state_dict(load_file(str(final)))
    stage1 = load_file(str(tmp_path / "run" / "stage1.safetensors"))
    stage2 = model.state_dict()
    gpdm = {name for name, _ in model.named_parameters() if any(p is _ for p in model.gpdm_parameters())}
    # Stage 2 leaves the frozen GPDM set untouched and changes the rest.
    assert all(torch.equal(stage1[name], stage2[name]) for name in gpdm)
    assert any(not torch.equal(stage1[name], stage2[name]) for name, _ in model.named_parameters() if name not in gpdm)
    from i2preg.weights import export_checkpoint

    export_checkpoint(tmp_path / "run" / "stage2" / "last.ckpt", tmp_path / "exported.safetensors", stored)
    exported = load_file(str(tmp_path / "exported.safetensors"))
    assert exported.keys() == stage2.keys() and all(torch.equal(exported[k], stage2[k]) for k in stage2)
    for stage in (1, 2):
        logs = tmp_path / "run" / f"stage{stage}" / "version_0" / "metrics.csv"
        header = logs.read_text().splitlines()[0]
        assert "val/acc" in header and "val/rte" in header and "train/total" in header


def killable_config(root: Path, max_steps: int) -> dict:
    """The resumption tests' config: both stages 2 epochs of 2 steps (or ``max_steps`` each), a checkpoint every
    step, one loader worker."""
    return tiny_config(root, stage1_epochs=2, stage2_epochs=2, limit_train_batches=2, checkpoint_every_n_steps=1,
                       num_workers=1, stage1_max_steps=max_steps, stage2_max_steps=max_steps)


@pytest.fixture(scope="module")
def uninterrupted(tiny_root, tmp_path_factory):
    """max_steps -> the weights file of an uninterrupted run of ``killable_config`` (each run once per module)."""
    runs = {}

    def weights(max_steps: int) -> Path:
        if max_steps not in runs:
            folder = tmp_path_factory.mktemp("uninterrupted")
            config = folder / "config.yaml"
            config.write_text(yaml.safe_dump(killable_config(tiny_root, max_steps)))
            whole = run_script(folder, KILLABLE_TRAIN, str(config), str(folder / "whole"))
            assert whole.returncode == 0, whole.stderr[-3000:]
            runs[max_steps] = folder / "whole" / "model.safetensors"
        return runs[max_steps]

    return weights


@pytest.mark.parametrize(("kill_at", "max_steps"), [("2:2:batch", -1), ("2:1:batch", -1), ("2:2:val", -1),
                                                     ("2:2:batch", 3)],
                         ids=["epoch-boundary", "mid-epoch", "validation-after-last-batch", "epoch-boundary-step-limit"])
def test_killed_run_resumes_to_the_same_weights(tiny_root, uninterrupted, tmp_path, kill_at, max_steps):
    """Stage 1 for 2 epochs and stage 2 for 2 epochs of 2 steps; a second run is killed in stage 2 at
    global step 2 (the start of its second epoch: the last checkpoint is an epoch-end one), at step 1
    (inside its first epoch: the last checkpoint is a step one) or in the first epoch's validation (the last
    checkpoint is the step one of the epoch's last batch: the resumed run goes on with the next epoch), then
    resumed. With a loader worker, which draws batches before Lightning's on_train_* hooks run (it once
    resumed in epoch 0's order and cut the following epoch short). With a step limit (3: each stage stops one
    step into its second epoch), which once made Lightning close the restored epoch a second time."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(killable_config(tiny_root, max_steps)))
    killed = run_script(tmp_path, KILLABLE_TRAIN, str(config), str(tmp_path / "killed"), kill_at)
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = run_script(tmp_path, KILLABLE_TRAIN, str(config), str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(uninterrupted(max_steps)))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    first_launch = tmp_path / "killed" / "stage2" / "version_0" / "metrics.csv"
    assert (tmp_path / "killed" / "stage2" / "version_1" / "metrics.csv").exists() and first_launch.exists()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    for weights in (uninterrupted(max_steps), tmp_path / "killed" / "model.safetensors"):
        with safe_open(str(weights), "pt") as f:
            assert json.loads(f.metadata()["extra"])["global_step"] == (4 if max_steps == -1 else max_steps)


def test_ddp_two_cpu_processes_end_with_identical_weights(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, stage1_epochs=1, stage2_epochs=1, stage1_max_steps=3, stage2_max_steps=3,
                      devices=2, strategy="ddp", accelerator="cpu")
    cfg["data"]["train_sequences"] = ["00", "01"]  # 8 pairs: 2 per rank and step at batch 2
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    body = """
        import sys, torch, yaml
        import lightning as L
        from i2preg import train as training

        class SaveRankWeights(L.Callback):
            def on_train_end(self, trainer, module):
                torch.save(module.model.state_dict(), f"{sys.argv[2]}/rank{trainer.global_rank}_stage{module.stage}.pt")

        training.train(yaml.safe_load(open(sys.argv[1])), sys.argv[2], callbacks=[SaveRankWeights()])
    """
    result = run_script(tmp_path, body, str(config), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    initial = load_file(str(tmp_path / "stage1.safetensors"))
    for stage in (1, 2):
        rank0 = torch.load(tmp_path / f"rank0_stage{stage}.pt")
        rank1 = torch.load(tmp_path / f"rank1_stage{stage}.pt")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not torch.equal(initial[k], rank0[k]) for k in initial), "stage 2 changed nothing"


def test_finished_run_resumed_with_more_epochs_ends_as_one_trained_that_long(tiny_root, tmp_path):
    """``--resume --set train.stage1_epochs=2`` on a finished 1-epoch run trains its second epoch from the last
    checkpoint: the weights of a 2-epoch run. Without a longer schedule a finished run is left alone, and a
    resumed run refuses any other override."""
    from i2preg.errors import InputError
    from i2preg.train import train

    cfg = tiny_config(tiny_root, stages=[1], limit_train_batches=2)
    whole = load_file(str(train(deep_update(cfg, {"train": {"stage1_epochs": 2}}), tmp_path / "whole")))
    first = train(deep_update(cfg, {"train": {"stage1_epochs": 1}}), tmp_path / "run")
    one_epoch = load_file(str(first))
    assert train(cfg, tmp_path / "run", resume=True) == first
    assert not (tmp_path / "run" / "stage1" / "version_1").exists(), "a finished run was trained again"
    with pytest.raises(InputError, match="data.num_points"):
        train(cfg, tmp_path / "run", resume=True, overrides={"data": {"num_points": 64}})
    longer = load_file(str(train(cfg, tmp_path / "run", resume=True, overrides={"train": {"stage1_epochs": 2}})))
    assert any(not torch.equal(one_epoch[k], longer[k]) for k in longer), "the second epoch changed nothing"
    assert all(torch.equal(whole[k], longer[k]) for k in whole), "extended run differs from the 2-epoch run"
    rows = (tmp_path / "run" / "stage1" / "version_1" / "metrics.csv").read_text().splitlines()
    epochs = {row.split(",")[rows[0].split(",").index("epoch")] for row in rows[1:]}
    assert epochs == {"1"}, f"the extension trained epochs {epochs}, not just the second"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["stage1_epochs"] == 2


def test_stage_two_alone_starts_from_init_weights(tiny_root, tmp_path):
    """How a later session continues: stage 1 in one run, stage 2 in another from its weights (GPDM frozen, or with
    ``train.stage2_trains_gpdm`` trained on)."""
    from i2preg.model.icl import ICL
    from i2preg.train import train

    first = train(tiny_config(tiny_root, stages=[1]), tmp_path / "a")
    assert first.name == "stage1.safetensors" and not (tmp_path / "a" / "model.safetensors").exists()
    final = train(tiny_config(tiny_root, stages=[2], init_weights=str(first)), tmp_path / "b")
    start, end = load_file(str(first)), load_file(str(final))
    model = ICL(load_config("tiny")["model"])
    gpdm = {name for name, p in model.named_parameters() if any(p is q for q in model.gpdm_parameters())}
    assert all(torch.equal(start[name], end[name]) for name in gpdm)
    assert any(not torch.equal(start[name], end[name]) for name in end if name not in gpdm)
    # train.stage2_trains_gpdm: the encoders learn too (with the stage-1 terms), the modules train.frozen names do not
    tuned = load_file(str(train(tiny_config(tiny_root, stages=[2], init_weights=str(first), stage2_trains_gpdm=True,
                                            frozen=["iclm", "prm"]), tmp_path / "c")))
    for module in ("image_encoder", "point_encoder", "image_decoder"):
        assert any(not torch.equal(start[name], tuned[name]) for name in tuned if name.startswith(module + "."))
    assert all(torch.equal(start[name], tuned[name]) for name in tuned if name.startswith(("iclm.", "prm.")))


@pytest.mark.parametrize("setting", [{"strategy": "bogus"}, {"precision": "17"}, {"accelerator": "gpu"}])
def test_hardware_lightning_cannot_run_is_one_error_before_the_run_writes_anything(tiny_root, tmp_path, setting):
    """An unknown strategy or precision, or a GPU where torch sees none, is one InputError naming the settings,
    raised before the run folder exists (in place of Lightning's traceback after config.yaml was written)."""
    from i2preg.errors import InputError
    from i2preg.train import train

    if "accelerator" in setting and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match=f"Lightning cannot train with .*{next(iter(setting.values()))}"):
        train(tiny_config(tiny_root, stages=[1], **setting), tmp_path / "run")
    assert not (tmp_path / "run").exists()
