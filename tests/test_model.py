"""Tests of napari_unet.model: shapes, parameter counts, input checks, device choice."""

from __future__ import annotations

import pytest
import torch

from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError
from napari_unet.model import UNet, UNetPlusPlus, build_model, count_parameters, select_device


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("architecture", ["unet", "unetpp"])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (17, 33), (37, 50), (64, 64), (65, 31)])
def test_output_has_input_size_for_any_size(architecture: str, size: tuple[int, int]) -> None:
    net = build_model(
        preset="tiny", architecture=architecture, base_filters=2, depth=3, in_channels=1
    ).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("target,channels", [("foreground", 1), ("contour", 2), ("distance", 2)])
def test_output_channels_follow_the_target(target: str, channels: int) -> None:
    net = build_model(preset="tiny", base_filters=2, depth=2, target=target).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 20, 21)).shape == (1, channels, 20, 21)


def test_outputs_are_logits_not_probabilities() -> None:
    net = build_model(preset="tiny", base_filters=4, depth=2, in_channels=1).eval()
    with torch.no_grad():
        net.head.bias.fill_(-10.0)
        out = net(torch.rand(1, 1, 16, 16))
    # nothing squashes the 1x1 head's output: a sigmoid would keep it in (0, 1)
    assert (out < 0).all()


def test_unetpp_deep_supervision_returns_one_output_per_level_in_train_mode() -> None:
    net = build_model(
        preset="unetpp",
        base_filters=2,
        depth=3,
        in_channels=1,
        deep_supervision=True,
        target="contour",
    )
    net.train()
    outputs = net(torch.rand(2, 1, 19, 23))
    assert isinstance(outputs, list) and len(outputs) == 3
    assert all(o.shape == (2, 2, 19, 23) for o in outputs)
    # gradients flow from every head
    sum(o.mean() for o in outputs).backward()
    assert all(head.weight.grad is not None for head in net.heads)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 19, 23))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 19, 23)


def test_unetpp_without_deep_supervision_returns_a_tensor_in_train_mode() -> None:
    net = build_model(preset="unetpp", base_filters=2, depth=2, in_channels=1).train()
    assert isinstance(net(torch.rand(2, 1, 12, 12)), torch.Tensor)


def test_reference_preset_has_the_original_parameter_count() -> None:
    net = build_model(preset="reference", in_channels=3)
    assert isinstance(net, UNet)
    assert net.config.out_channels == 1
    # the trainable weights of the original Keras model
    assert count_parameters(net) == 31_043_521
    assert [block[0].out_channels for block in net.encoders] == [64, 128, 256, 512]
    assert net.bottleneck[0].out_channels == 1024


def test_presets_build_their_architecture() -> None:
    assert isinstance(build_model(preset="unetpp", base_filters=2, depth=2), UNetPlusPlus)
    tiny = build_model(preset="tiny", depth=2)
    assert tiny.config.base_filters == 16 and tiny.config.preset == "tiny"
    fast = build_model(preset="fast", depth=1)
    assert fast.encoders[0][0].out_channels == 32


def test_build_model_from_config_object() -> None:
    config = ModelConfig(architecture="unet", in_channels=2, base_filters=4, depth=2)
    net = build_model(config)
    assert net.config is config
    with pytest.raises(TypeError, match="not both"):
        build_model(config, depth=3)
    with pytest.raises(ConfigError, match="preset"):
        build_model(preset="huge")


def test_count_parameters_ignores_frozen_ones() -> None:
    net = build_model(preset="tiny", base_filters=2, depth=1, in_channels=1)
    total = count_parameters(net)
    for p in net.head.parameters():
        p.requires_grad_(False)
    assert count_parameters(net) == total - sum(p.numel() for p in net.head.parameters())


