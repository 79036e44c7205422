"""Backbones: layer taps, pre/post ReLU, weight resolution (offline), MatConvNet CNN-F import."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from radiodeep.features import backbones as bb
from radiodeep.features.backbones import (
    WeightsError,
    WeightsNotFound,
    feature_extractor,
    get_spec,
    load_backbone,
    make_normaliser,
    resolve_weights,
)


def _batch(n=2, size=64, seed=0, model=None, name="alexnet"):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return make_normaliser(model, name)(x) if model is not None else x


@pytest.fixture(scope="module")
def alexnet():
    model, prov = load_backbone("alexnet", None)
    return model, prov


# --------------------------------------------------------------------------- layers
def test_alexnet_fc7_and_fc6_give_4096_values(alexnet):
    model, prov = alexnet
    x = _batch(model=model)
    for layer in ("fc6", "fc7", "penultimate"):
        out = feature_extractor(model, "alexnet", layer, "post_relu")(x)
        assert out.shape == (2, 4096)
    assert prov["kind"] == "random" and prov["seed"] == 0


@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_vgg_fc6_fc7_give_4096_values_pre_and_post_relu(name):
    model, _ = load_backbone(name, None)
    x = _batch(n=2, size=32, model=model, name=name)
    for layer in ("fc6", "fc7"):
        pre = feature_extractor(model, name, layer, "pre_relu")(x)
        post = feature_extractor(model, name, layer, "post_relu")(x)
        assert pre.shape == post.shape == (2, 4096)
        assert (pre < 0).any() and (post >= 0).all() and (post > 0).any(), layer
        torch.testing.assert_close(post, torch.relu(pre), rtol=0, atol=0)


def test_pre_relu_has_negatives_post_relu_has_none(alexnet):
    model, _ = alexnet
    x = _batch(model=model)
    for layer in ("fc6", "fc7"):
        pre = feature_extractor(model, "alexnet", layer, "pre_relu")(x)
        post = feature_extractor(model, "alexnet", layer, "post_relu")(x)
        assert (pre < 0).any(), layer
        assert (post >= 0).all(), layer
        assert (post > 0).any(), layer
        torch.testing.assert_close(post, torch.relu(pre), rtol=0, atol=0)


def test_post_relu_is_what_the_networks_own_relu_gives(alexnet):
    model, _ = alexnet
    x = _batch(model=model)
    seen = {}
    relu = model.get_submodule(get_spec("alexnet").layers["fc7"].relu)
    handle = relu.register_forward_hook(lambda m, a, out: seen.setdefault("v", out.clone()))
    try:
        with torch.inference_mode():
            model(x.clone())
    finally:
        handle.remove()
    ours = feature_extractor(model, "alexnet", "fc7", "post_relu")(x)
    torch.testing.assert_close(ours, seen["v"], rtol=0, atol=0)


def test_tap_stops_the_forward_pass_at_the_layer(alexnet):
    model, _ = alexnet
    called = []
    handle = model.classifier[6].register_forward_hook(lambda *a: called.append(1))
    try:
        fe = feature_extractor(model, "alexnet", "fc7", "pre_relu")
        fe(_batch(model=model))
    finally:
        handle.remove()
    assert not called


def test_penultimate_of_resnet_and_densenet():
    for name, dim in (("resnet18", 512), ("resnet50", 2048), ("densenet121", 1024)):
        model, _ = load_backbone(name, None)
        x = _batch(n=1, size=32, model=model, name=name)
        out = feature_extractor(model, name, "penultimate", "post_relu")(x)
        assert out.shape == (1, dim), name
        assert (out >= 0).all()
        with pytest.raises(ValueError, match="only activation 'post_relu'"):
            feature_extractor(model, name, "penultimate", "pre_relu")


def test_module_path_layer_and_unknown_path(alexnet):
    model, _ = alexnet
    x = _batch(model=model)
    out = feature_extractor(model, "alexnet", "features.10", "pre_relu")(x)
    with torch.inference_mode():
        direct = model.features[:11](x.clone()).flatten(1)
    torch.testing.assert_close(out, direct)
    with pytest.raises(ValueError, match="did you mean 'features.10'"):
        feature_extractor(model, "alexnet", "feature.10", "post_relu")


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'alexnet'"):
        get_spec("alexnt")


def test_random_weights_are_reproducible_and_leave_global_rng_alone(alexnet):
    model, _ = alexnet
    state = torch.random.get_rng_state()
    again, _ = load_backbone("alexnet", None)
    assert torch.equal(torch.random.get_rng_state(), state)
    x = _batch(model=model)
    a = feature_extractor(model, "alexnet", "fc7", "post_relu")(x)
    b = feature_extractor(again, "alexnet", "fc7", "post_relu")(x)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- weights
def test_weight_file_written_by_the_test_loads_and_changes_outputs(alexnet, tmp_path):
    model, _ = alexnet
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    sd["classifier.4.weight"] = torch.randn(sd["classifier.4.weight"].shape, generator=g) * 0.01
    p = tmp_path / "alexnet_mine.pth"
    torch.save(sd, p)
    loaded, prov = load_backbone("alexnet", "alexnet_mine.pth", base_dir=tmp_path)
    assert prov["kind"] == "file"
    assert prov["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert prov["path"] == str(p.resolve())
    x = _batch(model=model)
    before = feature_extractor(model, "alexnet", "fc7", "pre_relu")(x)
    after = feature_extractor(loaded, "alexnet", "fc7", "pre_relu")(x)
    assert not torch.allclose(before, after)
    fc6_a = feature_extractor(model, "alexnet", "fc6", "pre_relu")(x)
    fc6_b = feature_extractor(loaded, "alexnet", "fc6", "pre_relu")(x)
    assert torch.equal(fc6_a, fc6_b)  # only fc7 was changed
    # a checkpoint wrapped as {'state_dict': ...} with DataParallel prefixes loads the same
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": torch.tensor(3)}, wrapped)
    loaded2, _ = load_backbone("alexnet", wrapped)
    assert torch.equal(feature_extractor(loaded2, "alexnet", "fc7", "pre_relu")(x), after)


def test_weight_file_of_another_network_is_refused(tmp_path):
    model, _ = load_backbone("resnet18", None)
    p = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), p)
    with pytest.raises(WeightsError, match="does not fit torchvision alexnet: missing"):
        load_backbone("alexnet", p)


def test_missing_weights_message_names_file_folder_url_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    with pytest.raises(WeightsNotFound) as info:
        load_backbone("alexnet", "IMAGENET1K_V1")
    msg = str(info.value)
    folder = tmp_path / "torchhome" / "hub" / "checkpoints"
    assert isinstance(info.value, FileNotFoundError)
    assert f"missing file:  {folder / 'alexnet-owt-7be5be79.pth'}" in msg
    assert f"put it into:   {folder}/" in msg
    assert "fetch it from: https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert "weights: /path/to/alexnet-owt-7be5be79.pth" in msg
    assert "weights: null" in msg
    assert info.value.path == folder / "alexnet-owt-7be5be79.pth"
    with pytest.raises(WeightsNotFound, match="vgg16-397923af.pth"):
        resolve_weights("vgg16", "VGG16_Weights.IMAGENET1K_V1")
    with pytest.raises(WeightsNotFound, match="weights file for alexnet not found"):
        resolve_weights("alexnet", tmp_path / "nowhere.pth")


def test_cached_torchvision_weights_are_read_and_their_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, _ = load_backbone("resnet18", None)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["fc.weight"].mul_(-1.0)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(sd, folder / "resnet18-f37072fd.pth")
    # a file whose sha256 does not match the published name is refused
    with pytest.raises(WeightsError, match="damaged or not the published file"):
        load_backbone("resnet18", "IMAGENET1K_V1")
    # with a matching digest (as the real file has), it is read from the hub cache, never downloaded
    monkeypatch.setattr(bb, "file_sha256", lambda p: "f37072fd" + "0" * 56)
    loaded, prov = load_backbone("resnet18", "DEFAULT")
    assert prov["name"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert prov["kind"] == "torchvision" and prov["url"].endswith("resnet18-f37072fd.pth")
    assert torch.equal(loaded.fc.weight, sd["fc.weight"])


def test_weights_names_are_checked():
    with pytest.raises(ValueError, match="has no torchvision weights 'IMAGENET1K_V2'"):
        resolve_weights("alexnet", "IMAGENET1K_V2")
    with pytest.raises(ValueError, match="NaN"):
        resolve_weights("vgg16", "IMAGENET1K_FEATURES")
    with pytest.raises(ValueError, match="backbone: cnn_f"):
        resolve_weights("alexnet", "net.mat")


def test_imagenet_normalisation():
    x = torch.full((1, 3, 4, 4), 0.5)
    out = make_normaliser(None, "alexnet")(x)
    expect = (0.5 - torch.tensor(bb.IMAGENET_MEAN)) / torch.tensor(bb.IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], expect)


# --------------------------------------------------------------------------- MatConvNet CNN-F
def _cell(items):
    c = np.empty((1, len(items)), dtype=object)
    for i, it in enumerate(items):
        c[0, i] = it
    return c


def _fake_layers(rng, old=False):
    """A tiny network in imagenet-vgg-f.mat's layout: conv1 11x11/4, lrn, pool [0 1 0 1], ..., fc6-fc8."""

    def conv(name, h, w, cin, cout, stride=1, pad=0):
        f = rng.normal(0, 0.1, (h, w, cin, cout)).astype(np.float32)
        b = rng.normal(0, 0.1, (1, cout)).astype(np.float32)
        layer = {"name": name, "type": "conv", "stride": np.array([[stride, stride]], float),
                 "pad": np.array([[pad] * 4], float)}
        if old:
            layer.update(filters=f, biases=b)
        else:
            layer["weights"] = _cell([f, b])
        return layer

    def pool(name, pad):
        return {"name": name, "type": "pool", "method": "max", "pool": np.array([[3, 3]], float),
                "stride": np.array([[2, 2]], float), "pad": np.array([pad], float)}

    return [
        conv("conv1", 11, 11, 3, 4, stride=4), {"name": "relu1", "type": "relu"},
        {"name": "norm1", "type": "normalize" if old else "lrn", "param": np.array([[5, 1, 2e-5 * 5, 0.75]])},
        pool("pool1", [0, 1, 0, 1]),
        conv("conv2", 5, 5, 4, 6, pad=2), {"name": "relu2", "type": "relu"}, pool("pool2", [0, 1, 0, 1]),
        pool("pool5", [0, 0, 0, 0]),
        conv("fc6", 6, 6, 6, 16), {"name": "relu6", "type": "relu"},
        conv("fc7", 1, 1, 16, 16), {"name": "relu7", "type": "relu"},
        conv("fc8", 1, 1, 16, 10), {"name": "prob", "type": "softmax"},
    ]


