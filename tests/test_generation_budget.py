"""Generation is bounded by a memory budget, not a count: the same pixels in any number of passes, videos
streamed to the encoder a pass at a time, and serve's grid of a 1024-px model drawn within its budget."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan.analysis import sampling
from corgigan.play import serve
from corgigan.play.explorer import Explorer, Limits
from corgigan.play.projection import ProjectConfig
from corgigan.stylegan2.networks import Generator


def tiny_generator(resolution: int, channel_base: int) -> torch.nn.Module:
    """A frozen, seeded generator with few feature maps (16 at most) at `resolution`."""
    torch.manual_seed(0)
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=resolution, img_channels=3,
                  mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": channel_base, "channel_max": 16, "num_fp16_res": 0,
                                    "conv_clamp": 256})
    return G.eval().requires_grad_(False)


def pass_sizes(G: torch.nn.Module) -> list[int]:
    """Record the images in each pass of G.synthesis from now on."""
    sizes: list[int] = []
    G.synthesis.register_forward_hook(lambda _m, args, _out: sizes.append(len(args[0])))
    return sizes


def test_the_budget_scales_the_measured_cost_by_pixels_and_feature_maps() -> None:
    # paper1024's own synthesis network is the one measured: it costs exactly the costs.json figure.
    paper = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                      mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"num_fp16_res": 0})
    assert sampling.bytes_per_image(paper) == pytest.approx(sampling.gib_per_image_1024() * 2**30)
    assert 0.5 < sampling.gib_per_image_1024() < 0.7
    G = tiny_generator(32, 512)
    per = sampling.bytes_per_image(G)
    assert per < sampling.bytes_per_image(paper) / 1000
    assert sampling.images_per_batch(G, budget_bytes=int(5 * per) + 1) == 5
    assert sampling.images_per_batch(G, budget_bytes=1) == 1              # never below one image
    assert sampling.images_per_batch(G) >= 1                              # the device's own budget


def test_a_budget_below_one_batch_draws_the_same_images_in_more_passes() -> None:
    G = tiny_generator(32, 512)
    seeds = list(range(7))
    sizes = pass_sizes(G)
    whole = sampling.generate_images(G, seeds, 0.7)
    assert sizes == [7]
    sizes.clear()
    per = sampling.bytes_per_image(G)
    # A budget of at least the batch draws the batch in one pass: the same bytes as a fixed batch did.
    assert np.array_equal(sampling.generate_images(G, seeds, 0.7, budget_bytes=int(9 * per) + 1), whole)
    assert sizes == [7]
    sizes.clear()
    small = sampling.generate_images(G, seeds, 0.7, budget_bytes=int(2.5 * per) + 1)
    assert sizes == [2, 2, 2, 1]
    one = sampling.generate_images(G, seeds, 0.7, budget_bytes=1)
    assert sizes[4:] == [1] * 7
    # The same images, up to float rounding: torch's CPU matrix products (the style affines) round
    # differently for different batch sizes (~1e-7), which moves a rare pixel by one level of 255.
    for other in (small, one):
        diff = np.abs(whole.astype(int) - other)
        assert diff.max() <= 1 and (diff != 0).mean() < 1e-3


def test_the_video_streams_a_pass_at_a_time_with_the_same_bytes(tmp_path: Path) -> None:
    G = tiny_generator(32, 512)
    per = sampling.bytes_per_image(G)
    consumed: list[int] = []
    sizes = pass_sizes(G)
    held: list[int] = []     # frames drawn but not yet taken by the encoder, at the start of each pass
    G.synthesis.register_forward_pre_hook(lambda _m, _a: held.append(sum(sizes) - len(consumed)))

    def counted(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            consumed.append(1)
            yield frame

    frames = sampling.interpolation_frames(G, [0, 1, 2], 12, 1.0, budget_bytes=int(3 * per) + 1)
    streamed = sampling.write_video(counted(frames), tmp_path / "streamed.mp4",
                                    gif=tmp_path / "streamed.gif")
    assert sizes == [3, 3, 3, 3] and len(consumed) == 12
    assert max(held) == 0        # every frame of a pass was encoded before the next pass was drawn
    sizes.clear()
    at_once = sampling.write_video(sampling.interpolation_frames(G, [0, 1, 2], 12, 1.0),
                                   tmp_path / "at_once.mp4", gif=tmp_path / "at_once.gif")
    assert sizes == [12]
    # The encoder gets the same frames either way: the same bytes as frames held in one array.
    held_frames = np.stack(list(sampling.interpolation_frames(G, [0, 1, 2], 12, 1.0,
                                                              budget_bytes=int(3 * per) + 1)))
    held_path = sampling.write_video(held_frames, tmp_path / "held.mp4")
    assert streamed.read_bytes() == held_path.read_bytes()
    assert (tmp_path / "streamed.gif").read_bytes() == \
        sampling.write_gif(held_frames, tmp_path / "held.gif").read_bytes()
    assert at_once.stat().st_size > 0
    assert Image.open(tmp_path / "streamed.gif").n_frames == 12


def test_the_mixing_figure_draws_no_blank_corner() -> None:
    G = tiny_generator(32, 512)
    sizes = pass_sizes(G)
    sampling.style_mixing(G, [0, 1], [2, 3, 4])
    assert sum(sizes) == 3 + 2 * (1 + 3)       # the column sources, then each row's source and its mixes


def test_serve_grid_of_a_1024_px_model_is_thumbnails_drawn_within_the_budget() -> None:
    G = tiny_generator(1024, 2048)          # 2 feature maps at 1024 px
    limits = Limits()
    assert limits.max_pixels // 1024**2 == 1                 # one 1024-px image per pass
    explorer = Explorer(G, None, {"kimg": 0.0}, limits=limits, project_cfg=ProjectConfig(w_avg_samples=64))
    sizes = pass_sizes(G)
    srv = serve.start(explorer, "127.0.0.1", 0)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=120)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        assert info["limits"]["grid"] >= 4 and info["limits"]["thumb"] == 256
        conn.request("GET", "/api/grid?start=5&count=4&cols=2&psi=1")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        grid = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert grid.shape == (512, 512, 3)
        assert sizes == [1, 1, 1, 1]
        # Each tile is the full image of its seed, shrunk.
        conn.request("GET", "/api/image?seed=6&psi=1")
        full = np.asarray(Image.open(io.BytesIO(conn.getresponse().read())).convert("RGB"))
        assert full.shape == (1024, 1024, 3)
        assert np.array_equal(grid[:256, 256:], sampling.shrink(full[None], 256)[0])
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()



def test_the_budget_is_the_same_whatever_memory_is_free() -> None:
    # A pass of another size rounds a few pixels differently: the budget must follow the machine, not the
    # moment. Taking memory away between two reads must not change it.
    before = sampling.memory_budget(torch.device("cpu"))
    hog = bytearray(256 << 20)          # 256 MiB in use now
    hog[::4096] = b"x" * len(hog[::4096])
    assert sampling.memory_budget(torch.device("cpu")) == before
    del hog
