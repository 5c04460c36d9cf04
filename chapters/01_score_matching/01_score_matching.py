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
# # 1. Score matching: learning $\nabla_x \log p$ from samples
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/01_score_matching/01_score_matching.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Define* the score and the Fisher divergence. *Derive* implicit score matching by integration by parts and denoising score matching from the noised density. *Implement* the denoising loss and Tweedie's denoiser. *Compare* explicit, implicit, sliced and denoising score matching against the exact score, by region and by noise level. *Denoise* MNIST digits with a learned score. |
# | **Prerequisites** | Chapter 0 (Gaussian mixtures, their noised laws and scores); gradients, Jacobians and the trace; integration by parts; PyTorch autograd. |
# | **Run time** | `smoke` ≈ 30 s · `cpu` ≈ 2–3 min · `gpu` ≈ 4 min (trains eight small 2D score models on the CPU and one MNIST U-Net) |

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
import time

import matplotlib.pyplot as plt
import torch

import course_lib
from course_lib import data, plotting, score_figures, toys, train
from course_lib import score_matching as sm
from course_lib.exercises import ch01
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.nets import UNet, count_parameters

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: we have the points, we want the arrows
#
# Chapter 0 argued that the **score** $\nabla_x \log p(x)$, which does not depend on the
# normalising constant, is the natural thing to learn. Here is the problem in
# one picture. On the left is what a learner is given: samples of the two-moons toy
# (more precisely of its Gaussian-mixture *twin*, so that we know the truth). On the
# right is what we want: the field of arrows that, at every point, says in which
# direction the log density grows. We can draw the right panel only because the twin is
# a Gaussian mixture with a closed-form score. A real data set never gives us that
# panel — and the obvious loss, "make the network's arrows match these arrows", needs
# exactly the thing we do not have.
#
# This chapter shows four ways around that, each a loss that can be computed from the
# left panel alone, and checks every learned field against the right panel.

# %%
gm = toys.twin("moons")  # the ground truth: a 48-component Gaussian mixture
n_data = cfg.pick(smoke=2_000, cpu=20_000, gpu=20_000)
x_data = gm.sample(n_data, generator)  # the training set
x_eval = gm.sample(cfg.pick(smoke=500, cpu=10_000, gpu=10_000), generator)  # held out

fig, axes = plotting.figure_row(2, size=4.2)
plotting.scatter(x_data[:3000], ax=axes[0], title="given: samples x ~ p", label="data")
plotting.density(gm.log_prob, ax=axes[1], title="wanted: the score ∇log p(x)")
plotting.vector_field(gm.score, ax=axes[1], title="wanted: the score ∇log p(x)", kind="truth")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The score
#
# For a density $p$ on $\mathbb R^D$ that is positive and differentiable, the **score**
# is the gradient of its log,
#
# $$ s(x) = \nabla_x \log p(x) = \frac{\nabla_x p(x)}{p(x)} \in \mathbb R^D . $$
#
# (Statisticians call $\nabla_\theta \log p_\theta(x)$, the gradient with respect to
# *parameters*, the score. Since Hyvärinen's paper {cite}`hyvarinen2005`, machine
# learning uses the word for the gradient with respect to the *data*; we always mean
# that one.) Three facts make it the right object to learn.
#
# 1. **It ignores the normalising constant.** If $p = e^{f}/Z$ then
#    $\nabla_x \log p = \nabla_x f$; $Z$ is a constant in $x$.
# 2. **It determines the density.** On a connected region, $\log p(x) - \log p(x')$ is the
#    line integral of $s$ from $x'$ to $x$, and normalisation fixes the constant. No
#    information is lost by learning $s$ instead of $p$. (In practice there is a catch:
#    between modes separated by empty space, a learned score says nothing reliable about
#    how much mass each mode holds. Chapter 2 runs into this.)
# 3. **It has mean zero under $p$:** $\mathbb E_p[s(x)] = \int p\,\nabla \log p\,dx =
#    \int \nabla p\, dx = 0$ when $p$ vanishes at infinity. We use the same
#    integration-by-parts idea below to derive a loss.
#
# For a Gaussian $\mathcal N(\mu, \sigma^2 I)$ the score is $-(x-\mu)/\sigma^2$: a linear
# field pointing at the mean, whose strength is the inverse variance. A narrow mode has a
# strong score. For a mixture it is the responsibility-weighted average of the component
# scores (chapter 0). In one dimension the picture is easy to read:

