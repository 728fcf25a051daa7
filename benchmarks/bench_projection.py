"""Benchmark: projection (`corgigan project`) and page updates (`corgigan serve`) on CPU, and how well
projection reconstructs dataset images, in W and W+, by number of steps.

Wall seconds (time.perf_counter), median over --repeats rounds after a warm-up, torch on --threads
threads; each round times the baseline and its candidates one after the other, so load from other work
on the machine falls on both.
Figures are ratios against baselines measured in the same run:
  * projection steps/s, baseline: the bare step of a pixel-only projection (G.synthesis forward and
    backward with an MSE, Adam on w), for the networks of the demo config at 64 and 256 px, the auto
    config at 64 px and paper256 at 256 px (randomly initialised: speed does not depend on training).
    Against it: `projection.project`'s step with the discriminator feature loss, in W and in W+;
  * page update latency, baseline: the bare G.synthesis forward of one image (no grad). Against it: one
    GET /api/image over real HTTP from the running `corgigan serve` server (mapping, edit, synthesis, PNG
    encoding, transfer), each request a new psi so none is served from the cache; and a cached repeat;
  * reconstruction error on dataset images: a demo-config model at 64 px trained for --kimg by the real
    training loop on drawn dog scenes cropped with the filter's rule around their true boxes (or
    --checkpoint and --dataset for a model of your own: e.g. models/stylegan2 and
    data/processed/corgis.zip after `make demo`); --images of its dataset images projected in W and in W+
    for each of --steps; mean MSE ([0, 1] pixels), PSNR and D feature distance of the final latents.
    Baseline: the same errors of the average w (the start of every projection).

    python -m benchmarks.bench_projection [--repeats 3] [--threads 0] [--kimg 1] [--images 8]
    python -m benchmarks.bench_projection --checkpoint models/stylegan2 --dataset data/processed/corgis.zip
    python -m benchmarks.bench_projection --parts speed,page      # speed only
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from corgigan import images
from corgigan.analysis import latents, sampling
from corgigan.data.dataset_zip import write_zip
from corgigan.data.scenes import draw_scene
from corgigan.play import photos, projection, serve
from corgigan.play.explorer import Explorer
from corgigan.stylegan2 import configs
from corgigan.stylegan2.data import ZipDataset
from corgigan.stylegan2.loop import training_loop

log = logging.getLogger("bench_projection")
CPU = torch.device("cpu")
SPEED_NETS = (("demo", 64), ("auto", 64), ("demo", 256), ("paper256", 256))
PAGE_NETS = (("demo", 256), ("paper256", 256))


def interleaved_medians(fns: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall seconds of each fn over `repeats` rounds, after `warmup` untimed rounds. Each round
    calls every fn once, so load from other work on the machine falls on baseline and candidates alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def networks(name: str, resolution: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D of a preset, randomly initialised, eval and frozen, as projection uses them."""
    torch.manual_seed(0)
    G, D = configs.build_networks(configs.network_spec(configs.make_config(name, resolution)))
    return G.eval().requires_grad_(False), D.eval().requires_grad_(False)


# ---- projection speed ---------------------------------------------------------------------------

