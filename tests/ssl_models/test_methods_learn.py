"""Every method learns: a short real run on the bundled CIFAR-10 sample lowers its loss
and lifts kNN or linear-probe accuracy above the same architecture at random init.

Slow (10-200 s per method on one thread, as `make test`'s two workers run them; about 17 min
of one core in all); CI runs them.
"""

import copy
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.evaluation import extract_features, knn_accuracy, linear_probe
from ssl_models.methods import METHODS, build_method, default_backbone
from ssl_models.training import TrainSettings, pretrain
from tests.conftest import SAMPLE

POOL = 5000  # the whole bundled unlabeled sample
WIDTH = 8  # ResNet width: 8 trains about twice as fast as the pipeline's 16 on 2 cores
BATCH_SIZE = 64  # more steps for the same images: the non-contrastive methods need them
# 2 epochs where that leaves a clear margin over random init (1 thread, seed 0, kNN / probe
# after 2 epochs, random init 0.265 / 0.267; benchmarks/learn_budget.py, 2026-12-02): simclr
# 0.317 / 0.342, vicreg 0.326 / 0.338, mocov3 0.291 / 0.301, rotation 0.286 / 0.324, inpainting
# 0.281 / 0.303, colorization 0.281 / 0.313. 3 for DINO (its loss is compared from epoch 2),
# Barlow Twins and NNCLR (smaller margins at 3: kNN 0.260 and 0.257).
EPOCHS = 2
# MAE's encoder sees a quarter of the tokens, so an epoch costs about a quarter of the
# others'; at 3 epochs (batch 128) it had not yet passed random init (kNN 0.233 vs 0.267);
# 12 epochs gave kNN 0.295 / probe 0.360, 8 give 0.285 / 0.365 (ViT random init 0.251 / 0.335).
# MoCo's queue fills during the first epoch and every added negative raises the loss (a
# harder (K+1)-way choice), so its loss is compared from the second epoch on; and while
# the keys spread out the loss plateaus for a few epochs (epoch 2 -> 3: 5.638 -> 5.712),
# so it gets 5 epochs (epochs 2 -> 5 measured here: 5.620 -> 5.509).
# BYOL learns with its short-run recipe (byol.py: tau_base 0.9, heads 128 wide, predictor lr
# x10), but 4 epochs left no margin: a fresh-clone CI run (2026-12-03) ended them at probe 0.246
# / kNN 0.219, below random init, where an idle run of the same test gave 0.284 / 0.247 and
# another session's 0.314 / 0.258 (float order differs with threads and worker history). After
# 6 epochs, 1 thread, seeds 0-3: probe 0.312 / 0.333 / 0.334 / 0.309, kNN 0.258 / 0.270 / 0.302
# / 0.270 (epoch 4 of those runs: probe 0.269-0.329). With the paper's tau_base 0.996 and
# 512-wide heads it stayed below random init at 4 epochs and reached only 0.239 / 0.285 at 10.
# SimSiam with its 10x predictor lr: kNN 0.288-0.335 / probe 0.312-0.349 at 10 epochs over
# 4 seeds (random init 0.237-0.264 / 0.263-0.298); 7 epochs: 0.303 / 0.344 (seed 0, 1 thread).
# Relative patch position learns a little, and best early: with its patches seen at 8 px and
# BatchNorm's running statistics kept for whole images (relative_patch.py), 2 epochs on 1 thread
# gave kNN 0.275 / 0.282 / 0.269 and probe 0.282 / 0.291 / 0.302 on seeds 0 / 1 / 2; 3 epochs
# fell back below random init on seed 0 (0.235 / 0.255; seed 1 0.284 / 0.293). So it gets 2.
# DINO's loss rises during the first epoch while the teacher's targets sharpen away from
# uniform (6.544 -> 6.603), then falls (-> 6.591 at epoch 3; kNN 0.247 / probe 0.281 vs random
# init 0.265 / 0.267, 2026-12-02, 827 s on a heavily loaded 2-core machine), so its loss is
# compared from the second epoch, as MoCo's. iBOT (ViT) runs 4 epochs; its loss rises in the first
# epoch as DINO's (1 thread: 9.172 9.593 9.471 9.463; kNN 0.251 -> 0.277, probe 0.335 -> 0.341;
# 6 epochs gave 0.290 / 0.340 in twice the time, 2026-12-02).
# With one thread per test worker (make test) MoCo's epoch losses stayed flat from epoch 2
# (5.764 5.775 5.722 5.775) while kNN went 0.265 -> 0.313 and the probe 0.267 -> 0.350: the
# queue's keys come from an encoder that keeps improving, so each epoch's task is harder than
# the last and epoch means do not compare. For MoCo the loss is compared on one fixed task
# instead, with the weights after epoch 2 and with the final ones: the queue refilled with
# each one's own keys of the same 1,024 images, then the loss of the same batch with the
# same random views (_loss_on_a_fixed_task). (With the final queue for both, the epoch-2
# weights scored 4.490 against 5.759: keys from another feature space are easy negatives.)
EPOCHS_FOR = {"mae": 8, "moco": 5, "byol": 6, "simsiam": 7, "ibot": 4, "dino": 3, "barlow_twins": 3, "nnclr": 3, "swav": 3}
LOSS_FROM_EPOCH = {"moco": 2, "dino": 2, "ibot": 2}
LOSS_ON_A_FIXED_TASK = {"moco"}


