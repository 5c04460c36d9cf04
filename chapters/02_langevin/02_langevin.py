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
# # 2. Langevin dynamics: from a score to samples
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/02_langevin/02_langevin.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Derive* the unadjusted Langevin algorithm (ULA) from the Langevin equation and its Fokker–Planck equation. *Measure* ULA's step-size bias and *compare* it with MALA. *Explain* why plain Langevin dynamics gets the weights of separated modes wrong and how annealing over noise levels fixes it. *Train* a noise-conditional score network on 2D toys and MNIST and *sample* it with annealed Langevin dynamics. |
# | **Prerequisites** | Chapter 0 (the Gaussian-mixture ground truth) and chapter 1 (denoising score matching, Tweedie's formula); Gaussian random walks; the idea of a Markov chain with a stationary law. |
# | **Run time** | `smoke` ≈ 30 s · `cpu` ≈ 4 min · `gpu` ≈ 3 min (trains two small 2D score networks and a small MNIST U-Net) |

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
from IPython.display import HTML, display

import course_lib
from course_lib import data, langevin, metrics, plotting, toys, train
from course_lib import langevin_figures as lf
from course_lib.exercises import ch02
from course_lib.nets import MLP, UNet
from course_lib.score_matching import NoiseConditionalScore, multi_noise_dsm

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: a sampler that gets the weights wrong
#
# Chapter 1 taught a network the score $\nabla_x \log p(x)$ of a data distribution. A
# score is not yet a generative model: we want *samples*. This chapter turns scores into
# samples, and it starts with a warning.
#
# Take the simplest distribution with more than one mode: two round Gaussian bumps, far
# apart, one holding 80% of the mass and the other 20%,
#
# $$ p(x) = 0.8\,\mathcal N\big(x;\,(-1.5,-1.5),\,0.35^2 I\big) + 0.2\,\mathcal N\big(x;\,(1.5, 1.5),\,0.35^2 I\big). $$
#
# It is a Gaussian mixture, so (chapter 0) we know its score *exactly*; no learning and no
# approximation will get in the way. We scatter a few thousand starting points uniformly
# over the square $[-3, 3]^2$, which knows nothing about $p$, and let each of them follow
# the simplest score-based sampler there is, *Langevin dynamics*: a small step along the
# score plus a little Gaussian noise, a thousand times over. (Its precise form is the
# subject of the next section; for now it is a black box that is known to sample $p$ when
# run long enough.)
#
# ### Exercise 2.1: predict before you run
#
# **Before running the next cells**, predict what fraction of the chains end in the heavy
# mode at $(-1.5, -1.5)$, whose true weight is 0.8. Write it below.

# %% tags=["exercise"]
my_fraction = None  # YOUR PREDICTION, a number between 0 and 1

# %%
ch02.check_predict_mode_fraction(my_fraction)

# %% tags=["solution", "hide-input"]
my_fraction = 0.5  # half of the starts lie on each side; no chain crosses the valley
ch02.check_predict_mode_fraction(my_fraction)

# %% [markdown]
# Now run it, and beside it run the sampler this chapter builds up to, *annealed*
# Langevin dynamics, with the exact scores of the same mixture blurred by Gaussian noise
# of decreasing size.

# %%
gm2 = lf.two_mode_mixture()  # 0.8 N((-1.5,-1.5), 0.35² I) + 0.2 N((1.5,1.5), 0.35² I)
n_chains = cfg.pick(smoke=400, cpu=2000, gpu=4000)
x_start = lf.broad_init(n_chains, generator)  # uniform on [-3, 3]^2

ula_run = langevin.ula(
    gm2.score,
    x_start,
    step_size=0.01,
    n_steps=cfg.pick(smoke=200, cpu=1000, gpu=1000),
    generator=generator,
    keep=10,
)

sigma_1 = langevin.sigma_max_rule(gm2.sample(4000, generator), generator=generator)
sigmas_2 = langevin.geometric_sigmas(sigma_1, 0.05, 20)  # noise levels, largest first
steps_2 = cfg.pick(smoke=10, cpu=40, gpu=40)  # Langevin steps per level, K
h_2 = langevin.step_size_rule(0.05, steps_2, float(sigmas_2[0] / sigmas_2[1]))  # base step
annealed_run = langevin.annealed_langevin(
    lf.exact_noise_score(gm2),
    sigma_1 * torch.randn(n_chains, 2, generator=generator),
    sigmas_2,
    h_2,
    steps_2,
    generator=generator,
)

fig, axes = plotting.figure_row(3)
plotting.density(gm2.log_prob, ax=axes[0], title="")
plotting.scatter(
    x_start, ax=axes[0], title="target p (0.8 / 0.2) and the starts", kind="init", label="starts"
)
for ax, run, name in [
    (axes[1], ula_run, "Langevin (ULA)"),
    (axes[2], annealed_run, "annealed Langevin"),
]:
    frac = lf.mode_fractions(run.x, gm2)
    plotting.scatter(
        run.x,
        data=gm2.sample(n_chains, generator),
        ax=ax,
        title=f"{name}\nheavy mode {frac[0]:.2f}, light mode {frac[1]:.2f}",
        label="sampler",
        kind="model",
    )
fig.tight_layout()
plt.show()

ula_weight_error = lf.mode_weight_error(ula_run.x, gm2)
annealed_weight_error = lf.mode_weight_error(annealed_run.x, gm2)
print(
    f"mode-weight error |f - w|: ULA {ula_weight_error:.3f}, annealed {annealed_weight_error:.3f}"
    f"  (sampling noise of a perfect sampler: about {(0.16 / n_chains) ** 0.5:.3f})"
)