# %%
gm1 = GaussianMixture.isotropic([0.7, 0.3], [-1.5, 1.5], [0.5, 0.3])
xs = torch.linspace(-4, 4, 401)[:, None]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
curves = [
    (gm1.log_prob(xs).exp(), "density", "p(x)"),
    (gm1.log_prob(xs), "log density", "log p(x)"),
    (gm1.score(xs)[:, 0], "score", "d/dx log p(x)"),
]
for ax, (y, title, ylabel) in zip(axes, curves, strict=True):
    ax.plot(xs[:, 0], y, color=plotting.COLORS["truth"], label="exact")
    ax.axhline(0, color=plotting.COLORS["data"], lw=0.7)
    ax.set(title=title, xlabel="x", ylabel=ylabel)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: the score is zero at each mode *and* at the valley between them (the
# local minimum of $p$), positive to the left of a mode, negative to its right. It is
# steeper around the narrow right mode than around the wide left one, and it grows
# without bound in the tails. The narrow mode is also the weak one (weight 0.3), and its
# score is the *steeper* of the two: near a mode the slope is $-1/\tau_k^2$ for a
# component of standard deviation $\tau_k$, set by its width, not by its weight. The
# weights show only between the modes, through the responsibilities: a heavier mode
# pushes the zero in the valley towards the lighter one. Inside a mode the weight is
# invisible.
#
# Fact 3 on the moons twin, by Monte Carlo:

# %%
s_data = gm.score(x_data)  # the exact scores of the training points, computed once
print(f"mean score over the data:    {s_data.mean(0).tolist()}  (should be ≈ 0)")
print(f"typical size sqrt E‖s‖²:     {s_data.pow(2).sum(1).mean().sqrt():.2f}")

# %% [markdown]
# The mean is zero up to Monte Carlo error while individual scores have a size of about
# thirteen: the thin moons (component widths around $0.08$) make the score very steep
# across them. Keep that number in mind; it sets the scale of every loss below.
#
# ## Explicit score matching: the Fisher divergence
#
# Let $s_\theta: \mathbb R^D \to \mathbb R^D$ be a network. The natural measure of how
# wrong it is is the mean squared distance to the true score under the data law, the
# **Fisher divergence**,
#
# $$ J_\text{ESM}(\theta) = \tfrac12\, \mathbb E_{x\sim p}
#    \big\| s_\theta(x) - \nabla_x \log p(x) \big\|^2 . $$
#
# It is zero exactly when $s_\theta = \nabla \log p$ wherever $p > 0$, and it is an
# ordinary regression loss. Its one flaw is fatal in practice: it needs
# $\nabla_x \log p(x)$ at the data points, which is what we are trying to learn. This
# *explicit* score matching is possible here only because the twin gives us the target;
# we train it anyway, as the reference that the honest losses below should reach with the
# same network and budget.

# %%
course_lib.show(sm.explicit_score_matching)

# %% [markdown]
# The model is a small MLP, `ToyScoreNet`, wrapped by `Unconditional` so that it is a
# plain function $s_\theta(x)$ (later in the chapter the same net also receives a noise
# level). Every loss of the chapter trains the same architecture from the same initial
# weights, for the same number of steps, through the course's one training loop. Since
# the target scores never change, we compute them once (`s_data` above) and draw them in
# the same batches as the points. The 2D models stay on the CPU even when a GPU is
# present: for nets and batches this small, launching GPU kernels costs more than the
# arithmetic. (On a busy machine, or with several notebooks open, torch's default of
# one thread per core can make a step much slower; `COURSE_THREADS=1` in the
# environment fixes that course-wide.)

# %%
course_lib.show(score_figures.ToyScoreNet)

# %%
hidden, depth = cfg.pick(smoke=(32, 2), cpu=(128, 3), gpu=(128, 3))
clean_steps = cfg.pick(smoke=25, cpu=1_200, gpu=1_500)
batch_size, toy_lr = 256, 5e-3
clean_batches = train.random_batches(x_data, s_data, batch_size=batch_size, generator=generator)


def new_clean_model():
    torch.manual_seed(cfg.seed)  # the same initial weights for every loss
    return score_figures.Unconditional(score_figures.ToyScoreNet(2, hidden, depth))


clean = {}  # loss name -> TrainResult
clean["explicit"] = train.train(
    new_clean_model(),
    lambda model, b: sm.explicit_score_matching(model, b[0], b[1]),
    clean_batches,
    steps=clean_steps,
    lr=toy_lr,
    desc="explicit SM",
)
scale_0 = score_figures.score_scale(gm)  # sqrt E‖∇log p‖²: the unit of the error maps
n_grid = cfg.pick(smoke=30, cpu=80, gpu=80)  # points per side of the error maps
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
score_figures.score_panel(
    clean["explicit"].model,
    gm.score,
    scale_0,
    ax=axes[0],
    log_prob=gm.log_prob,
    title="explicit SM: learned vs exact",
    n_grid=n_grid,
)
plotting.loss_curve(clean["explicit"].losses, ax=axes[1], title="explicit SM loss")
fig.tight_layout()
plt.show()

# %% [markdown]
# How to read the left panel (every learned field in this chapter is drawn this way): the
# background is the error $\|s_\theta(x) - \nabla\log p(x)\|$ in units of a typical score,
# on a log scale, so white is right and dark red is as wrong as a whole score; grey lines
# are contours of the density; the wide orange arrows are the exact directions and the
# thin blue ones the learned directions, so orange shows through only where they
# disagree.
#
# What to notice: on the moons, the learned field is right. Away from them — in the gap
# between the moons, and towards the corners — it is wrong, often pointing the wrong way.
# The loss went down smoothly to a small value; nothing in the loss curve warns us.
#
# ## Where the score is learned badly
#
# Write the loss as an integral:
# $J_\text{ESM} = \tfrac12 \int p(x)\,\|e_\theta(x)\|^2\,dx$ with the error
# $e_\theta = s_\theta - \nabla \log p$. The error at $x$ is *weighted by* $p(x)$. Where the
# density is a thousand times smaller, an error costs a thousand times less; where it is
# $10^{-10}$ of its peak, it costs nothing. And the loss is estimated from samples:
# with $n$ training points, a region of probability well below $1/n$ contains none of
# them, so the network there is pure extrapolation. Every loss in this chapter is an
# expectation under the data law, so every one of them inherits this.
#
# The figure plots, for grid points over the square $[-3, 3]^2$, the median error against
# the log density of the point (points below $\log p = -15$ are lumped into the leftmost
# bin).

# %%
esm_by_density = score_figures.error_by_density(
    clean["explicit"].model, gm, scale=scale_0, n=n_grid // 2
)
curves = {"explicit SM": esm_by_density}
score_figures.plot_error_vs_density(curves, title="explicit SM: error by region")
plt.show()

# %% [markdown]
# What to notice: the error falls as the density rises. On the moons it is a
# fraction of a typical score; where $\log p$ drops below about $-6$ — a short way off
# the moons, well inside the square — it is larger than the score itself. This matters
# for everything that follows: chapter 2 samples by following the learned score from
# *random starting points*, which lie exactly where the score is worst. The cure, adding noise, appears
# at the end of this chapter.
#
# ## Implicit score matching (Hyvärinen, 2005)
#
# Hyvärinen's observation {cite}`hyvarinen2005` is that the unknown score enters the
# Fisher divergence only through one term, and that term can be rewritten without it.
# Expand the square:
#
# $$ J_\text{ESM}(\theta) = \mathbb E_p\big[\tfrac12\|s_\theta\|^2\big]
#    - \mathbb E_p\big[s_\theta^\top \nabla\log p\big]
#    + \underbrace{\tfrac12\, \mathbb E_p\|\nabla\log p\|^2}_{C,\ \text{free of}\ \theta} . $$
#
# The first term needs only samples. The last does not depend on $\theta$, so it does not
# matter for training. The middle one is the problem. Use $p\,\nabla \log p = \nabla p$:
#
# $$ \mathbb E_p\big[s_\theta^\top \nabla\log p\big]
#    = \int s_\theta(x)^\top \nabla p(x)\, dx
#    = \sum_{i=1}^D \int s_{\theta,i}(x)\, \frac{\partial p(x)}{\partial x_i}\, dx . $$
#
# Now integrate by parts in the variable $x_i$, one coordinate at a time. In one
# dimension, $\int_{-\infty}^{\infty} f g'\,dx = [fg]_{-\infty}^{\infty} - \int f' g\,dx$;
# with $f = s_{\theta,i}$ and $g = p$ the boundary term vanishes if
# $p(x)\, s_\theta(x) \to 0$ as $\|x\| \to \infty$ (the density decays faster than the
# model grows, true for any reasonable model and data). So
#
# $$ \int s_{\theta,i}\, \frac{\partial p}{\partial x_i}\, dx
#    = -\int \frac{\partial s_{\theta,i}}{\partial x_i}\, p\, dx
#    = -\mathbb E_p\Big[\frac{\partial s_{\theta,i}}{\partial x_i}\Big],
#    \qquad
#    \mathbb E_p\big[s_\theta^\top \nabla\log p\big] = -\mathbb E_p\big[\operatorname{tr}\nabla_x s_\theta(x)\big]. $$
#
# Putting the pieces together gives Hyvärinen's Theorem 1:
#
# $$ J_\text{ESM}(\theta) = \underbrace{\mathbb E_{x\sim p}\Big[\operatorname{tr}\big(\nabla_x s_\theta(x)\big)
#    + \tfrac12 \|s_\theta(x)\|^2\Big]}_{J_\text{ISM}(\theta)} + C . $$
#
# $J_\text{ISM}$ — **implicit score matching** — uses only samples of $p$ and the model.
# Its minimiser is the true score, but its *value* is not a distance: it is the Fisher
# divergence minus $C$, usually negative, and comparing it with an explicit loss is a
# common mistake. The two terms have an intuitive reading. $\tfrac12\|s\|^2$ wants the
# field to vanish at the data (data points should be stationary points of $\log p$);
# $\operatorname{tr}\nabla s$ — the divergence of the field — wants it to be as negative
# as possible there (data points should be *sinks*, maxima rather than minima of
# $\log p$).
#
# The trace is the sum of the diagonal of the Jacobian $\nabla_x s_\theta$, which
# autograd gives one row at a time: one backward pass per dimension.

# %%
course_lib.show(sm.implicit_score_matching)
course_lib.show(sm.divergence)

# %% [markdown]
# Two practical notes, both classic mistakes. First, the loss differentiates the network
# *with respect to its input* and is then differentiated again with respect to the
# parameters, so the first backward pass must keep its graph (`create_graph=True`);
# without it the trace term silently contributes no gradient. Second, the exact trace sums
# gradients over the batch, which is valid only if sample $b$'s output depends on sample
# $b$'s input alone — a network with batch normalisation breaks it.
#
# Before training, we check the theorem itself on the explicit-SM model: the two sides
# of $J_\text{ESM} = J_\text{ISM} + C$ should agree up to Monte Carlo error, where $C$ is
# known here because the twin's score is.

# %%
model = clean["explicit"].model
x_check = torch.cat([x_data, x_eval])  # every sample we have: the terms are noisy
with torch.no_grad():  # the divergence still uses autograd inside
    s_true = gm.score(x_check)
    esm_terms = 0.5 * (model(x_check) - s_true).pow(2).sum(1)
    div = sm.divergence(model, x_check)
    ism_terms = div + 0.5 * model(x_check).pow(2).sum(1)
    const_terms = 0.5 * s_true.pow(2).sum(1)
gap = esm_terms - ism_terms - const_terms  # zero in expectation
print(f"J_ESM            = {esm_terms.mean():8.3f}")
print(f"J_ISM + C        = {(ism_terms + const_terms).mean():8.3f}")
print(f"J_ISM alone      = {ism_terms.mean():8.3f}   (C = {const_terms.mean():.1f})")
print(f"difference       = {gap.mean():8.3f} ± {gap.std() / len(gap) ** 0.5:.3f} (standard error)")

# %% [markdown]
# Now the honest training run: the same network, the same steps, no access to the true
# score.

# %%
clean["implicit"] = train.train(
    new_clean_model(),
    lambda model, b: sm.implicit_score_matching(model, b[0]),
    clean_batches,
    steps=clean_steps,
    lr=toy_lr,
    desc="implicit SM",
)

# %% [markdown]
# ### The price of the trace, and Hutchinson's estimator
#
# In two dimensions the trace costs two backward passes. For a $28\times 28$ image it
# costs 784, for a $256\times256$ colour image 196,608: implicit score matching with the
# exact trace does not scale. The fix is an old trick of Hutchinson's: for a random
# vector $v$ with $\mathbb E[v] = 0$ and $\mathbb E[v v^\top] = I$,
#
# $$ \mathbb E_v\big[v^\top J v\big] = \mathbb E_v\big[\operatorname{tr}(J\, v v^\top)\big]
#    = \operatorname{tr}\big(J\, \mathbb E[v v^\top]\big) = \operatorname{tr} J , $$
#
# and $v^\top J v = v^\top \nabla_x (v^\top s_\theta)$ is one vector–Jacobian product: a
# single backward pass whatever $D$. The price is variance. The timing below compares the
# two on a small random network in growing dimension.

# %%
dims = cfg.pick(smoke=(2, 16), cpu=(2, 16, 128, 512), gpu=(2, 16, 128, 512))
print(f"{'D':>5} | exact trace (ms) | Hutchinson (ms) | ratio")
for dim in dims:
    net = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, dim))
    x = torch.randn(64, dim, generator=generator)
    timings = []
    for estimator in ("exact", "hutchinson"):
        runs = []
        for _ in range(3):  # the best of three: single timings are noisy
            t0 = time.perf_counter()
            sm.divergence(net, x, estimator=estimator, generator=generator, create_graph=True)
            runs.append(1000 * (time.perf_counter() - t0))
        timings.append(min(runs))
    print(f"{dim:>5} | {timings[0]:16.1f} | {timings[1]:15.1f} | {timings[0] / timings[1]:5.1f}x")

