"""Training presets: the reference table, the auto formulas, batch splitting and snapshot round trips."""

from __future__ import annotations

import io

import pytest
import torch

from corgigan.stylegan2.configs import (
    CONFIG_NAMES,
    NetworkSpec,
    TrainingConfig,
    build_networks,
    config_from_dict,
    config_to_dict,
    make_config,
    network_spec,
)
from corgigan.stylegan2.networks import Discriminator, count_parameters
from tests.helpers import tiny_config

# name: (batch, batch_gpu on 1 GPU, mbstd, channel_base, lr, gamma, ema kimg, ema rampup, mapping layers)
REFERENCE = {
    "stylegan2": (32, 4, 4, 32768, 0.002, 10, 10, None, 8),
    "paper256": (64, 8, 8, 16384, 0.0025, 1, 20, None, 8),
    "paper512": (64, 8, 8, 32768, 0.0025, 0.5, 20, None, 8),
    "paper1024": (32, 4, 4, 32768, 0.002, 2, 10, None, 8),
    "cifar": (64, 32, 32, 32768, 0.0025, 0.01, 500, 0.05, 2),
}


def table_row(cfg: TrainingConfig) -> tuple:
    channel_base = cfg.G_kwargs["synthesis_kwargs"]["channel_base"]
    map_layers = cfg.G_kwargs["mapping_kwargs"]["num_layers"]
    return (cfg.batch, cfg.batch_gpu, cfg.mbstd_group, channel_base, cfg.G_lr, cfg.r1_gamma, cfg.ema_kimg,
            cfg.ema_rampup, map_layers)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_presets_match_the_reference_table(name):
    cfg = make_config(name, 256)
    assert table_row(cfg) == REFERENCE[name]
    assert cfg.D_lr == cfg.G_lr
    assert cfg.D_kwargs["channel_base"] == cfg.G_kwargs["synthesis_kwargs"]["channel_base"]
    assert cfg.D_kwargs["mbstd_group_size"] == cfg.mbstd_group
    assert cfg.G_kwargs["z_dim"] == cfg.G_kwargs["w_dim"] == 512


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shared_settings(name):
    cfg = make_config(name, 64)
    s = cfg.G_kwargs["synthesis_kwargs"]
    assert cfg.betas == (0.0, 0.99)
    assert (cfg.G_reg_interval, cfg.D_reg_interval) == (4, 16)
    assert s["conv_clamp"] == cfg.D_kwargs["conv_clamp"] == 256
    assert s["channel_max"] == cfg.D_kwargs["channel_max"]
    if name == "cifar":
        assert (cfg.pl_weight, cfg.style_mixing_prob, cfg.D_kwargs["architecture"]) == (0.0, 0.0, "orig")
    else:
        assert (cfg.pl_weight, cfg.style_mixing_prob, cfg.D_kwargs["architecture"]) == (2.0, 0.9, "resnet")
    if name != "demo":
        assert s["num_fp16_res"] == cfg.D_kwargs["num_fp16_res"] == 4
        assert s["channel_max"] == 512


@pytest.mark.parametrize(
    ("res", "gpus", "batch", "mbstd", "channel_base", "lr", "gamma", "ema"),
    [
        (128, 1, 32, 4, 16384, 0.0025, 0.0002 * 128**2 / 32, 10.0),
        (512, 1, 8, 4, 32768, 0.0025, 0.0002 * 512**2 / 8, 2.5),
        (1024, 1, 4, 4, 32768, 0.002, 0.0002 * 1024**2 / 4, 1.25),
        (256, 8, 64, 4, 16384, 0.0025, 0.0002 * 256**2 / 64, 20.0),
        (1024, 8, 32, 4, 32768, 0.002, 0.0002 * 1024**2 / 32, 10.0),
    ],
)
def test_auto_follows_the_formulas(res, gpus, batch, mbstd, channel_base, lr, gamma, ema):
    cfg = make_config("auto", res, gpus=gpus)
    assert cfg.batch == batch
    assert cfg.batch_gpu == batch // gpus
    assert cfg.mbstd_group == mbstd
    assert cfg.G_kwargs["synthesis_kwargs"]["channel_base"] == channel_base
    assert cfg.G_lr == lr
    assert cfg.r1_gamma == pytest.approx(gamma)
    assert cfg.ema_kimg == pytest.approx(ema)
    assert cfg.ema_rampup == 0.05
    assert cfg.G_kwargs["mapping_kwargs"]["num_layers"] == 2


