"""The shared pretraining loop: optimiser groups, the schedule and collapse statistics."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

from ssl_models.augment import ViewPolicy
from ssl_models.data import TensorImages
from ssl_models.encoder import Encoder
from ssl_models.methods import build_method
from ssl_models.training import (
    CheckpointMismatch,
    EpochStats,
    TrainingStopped,
    TrainSettings,
    _make_optimizer,
    checkpoint_extra,
    collapse_warning,
    effective_rank,
    pretrain,
)


def tiny_simsiam(**hparams):
    return build_method("simsiam", Encoder("resnet18_cifar", {"width": 4}), ViewPolicy(), **hparams)


def test_lr_scales_speed_up_one_submodule_only():
    method = tiny_simsiam(predictor_lr_scale=10.0)
    optimizer = _make_optimizer(method, TrainSettings(weight_decay=1e-4), lr=0.1)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    # Every trainable parameter is in exactly one group.
    assert sorted(lr_of) == sorted(id(p) for p in method.parameters() if p.requires_grad)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(lr_of)
    predictor = {id(p) for p in method.predictor.parameters()}
    for p in method.parameters():
        assert lr_of[id(p)] == pytest.approx(1.0 if id(p) in predictor else 0.1)
        assert decay_of[id(p)] == (1e-4 if p.ndim > 1 else 0.0)  # no decay on biases and norms
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # the logged group is the unscaled one


def test_scaled_groups_follow_the_same_schedule(tmp_path):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    settings = TrainSettings(epochs=3, batch_size=8, lr=0.256, warmup_epochs=1)  # peak lr 0.008 at batch 8
    checkpoint = tmp_path / "ckpt.pt"
    lrs_after_epoch = {}

    def read_lrs(stats: EpochStats) -> None:
        groups = torch.load(checkpoint)["optimizer"]["param_groups"]
        lrs_after_epoch[stats.epoch] = (stats.lr, sorted({group["lr"] for group in groups}))

    pretrain(tiny_simsiam(predictor_lr_scale=10.0), images, settings, on_epoch_end=read_lrs, checkpoint_path=checkpoint, progress=False)
    logged, (base, scaled) = lrs_after_epoch[2]  # 4 of 6 steps: 2 of warm-up, halfway down the cosine
    assert base == pytest.approx(0.5 * 0.008) and scaled == pytest.approx(10 * base)
    assert logged == pytest.approx(base)


def test_effective_rank_and_the_collapse_warning():
    torch.manual_seed(0)
    spread = torch.randn(512, 64)
    line = torch.randn(512, 1) * torch.randn(1, 64)  # every embedding on one line
    assert effective_rank(spread) > 50
    assert effective_rank(line) == pytest.approx(1.0, abs=0.05)

    def stats(std: float, rank: float) -> EpochStats:
        return EpochStats(epoch=1, loss=0.0, lr=0.1, images_per_s=1.0, embedding_std=std, effective_rank=rank)

    assert collapse_warning(stats(0.12, 40.0), dim=64) is None
    assert "point" in collapse_warning(stats(0.001, 40.0), dim=64)
    assert "line" in collapse_warning(stats(0.12, 1.2), dim=64)


# --- resume -----------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


def tiny_simclr(seed: int = 0):
    torch.manual_seed(seed)  # a different seed: the resumed run must take its weights from the checkpoint
    return build_method("simclr", Encoder("resnet18_cifar", {"width": 8}), ViewPolicy(), hidden_dim=32, projection_dim=16)


RESUME_SETTINGS = TrainSettings(epochs=2, batch_size=8, lr=0.1, warmup_epochs=1)


def train_without_interruption(images) -> dict:
    method = tiny_simclr()
    pretrain(method, images, RESUME_SETTINGS, progress=False)
    return method.encoder.state_dict()


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_a_run_resumed_after_a_crash_gives_the_same_encoder(tmp_path):
    from tasks.image.shards import ShardReader, write_shards

    pixels = torch.randint(0, 256, (36, 32, 32, 3), dtype=torch.uint8)  # 4 steps an epoch, 4 images dropped
    write_shards(tmp_path / "shards", iter(pixels.numpy()), image_size=32, count=36)
    images = ShardReader(tmp_path / "shards")  # the streaming path, from disk
    reference = train_without_interruption(images)
    checkpoint = tmp_path / "ckpt.pt"

    def crash_after_epoch_1(stats: EpochStats) -> None:
        raise Crash  # after the epoch's checkpoint is written, like a kill -9 there

    with pytest.raises(Crash):
        pretrain(
            tiny_simclr(),
            images,
            RESUME_SETTINGS,
            on_epoch_end=crash_after_epoch_1,
            checkpoint_path=checkpoint,
            progress=False,
            extra={"run_id": "abc"},
        )
    assert checkpoint_extra(checkpoint) == {"run_id": "abc"}
    resumed = tiny_simclr(seed=1)
    epochs_seen = []
    history = pretrain(
        resumed,
        ShardReader(tmp_path / "shards"),
        RESUME_SETTINGS,
        on_epoch_end=lambda s: epochs_seen.append(s.epoch),
        checkpoint_path=checkpoint,
        progress=False,
    )
    assert epochs_seen == [2] and [s.epoch for s in history] == [1, 2]
    assert_identical(resumed.encoder.state_dict(), reference)
    # The same images as an in-memory tensor train the same model: the source does not matter.
    assert_identical(train_without_interruption(pixels.permute(0, 3, 1, 2)), reference)


def test_a_run_resumes_mid_epoch(tmp_path):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    reference = train_without_interruption(images)
    checkpoint = tmp_path / "ckpt.pt"
    settings = TrainSettings(**{**RESUME_SETTINGS.__dict__, "checkpoint_every_steps": 1})

    class FailingDisk(TensorImages):
        reads = 0

        def read(self, indices, pin=False):
            FailingDisk.reads += 1
            if FailingDisk.reads == 7:  # the third batch of epoch 2
                raise OSError("disk gone")
            return super().read(indices, pin)

    with pytest.raises(OSError):
        pretrain(tiny_simclr(), FailingDisk(images), settings, checkpoint_path=checkpoint, progress=False)
    state = torch.load(checkpoint, weights_only=True)
    assert (state["sampler"]["epoch"], state["sampler"]["position"], state["step"]) == (2, 2, 6)
    resumed = tiny_simclr(seed=1)
    history = pretrain(resumed, images, settings, checkpoint_path=checkpoint, progress=False)
    assert_identical(resumed.encoder.state_dict(), reference)
    reference_history = pretrain(tiny_simclr(), images, RESUME_SETTINGS, progress=False)
    assert [s.loss for s in history] == [s.loss for s in reference_history]  # the epoch's running sums survived


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    reference = train_without_interruption(images)
    checkpoint = tmp_path / "ckpt.pt"
    settings = TrainSettings(**{**RESUME_SETTINGS.__dict__, "prefetch_batches": 0})

    class CtrlCDuringStep3(TensorImages):
        reads = 0

        def read(self, indices, pin=False):
            CtrlCDuringStep3.reads += 1
            if CtrlCDuringStep3.reads == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return super().read(indices, pin)

    with pytest.raises(KeyboardInterrupt, match="run the same command again to resume"):
        pretrain(tiny_simclr(), CtrlCDuringStep3(images), settings, checkpoint_path=checkpoint, progress=False)
    assert torch.load(checkpoint, weights_only=True)["step"] == 3  # the step under way was finished first
    resumed = tiny_simclr(seed=1)
    pretrain(resumed, images, settings, checkpoint_path=checkpoint, progress=False)
    assert_identical(resumed.encoder.state_dict(), reference)


def test_a_checkpoint_from_other_settings_is_refused(tmp_path):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    checkpoint = tmp_path / "ckpt.pt"
    pretrain(tiny_simclr(), images, TrainSettings(epochs=1, batch_size=8), checkpoint_path=checkpoint, progress=False)
    with pytest.raises(CheckpointMismatch, match=r"lr: 0.3 in the checkpoint, 0.1 now.*delete the checkpoint"):
        pretrain(tiny_simclr(), images, TrainSettings(epochs=1, batch_size=8, lr=0.1), checkpoint_path=checkpoint, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint"])
def test_an_unreadable_checkpoint_is_set_aside_and_training_starts_afresh(tmp_path, caplog, damage):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    reference = train_without_interruption(images)
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        pretrain(tiny_simclr(), images, RESUME_SETTINGS, on_epoch_end=lambda s: (_ for _ in ()).throw(Crash()), checkpoint_path=checkpoint)
    written = checkpoint.read_bytes()
    # a disk that filled up or a copy cut short; or a file of another kind under the name
    checkpoint.write_bytes(written[: len(written) // 2] if damage == "truncated" else b"not a zip archive")
    assert checkpoint_extra(checkpoint) is None  # the stage asks first: set aside, nothing to resume
    aside = tmp_path / "ckpt.pt.corrupt"
    assert aside.exists() and not checkpoint.exists()
    assert f"set aside as {aside}, training starts afresh" in caplog.text
    if damage == "truncated":
        checkpoint.write_bytes(written[: len(written) // 2])  # the loop itself, asked directly, does the same
    fresh = tiny_simclr()
    history = pretrain(fresh, images, RESUME_SETTINGS, checkpoint_path=checkpoint, progress=False)
    assert [s.epoch for s in history] == [1, 2]
    assert_identical(fresh.encoder.state_dict(), reference)  # afresh: as if there had never been a checkpoint
    assert aside.exists() and checkpoint.exists()


def test_should_stop_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    reference = train_without_interruption(images)
    checkpoint = tmp_path / "ckpt.pt"
    asked = []

    def server_gone_at_step_6() -> str | None:
        asked.append(1)
        return "the tracking server went away" if len(asked) == 6 else None

    with pytest.raises(TrainingStopped, match=r"the tracking server went away; stopped training at epoch 2, step 2 of 4, checkpoint saved"):
        pretrain(tiny_simclr(), images, RESUME_SETTINGS, checkpoint_path=checkpoint, progress=False, should_stop=server_gone_at_step_6)
    assert torch.load(checkpoint, weights_only=True)["step"] == 6
    resumed = tiny_simclr(seed=1)
    pretrain(resumed, images, RESUME_SETTINGS, checkpoint_path=checkpoint, progress=False)
    assert_identical(resumed.encoder.state_dict(), reference)


def test_a_checkpoint_that_does_not_fit_names_the_file_and_leaves_the_old_one(tmp_path, small_fs):
    """Real: a full 4 MB file system; torch.save's "file write failed" becomes ENOSPC naming the file."""
    import errno

    folder = small_fs(4)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    checkpoint = folder / "ckpt.pt"
    pretrain(tiny_simclr(), images, TrainSettings(epochs=1, batch_size=8), checkpoint_path=checkpoint, progress=False)
    before = checkpoint.read_bytes()
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"\0" * (free - len(before) // 2))  # less free than one more checkpoint
    with pytest.raises(OSError) as raised:
        pretrain(tiny_simclr(), images, TrainSettings(epochs=2, batch_size=8), checkpoint_path=folder / "other.pt", progress=False)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(folder / "other.pt")
    assert not (folder / "other.tmp").exists()  # nothing half-written stays
    assert checkpoint.read_bytes() == before


def test_the_free_space_check_says_how_much_more_is_needed(tmp_path):
    import errno

    from ssl_models.training import check_free_space

    check_free_space(tmp_path / "ckpt.pt", 1)
    with pytest.raises(OSError) as raised:
        check_free_space(tmp_path / "ckpt.pt", shutil.disk_usage(tmp_path).free + 5 * 2**20)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "ckpt.pt")
    assert 5 * 2**20 - 2**20 < raised.value.needed_bytes <= 5 * 2**20 + 2**20  # another writer may move it a little
