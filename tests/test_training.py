"""modeling_vqshape.tasks.training, the helpers the example scripts share: values checked without running a script."""

import argparse
import json
import os
from types import SimpleNamespace

import pytest
import torch

from modeling_vqshape import VQShapeConfig
from modeling_vqshape.tasks.training import (
    COMPLETE_MARKER,
    add_hub_arguments,
    check_hub_arguments,
    checkpoint_dirs,
    get_process_scheduler,
    num_training_steps,
    parse_overrides,
    resumable_batches,
    resume_from_checkpoint,
    save_checkpoint,
    set_cpu_threads,
)


class FakeAccelerator:
    """What the checkpoint helpers call: one process, `save_state` writes a file, `load_state` records its folder."""

    is_main_process = True
    device = torch.device("cpu")
    num_processes = 1

    def __init__(self):
        self.loaded = None

    def save_state(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "state.bin"), "w") as handle:
            handle.write("state")

    def load_state(self, folder):
        self.loaded = folder

    def wait_for_everyone(self):
        pass

    def print(self, *args):
        print(*args)

    def skip_first_batches(self, dataloader, num_batches):
        return list(dataloader)[num_batches:]


class Epochs(list):
    """A dataloader stand-in: its batches are `(epoch, index)` for the epoch set last."""

    def __init__(self, size):
        super().__init__()
        self.size, self.batch_size, self.epochs = size, 8, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        self[:] = [(epoch, index) for index in range(self.size)]


def test_parse_overrides_types_values_as_the_config_and_refuses_unknown_keys():
    config = VQShapeConfig()
    overrides = parse_overrides("d_model=16, dropout=0,mask_ratio=0.25,rotation_trick=true,code_lookup=cosine", config)
    assert overrides == {"d_model": 16, "dropout": 0.0, "mask_ratio": 0.25, "rotation_trick": True,
                         "code_lookup": "cosine"}
    assert isinstance(overrides["dropout"], float) and overrides["rotation_trick"] is True
    assert parse_overrides(None, config) == parse_overrides("", config) == {}
    assert config.d_model != 16  # the config itself is not changed
    with pytest.raises(ValueError, match="use_rotation_trick"):
        parse_overrides("use_rotation_trick=true", config)


def test_num_training_steps_shares_batches_among_processes_and_accumulation():
    # 45 batches, 2 processes, accumulating 2: ceil(45 / 2 / 2) = 12 optimizer steps an epoch
    assert num_training_steps(45, 2, 2, num_train_epochs=3) == 36
    assert num_training_steps(45, 1, 1, num_train_epochs=1) == 45
    assert num_training_steps(45, 2, 2, num_train_epochs=3, max_train_steps=7) == 7  # a step budget wins


@pytest.mark.parametrize("num_processes", [1, 3])
def test_prepared_scheduler_is_sized_for_the_processes(num_processes):
    # prepared, a scheduler steps once per process per optimizer step: after 2 optimizer steps of every process the
    # warmup (2 steps) is over, and after 10 the cosine has reached 0, whatever the number of processes
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_process_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10,
                                      num_processes=num_processes)
    rates = []
    for _ in range(10):
        for _ in range(num_processes):
            optimizer.step()
            scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    assert rates[1] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates[5] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 8)).item()))


def test_checkpoints_are_found_only_when_complete_and_resume_continues_from_the_marker(tmp_path):
    accelerator = FakeAccelerator()
    assert checkpoint_dirs(tmp_path) == {}
    assert resume_from_checkpoint(accelerator, "latest", tmp_path) == (0, 0, 0) and accelerator.loaded is None
    save_checkpoint(accelerator, tmp_path, step=4, epoch=0, batches=4)
    save_checkpoint(accelerator, tmp_path, step=8, epoch=1, batches=3)
    folder = tmp_path / "checkpoints"
    # interrupted writes: a hidden partial folder, and one under the final name without its marker
    (folder / ".partial-checkpoint-12").mkdir()
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "state.bin").write_text("half")
    assert checkpoint_dirs(tmp_path) == {4: str(folder / "checkpoint-4"), 8: str(folder / "checkpoint-8")}
    assert json.loads((folder / "checkpoint-8" / COMPLETE_MARKER).read_text()) == {"step": 8, "epoch": 1, "batches": 3}
    assert not list(folder.glob(".partial-checkpoint-[48]"))
    assert resume_from_checkpoint(accelerator, "latest", tmp_path) == (8, 1, 3)
    assert accelerator.loaded == str(folder / "checkpoint-8")
    assert resume_from_checkpoint(accelerator, str(folder / "checkpoint-4"), tmp_path) == (4, 0, 4)
    assert resume_from_checkpoint(accelerator, None, tmp_path) == (0, 0, 0)


def test_resumable_batches_continue_where_a_checkpoint_left_off():
    accelerator = FakeAccelerator()
    straight = resumable_batches(accelerator, Epochs(3))
    seen = [next(straight) for _ in range(7)]
    assert seen == [(0, 1, (0, 0)), (0, 2, (0, 1)), (0, 3, (0, 2)), (1, 1, (1, 0)), (1, 2, (1, 1)), (1, 3, (1, 2)),
                    (2, 1, (2, 0))]
    # a checkpoint after the 5th batch recorded epoch 1, 2 batches: the resumed run goes on with the 6th
    loader = Epochs(3)
    resumed = resumable_batches(accelerator, loader, epoch=1, batches=2)
    assert [next(resumed) for _ in range(2)] == seen[5:7] and loader.epochs == [1, 2]
    with pytest.raises(ValueError, match="no batch of 8 series"):
        next(resumable_batches(accelerator, Epochs(0)))


def test_hub_arguments_need_a_repo_id():
    parser = argparse.ArgumentParser()
    add_hub_arguments(parser)
    args = parser.parse_args(["--push_to_hub", "--hub_model_id", "lab/vqshape", "--hub_private"])
    check_hub_arguments(parser, args, "lab/x")
    assert (args.push_to_hub, args.hub_model_id, args.hub_private) == (True, "lab/vqshape", True)
    with pytest.raises(SystemExit):
        check_hub_arguments(parser, parser.parse_args(["--push_to_hub"]), "lab/x")


def test_cpu_threads_follow_the_cores_unless_chosen(monkeypatch):
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # set by `accelerate launch`: its 1 is not a choice
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        set_cpu_threads(accelerator)
        assert torch.get_num_threads() == cores
        set_cpu_threads(accelerator, 1)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # as many processes as cores: one thread each
        set_cpu_threads(accelerator)
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")  # outside the launcher OMP_NUM_THREADS is the user's
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        set_cpu_threads(accelerator)
        assert torch.get_num_threads() == 3
        set_cpu_threads(SimpleNamespace(device=torch.device("cuda"), num_processes=1), 1)  # not on a GPU
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