def test_demo_is_small_and_follows_the_auto_formulas():
    cfg = make_config("demo", 64)
    assert (cfg.batch, cfg.batch_gpu, cfg.mbstd_group) == (8, 8, 4)
    assert cfg.r1_gamma == pytest.approx(0.0002 * 64**2 / 8)
    assert cfg.G_kwargs["mapping_kwargs"]["num_layers"] == 2
    G, D = build_networks(network_spec(cfg))
    assert count_parameters(G) < 1_000_000 and count_parameters(D) < 1_000_000
    img = G(torch.randn(cfg.batch, G.z_dim), None)
    assert img.shape == (8, 3, 64, 64)
    assert D(img, None).shape == (8, 1)


def test_batch_and_gpu_splitting():
    cfg = make_config("paper256", 256, gpus=2)
    assert (cfg.batch, cfg.batch_gpu) == (64, 8)          # 4 accumulation rounds per GPU
    cfg = make_config("paper256", 256, gpus=16)
    assert (cfg.batch, cfg.batch_gpu) == (64, 4)          # never more than a GPU's share
    cfg = make_config("paper256", 256, gpus=4, batch=32)
    assert (cfg.batch, cfg.batch_gpu, cfg.mbstd_group) == (32, 8, 8)
    cfg = make_config("stylegan2", 256, batch=2)
    assert (cfg.batch, cfg.batch_gpu, cfg.mbstd_group) == (2, 2, 2)  # mbstd groups fit the GPU batch
    with pytest.raises(ValueError, match="split evenly"):
        make_config("paper256", 256, gpus=4, batch=30)
    with pytest.raises(ValueError, match="power of two"):
        make_config("auto", 96)


def test_unknown_config_name_lists_the_names():
    with pytest.raises(ValueError) as err:
        make_config("paper2048", 256)
    for name in CONFIG_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_dict_round_trip_through_torch_save_weights_only(name):
    cfg = make_config(name, 128)
    d = config_to_dict(cfg)
    buf = io.BytesIO()
    torch.save({"config": d}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["config"]
    assert config_from_dict(loaded) == cfg
    assert config_to_dict(config_from_dict(loaded)) == d
    d["G_kwargs"]["z_dim"] = 3                            # the dict is a copy, not a view of cfg
    assert cfg.G_kwargs["z_dim"] != 3


def test_config_from_dict_rejects_bad_dicts():
    d = config_to_dict(make_config("demo", 64))
    with pytest.raises(ValueError, match="missing keys \\['batch'\\]"):
        config_from_dict({k: v for k, v in d.items() if k != "batch"})
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        config_from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="unknown config"):
        config_from_dict({**d, "name": "nope"})


def test_paper1024_at_1024_asks_for_the_networks_whose_sizes_test_networks_checks():
    # tests/test_networks.py builds these networks and checks the reference's parameter counts
    # (30,370,060 and 29,012,513); building them here too would only pay that cost twice.
    cfg = make_config("paper1024", 1024)
    assert cfg.resolution == 1024
    assert (cfg.G_kwargs["z_dim"], cfg.G_kwargs["w_dim"], cfg.G_kwargs["mapping_kwargs"]["num_layers"]) == (
        512, 512, 8)
    s = cfg.G_kwargs["synthesis_kwargs"]
    assert (s["channel_base"], s["channel_max"]) == (32768, 512)
    assert (cfg.D_kwargs["channel_base"], cfg.D_kwargs["channel_max"]) == (32768, 512)