# %% [markdown]
# What to notice: the exact trace's cost grows linearly in $D$, Hutchinson's stays flat.
#
# How large is the variance? Two common choices of $v$ are standard Gaussian vectors and
# *Rademacher* vectors, whose entries are $\pm1$ with equal probability. Both satisfy
# $\mathbb E[vv^\top] = I$.
#
# ### Exercise 1.1: predict before you run
#
# Take the Gaussian $p = \mathcal N\big(0, \operatorname{diag}(1, \tfrac14)\big)$. Its
# score is $s(x) = -(x_1, 4x_2)$, so its Jacobian is the constant matrix
# $J = \operatorname{diag}(-1, -4)$ and $\operatorname{tr} J = -5$. With Gaussian probes
# the variance of $v^\top J v$ is $2\sum_{ij} J_{ij}^2 = 34$. **Before running the next
# cells**, predict the variance with Rademacher probes.

# %% tags=["exercise"]
my_variance = None  # YOUR PREDICTION, a number

# %%
ch01.check_predict_rademacher_variance(my_variance)

# %% tags=["solution", "hide-input"]
my_variance = 0.0  # v_i² = 1, so vᵀJv = Σ J_ii v_i² = tr J for every probe
ch01.check_predict_rademacher_variance(my_variance)

# %%
n_probes = cfg.pick(smoke=2_000, cpu=20_000, gpu=20_000)
gauss = GaussianMixture(
    torch.ones(1), torch.zeros(1, 2), torch.diag(torch.tensor([1.0, 0.25]))[None]
)
x_probe = gauss.sample(n_probes, generator)  # the Jacobian is the same at every point
x_moon = x_eval[:1].repeat(n_probes, 1)  # one point of the moons, n_probes probes
print(f"{'':>22} | {'exact':>7} | {'Rademacher':>19} | {'Gaussian':>19}")
for name, fn, x in (
    ("Gaussian diag(1, 1/4)", gauss.score, x_probe),
    ("moons twin, one point", gm.score, x_moon),
):
    exact = sm.divergence(fn, x[:1]).item()
    cells = []
    for probe in ("rademacher", "gaussian"):
        est = sm.divergence(fn, x, "hutchinson", probe=probe, generator=generator)
        cells.append(f"{est.mean():7.2f} (var {est.var():6.1f})")
    print(f"{name:>22} | {exact:7.2f} | {cells[0]:>19} | {cells[1]:>19}")

# %% [markdown]
# The zero variance is no accident of sampling: every single Rademacher probe returns the
# exact trace of a diagonal Jacobian, as five probes at five points show (this output is
# checked by the course's tests).

# %% expected_output="Rademacher estimates of tr J: [-5.0, -5.0, -5.0, -5.0, -5.0]\n"
x_five = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-1.0, -1.0], [0.0, 0.0], [1.5, 2.5]])
five = sm.divergence(gauss.score, x_five, "hutchinson", generator=torch.Generator().manual_seed(0))
print(f"Rademacher estimates of tr J: {[round(v, 4) for v in five.tolist()]}")

# %% [markdown]
# What to notice: both estimators are unbiased — their means match the exact trace — but
# the Rademacher probe is never worse. Its variance comes only from the off-diagonal
# entries of the Jacobian ($2\sum_{i\ne j}J_{ij}^2$ for a symmetric $J$, and the Jacobian
# of a true score, a Hessian, *is* symmetric), while a Gaussian probe adds
# $2\sum_i J_{ii}^2$ on top. That is why `divergence` defaults to Rademacher probes. A
# learned score is not exactly symmetric, but close.
#
# ### Exercise 1.2: implicit score matching with a Hutchinson trace
#
# Put the two results together. Write `ism_hutchinson(score_fn, x, v)`: the implicit
# score matching loss of a batch `x` `(B, D)` with the trace of each sample's Jacobian
# replaced by one Hutchinson estimate along the given probe `v` `(B, D)`, averaged over
# the batch. It must be a loss you can train with: its gradient with respect to the
# model's parameters has to include the trace term. (Hint: $v^\top J v = v^\top \nabla_x(v^\top s_\theta)$;
# the sum over the batch of $v_b^\top s_\theta(x_b)$ gives every sample's product in one
# `torch.autograd.grad` call, because sample $b$'s output depends on sample $b$'s input
# alone.) The check compares the value *and* the parameter gradients with the
# reference on a small network with Gaussian probes.


# %% tags=["exercise"]
def ism_hutchinson(score_fn, x, v):
    # YOUR CODE HERE: the ISM loss with one Hutchinson probe per sample, a scalar
    raise NotImplementedError


# %%
ch01.check_ism_hutchinson(ism_hutchinson)


# %% tags=["solution", "hide-input"]
def ism_hutchinson(score_fn, x, v):
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    # create_graph: the trace term must stay differentiable in the parameters
    (vjp,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)
    return ((vjp * v).sum(1) + 0.5 * s.pow(2).sum(1)).mean()


ch01.check_ism_hutchinson(ism_hutchinson)

# %% [markdown]
# The course's `implicit_score_matching` does the same with Rademacher probes when asked
# for `"hutchinson"`. Training with the Hutchinson trace changes one argument:

# %%
clean["implicit-hutchinson"] = train.train(
    new_clean_model(),
    lambda model, b: sm.implicit_score_matching(model, b[0], "hutchinson", generator=generator),
    clean_batches,
    steps=clean_steps,
    lr=toy_lr,
    desc="implicit SM, Hutchinson",
)

# %% [markdown]
# ## Sliced score matching
#
# Song, Garg, Shi and Ermon {cite}`song2019sliced` reached a similar loss from a
# different starting point. Instead of comparing the full vectors $s_\theta(x)$ and
# $\nabla\log p(x)$, compare their projections on random directions $v$ — a "sliced"
# Fisher divergence —
#
# $$ \tfrac12\, \mathbb E_{v}\, \mathbb E_{p}\big[\big(v^\top s_\theta(x) - v^\top \nabla\log p(x)\big)^2\big]. $$
#
# Each slice is a one-dimensional problem, and the same integration by parts, now along
# the direction $v$, removes the unknown score:
#
# $$ J_\text{SSM}(\theta) = \mathbb E_{v}\,\mathbb E_{p}\Big[v^\top \nabla_x s_\theta(x)\, v
#    + \tfrac12 \big(v^\top s_\theta(x)\big)^2\Big] + C . $$
#
# The first term is Hutchinson's estimate of the trace, one backward pass. For the second,
# $\mathbb E_v[(v^\top s)^2] = s^\top \mathbb E[vv^\top] s = \|s\|^2$, so when the
# expectation over $v$ can be taken in closed form one should take it: replacing
# $\tfrac12 (v^\top s)^2$ by $\tfrac12\|s\|^2$ gives the **variance-reduced** loss SSM-VR,
# which is exactly implicit score matching with a Hutchinson trace (with Gaussian probes,
# the paper's choice).

