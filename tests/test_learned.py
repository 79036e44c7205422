"""The learned route's estimator: contract, determinism, honest defaults, augmentation, audit.

Training stays tiny: 16 x 16 images, a few cases, a few epochs, one torch thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from torch import nn

from radiodeep.learned.audit import dihedral, find_copies, tensor_hash
from radiodeep.learned.augment import Augment, parse_augment, rotate
from radiodeep.learned.estimator import CNNClassifier, TrainingDiverged
from radiodeep.learned.networks import FineTuneNet, TinyCNN

FAST = dict(device="cpu", threads=1)


def images(n=10, size=16, seed=0, signal=0.0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3, size, size), dtype=np.float32)
    y = np.array([0, 1] * (n // 2) + [0] * (n % 2))
    x[y == 1, :, 4:12, 4:12] += np.float32(signal)
    return x, y


def tiny(**kw):
    params = dict(module=TinyCNN, module_params={"width": 4}, epochs=2, lr=0.05, batch_size=4, seed=0, **FAST)
    params.update(kw)
    return CNNClassifier(**params)


# --------------------------------------------------------------------------- estimator contract
def test_constructor_only_stores_and_clone_is_unfitted():
    est = tiny(augment={"rotate_deg": 10})
    c = clone(est)
    assert c.get_params() == est.get_params()
    assert not hasattr(c, "net_")
    x, y = images()
    est.fit(x, y)
    assert hasattr(est, "net_") and not hasattr(clone(est), "net_")


def test_every_fit_starts_from_fresh_weights():
    x, y = images(signal=0.5)
    est = tiny()
    p1 = est.fit(x, y).predict_proba(x)
    est.fit(x[::-1].copy(), y[::-1].copy())  # another fit in between
    p2 = est.fit(x, y).predict_proba(x)
    assert np.array_equal(p1, p2)  # not trained on from the previous weights


def test_cpu_results_are_bit_identical_run_to_run_and_depend_on_seed():
    x, y = images(signal=0.3)
    kw = dict(augment={"rotate_deg": 15, "flip": ["horizontal", "vertical"]})
    a = tiny(**kw).fit(x, y).predict_proba(x)
    b = tiny(**kw).fit(x, y).predict_proba(x)
    c = tiny(seed=1, **kw).fit(x, y).predict_proba(x)
    assert a.dtype == np.float64 and a.shape == (10, 2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_flat_rows_need_input_shape_and_are_reshaped():
    x, y = images()
    flat = x.reshape(len(x), -1)
    with pytest.raises(ValueError, match="input_shape"):
        tiny().fit(flat, y)
    p_flat = tiny(input_shape=(3, 16, 16)).fit(flat, y).predict_proba(flat)
    p_img = tiny().fit(x, y).predict_proba(x)
    assert np.array_equal(p_flat, p_img)


def test_module_must_return_logits_per_class():
    x, y = images()
    with pytest.raises(ValueError, match="must return logits"):
        tiny(module_params={"width": 4, "n_classes": 3}).fit(x, y)


# --------------------------------------------------------------------------- honest defaults
def test_no_hidden_validation_split_by_default():
    x, y = images(n=10)
    est = tiny(epochs=1).fit(x, y)
    assert est.n_training_images_ == 10
    assert "valid_loss" not in est.net_.history[-1]
    est = tiny(epochs=1, train_split=0.2).fit(x, y)
    assert "valid_loss" in est.net_.history[-1] and est.n_training_images_ == 8


def test_inner_split_too_small_names_the_numbers():
    x, y = images(n=4)
    with pytest.raises(ValueError, match=r"train_split=0.2 .*\{np.int64\(0\): 2|train_split=0.2 .* 2"):
        tiny(batch_size=2, train_split=0.2).fit(x, y)


def test_last_batch_of_one_image_is_dropped_only_then():
    x, y = images(n=10)
    assert len(tiny(epochs=1, batch_size=3).fit(x[:10], y[:10]).net_.history[-1]["batches"]) == 3  # 3+3+3 (+1 dropped)
    assert len(tiny(epochs=1, batch_size=4).fit(x, y).net_.history[-1]["batches"]) == 3  # 4+4+2


def test_batch_size_larger_than_training_fold_is_refused_with_numbers():
    x, y = images(n=6)
    with pytest.raises(ValueError, match="batch_size 16 is larger than the 6 training images"):
        tiny(batch_size=16).fit(x, y)


def test_nan_loss_names_epoch_and_learning_rate():
    x, y = images()
    with pytest.raises(TrainingDiverged, match=r"epoch 1 of 2 \(learning rate 1e\+30"):
        tiny(module_params={"width": 4, "batchnorm": False}, lr=1e30).fit(x, y)


def test_device_auto_is_the_cpu_without_cuda():
    x, y = images()
    est = CNNClassifier(TinyCNN, {"width": 4}, epochs=1, batch_size=4, device="auto", threads=1).fit(x, y)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(est.net_.module_.parameters()).device.type == expected


# --------------------------------------------------------------------------- augmentation
def test_augmentation_happens_in_fit_only():
    x, y = images()
    est = tiny(augment={"rotate_deg": 30, "flip": ["horizontal"]}).fit(x, y)
    module = est.net_.module_
    with torch.no_grad():
        plain = torch.softmax(module.eval()(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(est.predict_proba(x), plain, atol=1e-6)  # scoring sees the images as they are


def test_grid_expands_every_combination_inside_fit():
    aug = parse_augment({"mode": "grid", "rotate_deg": [0, 90], "flip": ["horizontal", "vertical"]})
    assert aug.grid_size() == 8
    x, y = images(n=6)
    xe, ye = aug.expand(torch.from_numpy(x), torch.from_numpy(y))
    assert xe.shape[0] == 48 and ye.tolist() == y.tolist() * 8
    assert torch.equal(xe[:6], torch.from_numpy(x))  # identity first
    est = tiny(augment={"mode": "grid", "rotate_deg": [0, 90], "flip": ["horizontal"]}, batch_size=8).fit(x, y)
    assert est.n_training_images_ == 24 and est.augment_record_["images_per_training_image"] == 4


def test_rotation_by_90_degrees_matches_rot90_and_random_mode_is_seeded():
    x = torch.from_numpy(images(n=2)[0])
    r = rotate(x, torch.tensor([90.0, 90.0]))
    assert torch.allclose(r, torch.rot90(x, 1, (-2, -1)), atol=1e-5) or \
        torch.allclose(r, torch.rot90(x, -1, (-2, -1)), atol=1e-5)
    aug = Augment("random", 20, ("horizontal",))
    a = aug.random_batch(x, torch.Generator().manual_seed(3))
    b = aug.random_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(ValueError, match="unknown flip"):
        parse_augment({"flip": ["diagonal"]})


# --------------------------------------------------------------------------- audit and the planted leak
class DihedralLinear(nn.Module):
    """A linear model on the mean of an image's 8 flips / 90-degree rotations: invariant to exactly
    the augmentation, so it memorises a case from any augmented copy (as augmentation is meant to
    make networks do), which is what turns a leaked copy into a right answer."""

    def __init__(self, n_in=3 * 16 * 16, n_classes=2):
        super().__init__()
        self.fc = nn.Linear(n_in, n_classes)

    def forward(self, x):
        views = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
        views += [v.flip(-1) for v in views]
        return torch.stack([self.fc(v.flatten(1)) for v in views]).mean(0)


def memoriser(**kw):
    return CNNClassifier(DihedralLinear, {}, epochs=25, lr=1e-2, optimizer="adam", lr_schedule=None,
                         batch_size=8, seed=0, **FAST, **kw)


def test_audit_finds_exact_and_transformed_copies_only():
    x, _ = images(n=4)
    copy = (dihedral(x[1])[5] * 0.5 + 0.2)[None]  # a flipped/rotated, renormalised copy of case 1
    assert [(i, j) for i, j, _ in find_copies(x, copy)] == [(0, 1)]
    assert find_copies(x[[0, 2, 3]], x[1:2]) == []
    assert tensor_hash(x[0]) == tensor_hash(x[0].copy()) != tensor_hash(x[1])


def test_planted_leak_is_caught_by_the_audit_and_inflates_auc_on_noise(tmp_path):
    n = 10
    x, y = images(n=n, seed=5)  # pure noise: the labels carry no signal
    ids = [f"c{i}" for i in range(n)]
    # honest leave-one-out: the held-out case never reaches training
    honest, leaks = [], 0
    for i in range(n):
        tr = np.delete(np.arange(n), i)
        lookup = {tensor_hash(x[j]): ids[j] for j in range(n)}
        est = memoriser(audit_dir=str(tmp_path / "audit"), audit_name="honest", audit_ids=lookup).fit(x[tr], y[tr])
        honest.append(est.predict_proba(x[i:i + 1])[0, 1])
        leaks += est.audit_["leak"]
        assert ids[i] not in est.train_ids_
    record = json.loads((tmp_path / "audit" / "honest" / "heldout_c3.json").read_text(encoding="utf-8"))
    assert record["heldout_cases"] == ["c3"] and "c3" not in record["training_cases"]
    assert len(record["training_sha256"]) == n - 1 and record["leak"] is False
    assert leaks == 0
    assert roc_auc_score(y, honest) <= 0.65

    # the planted leak: augment (8 flips/rotations, intensity jitter) BEFORE the split, then leave one row out
    rng = np.random.default_rng(1)
    aug = np.concatenate([dihedral(t) * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05) for t in x]).astype(np.float32)
    case_of = np.repeat(np.arange(n), 8)
    lookup = {tensor_hash(t): ids[case_of[r]] for r, t in enumerate(aug)}  # every copy named by its case
    leaky, caught = [], []
    for i in range(n):
        row = 8 * i  # the case's own view is held out; its 7 transformed copies stay in training
        tr = np.delete(np.arange(len(aug)), row)
        est = memoriser(audit_dir=str(tmp_path / "audit"), audit_name="leaky", audit_ids=lookup)
        est.fit(aug[tr], y[case_of[tr]])
        leaky.append(est.predict_proba(aug[row:row + 1])[0, 1])
        caught.append(len(est.audit_["checks"]["near_copies"]))
    assert all(c == 7 for c in caught)  # every fold: all seven copies of the held-out case found
    record = json.loads((tmp_path / "audit" / "leaky" / "heldout_c4.json").read_text(encoding="utf-8"))
    assert record["leak"] and record["checks"]["same_case_id"] == ["c4"]
    assert {c["training_case"] for c in record["checks"]["near_copies"]} == {"c4"}
    assert roc_auc_score(y, leaky) >= 0.9  # inflated on pure noise


# --------------------------------------------------------------------------- fine-tuning a deep-route backbone
def test_finetune_net_new_head_and_freezing():
    torch.manual_seed(0)
    net = FineTuneNet("resnet18", weights=None, n_classes=2, freeze="features")
    trainable = [n for n, p in net.net.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    net = FineTuneNet("resnet18", weights=None, freeze="layer2")
    frozen = {n.split(".")[0] for n, p in net.net.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}
    net.train()
    assert not net.net.bn1.training and net.net.layer3[0].bn1.training  # frozen BatchNorm keeps its statistics
    net = FineTuneNet("alexnet", weights=None, freeze="fc6")
    assert [n for n, p in net.net.named_parameters() if p.requires_grad] == [
        "classifier.4.weight", "classifier.4.bias", "classifier.6.weight", "classifier.6.bias"]
    with pytest.raises(ValueError, match="no layer with parameters 'layer9'"):
        FineTuneNet("resnet18", weights=None, freeze="layer9")


def test_frozen_features_do_not_change_in_fit():
    x, y = images(n=6, size=32)
    est = CNNClassifier(FineTuneNet, {"backbone": "resnet18", "weights": None, "freeze": "features"},
                        epochs=1, lr=0.1, batch_size=3, **FAST).fit(x, y)
    fresh = FineTuneNet("resnet18", weights=None)
    got = est.net_.module_.net.state_dict()
    for k, v in fresh.net.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k  # weights and BatchNorm statistics untouched
    assert not torch.equal(got["fc.weight"], fresh.net.state_dict()["fc.weight"])
