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
# # 0. Introduction: densities, samples and the ground truth
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/00_introduction/00_introduction.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Distinguish* a model that gives densities from one that gives samples. *Compute* the law of a noised Gaussian mixture in closed form. *Read* a score field and say where it points. *Use* the course's profiles, Colab and the book. |
# | **Prerequisites** | Python and PyTorch basics; the multivariate normal distribution; Bayes' rule. |
# | **Run time** | `smoke` ≈ 10 s · `cpu` ≈ 1 min · `gpu` ≈ 1 min (this chapter trains nothing) |

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
from IPython.display import HTML, display

import course_lib
from course_lib import metrics, plotting, toys
from course_lib.exercises import ch00
from course_lib.gaussian_mixture import GaussianMixture

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: a cloud of points is all we get
#
# Below are two thousand points of a data set called *two moons*. Look at them for a
# moment and ask what it would mean to "learn" this data. We are never given the rule
# that produced the points, only the points. A **generative model** is a machine that,
# after looking at such a sample, produces *new* points that look as if they came from the
# same rule — and, for some models, also tells us how likely any given point is.

# %%
fig, axes = plotting.figure_row(2)
moons = toys.sample("moons", cfg.pick(smoke=500, cpu=2000, gpu=2000), generator)
plotting.scatter(
    moons, ax=axes[0], title="what we are given: samples", kind="model", label="data points"
)
plotting.density(
    toys.twin("moons").log_prob, ax=axes[1], title="what we would like to know: a density"
)
fig.tight_layout()
plt.show()

# %% [markdown]
# The left panel is what we have. The right panel is what we would like to have: a
# density $p(x)$ whose mass sits where the points are. (It is the density of a Gaussian
# mixture fitted to the moons; we will see below how it was made and why it matters so
# much for this course.)
#
# ## What a generative model is
#
# Let $x \in \mathbb{R}^D$ be a data point — a 2D point here, a $28\times 28$ image
# ($D = 784$) later. We assume the data are independent draws from an unknown
# distribution with density $p_\text{data}(x)$. A generative model is a distribution
# $p_\theta(x)$, with parameters $\theta$ fitted to the data, that we can use in one or
# both of two ways:
#
# 1. **As a density:** evaluate $p_\theta(x)$ (usually $\log p_\theta(x)$) at any point.
#    This lets us score data, compare models by likelihood, and detect outliers.
# 2. **As a sampler:** draw new $x \sim p_\theta$. This is what makes pictures.
#
# These are different abilities. A table of the density on a grid does not immediately
# give samples in 784 dimensions, and a program that produces samples need not be able to
# say how likely a point is. Much of the history of generative modelling is a negotiation
# between the two.
#
# The obstacle for densities is the *normalising constant*. It is easy to write a
# flexible function $f_\theta(x)$ that is large near the data and small elsewhere, and to
# declare $p_\theta(x) = e^{f_\theta(x)} / Z_\theta$. But
# $Z_\theta = \int e^{f_\theta(x)}\,dx$ is an integral over all of $\mathbb{R}^D$, which
# no one can compute for images. Maximum likelihood needs $\log Z_\theta$ and its
# gradient, so it is stuck.
#
# The way out, which this whole course is built on, is the **score**:
#
# $$ s_\theta(x) = \nabla_x \log p_\theta(x) = \nabla_x f_\theta(x) - \underbrace{\nabla_x \log Z_\theta}_{=\,0}. $$
#
# The gradient with respect to $x$ does not see the constant. The score is a vector field:
# at every point it says in which direction the density grows fastest, relative to how
# large it already is. Chapter 1 shows how to learn it from samples; chapter 2 shows how
# to turn a score into samples (Langevin dynamics); chapters 3–5 add noise to make both
# steps work in high dimension (diffusion models); chapters 6–7 replace the score by a
# velocity field (flow matching and continuous normalising flows).
#
# ## The toy data
#
# Every method in the course first meets two-dimensional data, where we can *see*
# densities, fields and samples, and where a laptop trains a model in seconds. The course
# has eight such toys. Each is scaled so that its coordinates have standard deviations
# near one (from 0.67 to 1.16; the moons are the flattest): the scale that the diffusion
# chapters assume for their data.