# %% [markdown]
# The left panel shows the target density and the uniform starts (green). In the middle,
# plain Langevin dynamics with the **exact** score has done a perfect job *inside* each
# mode: every chain sits in a bump, and each bump has the right shape. But the two bumps
# hold about half of the chains each, not 80% and 20%. On the right, annealed Langevin
# dynamics, which uses nothing but scores as well, gets the weights right.
#
# Two lessons follow, and the rest of the chapter makes them precise:
#
# 1. Langevin dynamics is a correct sampler *in the limit of infinite time*, but between
#    well-separated modes that limit is astronomically far away; in practice the chain
#    *keeps the weights of its starting points*.
# 2. Adding noise to the data, and removing it slowly, moves the chains between modes
#    while the modes still overlap. This is the idea of noise-conditional score networks
#    (NCSN) {cite}`song2019ncsn`, and the seed of every diffusion model in this course.
#
# ## Langevin dynamics: a random walk that knows the score
#
# ### The Langevin equation
#
# Consider a particle $x_t \in \mathbb R^D$ that drifts along the score and is kicked by
# Brownian motion $W_t$:
#
# $$ dx_t = \tfrac12 \nabla_x \log p(x_t)\, dt + dW_t. $$
#
# This is the (overdamped) **Langevin equation**. The drift pulls the particle uphill on
# $\log p$, towards high density; the noise spreads it out. Where does the balance settle?
#
# Let $\rho_t$ be the density of $x_t$ when the starting point is random. For a stochastic
# differential equation $dx = f(x)\,dt + dW$ the density obeys the **Fokker–Planck
# equation** $\partial_t \rho = -\nabla\cdot(\rho f) + \tfrac12 \Delta \rho$: the first
# term moves mass along the drift, the second is diffusion (heat flow). With
# $f = \frac12 \nabla \log p$, and writing the Laplacian as
# $\Delta\rho = \nabla\cdot\nabla\rho = \nabla\cdot(\rho\,\nabla\log\rho)$,
#
# $$ \partial_t \rho_t
#    = -\nabla\cdot\Big(\rho_t\, \tfrac12 \nabla\log p\Big) + \tfrac12 \nabla\cdot\big(\rho_t \nabla\log\rho_t\big)
#    = \tfrac12\, \nabla\cdot\Big(\rho_t\, \nabla \log \frac{\rho_t}{p}\Big). $$
#
# Read the right-hand side: the *probability flux* $\tfrac12 \rho_t \nabla\log(\rho_t/p)$
# vanishes exactly when $\rho_t \propto p$. So $p$ is a **stationary density** of the
# Langevin equation. It is also the one the process converges to. Differentiate the
# Kullback–Leibler divergence in time and integrate by parts (the boundary term vanishes
# for densities that decay):
#
# $$ \frac{d}{dt}\, \mathrm{KL}(\rho_t \,\|\, p)
#    = \int \partial_t\rho_t \, \log\frac{\rho_t}{p}\, dx
#    = -\tfrac12 \int \rho_t \Big\| \nabla \log \frac{\rho_t}{p} \Big\|^2 dx
#    = -\tfrac12\, \mathbb E_{\rho_t} \big\| \nabla\log\rho_t - \nabla\log p \big\|^2 \le 0. $$
#
# (The term $\int \partial_t \rho_t\,dx$ that the product rule also produces is zero:
# the total mass stays one.) The divergence to the target decreases at a rate equal to
# half the **Fisher divergence** between the current law and the target — the very
# quantity that score matching minimised in chapter 1. It stops decreasing only when the
# two scores agree, i.e. when $\rho_t = p$.
#
# Two facts in this derivation matter for everything that follows:
#
# * **Only the score of $p$ appears.** The normalising constant of $p$ never enters, so a
#   learned score $s_\theta(x) \approx \nabla \log p(x)$ is all a sampler needs.
# * **The speed is not guaranteed.** How fast the Fisher divergence drives the KL down is
#   governed by a functional inequality of $p$ (a log-Sobolev inequality,
#   $\mathrm{KL} \le \frac{1}{2\lambda}\,\mathbb E_\rho\|\nabla\log(\rho/p)\|^2$, which gives
#   $\mathrm{KL}(\rho_t\|p) \le e^{-\lambda t}\,\mathrm{KL}(\rho_0\|p)$). For a Gaussian,
#   $\lambda = 1/\sigma^2$. For two modes separated by a valley of low density, $\lambda$
#   is exponentially small in the depth of the valley. That is the motivating picture in
#   one line.
#
# A note on conventions: improved NCSN {cite}`song2020improved` and Yang Song's blog
# {cite}`song2021blog` step $x + \alpha\nabla\log p + \sqrt{2\alpha}\,z$, the Euler step of
# $dx = \nabla\log p\,dt + \sqrt2\,dW$, which many texts write. That equation has the
# same paths, run twice as fast ($t \mapsto 2t$). The
# original NCSN paper {cite}`song2019ncsn` writes the factor $\frac12$, and so does the
# course, so that the discrete step below reads exactly like the paper's Algorithm 1.
#
# ### The unadjusted Langevin algorithm
#
# A computer cannot follow Brownian motion, so discretise time with a step $h$. Over an
# interval of length $h$ the Brownian increment $W_{t+h} - W_t$ is $\mathcal N(0, hI)$,
# i.e. $\sqrt h\, z$ with $z \sim \mathcal N(0, I)$. Freezing the drift at the start of
# the interval (the **Euler–Maruyama** scheme) gives
#
# $$ x_{k+1} = x_k + \frac h2\, \nabla_x \log p(x_k) + \sqrt h\, z_k,
#    \qquad z_k \sim \mathcal N(0, I). $$
#
# This is the **unadjusted Langevin algorithm** (ULA) {cite}`roberts1996langevin`; with
# mini-batch gradients in place of the exact score it is stochastic gradient Langevin
# dynamics {cite}`welling2011sgld`. Notice the two scales: the drift moves by order $h$,
# the noise by order $\sqrt h$. For small steps the noise dominates each single step; the
# drift wins only on average, over many steps. Here is the course's implementation; it
# records every `keep`-th state for plots.
#
# ```{admonition} Notation: the step is h, the steps per level K
# :class: note
# The papers of this chapter write the Langevin step size $\epsilon$ (Welling & Teh, NCSN,
# improved NCSN) and annealed Langevin's number of steps per level $T$. In this course
# $\varepsilon$ is always a standard Gaussian draw (the noise of denoising score matching)
# and $T$ is the length of chapter 3's chain, so the step is $h$ ($h_i$ at noise level
# $\sigma_i$) and the number of steps per level is $K$. The {doc}`notation page </book/notation>`
# lists every letter of the course.
# ```

# %%
course_lib.show(langevin.ula)

# %% [markdown]
# ### Exercise 2.2: one ULA step
#
# Write `ula_step(x, score_fn, step_size, z)`: one step of ULA from the points `x`
# `(B, D)`, using the given standard normal noise `z` `(B, D)`.


# %% tags=["exercise"]
def ula_step(x, score_fn, step_size, z):
    # YOUR CODE HERE: return the new points
    raise NotImplementedError


# %%
ch02.check_ula_step(ula_step)


# %% tags=["solution", "hide-input"]
def ula_step(x, score_fn, step_size, z):
    return x + 0.5 * step_size * score_fn(x) + math.sqrt(step_size) * z


ch02.check_ula_step(ula_step)

# %% [markdown]
# Two mistakes are common here, and both are instructive. Writing the noise as $h\,z$
# instead of $\sqrt h\, z$ makes the noise vanish much faster than the drift as $h \to 0$:
# the chain becomes gradient ascent on $\log p$ and collapses onto the modes. Dropping the
# $\frac12$ (a drift of $h\,\nabla\log p$ with noise $\sqrt h\,z$) is a perfectly good
# Langevin sampler — for the *wrong* target: $h\nabla\log p = \frac h2 \nabla \log p^2$,
# so the chain samples $p^2$ (normalised), which for a Gaussian is narrower by $\sqrt 2$.
#
# ## The price of a finite step: ULA's bias
#
# The Euler–Maruyama step is not the exact solution of the Langevin equation, so the
# chain's own stationary law is not exactly $p$. For a Gaussian target we can compute it.
# Let $p = \mathcal N(0, \sigma^2)$ in one dimension, so $\nabla\log p(x) = -x/\sigma^2$ and
# one step is linear:
#
# $$ x' = \Big(1 - \frac{h}{2\sigma^2}\Big)\, x + \sqrt h\, z. $$
#
# If $x \sim \mathcal N(0, v)$, then $x' \sim \mathcal N\big(0, (1 - \frac{h}{2\sigma^2})^2 v + h\big)$.
# The stationary variance is the fixed point $v = (1 - \frac{h}{2\sigma^2})^2 v + h$.
# Expanding the square, $v\,\big(\frac{h}{\sigma^2} - \frac{h^2}{4\sigma^4}\big) = h$, so
#
# $$ v_\infty(h) = \frac{\sigma^2}{1 - h/(4\sigma^2)} = \sigma^2\Big(1 + \frac{h}{4\sigma^2} + O(h^2)\Big). $$
#
# Three things can be read off. The mean is right. The variance is too large, by a
# relative error of about $h/(4\sigma^2)$: a **bias of order $h$** that no number of
# steps removes. And the chain is stable only for $h < 4\sigma^2$: beyond, the factor
# $|1 - h/(2\sigma^2)|$ exceeds one and the chain explodes. The step size must be small
# compared with the *narrowest* scale of the target — which is why annealed Langevin
# below ties the step to the noise level.

# %%
course_lib.show(lf.ula_gaussian_variance)

# %% expected_output="closed-form ULA variances on N(0, 1) for h = 0.1, 1, 2, 3: [1.0256, 1.3333, 2.0, 4.0]\n"
# a deterministic check of the formula (compared by the tests)
print(
    "closed-form ULA variances on N(0, 1) for h = 0.1, 1, 2, 3:",
    [round(lf.ula_gaussian_variance(h, 1.0), 4) for h in (0.1, 1.0, 2.0, 3.0)],
)

