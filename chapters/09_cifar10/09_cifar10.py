# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,expected_output,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 9. Capstone: one CIFAR-10 model, end to end
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/09_cifar10/09_cifar10.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Decide* an objective and a budget before spending money, and say why. *Run* one CIFAR-10 model end to end with the course's tested pieces: the U-Net, the one training loop, EMA, atomic checkpoints that survive a killed session, and PyTorch's DDP under `torchrun` on several GPUs. *Compare* every sampler of chapters 3–6 on the one checkpoint, at equal NFE. *Evaluate* honestly: a stated protocol, a floor, nearest training images, and a budget ladder against published runs. |
# | **Prerequisites** | Chapters 3–6: DDPM's ε-loss and ancestral sampler, DDIM, EDM's denoiser and Heun sampler, the probability-flow ODE and PC, flow matching. Chapter 4's FID and its floor. |
# | **Run time** | `smoke` ≈ 30 s · `cpu` ≈ 4 min on two cores (a 0.3M-parameter U-Net on 5,000 images: colour blobs, not objects) · `gpu` ≈ 40 min on one modern GPU (not yet measured) |

# %% [markdown]
# The next cell does something only on Google Colab: it installs `course_lib`, the
# package behind the course, and leaves Colab's own PyTorch alone. On your own machine
# (after `python3 run.py lab`) it does nothing.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: install course_lib, keep Colab's torch
    import subprocess

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "git+https://github.com/scores-to-flows/scores-to-flows",
        ],
        check=True,
    )
    # what Colab lacks of course_lib's dependencies (kept in step with pyproject.toml by a test)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "torchdiffeq>=0.2.3"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()  # ipywidgets 8 on Colab

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

import course_lib
from course_lib import capstone, distributed, evaluate, objectives, plotting
from course_lib import ddim_figures as df
from course_lib import flow_matching as fm
from course_lib import sde_figures as sf
from course_lib.exercises import ch09
from course_lib.show import results_card, show

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## The lab in one page
#
# Chapters 0–8 built every piece on problems whose answers are known in closed form.
# This chapter puts them together on the data set the papers report on, CIFAR-10: 50,000
# colour images of 32 × 32 pixels in ten classes. It is a lab: fewer derivations, more
# decisions, each with its reason and a measurement.
#
# 1. **Decide** the objective and the budget (this section and the next).
# 2. **Train** one U-Net with the one training loop, on one process here and on several
#    GPUs from the command line.
# 3. **Sample** the one checkpoint with every sampler of chapters 3–6 and measure quality
#    against the number of network evaluations (NFE) and images per second.
# 4. **Evaluate** with a stated protocol, a floor, and the nearest training images.
# 5. **Read the budget ladder** before spending money on a longer run.
#
# ### Decision 1: the objective
#
# Three objectives train the *same* network $F_\theta(x, c)$ — only what it is fed and
# what it must predict change:
#
# | objective | image input | noise input $c$ | target | from |
# | --- | --- | --- | --- | --- |
# | `"eps"` | $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, $t \sim U\{1..T\}$ | $t/T$ | the noise $\varepsilon$ | chapter 3 {cite}`ho2020ddpm` |
# | `"edm"` | $c_\text{in}\hat x = \hat x/\sqrt{\sigma^2+\sigma_\text{data}^2}$, $\hat x = x_0 + \sigma\varepsilon$, $\ln\sigma \sim \mathcal N(-1.2, 1.2^2)$ | $\tfrac14\ln\sigma$ | $(x_0 - c_\text{skip}\hat x)/c_\text{out}$ | chapter 5 {cite}`karras2022edm` |
# | `"flow"` | $x_t = t\,x_1 + (1-t)\,x_0$, $t \sim U[0,1]$ | $t$ | the velocity $x_1 - x_0$ | chapter 6 {cite}`lipman2023flow` |
#
# In the flow's letters $x_1$ is the image and $x_0$ the noise (chapter 6's convention).
# Whatever the objective, the trained network becomes EDM's denoiser $D(\hat x;\sigma)$
# through a named, tested conversion, and from the denoiser every sampler of the course
# runs. So the choice of objective is *not* a choice of sampler. What it changes is how
# the training loss spreads its effort over noise levels (chapter 6's weighting
# $\lambda_t$), and how an error of the network becomes an error of the denoiser: from an
# ε-prediction, $D = \hat x - \sigma\hat\varepsilon$ multiplies the network's error by $\sigma$
# (up to 80 where sampling starts), which is why EDM scales the network's output by
# $c_\text{out}$; the flow's $D = x_t + (1-t)\,v$ multiplies it by $1 - t \le 1$. That is
# what this lab lets you measure. The default below is the flow; set
# `OBJECTIVE` to `"eps"` or `"edm"` and rerun to compare — each objective keeps its own
# checkpoint.