def test_wrong_rank_is_a_clear_error() -> None:
    net = build_model(preset="tiny", base_filters=2, depth=2, in_channels=1).eval()
    with pytest.raises(ValueError, match=r"batch, channels, height, width.*x\[None\]"):
        net(torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        net(torch.rand(1, 1, 1, 16, 16))


def test_wrong_channel_count_is_a_clear_error() -> None:
    net = build_model(preset="tiny", base_filters=2, depth=2, in_channels=3).eval()
    with pytest.raises(ValueError, match="built for 3 input channel.*got 1"):
        net(torch.rand(1, 1, 16, 16))


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type in ("cuda", "mps", "cpu")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    else:
        assert auto.type != "cuda"
        with pytest.raises(ValueError, match="CUDA"):
            select_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        select_device("gpu-please")


def test_size_is_computed_on_the_meta_device_and_bounded() -> None:
    import resource

    from napari_unet.model import MAX_PARAMETERS, parameter_count

    tiny = ModelConfig.from_preset("tiny")
    assert parameter_count(tiny) == count_parameters(build_model(tiny))
    huge = ModelConfig(base_filters=256, depth=6)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert parameter_count(huge) > MAX_PARAMETERS
    with pytest.raises(ConfigError, match="lower base_filters or depth"):
        build_model(huge)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < 256 * 2**20  # the network itself would take over 30 GiB


# --------------------------------------------------------------------------- 3D networks


@pytest.mark.parametrize("architecture", ["unet", "unetpp"])
@pytest.mark.parametrize("anisotropy", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("size", [(1, 1, 1), (3, 5, 7), (9, 17, 12), (16, 16, 16)])
def test_3d_output_has_input_size_for_any_size(
    architecture: str, anisotropy: float, size: tuple[int, int, int]
) -> None:
    net = build_model(
        preset="tiny",
        architecture=architecture,
        base_filters=2,
        depth=3,
        in_channels=1,
        ndim=3,
        anisotropy=anisotropy,
        target="contour",
    ).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 2, *size)


def test_3d_layers_and_anisotropic_pooling() -> None:
    net = build_model(preset="tiny", in_channels=1, ndim=3, anisotropy=2.0)
    kinds = {type(module) for module in net.modules()}
    assert {torch.nn.Conv3d, torch.nn.BatchNorm3d, torch.nn.ConvTranspose3d} <= kinds
    assert not kinds & {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d}
    # Z (twice as coarse) is left alone at the first level only; the transposed conv undoes
    # each level's pooling with the same kernel and stride
    assert [pool.kernel_size for pool in net.pools] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    ups = [decoder.up for decoder in net.decoders]  # deepest first
    assert [up.kernel_size for up in ups] == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert [up.stride for up in ups] == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    # a volume of 4 planes: 1 unpooled level then 2 pooled ones need a Z multiple of 4 only
    assert net.config.size_multiples == (4, 8, 8)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 4, 8, 8)).shape == (1, 1, 4, 8, 8)


def test_3d_unetpp_deep_supervision_and_gradients() -> None:
    net = build_model(
        preset="unetpp", base_filters=2, depth=2, in_channels=1, ndim=3, deep_supervision=True
    )
    outputs = net.train()(torch.rand(2, 1, 5, 9, 11))
    assert [o.shape for o in outputs] == [(2, 1, 5, 9, 11)] * 2
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_2d_network_is_unchanged_by_the_3d_code() -> None:
    # the names and shapes of a 2D net's weights are those of every 2D model file
    net = build_model(preset="tiny", base_filters=2, depth=2, in_channels=1)
    assert isinstance(net.pools[0], torch.nn.MaxPool2d) and net.pools[0].kernel_size == 2
    assert net.decoders[0].up.kernel_size == (2, 2) and net.decoders[0].up.stride == (2, 2)
    assert "encoders.0.0.weight" in net.state_dict()
    assert net.state_dict()["encoders.0.0.weight"].shape == (2, 1, 3, 3)


def test_3d_wrong_rank_is_a_clear_error() -> None:
    net3d = build_model(preset="tiny", base_filters=2, depth=2, in_channels=1, ndim=3).eval()
    with pytest.raises(ValueError, match=r"3D network takes a \(batch, channels, Z, Y, X\).*2D"):
        net3d(torch.rand(2, 1, 16, 16))
    net2d = build_model(preset="tiny", base_filters=2, depth=2, in_channels=1).eval()
    with pytest.raises(ValueError, match=r"use a 3D model \(ndim=3\) for volumes"):
        net2d(torch.rand(1, 1, 4, 16, 16))


def test_3d_parameter_count_and_weight_check() -> None:
    from napari_unet.errors import ModelFileError
    from napari_unet.model import check_weights, parameter_count

    config = ModelConfig.from_preset("tiny", in_channels=1, ndim=3)
    net = build_model(config)
    assert parameter_count(config) == count_parameters(net)
    # a 3x3x3 convolution has 3 times the weights of a 3x3 one
    flat = ModelConfig.from_preset("tiny", in_channels=1, base_filters=8, depth=3)
    assert parameter_count(config) > 2.5 * parameter_count(flat)
    check_weights(config, net.state_dict(), "m3d.pt")
    with pytest.raises(ModelFileError, match="3D unet.*of another shape"):
        check_weights(config, build_model(flat).state_dict(), "m3d.pt")