# %%
course_lib.show(sm.sliced_score_matching)

# %% [markdown]
# How much noise does each estimator put into training? What slows stochastic training
# down is the noise in the *gradient*, so we measure that directly: each loss is drawn
# many times on the *same* batch and the same (explicit-SM) model, only the random
# directions change, and we compute the variance of its gradient with respect to the
# network's weights, $\mathbb E\|g - \bar g\|^2$, in units of the squared norm of the
# exact-trace gradient. The exact implicit loss has no randomness at all.

# %%
course_lib.show(score_figures.gradient_noise, docstring=False)

# %%
repeats = cfg.pick(smoke=5, cpu=30, gpu=30)
batch = x_data[:batch_size]
model = clean["explicit"].model
params = list(model.parameters())
estimates = {
    "implicit SM, exact trace": lambda: sm.implicit_score_matching(model, batch),
    "implicit SM, Hutchinson (Rademacher)": lambda: sm.implicit_score_matching(
        model, batch, "hutchinson", generator=generator
    ),
    "sliced SM-VR (Gaussian directions)": lambda: sm.sliced_score_matching(
        model, batch, variance_reduced=True, generator=generator
    ),
    "sliced SM (Gaussian directions)": lambda: sm.sliced_score_matching(
        model, batch, generator=generator
    ),
}
noise = {name: score_figures.gradient_noise(fn, params, repeats) for name, fn in estimates.items()}
g_exact = noise["implicit SM, exact trace"].grad_mean.pow(2).sum()
print(f"{'loss on one batch':>37} | mean loss | std of loss | gradient variance")
for name, n in noise.items():
    print(f"{name:>37} | {n.loss_mean:9.2f} | {n.loss_std:11.2f} | {n.grad_var / g_exact:17.3f}")

# %% [markdown]
# What to notice: all four estimate the same loss (up to their noise), but their
# gradients are very differently noisy. The plain sliced loss pays twice, for a random
# trace and for a random squared norm $(v^\top s)^2$; the variance-reduced form removes
# the second source and with it most of the gradient variance (more than a factor of
# ten here). Rademacher probes remove much of what is left, for the reason of
# Exercise 1.1. The spread of the loss *value* is a poor guide — it is dominated by the
# trace term, the same in SSM and SSM-VR — which is why we measure the gradient. We
# expect the ranking to show up in the learned fields. Let us train both sliced variants.

# %%
for name, vr in (("sliced", False), ("sliced-vr", True)):
    clean[name] = train.train(
        new_clean_model(),
        lambda model, b, vr=vr: sm.sliced_score_matching(
            model, b[0], variance_reduced=vr, generator=generator
        ),
        clean_batches,
        steps=clean_steps,
        lr=toy_lr,
        desc=score_figures.LOSSES[name],
    )

# %% [markdown]
# ### Four losses, one truth
#
# All five models side by side, each against the exact score, and their error by region.

# %%
fig, axes = plt.subplots(2, 3, figsize=(15, 9.2))
for ax, (name, result) in zip(axes.flat, clean.items(), strict=False):
    rel = score_figures.relative_error(result.model, gm.score, x_eval)
    score_figures.score_panel(
        result.model,
        gm.score,
        scale_0,
        ax=ax,
        log_prob=gm.log_prob,
        title=f"{score_figures.LOSSES[name]}\nrelative error {rel:.3f}",
        n_grid=n_grid,
    )
curves = {
    score_figures.LOSSES[name]: score_figures.error_by_density(
        result.model, gm, scale=scale_0, n=n_grid // 2
    )
    for name, result in clean.items()
}
score_figures.plot_error_vs_density(curves, ax=axes.flat[5], title="error by region, all five")
fig.tight_layout()
plt.show()
print(f"{'loss':>36} | relative error on data | ms per step")
clean_errors = {}
for name, result in clean.items():
    clean_errors[name] = score_figures.relative_error(result.model, gm.score, x_eval)
    ms = 1000 * result.seconds / len(result.losses)
    print(f"{score_figures.LOSSES[name]:>36} | {clean_errors[name]:22.3f} | {ms:6.1f}")