# %%
OBJECTIVE = "flow"  # "eps", "edm" or "flow": one model, the objective you pick
objective = objectives.get(OBJECTIVE)
show(objectives.Objective.loss, docstring=False)

# %% [markdown]
# The losses are those of chapters 3, 5 and 6 (`ddpm.loss`, `edm.edm_loss`,
# `flow_matching.cfm_loss_at`), called with random numbers drawn outside them: the draws
# `d` hold, for every image of the step, a flip, a uniform number (the DDPM step or the
# flow time), a normal number (EDM's $\ln\sigma$) and the noise. The next sections explain
# why they are drawn this way: it is what makes a run resumable to the bit and independent
# of the number of GPUs.
#
# ### Decision 2: the budget
#
# A budget is a network size, a number of steps and a batch size. The numbers worth
# knowing before choosing (DDPM's own run: 800,000 steps of 128 images, 10.6 hours on a
# TPU v3-8, about 2,700 images per second {cite}`ho2020ddpm`):

# %%
rows = []
for name, r in capstone.RECIPES.items():
    net = course_lib.image_diffusion.make_unet(r, 3)
    n_params = sum(p.numel() for p in net.parameters())
    seen = r.steps * r.batch_size
    rows.append(
        (
            name,
            f"{n_params / 1e6:.2f}M parameters, base {r.base_channels} × {r.channel_mults}, "
            f"{r.steps:,} steps × batch {r.batch_size} = {seen / 1e6:.2f}M images "
            f"({seen / 50_000:.1f} epochs of the 50k training set)",
        )
    )
    del net
results_card(rows)
recipe = capstone.recipe(cfg)
print(f"this run uses the {cfg.profile!r} recipe")

# %% [markdown]
# The `ddpm35m` row is DDPM's CIFAR-10 configuration (128 channels, multipliers
# 1, 2, 2, 2, two residual blocks, attention at 16 × 16) built with the course's U-Net:
# 40.1M parameters, against 35.7M in DDPM's own code (the blocks differ in detail). The
# `gpu` recipe is the course's model of chapters 3–6, half the width and a quarter of the
# parameters; it sees 5.1M images, 5% of DDPM's budget. The `cpu` recipe is a
# demonstration that the whole pipeline runs: a 0.3M-parameter network that sees 25,600
# images (about five passes over its 5,000-image subset) learns colour statistics and
# blurry layouts, not objects. Say so whenever you show its samples.
#
# ```{admonition} Exercise 9.1, predicted first
# :class: tip
# Before you read on: how many training images per second must *one* GPU process to
# repeat DDPM's budget in 24 hours?
# ```

# %% tags=["exercise"]
# Exercise 9.1 (predict first). One number: images per second.
my_images_per_second = None

# %%
ch09.check_predict_images_per_second(my_images_per_second)

# %% tags=["solution", "hide-input"]
my_images_per_second = 800_000 * 128 / (24 * 3600)
ch09.check_predict_images_per_second(my_images_per_second)

# %% [markdown]
# ## The data
#
# `data.load("cifar10")` reads the original `cifar-10-python.tar.gz` (downloaded when
# missing, checked against its md5), a folder tree `train/<class>/*.png`, or that tree
# zipped as `train.zip`; it decodes once and keeps a uint8 cache beside the data. The
# images go to the device once, as a tensor: each step picks its batch by indexing,
# without a Python data loader.