def pixel_steps(G: torch.nn.Module, target: torch.Tensor, steps: int) -> None:
    """The baseline: the least a projection step can cost (pixels only, one w)."""
    w = G.mapping.w_avg.detach().clone().view(1, 1, -1).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01)
    for _ in range(steps):
        img = G.synthesis(w.expand(1, G.num_ws, -1), noise_mode="const")
        loss = (img - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def projection_speed(repeats: int, steps: int) -> None:
    """Log projection steps/s per network and space, against the pixel-only baseline step."""
    log.info("%-26s %9s %9s %9s %9s", "projection (1 image)", "params", "steps/s", "s/step", "vs. base")
    for name, res in SPEED_NETS:
        G, D = networks(name, res)
        stats = projection.w_stats(G, 200)
        target = torch.rand(1, G.img_channels, res, res) * 2 - 1
        millions = sum(p.numel() for p in G.parameters()) / 1e6
        fns: list[Callable[[], object]] = [lambda G=G, target=target: pixel_steps(G, target, steps)]
        for space in projection.SPACES:
            cfg = projection.ProjectConfig(steps=steps, space=space)
            fns.append(lambda G=G, D=D, target=target, cfg=cfg, stats=stats: projection.project(
                G, target, D, cfg, stats=stats))
        base, *rates = (steps / s for s in interleaved_medians(fns, repeats))
        log.info("%-26s %8.1fM %9.2f %9.3f %8.2fx", f"{name} {res} px pixel-only (base)", millions, base,
                 1 / base, 1.0)
        for space, rate in zip(projection.SPACES, rates):
            log.info("%-26s %9s %9.2f %9.3f %8.2fx", f"{name} {res} px project {space.upper()}", "", rate,
                     1 / rate, rate / base)


# ---- page updates -------------------------------------------------------------------------------

def page_latency(repeats: int) -> None:
    """Log /api/image round trips of a running server at 256 px against the bare synthesis forward."""
    log.info("%-34s %9s %9s", "page update at 256 px", "ms", "vs. G")
    for name, res in PAGE_NETS:
        G, D = networks(name, res)
        ws = latents.map_seeds(G, [0], 1.0)

        @torch.no_grad()
        def bare(G: torch.nn.Module = G, ws: torch.Tensor = ws) -> None:
            G.synthesis(ws, noise_mode="const")

        model = Explorer(G, D, {"path": f"{name}-{res}", "kimg": 0.0})
        srv = serve.start(model, "127.0.0.1", 0)
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=120)
        psis = iter(np.linspace(0.5, 0.6, 1000))

        def get(path: str, conn: http.client.HTTPConnection = conn) -> None:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and body[:4] == b"\x89PNG", body[:200]

        try:
            base, fresh, cached = interleaved_medians(
                [bare, lambda psis=psis: get(f"/api/image?seed=1&psi={next(psis):.4f}"),
                 lambda get=get: get("/api/image?seed=1&psi=0.5")], repeats, warmup=2)
        finally:
            conn.close()
            srv.shutdown()
            srv.server_close()
        log.info("%-34s %9.1f %8.2fx", f"{name}: G.synthesis (baseline)", base * 1e3, 1.0)
        log.info("%-34s %9.1f %8.2fx", f"{name}: GET /api/image (new psi)", fresh * 1e3, fresh / base)
        log.info("%-34s %9.1f %8.2fx", f"{name}: GET /api/image (cached)", cached * 1e3, cached / base)


# ---- reconstruction errors ----------------------------------------------------------------------

def dog_dataset(folder: Path, n: int, side: int) -> Path:
    """A dataset zip of n drawn dog scenes, cropped with the filter's rule around their true boxes."""
    rng = np.random.default_rng(0)
    crops, out = folder / "crops", folder / "dataset.zip"
    rule = photos.CropRule(min_crop=1, resize_filter="lanczos")
    ids = [f"img{i:06d}" for i in range(n)]
    with images.ShardWriter(crops, shard_size=1000) as writer:
        for image_id in ids:
            w, h = int(rng.integers(240, 400)), int(rng.integers(240, 400))
            scene, boxes = draw_scene(rng, w, h, num_dogs=1, dog_scale=(0.5, 0.8))
            box = boxes[0] if boxes else None
            crop, _ = photos.crop_photo(scene, side, rule, box)
            writer.add(image_id, images.encode_png(crop), ".png")
    count, _ = write_zip(images.list_shards(crops), set(ids), out, set())
    assert count == n
    return out


