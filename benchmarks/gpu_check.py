"""The course's GPU check: one command, under 9 minutes on one CUDA GPU.

Measures and appends to ``benchmarks/results.md``, with the GPU's name:

1. training images/s of the CIFAR-10 U-Net, DDPM's configuration (``ddpm35m``: 40.1M
   parameters in the course's U-Net, 35.7M in DDPM's code) and
   the course's ``gpu`` recipe, in fp32 eager and in bf16 autocast + channels-last +
   ``torch.compile`` (compilation and warm-up steps untimed), with peak memory;
2. a training run of ``--train-minutes`` (default 5) of the ``gpu`` recipe through
   chapter 9's :func:`course_lib.capstone.train_capstone` (bf16, channels-last), its
   classifier-feature FID, and sampling images/s of every sampler on that checkpoint.

The goal for 1 on an H100-class GPU: at least 5,000 training images/s for DDPM's
configuration in bf16 (DDPM trained at about 2,700 on a TPU v3-8).

    python benchmarks/gpu_check.py                  # on a CUDA machine
    python benchmarks/gpu_check.py --quick --out /tmp/check.md  # same code paths, CPU, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import train_images_per_second  # noqa: E402

from course_lib import capstone, config, evaluate  # noqa: E402
from course_lib import ddim_figures as df  # noqa: E402
from course_lib import sde_figures as sf  # noqa: E402

OUT = HERE / "results.md"


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )


def throughput_rows(cfg: config.Config, quick: bool) -> list[str]:
    """Training images/s per network and mode, with peak memory."""
    rows = []
    names = ["smoke"] if quick else ["ddpm35m", "gpu"]
    modes = [("fp32 eager", False, False)]
    if cfg.device.type == "cuda":
        modes.append(("bf16 + channels-last + compile", True, True))
    for name in names:
        r = capstone.recipe(cfg, name)
        params = sum(p.numel() for p in capstone.image_diffusion.make_unet(r, 3).parameters())
        for mode, amp, comp in modes:
            _peak_reset(cfg.device)
            steps, warmup = (2, 1) if quick else (30, 8 if comp else 3)
            ips = train_images_per_second(r, cfg.device, amp, comp, steps, warmup)
            rows.append(
                f"| train `{name}` ({params / 1e6:.1f}M) | {mode} | batch {r.batch_size} | "
                f"{ips:,.0f} images/s | {_peak_gib(cfg.device):.1f} GiB |"
            )
            print(rows[-1], flush=True)
    return rows


def training_run_rows(cfg: config.Config, minutes: float, quick: bool, objective: str) -> list[str]:
    """A timed training run of the ``gpu`` recipe, its FID and every sampler's speed."""
    r = capstone.recipe(cfg, "smoke" if quick else "gpu")
    # size the run from a short measurement of this recipe's speed in the run's own mode
    ips = train_images_per_second(r, cfg.device, cfg.use_amp, False, 2 if quick else 20, 1)
    steps = max(2, int(minutes * 60 * ips / r.batch_size))
    r = replace(r, steps=steps)
    _peak_reset(cfg.device)
    t0 = time.perf_counter()
    ckpt = _checkpoint_folder() / f"gpu_check_{objective}_{steps}.pt"
    ckpt.unlink(missing_ok=True)
    cap = capstone.train_capstone(cfg, objective, r, checkpoint=ckpt, progress=not quick)
    train_s = time.perf_counter() - t0
    rows = [
        f"| training run, `gpu` recipe, {objective} | bf16 + channels-last | {steps:,} steps × "
        f"{r.batch_size} in {train_s / 60:.1f} min | "
        f"{steps * r.batch_size / train_s:,.0f} images/s | {_peak_gib(cfg.device):.1f} GiB |"
    ]
    print(rows[-1], flush=True)
    evaluator = evaluate.course_evaluator(cfg, "cifar10")
    n = 16 if quick else 2000
    floor, floor_std = df.fid_floor(evaluator.fid, cap.images, n, repeats=3)
    plan = {
        sf.HEUN: [2 if quick else 18],
        sf.DDIM: [3 if quick else 50],
        sf.PC: [2 if quick else 100],
    }
    plan |= {
        sf.DDPM: [3 if quick else 1000],
        sf.EULER: [3 if quick else 50],
        sf.DOPRI5: [1 if quick else 3],
    }
    if objective == "flow":
        plan |= {"flow, Euler": [2 if quick else 20], "flow, Heun": [2 if quick else 10]}
    table = sf.quality_vs_nfe(
        cap.samplers(), plan, evaluator.fid, (n, 3, 32, 32), device=cfg.device
    )
    for name, points in table.items():
        for p in points:
            rows.append(
                f"| sample {name} | {p.nfe:.0f} NFE | {n} images | {p.per_second:,.1f} images/s | "
                f"course FID {p.quality:.2f} (floor {floor:.2f} ± {floor_std:.2f}) |"
            )
            print(rows[-1], flush=True)
    ckpt.unlink(missing_ok=True)
    return rows


def _checkpoint_folder() -> Path:
    folder = capstone.data_module.data_root() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: test the script on a CPU")
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--objective", default="flow", choices=capstone.objectives.NAMES)
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to append to")
    args = parser.parse_args(argv)
    cfg = config.get_config("smoke" if args.quick else "gpu")
    if cfg.device.type != "cuda" and not args.quick:
        print(
            "gpu_check needs a CUDA GPU (none is visible here). To test the script itself on "
            "a CPU, run it with --quick --out /tmp/gpu_check.md.",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    name = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else "CPU"
    rows = throughput_rows(cfg, args.quick)
    minutes = 0.05 if args.quick else args.train_minutes
    rows += training_run_rows(cfg, minutes, args.quick, args.objective)
    total = time.perf_counter() - start
    header = (
        f"\n## GPU check on {name} ({cfg.describe()}), {time.strftime('%Y-%m-%d')}"
        f"{' — quick mode, sizes too small to mean anything' if args.quick else ''}\n\n"
        f"`python benchmarks/gpu_check.py` took {total / 60:.1f} min.\n\n"
        "| what | mode | size | speed | memory / quality |\n|---|---|---|---|---|\n"
    )
    with args.out.open("a") as f:
        f.write(header + "\n".join(rows) + "\n")
    print(f"appended to {args.out} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