# %%
images, labels = course_lib.image_diffusion.training_images(cfg, recipe)
print(
    f"{images.shape[0]:,} training images {tuple(images.shape[1:])} in [-1, 1] on "
    f"{images.device} (split {cfg.train_split!r})"
)
fig, ax = plt.subplots(figsize=(8, 2.2))
plotting.image_grid(images[:32].cpu(), nrow=16, ax=ax, title="CIFAR-10 training images")
plt.show()

# %% [markdown]
# A caution about the copies some machines carry: JPEG re-encodings of CIFAR-10 decode to
# slightly different pixels than the original pickles, so an FID against them is not
# comparable to a paper's even with the paper's protocol. The course's own FID below is
# comparable only with itself.
#
# ## Training: one loop, one process or many
#
# `capstone.train_capstone` is chapter 3's set-up — a fixed random subset of the split on
# the device, seeded initial weights, horizontal flips, channels-last and bf16 autocast on
# CUDA — and the course's one loop, `train.train`, with EMA weights and an atomic
# checkpoint every `checkpoint_every` steps. Run this cell, stop the kernel in the middle,
# and run it again: it continues from the last checkpoint, and ends with the weights an
# uninterrupted run would have had (a test kills a run with `SIGKILL` and checks exactly
# that, to the last bit, on the CPU; on a GPU, bf16 and cuDNN's nondeterministic kernels
# make a resumed run close to the uninterrupted one, not bitwise equal).

# %%
cap = capstone.train_capstone(cfg, OBJECTIVE, recipe)
res = cap.result
how = "loaded from its checkpoint" if res.resumed_at >= recipe.steps else "trained"
print(
    f"{OBJECTIVE} U-Net ({cap.parameters / 1e6:.2f}M parameters) {how}: {res.steps} steps"
    + (
        f", {res.steps_per_second * recipe.batch_size:.0f} images/s in this call"
        if res.resumed_at < recipe.steps
        else ""
    )
)
fig, ax = plt.subplots(figsize=(6, 3))
plotting.loss_curve(res.losses, ax=ax, title=f"training loss, {OBJECTIVE} objective")
plt.show()

# %% [markdown]
# The loss does not fall to zero and is not comparable across objectives: each regresses
# a different target, with a floor set by the conditional variance of that target
# (chapter 6's constant $C$). A yardstick the three objectives share is the error of the
# *denoiser* they all become, at each noise level:
#
# $$ e(\sigma) = \tfrac1D\,\mathbb E\,\|D_\theta(x_0 + \sigma\varepsilon;\sigma) - x_0\|^2, $$
#
# which runs from 0 (a perfect denoiser at $\sigma \to 0$) to the data's variance per
# pixel (predicting the mean image, $\sigma \to \infty$). Every objective's loss is a
# weighting of this curve over $\sigma$, so it is where a change of objective shows:
# train another objective and lay its curve over this one.

# %%
# nine levels from the denoiser's smallest trusted σ to σ_max = 80, log-spaced
lo, hi = math.log10(objective.sigma_min), math.log10(objective.sigma_max)
sigmas = torch.logspace(lo, hi, 9, dtype=torch.float64).tolist()
held = images[: cfg.pick(smoke=32, cpu=500, gpu=2000)]
e_sigma = capstone.denoising_error(cap.denoiser(), held, sigmas)
data_var = float(held.double().var(0, unbiased=False).mean())
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.loglog(sigmas, e_sigma, "o-", color=plotting.COLORS["model"], label=f"{OBJECTIVE} model")
ax.axhline(data_var, color=plotting.COLORS["data"], ls="--", label="predict the mean image")
ax.set(xlabel="noise level σ", ylabel="e(σ), squared error per pixel", title="denoising error")
ax.legend()
plt.show()
print(
    "e(σ) at σ = "
    + ", ".join(f"{sg:.2g}: {e:.4f}" for sg, e in zip(sigmas, e_sigma.tolist(), strict=True))
    + f" (data variance {data_var:.4f})"
)