# %% [markdown]
# ### Removing the bias: MALA
#
# The classical fix treats the ULA step as a *proposal* and corrects it with a
# Metropolis–Hastings test {cite}`roberts1996langevin`. Propose
# $y = x + \frac h2\nabla\log p(x) + \sqrt h\,z$, i.e. draw $y$ from
# $q(y\mid x) = \mathcal N\big(y;\ x + \frac h2\nabla\log p(x),\ hI\big)$, and accept it
# with probability
#
# $$ a(x, y) = \min\Big(1,\ \frac{p(y)\, q(x\mid y)}{p(x)\, q(y\mid x)}\Big), $$
#
# otherwise stay at $x$. This choice makes the chain satisfy *detailed balance*,
# $p(x)\,q(y\mid x)\,a(x,y) = p(y)\,q(x\mid y)\,a(y,x)$, so $p$ is exactly stationary,
# whatever $h$. This is the **Metropolis-adjusted Langevin algorithm** (MALA). It needs
# $p$ only up to a constant (the constant cancels in the ratio), but it does need $\log p$
# itself, not only its gradient.

# %%
course_lib.show(langevin.mala)

# %% [markdown]
# ### Exercise 2.3: MALA's acceptance ratio
#
# Derive the log of the Metropolis–Hastings ratio for a MALA move $x \to y$ and write it
# as `mala_log_accept(x, y, log_prob_fn, score_fn, h)`: for points `x`, `y` of shape
# `(B, D)` it returns, per chain, $\log\frac{p(y)\,q(x\mid y)}{p(x)\,q(y\mid x)}$ (before
# the $\min(1, \cdot)$), where `log_prob_fn` gives $\log p$ up to a constant and
# `score_fn` its gradient. Write out $\log q$ from the Gaussian density and decide which
# constants cancel. The check uses a double-well target, for which a wrong ratio gives
# wrong numbers at once.


# %% tags=["exercise"]
def mala_log_accept(x, y, log_prob_fn, score_fn, h):
    # YOUR CODE HERE: return log[p(y) q(x | y) / (p(x) q(y | x))], shape (B,)
    raise NotImplementedError


# %%
ch02.check_mala_log_accept(mala_log_accept)


# %% tags=["solution", "hide-input"]
def mala_log_accept(x, y, log_prob_fn, score_fn, h):
    def log_q(to, frm):  # log N(to; frm + (h/2) score(frm), h I), its constant cancels
        return -(to - frm - 0.5 * h * score_fn(frm)).pow(2).sum(1) / (2 * h)

    return log_prob_fn(y) - log_prob_fn(x) + log_q(x, y) - log_q(y, x)


ch02.check_mala_log_accept(mala_log_accept)

# %% [markdown]
# Let us measure both on $\mathcal N(0, 1)$: twenty thousand chains started at exact
# samples (so no burn-in is needed), run for a hundred steps at each step size, and the
# variance of where they end. `lf.gaussian_bias_table` only runs the two samplers and
# collects the numbers.

# %%
course_lib.show(lf.gaussian_bias_table, docstring=False)

# %%
step_sizes = [0.05, 0.2, 0.5, 1.0, 2.0, 3.0]
bias_rows = lf.gaussian_bias_table(
    step_sizes,
    sigma=1.0,
    n=cfg.pick(smoke=2000, cpu=20_000, gpu=20_000),
    n_steps=cfg.pick(smoke=30, cpu=100, gpu=100),
    generator=generator,
)
print(f"{'h':>5} | {'formula':>8} | {'ULA':>7} | {'MALA':>7} | MALA acceptance")
for r in bias_rows:
    print(
        f"{r.step_size:5.2f} | {r.formula:8.4f} | {r.ula:7.4f} | {r.mala:7.4f} | {r.acceptance:.3f}"
    )

fig, axes = plotting.figure_row(2, size=4.2)
h_grid = torch.linspace(0.01, 3.3, 200)
axes[0].plot(
    h_grid,
    [lf.ula_gaussian_variance(float(h)) for h in h_grid],
    color=plotting.COLORS["truth"],
    label=r"formula $\sigma^2/(1-h/4\sigma^2)$",
)
axes[0].plot(
    step_sizes,
    [r.ula for r in bias_rows],
    "o",
    color=plotting.COLORS["model"],
    label="ULA, measured",
)
axes[0].plot(
    step_sizes,
    [r.mala for r in bias_rows],
    "s",
    color=plotting.COLORS["init"],
    label="MALA, measured",
)
axes[0].axhline(1.0, color=plotting.COLORS["data"], ls="--", label=r"target $\sigma^2 = 1$")
axes[0].set(
    title="stationary variance on N(0, 1)", xlabel="step size h", ylabel="variance", yscale="log"
)
axes[0].legend(fontsize=8)
axes[1].plot(
    step_sizes, [r.acceptance for r in bias_rows], "s-", color=plotting.COLORS["init"], label="MALA"
)
axes[1].set(
    title="MALA acceptance rate", xlabel="step size h", ylabel="accepted proposals", ylim=(0, 1.05)
)
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice. ULA's measured variance sits on the formula at every step size: at
# $h = 2\sigma^2$ the samples have *twice* the target variance, at $h = 3\sigma^2$ four
# times. MALA's variance stays at one, at the price of rejecting more and more proposals
# as $h$ grows — a rejected proposal is a wasted score evaluation.
#
# Why, then, does every diffusion sampler in this course use *unadjusted* steps? First,
# a score network gives $\nabla\log p$ but not $\log p$, and MALA's test needs the latter.
# Second, in $D$ dimensions MALA's acceptance rate collapses unless $h$ shrinks like
# $D^{-1/3}$ {cite}`roberts1998optimal`, which for images means tiny steps anyway. Third,
# the bias of order $h$ can be made as small as we like by shrinking $h$ — and annealing
# will let us use small steps exactly where they are needed. Welling & Teh
# {cite}`welling2011sgld` made the same bet for Bayesian learning: with decreasing steps,
# the bias vanishes and the Metropolis test can be skipped.
#
# ## Try it: step size and number of steps
#
# The widget runs ULA with the exact score of the two-mode mixture from the uniform start.
# Move the step size past $4 \times 0.35^2 \approx 0.49$, four times the variance of a
# mode, and the chains explode; run ten times more steps and watch the heavy-mode
# fraction. The widget calls one plain, tested function, `lf.langevin_panel`.

# %%
import ipywidgets as widgets


def redraw(step_size: float = 0.01, n_steps: int = 200) -> None:
    lf.langevin_panel(step_size, n_steps, n=cfg.pick(smoke=200, cpu=500, gpu=500))
    plt.show()


widgets.interact(
    redraw,
    step_size=widgets.FloatLogSlider(
        value=0.01, base=10, min=-3, max=0, step=0.1, description="step size h"
    ),
    n_steps=widgets.IntSlider(value=200, min=10, max=2000, step=10, description="steps"),
)