# %% [markdown]
# The relative error is $\mathbb E_p\|s_\theta - \nabla\log p\|^2 / \mathbb E_p\|\nabla \log p\|^2$
# on held-out samples: 0 for the exact score, 1 for the zero field.
#
# What to notice:
#
# * **Every loss learns the same field.** Implicit and sliced score matching never saw
#   the true score, yet they land close to the explicit reference on the moons. The
#   integration by parts really does remove the unknown.
# * **Gradient noise costs accuracy.** The explicit loss (a plain regression) is the
#   most accurate for a given budget. Among the sample-only losses, the plain sliced
#   loss, by far the noisiest, ends up the worst (by how much varies from seed to seed);
#   the exact trace, the Hutchinson trace and SSM-VR end up close to each other, and
#   their order changes from run to run: once the gradient noise is small, other factors
#   take over. Longer training narrows all the gaps.
# * **All of them fail in the same place.** The curves on the right all climb above the
#   size of a typical score at low density: this is a property of the data weighting,
#   not of a loss.
# * **Cost.** Even in 2D the losses that differentiate the network with respect to its
#   input cost more per step than the regression: the exact trace two to three times
#   as much, the one-probe estimators less. In 784 dimensions the exact trace would be
#   hundreds of times dearer (the timing table above).
#
# ## Denoising score matching (Vincent, 2011)
#
# The losses so far share two weaknesses: they differentiate the network with respect to
# its input (costly, and awkward for large networks), and they learn nothing where there
# is no data. A simple change of target removes both.
#
# Pick a noise level $\sigma > 0$ and corrupt each data point,
# $\tilde x = x + \sigma\varepsilon$ with $\varepsilon \sim \mathcal N(0, I)$. The noisy
# points follow the **noised density**, the data density blurred by a Gaussian (in
# chapter 0's notation $x_t = a x_0 + s\varepsilon$, this is $a = 1$, $s = \sigma$: the
# variance-*exploding* convention of NCSN, where the signal is not scaled down):
#
# $$ p_\sigma(\tilde x) = \int p(x)\, q_\sigma(\tilde x \mid x)\, dx,
#    \qquad q_\sigma(\tilde x\mid x) = \mathcal N(\tilde x;\, x,\, \sigma^2 I). $$
#
# $p_\sigma$ is positive *everywhere* and its score is smooth, but it is not $p$: we
# trade a little accuracy for coverage. Now suppose we wanted to fit $\nabla \log p_\sigma$
# by explicit score matching. Vincent {cite}`vincent2011` showed that this is the same
# as a loss we *can* compute. Here is the derivation, step by step.
#
# **Step 1: expand the square** of the explicit loss on $p_\sigma$, exactly as before:
#
# $$ J_\text{ESM}^\sigma(\theta)
#    = \tfrac12\, \mathbb E_{p_\sigma}\|s_\theta(\tilde x)\|^2
#    - \mathbb E_{p_\sigma}\big[s_\theta(\tilde x)^\top \nabla \log p_\sigma(\tilde x)\big]
#    + C_1, \qquad C_1 = \tfrac12\, \mathbb E_{p_\sigma}\|\nabla \log p_\sigma\|^2 . $$
#
# **Step 2: write the cross term with $\nabla p_\sigma$,** using
# $p_\sigma \nabla\log p_\sigma = \nabla p_\sigma$:
#
# $$ \mathbb E_{p_\sigma}\big[s_\theta^\top \nabla \log p_\sigma\big]
#    = \int s_\theta(\tilde x)^\top \nabla_{\tilde x} p_\sigma(\tilde x)\, d\tilde x . $$
#
# **Step 3: differentiate under the integral** that defines $p_\sigma$; the data law does
# not depend on $\tilde x$, the kernel does:
#
# $$ \nabla_{\tilde x} p_\sigma(\tilde x) = \int p(x)\, \nabla_{\tilde x} q_\sigma(\tilde x\mid x)\, dx
#    = \int p(x)\, q_\sigma(\tilde x\mid x)\, \nabla_{\tilde x} \log q_\sigma(\tilde x\mid x)\, dx . $$
#
# **Step 4: recognise a joint expectation.** Substituting and swapping the integrals,
#
# $$ \mathbb E_{p_\sigma}\big[s_\theta^\top \nabla \log p_\sigma\big]
#    = \iint p(x)\, q_\sigma(\tilde x\mid x)\; s_\theta(\tilde x)^\top \nabla_{\tilde x}\log q_\sigma(\tilde x\mid x)\; dx\, d\tilde x
#    = \mathbb E_{x\sim p,\ \tilde x \sim q_\sigma(\cdot\mid x)}\big[s_\theta(\tilde x)^\top \nabla_{\tilde x}\log q_\sigma(\tilde x\mid x)\big]. $$
#
# The unknown score of $p_\sigma$ has been replaced by the score of the *kernel*, which
# we know.
#
# **Step 5: complete the square again.** Since $\mathbb E_{p_\sigma}\|s_\theta\|^2$ is
# also an expectation over the pair $(x, \tilde x)$,
#
# $$ J_\text{ESM}^\sigma(\theta) = \underbrace{\tfrac12\, \mathbb E_{x, \tilde x}\big\|s_\theta(\tilde x) - \nabla_{\tilde x}\log q_\sigma(\tilde x\mid x)\big\|^2}_{J_\text{DSM}(\theta)}
#    + C_1 - C_2, \qquad C_2 = \tfrac12\, \mathbb E\|\nabla_{\tilde x} \log q_\sigma\|^2 . $$
#
# **Step 6: evaluate the kernel's score.** For the Gaussian kernel,
# $\nabla_{\tilde x}\log q_\sigma(\tilde x\mid x) = -(\tilde x - x)/\sigma^2 = -\varepsilon/\sigma$,
# so $C_2 = \tfrac12 \mathbb E\|\varepsilon\|^2/\sigma^2 = D/(2\sigma^2)$ and
#
# $$ \boxed{\; J_\text{DSM}(\theta) = \tfrac12\, \mathbb E_{x\sim p,\ \varepsilon\sim\mathcal N(0,I)}
#    \Big\| s_\theta(x + \sigma\varepsilon) + \frac{\varepsilon}{\sigma} \Big\|^2 \;} $$
#
# **Denoising score matching** is a plain regression: show the network a noisy point
# and ask for the noise that was added, scaled by $-1/\sigma$. No Jacobian, no trace, one
# forward pass. Its minimiser is the score of the *noised* density $p_\sigma$.
#
# Three things are worth saying about this result. First, the loss is a regression onto a
# *random* target, so its minimiser is the conditional mean of the target given the
# input: $s^*(\tilde x) = \mathbb E[-\varepsilon/\sigma \mid \tilde x]$. We have just
# shown that this equals $\nabla\log p_\sigma(\tilde x)$; the section on Tweedie's
# formula below draws the consequence. Second, because the target is random, the loss of
# the *best* model is not zero: from the last display,
# $\min_\theta J_\text{DSM} = C_2 - C_1 = \tfrac12\big(D/\sigma^2 - \mathbb E_{p_\sigma}\|\nabla\log p_\sigma\|^2\big)$,
# the part of the noise that the noisy point does not reveal. A DSM loss curve flattens
# at this floor, not at zero — a frequent source of confusion. Third, the floor explodes
# as $\sigma \to 0$, and how fast depends on the data. If the data have a smooth density,
# $\mathbb E_{p_\sigma}\|\nabla\log p_\sigma\|^2$ tends to the finite $\mathbb E_p\|\nabla\log p\|^2$
# and the floor grows like $D/(2\sigma^2)$. If they lie on a $d$-dimensional manifold
# (digits, roughly), the noisy point reveals the $D - d$ components of the noise normal
# to it, $\mathbb E\|\nabla\log p_\sigma\|^2 \approx (D - d)/\sigma^2$, and the floor grows
# like $d/(2\sigma^2)$ instead: what stays unpredictable is the noise *along* the data.
# Either way the regression target explodes and the gradient noise with it, so DSM at a
# tiny noise level is as hard as it sounds.
#
# ### Exercise 1.3: the floor of the DSM loss
#
# Take data $p = \mathcal N(0, I)$ in $D = 2$ and $\sigma = 1$. Compute the smallest value
# of $J_\text{DSM}$ with the formula above. (Hint: what is $p_\sigma$?)

# %% tags=["exercise"]
my_floor = None  # YOUR ANSWER, a number

# %%
ch01.check_dsm_floor(my_floor)

# %% tags=["solution", "hide-input"]
my_floor = 0.5 * (2 / 1**2 - 1.0)  # p_σ = N(0, 2I): E‖∇log p_σ‖² = E‖x̃‖²/4 = 1
ch01.check_dsm_floor(my_floor)

# %% [markdown]
# ### Exercise 1.4: write the DSM loss
#
# Write `dsm_loss(score_fn, x, sigma, eps)`, the boxed formula for a batch `x` of shape
# `(B, D)`, a given noise draw `eps` of the same shape, and a noise level `sigma` (a
# number). The score is called as `score_fn(x_tilde, sigma)`. Return the mean over the
# batch.


# %% tags=["exercise"]
def dsm_loss(score_fn, x, sigma, eps):
    # YOUR CODE HERE
    raise NotImplementedError


# %%
ch01.check_dsm_loss(dsm_loss)


# %% tags=["solution", "hide-input"]
def dsm_loss(score_fn, x, sigma, eps):
    x_tilde = x + sigma * eps
    return 0.5 * (score_fn(x_tilde, sigma) + eps / sigma).pow(2).sum(1).mean()


ch01.check_dsm_loss(dsm_loss)

# %% [markdown]
# The course's version draws the noise itself and accepts one noise level per sample:

# %%
course_lib.show(sm.denoising_score_matching)

# %% [markdown]
# One design choice in the model. The true score of $p_\sigma$ has size of order
# $1/\sigma$ (at small $\sigma$, $\nabla\log p_\sigma(\tilde x) \approx -\varepsilon/\sigma$
# near the data). Asking a network to output numbers of size 20 at $\sigma = 0.05$ and 1
# at $\sigma = 1$ makes training needlessly hard, so we let the network predict something
# of order one and divide by $\sigma$ — technique 3 of improved NCSN
# {cite}`song2020improved`. The network also receives the noise level, as
# $c(\sigma) = \tfrac14\log\sigma$ (EDM's conditioning input {cite}`karras2022edm`), so that
# one network can serve many levels later.

# %%
course_lib.show(sm.NoiseConditionalScore)

# %% [markdown]
# We train at $\sigma = 0.2$, about twice the width of a moon, and compare the learned
# field both with its own target $\nabla\log p_\sigma$ and with the clean score
# $\nabla\log p$. The dashed line on the loss curve is the floor computed from the twin by
# `dsm_minimum`.

# %%
course_lib.show(sm.dsm_minimum)

# %%
sigma_dsm = 0.2
noise_steps = cfg.pick(smoke=25, cpu=1_500, gpu=2_000)


def new_noise_model():
    torch.manual_seed(cfg.seed)
    return sm.NoiseConditionalScore(score_figures.ToyScoreNet(2, hidden, depth))


data_batches = train.random_batches(x_data, batch_size=batch_size, generator=generator)
dsm = train.train(
    new_noise_model(),
    lambda model, x: sm.denoising_score_matching(model, x, sigma_dsm, generator),
    data_batches,
    steps=noise_steps,
    lr=toy_lr,
    desc=f"DSM, σ = {sigma_dsm}",
)
n_floor = cfg.pick(smoke=4_000, cpu=100_000, gpu=200_000)
dsm_floor = sm.dsm_minimum(gm, sigma_dsm, n=n_floor, generator=generator)
with torch.no_grad():  # the trained model's loss on fresh data, many noise draws
    x_big = gm.sample(n_floor, generator)
    dsm_final = float(sm.denoising_score_matching(dsm.model, x_big, sigma_dsm, generator))