# %% [markdown]
# What says whether the model is good in the end is the samples, measured below.
#
# ### Why resumption is exact
#
# Two things must be restored for a resumed run to *be* the uninterrupted run: the
# weights, optimiser and EMA (the checkpoint holds them), and every random number the
# remaining steps will draw. A generator that restarts from its seed replays the batches
# of the first steps; the course's older image set-up saves the generators' states in the
# checkpoint for that reason. This chapter goes further: every random number of step $k$
# comes from a generator seeded by $(\text{seed}, k)$ alone, so there is no state to save.

# %%
show(distributed.step_generator, docstring=False)
show(objectives.draw, docstring=False)

# %% [markdown]
# ### Several GPUs: DDP under `torchrun`
#
# On a machine with $W$ GPUs the same code runs as $W$ processes, one per GPU, with
# PyTorch's `DistributedDataParallel` {cite}`li2020ddp`:
#
# ```bash
# # one process (what this notebook does)
# python -m course_lib.capstone train --objective flow --profile gpu
# # four GPUs on one machine: the same entry point, four processes
# torchrun --nproc_per_node=4 -m course_lib.capstone train --objective flow --profile gpu
# # then sample the checkpoint, sharded over the four GPUs (18 Heun steps: 35 NFE), save the
# images and print the course's FID
# torchrun --nproc_per_node=4 -m course_lib.capstone sample --objective flow --profile gpu \
#     --sampler "EDM Heun" --knob 18 -n 50000 --out samples.pt --fid
# ```
#
# `torchrun` starts the processes and tells each its rank $r$ and the world size $W$
# through environment variables; `distributed.from_env()` reads them, checks that there
# are enough GPUs (`--nproc_per_node` larger than the GPU count is an error that names
# the right number) and joins the process group. From there the course's rule is: **a run
# must not depend on $W$**.
#
# * The global batch of $B$ images is split into $W$ local batches of $B/W$
#   ($W$ must divide $B$, or the processes' mean losses would be weighted unequally).
# * Epoch $e$ is a permutation of the training set seeded by $\text{seed} + e$;
#   PyTorch's `DistributedSampler` with `set_epoch(e)` deals it out, rank $r$ taking
#   positions $r, r+W, r+2W, \dots$ So the $W$ local batches of step $k$ are, together,
#   exactly global batch $k$ of a one-process run.
# * The random numbers of step $k$ are drawn for all $B$ images from the
#   $(\text{seed}, k)$ generator, and each process keeps its rows $r, r+W, \dots$
# * DDP averages the $W$ gradients of the local mean losses: the gradient of the global
#   mean loss. Only rank 0 writes the checkpoint; the logged loss is averaged over ranks.
#
# Bit-for-bit the same steps hold for a recipe without dropout. Dropout masks are drawn
# per process (from a generator seeded by seed, step and rank), and on a GPU bf16 and
# cuDNN reductions add their own rounding: there $W$ processes run the *same recipe* —
# the same batches, the same noise, the same distribution of updates — not the same bits.

# %%
show(distributed.EpochBatches.__call__, docstring=False)
n_train = images.shape[0]
one = distributed.EpochBatches(n_train, recipe.batch_size, recipe.seed)
two = [distributed.EpochBatches(n_train, recipe.batch_size, recipe.seed, r, 2) for r in range(2)]
step = 3
merged = torch.stack([b(step) for b in two], 1).reshape(-1)
print(
    f"step {step}: rank 0 takes {two[0](step)[:4].tolist()}..., rank 1 {two[1](step)[:4].tolist()}...;"
    f" together the one-process batch: {torch.equal(merged, one(step))}"
)

# %% [markdown]
# The test suite runs exactly this on the CPU: two processes with the `gloo` backend on
# the loopback address take four steps, and their weights match a one-process run's to
# $10^{-9}$ (measured: about $10^{-12}$); a checkpoint written by the two-process run
# resumes in a one-process run and vice versa; samples drawn by two processes are the
# samples one process draws. The cell below runs the same check from the notebook (in the
# `cpu` profile; it takes about half a minute).
#
# One honest detail: the match is run in float64. In float32 the all-reduce adds the two
# half-batches in another order, and Adam's first steps amplify that rounding. Adam's
# first update is $-\text{lr}\cdot g/(|g| + \epsilon) \approx -\text{lr}\cdot\operatorname{sign}(g)$
# whatever $|g|$ is, and in the zero-initialised convolutions (the output layer and each
# residual branch's second convolution) the first gradients are sums of nearly cancelling
# terms: a rounding-level change of the summation order can flip their sign and move a
# weight by up to $2\,\text{lr}$. Measured: about $6\times10^{-4}$ after four steps in
# float32 — not a bug, and not a difference that matters for training, but a reason to
# check equivalence in float64.