def _load(archive, prefix: str = "", limit: int | None = None):
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(prefix):
                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                labels.append(member.name.split("/")[-2])
                if limit and len(images) == limit:
                    break
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    classes = sorted(set(labels))
    return tensor, torch.tensor([classes.index(label) for label in labels])


@pytest.fixture(scope="module")
def data():
    pool, _ = _load(SAMPLE / "unlabeled.tar.gz", limit=POOL)
    train_x, train_y = _load(SAMPLE / "labeled.tar.gz", "labeled/train/")
    test_x, test_y = _load(SAMPLE / "labeled.tar.gz", "labeled/test/")
    return pool, train_x, train_y, test_x, test_y


def _scores(encoder, train_x, train_y, test_x, test_y):
    ftr, fte = extract_features(encoder, train_x), extract_features(encoder, test_x)
    return knn_accuracy(ftr, train_y, fte, test_y, k=20), linear_probe(ftr, train_y, fte, test_y, weight_decays=(1e-2, 1e-1, 1.0)).accuracy


def _new_encoder(name: str) -> Encoder:
    return Encoder(default_backbone(name), {"width": WIDTH, "image_size": 32}, 32)


@pytest.fixture(scope="module")
def random_init_scores(data):
    """(kNN, probe) of a random-init encoder per backbone, computed once per backbone."""
    cache = {}

    def scores(name: str) -> tuple[float, float]:
        backbone = default_backbone(name)
        if backbone not in cache:
            torch.manual_seed(1)  # not the trained encoder's seed: an independent draw
            cache[backbone] = _scores(_new_encoder(name), *data[1:])
        return cache[backbone]

    return scores


# Not run (reported as xfail with the reason): a known failure would cost CI minutes to
# fail again; run them by hand with --runxfail when working on these methods.
KNOWN_FAILING: dict[str, str] = {}  # none since SwAV's projector ends with BatchNorm (ssl_models/methods/swav.py)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_FAILING[n], run=False)) if n in KNOWN_FAILING else n for n in sorted(METHODS)],
)
def test_method_lowers_its_loss_and_beats_random_init(name, data, random_init_scores):
    pool, train_x, train_y, test_x, test_y = data
    random_knn, random_probe = random_init_scores(name)
    torch.manual_seed(0)
    method = build_method(name, _new_encoder(name), ViewPolicy())
    recommended = getattr(method, "recommended", {})
    settings = TrainSettings(epochs=EPOCHS_FOR.get(name, EPOCHS), batch_size=BATCH_SIZE, warmup_epochs=0, **recommended)
    from_epoch = LOSS_FROM_EPOCH.get(name, 1)
    snapshots = {}

    def keep_weights(stats) -> None:
        if stats.epoch == from_epoch:
            snapshots["earlier"] = copy.deepcopy(method.state_dict())

    history = pretrain(method, pool, settings, progress=False, on_epoch_end=keep_weights)
    knn, probe = _scores(method.encoder, train_x, train_y, test_x, test_y)
    first, last = history[from_epoch - 1].loss, history[-1].loss
    if name in LOSS_ON_A_FIXED_TASK:
        first = _loss_on_a_fixed_task(method, snapshots["earlier"], pool[:1280])
        last = _loss_on_a_fixed_task(method, method.state_dict(), pool[:1280])
        print(f"{name}: loss on a fixed task after epoch {from_epoch} {first:.3f}, at the end {last:.3f}")
    curve = " ".join(f"{h.loss:.3f}" for h in history)
    print(f"{name}: loss by epoch {curve}; kNN {random_knn:.3f} -> {knn:.3f}; probe {random_probe:.3f} -> {probe:.3f}")
    assert last < first
    assert knn > random_knn or probe > random_probe


def _loss_on_a_fixed_task(method, weights: dict, images: torch.Tensor, batch: int = 256) -> float:
    """The loss of ``method`` with ``weights`` on the first ``batch`` of ``images``, after its
    queue was refilled with its own keys of the rest; fixed random views; on a copy."""
    trial = copy.deepcopy(method)
    trial.load_state_dict(weights)
    trial.queue_filled.zero_()
    torch.manual_seed(7)
    with torch.no_grad():
        for start in range(batch, images.shape[0], batch):  # training steps enqueue their keys
            trial.training_step(images[start : start + batch].float().div(255))
        return trial.training_step(images[:batch].float().div(255)).loss.item()