dsm_score = score_figures.at_sigma(dsm.model, sigma_dsm)
true_sigma = score_figures.exact_score(gm, sigma_dsm)
scale_dsm = score_figures.score_scale(gm, sigma_dsm)
x_eval_sigma = gm.noised(1.0, sigma_dsm).sample(len(x_eval), generator)
dsm_error = score_figures.relative_error(dsm_score, true_sigma, x_eval_sigma)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
score_figures.score_panel(
    dsm_score,
    true_sigma,
    scale_dsm,
    ax=axes[0],
    log_prob=gm.noised(1.0, sigma_dsm).log_prob,
    title=f"DSM vs its target ∇log p_σ, σ = {sigma_dsm}",
    n_grid=n_grid,
)
score_figures.score_panel(
    dsm_score,
    gm.score,
    scale_0,
    ax=axes[1],
    log_prob=gm.log_prob,
    title="DSM vs the clean ∇log p",
    n_grid=n_grid,
)
plotting.loss_curve(dsm.losses, ax=axes[2], title="DSM loss")
axes[2].axhline(dsm_floor, color=plotting.COLORS["truth"], ls="--", label="minimum (exact)")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()
print(f"relative error vs ∇log p_σ on samples of p_σ: {dsm_error:.3f}")
print(f"DSM loss of the trained model: {dsm_final:.3f}   minimum: {dsm_floor:.3f}")

# %% [markdown]
# What to notice. Against its own target (left) the DSM field is right over a much
# larger region than any of the clean-data fields: the noise put training points into the
# gap between the moons and around them. Against the clean score (middle) it is wrong *on*
# the moons, where $p_\sigma$ is a blurred version of $p$ and its score is weaker and
# smoother; that is the accuracy we traded. And the loss curve sits on the exact floor,
# far above zero: the model is close to the best possible, which is why the loss cannot go
# lower.
#
# ## Many noise levels at once (NCSN)
#
# One noise level forces a choice between an accurate score (small $\sigma$) and one
# that is right everywhere (large $\sigma$). Song and Ermon {cite}`song2019ncsn` refused
# to choose: train one *noise-conditional* network $s_\theta(\tilde x, \sigma)$ on a
# whole ladder of levels $\sigma_1 > \dots > \sigma_L$, and let the sampler walk down it
# (chapter 2). The loss is a weighted sum of DSM losses,
#
# $$ \mathcal L(\theta) = \frac1L \sum_{i=1}^L \lambda(\sigma_i)\, J_\text{DSM}(\theta; \sigma_i),
#    \qquad \lambda(\sigma) = \sigma^2 . $$
#
# Why $\sigma^2$? The target $-\varepsilon/\sigma$ has squared norm $D/\sigma^2$, so the
# unweighted losses at small $\sigma$ would be hundreds of times larger than at large
# $\sigma$ and would take over the gradient. Multiplying by $\sigma^2$ gives
# $\tfrac12\mathbb E\|\sigma s_\theta(\tilde x, \sigma) + \varepsilon\|^2$: every level now
# asks for a prediction of the unit-variance noise $\varepsilon$, and every term is of
# order one. (This is already the "$\varepsilon$-prediction" of DDPM, chapter 3.) In
# practice one level is drawn at random for each sample of the batch, which is an
# unbiased estimate of the average. The levels are spaced geometrically, so that each
# noised density overlaps the next one; the smallest should be below the finest detail we
# care about. How large the largest must be depends on the use. A *sampler* that starts
# from noise needs it to reach across the whole data set: about the largest distance
# between two training points (improved NCSN's technique 1, chapter 2), some 4.4 for the
# moons. This chapter only studies what each level learns, so it stops at
# $\sigma = 1.58$, about the data's standard deviation; chapter 2's sampler goes higher.

# %%
course_lib.show(sm.multi_noise_dsm)