# %%
if cfg.profile == "cpu":  # two gloo processes against one, on the CPU, in float64
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        env = {"COURSE_PROFILE": "smoke", "OMP_NUM_THREADS": "1", "COURSE_THREADS": "1"}
        for procs in (1, 2):
            args = ["train", "--objective", OBJECTIVE, "--steps", "4", "--float64"]
            report = capstone.run_cli(
                [*args, "--checkpoint", str(Path(tmp) / f"{procs}.pt")], procs, env
            )
            print(f"{procs} process(es): {report['steps']} steps, loss {report['final_loss']:.6f}")
        gap = capstone.max_weight_difference(Path(tmp) / "1.pt", Path(tmp) / "2.pt")
        print(f"largest weight difference, 2 processes vs 1: {gap:.1e}")
#
# ## One checkpoint, every sampler
#
# `cap.samplers()` turns the network into a denoiser and hands it to chapter 5's table of
# samplers; for a flow it adds the flow's own Euler and Heun in flow time. The
# conversion a flow needs is a small derivation (Exercise 9.2): on the linear path
# $x_t = t\,x_1 + (1-t)\,x_0$, dividing by $t$ gives EDM's $\hat x = x_1 + \sigma x_0$ with
# $\sigma = (1-t)/t$.


# %% tags=["exercise"]
# Exercise 9.2. EDM's denoiser D(x̂; σ) of a flow on the linear path (t = 0 noise, t = 1
# data). velocity(x, t) takes t of shape (B,); xhat is (B, D); sigma a float.
def denoiser_from_velocity(velocity, xhat, sigma):
    raise NotImplementedError


# %%
ch09.check_denoiser_from_velocity(denoiser_from_velocity)


# %% tags=["solution", "hide-input"]
def denoiser_from_velocity(velocity, xhat, sigma):
    t = 1.0 / (1.0 + sigma)  # σ = (1 − t)/t
    x_t = t * xhat  # the flow's own state
    v = velocity(x_t, torch.full((xhat.shape[0],), t, dtype=xhat.dtype))
    return x_t + (1 - t) * v  # x1 = x_t + (1 − t)(x1 − x0)


ch09.check_denoiser_from_velocity(denoiser_from_velocity)

# %% [markdown]
# The course's version works on any affine path (it finds $t$ from $\sigma$ by bisection):

# %%
show(fm.denoiser_from_velocity, docstring=False)

# %% [markdown]
# Now every sampler on the one checkpoint, from the same noise, at a few step counts. The
# quality is the course's classifier-feature FID (chapter 4): the Fréchet distance between
# Gaussians fitted to the features of a small classifier trained on the same CIFAR-10
# split, for `n_fid` samples against the training images. FID is biased upwards at small
# $n$, so the table shows the **floor**: what `n_fid` *real* images score, with its spread
# over random subsets. A difference smaller than that spread is noise.

# %%
evaluator = evaluate.course_evaluator(cfg, "cifar10")
n_fid = cfg.pick(smoke=16, cpu=200, gpu=2000)
fid_floor, fid_floor_std = df.fid_floor(
    evaluator.fid, images, n_fid, repeats=3, generator=generator
)
table = cap.samplers()
flow_plan = {"flow, Euler": [10, 20], "flow, Heun": [5, 10]}
plan = cfg.pick(
    smoke={sf.DDIM: [3], sf.HEUN: [2], sf.DDPM: [3], sf.PC: [2], sf.EULER: [3], sf.DOPRI5: [1]},
    cpu={
        sf.DDIM: [10, 25],
        sf.HEUN: [5, 10],
        sf.EULER: [10],
        sf.DDPM: [50],
        sf.PC: [20],
        sf.DOPRI5: [2],
    },
    gpu={
        sf.DDIM: [10, 25, 50, 100],
        sf.HEUN: [5, 10, 18],
        sf.EULER: [18, 50],
        sf.DDPM: [100, 1000],
        sf.PC: [100, 500],
        sf.DOPRI5: [3, 5],
    },
)
if objective.velocity(cap.model) is not None:
    plan = {
        **cfg.pick(
            smoke={"flow, Euler": [2], "flow, Heun": [2]},
            cpu=flow_plan,
            gpu={"flow, Euler": [10, 20, 50], "flow, Heun": [5, 10, 25]},
        ),
        **plan,
    }