# %%
course_lib.show(toys.sample)

# %%
n_toy = cfg.pick(smoke=400, cpu=3000, gpu=3000)
fig, axes = plt.subplots(2, 4, figsize=(13, 6.8))
for ax, name in zip(axes.flat, toys.NAMES, strict=True):
    plotting.scatter(toys.sample(name, n_toy, generator), ax=ax, title=name, label="samples")
fig.suptitle("The eight 2D toys of the course")
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: the toys are chosen to be hard in different ways. `gaussians8` has well
# separated modes (a sampler must find all eight and give each the right weight).
# `checkerboard` has sharp edges. `swiss_roll` and `two_spirals` are thin curved
# manifolds where the density is almost singular. `rings` and `circles` have holes.
#
# ## The Gaussian mixture: densities and samples at once
#
# One family of distributions gives us everything in closed form: the **Gaussian
# mixture**
#
# $$ p(x) = \sum_{k=1}^K w_k\, \mathcal N(x;\, \mu_k, C_k), \qquad w_k > 0,\ \sum_k w_k = 1. $$
#
# *Sampling* is two steps: pick a component $k$ with probability $w_k$, then draw
# $x = \mu_k + L_k z$ with $z \sim \mathcal N(0, I)$ and $C_k = L_k L_k^\top$ (a Cholesky
# factor). The *log density* is a log-sum-exp over components, which is stable to compute.
# Here is the course's implementation; it is the same code the tests check.

# %%
course_lib.show(GaussianMixture.sample_with_labels)

# %%
course_lib.show(GaussianMixture.log_prob)

# %% [markdown]
# `log_prob` delegates to a more general routine, `noised_log_prob`, that we meet in a
# moment. Let us build a small mixture by hand and look at it both ways.

# %%
mixture = GaussianMixture(
    weights=torch.tensor([0.5, 0.3, 0.2]),
    means=torch.tensor([[-1.2, -0.6], [1.2, -0.4], [0.0, 1.3]]),
    covariances=torch.tensor(
        [
            [[0.20, 0.08], [0.08, 0.15]],
            [[0.10, -0.05], [-0.05, 0.30]],
            [[0.25, 0.0], [0.0, 0.05]],
        ]
    ),
)
fig, axes = plotting.figure_row(2)
plotting.density(mixture.log_prob, ax=axes[0], title="density p(x)")
plotting.scatter(
    mixture.sample(cfg.pick(smoke=500, cpu=3000, gpu=3000), generator),
    ax=axes[1],
    title="samples x ~ p",
    kind="truth",
    label="exact samples",
)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The score of a mixture
#
# Differentiate $\log p(x)$. For one Gaussian,
# $\nabla_x \log \mathcal N(x; \mu, C) = -C^{-1}(x - \mu)$: a linear field pointing back
# to the mean, stronger along directions of small variance. For a mixture, the chain rule
# through the log-sum-exp gives a weighted average of the component scores,
#
# $$ \nabla_x \log p(x) = \sum_k r_k(x)\, C_k^{-1}(\mu_k - x), \qquad
#    r_k(x) = \frac{w_k\, \mathcal N(x; \mu_k, C_k)}{p(x)}, $$
#
# where the weights $r_k(x) = p(k \mid x)$ are the *responsibilities*: the posterior
# probability that a point at $x$ came from component $k$. Near a component, its own
# score dominates; in between, the field turns smoothly from one mean to the other.

# %%
course_lib.show(GaussianMixture.noised_score)

