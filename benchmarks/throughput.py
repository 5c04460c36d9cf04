"""Training and sampling throughput of the course's image diffusion model.

Measures, for a recipe of :mod:`course_lib.image_diffusion` (data set x profile):

* training images/s through the course's one loop (:func:`course_lib.train.train`) in
  fp32 eager and, on CUDA, bf16 autocast with channels-last, with and without
  ``torch.compile`` (compilation and warm-up steps are excluded from the timing);
* sampling images/s for 1000-step ancestral DDPM and 50-step DDIM (untrained weights:
  the cost of a step does not depend on them).

Results are appended to ``benchmarks/throughput.md`` with the device and torch version.
Speed figures live here, never in a timed test.

Usage::

    python3 run.py throughput --dataset mnist --profile cpu
    python benchmarks/throughput.py --dataset cifar10 --profile gpu --train-steps 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from course_lib import config, ddim, ddpm, image_diffusion, schedules, train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "throughput.md"
SIDES = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_images_per_second(
    r: image_diffusion.ImageRecipe,
    device: torch.device,
    amp: bool,
    compile: bool,
    steps: int,
    warmup: int,
) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` untimed ones (random data of
    the right shape: the data pipeline is a device-side index, so it is included)."""
    channels, side = SIDES[r.dataset]
    torch.manual_seed(0)
    model = image_diffusion.make_unet(r, channels).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = torch.randn(max(4 * r.batch_size, 1024), channels, side, side, device=device)
    schedule = schedules.by_name(r.schedule, r.T)
    batches = train.random_batches(images, batch_size=r.batch_size)

    def loss_fn(net: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
        return ddpm.loss(net, x0, schedule)

    kwargs = dict(lr=r.lr, ema_decay=r.ema_decay, amp=amp, compile=compile, progress=False)
    train.train(model, loss_fn, batches, steps=warmup, **kwargs)  # compile + warm-up
    _sync(device)
    t0 = time.perf_counter()
    train.train(model, loss_fn, batches, steps=steps, **kwargs)
    _sync(device)
    return steps * r.batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def sample_images_per_second(
    r: image_diffusion.ImageRecipe, device: torch.device, amp: bool, n: int, sampler: str
) -> float:
    """Images/s of ``n`` images from 1000-step ancestral DDPM or 50-step DDIM."""
    channels, side = SIDES[r.dataset]
    torch.manual_seed(0)
    model = image_diffusion.make_unet(r, channels).to(device).eval()
    schedule = schedules.by_name(r.schedule, r.T)
    x_T = torch.randn(n, channels, side, side, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        ddim.ddim_sample(model, x_T[:2], schedule, 2)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        if sampler == "ddpm-1000":
            ddpm.ancestral_sample(model, x_T, schedule, clip_x0=1.0)
        else:
            ddim.ddim_sample(model, x_T, schedule, 50, clip_x0=1.0)
        _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(SIDES))
    parser.add_argument("--profile", default=None, help="recipe profile (default: this machine's)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16, help="images per sampler timing")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to append to")
    args = parser.parse_args()
    cfg = config.get_config(args.profile)
    r = image_diffusion.recipe(cfg, args.dataset)
    device = cfg.device
    modes = [("fp32 eager", False, False)]
    if device.type == "cuda":
        modes += [("bf16 eager, channels-last", True, False), ("bf16 + compile", True, True)]
    rows = []
    for name, amp, comp in modes:
        ips = train_images_per_second(r, device, amp, comp, args.train_steps, args.warmup)
        rows.append(f"| train | {name} | batch {r.batch_size} | {ips:,.0f} |")
        print(rows[-1], flush=True)
    for sampler in ("ddpm-1000", "ddim-50"):
        for name, amp in [("fp32", False)] + ([("bf16", True)] if device.type == "cuda" else []):
            ips = sample_images_per_second(r, device, amp, args.samples, sampler)
            rows.append(f"| sample {sampler} | {name} | {args.samples} images | {ips:,.2f} |")
            print(rows[-1], flush=True)
    params = sum(p.numel() for p in image_diffusion.make_unet(r, SIDES[r.dataset][0]).parameters())
    header = (
        f"\n## {args.dataset}, recipe `{cfg.profile}` ({params:,} parameters) on "
        f"{cfg.describe()}, {time.strftime('%Y-%m-%d')}\n\n"
        "| what | mode | size | images/s |\n|---|---|---|---|\n"
    )
    with args.out.open("a") as f:
        f.write(header + "\n".join(rows) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