shape = (n_fid, *images.shape[1:])
nfe_table = sf.quality_vs_nfe(table, plan, evaluator.fid, shape, device=cfg.device)
print(f"CIFAR-10, {OBJECTIVE} model: classifier-feature FID of {n_fid} samples (lower is better)")
print(sf.format_nfe_table(nfe_table, floor=(fid_floor, fid_floor_std), digits=1))
sf.plot_quality_vs_nfe(
    nfe_table,
    floor=(fid_floor, fid_floor_std),
    title=f"CIFAR-10, one {OBJECTIVE} checkpoint, every sampler ({n_fid} samples)",
    ylabel="classifier-feature FID (lower is better)",
    ymin=1.0,
)
plt.show()

# %% [markdown]
# How to read the table, as an experimenter would:
#
# * **Equal NFE, not equal steps.** EDM's Heun with $N$ steps costs $2N-1$ evaluations
#   (its last step is Euler), the flow's Heun $2N$, PC $2N+1$, dopri5 whatever its error
#   control needs; compare at equal NFE (the plot's axis) and in images per second (the
#   results card: the NFE and the network's cost decide it).
# * **Three Euler samplers are one update.** With $\hat\varepsilon = (\hat x - D)/\sigma$, an
#   Euler step of EDM's ODE from $\sigma$ to $\sigma'$, a DDIM step with $\eta = 0$ (in EDM's
#   coordinates $\hat x = x_t/\sqrt{\bar\alpha_t}$) and a flow Euler step on the linear path
#   ($x_t = t\hat x$) all map $\hat x$ to $D(\hat x;\sigma) + \sigma'\hat\varepsilon$ (chapters
#   4–6). They differ only in their grid of noise levels, in where they start (the flow at
#   $\sigma = \infty$, EDM at $\sigma_\text{max} = 80$, DDIM at the schedule's last step) and
#   in DDIM's clipping of $\hat x_0$ to $[-1, 1]$. Ancestral DDPM and PC add noise and need
#   more steps.
# * **Differences below the floor's spread are not differences.** Every row here is one
#   set of samples (one seed), so its own spread is not measured (the table's "± 0.0"
#   means *not measured*, not *exact*); read differences against the floor's spread,
#   itself estimated from three subsets. A paper's 50,000 samples shrink the spread by
#   about $\sqrt{50{,}000/n}$. And the best of ten noisy rows is biased low: the ladder
#   below quotes it as such.

# %%
show_methods = [name for name in plan][:6]
fig, axes = plt.subplots(len(show_methods), 1, figsize=(8, 1.25 * len(show_methods)))
for ax, name in zip(axes, show_methods, strict=True):
    point = nfe_table[name][-1]
    plotting.image_grid(
        point.x[:16].clamp(-1, 1), nrow=16, ax=ax, title=f"{name}, {point.nfe:.0f} NFE"
    )
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Evaluation, honestly
#
# ### The protocol
#
# A number without its protocol cannot be compared with anything. Every FID here is
# stated with: the features (the course's classifier, or Inception-v3), the number of
# samples, the reference set (which split, how many images) and the seeds. Papers differ
# on each of these: DDPM and EDM use 50,000 samples against the 50,000 training images,
# EDM reports the minimum over three sets of samples {cite}`karras2022edm`, and resizing
# and JPEG details move Inception FID by more than the differences between recent papers
# {cite}`parmar2022cleanfid`.
#
# ### Inception FID, where its weights can be fetched
#
# The standard FID uses Inception-v3 features {cite}`heusel2017fid`; its packages download
# the weights on first use. `evaluate.inception_fid` uses `torch-fidelity` (install the
# course's optional extra: `pip install "scores-to-flows[fid]"`). On Colab or any online
# machine it returns a number; offline it says so, and what to use instead.