# %% [markdown]
# What to notice: a small step ($h = 0.001$) with few steps has not even reached the
# modes; a moderate one ($h \approx 0.01$–$0.1$) fills both modes with the right shape;
# more steps never change the fraction in the heavy mode, which stays near one half. Past
# $h \approx 0.5$ the chains diverge — the stability limit $4\sigma^2$ of the previous
# section, with $\sigma = 0.35$ the width of a mode.
#
# ## Why mixtures break plain Langevin
#
# ### The score does not see the weights
#
# Why did ULA, with the exact score, keep the wrong weights? Look at the score of a
# mixture near one of its modes. Where component $k$ dominates,
# $p(x) \approx w_k\, \mathcal N(x;\mu_k, C_k)$, and
#
# $$ \nabla_x \log p(x) \approx \nabla_x \log w_k + \nabla_x \log \mathcal N(x; \mu_k, C_k) = -C_k^{-1}(x - \mu_k). $$
#
# The weight $w_k$ is a constant factor, and the gradient of a constant is zero. Inside
# each basin, the score of a mode with weight 0.8 and the score of a mode with weight 0.2
# are *the same field*. The weights enter the score only where the responsibilities
# $r_k(x)$ are mixed — in the valley between the modes, exactly where almost no chain
# ever goes. A chain that starts in a basin explores that basin perfectly and reports it
# with the weight of its *starting* points. Song & Ermon {cite}`song2019ncsn` (Section 3.2.2)
# make the same point with the mixture $\frac15\mathcal N((-5,-5), I) + \frac45\mathcal N((5,5), I)$.
#
# How long would the chains need? A chain crosses a valley at a rate roughly proportional
# to $e^{-\Delta U}$, where $\Delta U = \log p(\text{mode}) - \log p(\text{saddle})$ is the
# depth of the valley in units of $\log p$ (the Arrhenius / Kramers law). We can evaluate
# it exactly for our mixture:

# %%
light_mode, saddle = torch.tensor([[1.5, 1.5]]), torch.tensor([[0.0, 0.0]])
depth = float(gm2.log_prob(light_mode) - gm2.log_prob(saddle))
print(f"valley depth seen from the light mode: {depth:.1f} nats -> e^depth ≈ {math.exp(depth):.1e}")
print("Langevin time run above:", 0.01 * cfg.pick(smoke=200, cpu=1000, gpu=1000))

# %% [markdown]
# A chain in the light mode would wait of the order of $10^7$ to $10^8$ units of
# Langevin time to cross once; we ran ten. Since each mode is at equilibrium within
# itself after a time of order $\sigma^2$, the fraction of chains in each mode simply
# *freezes* at the fraction of the starts in its basin. The trajectory recorded by
# `keep=10` shows it directly:

