"""synthaug/train/checkpoint.py, the one checkpoint module of what synthaug trains: the files each kind of
checkpoint leaves on disk are pinned (run folders written by earlier versions must still resume)."""

import json

import torch
from safetensors.torch import load_file, save_file

from synthaug.train import checkpoint
from synthaug.train.checkpoint import StepCheckpoints


def _optimizer():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)


def test_the_classifier_checkpoint_keeps_its_files_and_reloads_into_a_fresh_model(tmp_path):
    model, optimizer, schedule = _optimizer()
    trainer = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": 3}
    curves = [{"epoch": 1, "phase": 1, "train_loss": 0.5}, {"epoch": 2, "phase": 1, "train_loss": 0.25}]
    folder = tmp_path / "last"
    checkpoint.save(folder, model, trainer, curves, rng_states=[checkpoint.rng_state(), checkpoint.rng_state()])
    checkpoint.save(folder, model, {**trainer, "epoch": 4}, curves)  # swapped in for the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert sorted(p.name for p in folder.iterdir()) == ["curves.csv", "model.safetensors", "rng.safetensors",
                                                        "trainer.pt"]
    assert set(load_file(folder / "model.safetensors")) == {"weight", "bias"}
    assert torch.load(folder / "trainer.pt", weights_only=True)["epoch"] == 4  # plain weights-only torch.load

    fresh = torch.nn.Linear(3, 2)
    found = checkpoint.find(folder)
    loaded, rows = checkpoint.load(found, fresh)
    assert found == folder and loaded["epoch"] == 4 and rows == curves
    assert torch.equal(fresh.weight, model.weight)
    checkpoint.remove(folder)
    assert checkpoint.find(folder) is None and not any(tmp_path.iterdir())


def test_step_checkpoints_keep_their_files_and_restore_the_newest(tmp_path):
    model, optimizer, schedule = _optimizer()
    steps = StepCheckpoints(tmp_path / "checkpoints", keep=2)

    def weights(folder):
        save_file(model.state_dict(), folder / "weights.safetensors")

    for step in (4, 8, 12):
        last = steps.save(step, weights, optimizer, schedule, info={"training": "abc"})
    assert sorted(p.name for p in steps.folder.iterdir()) == ["step-0000008", "step-0000012"]  # the newest 2
    assert sorted(p.name for p in last.iterdir()) == ["optimizer.pt", "state.json", "weights.safetensors"]
    assert json.loads((last / "state.json").read_text()) == {"training": "abc", "step": 12}
    assert set(torch.load(last / "optimizer.pt", weights_only=True)) == {"optimizer", "lr_schedule"}

    (steps.folder / "step-0000016.partial").mkdir()  # a save a crash interrupted
    _, fresh_optimizer, fresh_schedule = _optimizer()
    seen = []
    found = steps.restore(fresh_optimizer, fresh_schedule, check=lambda folder, info: seen.append(info))
    assert found == (last, 12) and seen == [{"training": "abc", "step": 12}]
    assert not (steps.folder / "step-0000016.partial").exists()
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]

