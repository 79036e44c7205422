"""The published small CNNs (parameter counts), the registry, describe-model, the size check."""

from __future__ import annotations

import pytest
import torch

from radiodeep.cli import main
from radiodeep.learned.architectures import (ARCHITECTURES, ArchitectureError, build_architecture,
                                             check_input_size, trainable_parameters)
from radiodeep.learned.summary import describe_model


@pytest.mark.parametrize("name, channels, expected", [
    ("usf1", 3, 841_681),   # published total
    ("usf2", 3, 845_033),   # published total (Keras LSTM: one bias vector per gate)
    ("usf1", 2, 840_081),   # the two-channel input of the published protocol
])
def test_published_parameter_counts(name, channels, expected):
    net = build_architecture(name, in_channels=channels, size=100)
    assert trainable_parameters(net) == expected


def test_usf2_lstm_second_bias_is_zero_and_stays_zero():
    torch.manual_seed(0)
    net = build_architecture("usf2", in_channels=2, size=32)
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["lstm.bias_hh_l0"]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = net(torch.rand(4, 2, 32, 32)).sum()
    loss.backward()
    opt.step()
    assert torch.count_nonzero(net.lstm.bias_hh_l0) == 0
    assert net.lstm.bias_ih_l0.grad is not None


def test_usf3_is_a_little_larger_and_all_give_one_logit():
    counts = {n: trainable_parameters(build_architecture(n, 2, 100)) for n in ARCHITECTURES}
    assert counts["usf1"] < counts["usf2"] < counts["usf3"] < 1.5 * counts["usf1"]
    for n in ARCHITECTURES:
        net = build_architecture(n, 2, 64).eval()
        assert net(torch.rand(3, 2, 64, 64)).shape == (3, 1)
        assert build_architecture(n, 2, 64, n_outputs=2).eval()(torch.rand(3, 2, 64, 64)).shape == (3, 2)


def test_l2_is_named_on_the_eight_unit_layer_only():
    for n in ARCHITECTURES:
        net = build_architecture(n, 2, 100)
        names = dict(net.named_parameters())
        assert set(net.weight_decay) <= set(names)
        assert len(net.weight_decay) == 1 and set(net.weight_decay.values()) == {0.02}


def test_user_module_by_python_path():
    net = build_architecture("tests.user_nets:Tiny", in_channels=3)
    assert net.conv.in_channels == 3
    with pytest.raises(ArchitectureError, match="unknown architecture 'usf9'"):
        build_architecture("usf9")
    with pytest.raises(ArchitectureError, match="has no 'Nope'"):
        build_architecture("tests.user_nets:Nope")
    with pytest.raises(ArchitectureError, match="cannot import"):
        build_architecture("no_such_pkg.mod:Net")


def test_size_mismatch_names_both_sizes():
    with pytest.raises(ArchitectureError, match=r"expects 32×32 inputs but the ROI stage gives 64×64"):
        check_input_size(build_architecture("tests.user_nets:Tiny"), "tests.user_nets:Tiny", 2, 64)
    with pytest.raises(ArchitectureError, match=r"cannot take 2-channel 64×64 inputs.*roi.size: 64"):
        check_input_size(build_architecture("tests.user_nets:Fixed"), "Fixed", 2, 64)
    check_input_size(build_architecture("tests.user_nets:Fixed"), "Fixed", 2, 20)  # fits
    usf1 = build_architecture("usf1", 2, 100)
    with pytest.raises(ArchitectureError, match=r"usf1 expects 100×100 inputs but the ROI stage gives 64×64"):
        check_input_size(usf1, "usf1", 2, 64)
    with pytest.raises(ArchitectureError, match=r"at least 16×16 pixels, got 12×12"):
        build_architecture("usf1", 2, 12)


def test_describe_model_table_matches_module():
    s = describe_model("usf1", channels=3, size=100)
    assert s.trainable == 841_681 and s.non_trainable == 0
    assert sum(r.params for r in s.rows) == s.trainable
    rows = {r.name: r for r in s.rows}
    assert rows["pool2"].output_shape == (None, 64, 10, 10)
    assert rows["fc1"].params == 6400 * 128 + 128
    s2 = describe_model("usf2", channels=3, size=100)
    assert s2.trainable == 845_033 and s2.non_trainable == 32  # PyTorch's second bias, frozen


def test_describe_model_command(capsys):
    assert main(["describe-model", "usf2", "--channels", "3", "--size", "100"]) == 0
    out = capsys.readouterr().out
    assert "Trainable params: 845,033" in out and "lstm" in out and "(None, 8)" not in out.split("lstm")[0]
    assert main(["describe-model", "tests.user_nets:Tiny", "--channels", "2", "--size", "32"]) == 0
    assert "Total params: 81" in capsys.readouterr().out  # 2*4*9+4 + 4+1
    assert main(["describe-model", "usf1", "--size", "10"]) == 2
    assert "at least 16×16" in capsys.readouterr().err