# %%
fractions = lf.fractions_along(ula_run.trajectory, gm2)
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(
    ula_run.times, fractions[:, 0], color=plotting.COLORS["model"], label="ULA: heavy-mode fraction"
)
ax.axhline(0.8, color=plotting.COLORS["truth"], ls="--", label="true weight 0.8")
ax.axhline(
    float(lf.mode_fractions(x_start, gm2)[0]),
    color=plotting.COLORS["init"],
    ls=":",
    label="fraction of the starts in its basin",
)
ax.set(
    title="plain Langevin keeps the weights of its start",
    xlabel="Langevin time k h",
    ylabel="fraction of chains",
    ylim=(0, 1),
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### The second failure: learned scores are wrong where there is no data
#
# With a *learned* score there is a second problem. Score matching (chapter 1) minimises
# $\mathbb E_{p}\|s_\theta(x) - \nabla\log p(x)\|^2$: the error is weighted by $p$ itself.
# Where $p$ is tiny — in the valleys between modes, and everywhere far from the data,
# which in 784 dimensions is almost everywhere — the network is never told what to do.
# A chain started from noise begins exactly there. Song & Ermon {cite}`song2019ncsn` show
# that the learned field is accurate only near the data (their Section 3.2.1) and that
# Langevin dynamics mixes poorly between separated modes (Section 3.2.2). A third, related problem is
# the *manifold hypothesis*: images concentrate near a low-dimensional set, where
# $\nabla \log p$ is not even defined in the ambient space.
#
# ## Annealed Langevin dynamics
#
# ### Noise fills the gaps
#
# One idea answers all three problems. Blur the data with Gaussian noise of size $\sigma$:
#
# $$ p_\sigma(\tilde x) = \int p(x)\, \mathcal N(\tilde x;\, x,\, \sigma^2 I)\, dx, $$
#
# the law of $\tilde x = x + \sigma\varepsilon$. The blurred density is positive
# everywhere and smooth (no manifold problem); its samples fill the space between the
# modes, so denoising score matching at level $\sigma$ teaches the network the score
# *there* too (no low-density problem); and for a mixture, chapter 0 showed that each
# component just widens, $\mathcal N(\mu_k, C_k) \to \mathcal N(\mu_k, C_k + \sigma^2 I)$,
# so for large $\sigma$ the modes overlap, the valleys fill up, and the weights show up in
# the score everywhere (no mixing problem). Here is our mixture at four levels:

# %%
show_levels = [2.0, 0.8, 0.3, 0.0]
fig, axes = plotting.figure_row(4, size=3.3)
for ax, s in zip(axes, show_levels, strict=True):
    noised = gm2.noised(1.0, s)
    plotting.density(noised.log_prob, ax=ax, title="", n=100)
    plotting.scatter(
        noised.sample(cfg.pick(smoke=200, cpu=800, gpu=800), generator),
        ax=ax,
        title=f"p_σ, σ = {s}",
        kind="truth",
        label="exact samples",
    )
fig.tight_layout()
plt.show()

# %% [markdown]
# At $\sigma = 2$ the blurred density is a single lopsided bump: a Langevin chain crosses
# it in a few steps, and it is already 80/20 lopsided. Large noise, however, is not the
# distribution we want. The resolution is to use **many** levels
# $\sigma_1 > \sigma_2 > \dots > \sigma_L$: sample at the largest, where mixing is easy,
# then use those samples as the start for the next level, and so on down to $\sigma_L$,
# small enough that $p_{\sigma_L} \approx p$. Each level's chains start close to
# equilibrium for that level, because consecutive blurred laws are similar; the weights
# are fixed early, while the modes still communicate, and carried down.
#
# ### The algorithm
#
# **Annealed Langevin dynamics** (Song & Ermon 2019, Algorithm 1) runs $K$ ULA steps at
# each level with a level-dependent step
#
# $$ h_i = h\, \frac{\sigma_i^2}{\sigma_L^2}, \qquad
#    x \leftarrow x + \frac{h_i}2\, s_\theta(x, \sigma_i) + \sqrt{h_i}\, z, \qquad i = 1, \dots, L, $$
#
# with a base step $h$, the step at the last level. (The paper writes $\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2$
# and $T$ steps per level: see the notation box above.)
# The score is now a function of the noise level too, $s_\theta(x, \sigma) \approx \nabla \log p_\sigma(x)$:
# a **noise-conditional score network**. Why $h_i \propto \sigma_i^2$? Two reasons.
# ULA is stable only for steps below a multiple of the target's variance, and $p_{\sigma_i}$
# is (at least) $\sigma_i^2$ wide in every direction. And, where the noise dominates, the
# ratio of drift to noise in one step is the same at every level: by Tweedie's formula
# (chapter 1), $\sigma\, \nabla\log p_\sigma(\tilde x) = -\mathbb E[\varepsilon \mid \tilde x]$,
# and when $\sigma_i$ is large compared with the data's spread, or when the data lie near a
# low-dimensional set (images), the noisy point reveals almost all of its noise,
# $\mathbb E[\varepsilon\mid\tilde x] \approx \varepsilon$, of norm about $\sqrt D$ (about
# $\sqrt{D - d}$ for data on a $d$-dimensional set). Then $\|s\| \approx \sqrt D/\sigma_i$ and
#
# $$ \frac{\|\frac{h_i}2\, s_\theta(x, \sigma_i)\|}{\|\sqrt{h_i}\,z\|}
#    \approx \frac{\sqrt{h_i}}{2\sigma_i} = \frac{\sqrt h}{2\sigma_L}, $$
#
# the same at every level: the chain takes the same *relative* step at every scale. For a
# smooth density in low dimension the small levels are different: as $\sigma \to 0$,
# $\sigma\nabla\log p_\sigma \to \sigma\nabla\log p \to 0$, so the drift's share of a step
# shrinks there (harmless: those levels only sharpen).
#
# ### Exercise 2.4: the annealed step sizes
#
# Write `annealed_step_sizes(sigmas, h)` returning the tensor of $h_i$, one per level, for
# a descending tensor `sigmas` $= (\sigma_1, \dots, \sigma_L)$ and the base step $h$.


# %% tags=["exercise"]
def annealed_step_sizes(sigmas, h):
    # YOUR CODE HERE: return h_i for every level
    raise NotImplementedError


# %%
ch02.check_annealed_step_sizes(annealed_step_sizes)


# %% tags=["solution", "hide-input"]
def annealed_step_sizes(sigmas, h):
    return h * sigmas**2 / sigmas[-1] ** 2


ch02.check_annealed_step_sizes(annealed_step_sizes)

# %% [markdown]
# The course's sampler follows Algorithm 1 line by line. The one addition, on by default,
# is a final **denoising step** $x \leftarrow x + \sigma_L^2\, s_\theta(x, \sigma_L)$:
# Tweedie's formula from chapter 1, $\mathbb E[x \mid \tilde x] = \tilde x + \sigma^2\nabla\log p_\sigma(\tilde x)$,
# which removes the last level's noise $\sigma_L$ instead of leaving it in the samples
# {cite}`jolicoeur2021adversarial`.

# %%
course_lib.show(langevin.annealed_langevin)

# %% [markdown]
# ### How slowly must we anneal?
#
# The weights are decided at the levels where the modes separate. If the chains do not
# reach equilibrium there, they carry a wrong split downwards. Let us vary the number of
# steps per level $K$ on the two-mode mixture, with the exact noised scores, and measure
# the mode-weight error $\frac12\sum_k |f_k - w_k|$ (for two modes simply
# $|f_1 - 0.8|$).

# %%
course_lib.show(lf.mode_weight_error)

# %%
n_sweep = cfg.pick(smoke=300, cpu=1000, gpu=2000)
print(f"{'K':>4} | {'NFE':>5} | mode-weight error")
for K in cfg.pick(smoke=[1, 5], cpu=[1, 3, 10, 30], gpu=[1, 3, 10, 30]):
    h_K = langevin.step_size_rule(0.05, K, float(sigmas_2[0] / sigmas_2[1]))
    run = langevin.annealed_langevin(
        lf.exact_noise_score(gm2),
        sigma_1 * torch.randn(n_sweep, 2, generator=generator),
        sigmas_2,
        h_K,
        K,
        generator=generator,
    )
    print(f"{K:4d} | {run.nfe:5d} | {lf.mode_weight_error(run.x, gm2):.3f}")

# %% [markdown]
# What to notice: with one step per level the chains barely move and the error is
# large; from about ten steps per level it falls to the level of the sampling noise
# ($\approx 0.01$ for a thousand chains). Annealing is not magic: it needs enough steps at
# the levels where the modes part, but it needs *tens* of steps, not the $10^8$ that
# plain Langevin would.
#
# ### Watching it
#
# The animation runs annealed Langevin dynamics with the exact noised scores of the
# `gaussians8` toy (itself a Gaussian mixture, so its twin is exact). Each frame is
# labelled by the noise level $\sigma_i$ it samples. The cloud starts as a broad blob of
# size $\sigma_1$, contracts, splits into eight groups of equal size around
# $\sigma \approx 1$, and sharpens onto the modes as $\sigma$ falls.

# %%
g8 = toys.twin("gaussians8")
g8_data = toys.sample("gaussians8", 20_000, generator)
g8_sigma_1 = langevin.sigma_max_rule(g8_data, generator=generator)
anim_sigmas = langevin.geometric_sigmas(g8_sigma_1, 0.02, cfg.pick(smoke=6, cpu=20, gpu=20))
anim_steps = cfg.pick(smoke=3, cpu=10, gpu=10)
anim_run = langevin.annealed_langevin(
    lf.exact_noise_score(g8),
    g8_sigma_1 * torch.randn(cfg.pick(smoke=200, cpu=1000, gpu=1000), 2, generator=generator),
    anim_sigmas,
    langevin.step_size_rule(0.02, anim_steps, float(anim_sigmas[0] / anim_sigmas[1])),
    anim_steps,
    generator=generator,
    keep=4,
)
print(f"{anim_run.trajectory.shape[0]} recorded states, {anim_run.nfe} score evaluations")
display(
    HTML(
        plotting.animate(
            anim_run.trajectory,
            data=g8_data[:2000],
            times=anim_run.times.tolist(),
            title="σ",
            max_frames=cfg.pick(smoke=8, cpu=60, gpu=60),
        )
    )
)

# %% [markdown]
# ## Choosing the noise levels and the step: improved NCSN
#
# Annealed Langevin dynamics has four knobs: the largest level $\sigma_1$, the smallest
# $\sigma_L$, the number of levels $L$ (with a geometric sequence, the ratio
# $\gamma = \sigma_{i-1}/\sigma_i$), and the pair $(K, h)$. The original NCSN used
# $\sigma_1 = 1$, $\sigma_L = 0.01$, $L = 10$, $K = 100$ and a step $\epsilon = 2\times 10^{-5}$
# in the paper's letters[^ncsn-step] for MNIST and CIFAR-10 with pixels in $[0, 1]$. Song & Ermon's follow-up
# {cite}`song2020improved` derived rules from simplified models; the course implements
# three of them and the network parameterisation of a fourth.
#
# **Technique 1: $\sigma_1$ as large as the largest distance between training points.**
# Take the simplest data, two points $x^{(1)}, x^{(2)}$. Blurred with $\sigma_1$, a chain
# near one point is pulled towards the other only if the Gaussians around them overlap,
# i.e. if $\sigma_1$ is comparable to $\|x^{(1)} - x^{(2)}\|$. Otherwise the first level
# already has the mixing problem, and the samples lack diversity (wrong weights, again).
#
# [^ncsn-step]: The paper's Algorithm 1 writes the $\frac12$ convention, but NCSN's code
#     steps $x + \alpha_i s + \sqrt{2\alpha_i}\,z$ with $\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2$.
#     In the course's convention $x + \frac{h_i}2 s + \sqrt{h_i}\,z$ that is $h_i = 2\alpha_i$:
#     the published $\epsilon = 2\times10^{-5}$ is a base step $h = 4\times10^{-5}$ here.

# %%
course_lib.show(langevin.sigma_max_rule, docstring=False)

# %% [markdown]
# **Technique 2: a geometric sequence whose consecutive levels overlap.** In $D$
# dimensions, $\mathcal N(0, \sigma^2 I)$ puts almost all its mass on a thin shell of
# radius $\sigma\sqrt D$ and width of order $\sigma$. For the samples of level $i-1$ to
# be a good start for level $i$, the two shells must overlap; with a ratio $\gamma$ the
# paper asks
#
# $$ \Phi\big(\sqrt{2D}(\gamma - 1) + 3\gamma\big) - \Phi\big(\sqrt{2D}(\gamma - 1) - 3\gamma\big) \approx 0.5, $$
#
# with $\Phi$ the standard normal CDF. In high dimension this forces $\gamma$ close to
# one, hence many levels. In two dimensions every shell is thick and the criterion
# imposes nothing; there we choose $L$ by hand (and the rule says so by returning 2).

# %%
course_lib.show(langevin.n_levels_rule, docstring=False)

# %%
print(f"{'data':>22} | {'D':>5} | {'sigma_1':>7} | {'sigma_L':>7} | levels L by the rule")
for name, dim, s_max, s_min in [
    ("2D toy (gaussians8)", 2, g8_sigma_1, 0.02),
    ("MNIST in [-1, 1]", 784, 30.0, 0.05),
    ("CIFAR-10 in [0, 255]/255", 3072, 50.0, 0.01),
]:
    n_levels = langevin.n_levels_rule(s_max, s_min, dim)
    print(f"{name:>22} | {dim:5d} | {s_max:7.2f} | {s_min:7.2f} | {n_levels}")

# %% [markdown]
# The paper's CIFAR-10 model used $\sigma_1 = 50$ and $L = 232$ levels (a criterion of
# about 0.57, slightly more overlap than the 0.5 that gives the rule's 220) with $K = 5$
# steps each: over a thousand network evaluations per sample.
#
# **Technique 3: divide by $\sigma$.** The true score of $p_\sigma$ scales like
# $1/\sigma$ (Tweedie again), so a network that outputs order-one numbers should be
# divided by $\sigma$: $s_\theta(x, \sigma) = \text{net}(x, \sigma)/\sigma$. The paper
# even drops the conditioning input and uses $\text{net}(x)/\sigma$; the course keeps a
# conditioning input $c(\sigma) = \log(\sigma)/4$ (chapter 1's `NoiseConditionalScore`).
#
# **Technique 4: the step from a one-point model.** If the data is a single point, every
# $p_{\sigma_i}$ is Gaussian and the variance after $K$ steps at level $i$, started from
# level $i-1$'s law, is known in closed form; the ratio to the target variance $\sigma_i^2$
# is the same at every level:
#
# $$ \frac{s_K^2}{\sigma_i^2} = \Big(1 - \frac{h'}{\sigma_L^2}\Big)^{2K}\Big(\gamma^2 - \frac{2h'}{\sigma_L^2 - \sigma_L^2(1 - h'/\sigma_L^2)^2}\Big) + \frac{2h'}{\sigma_L^2 - \sigma_L^2(1 - h'/\sigma_L^2)^2}. $$
#
# It blends the starting ratio $\gamma^2$ (the previous level is wider) with ULA's own
# stationary bias from above. Choose $K$ as large as the budget allows, then the $h$
# that brings the ratio closest to one. (Improved NCSN writes the step as
# $\alpha\,s + \sqrt{2\alpha}\,z$ with $\alpha = \epsilon\,\sigma_i^2/\sigma_L^2$, and the
# formula with $\epsilon$ where we write $h'$; the course's $\frac{h_i}2 s + \sqrt{h_i}\,z$
# is the same with $h' = h/2$, converted inside the code.)

# %%
course_lib.show(langevin.step_size_rule, docstring=False)

# %%
gamma_demo = float(anim_sigmas[0] / anim_sigmas[1])
h_values = torch.logspace(-7, -3.3, 150)
fig, ax = plt.subplots(figsize=(6, 3.6))
for K in [3, 10, 30]:
    ratios = [langevin.variance_ratio(float(h), 0.02, K, gamma_demo) for h in h_values]
    best = langevin.step_size_rule(0.02, K, gamma_demo)
    (line,) = ax.plot(h_values, ratios, label=f"K = {K}")
    ax.plot(
        [best], [langevin.variance_ratio(best, 0.02, K, gamma_demo)], "o", color=line.get_color()
    )
ax.axhline(1.0, color=plotting.COLORS["data"], ls="--", label="perfect level")
ax.set(
    xscale="log",
    yscale="log",
    xlabel=r"base step $h$",
    ylabel=r"$s_K^2/\sigma_i^2$",
    title=f"technique 4 (σ_L = 0.02, γ = {gamma_demo:.2f}); dots: the rule's h",
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# What to notice: too small a step leaves the chain where the previous, wider level put
# it (ratio $\gamma^2$); too large a step overshoots into ULA's own bias. More steps per
# level allow a smaller $h$ and a ratio closer to one. **Technique 5**, the last
# of the paper, is an exponential moving average of the weights, which the course's
# `train.train` provides with `ema_decay`.
#
# ## A noise-conditional score network on the toys
#
# Everything so far used exact scores. Now we *learn* them, with one network for all
# levels. The loss is chapter 1's denoising score matching, summed over the levels with
# weight $\lambda(\sigma) = \sigma^2$ (Song & Ermon 2019, eqs. 5–6):
#
# $$ \mathcal L(\theta) = \frac1L \sum_{i=1}^L \frac{\sigma_i^2}{2}\,
#    \mathbb E_{x,\varepsilon}\Big\| s_\theta(x + \sigma_i\varepsilon,\, \sigma_i) + \frac{\varepsilon}{\sigma_i}\Big\|^2
#    = \frac1L \sum_{i=1}^L \frac12\, \mathbb E\big\|\sigma_i\, s_\theta(x + \sigma_i \varepsilon, \sigma_i) + \varepsilon\big\|^2. $$
#
# The weight $\sigma_i^2$ makes each level contribute about equally: $\sigma s$ is of order
# one at every level, while $s$ itself spans a factor $\sigma_1/\sigma_L$ of several
# hundred. In practice one level is drawn at random per sample.

# %%
course_lib.show(multi_noise_dsm, docstring=False)

# %%
course_lib.show(NoiseConditionalScore)

# %% [markdown]
# We train one MLP per toy on `gaussians8` (eight separated modes: the weights problem)
# and `moons` (two curved, thin shapes), with $\sigma_1$ from technique 1, $\sigma_L = 0.02$,
# thirty geometric levels, and an exponential moving average of the weights.

# %%
ncsn_toys = ["gaussians8", "moons"]
n_levels_toy = cfg.pick(smoke=10, cpu=30, gpu=30)
sigma_min_toy = 0.02
steps_toy = cfg.pick(smoke=40, cpu=6000, gpu=8000)
toy_runs = {}
for name in ncsn_toys:
    x_train = toys.sample(name, 20_000, generator)
    s1 = langevin.sigma_max_rule(x_train, generator=generator)
    sigmas = langevin.geometric_sigmas(s1, sigma_min_toy, n_levels_toy)
    model = NoiseConditionalScore(MLP(dim=2, hidden=cfg.pick(smoke=16, cpu=64, gpu=128), depth=3))
    result = train.train(
        model,
        lambda m, x, sigmas=sigmas: multi_noise_dsm(m, x, sigmas),
        train.random_batches(x_train, batch_size=256, generator=generator),
        steps=steps_toy,
        lr=3e-3,
        ema_decay=0.995,
        progress=True,
        desc=f"NCSN on {name}",
    )
    toy_runs[name] = {"sigmas": sigmas, "result": result, "data": x_train}
    print(f"{name}: sigma_1 = {s1:.2f}, {steps_toy} steps in {result.seconds:.1f} s")

fig, axes = plotting.figure_row(len(ncsn_toys), size=4.0)
for ax, name in zip(axes, ncsn_toys, strict=True):
    plotting.loss_curve(
        toy_runs[name]["result"].losses, ax=ax, title=f"multi-noise DSM loss, {name}"
    )
fig.tight_layout()
plt.show()

# %% [markdown]
# Now sample each model with annealed Langevin dynamics, and — to separate the error of
# the *network* from the error of the *sampler* — run the same sampler with the exact
# noised scores of the toy's Gaussian-mixture twin. Both runs start from the **same**
# points and use the **same** noise (two generators with one seed): any difference in
# their samples comes from the score alone. The MMD of each to a fresh sample of the toy
# is set beside the floor, the MMD between two independent samples of the toy.
#
# Near the floor, the MMD of one draw of a few thousand points moves by tens of percent
# from seed to seed, and a ratio of two such numbers even more. So each sampler runs on
# several independent batches at once (one vectorised run) and we average the MMD over
# them, each batch against its own fresh reference sample.

# %%
n_eval = cfg.pick(smoke=300, cpu=2000, gpu=4000)
n_repeats = cfg.pick(smoke=1, cpu=4, gpu=4)  # independent batches the MMD is averaged over
steps_each_toy = cfg.pick(smoke=3, cpu=10, gpu=10)
fig, axes = plt.subplots(2, len(ncsn_toys), figsize=(4.0 * len(ncsn_toys), 8.0), squeeze=False)
toy_quality = {}
for j, name in enumerate(ncsn_toys):
    run = toy_runs[name]
    sigmas = run["sigmas"]
    h_toy = langevin.step_size_rule(sigma_min_toy, steps_each_toy, float(sigmas[0] / sigmas[1]))
    x_init = float(sigmas[0]) * torch.randn(n_repeats * n_eval, 2, generator=generator)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    learned = langevin.annealed_langevin(
        run["result"].best,
        x_init,
        sigmas,
        h_toy,
        steps_each_toy,
        generator=torch.Generator().manual_seed(seed),
    )
    exact = langevin.annealed_langevin(
        lf.exact_noise_score(toys.twin(name)),
        x_init,
        sigmas,
        h_toy,
        steps_each_toy,
        generator=torch.Generator().manual_seed(seed),
    )
    references = [toys.sample(name, n_eval, generator) for _ in range(n_repeats)]
    reference = references[0]
    floor = metrics.floor(
        lambda n, name=name: toys.sample(name, n, generator), n_eval, repeats=n_repeats
    )["mmd"]

    def mean_mmd(x: torch.Tensor, references: list = references) -> float:
        chunks = x.split(n_eval)
        return sum(metrics.mmd(c, r) for c, r in zip(chunks, references, strict=True)) / n_repeats

    toy_quality[name] = {
        "ncsn": mean_mmd(learned.x),
        "exact": mean_mmd(exact.x),
        "floor": floor,
        "nfe": learned.nfe,
    }
    q = toy_quality[name]
    plotting.scatter(
        learned.x[:n_eval],
        data=reference,
        ax=axes[0, j],
        label="NCSN samples",
        title=f"{name}: learned score\nmean MMD {q['ncsn']:.5f}",
    )
    plotting.scatter(
        exact.x[:n_eval],
        data=reference,
        ax=axes[1, j],
        kind="truth",
        label="exact-score samples",
        title=f"{name}: exact score\nmean MMD {q['exact']:.5f}",
    )
fig.tight_layout()
plt.show()
print(
    f"{'toy':>11} | {'NFE':>4} | {'MMD NCSN':>9} | {'MMD exact':>9} | {'floor':>8} | NCSN / exact"
)
for name, q in toy_quality.items():
    print(
        f"{name:>11} | {q['nfe']:4d} | {q['ncsn']:9.5f} | {q['exact']:9.5f} | {q['floor']:8.5f} | "
        f"{q['ncsn'] / q['exact']:.2f}x"
    )

# %% [markdown]
# What to notice. The exact-score sampler sits at the floor: with thirty levels and ten
# steps each, annealed Langevin dynamics has essentially no visible sampler error on these
# toys. The learned sampler lands close to it; the residual gap is the network's error,
# mostly at the smallest noise levels, where the true score is sharpest. (Even averaged
# over four batches, the MMD is noisy: run the cell with another seed and the ratios
# move by some ten or twenty percent. That is why the comparison also uses common
# random numbers.)
#
# Where is the learned score wrong? Compare it with the exact noised score of the twin at
# a large and a small level: at large $\sigma$ the two fields agree everywhere; at small
# $\sigma$ they agree near the data and may differ far from it — where a chain started
# from noise begins, and where the large levels have long since moved it away.

# %%
moons_model = toy_runs["moons"]["result"].best
moons_twin = toys.twin("moons")
fig, axes = plotting.figure_row(4, size=3.3)
for k, s in enumerate([1.0, 0.05]):
    s_batch = lambda x, s=s: torch.full((x.shape[0],), s)  # noqa: E731
    plotting.vector_field(
        lambda x, s=s: moons_twin.noised_score(x, 1.0, s),
        ax=axes[2 * k],
        title=f"exact score, σ = {s}",
        kind="truth",
        n=16,
    )
    with torch.no_grad():
        plotting.vector_field(
            lambda x, s_batch=s_batch: moons_model(x, s_batch(x)),
            ax=axes[2 * k + 1],
            title=f"learned score, σ = {s}",
            kind="model",
            n=16,
        )
fig.tight_layout()
plt.show()

# %% [markdown]
# ## MNIST: a U-Net noise-conditional score network
#
# The same recipe works on images, with a U-Net in place of the MLP (the course's small
# DDPM-style U-Net, conditioned on $c(\sigma) = \log(\sigma)/4$ through its time
# embedding, and divided by $\sigma$). The pixels are scaled to $[-1, 1]$, so technique 1
# gives a $\sigma_1$ of about thirty: the largest distance between two digits. We stop at
# $\sigma_L = 0.05$, a fortieth of the pixel range: below it the noise is invisible, the
# score is hardest to learn, and the final Tweedie step removes what is left. Technique 2
# then asks for over eighty levels in 784 dimensions.
#
# A CPU budget of a couple of minutes is tiny for an image model: the original NCSN
# trained for 200,000 steps at batch 128 on a GPU. The `cpu` profile therefore trains a
# small U-Net (about 0.3 M parameters) for five hundred steps: enough for digit-like
# strokes. The `gpu` profile trains a larger net for longer.

# %%
mnist = data.load("mnist", split=cfg.train_split)
x_mnist = mnist.subset(cfg.pick(smoke=1000, cpu=10_000, gpu=60_000), generator).to_float()
mnist_sigma_1 = langevin.sigma_max_rule(x_mnist, generator=generator)
mnist_sigma_L = 0.05
mnist_L = langevin.n_levels_rule(mnist_sigma_1, mnist_sigma_L, 784)
mnist_L = cfg.pick(smoke=10, cpu=mnist_L, gpu=mnist_L)  # smoke: a few levels, every code path
mnist_sigmas = langevin.geometric_sigmas(mnist_sigma_1, mnist_sigma_L, mnist_L)
print(
    f"sigma_1 = {mnist_sigma_1:.1f} (technique 1), L = {mnist_L} levels down to "
    f"{mnist_sigma_L} (technique 2), ratio gamma = {float(mnist_sigmas[0] / mnist_sigmas[1]):.3f}"
)

unet = NoiseConditionalScore(
    UNet(
        in_channels=1,
        base_channels=cfg.pick(smoke=8, cpu=16, gpu=32),
        channel_mults=cfg.pick(smoke=(1, 2), cpu=(1, 2, 2), gpu=(1, 2, 2)),
        num_res_blocks=1,
        attention_levels=cfg.pick(smoke=(), cpu=(), gpu=(1,)),
    )
).to(cfg.device)
mnist_result = train.train(
    unet,
    lambda m, x: multi_noise_dsm(m, x, mnist_sigmas),
    train.random_batches(
        x_mnist.to(cfg.device), batch_size=cfg.pick(smoke=8, cpu=64, gpu=128), generator=generator
    ),
    steps=cfg.pick(smoke=4, cpu=500, gpu=8000),
    lr=2e-3,
    ema_decay=cfg.pick(smoke=0.9, cpu=0.99, gpu=0.999),
    amp=cfg.use_amp,
    progress=True,
    desc="NCSN U-Net on MNIST",
)
print(
    f"{sum(p.numel() for p in unet.parameters()):,} parameters, {mnist_result.steps} steps "
    f"in {mnist_result.seconds:.0f} s"
)
plotting.loss_curve(mnist_result.losses, title="multi-noise DSM loss, MNIST")
plt.show()

# %% [markdown]
# Sampling: $K$ steps per level from $\sigma_1\,\mathcal N(0, I)$, the step from
# technique 4, and the final Tweedie denoising step. To see what the number of steps per
# level does, the same network is also sampled with a single step per level. The
# trajectory is recorded at a few levels to watch a digit condense out of noise.


# %%
def sample_mnist(steps_each: int, n: int, keep: int | None = None):
    h = langevin.step_size_rule(mnist_sigma_L, steps_each, float(mnist_sigmas[0] / mnist_sigmas[1]))
    return langevin.annealed_langevin(
        mnist_result.best,
        mnist_sigma_1 * torch.randn(n, 1, 28, 28, generator=generator).to(cfg.device),
        mnist_sigmas.to(cfg.device),
        h,
        steps_each,
        generator=generator,
        keep=keep,
    )


mnist_K = cfg.pick(smoke=1, cpu=5, gpu=5)
n_images = cfg.pick(smoke=8, cpu=36, gpu=100)
sample_start = time.perf_counter()
mnist_run = sample_mnist(mnist_K, n_images, keep=max(1, mnist_L * mnist_K // 7))
mnist_sample_seconds = time.perf_counter() - sample_start
hasty_run = sample_mnist(1, cfg.pick(smoke=4, cpu=16, gpu=16))

fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), gridspec_kw={"width_ratios": [2, 3, 3]})
plotting.image_grid(
    hasty_run.x.cpu(), ax=axes[0], title=f"K = 1 step per level\n({hasty_run.nfe} NFE)"
)
plotting.image_grid(
    mnist_run.x[:64].cpu(),
    ax=axes[1],
    title=f"K = {mnist_K} steps per level\n({mnist_run.nfe} NFE)",
)
plotting.image_grid(x_mnist[: min(64, n_images)], ax=axes[2], title="training digits\n")
fig.suptitle("NCSN samples on MNIST: the same network, two samplers")
fig.tight_layout()
plt.show()
path = mnist_run.trajectory[:, :8]  # (S, 8, 1, 28, 28): eight chains over the levels
plotting.image_grid(
    path.transpose(0, 1).reshape(-1, 1, 28, 28),
    nrow=path.shape[0],
    title="eight chains (rows), from σ_1 (left) to the denoised sample (right)",
)
plt.show()
print(f"noise levels along the rows: {[round(float(t), 3) for t in mnist_run.times]}")
print(f"sampling {n_images} images with K = {mnist_K} took {mnist_sample_seconds:.1f} s")

# %% [markdown]
# What to notice. The left column of the trajectory is pure noise of size $\sigma_1$
# (clipped to the display range); the digits condense at the middle levels, around
# $\sigma \approx 1$ to $0.1$, where the coarse shape is decided, and the last levels only
# sharpen strokes. The comparison of the two samplers is the image version of the
# "how slowly must we anneal?" table: with one step per level the chains never catch up
# with the falling noise, and the samples are scribbles of the right stroke width; with
# five, the *same* network gives digit-like shapes. With a budget of a few minutes on a
# CPU, expect many of the samples to be strokes, loops and fragments rather than clean
# digits; the network, trained for five hundred steps, is the bottleneck. The `gpu`
# profile trains a larger U-Net sixteen times longer (8,000 steps against 500) with the
# same code.
#
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
card = [
    ("run", cfg.describe()),
    ("chapter wall time", f"{elapsed:.1f} s"),
    ("quality: ULA mode-weight error", f"{ula_weight_error:.3f}  (exact score, broad start)"),
    (
        "quality: annealed mode-weight error",
        f"{annealed_weight_error:.3f}  (exact noised scores)",
    ),
]
for name, q in toy_quality.items():
    card.append(
        (
            f"quality: NCSN MMD / exact-score MMD, {name}",
            f"{q['ncsn'] / q['exact']:.2f}x  "
            f"(NCSN {q['ncsn']:.5f}, exact {q['exact']:.5f}, floor {q['floor']:.5f})",
        )
    )
for name, q in toy_quality.items():
    card.append((f"quality: NCSN MMD / floor, {name}", f"{q['ncsn'] / q['floor']:.2f}x"))
card += [
    (
        "MNIST U-Net NCSN",
        f"{mnist_result.steps} steps, {mnist_result.seconds:.0f} s training, "
        f"{mnist_run.nfe} NFE per sample",
    ),
    (
        "published: NCSN (Song & Ermon 2019)",
        "MNIST: 200k steps at batch 128 on a GPU, no FID",
    ),
]
results_card(card)

# %% [markdown]
# How to read it. The first two lines are the chapter's motivating picture in numbers:
# with the same exact score, plain Langevin misses the 0.8/0.2 weights by about 0.3,
# annealed Langevin by about the sampling noise. The toy lines compare the learned
# sampler with the *same* sampler run on exact scores (a ratio near one means the network
# is as good as the truth for this sampler) and with the floor of the MMD (what a perfect
# sampler would score). For MNIST there is no standard sample-quality number (papers
# use either Inception features of upsampled digits or a small classifier's features,
# and the two are not comparable), so the card states the budget; the original NCSN showed MNIST
# samples after 200,000 training steps at batch 128 on a GPU, against five hundred CPU
# steps here.
#
# ## Summary
#
# * The **Langevin equation** $dx = \frac12\nabla\log p\,dt + dW$ has $p$ as its
#   stationary law, and the KL divergence to $p$ decreases at half the Fisher divergence:
#   a score is all a sampler needs. Its Euler–Maruyama discretisation is **ULA**,
#   $x \leftarrow x + \frac h2\nabla\log p(x) + \sqrt h\,z$.
# * A finite step **biases** ULA: on $\mathcal N(0,\sigma^2)$ its variance is
#   $\sigma^2/(1 - h/4\sigma^2)$, and it diverges for $h \ge 4\sigma^2$. **MALA** removes
#   the bias with a Metropolis test but needs $\log p$, which a score network does not give.
# * The score inside a mode **ignores the mode's weight**, and crossing a valley takes a
#   time exponential in its depth: plain Langevin keeps the weights of its starting points.
#   Learned scores add a second failure: they are wrong where there is no data.
# * **Annealed Langevin dynamics** (NCSN) samples a sequence of noised laws
#   $p_{\sigma_1}, \dots, p_{\sigma_L}$ with steps $h_i = h\,\sigma_i^2/\sigma_L^2$,
#   fixing the weights while the modes still overlap; improved NCSN chooses $\sigma_1$
#   (largest pairwise distance), $L$ (overlapping shells) and $h$ (a one-point model).
# * One **noise-conditional score network** $s_\theta(x, \sigma)$, trained with
#   multi-level denoising score matching, drives the sampler: on the toys it comes close
#   to the exact-score sampler; on MNIST a small CPU budget gives strokes.
#
# ## Further reading
#
# * Song & Ermon, *Generative modeling by estimating gradients of the data distribution*
#   {cite}`song2019ncsn`: the mixing and low-density failures, noise-conditional score
#   networks and annealed Langevin dynamics (Algorithm 1).
# * Song & Ermon, *Improved techniques for training score-based generative models*
#   {cite}`song2020improved`: the rules for $\sigma_1$, the number of levels, the step
#   size, $\text{net}/\sigma$ and the EMA, with the analysis behind them.
# * Yang Song's blog post {cite}`song2021blog`, which tells this chapter's story with
#   beautiful figures, and Lilian Weng's overview {cite}`weng2021diffusion`.
# * Roberts & Tweedie {cite}`roberts1996langevin` on the convergence of Langevin
#   diffusions and their discretisations (ULA and MALA); Roberts & Rosenthal
#   {cite}`roberts1998optimal` on MALA's step in high dimension; Welling & Teh
#   {cite}`welling2011sgld` on Langevin dynamics with stochastic gradients.
# * Jolicoeur-Martineau et al. {cite}`jolicoeur2021adversarial` on the final denoising
#   step. Chapter 5 shows that annealed Langevin dynamics is a discretised *reverse-time
#   SDE* {cite}`song2021sde`, and adds a predictor to its corrector.