# %%
fig, axes = plotting.figure_row(2)
plotting.density(mixture.log_prob, ax=axes[0], title="density")
plotting.vector_field(mixture.score, ax=axes[1], title="score field (direction)", kind="truth")
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice. The arrows (normalised to show direction; colour is the log of the
# length) point towards the nearest high-density region. Far away, the field is almost
# radial and very strong: the score of a Gaussian grows linearly with the distance. On
# the ridge between two components the arrows split. *Inside* a mode the score hardly
# depends on how much mass the mode holds: there $r_k(x) \approx 1$, and the field is that
# of the component alone, whatever $w_k$. The weights enter only where the
# responsibilities are mixed, on the ridges between modes, where they decide which way
# the arrows turn. A field that carries the weights only in the regions a sampler rarely
# visits will come back to haunt plain Langevin sampling in chapter 2.
#
# ### Exercise 0.1: the score of a mixture
#
# Derive the formula above for isotropic components: differentiate
# $\log p(x) = \log \sum_k w_k\, \mathcal N(x; \mu_k, \tau_k^2 I)$ with the chain rule,
# and write `mixture_score(x, weights, means, stds)` for points `x` `(B, D)`, weights
# `(K,)`, means `(K, D)` and standard deviations $\tau_k$ `(K,)`. (Compute the
# responsibilities from log densities with a softmax: the densities themselves
# underflow far from the modes.)


# %% tags=["exercise"]
def mixture_score(x, weights, means, stds):
    # YOUR CODE HERE: return the score of the mixture at every point, shape (B, D)
    raise NotImplementedError


# %%
ch00.check_mixture_score(mixture_score)


# %% tags=["solution", "hide-input"]
def mixture_score(x, weights, means, stds):
    diff = means[None] - x[:, None]  # (B, K, D): mu_k - x
    var = stds**2
    log_joint = torch.log(weights) - 0.5 * diff.pow(2).sum(-1) / var - x.shape[1] * torch.log(stds)
    r = torch.softmax(log_joint, dim=1)  # responsibilities r_k(x), (B, K)
    return (r[..., None] * diff / var[None, :, None]).sum(1)


ch00.check_mixture_score(mixture_score)

# %% [markdown]
# The course's `GaussianMixture.score` is the same formula with full covariances.
#
# ## Noising a mixture in closed form
#
# Diffusion models corrupt data with Gaussian noise. In this course's diffusion notation,
# a noised point is
#
# $$ x_t = a\, x_0 + s\, \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I)
#    \text{ independent of } x_0, $$
#
# where $x_0$ is a data point and $a$ (a signal scale) and $s$ (a noise scale) depend on
# the time $t$ of the process. Chapter 3 calls them $\sqrt{\bar\alpha_t}$ and
# $\sqrt{1-\bar\alpha_t}$; chapters 1–2 set $a = 1$, $s = \sigma$. (Careful when you
# reach chapter 5: EDM's $s(t)$ is a *signal* scale, $x = s(t)\,(x_0 + \sigma(t)\varepsilon)$,
# so there $a = s(t)$ and this chapter's $s$ is $s(t)\,\sigma(t)$. The notation page of
# the book lists every letter.)
#
# Now the key fact. Condition on the component: if $x_0 \mid k \sim \mathcal N(\mu_k, C_k)$,
# then $a x_0 + s\varepsilon$ is a linear map of two independent Gaussians, hence Gaussian,
# with mean $a\mu_k$ and covariance $a^2 C_k + s^2 I$. The component is not changed by the
# noise, so its probability stays $w_k$. Therefore
#
# $$ p_t(x_t) = \sum_k w_k\, \mathcal N\!\left(x_t;\; a\mu_k,\; a^2 C_k + s^2 I\right). $$
#
# **A noised Gaussian mixture is again a Gaussian mixture.** Everything we can compute
# for a mixture — density, samples, score — we can therefore compute at *every* noise
# level, exactly.
#
# ### Exercise 0.2: the noised components
#
# Write `noised_parameters(means, covariances, a, s)` that returns the means `(K, D)` and
# covariances `(K, D, D)` of the components of $a x_0 + s \varepsilon$.


# %% tags=["exercise"]
def noised_parameters(means, covariances, a, s):
    # YOUR CODE HERE: return (new_means, new_covariances)
    raise NotImplementedError


# %%
ch00.check_noised_parameters(noised_parameters)


# %% tags=["solution", "hide-input"]
def noised_parameters(means, covariances, a, s):
    dim = means.shape[1]
    return a * means, a**2 * covariances + s**2 * torch.eye(dim)


ch00.check_noised_parameters(noised_parameters)

# %% [markdown]
# The course's version is `GaussianMixture.noised`; the tests compare it with sampling.

# %%
course_lib.show(GaussianMixture.noised)

# %% expected_output="noised means:\n[[-0.96, -0.48], [0.96, -0.32], [0.0, 1.04]]\nnoised covariance of component 0:\n[[0.488, 0.0512], [0.0512, 0.456]]\n"
# a deterministic check that the notebook and the library agree (compared by the tests)
noised = mixture.noised(0.8, 0.6)
print("noised means:")
print([[round(v, 4) for v in row] for row in noised.means.tolist()])
print("noised covariance of component 0:")
print([[round(v, 4) for v in row] for row in noised.covariances[0].tolist()])

# %% [markdown]
# ### Exercise 0.3: predict before you run
#
# Take a toy whose coordinates have standard deviation 1 and add standard normal noise,
# $x_0 + \varepsilon$ (so $a = s = 1$). **Before running the next cells**, predict the
# standard deviation of each coordinate of the result, and write it below.

# %% tags=["exercise"]
my_prediction = None  # YOUR PREDICTION, a number

# %%
ch00.check_predict_std(my_prediction)

# %% tags=["solution", "hide-input"]
my_prediction = 2**0.5  # variances add: 1 + 1 = 2
ch00.check_predict_std(my_prediction)

# %%
x0 = toys.sample("pinwheel", cfg.pick(smoke=2000, cpu=20_000, gpu=20_000), generator)
xt = x0 + torch.randn(x0.shape, generator=generator)
print(f"std of x0: {x0.std(0).tolist()}\nstd of x0 + eps: {xt.std(0).tolist()}")

# %% [markdown]
# ### Watching the noise act
#
# The variance-preserving choice $a = \sqrt{1 - s^2}$ keeps the total variance of
# unit-variance data at one while it blurs the structure away: at $s \to 1$ every toy
# becomes the same standard normal. The animation shows the exact noised density's
# samples for the 8-Gaussians toy as $s$ grows. This is the *forward process* of chapter 3
# in one picture.

# %%
levels = torch.linspace(0.0, 0.99, cfg.pick(smoke=8, cpu=40, gpu=40))
gm8 = toys.twin("gaussians8")
base = torch.randn(cfg.pick(smoke=300, cpu=1500, gpu=1500), 2, generator=generator)
x0_anim = gm8.sample(base.shape[0], generator)
frames = torch.stack([(1 - s**2) ** 0.5 * x0_anim + s * base for s in levels])
display(HTML(plotting.animate(frames, data=x0_anim, times=levels.tolist(), title="s")))

# %% [markdown]
# ## Try it: data set and noise level
#
# Pick a toy and a noise level. The left panel shows samples of $x_t = a x_0 + s\varepsilon$
# (with $a = \sqrt{1 - s^2}$) over the exact density of the toy's Gaussian-mixture twin
# noised to the same level; the right panel shows that density's exact score. The widget
# calls one plain, tested function, `plotting.noised_panel`.

# %%
import ipywidgets as widgets


def redraw(name: str = "moons", s: float = 0.3) -> None:
    plotting.noised_panel(name, s, n=cfg.pick(smoke=300, cpu=2000, gpu=2000))
    plt.show()


widgets.interact(
    redraw,
    name=widgets.Dropdown(options=toys.NAMES, value="moons", description="data set"),
    s=widgets.FloatSlider(value=0.3, min=0.0, max=0.95, step=0.05, description="noise s"),
)

# %% [markdown]
# What to notice: at small $s$ the score field is sharp and complicated, with strong
# arrows pulling onto thin structures; as $s$ grows it becomes smooth and, at the end,
# simply $-x$, the score of $\mathcal N(0, I)$. Learning a smooth field is easy, learning
# a sharp one is hard: the diffusion chapters exploit this by learning all noise levels
# at once.
#
# ## The optimal denoiser
#
# Given a noisy $x_t$, what is the best guess of the clean $x_0$? In the mean-square
# sense it is the posterior mean $\mathbb E[x_0 \mid x_t]$. For a mixture it is exact too.
# Within component $k$, $(x_0, x_t)$ is jointly Gaussian, and the Gaussian conditioning
# formula gives
#
# $$ \mathbb E[x_0 \mid x_t, k] = \mu_k + a C_k\,(a^2 C_k + s^2 I)^{-1} (x_t - a\mu_k). $$
#
# Averaging over the component with the responsibilities of $x_t$ under $p_t$ gives
# $\mathbb E[x_0 \mid x_t] = \sum_k r_k(x_t)\, \mathbb E[x_0 \mid x_t, k]$. Chapter 1 shows,
# for $a = 1$, that it equals $x_t + s^2 \nabla \log p_t(x_t)$ — Tweedie's formula;
# applied to $x_t / a$ it gives $(x_t + s^2 \nabla \log p_t(x_t))/a$ in general. This is
# why *denoising* and *learning the score* are one problem.

# %%
course_lib.show(GaussianMixture.optimal_denoiser)

# %%
s_den = 0.5
a_den = (1 - s_den**2) ** 0.5
x0_d = gm8.sample(cfg.pick(smoke=200, cpu=600, gpu=600), generator)
xt_d = a_den * x0_d + s_den * torch.randn(x0_d.shape, generator=generator)
x0_hat = gm8.optimal_denoiser(xt_d, a_den, s_den)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(*xt_d.T, s=6, c=plotting.COLORS["data"], label="noisy $x_t$")
ax.scatter(*x0_hat.T, s=6, c=plotting.COLORS["truth"], label=r"$E[x_0 \mid x_t]$")
ax.quiver(
    *xt_d.T, *(x0_hat - xt_d).T, angles="xy", scale_units="xy", scale=1, width=0.002, alpha=0.4
)
ax.set(
    title=f"optimal denoiser, s = {s_den}",
    xlabel="$x_1$",
    ylabel="$x_2$",
    aspect="equal",
    xlim=(-3, 3),
    ylim=(-3, 3),
)
ax.legend(fontsize=8)
plt.show()
mse = ((x0_hat - x0_d) ** 2).sum(1).mean().item()
print(
    f"mean squared error of the optimal denoiser: {mse:.4f} "
    f"(of the noisy point itself, rescaled: {((xt_d / a_den - x0_d) ** 2).sum(1).mean():.4f})"
)

# %% [markdown]
# What to notice: the denoised points are pulled to the modes, but not *onto* them — a
# point halfway between two modes is mapped near the middle, because the posterior mean
# averages over both. The optimal denoiser shrinks; it does not sample. Turning denoisers
# into samplers is the subject of chapters 2–5.
#
# ## Every toy gets a twin
#
# Only `gaussians8` is itself a mixture. For the other toys, the course fits a
# 48-component Gaussian mixture to 100,000 samples once, by expectation-maximisation
# (scikit-learn), and ships the parameters with the package. These **twins** are close
# enough to the toys that we can use their exact scores, denoisers and likelihoods as
# the *truth* for every toy.

# %%
course_lib.show(toys.fit_twin)

# %% [markdown]
# How close is close? We measure the distance between samples of a toy and samples of its
# twin with the **maximum mean discrepancy** (MMD) and compare it with the *floor*: the
# value the same measure takes between two independent samples of the toy itself. A twin
# at the floor cannot be told apart from the toy with this many samples.

# %%
course_lib.show(metrics.mmd)

# %%
n_eval = cfg.pick(smoke=300, cpu=2000, gpu=4000)
rows = []
fig, axes = plt.subplots(2, 4, figsize=(13, 6.8))
for ax, name in zip(axes.flat, toys.NAMES, strict=True):
    data = toys.sample(name, n_eval, generator)
    twin_samples = toys.twin(name).sample(n_eval, generator)
    floor = metrics.mmd(data, toys.sample(name, n_eval, generator))
    rows.append((name, metrics.mmd(twin_samples, data), floor))
    plotting.scatter(
        twin_samples, data=data, ax=ax, title=f"{name}: twin", kind="truth", label="twin samples"
    )
fig.tight_layout()
plt.show()
print(f"{'toy':>13} | MMD(twin, toy) | floor (toy vs toy)")
for name, m, f in rows:
    print(f"{name:>13} | {m:14.5f} | {f:.5f}")

# %% [markdown]
# ## Profiles, Colab and the book
#
# **Profiles.** Every chapter reads one configuration, `cfg = course_lib.get_config()`,
# and asks it for sizes instead of hard-coding them. The profile comes from the
# environment variable `COURSE_PROFILE`:
#
# | profile | for | this chapter |
# | --- | --- | --- |
# | `smoke` | the tests; every code path in seconds | a few hundred points |
# | `cpu` | the default without a GPU; good results in minutes | thousands of points |
# | `gpu` | the default with CUDA; real image runs | the same as `cpu` here |
#
# A cell asks, for example, `cfg.pick(smoke=200, cpu=5_000, gpu=50_000)` training steps.
# Set the variable before starting Jupyter (`COURSE_PROFILE=smoke python3 run.py lab`) or
# at the top of a notebook with `os.environ["COURSE_PROFILE"] = "cpu"` before
# `get_config()` is called. An unknown name is an error that lists the valid ones:

# %%
course_lib.show(course_lib.config.Config.pick)
try:
    course_lib.get_config("laptop")
except ValueError as err:
    print(err)

# %% [markdown]
# **Colab.** The badge at the top of every chapter opens it on Colab; the first code cell
# installs `course_lib` there without touching Colab's PyTorch. Choose a GPU runtime
# (*Runtime → Change runtime type*) and the `gpu` profile is picked automatically.
# Training runs write checkpoints, so a session that ends can pick up where it stopped.
#
# **The book.** `python3 run.py book` executes every chapter and builds the HTML book with
# all outputs, math and animations; `python3 run.py test` runs everything the course
# checks about itself.
#
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
worst = max(rows, key=lambda r: r[1] / r[2])
results_card(
    [
        ("run", cfg.describe()),
        ("chapter wall time", f"{elapsed:.1f} s"),
        ("samples per toy (MMD)", f"{n_eval}"),
        ("worst twin (MMD / floor)", f"{worst[0]}: {worst[1] / worst[2]:.2f}x"),
        (
            "quality: mean twin MMD / floor",
            f"{sum(r[1] / r[2] for r in rows) / len(rows):.2f}x",
        ),
    ]
)

# %% [markdown]
# An MMD ratio near one means the twin is indistinguishable from the toy with this many
# samples; the `smoke` profile uses so few samples that the ratios are noisy.
#
# ## Summary
#
# * A generative model gives **densities**, **samples**, or both; the normalising constant
#   makes densities hard, and the **score** $\nabla_x \log p$ does not depend on it.
# * For a **Gaussian mixture**, density, samples, score and optimal denoiser are all
#   closed-form.
# * **Noising** $x_t = a x_0 + s\varepsilon$ maps a mixture to a mixture with components
#   $\mathcal N(a\mu_k, a^2 C_k + s^2 I)$ — the course's ground truth at every noise level.
# * Every 2D toy has a Gaussian-mixture **twin**, so every learned score, sampler and
#   likelihood in the course is checked against an exact answer.
#
# ## Further reading
#
# * Lilian Weng, *What are diffusion models?* {cite}`weng2021diffusion` and Yang Song,
#   *Generative modeling by estimating gradients of the data distribution*
#   {cite}`song2021blog`: the two overviews this course follows most closely.
# * Hyvärinen {cite}`hyvarinen2005` on why the score sidesteps the normalising constant;
#   Gretton et al. {cite}`gretton2012mmd` for the MMD.
# * The papers of the next chapters: {cite}`song2019ncsn`, {cite}`ho2020ddpm`,
#   {cite}`song2021sde`, {cite}`lipman2023flow`.