def train_model(folder: Path, kimg: float) -> tuple[Path, Path]:
    data = dog_dataset(folder, 256, 64)
    cfg = configs.make_config("demo", 64)
    t0 = time.perf_counter()
    path = training_loop(data, folder / "run", cfg, kimg=kimg, snapshot_kimg=kimg, seed=0, augment="ada",
                         mirror=True, workers=0, device="cpu", tick_kimg=max(kimg / 4, 0.05))
    log.info("trained demo 64 px for %g kimg on %d drawn dog crops in %.0f s", kimg, 256,
             time.perf_counter() - t0)
    return path, data


def errors_table(checkpoint: Path, data: Path, n: int, steps_list: list[int]) -> None:
    """Log mean reconstruction errors of n dataset images by space and steps, against the average w."""
    G, D, info = sampling.load_with_discriminator(checkpoint, CPU)
    ds = ZipDataset(data)
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)
    target = torch.stack([ds[int(i)][0] for i in idx]).float() / 127.5 - 1
    if target.shape[-1] != G.img_resolution:
        raise SystemExit(f"{data} holds {target.shape[-1]} px images, the model makes {G.img_resolution} px")
    stats = projection.w_stats(G)
    with torch.no_grad():
        avg = G.synthesis(stats.mean.view(1, 1, -1).expand(n, G.num_ws, -1), noise_mode="const")
    start = projection.reconstruction_errors(avg, target, D)

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    log.info("%d images of %s, model %s (%d px, kimg %.2f)", n, data, info["path"], G.img_resolution,
             info["kimg"])
    log.info("%-22s %9s %9s %9s %10s %9s", "reconstruction", "MSE", "PSNR dB", "D feat", "MSE/start",
             "seconds")
    log.info("%-22s %9.5f %9.2f %9.4f %9.2fx %9s", "average w (baseline)", mean(start, "mse"),
             mean(start, "psnr"), mean(start, "d_features"), 1.0, "")
    for space in projection.SPACES:
        for steps in steps_list:
            t0 = time.perf_counter()
            result = projection.project(G, target, D, projection.ProjectConfig(steps=steps, space=space),
                                        stats=stats)
            secs = time.perf_counter() - t0
            log.info("%-22s %9.5f %9.2f %9.4f %9.2fx %9.1f", f"{space.upper()}, {steps} steps",
                     mean(result.errors, "mse"), mean(result.errors, "psnr"),
                     mean(result.errors, "d_features"), mean(result.errors, "mse") / mean(start, "mse"), secs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-per-timing", type=int, default=5, help="projection steps in one timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--kimg", type=float, default=1.0, help="training of the model for the errors")
    parser.add_argument("--images", type=int, default=8, help="dataset images projected")
    parser.add_argument("--steps", default="25,50,100,200", help="projection lengths for the errors")
    parser.add_argument("--checkpoint", type=Path, help="a model of your own (with --dataset)")
    parser.add_argument("--dataset", type=Path, help="its dataset zip")
    parser.add_argument("--parts", default="speed,page,errors",
                        help="what to measure: speed (projection steps/s), page (latency), errors")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("corgigan").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("torch %s, %d threads; load average %.2f on %d CPUs (wall times grow with other work)",
             torch.__version__, torch.get_num_threads(), os.getloadavg()[0], os.cpu_count())
    parts = set(args.parts.split(","))
    if parts - {"speed", "page", "errors"}:
        raise SystemExit(f"--parts {args.parts}: choose from speed, page, errors")
    if "speed" in parts:
        projection_speed(args.repeats, args.steps_per_timing)
    if "page" in parts:
        page_latency(args.repeats * 3)
    if "errors" in parts:
        steps_list = [int(s) for s in args.steps.split(",")]
        if args.checkpoint:
            if not args.dataset:
                raise SystemExit("--checkpoint needs --dataset (the zip it was trained on)")
            errors_table(args.checkpoint, args.dataset, args.images, steps_list)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-projection-") as tmp:
                checkpoint, data = train_model(Path(tmp), args.kimg)
                errors_table(checkpoint, data, args.images, steps_list)
    log.info("load average %.2f at the end", os.getloadavg()[0])


if __name__ == "__main__":
    main()