# %%
best_name, best = min(
    ((name, pts[-1]) for name, pts in nfe_table.items()), key=lambda item: item[1].quality
)
try:
    reference = images[:10_000].cpu()
    inception = evaluate.inception_fid(best.x.clamp(-1, 1), reference)
    inception_line = (
        f"{inception:.2f} (Inception-v3 via torch-fidelity, {best.x.shape[0]} samples of "
        f"{best_name} against {reference.shape[0]} training images, seed 0)"
    )
except RuntimeError as err:
    inception_line = f"unavailable here: {err}"
print("Inception FID:", inception_line)

# %% [markdown]
# ### Nearest training images
#
# A low FID says the samples have the statistics of the data; it does not say they are
# new. Beside each sample, its nearest training image in pixel space. The yardstick is
# not the typical distance between two images but the nearest-neighbour distance of
# *real* images that the set does not contain: a fresh image lies that far from its
# nearest training image, and samples much closer than that are copies.

# %%
samples = best.x[:10].clamp(-1, 1)
nn_idx, nn_dist = evaluate.nearest_training_images(samples.to(images.device), images)
fig, axes = plt.subplots(2, 1, figsize=(8, 2.2))
plotting.image_grid(samples, nrow=10, ax=axes[0], title=f"samples ({best_name})")
plotting.image_grid(
    images[nn_idx.to(images.device)].cpu(), nrow=10, ax=axes[1], title="nearest training image"
)
fig.tight_layout()
plt.show()
held_out = torch.zeros(images.shape[0], dtype=torch.bool)
held_out[torch.randperm(images.shape[0], generator=generator)[:100]] = True
held_out = held_out.to(images.device)
_, real_dist = evaluate.nearest_training_images(images[held_out], images[~held_out])
print(
    f"pixel distance to the nearest training image: samples {nn_dist.mean():.2f} (min "
    f"{nn_dist.min():.2f}); 100 held-out real images {real_dist.mean():.2f} (min "
    f"{real_dist.min():.2f})"
)

# %% [markdown]
# ## The budget ladder
#
# Before paying for a longer run, read what each rung of budget buys. The ladder below
# puts this run beside published ones. The rungs for 30 minutes, 1 hour and 4 hours on
# one GPU are what `benchmarks/gpu_check.py` and `python -m course_lib.capstone train
# --profile gpu --steps N` measure on the hardware they name; no GPU was available when
# this chapter was written, so `benchmarks/results.md` lists them as unmeasured until
# someone runs them.

# %%
ladder = [
    (
        f"this run ({cfg.profile}, {cfg.device})",
        f"{res.steps:,} steps × {recipe.batch_size} = {res.steps * recipe.batch_size / 1e6:.2f}M images, "
        f"{cap.parameters / 1e6:.2f}M parameters; best course FID (the minimum of the rows, "
        f"so biased low) {best.quality:.1f} "
        f"({best_name}, {best.nfe:.0f} NFE; floor {fid_floor:.1f} ± {fid_floor_std:.1f}, n = {n_fid})",
    )
]
ladder += [(what, f"{hardware}: {result}") for what, hardware, result in capstone.PUBLISHED_BUDGETS]
results_card(ladder)

# %% [markdown]
# Three ways to read the ladder:
#
# * **The images seen set the budget.** DDPM's model saw 102M images; the `gpu` recipe
#   sees 5% of that. The published runs kept improving their FID long after their loss
#   curves looked flat (the loss floor is the target's conditional variance, which no
#   network removes); the rungs of the ladder are how to see that for your own run.
# * **Throughput decides what a budget buys.** At 5,000 images/s (the course's goal for
#   DDPM's configuration on one H100-class GPU in bf16) DDPM's budget takes under 6
#   hours; `python benchmarks/gpu_check.py` measures fp32 eager against bf16 +
#   channels-last + `torch.compile` on your GPU before you choose.
# * **More GPUs divide the time, not the budget.** With DDP on $W$ GPUs, keep the global
#   batch and learning rate of the recipe and the run is the same recipe, at most $W$
#   times faster: at batch 128 on 8 GPUs each holds 16 images, too few to keep a large
#   GPU busy, so larger $W$ usually comes with a larger batch (and the learning-rate
#   questions of {cite}`goyal2017largebatch`).
#
# ## Results card