def test_knobs_replace_the_presets_values_and_none_keeps_them():
    from corgigan.stylegan2.configs import Knobs

    assert make_config("paper256", 256, knobs=Knobs()) == make_config("paper256", 256)
    cfg = make_config("paper256", 256, knobs=Knobs(
        batch_gpu=4, r1_gamma=5.0, G_lr=0.001, D_lr=0.003, channel_base=8192, channel_max=256,
        mapping_layers=4, mbstd_group=2, num_fp16_res=0, ema_kimg=5.0, ema_rampup=0.0, pl_weight=0.0,
        style_mixing_prob=0.5))
    assert (cfg.batch, cfg.batch_gpu, cfg.mbstd_group, cfg.D_kwargs["mbstd_group_size"]) == (64, 4, 2, 2)
    assert (cfg.r1_gamma, cfg.G_lr, cfg.D_lr, cfg.ema_kimg, cfg.ema_rampup) == (5.0, 0.001, 0.003, 5.0, None)
    assert (cfg.pl_weight, cfg.style_mixing_prob) == (0.0, 0.5)
    s = cfg.G_kwargs["synthesis_kwargs"]
    assert (s["channel_base"], s["channel_max"], s["num_fp16_res"]) == (8192, 256, 0)
    assert (cfg.D_kwargs["channel_base"], cfg.D_kwargs["channel_max"], cfg.D_kwargs["num_fp16_res"]) == (
        8192, 256, 0)
    assert cfg.G_kwargs["mapping_kwargs"]["num_layers"] == 4
    # The group follows batch_gpu when not set: a group is drawn from one GPU's images.
    assert make_config("paper256", 256, knobs=Knobs(batch_gpu=2)).mbstd_group == 2
    assert make_config("auto", 256, knobs=Knobs(ema_rampup=0.1)).ema_rampup == 0.1


def test_knobs_that_cannot_work_are_refused_with_the_knobs_name():
    from corgigan.stylegan2.configs import Knobs

    with pytest.raises(ValueError, match="batch_gpu 3 does not divide the 64"):
        make_config("paper256", 256, knobs=Knobs(batch_gpu=3))
    with pytest.raises(ValueError, match="mbstd_group 16 is larger than batch_gpu 8"):
        make_config("paper256", 256, knobs=Knobs(mbstd_group=16))
    with pytest.raises(ValueError, match="channel_max = 0 is outside"):
        make_config("demo", 64, knobs=Knobs(channel_max=0))
    with pytest.raises(ValueError, match="mapping_layers = 99 is outside"):
        make_config("demo", 64, knobs=Knobs(mapping_layers=99))


# ---------------------------------------------------------------------------------------------------------
# build_networks: the one way from a spec to networks


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_networks_follows_the_spec_and_draws_g_then_d_from_the_global_generator():
    cfg = tiny_config()
    spec = network_spec(cfg, img_channels=1, c_dim=3)
    torch.manual_seed(5)
    G, D = build_networks(spec)
    assert (G.img_channels, G.c_dim, G.img_resolution) == (1, 3, cfg.resolution)
    assert (D.img_channels, D.c_dim) == (1, 3)
    img = G(torch.randn(2, G.z_dim), torch.eye(3)[:2], noise_mode="const")
    assert img.shape == (2, 1, 8, 8) and D(img, torch.eye(3)[:2]).shape == (2, 1)
    # G first, then D, from the process's generator: a training run's first weights depend on that order.
    torch.manual_seed(5)
    G_only, none = build_networks(spec, with_D=False)
    D_next = Discriminator(c_dim=3, img_resolution=cfg.resolution, img_channels=1, **cfg.D_kwargs)
    assert none is None and _same_weights(G_only, G) and _same_weights(D_next, D)
    # A TrainingConfig stands for its spec at 3 channels without labels.
    torch.manual_seed(5)
    a = build_networks(network_spec(cfg))
    torch.manual_seed(5)
    b = build_networks(network_spec(cfg))
    assert all(_same_weights(x, y) for x, y in zip(a, b)) and a[0].img_channels == 3


def test_build_networks_keep_rng_leaves_the_process_generator_where_it_was():
    spec = network_spec(tiny_config())
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    kept = build_networks(spec, keep_rng=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    drawn = build_networks(spec)                 # the same draws, this time moving the generator
    assert not torch.equal(torch.random.get_rng_state(), before)
    assert all(_same_weights(x, y) for x, y in zip(kept, drawn))


def test_a_spec_without_d_builds_only_g():
    cfg = tiny_config()
    spec = NetworkSpec(cfg.resolution, 3, 0, cfg.G_kwargs, None)
    G, D = build_networks(spec)
    assert D is None and G.img_resolution == cfg.resolution