def write_fake_cnn_f(path, seed=0, old=False, average=None):
    """Save a tiny SimpleNN file as MatConvNet does; old=True: filters/biases, net.normalization."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    layers = _fake_layers(rng, old=old)
    avg = rng.uniform(90, 130, (224, 224, 3)).astype(np.float32) if average is None else average
    norm = {"averageImage": avg, "imageSize": np.array([[224, 224, 3]], float), "interpolation": "bilinear"}
    if old:  # older files: a 'net' variable with net.normalization
        savemat(str(path), {"net": {"layers": _cell(layers), "normalization": norm}})
    else:  # the published files: save(file, '-struct', 'net') -> layers and meta at the top level
        savemat(str(path), {"layers": _cell(layers), "meta": {"normalization": norm}})
    return layers, avg


def _cnn_f_input(model, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return make_normaliser(model, "cnn_f")(torch.rand(n, 3, 224, 224, generator=g))


def test_cnn_f_imports_shapes_and_provenance(tmp_path):
    p = tmp_path / "imagenet-vgg-f.mat"
    write_fake_cnn_f(p)
    model, prov = load_backbone("cnn_f", p)
    assert tuple(model.conv1.weight.shape) == (4, 3, 11, 11)
    assert tuple(model.fc6.weight.shape) == (16, 6, 6, 6)
    assert model.image_size == (224, 224)
    assert prov["kind"] == "matconvnet" and prov["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert prov["matconvnet"]["layers"][:3] == ["conv1:conv", "relu1:relu", "norm1:lrn"]
    x = _cnn_f_input(model)
    for layer in ("fc6", "fc7"):
        out = feature_extractor(model, "cnn_f", layer, "post_relu")(x)
        assert out.shape == (2, 16)
    pre = feature_extractor(model, "cnn_f", "fc7", "pre_relu")(x)
    assert (pre < 0).any()


def test_cnn_f_conv_lrn_and_pool_match_a_hand_computation(tmp_path):
    p = tmp_path / "net.mat"
    layers, _ = write_fake_cnn_f(p)
    model, _ = load_backbone("cnn_f", p)
    x = _cnn_f_input(model, n=1)
    taps = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: taps.setdefault(n, o.clone()))
             for n in ("conv1", "relu1", "norm1", "pool1")]
    with torch.inference_mode():
        model(x.clone())
    for h in hooks:
        h.remove()
    xn = x[0].numpy()
    f, b = (np.asarray(w) for w in layers[0]["weights"].ravel())  # H x W x Cin x Cout, 1 x Cout
    conv = taps["conv1"][0].numpy()
    assert conv.shape == (4, 54, 54)
    for o, i, j in ((0, 0, 0), (3, 10, 53), (2, 31, 7)):
        patch = xn[:, 4 * i:4 * i + 11, 4 * j:4 * j + 11]  # C x H x W
        hand = float(np.einsum("uvc,cuv->", f[:, :, :, o], patch) + b.ravel()[o])
        assert conv[o, i, j] == pytest.approx(hand, rel=1e-4, abs=1e-4)
    # MatConvNet LRN: x / (kappa + alpha * sum_{5 channels} x^2)^beta, alpha not divided by N
    r = taps["relu1"][0].numpy().astype(np.float64)
    n_, kappa, alpha, beta = layers[2]["param"].ravel()
    sq = np.pad(r ** 2, ((2, 2), (0, 0), (0, 0)))
    total = sum(sq[k:k + r.shape[0]] for k in range(int(n_)))
    np.testing.assert_allclose(taps["norm1"][0].numpy(), r / (kappa + alpha * total) ** beta, rtol=1e-5, atol=1e-6)
    # pool 3x3/2 with pad [top bottom left right] = [0 1 0 1]: 54 -> 27, the pad never wins
    pooled = taps["pool1"][0].numpy()
    assert pooled.shape == (4, 27, 27)
    nrm = taps["norm1"][0].numpy()
    assert pooled[1, 26, 26] == pytest.approx(nrm[1, 52:54, 52:54].max())
    assert pooled[0, 3, 5] == pytest.approx(nrm[0, 6:9, 10:13].max())


def test_cnn_f_weights_are_used_and_outputs_deterministic(tmp_path):
    a, b = tmp_path / "a.mat", tmp_path / "b.mat"
    write_fake_cnn_f(a, seed=0)
    write_fake_cnn_f(b, seed=0)
    from scipy.io import loadmat, savemat

    raw = loadmat(str(b))
    fc7 = raw["layers"][0, 10]
    fc7["weights"][0, 0][0, 0][0, 0, 0, 0] += 1.0  # change one fc7 weight in the file
    savemat(str(b), {k: v for k, v in raw.items() if not k.startswith("__")})
    ma, _ = load_backbone("cnn_f", a)
    ma2, _ = load_backbone("cnn_f", a)
    mb, _ = load_backbone("cnn_f", b)
    x = _cnn_f_input(ma)
    fa = feature_extractor(ma, "cnn_f", "fc7", "pre_relu")(x)
    assert torch.equal(fa, feature_extractor(ma2, "cnn_f", "fc7", "pre_relu")(x))
    fb = feature_extractor(mb, "cnn_f", "fc7", "pre_relu")(x)
    assert not torch.equal(fa[:, 0], fb[:, 0])
    assert torch.equal(fa[:, 1:], fb[:, 1:])  # only output channel 0 had a changed weight


def test_cnn_f_older_layout_gives_the_same_network(tmp_path):
    new, old = tmp_path / "new.mat", tmp_path / "old.mat"
    write_fake_cnn_f(new, seed=3)
    write_fake_cnn_f(old, seed=3, old=True)
    mn, _ = load_backbone("cnn_f", new)
    mo, _ = load_backbone("cnn_f", old)
    assert torch.equal(mn.average_image, mo.average_image)
    x = _cnn_f_input(mn)
    assert torch.equal(feature_extractor(mn, "cnn_f", "fc7", "post_relu")(x),
                       feature_extractor(mo, "cnn_f", "fc7", "post_relu")(x))


def test_cnn_f_input_is_0_255_minus_the_average_image(tmp_path):
    p = tmp_path / "net.mat"
    write_fake_cnn_f(p, average=np.array([[[120.0, 110.0, 100.0]]], np.float32))
    model, _ = load_backbone("cnn_f", p)
    x = torch.full((1, 3, 224, 224), 0.5)
    out = make_normaliser(model, "cnn_f")(x)
    torch.testing.assert_close(out[0, :, 5, 5], torch.tensor([127.5 - 120, 127.5 - 110, 127.5 - 100]))


def test_cnn_f_needs_a_mat_file():
    with pytest.raises(ValueError, match="imagenet-vgg-f.mat"):
        resolve_weights("cnn_f", None)
    with pytest.raises(ValueError, match="no torchvision weights"):
        resolve_weights("cnn_f", "IMAGENET1K_V1")


def test_legacy_densenet_checkpoint_loads(tmp_path):
    """torchvision's densenet121-a639ec97.pth predates PyTorch 0.4.1: legacy keys ('norm.1')
    and no BatchNorm 'num_batches_tracked' counters. Such a file loads and gives the same features."""
    model, _ = load_backbone("densenet121", None)
    legacy = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        legacy[re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k)] = v.clone()
    assert any(".norm.1." in k for k in legacy) and not any("num_batches" in k for k in legacy)
    p = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, p)
    loaded, prov = load_backbone("densenet121", p)
    assert prov["kind"] == "file"
    assert all(int(b.num_batches_tracked) == 0 for b in loaded.modules() if isinstance(b, torch.nn.BatchNorm2d))
    x = _batch(size=32)
    a = feature_extractor(model, "densenet121", "penultimate", "post_relu")(x)
    b = feature_extractor(loaded, "densenet121", "penultimate", "post_relu")(x)
    assert torch.equal(a, b)


def test_alias_of_another_network_is_named_as_such():
    with pytest.raises(ValueError, match=r"layer 'fc7' is not defined for resnet18, whose aliases are "
                                         r"\['penultimate'\]; 'fc7' exists for alexnet, cnn_f, vgg16, vgg19"):
        bb.resolve_layer(get_spec("resnet18"), "fc7")