# %%
elapsed = time.perf_counter() - chapter_start
card = [
    ("run", cfg.describe()),
    ("chapter wall time", f"{elapsed:.1f} s"),
    (
        f"training ({OBJECTIVE})",
        f"{cap.parameters / 1e6:.2f}M parameters, {res.steps} steps × {recipe.batch_size}, "
        f"final loss {sum(res.losses[-50:]) / len(res.losses[-50:]):.4f}"
        + (
            f", {res.steps_per_second * recipe.batch_size:.0f} images/s"
            if res.resumed_at < recipe.steps
            else " (loaded)"
        ),
    ),
    (
        f"denoising error e(σ), σ = {sigmas[0]:.3g} / {sigmas[4]:.3g} / {sigmas[-1]:.3g}",
        f"{e_sigma[0]:.4f} / {e_sigma[4]:.4f} / {e_sigma[-1]:.4f} (data variance {data_var:.4f})",
    ),
    ("course FID floor (real vs real)", f"{fid_floor:.1f} ± {fid_floor_std:.1f} ({n_fid} images)"),
]
for name, points in nfe_table.items():
    for p in points:
        card.append(
            (
                f"course FID, {name}, {p.nfe:.0f} NFE",
                f"{p.quality:.1f} ({p.per_second:.0f} images/s)",
            )
        )
card += [
    ("Inception FID", inception_line),
    (
        "pixel distance to nearest training image",
        f"samples mean {nn_dist.mean():.2f}, min {nn_dist.min():.2f} (10 samples); held-out "
        f"real images mean {real_dist.mean():.2f}, min {real_dist.min():.2f} (100 images)",
    ),
    (
        "published: DDPM / EDM / flow matching (OT path), CIFAR-10 Inception FID",
        "3.17 (1000 steps) / 1.97 (35 NFE) / 6.35 (dopri5, 142 NFE)",
    ),
]
results_card(card)

# %% [markdown]
# How to read it: the course FID lines are comparable with each other and with the floor,
# not with published Inception FIDs; the published lines are for scale, on networks and
# budgets far larger than a two-core laptop's (blurry colour blobs are what the `cpu`
# profile should produce).
#
# ## Summary
#
# * One network, three objectives: ε-prediction, EDM's preconditioned denoiser and flow
#   matching train the same U-Net with different targets and noise-level weightings; each
#   trained network becomes EDM's denoiser through a named conversion, so **every
#   sampler runs on every objective**.
# * A resumable run saves weights, optimiser and EMA atomically, and draws every random
#   number of step $k$ from a generator seeded by $(\text{seed}, k)$: a killed run resumes
#   to the weights of an uninterrupted one.
# * DDP under `torchrun`: split the global batch, deal each epoch's permutation out with
#   `DistributedSampler.set_epoch`, draw the step's randomness for the global batch, write
#   checkpoints on rank 0. Then $W$ processes take the one-process steps, and checkpoints
#   move between process counts.
# * Compare samplers at equal NFE against the floor of the metric; state the protocol of
#   every FID; look at nearest training images; read the budget ladder before scaling.
#
# ## Further reading
#
# * Ho et al. {cite}`ho2020ddpm` (App. B: the CIFAR-10 network and its budget); Karras et
#   al. {cite}`karras2022edm` (§5 and App. F: the training set-up behind FID 1.97);
#   Lipman et al. {cite}`lipman2023flow` (§6: flow matching on CIFAR-10).
# * Li et al. {cite}`li2020ddp` on how PyTorch's DDP overlaps the gradient all-reduce with
#   the backward pass; Goyal et al. {cite}`goyal2017largebatch` on scaling the batch and
#   learning rate with the number of GPUs.
# * Heusel et al. {cite}`heusel2017fid` (FID) and Parmar et al. {cite}`parmar2022cleanfid`
#   (why resizing and compression change it).
