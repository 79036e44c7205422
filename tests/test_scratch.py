"""CNNs from scratch and their ensembles: combinations, ties, a diverging member, the record."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from radiodeep.learned.architectures import ArchitectureError
from radiodeep.learned.audit import tensor_hashes
from radiodeep.learned.scratch import (CNNEnsemble, ScratchNet, check_scratch_input, combine_scores,
                                       member_predictions, scratch_classifier)

FAST = {"epochs": 1, "batch_size": 4, "device": "cpu", "threads": 1}


def _images(n=8, side=20, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    X = rng.random((n, 2, side, side)).astype(np.float32)
    X[y == 1, :, 6:14, 6:14] += 1.0
    return X, y


def test_sigmoid_head_is_binary_cross_entropy():
    torch.manual_seed(0)
    net = ScratchNet("usf1", in_channels=2, input_size=16).eval()
    x = torch.rand(5, 2, 16, 16)
    logits = net(x)
    z = net.net(x)[:, 0]
    assert torch.equal(logits[:, 0], torch.zeros(5))
    t = torch.tensor([0, 1, 1, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, t)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, t.float())
    assert torch.allclose(ce, bce, atol=1e-6)


def test_l2_hook_adds_keras_gradient_on_the_eight_unit_layer_only():
    torch.manual_seed(0)
    net = ScratchNet("usf1", in_channels=2, input_size=16)
    net.zero_grad()
    (net(torch.zeros(1, 2, 16, 16))[:, 1] * 0).sum().backward()  # zero loss: only L2 remains
    w = net.net.fc2.weight
    assert torch.allclose(w.grad, 0.02 * w.detach())  # d/dw 0.01·Σw²
    assert torch.count_nonzero(net.net.fc1.weight.grad) == 0


def test_larger_crop_is_cut_to_the_centre():
    torch.manual_seed(0)
    net = ScratchNet("usf1", in_channels=2, input_size=16).eval()
    x = torch.rand(2, 2, 24, 24)
    assert torch.equal(net(x), net(x[..., 4:20, 4:20]))


def test_roi_smaller_than_network_is_refused_with_both_sizes():
    with pytest.raises(ArchitectureError, match=r"usf1 expects 100×100 inputs but the ROI stage gives 64×64"):
        check_scratch_input("usf1", 2, 64, 100)
    with pytest.raises(ArchitectureError, match=r"expects 32×32 inputs but is asked for 40×40"):
        check_scratch_input("tests.user_nets:Tiny", 2, 40, None)
    assert check_scratch_input("usf1", 2, 142, 100) == 100
    X, y = _images(side=20)
    with pytest.raises(ArchitectureError, match="expects 24×24 inputs but the ROI stage gives 20×20"):
        CNNEnsemble(["usf1"], input_size=24, member_params=FAST).fit(X, y)


def test_combinations_and_the_vote_tie_rule():
    P = np.array([[0.9, 0.2, 0.6, 0.4],
                  [0.8, 0.3, 0.4, 0.45],
                  [0.1, 0.1, 0.7, 0.2],
                  [0.7, 0.4, 0.3, 0.1]])
    np.testing.assert_allclose(combine_scores(P, "average"), P.mean(0))
    np.testing.assert_allclose(combine_scores(P, "median"), [0.75, 0.25, 0.5, 0.3])
    vote = combine_scores(P, "vote")
    np.testing.assert_allclose(vote, [0.75, 0.0, 0.5, 0.0])
    # four members, case 3 splits 2-2: scored 0.5, and predicted negative (strict majority rule)
    X, y = _images()
    ens = CNNEnsemble(["usf1"], seeds=[0, 1], combine="vote", input_size=16, member_params=FAST).fit(X, y)
    frame, info = ens.scores(X)
    votes = (frame[["usf1-s0", "usf1-s1"]].to_numpy() > 0.5).sum(1)
    tie = votes == 1
    np.testing.assert_allclose(frame["[vote]"].to_numpy(), votes / 2)
    pred = ens.predict(X)
    assert (pred[tie] == 0).all() and (pred[votes == 2] == 1).all() and (pred[votes == 0] == 0).all()
    with pytest.raises(ValueError, match="combine must be one of"):
        CNNEnsemble(combine="mean").fit(X, y)


def test_ensemble_is_reproducible_clone_safe_and_members_differ_by_seed():
    X, y = _images()
    ens = CNNEnsemble(["usf1", "usf2"], seeds=2, combine=["average", "median", "vote"], input_size=16,
                      member_params=FAST, seed=5)
    a = clone(ens).fit(X, y).scores(X)[0]
    b = clone(ens).fit(X, y).scores(X)[0]
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["usf1-s5", "usf1-s6", "usf2-s5", "usf2-s6", "[average]", "[median]", "[vote]"]
    assert not np.allclose(a["usf1-s5"], a["usf1-s6"])
    np.testing.assert_allclose(a["[average]"], a.iloc[:, :4].mean(axis=1))
    np.testing.assert_allclose(clone(ens).fit(X, y).predict_proba(X)[:, 1], a["[average]"])


def test_a_diverging_member_fails_alone():
    X, y = _images(side=16)
    ens = CNNEnsemble(["usf1", {"name": "tests.user_nets:Exploding", "label": "boom"}], seeds=1,
                      combine="average", member_params=FAST).fit(X, y)
    assert ens.member_names_ == ["usf1-s0"]
    assert "boom-s0" in ens.members_failed_ and "diverged" in ens.members_failed_["boom-s0"]
    frame, info = ens.scores(X)
    assert info["members_used"] == ["usf1-s0"] and list(info["members_failed"]) == ["boom-s0"]
    np.testing.assert_allclose(frame["[average]"], frame["usf1-s0"])
    with pytest.raises(FloatingPointError, match="every ensemble member failed"):
        CNNEnsemble([{"name": "tests.user_nets:Exploding"}], member_params=FAST).fit(X, y)


def test_fold_records_give_member_and_combination_predictions(tmp_path):
    X, y = _images(n=12)
    ids = [f"case{i:02d}" for i in range(12)]
    lookup = dict(zip(tensor_hashes(X), ids))
    ens = CNNEnsemble(["usf1"], seeds=2, combine="all", input_size=16, member_params=FAST,
                      record_dir=tmp_path, record_name="ens", audit_ids=lookup)
    rows = []
    for fold, te in enumerate([np.arange(0, 6), np.arange(6, 12)]):
        tr = np.setdiff1d(np.arange(12), te)
        s = clone(ens).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
        rows.append(pd.DataFrame({"case_id": [ids[i] for i in te], "y_true": y[te], "score": s,
                                  "y_pred": (s > 0.5).astype(int), "fold": fold, "repeat": 0,
                                  "experiment": "ens"}))
    preds = pd.concat(rows, ignore_index=True)
    extra, info = member_predictions(tmp_path, "ens", preds)
    assert set(extra.experiment) == {"ens/usf1-s0", "ens/usf1-s1", "ens[average]", "ens[median]", "ens[vote]"}
    avg = extra[extra.experiment == "ens[average]"].set_index("case_id").score
    np.testing.assert_allclose(avg.loc[preds.case_id].to_numpy(), preds.score.to_numpy())
    assert info["members_used"] == {"usf1-s0": 2, "usf1-s1": 2} and info["members_failed"] == {}


def test_scratch_classifier_defaults_and_flat_rows():
    X, y = _images(side=16)
    flat = X.reshape(len(X), -1)
    est = scratch_classifier("usf2", 2, 16, seed=3, input_shape=(2, 16, 16), **FAST).fit(flat, y)
    p = est.predict_proba(flat)
    assert p.shape == (8, 2) and np.allclose(p.sum(1), 1)
    assert est.get_params()["optimizer"] == "adam"


def test_early_stopping_on_a_stratified_seeded_inner_split():
    X, y = _images(n=20, side=16, seed=2)
    y = np.random.default_rng(0).permutation(y)  # noise labels: validation loss stops improving
    params = dict(FAST, epochs=25, train_split=0.3, early_stopping=2, lr=1e-2,
                  augment={"mode": "circle", "rotate_deg": 90, "flip": ["horizontal"]})
    est = scratch_classifier("usf1", 2, 16, seed=1, **params).fit(X, y)
    inner = est.inner_split_
    assert len(inner["valid"]) == 6 and not set(inner["valid"]) & set(inner["train"])
    assert sorted(np.bincount(y[inner["valid"]])) == [3, 3]  # stratified
    assert est.n_training_images_ == 14 * 8  # only the inner-training cases are augmented
    epochs = len(est.net_.history)
    assert 3 <= epochs < 25  # stopped early
    assert est.net_.history[-1, "valid_loss"] >= min(est.net_.history[:, "valid_loss"])
    again = scratch_classifier("usf1", 2, 16, seed=1, **params).fit(X, y)
    assert again.inner_split_ == inner and len(again.net_.history) == epochs
    other = scratch_classifier("usf1", 2, 16, seed=2, **params).fit(X, y)
    assert other.inner_split_ != inner
    with pytest.raises(ValueError, match="early_stopping needs an inner validation split"):
        scratch_classifier("usf1", 2, 16, early_stopping=2, **FAST).fit(X, y)


def test_smallest_inner_split_that_stratifies_is_accepted():
    X, y = _images(n=6, side=16)  # 3 + 3 cases: 0.3 -> 2 validation cases, one of each class
    est = scratch_classifier("usf1", 2, 16, train_split=0.3, **FAST).fit(X, y)
    assert sorted(y[est.inner_split_["valid"]]) == [0, 1]
    with pytest.raises(ValueError, match=r"train_split=0.1 .*\(1 validation and 5 training cases of 6\)"):
        scratch_classifier("usf1", 2, 16, train_split=0.1, **FAST).fit(X, y)