# %%
sigmas = torch.logspace(-1.3, 0.2, cfg.pick(smoke=4, cpu=8, gpu=8))  # 0.05 ... 1.58
ncsn_steps = cfg.pick(smoke=30, cpu=3_000, gpu=4_000)
ncsn = train.train(
    new_noise_model(),
    lambda model, x: sm.multi_noise_dsm(model, x, sigmas, generator),
    data_batches,
    steps=ncsn_steps,
    lr=toy_lr,
    desc="multi-noise DSM",
)
ncsn_floor = sm.sigma_weighted_dsm_minimum(gm, sigmas, n=n_floor // 5, generator=generator)
with torch.no_grad():
    ncsn_final = float(sm.multi_noise_dsm(ncsn.model, x_big, sigmas, generator))
print(f"noise levels: {[round(s, 3) for s in sigmas.tolist()]}")
print(f"multi-noise loss of the trained model: {ncsn_final:.4f}   minimum: {ncsn_floor:.4f}")

# %% [markdown]
# ## What the noise level buys: accuracy against coverage
#
# With one network for every level we can now measure the trade precisely. For each
# $\sigma_i$ we compute three numbers:
#
# * the **bias of the target**: how far the exact $\nabla\log p_\sigma$ is from the clean
#   score on the data, $\mathbb E_p\|\nabla\log p_\sigma - \nabla\log p\|^2 / \mathbb E_p\|\nabla\log p\|^2$
#   — no learning involved, it only grows with $\sigma$;
# * the **error on the data**: the learned field against its target on samples of
#   $p_\sigma$ (the relative error used throughout);
# * the **coverage**: the fraction of the square $[-3, 3]^2$ where the learned field is
#   within a quarter of a typical score of its target.

# %%
x_clean = x_eval[: cfg.pick(smoke=500, cpu=4_000, gpu=4_000)]
s_clean = gm.score(x_clean)
rows = []
for sigma in sigmas.tolist():
    target = score_figures.exact_score(gm, sigma)
    learned = score_figures.at_sigma(ncsn.model, sigma)
    bias = float((target(x_clean) - s_clean).pow(2).sum(1).mean() / s_clean.pow(2).sum(1).mean())
    x_sigma = gm.noised(1.0, sigma).sample(len(x_clean), generator)
    error = score_figures.relative_error(learned, target, x_sigma)
    _, grid_error = score_figures.error_by_density(learned, gm, sigma, n=n_grid // 2)
    rows.append((sigma, bias, error, float((grid_error < 0.25).float().mean())))

fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
for ax, i in zip(axes[:3], (0, len(sigmas) // 2, len(sigmas) - 1), strict=True):
    sigma = sigmas[i].item()
    score_figures.score_panel(
        score_figures.at_sigma(ncsn.model, sigma),
        score_figures.exact_score(gm, sigma),
        score_figures.score_scale(gm, sigma),
        ax=ax,
        log_prob=gm.noised(1.0, sigma).log_prob,
        title=f"multi-noise model, σ = {sigma:.2f}",
        n_grid=n_grid,
    )
ss = [r[0] for r in rows]
axes[3].plot(
    ss,
    [r[1] for r in rows],
    "o-",
    color=plotting.COLORS["truth"],
    label="bias of ∇log p_σ on the data (exact)",
)
axes[3].plot(
    ss,
    [r[2] for r in rows],
    "o-",
    color=plotting.COLORS["model"],
    label="learned: error on samples of p_σ",
)
axes[3].plot(
    ss,
    [r[3] for r in rows],
    "s--",
    color=plotting.COLORS["init"],
    label="learned: fraction of the square covered",
)
axes[3].set(
    xscale="log",
    xlabel="noise level σ",
    ylabel="relative error / fraction",
    title="accuracy against coverage",
)
axes[3].legend(fontsize=7)
fig.tight_layout()
plt.show()
print(f"{'σ':>6} | bias of target | learned error | coverage")
for sigma, bias, error, cover in rows:
    print(f"{sigma:6.3f} | {bias:14.3f} | {error:13.3f} | {cover:8.2f}")

# %% [markdown]
# What to notice, as $\sigma$ grows. The orange curve rises: a larger $\sigma$ means a target further from the score we
# actually want (at $\sigma \approx 0.2$, already most of the clean score's detail is
# gone). The green one rises too: a larger $\sigma$ means a field that is learned right
# over more of the plane. And the blue error on the data falls: smooth targets are easy to
# learn. No single level is good at both accuracy and coverage. A sampler that starts with large $\sigma$ (right
# everywhere, so it can find the data from anywhere) and ends with small $\sigma$
# (accurate near the data) gets the best of both: that is annealed Langevin dynamics,
# chapter 2, and in continuous form every diffusion model of chapters 3–5.
#
# ## Tweedie's formula: a score is a denoiser
#
# We saw that the DSM minimiser is a conditional mean,
# $\nabla\log p_\sigma(\tilde x) = \mathbb E[-\varepsilon/\sigma \mid \tilde x]$. Since
# $\varepsilon = (\tilde x - x)/\sigma$, this says
# $\nabla \log p_\sigma(\tilde x) = \big(\mathbb E[x\mid\tilde x] - \tilde x\big)/\sigma^2$.
# Here is a direct derivation. Differentiate
# $p_\sigma(\tilde x) = \int p(x)\,\mathcal N(\tilde x; x, \sigma^2 I)\,dx$ under the
# integral, using $\nabla_{\tilde x}\mathcal N(\tilde x; x, \sigma^2 I) = \mathcal N(\tilde x; x,\sigma^2 I)\,(x - \tilde x)/\sigma^2$:
#
# $$ \nabla p_\sigma(\tilde x) = \int p(x)\,\mathcal N(\tilde x; x,\sigma^2 I)\,\frac{x - \tilde x}{\sigma^2}\,dx . $$
#
# Divide by $p_\sigma(\tilde x)$. The ratio $p(x)\mathcal N(\tilde x; x, \sigma^2 I)/p_\sigma(\tilde x)$
# is the posterior $p(x\mid\tilde x)$ (Bayes' rule), so
#
# $$ \nabla\log p_\sigma(\tilde x) = \frac{\mathbb E[x\mid \tilde x] - \tilde x}{\sigma^2}
#    \quad\Longleftrightarrow\quad
#    \boxed{\;\mathbb E[x \mid \tilde x] = \tilde x + \sigma^2\, \nabla \log p_\sigma(\tilde x)\;} $$
#
# This is **Tweedie's formula** (Robbins 1956; Efron {cite}`efron2011tweedie` tells its
# history): the best denoiser in the mean-square sense is one step of size $\sigma^2$
# along the score of the noisy density. A learned score is therefore a denoiser, and a
# denoiser is a learned score; the diffusion chapters use whichever parameterisation is
# convenient. Note the $\sigma^2$: a step of $\sigma$, a common slip, gives the right
# direction and the wrong distance.
#
# ### Exercise 1.5: Tweedie's denoiser
#
# Write `tweedie(x_tilde, sigma, score_fn)` returning $\mathbb E[x\mid\tilde x]$, where
# `score_fn(x_tilde)` returns $\nabla\log p_\sigma(\tilde x)$. The check compares your
# answer on a Gaussian mixture with the posterior mean computed independently, by
# Gaussian conditioning in each component (`GaussianMixture.optimal_denoiser`).


# %% tags=["exercise"]
def tweedie(x_tilde, sigma, score_fn):
    # YOUR CODE HERE
    raise NotImplementedError


# %%
ch01.check_tweedie(tweedie)


# %% tags=["solution", "hide-input"]
def tweedie(x_tilde, sigma, score_fn):
    return x_tilde + sigma**2 * score_fn(x_tilde)


ch01.check_tweedie(tweedie)

# %%
course_lib.show(sm.tweedie_denoiser)

# %% [markdown]
# On the toy, we denoise noisy moons with the multi-noise model and compare with the exact
# posterior mean from the twin.

# %%
sigma_tw = sigmas[len(sigmas) // 2 + 1].item()
x0_tw = gm.sample(cfg.pick(smoke=300, cpu=1_500, gpu=1_500), generator)
x_tilde_tw = x0_tw + sigma_tw * torch.randn(x0_tw.shape, generator=generator)
with torch.no_grad():
    x_hat = sm.tweedie_denoiser(ncsn.model, x_tilde_tw, sigma_tw)
x_hat_exact = gm.optimal_denoiser(x_tilde_tw, 1.0, sigma_tw)
fig, axes = plotting.figure_row(2, size=4.4)
plotting.scatter(
    x_tilde_tw, ax=axes[0], title=f"noisy x̃, σ = {sigma_tw:.2f}", kind="model", label="x̃"
)
plotting.scatter(
    x_hat_exact, ax=axes[1], title="E[x | x̃]: learned vs exact", kind="truth", label="exact (twin)"
)
axes[1].scatter(
    *x_hat.T, s=2, c=plotting.COLORS["model"], alpha=0.6, label="Tweedie, learned score"
)
axes[1].legend(loc="upper right", markerscale=4, fontsize=8)
fig.tight_layout()
plt.show()
mse = {
    "noisy x̃": (x_tilde_tw - x0_tw).pow(2).sum(1).mean().item(),
    "Tweedie, learned score": (x_hat - x0_tw).pow(2).sum(1).mean().item(),
    "exact posterior mean": (x_hat_exact - x0_tw).pow(2).sum(1).mean().item(),
}
for name, value in mse.items():
    print(f"E‖x̂ − x‖² with {name:<24} {value:.4f}")

# %% [markdown]
# What to notice: the denoised points are pulled back towards the moons but not onto
# them: the posterior mean averages over every clean point that could have produced
# $\tilde x$, so it lands *inside* the curve where the moon bends. The learned denoiser
# is nearly as good as the exact one, which is the best possible in mean square.
#
# ## Try it: pick a loss and a noise level
#
# The widget learns $\nabla\log p_\sigma$ of a toy with the loss you pick and draws it
# against the exact field. Every loss gets the same small network and the same budget;
# the sample-only losses (implicit, sliced) are given noisy samples $\tilde x\sim p_\sigma$,
# so all six have the same target and can be compared. A new setting trains for a second
# or two (the result is cached); the "multi-noise DSM" entry reuses the model trained
# above on the moons and reads it at the chosen $\sigma$. The widget calls one plain, tested function,
# `score_figures.compare_panel`.

# %%
course_lib.show(score_figures.score_loss)

# %%
import ipywidgets as widgets

widget_steps = cfg.pick(smoke=20, cpu=300, gpu=300)
pretrained = {"multi-noise DSM (trained above, moons only)": ("moons", ncsn.model)}


def redraw(name="moons", loss="denoising", sigma=0.2):
    score_figures.compare_panel(
        name, loss, sigma, steps=widget_steps, pretrained=pretrained, n_grid=n_grid
    )
    plt.show()


widgets.interact(
    redraw,
    name=widgets.Dropdown(options=toys.NAMES, value="moons", description="data set"),
    loss=widgets.Dropdown(
        options=[(label, key) for key, label in score_figures.LOSSES.items()]
        + [(key, key) for key in pretrained],
        value="denoising",
        description="loss",
    ),
    sigma=widgets.SelectionSlider(
        options=[0.05, 0.1, 0.2, 0.5, 1.0], value=0.2, description="noise σ"
    ),
)

# %% [markdown]
# Things to try: at $\sigma = 1$ every loss learns a good field in a second, because the
# target is smooth and the data cover the square. At $\sigma = 0.05$ the target is sharp
# and the same budget leaves large errors off the data, for every loss; compare with the
# multi-noise model, which had more steps. On `checkerboard` or `swiss_roll`, look at the
# right panel: the error falls with the density whatever the loss.
#
# ## Denoising MNIST digits
#
# Nothing in denoising score matching is specific to two dimensions: it needs no
# Jacobian, so its cost per step is one forward and one backward pass whatever $D$. We
# train a noise-conditional score on $28\times 28$ digits ($D = 784$) with the multi-noise
# loss, using the course's U-Net as the network inside `NoiseConditionalScore`, and then
# denoise held-out digits with Tweedie's formula at each training level. Pixels are scaled
# to $[-1, 1]$, so $\sigma = 0.8$ is very heavy noise.
#
# On a CPU the U-Net is the slow part of the chapter, and it is the part that gains from
# more cores: on an idle two-core laptop two threads train it almost twice as fast as
# one (torch's default uses them all; `COURSE_THREADS` overrides it).
#
# As a reference we use the best *linear* denoiser: fit one Gaussian $\mathcal N(\mu, C)$
# to the training images; for Gaussian data the posterior mean is linear (the Wiener
# filter), and the course computes it exactly as a one-component `GaussianMixture`'s
# `optimal_denoiser`. A learned score must beat it to have learned something beyond
# pixel means and covariances.

# %%
images = data.load("mnist", split=cfg.train_split).to_float()
perm = torch.randperm(len(images), generator=generator)
n_show = cfg.pick(smoke=32, cpu=128, gpu=512)
n_train = min(cfg.pick(smoke=512, cpu=20_000, gpu=60_000), len(images) - n_show)
x_img_eval = images[perm[:n_show]]  # held out: never seen in training
x_img_train = images[perm[n_show : n_show + n_train]].to(cfg.device)
sigmas_img = torch.tensor([0.1, 0.2, 0.4, 0.8])
unet = UNet(
    1,
    base_channels=cfg.pick(smoke=8, cpu=16, gpu=32),
    channel_mults=cfg.pick(smoke=(1, 2), cpu=(1, 2), gpu=(1, 2, 2)),
    attention_levels=cfg.pick(smoke=(), cpu=(), gpu=(1,)),
)
img_model = sm.NoiseConditionalScore(unet).to(cfg.device)
print(f"U-Net with {count_parameters(img_model):,} parameters; {n_train} training images")
img_steps = cfg.pick(smoke=3, cpu=300, gpu=3_000)
img_run = train.train(
    img_model,
    lambda model, x: sm.multi_noise_dsm(model, x, sigmas_img),
    train.random_batches(x_img_train, batch_size=cfg.pick(smoke=8, cpu=32, gpu=128)),
    steps=img_steps,
    lr=cfg.pick(smoke=1e-3, cpu=3e-3, gpu=1e-3),
    ema_decay=cfg.pick(smoke=0.9, cpu=0.98, gpu=0.999),
    amp=cfg.use_amp,
    desc="MNIST multi-noise DSM",
)
print(f"{img_steps} steps in {img_run.seconds:.0f} s on {cfg.device.type}")

# %%
denoised = score_figures.denoise_images(
    img_run.best, x_img_eval.to(cfg.device), sigmas_img, generator=generator
)
flat = x_img_train.reshape(len(x_img_train), -1).double()  # the pixel mean and covariance
eye = torch.eye(flat.shape[1], dtype=torch.float64)
gauss_fit = GaussianMixture(
    torch.ones(1), flat.mean(0).cpu()[None], (torch.cov(flat.T).cpu() + 1e-4 * eye)[None]
)
mse_linear = []
for i, sigma in enumerate(sigmas_img.tolist()):
    noisy = denoised.noisy[i].reshape(n_show, -1).cpu()
    best_linear = gauss_fit.optimal_denoiser(noisy, 1.0, sigma)
    mse_linear.append((best_linear - x_img_eval.reshape(n_show, -1)).pow(2).mean().item())
score_figures.plot_denoised(
    denoised, x_img_eval, n=10, title="held-out digits: noisy and Tweedie-denoised"
)
plt.show()
print(f"{'σ':>4} | MSE noisy | best linear (Wiener) | learned score (Tweedie) | PSNR gain")
for i, sigma in enumerate(sigmas_img.tolist()):
    gain = denoised.psnr(denoised.mse_denoised[i]) - denoised.psnr(denoised.mse_noisy[i])
    print(
        f"{sigma:4.1f} | {denoised.mse_noisy[i]:9.4f} | {mse_linear[i]:20.4f} | "
        f"{denoised.mse_denoised[i]:23.4f} | {gain:+6.1f} dB"
    )

# %% [markdown]
# What to notice. At small $\sigma$ the denoised digits are almost indistinguishable from
# the clean ones, and even at $\sigma = 0.8$, where the digit is barely visible in the
# noise, the mean squared error falls by more than an order of magnitude. But there the
# denoised digits are *blurry*: the posterior mean averages over all the digits that
# could have produced this noise, exactly as the 2D denoiser averaged over the moon. A
# blurry posterior mean is the correct answer to the mean-square question; producing a
# *sharp* sample instead needs many small denoising steps, which is what the rest of the
# course builds. The learned score also beats the best linear denoiser at every level,
# by a factor of two to four in mean squared error after a minute or so on a CPU:
# it has learned what digits look like, not just their pixel means and covariances.
#
# ## Results card

# %%
elapsed = time.perf_counter() - chapter_start
i_mid = 2  # σ = 0.4 for MNIST
tw_ratio = mse["Tweedie, learned score"] / mse["exact posterior mean"]
lines = [
    ("run", cfg.describe()),
    ("chapter wall time", f"{elapsed:.1f} s"),
    ("toy", f"moons twin, {n_data} samples, {clean_steps} steps per clean model"),
]
short = {
    "explicit": "explicit SM",
    "implicit": "implicit SM, exact trace",
    "implicit-hutchinson": "implicit SM, Hutchinson",
    "sliced": "sliced SM",
    "sliced-vr": "sliced SM-VR",
}
for name, err in clean_errors.items():
    lines.append((f"quality: {short[name]} rel. score error", f"{err:.3f}  (exact score: 0)"))
lines += [
    (f"quality: DSM σ={sigma_dsm} rel. error vs ∇log p_σ", f"{dsm_error:.3f}  (exact: 0)"),
    (f"quality: DSM σ={sigma_dsm} loss / minimum", f"{dsm_final / dsm_floor:.3f}x  (exact: 1x)"),
    ("quality: multi-noise DSM loss / minimum", f"{ncsn_final / ncsn_floor:.3f}x  (exact: 1x)"),
    (
        "quality: multi-noise mean rel. error",
        f"{sum(r[2] for r in rows) / len(rows):.3f}  (exact: 0)",
    ),
    (f"quality: toy Tweedie MSE / optimal, σ={sigma_tw:.2f}", f"{tw_ratio:.3f}x  (exact: 1x)"),
    (
        "quality: MNIST Tweedie MSE / noisy, σ=0.4",
        f"{denoised.mse_denoised[i_mid] / denoised.mse_noisy[i_mid]:.3f}",
    ),
    (
        "quality: MNIST Tweedie MSE / Wiener, σ=0.4",
        f"{denoised.mse_denoised[i_mid] / mse_linear[i_mid]:.3f}x  (< 1: beats linear)",
    ),
    (
        "MNIST budget",
        f"{img_steps} steps, {count_parameters(img_model):,} parameters, {img_run.seconds:.0f} s",
    ),
]
from course_lib.show import results_card

results_card(lines)

# %% [markdown]
# The toy figures sit beside the exact model's: a relative error of 0 and a loss ratio of
# exactly 1. The loss ratios are Monte Carlo estimates on fresh samples, so a value
# slightly below 1 is noise. There is no standard published number for MNIST denoising
# with a score model; the Wiener filter computed from the same training images is the
# baseline, and the budget line states what this run could spend.
#
# ## Summary
#
# * The **score** $\nabla_x\log p$ ignores the normalising constant; the **Fisher
#   divergence** $\tfrac12\mathbb E_p\|s_\theta - \nabla\log p\|^2$ measures a model of it,
#   but needs the true score (**explicit** score matching).
# * **Implicit** score matching removes the true score by integration by parts:
#   $\mathbb E_p[\operatorname{tr}\nabla s_\theta + \tfrac12\|s_\theta\|^2]$, equal to the
#   Fisher divergence up to a constant. The trace costs $D$ backward passes exactly or one
#   with **Hutchinson**'s estimator; **sliced** score matching is the same idea along random
#   directions, best in its variance-reduced form.
# * **Denoising** score matching, $\tfrac12\mathbb E\|s_\theta(x+\sigma\varepsilon) + \varepsilon/\sigma\|^2$,
#   is a plain regression whose minimiser is $\nabla\log p_\sigma$; its loss floor is not zero.
# * Every one of these losses is weighted by the data density, so **low-density regions
#   are learned badly**; noise trades accuracy for coverage, and training on **many noise
#   levels** with $\lambda(\sigma)=\sigma^2$ keeps both.
# * **Tweedie**: $\mathbb E[x\mid\tilde x] = \tilde x + \sigma^2\nabla\log p_\sigma(\tilde x)$
#   — a score model is a denoiser, on 2D toys and on MNIST alike.
#
# ## Further reading
#
# * Hyvärinen {cite}`hyvarinen2005`: the original score matching paper, with the
#   integration-by-parts theorem and its conditions.
# * Vincent {cite}`vincent2011`: the connection between score matching and denoising
#   autoencoders, the derivation followed here.
# * Song, Garg, Shi and Ermon {cite}`song2019sliced`: sliced score matching and its
#   variance-reduced form; Hutchinson's estimator {cite}`hutchinson1989` is older.
# * Song and Ermon {cite}`song2019ncsn` (NCSN) and {cite}`song2020improved`: many noise
#   levels, the $\sigma^2$ weighting, and how to choose the levels.
# * Efron {cite}`efron2011tweedie`: Tweedie's formula and its history in empirical Bayes.
# * Yang Song's blog post {cite}`song2021blog`: the clearest overview of score-based
#   generative modelling, and the bridge to chapter 2.
