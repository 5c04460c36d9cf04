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
# # 5. SDEs, the probability-flow ODE, exact likelihoods and fast samplers
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/05_sde_ode/05_sde_ode.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Derive* the forward SDEs (VE, VP, sub-VP) as limits of chapters 2 and 3, Anderson's reverse-time SDE and the probability-flow ODE from the Fokker–Planck equation, and the instantaneous change of variables that makes the ODE an exact likelihood. *Implement* the probability-flow drift, EDM's preconditioning and the 8-bit bits/dim offset. *Sample* chapter 3's trained networks with predictor–corrector, ODE solvers and EDM's Heun sampler through tested conversions. *Compare* every sampler against its number of network calls with a KL yardstick whose floor is known exactly. |
# | **Prerequisites** | Chapters 1–4: denoising score matching and Tweedie's formula, annealed Langevin dynamics and its noise ladder, DDPM's chain and its bound in bits/dim, DDIM as Euler's method. Calculus of several variables (divergence, integration by parts); no stochastic calculus beyond the one rule this chapter states. |
# | **Run time** | `smoke` ≈ 25 s · `cpu` ≈ 4 min once chapter 3 has trained its models (they are loaded from disk; about 6 min if this chapter has to train them and the evaluation classifier) · `gpu` not yet measured |

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
from course_lib import (
    data,
    ddim,
    ddpm,
    edm,
    evaluate,
    image_diffusion,
    langevin,
    likelihood,
    metrics,
    plotting,
    schedules,
    toy_diffusion,
    toys,
)
from course_lib import ddim_figures as df
from course_lib import sde as sdes
from course_lib import sde_figures as sf
from course_lib.exercises import ch05

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: thirty-five network calls, three answers
#
# Chapters 3 and 4 ended with one trained network and several ways to use it. DDPM's
# ancestral sampler needs a thousand network calls per sample; DDIM gets good samples
# from fifty. Both were derived from *discrete* chains: a fixed grid of noise levels,
# a step rule tied to it. This chapter lets the number of steps go to infinity, and
# finds on the other side a differential equation — stochastic or deterministic — that
# every one of those samplers approximates. Once the sampler is a differential
# equation, sixty years of numerical analysis apply: better integrators, better grids,
# error control, and, for the deterministic equation, an exact likelihood.
#
# First the problem, on the `moons` toy's Gaussian-mixture twin, whose noise predictor
# and denoiser we know exactly (chapter 0). Three samplers each get the same budget of
# **35 calls** of the same perfect network, from the same noise: DDPM's ancestral
# sampler on a 35-step chain, DDIM with 35 steps, and the Heun sampler of Karras et al.
# {cite}`karras2022edm` ("EDM") with 18 steps. Each panel is titled with a quality
# measure that this chapter uses throughout, the **KL divergence** from the samples'
# law $q$ to the target $p$,
#
# $$ \mathrm{KL}(q\,\|\,p) = \mathbb E_q[-\log p(x)] - H(q), $$
#
# in nats: the first term averages the twin's exact $-\log p$ over the samples, the
# second is the entropy of the samples, estimated from the distances to their nearest
# neighbours (Kozachenko & Leonenko {cite}`kozachenko1987entropy`, explained below).
# Even exact samples score a little above zero, because the entropy estimate is biased
# at finite sample size: that **floor** is printed beside every result in this chapter.

# %%
toy_name = "moons"
twin = toys.twin(toy_name)  # the Gaussian mixture fitted to the toy (chapter 0)
schedule = schedules.linear_schedule(1000)  # chapter 3's schedule, T = 1000
T = schedule.T
exact_eps = ddpm.exact_model(twin, schedule)  # the Bayes-optimal eps-predictor (chapter 3)
exact_D = edm.exact_denoiser(twin)  # the same knowledge as a denoiser E[x0 | x0 + sigma eps]
sigma_lo, sigma_hi = edm.sigma_range(schedule)  # the noise levels chapter 3's nets know
sigma_min = 1.001 * sigma_lo  # EDM grids end here, just inside the trained range
sigma_max_toy = langevin.sigma_max_rule(twin.sample(4000, generator))  # chapter 2's rule


def kl_to_twin(x):
    return metrics.kl_divergence(x, twin.log_prob)


n_toy = cfg.pick(smoke=500, cpu=2000, gpu=4000)
z_toy = torch.randn(n_toy, 2, generator=generator)  # one noise draw for every sampler
budget = {
    "DDPM ancestral, 35-step chain": ddpm.ancestral_sample(
        exact_eps,
        z_toy,
        schedules.respace(schedule, ddim.timesteps(T, 35)),
        "beta",
        generator=torch.Generator().manual_seed(1),
    ),
    "DDIM, 35 steps": ddim.ddim_sample(exact_eps, z_toy, schedule, 35),
    "EDM Heun, 18 steps": edm.heun_sample(
        exact_D, sigma_max_toy * z_toy, edm.time_grid(18, sigma_min, sigma_max_toy)
    ),
}
floor_toy = metrics.kl_floor(
    lambda n: twin.sample(n, generator),
    twin.log_prob,
    n_toy,
    repeats=cfg.pick(smoke=3, cpu=5, gpu=5),
)
fig, axes = plotting.figure_row(4, size=3.3)
truth = twin.sample(n_toy, generator)
plotting.scatter(
    truth,
    ax=axes[0],
    kind="truth",
    label="exact samples",
    title=f"exact samples\nKL {kl_to_twin(truth):.3f}",
)
for ax, (title, res) in zip(axes[1:], budget.items(), strict=True):
    plotting.scatter(
        res.x.clamp(-3, 3),
        data=truth,
        ax=ax,
        label="samples",
        title=f"{title}\n{res.nfe} NFE, KL {kl_to_twin(res.x):.3f}",
    )
fig.suptitle(
    f"the exact model of the moons twin, 35 network calls each "
    f"(floor of {n_toy} exact samples: {floor_toy.mean:.3f} ± {floor_toy.std:.3f} nats)"
)
fig.tight_layout()
plt.show()

# %% [markdown]
# Same network, same noise, same cost — and the KLs differ by a factor of several.
# DDPM's 35-step chain leaves points between the moons; DDIM's samples are crisper but,
# as chapter 4 showed, too concentrated (its last step lands on posterior means); EDM's
# Heun sampler is close to the floor. None of this is about the network: it is exact.
# It is about *how the sampler integrates* an equation that all three approximate, and
# on *which grid*. To see that equation, we write the forward process in continuous
# time.
#
# ## 1. Forward SDEs: the chains of chapters 2 and 3 in continuous time
#
# ### From a chain to a stochastic differential equation
#
# Chapter 3's forward chain adds a little noise at each of its $T$ steps,
# $x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z_i$ with $z_i \sim \mathcal N(0, I)$.
# ($T$ counts the steps of a discrete chain, as in chapter 3; from section 3 on, $N$
# counts the steps of a sampler's grid.) Put the steps on a time axis $t \in [0, 1]$,
# step $i$ at time $t_i$, a spacing $\Delta t = 1/T$ apart, and let the betas scale
# with the step, $\beta_i = \beta(t_i)\,\Delta t$ for a smooth rate $\beta(t)$. For small
# $\Delta t$, $\sqrt{1-\beta(t)\Delta t} = 1 - \tfrac12\beta(t)\Delta t + O(\Delta t^2)$,
# so
#
# $$ x_{t+\Delta t} - x_t = -\tfrac12\beta(t)\,x_t\,\Delta t + \sqrt{\beta(t)}\,\sqrt{\Delta t}\,z + O(\Delta t^2). $$
#
# The noise term is the increment of a Brownian motion $w$ over $\Delta t$:
# $\sqrt{\Delta t}\,z \sim \mathcal N(0, \Delta t\, I)$, written $dw$. As $T \to \infty$
# the chain becomes the **variance-preserving (VP) SDE** of Song et al.
# {cite}`song2021sde`,
#
# $$ dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw . $$
#
# The same limit of chapter 2's noise ladder, $x_i = x_{i-1} + \sqrt{\sigma_i^2 - \sigma_{i-1}^2}\,z_i$,
# has no drift and a noise variance equal to the growth of $\sigma^2$: the **variance-exploding (VE) SDE**
# $dx = \sqrt{d[\sigma^2(t)]/dt}\;dw$. Both are instances of
#
# $$ dx = f(x, t)\,dt + g(t)\,dw , $$
#
# with a drift $f$ and a diffusion coefficient $g$. Simulating it with small steps,
# $x \leftarrow x + f\,h + g\sqrt{h}\,z$, is the Euler–Maruyama method. The discrete
# chains agree with Euler–Maruyama to first order in the step: DDPM's
# $\sqrt{1-\beta_i}\,x$ is Euler–Maruyama's $(1 - \tfrac12\beta_i)\,x$ up to
# $O(\beta_i^2)$. They are also *exact* transitions of these SDEs, on the right grid:
# VE's ladder is the exact transition between the times $t_i$ of its levels, and DDPM's
# chain is the exact VP transition on the grid where $a(t_i)^2 = \bar\alpha_i$ ($a(t)$ is
# the mean scale derived below) — close to a uniform grid, not equal to one: DDPM's
# $\bar\alpha_{1000} = 4.04 \cdot 10^{-5}$ is $a(t)^2$ at $t = 1.0034$. Score SDE's
# defaults are $\beta(t) = 0.1 + 19.9\,t$ — which with $\beta_i = \beta(t_i)/T$ on the
# $T = 1000$ points $t_i = (i-1)/(T-1)$, both ends included (what `VPSDE.discretize`
# does), gives *exactly* DDPM's linear schedule $\beta_i \in [10^{-4}, 0.02]$; on
# $t_i = i/T$ the first beta would be $1.2 \cdot 10^{-4}$ — and
# $\sigma(t) = 0.01 \cdot 5000^{t}$, chapter 2's geometric ladder from 0.01 to 50.
#
# ### The marginals in closed form
#
# Because the drift is linear in $x$ and $g$ does not depend on $x$, $x_t$ given $x_0$
# stays Gaussian. Its mean and variance follow from two ordinary differential
# equations. Take the drift $f = -\tfrac12\beta(t)\,x$ of VP and sub-VP; VE is the case
# $\beta = 0$. Taking expectations of $dx$ kills the noise: $dm/dt = -\tfrac12\beta(t)m$,
# so $m(t) = a(t)\,x_0$ with $a(t) = e^{-B(t)/2}$, $B(t) = \int_0^t\beta(u)\,du$. For the
# variance $v$ of one coordinate, the one rule of stochastic calculus this chapter needs
# is that $(dw)^2 = dt$ (a Brownian increment has variance $dt$, so its square is of
# order $dt$, not $dt^2$). A Taylor expansion of $x^2$ to second order then keeps
# $(dx)^2 = g^2\,dt$:
#
# $$ d(x^2) = 2x\,dx + g^2\,dt = \big(-\beta\,x^2 + g^2\big)\,dt + 2g\,x\,dw . $$
#
# Taking expectations, $d\,\mathbb E[x^2] = \big(-\beta\,\mathbb E[x^2] + g^2\big)\,dt$,
# while the squared mean obeys $d(m^2) = 2m\,dm = -\beta\,m^2\,dt$. Subtract, since
# $v = \mathbb E[x^2] - m^2$:
#
# $$ \frac{dv}{dt} = -\beta(t)\,v + g(t)^2 . $$
#
# For VP, $g^2 = \beta$ and $v(0) = 0$ give $v = 1 - e^{-B}$: the mean shrinks exactly
# as fast as noise is added, $a^2 + v = 1$, hence the name. For VE, $f = 0$ and
# $v = \sigma^2(t) - \sigma^2(0)$. Song et al. also proposed a third family, **sub-VP**,
# with $g^2 = \beta(1 - e^{-2B})$: substituting shows $v = (1 - e^{-B})^2$, the VP
# variance squared, smaller at every $t$ (which gave them better likelihoods). In every
# case
#
# $$ x_t \mid x_0 \sim \mathcal N\big(a(t)\,x_0,\ \mathrm{std}(t)^2 I\big), $$
#
# and, in EDM's letters, $x_t = s(t)\big(x_0 + \sigma(t)\,\varepsilon\big)$ with scale
# $s = a$ and noise level $\sigma = \mathrm{std}/a$ — chapter 4's $\bar\sigma$, the
# noise-to-signal ratio. Here is the VP family as the course implements it; the other
# two are its siblings in `course_lib/sde.py`.

# %%
course_lib.show(sdes.VPSDE)

# %%
vp, ve, subvp = sdes.VPSDE(), sdes.VESDE(), sdes.SubVPSDE()
families = {"VE": ve, "VP": vp, "sub-VP": subvp}
fig = sf.plot_families(families)
plt.show()
fig = sf.plot_forward_paths(families, n_paths=cfg.pick(smoke=4, cpu=12, gpu=12))
plt.show()

# %% [markdown]
# What to notice. VP and sub-VP share the mean scale $a(t)$ and both end near
# $\mathcal N(0, I)$; VE keeps the mean and lets the noise grow to $\sigma_{\max} = 50$
# (its panel has a logarithmic axis). The paths fan out inside the closed-form bands
# $a(t)x_0 \pm 2\,\mathrm{std}(t)$, which is what the course's tests check by Monte Carlo.
# In EDM's noise level $\sigma(t)$ (right of the first figure) the three are just
# different clocks for the same thing: VE's $\sigma$ ends at 50, VP's at about 150.
#
# The discretisations, as promised. `discretize` returns chapter 3's schedule and
# chapter 2's ladder, and the exact transition between two times,
# $x_t \mid x_s \sim \mathcal N(A\,x_s, G^2 I)$ with $A = a(t)/a(s)$ and
# $G^2 = \mathrm{std}(t)^2 - A^2\mathrm{std}(s)^2$, is one step of the chains (the tests
# in `tests/test_sde.py` check all of this to round-off):

# %%
course_lib.show(sdes.SDE.transition, docstring=False)
ddpm_chain = vp.discretize(1000)
ladder = ve.discretize(10)
gaps = {
    "VP.discretize(1000) vs chapter 3's linear schedule (betas)": (
        ddpm_chain.beta - schedules.linear_schedule(1000).beta
    ),
    "VE.discretize(10) vs chapter 2's geometric ladder": ladder
    - langevin.geometric_sigmas(50.0, 0.01, 10),
}
t_ladder = torch.linspace(1, 0, 10, dtype=torch.float64)
step = ve.transition(t_ladder[1:], t_ladder[:-1])  # between consecutive ladder levels
gaps["VE transition G² vs σ_i² − σ_(i−1)² (SMLD's step)"] = step.std**2 - (
    ladder[:-1] ** 2 - ladder[1:] ** 2
)
for name, gap in gaps.items():
    print(f"{name:<56} max |difference| = {gap.abs().max():.1e}")

# %% [markdown]
# ## 2. Reversing time
#
# ### The Fokker–Planck equation
#
# We want to run the process backwards: start from noise at $t = 1$ and arrive at data
# at $t = 0$. The tool is the equation that the *densities* $p_t$ of $x_t$ obey. Take any
# smooth test function $\varphi$. By the rule $(dw)^2 = dt$, a second-order Taylor
# expansion of $\varphi(x_t)$ keeps one second-order term (Itô's formula):
#
# $$ d\varphi(x_t) = \nabla\varphi\cdot dx + \tfrac12 g^2\,\Delta\varphi\,dt
#    = \big(\nabla\varphi\cdot f + \tfrac12 g^2\,\Delta\varphi\big)\,dt + g\,\nabla\varphi\cdot dw . $$
#
# The $dw$ term has mean zero, so
# $\frac{d}{dt}\int \varphi\, p_t\,dx = \int \big(\nabla\varphi\cdot f + \tfrac12 g^2\Delta\varphi\big)\,p_t\,dx$.
# Integrate by parts on the right, once for the first term and twice for the second,
# so that $\varphi$ stands alone; since $\varphi$ was arbitrary, the two densities must
# agree pointwise:
#
# $$ \partial_t p_t = -\nabla\cdot\big(f\,p_t\big) + \tfrac12 g^2\,\Delta p_t \qquad \text{(Fokker–Planck)}. $$
#
# The first term transports probability along the drift; the second is the heat
# equation, spreading it out.
#
# ### The probability-flow ODE
#
# The key step is a one-line identity: $\nabla p = p\,\nabla\log p$, so the heat term is
# itself a divergence, $\tfrac12 g^2\Delta p_t = \nabla\cdot\big(\tfrac12 g^2\,p_t\nabla\log p_t\big)$.
# Substituting,
#
# $$ \partial_t p_t = -\nabla\cdot\Big(\big[f - \tfrac12 g^2\,\nabla\log p_t\big]\,p_t\Big). $$
#
# This is a **continuity equation** $\partial_t p + \nabla\cdot(u\,p) = 0$ with the
# velocity field
#
# $$ u(x, t) = f(x, t) - \tfrac12 g(t)^2\,\nabla\log p_t(x) . $$
#
# A continuity equation is what the density of *any* deterministic flow obeys: if
# points move by $dx/dt = u(x, t)$, probability mass is neither created nor destroyed,
# only carried along. So the ordinary differential equation $dx/dt = u(x, t)$ — the
# **probability-flow ODE** (score SDE, eq. 13) — moves a sample of $p_1$ at $t = 1$ to
# a sample of $p_t$ at every $t$, and to a sample of the data at $t = 0$. It has the same
# marginals as the SDE and no noise at all. The only unknown in it is the score
# $\nabla\log p_t$, exactly what chapters 1–3 taught a network to estimate. (Chapter 4
# met it already: DDIM with $\eta = 0$ is Euler's method for this ODE written in the
# unscaled variable $\hat x = x/a(t)$ against the noise level $\sigma = \mathrm{std}/a$,
# the form section 5 derives.)
#
# ### A family of reverse processes, and Anderson's SDE
#
# There is nothing special about taking *all* of the heat term into the drift. For any
# $\lambda \ge 0$, write $\tfrac12 g^2\Delta p = \tfrac{1+\lambda^2}{2}g^2\Delta p - \tfrac{\lambda^2}{2}g^2\Delta p$
# and move only the first part into the drift:
#
# $$ \partial_t p_t = -\nabla\cdot\big(u_\lambda\,p_t\big) - \tfrac{\lambda^2}{2}g^2\,\Delta p_t,
#    \qquad u_\lambda = f - \tfrac{1+\lambda^2}{2}\,g^2\,\nabla\log p_t . $$
#
# Now read it backwards. In reversed time $\tau = 1 - t$, the densities $q_\tau = p_{1-\tau}$
# satisfy $\partial_\tau q = -\partial_t p = -\nabla\cdot\big((-u_\lambda)\,q\big) + \tfrac{\lambda^2}{2}g^2\Delta q$:
# a Fokker–Planck equation with drift $-u_\lambda$ and diffusion coefficient $\lambda g$,
# now with the correct sign for a heat equation. So the process
#
# $$ dx = u_\lambda(x, t)\,dt + \lambda\,g(t)\,d\bar w, \qquad t \text{ running from 1 down to 0}, $$
#
# where $d\bar w$ is a Brownian increment in reversed time and $dt < 0$, has the marginals
# $p_t$ for every $\lambda$. The value $\lambda = 0$ is the probability-flow ODE;
# $\lambda = 1$ is **Anderson's reverse-time SDE** {cite}`anderson1982reverse`,
#
# $$ dx = \big[f(x, t) - g(t)^2\,\nabla\log p_t(x)\big]\,dt + g(t)\,d\bar w , $$
#
# which is special in a stronger sense: Anderson showed that it reproduces the whole
# *path* of the forward process in law, not only its marginals — and DDPM's ancestral
# sampler is a discretisation of it (`sde.ancestral_step` reproduces DDPM's Algorithm 2
# step for step on DDPM's grid, a tested identity). Larger $\lambda$ add more
# noise and correct it with a stronger pull up the density. This "same marginals, any
# amount of noise" view is the one of MIT's 6.S184 lecture notes
# {cite}`holderrieth2025introduction`, and EDM's eq. 6 writes the same family in $\sigma$-time.
# In code, the whole family is one function:

# %%
course_lib.show(sdes.reverse_drift)

# %% [markdown]
# ### Exercise 5.1: the probability-flow drift
#
# Write `pf_drift(f, g, score)` that returns the probability-flow velocity
# $u = f - \tfrac12 g^2\,\nabla\log p_t$ for a batch: `f` and `score` of shape `(B, D)`,
# `g` of shape `(B,)`.


# %% tags=["exercise"]
def pf_drift(f, g, score):
    # YOUR CODE HERE: return u, shape (B, D)
    raise NotImplementedError


# %%
ch05.check_pf_drift(pf_drift)


# %% tags=["solution", "hide-input"]
def pf_drift(f, g, score):
    return f - 0.5 * g[:, None] ** 2 * score


ch05.check_pf_drift(pf_drift)

# %% [markdown]
# The common mistake is to take the reverse SDE's drift, $f - g^2\nabla\log p_t$, and
# drop its noise: half of that score term is there only to undo the spreading of the
# noise, so without the noise the samples collapse onto the modes.
#
# ### Watching the family
#
# With the twin's exact score (`sde.exact_score`, from `GaussianMixture.noised_score`
# with $a(t)$ and $\mathrm{std}(t)$), we can run the reverse processes without any
# network. All three panels start from the *same* prior draws, integrate with 100
# Euler(–Maruyama) steps from $t = 1$ to $t = 10^{-3}$, and draw the same noise
# where they draw any (each panel draws fifteen paths, every fifth step):

# %%
course_lib.show(sdes.reverse_sde_sample, docstring=False)

# %%
score_vp = sdes.exact_score(vp, twin)
x1_paths = vp.prior_sample((cfg.pick(smoke=200, cpu=1000, gpu=1000), 2), generator)
family = sf.reverse_family(vp, score_vp, x1_paths, lams=[0.0, 1.0, 2.0], steps=100, keep=5)
fig, axes = plotting.figure_row(3, size=4.0)
for ax, (lam, res) in zip(axes, family.items(), strict=True):
    name = {0.0: "PF-ODE", 1.0: "Anderson's SDE"}.get(lam, "more noise")
    plotting.trajectories(
        res.trajectory.clamp(-3, 3),
        ax=ax,
        n=15,
        title=f"λ = {lam:g} ({name})\nKL {kl_to_twin(res.x):.3f}",
    )
fig.suptitle("reverse processes with the same marginals, exact score, 100 steps, same x_1")
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice. The ODE's paths are smooth and each prior point has *one* destination:
# the map from $x_1$ to $x_0$ is a deterministic, invertible function. With $\lambda = 1$
# the paths jitter and end elsewhere; with $\lambda = 2$ even more so. All three end on
# the moons, because all three have the marginals $p_t$. Their KLs differ, because
# with 100 steps the discretisation error grows with the noise: $\lambda = 2$ is
# clearly worse, and the noisy processes also end with the noise of their last step,
# of standard deviation about $\lambda g\sqrt{h}$ (score SDE removes it with one final
# denoising step, below). In continuous time all three are exact; on a grid, noise
# costs steps.
#
# The animation shows the probability flow itself: the cloud of prior samples carried
# by the ODE from $t = 1$ to $t = 0$. Nothing happens for most of the time, then the
# moons condense quickly at the end, where $\sigma(t)$ falls below about one.

# %%
anim = sf.reverse_family(
    vp, score_vp, x1_paths, lams=[0.0], steps=cfg.pick(smoke=20, cpu=100, gpu=100)
)[0.0]
display(
    HTML(
        plotting.animate(
            anim.trajectory,
            data=twin.sample(2000, generator),
            times=anim.times.tolist(),
            title="PF-ODE",
            max_frames=cfg.pick(smoke=8, cpu=50, gpu=50),
        )
    )
)

# %% [markdown]
# ### Try it: $\lambda$ and the number of steps
#
# The widget runs the reverse process of the VP SDE with the exact score for a $\lambda$
# and a number of Euler(–Maruyama) steps, always from the same prior draws, and titles
# the samples with their KL. It calls one plain, tested function, `sf.reverse_panel`.

# %%
import ipywidgets as widgets


def redraw(lam: float = 1.0, steps: int = 100) -> None:
    sf.reverse_panel(vp, twin, lam=lam, steps=steps, n=cfg.pick(smoke=300, cpu=1000, gpu=1000))
    plt.show()


widgets.interact(
    redraw,
    lam=widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.25, description="λ"),
    steps=widgets.IntSlider(value=100, min=5, max=500, step=5, description="steps"),
)

# %% [markdown]
# Things to try: ten steps at $\lambda = 0$ and at $\lambda = 1$ (the ODE degrades
# gracefully, the SDE much less so — at a fixed small budget, noise costs accuracy);
# 500 steps at any $\lambda$ (all agree: in the limit they are the same marginals);
# $\lambda = 3$ with few steps (a large noise is only safe with small steps).
#
# ## 3. Predictor–corrector sampling
#
# ### Two ways to reduce the error
#
# A reverse sampler makes two kinds of error. The **discretisation error** of each step
# leaves $x$ distributed not quite as $p_{t'}$ at the next time $t'$; and the errors
# accumulate, since the next step starts from the wrong distribution. A finer grid
# shrinks the first kind. Score SDE {cite}`song2021sde` added a second remedy: after each
# step of the reverse SDE (the **predictor**), run a few steps of an MCMC method whose
# stationary law is $p_{t'}$ (the **corrector**). Whatever the predictor got wrong, an
# MCMC chain with the right target pulls the samples back towards it. The corrector of
# choice is Langevin dynamics, chapter 2's ULA at a fixed noise level:
#
# $$ x \leftarrow x + h\,\nabla\log p_{t'}(x) + \sqrt{2h}\,z . $$
#
# Its step $h$ is set by score SDE's **signal-to-noise rule** (their Algorithms 4–5):
# the update has a "signal" $h\,\nabla\log p$ and a "noise" $\sqrt{2h}\,z$, and the rule
# fixes their ratio of norms to a constant $r$,
#
# $$ \frac{\|h\,\nabla\log p\|}{\|\sqrt{2h}\,z\|} = r
#    \quad\Longrightarrow\quad h = 2\Big(r\,\frac{\|z\|}{\|\nabla\log p\|}\Big)^2 ,$$
#
# with the norms averaged over the batch. For VP the rule carries one more factor,
# $h = 2\alpha\,(r\,\|z\|/\|\nabla\log p\|)^2$, with $\alpha = 1 - \beta_i$ in score SDE's
# code (the course uses $\alpha = A^2$, its continuous-time counterpart, with the $A$ of
# the transition below); for VE, $\alpha = 1$. The default $r = 0.16$ is the value of
# score SDE's released CIFAR-10 configurations. The rule adapts $h$ to the scale of the
# score, which changes by orders of magnitude between $t = 1$ and $t = 0$.
#
# The predictor of score SDE is **reverse diffusion** (their eq. 46). Write the forward
# chain's exact transition from $s$ to $t > s$ as $x_t = A\,x_s + G z$, that is
# $x_t = x_s + (A - 1)\,x_s + G z$: a drift increment $(A - 1)\,x$ and a noise of
# variance $G^2$. Discretise Anderson's reverse SDE,
# $dx = \big[f - g^2\nabla\log p_t\big]\,dt + g\,d\bar w$, with these same increments,
# $f\,dt \to (A - 1)\,x$ and $g^2\,dt \to G^2$, stepping back from $t$ to $s$:
#
# $$ x_s = x_t - (A - 1)\,x_t + G^2\,\nabla\log p_t(x_t) + G z
#        = (2 - A)\,x_t + G^2\,\nabla\log p_t(x_t) + G z . $$
#
# On DDPM's grid its forward transition is DDPM's chain; the update itself agrees with
# DDPM's ancestral step $\big(x_t + G^2\nabla\log p_t(x_t)\big)/A + G z$ only to first
# order in $\beta_i$ ($2 - A$ and $1/A = 1/\sqrt{1 - \beta_i}$ are both
# $1 + \tfrac12\beta_i + O(\beta_i^2)$); the exact match is `sde.ancestral_step` (section
# 2). One detail of the code below: `pc_sample` orders each step as score SDE's code
# does, not as their Algorithm 1 writes it: at each $t_i$ the corrector runs first,
# then the predictor moves on to $t_{i+1}$. It is the same alternation, except
# that the first corrector step works on the prior draws and no corrector step follows
# the last predictor step (the final denoising step does).

# %%
course_lib.show(sdes.langevin_corrector_step)

# %%
course_lib.show(sdes.pc_sample, docstring=False)

# %% [markdown]
# ### The corrector repairs a wrong distribution
#
# To see the corrector alone, give it samples of the *wrong* noise level: draws of
# $p_{t+0.1}$ (too noisy: a predictor that has not removed enough noise), and ask it to
# correct them to $p_t$ at $t = 0.05$ of the VP SDE, where the moons are still sharp.
# The KL to the exact $p_t$ after each corrector step:

# %%
t_fix = 0.05
m_fix, m_wrong = vp.marginal(t_fix), vp.marginal(t_fix + 0.1)
p_fix = twin.noised(float(m_fix.a), float(m_fix.std))  # the exact p_t, again a mixture
x_wrong = twin.noised(float(m_wrong.a), float(m_wrong.std)).sample(n_toy, generator)
n_corrector = cfg.pick(smoke=5, cpu=20, gpu=20)
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for snr in (0.05, 0.16, 0.3):
    curve = sf.corrector_repair(
        score_vp, p_fix.log_prob, x_wrong, t_fix, n_corrector, snr, torch.Generator().manual_seed(2)
    )
    ax.plot(range(n_corrector + 1), curve, "o-", ms=3, label=f"snr r = {snr}")
floor_fix = metrics.kl_floor(lambda n: p_fix.sample(n, generator), p_fix.log_prob, n_toy, repeats=3)
ax.axhspan(
    floor_fix.mean - floor_fix.std,
    floor_fix.mean + floor_fix.std,
    color="grey",
    alpha=0.3,
    label="floor",
)
ax.set(
    xlabel="corrector steps",
    ylabel="KL to p_t (nats)",
    title=f"Langevin corrector at t = {t_fix}, from p_(t+0.1)",
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The corrector alone moves the samples to the right distribution within a few steps;
# a larger $r$ means larger steps, faster progress and, past some point, a larger bias
# of the unadjusted Langevin chain (chapter 2).
#
# ### Is a corrector step worth a predictor step?
#
# A corrector step costs one network call, like a predictor step. So the fair question
# is not "does PC beat P with the same predictor steps?" (it usually does: it spends
# twice the calls) but "does PC with $N$ steps beat P with $2N$ steps?". Both at the
# same cost, $2N + 1$ calls with score SDE's final denoising step
# $x_0 = (x + \mathrm{std}^2\,\nabla\log p)/a$ at $t = 10^{-3}$. Measured on the twin, with the exact score,
# for VE and VP:

# %%
pc_steps = cfg.pick(smoke=10, cpu=20, gpu=20)
pc_seeds = cfg.pick(smoke=(0,), cpu=(0, 1), gpu=(0, 1, 2))
n_pc = cfg.pick(smoke=400, cpu=2000, gpu=4000)
pc_results = {}
for name, sde in (("VE", ve), ("VP", vp)):
    pc_results[name] = sf.pc_study(
        sde, sdes.exact_score(sde, twin), twin.log_prob, n_pc, pc_steps, pc_seeds
    )
    for row, m in pc_results[name].items():
        print(f"{name}: {row:<16} KL {m.mean:.3f} ± {m.std:.3f} nats  ({m.nfe} NFE)")
floor_pc = metrics.kl_floor(lambda n: twin.sample(n, generator), twin.log_prob, n_pc, repeats=3)
print(f"floor of {n_pc} exact samples: {floor_pc.mean:.3f} ± {floor_pc.std:.3f}")

# %% [markdown]
# How to read it. The corrector improves the predictor at equal *predictor* steps,
# most clearly for VE (score SDE's Table 1 has the same shape on CIFAR-10: VE's
# reverse-diffusion sampler goes from FID 4.79 to 3.60 with a corrector, VP's only
# from 3.21 to 3.18). At equal *cost*, with an exact score and a prior that matches
# $p_1$, the finer predictor is as good (VE) or much better (VP): a corrector step
# repairs errors, and here there are few to repair. Here the toy and the paper part
# ways. Score SDE's Table 1 also has this equal-cost column (P2000: the predictor alone
# with twice the steps), and on CIFAR-10 they find one corrector step per predictor
# step typically better than doubling the predictor steps. The difference is the
# score: the twin's is exact, while a learned score is wrong a little at every level,
# and those errors are what a corrector repairs. The uniform grid in $t$ is poor
# for VP at few steps (P with $N$ steps): VP's noise level changes fastest at small
# $t$, where a uniform grid is coarsest in $\log\sigma$. Grids, not just integrators,
# decide quality at a small budget — the lesson EDM turns into a design principle
# below. The course's tests (`tests/test_sde.py`) pin a case where the corrector wins
# at equal cost: a prior that does not match $p_1$, an error no predictor step can
# repair but an MCMC corrector can.
#
# ## 4. The probability-flow ODE as an exact likelihood
#
# ### The instantaneous change of variables
#
# An ODE is an invertible map from $x_0$ to $x_1$, so the change-of-variables formula of
# normalising flows applies. For a flow it takes a beautifully simple form (Chen et al.
# {cite}`chen2018neuralode`). Start from the continuity equation
# $\partial_t p_t + \nabla\cdot(u\,p_t) = 0$ and expand the divergence of the product:
# $\partial_t p_t + u\cdot\nabla p_t + p_t\,\nabla\cdot u = 0$. Divide by $p_t$:
#
# $$ \partial_t \log p_t + u\cdot\nabla\log p_t + \nabla\cdot u = 0 . $$
#
# Now follow one solution $x(t)$ of $dx/dt = u(x, t)$. By the chain rule, the rate of
# change of $\log p_t$ *along the path* is
# $\frac{d}{dt}\log p_t(x(t)) = \partial_t\log p_t + \nabla\log p_t\cdot u$, which by
# the previous line is
#
# $$ \frac{d}{dt}\log p_t\big(x(t)\big) = -\nabla\cdot u\big(x(t), t\big). $$
#
# Where the flow expands ($\nabla\cdot u > 0$) the density along the path falls, where
# it contracts the density rises. Integrating from $t_0$ to $t_1$:
#
# $$ \log p_{t_0}(x) = \log p_{t_1}\big(x(t_1)\big) + \int_{t_0}^{t_1} \nabla\cdot u\big(x(t), t\big)\,dt,
#    \qquad x(t_0) = x . $$
#
# To evaluate $\log p_0(x)$: solve the ODE *forward* from the data point to $t_1 = 1$,
# accumulating the divergence along the way, and add the prior's log-density at the
# end point. The discrete analogue is the familiar
# $\log p(x) = \log p(z) + \log|\det \partial z/\partial x|$; in continuous time the
# log-determinant becomes an integral of a trace ($\nabla\cdot u = \operatorname{tr}\,\partial u/\partial x$,
# Jacobi's formula). The course solves the augmented state $(x, \Delta)$ with
# $d\Delta/dt = \nabla\cdot u$ in one call of the ODE solver:

# %%
course_lib.show(likelihood.augmented_drift, docstring=False)
course_lib.show(likelihood.ode_log_likelihood, docstring=False)

# %% [markdown]
# ### Exact divergence in 2D: the likelihood equals the truth
#
# In two dimensions the divergence is cheap to compute exactly (two backward passes).
# With the twin's exact score, a tight dopri5 solve in float64 and the exact $p_1$ of
# the twin as the prior, the ODE's log-likelihood must equal the twin's `log_prob` —
# not approximately, but to the solver's tolerance:

# %%
x_lik = twin.sample(cfg.pick(smoke=32, cpu=200, gpu=500), generator).double()
pf_vp = sdes.pf_ode_drift(vp, score_vp)
log_p_t = sdes.exact_log_prob(vp, twin)


def exact_p1(z):
    return log_p_t(z, torch.ones(z.shape[0], dtype=z.dtype))


lik = likelihood.ode_log_likelihood(pf_vp, x_lik, 0.0, 1.0, exact_p1, rtol=1e-7, atol=1e-7)
lik_err = (lik.log_p - twin.log_prob(x_lik)).abs()
print(
    f"{len(x_lik)} points: max |PF-ODE log p − exact log p| = {lik_err.max():.1e} nats "
    f"({lik.nfe} evaluations of drift + divergence)"
)

# %% [markdown]
# ### Hutchinson's estimator
#
# For an image, $D = 784$ backward passes per evaluation are too many. Hutchinson's
# trick {cite}`hutchinson1989` replaces the trace by a random projection: for any
# random vector $v$ with $\mathbb E[v v^\top] = I$ (Rademacher signs or Gaussian),
#
# $$ \mathbb E_v\big[v^\top A\,v\big] = \mathbb E_v\big[\operatorname{tr}(A\,v v^\top)\big]
#    = \operatorname{tr}\big(A\,\mathbb E[v v^\top]\big) = \operatorname{tr} A , $$
#
# and $v^\top(\partial u/\partial x)\,v$ costs one vector–Jacobian product: one backward
# pass whatever $D$. FFJORD {cite}`grathwohl2019ffjord` made this the standard for
# continuous flows. One rule is essential: draw the probe $v$ **once per solve** and keep
# it fixed. Then $\int v^\top(\partial u/\partial x)v\,dt$ is a smooth ODE that the
# solver integrates accurately, and its expectation over $v$ is the exact integral, so
# the log-likelihood estimate is unbiased. A fresh probe at every evaluation would make
# the right-hand side of the ODE random: an adaptive solver's error control would chase
# the noise, and the result would be neither accurate nor cheap. Here are many
# independent probes for a few points, against the exact value:

# %%
hutch = sf.hutchinson_study(
    pf_vp,
    x_lik[:4],
    0.0,
    1.0,
    exact_p1,
    repeats=cfg.pick(smoke=20, cpu=100, gpu=200),
    generator=torch.Generator().manual_seed(3),
)
for i in range(4):
    z_score = (hutch.mean[i] - hutch.exact[i]) / hutch.standard_error[i]
    print(
        f"point {i}: exact {hutch.exact[i]:7.3f} | Hutchinson mean {hutch.mean[i]:7.3f} "
        f"± {hutch.standard_error[i]:.3f} (s.e.), one probe's spread {hutch.std[i]:.3f}, "
        f"z = {z_score:+.1f}"
    )

# %% [markdown]
# The means agree with the exact values within a few standard errors ($|z| < 3$: an
# unbiased estimator), while a *single* estimate can be off by a nat or two. In 2D a
# Rademacher probe has only two outcomes up to sign, so each estimate is one of two
# values, exact $\pm$ the integral of the off-diagonal terms. Averaged over a test set
# the scatter averages out, which is why one probe per image is enough in practice.
#
# ### Bits per dimension, and the offset for 8-bit images
#
# Images are not continuous: a pixel is one of 256 values. A continuous density can put
# arbitrarily large density on those 256 values and score arbitrarily well, so the
# number reported for images is a bound on the *discrete* likelihood, built in three
# steps (Theis et al. {cite}`theis2016note`):
#
# 1. **Dequantise**: replace each integer pixel $k$ by a uniform draw in its bin,
#    $y = (k + u)/128 - 1$ with $u \sim U[0, 1)$, so that $y \in [-1, 1)$ (our scale).
# 2. **Evaluate** the model's continuous density $\log p(y)$.
# 3. **Convert the scale.** On the 8-bit scale, $y_{256} = 128\,(y + 1)$, every bin has
#    volume one, and $\int_{\text{bin}} p_{256}$ is the model's probability of the
#    pixel value. A density transforms with the Jacobian: $p_{256}(y_{256}) = p(y)/128^D$.
#    By Jensen's inequality, $\mathbb E_u[-\log_2 p_{256}] \ge -\log_2 P(k)$, so
#
# $$ \text{bits/dim} = \frac{-\log p(y)}{D\ln 2} + \log_2 128 $$
#
# is, on average, an upper bound on the model's $-\log_2 P(k)/D$ — what score SDE's 2.99
# on CIFAR-10 is (their code evaluates it on uniformly dequantised test images). DDPM's
# 3.70 bounds the same discrete quantity another way, through its discrete decoder
# (chapter 3), with no dequantisation at all. The offset is $\log_2 128 = 7$ for data on
# $[-1, 1]$ (it would be $\log_2 256 = 8$ for data on $[0, 1]$).

# %%
course_lib.show(likelihood.bits_per_dim)

# %% [markdown]
# ### Exercise 5.2: bits per dimension
#
# Write `bits_per_dim(log_p, dim)`: bits/dim on the 8-bit scale for log-densities
# `log_p` (nats, a tensor of shape `(B,)`) of dequantised images on $[-1, 1]$ with
# `dim` dimensions.


# %% tags=["exercise"]
def bits_per_dim(log_p, dim):
    # YOUR CODE HERE
    raise NotImplementedError


# %%
ch05.check_bits_per_dim(bits_per_dim)


# %% tags=["solution", "hide-input"]
def bits_per_dim(log_p, dim):
    return -log_p / (dim * math.log(2)) + math.log2(128)


ch05.check_bits_per_dim(bits_per_dim)

# %% [markdown]
# ### The common mistakes, measured where the truth is known
#
# The docstring above lists the usual ways a likelihood goes wrong. On the twin we can
# measure each against the exact answer: the prior $\mathcal N(0, I)$ used in place of
# the true $p_1$ (the VP SDE's $a(1)^2 = e^{-10}$ makes it nearly exact; a VE SDE whose
# $\sigma_{\max}$ is too small for the data does not); the ODE started at a small
# $t_0 > 0$ instead of 0 (then it returns $\log p_{t_0}$, the density of slightly blurred
# data; score SDE calls this time $\epsilon$, a letter the course keeps for noise);
# Hutchinson's estimator. Each line is paired with the truth on the same points.

# %%
ve_small = sdes.VESDE(sigma_min=0.01, sigma_max=1.0)
lik_ve = likelihood.ode_log_likelihood(
    sdes.pf_ode_drift(ve_small, sdes.exact_score(ve_small, twin)),
    x_lik,
    0.0,
    1.0,
    ve_small.prior_log_prob,
    rtol=1e-6,
    atol=1e-6,
)
lik_eps = likelihood.ode_log_likelihood(pf_vp, x_lik, 1e-3, 1.0, exact_p1, rtol=1e-6, atol=1e-6)
lik_hutch = likelihood.ode_log_likelihood(
    pf_vp,
    x_lik,
    0.0,
    1.0,
    exact_p1,
    divergence="hutchinson",
    rtol=1e-6,
    atol=1e-6,
    generator=torch.Generator().manual_seed(4),
)
toy_rows = sf.likelihood_rows(
    {
        "truth: the twin's log p(x)": (twin.log_prob(x_lik), 0),
        "PF-ODE, exact divergence, prior p_1 (correct)": (lik.log_p, lik.nfe),
        "  Hutchinson, one probe per point and solve": (lik_hutch.log_p, lik_hutch.nfe),
        "  N(0, I) in place of p_1 (VP, β_max = 20)": (
            vp.prior_log_prob(lik.z) + lik.delta_logp,
            lik.nfe,
        ),
        "  start at t0 = 1e-3 instead of 0": (lik_eps.log_p, lik_eps.nfe),
        "VE with σ_max = 1, prior N(0, σ_max² I)": (lik_ve.log_p, lik_ve.nfe),
    },
    reference="truth: the twin's log p(x)",
)
print(sf.format_likelihood_rows(toy_rows, unit="log p, nats"))

# %% [markdown]
# What to notice: the correct recipe is exact to the solver's tolerance; Hutchinson is
# unbiased (its mean error is small against its per-point spread); $\mathcal N(0, I)$ for
# the VP prior costs nothing measurable here ($a(1)^2 = e^{-10}$), but the same mistake
# with a VE SDE whose $\sigma_{\max}$ is comparable to the data's spread costs a large
# fraction of a nat per point; starting at $t_0 = 10^{-3}$ changes little for a smooth density
# like the twin's. That last mistake is harmless here and serious for images, where the
# data are discrete and the learned score near $t = 0$ is unusable: section 7 measures
# it on MNIST.
#
# ## 5. EDM: one design space for all of them
#
# ### The ODE in $\sigma$-time
#
# Karras et al. {cite}`karras2022edm` took the probability-flow ODE and asked which of
# its ingredients are real choices. Write every model's marginal as
#
# $$ x = s(t)\,\big(x_0 + \sigma(t)\,\varepsilon\big), $$
#
# (VP: $s = \sqrt{\bar\alpha}$, $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$; VE: $s = 1$).
# The scale $s(t)$ is a change of units and the schedule $\sigma(t)$ a change of clock:
# neither changes the *paths* of the ODE when they are drawn in the unscaled variable
# $\hat x = x/s$ against $\sigma$. To see it, write $x = s(t)\,\hat x$ as an SDE: the
# drift $f = (\dot s/s)\,x$ scales the mean by $s$, and $g^2 = 2s^2\sigma\dot\sigma$ makes
# the variance grow as $(s\sigma)^2$ (check: $d(s^2\sigma^2)/dt = 2(\dot s/s)\,s^2\sigma^2 +
# g^2$). The density of $x$ is $p_t(x) = p(x/s; \sigma)/s^D$, with $p(\hat x; \sigma)$ the
# density of $x_0 + \sigma\varepsilon$, so the score is
# $\nabla_x\log p_t(x) = \nabla\log p(\hat x; \sigma)/s$. The PF-ODE is then
#
# $$ \frac{dx}{dt} = \frac{\dot s}{s}\,x - \tfrac12 g^2\,\nabla_x\log p_t(x)
#    = \frac{\dot s}{s}\,x - s\,\sigma\dot\sigma\,\nabla\log p(\hat x; \sigma)
#    \qquad \text{(EDM eq. 4)}, $$
#
# and in $\hat x = x/s$ the first term cancels:
# $d\hat x/dt = \dot x/s - (\dot s/s)\,\hat x = -\sigma\dot\sigma\,\nabla\log p(\hat x; \sigma)$.
# Divide by $\dot\sigma = d\sigma/dt$:
#
# $$ \frac{d\hat x}{d\sigma} = -\sigma\,\nabla\log p(\hat x; \sigma), $$
#
# with neither $s(t)$ nor $\sigma(t)$ left in it. So take the simplest: $s = 1$ and
# $\sigma(t) = t$ (EDM's own time then runs up to $\sigma_{\max}$; we use $\sigma$ itself
# as the clock). Then $\hat x = x_0 + \sigma\varepsilon$ is a VE process with
# $g^2 = d\sigma^2/d\sigma = 2\sigma$, and the equation above is its PF-ODE.
# Tweedie's formula (chapter 1) writes the score through the **denoiser**
# $D(\hat x; \sigma) = \mathbb E[x_0 \mid \hat x]$ (the ideal one; a network approximates it
# as $D_\theta(\hat x; \sigma)$):
# $\nabla\log p(\hat x; \sigma) = \big(D(\hat x; \sigma) - \hat x\big)/\sigma^2$, so
#
# $$ \frac{d\hat x}{d\sigma} = \frac{\hat x - D(\hat x; \sigma)}{\sigma} \qquad \text{(EDM eq. 1 with } s = 1,\ \sigma(t) = t\text{)}. $$
#
# The right-hand side is the network's noise estimate $\hat\varepsilon$: DDIM's ODE of
# chapter 4 again. For data that is a single point the paths are straight lines and
# Euler's method is exact; curvature comes only from the denoiser changing its mind.
# In this form, every model is a denoiser — the course's common currency in this
# chapter — and every sampler is an ODE or SDE solver in $\sigma$.
#
# ### Every earlier model is a special case
#
# Each earlier network is a denoiser after a conversion, which EDM writes as a
# *preconditioning* of a raw network $F_\theta$,
# $D_\theta(\hat x;\sigma) = c_{\text{skip}}(\sigma)\,\hat x + c_{\text{out}}(\sigma)\,F_\theta\big(c_{\text{in}}(\sigma)\,\hat x;\ c_{\text{noise}}(\sigma)\big)$
# (their Table 1, abridged):
#
# | | DDPM / VP ($\varepsilon$-prediction) | NCSN / VE | EDM |
# | --- | --- | --- | --- |
# | $s(t)$, $\sigma(t)$ | $\sqrt{\bar\alpha}$, $\sqrt{(1-\bar\alpha)/\bar\alpha}$ | $1$, $\sqrt{\sigma_{\text{VE}}(t)^2 - \sigma_{\text{VE}}(0)^2}$ | $1$, $t$ |
# | $c_{\text{skip}}$ | $1$ | $1$ | $\sigma_d^2/(\sigma^2+\sigma_d^2)$ |
# | $c_{\text{out}}$ | $-\sigma$ | $\sigma$ | $\sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2}$ |
# | $c_{\text{in}}$ | $1/\sqrt{\sigma^2+1}$ | $1$ | $1/\sqrt{\sigma^2+\sigma_d^2}$ |
# | $c_{\text{noise}}$ | the training step of $\sigma$: $(M-1)\,t$ in EDM, a fractional step $u(\sigma)$ in the course's adapter | $\ln(\tfrac12\sigma)$ | $\tfrac14\ln\sigma$ |
#
# Here $\sigma_{\text{VE}}(t) = 0.01 \cdot 5000^t$ is score SDE's ladder of section 1,
# and the VE entry is this chapter's exact marginal (`VESDE.edm_sigma`). EDM's Table 1
# gives VE its own clock instead, $\sigma(t) = \sqrt t$, and score SDE's code uses the
# ladder itself as the noise level (data already blurred by $\sigma_{\text{VE}}(0)$);
# they differ only in the clock and by $\sigma_{\text{VE}}(0)^2 = 10^{-4}$ in the
# variance. $c_{\text{noise}}$ is the noise-level input the network was trained with.
#
# The DDPM column is
# $D_\theta(\hat x; \sigma) = \hat x - \sigma\,\varepsilon_\theta(\hat x/\sqrt{1+\sigma^2})$:
# rescale $\hat x$ to DDPM's $x_t$, ask the network for the noise, subtract it at scale
# $\sigma$. The course's adapter also maps $\sigma$ to the network's (fractional)
# training step $u(\sigma)$, interpolating the schedule's $\sigma_i$ in $\log\sigma$:

# %%
course_lib.show(edm.denoiser_from_ddpm, docstring=False)

# %% [markdown]
# The tests check that the conversions round-trip to $10^{-10}$ in float64 and that the
# adapter turns the twin's exact $\varepsilon$-model into the twin's exact denoiser at
# the schedule's noise levels. The same check here, at twenty of them:

# %%
levels = edm.vp_sigma(schedule.alpha_bar[torch.linspace(1, T, 20).long()]).tolist()
x_clean = twin.sample(256, generator).double()
adapter = edm.denoiser_from_ddpm(exact_eps, schedule)
worst = 0.0
for s in levels:
    x_s = x_clean + s * torch.randn(x_clean.shape, generator=generator, dtype=torch.float64)
    worst = max(worst, float((adapter(x_s, s) - exact_D(x_s, s)).abs().max()))
print(f"max |denoiser_from_ddpm(exact eps-model) − exact denoiser| over 20 levels: {worst:.1e}")

# %% [markdown]
# ### Preconditioning: why $c_{\text{skip}}, c_{\text{out}}, c_{\text{in}}$
#
# For a network trained from scratch, EDM chose the coefficients so that the network's
# input and its training target both have unit variance at every $\sigma$, for data with
# standard deviation $\sigma_d$ per dimension ($\sigma_d = 0.5$ for images on $[-1, 1]$).
# The input $\hat x = x_0 + \sigma\varepsilon$ has variance $\sigma_d^2 + \sigma^2$, so
# $c_{\text{in}} = 1/\sqrt{\sigma^2+\sigma_d^2}$. Training $D_\theta$ to output $x_0$ means
# training $F$ on the effective target $(x_0 - c_{\text{skip}}\hat x)/c_{\text{out}}$, whose
# variance is $\big[(1 - c_{\text{skip}})^2\sigma_d^2 + c_{\text{skip}}^2\sigma^2\big]/c_{\text{out}}^2$.
# Choose $c_{\text{skip}}$ to make the numerator as small as possible (then $F$'s errors
# are amplified least): setting its derivative to zero gives
# $c_{\text{skip}} = \sigma_d^2/(\sigma^2+\sigma_d^2)$, and the numerator becomes
# $\sigma^2\sigma_d^2/(\sigma^2+\sigma_d^2)$. Unit variance then fixes
# $c_{\text{out}} = \sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2}$. At small $\sigma$ the
# denoiser keeps its input and predicts a small correction ($c_{\text{skip}} \to 1$,
# $c_{\text{out}} \to \sigma$: an $\varepsilon$-prediction); at large $\sigma$ it predicts
# $x_0$ outright ($c_{\text{skip}} \to 0$, $c_{\text{out}} \to \sigma_d$), where an
# $\varepsilon$-prediction would multiply the network's error by $\sigma$, up to 80.

# %%
course_lib.show(edm.Preconditioning)
fig = sf.plot_preconditioning()
plt.show()

# %% [markdown]
# ### Exercise 5.3: EDM's coefficients
#
# Write `edm_coefficients(sigma, sigma_data)` that returns the tuple
# `(c_skip, c_out, c_in)` for a tensor of noise levels and a float $\sigma_d$.


# %% tags=["exercise"]
def edm_coefficients(sigma, sigma_data):
    # YOUR CODE HERE: return c_skip, c_out, c_in
    raise NotImplementedError


# %%
ch05.check_edm_coefficients(edm_coefficients)


# %% tags=["solution", "hide-input"]
def edm_coefficients(sigma, sigma_data):
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt()


ch05.check_edm_coefficients(edm_coefficients)

# %% [markdown]
# (EDM trains $F$ with $\ln\sigma \sim \mathcal N(-1.2, 1.2^2)$ and the loss weight
# $\lambda(\sigma) = 1/c_{\text{out}}^2$, `edm.edm_loss` — EDM's letter, unrelated to the
# $\lambda$ of section 2's reverse processes. This chapter reuses chapter 3's network
# instead: that is the point of the conversions.)
#
# ### The time grid: $\rho = 7$
#
# Where should $N$ steps go? EDM spaces them evenly in $\sigma^{1/\rho}$:
#
# $$ \sigma_i = \Big(\sigma_{\max}^{1/\rho} + \tfrac{i}{N-1}\big(\sigma_{\min}^{1/\rho} - \sigma_{\max}^{1/\rho}\big)\Big)^\rho,
#    \quad i = 0, \dots, N-1, \qquad \sigma_N = 0 \qquad \text{(EDM eq. 5)}. $$
#
# $\rho = 1$ is uniform in $\sigma$; $\rho \to \infty$ is geometric (uniform in
# $\log\sigma$, chapter 2's ladder). EDM found $\rho = 7$ best: the steps shrink towards
# $\sigma_{\min}$, where the paths bend as the denoiser resolves the fine structure of
# the data, while the relative step stays moderate at high noise.

# %%
course_lib.show(edm.time_grid, docstring=False)
fig = sf.plot_time_grids(18)
plt.show()

# %% [markdown]
# Two endpoints have to be chosen too. $\sigma_{\min}$ must be small against the data's
# finest detail and, for a converted network, no smaller than the lowest level it was
# trained at — about $0.01$ for DDPM's linear schedule (`edm.sigma_range`; EDM's own
# default is 0.002). $\sigma_{\max}$ must be large enough that $p(\hat x; \sigma_{\max})$
# is indistinguishable from the prior $\mathcal N(0, \sigma_{\max}^2 I)$: chapter 2's rule
# (Song & Ermon 2020) takes the largest distance between two data points. EDM's
# $\sigma_{\max} = 80$ is its default for every data set (images scaled to $[-1, 1]$);
# for the 2D toys the rule gives about 4.5, and every grid step spent above that is
# wasted.
#
# ### Heun's method, last step Euler
#
# EDM integrates the ODE with Heun's second-order method: an Euler step to the next
# level, the slope evaluated there, and the average of the two slopes used for the
# actual step (EDM Algorithm 1). Its error shrinks like $h^2$ instead of Euler's $h$ —
# `tests/test_edm.py` fits the slopes, 1 and 2, on a log-log plot with the exact
# denoiser. At the last step the grid reaches $\sigma_N = 0$, where the slope
# $\big(\hat x - D_\theta(\hat x; \sigma)\big)/\sigma$ is undefined: that step is a plain
# Euler step, which lands exactly on $D_\theta(\hat x; \sigma_{N-1})$.

# %%
course_lib.show(edm.heun_sample, docstring=False)

# %% [markdown]
# ### Exercise 5.4: predict before you run
#
# EDM's CIFAR-10 results use $N = 18$ steps on `edm.time_grid(18)`. How many
# denoiser calls does one sample cost? Write down your number before you run the cell
# after the check.

# %% tags=["exercise"]
my_nfe = None  # YOUR PREDICTION: network calls of EDM Heun with N = 18

# %%
ch05.check_predict_heun_nfe(my_nfe)

# %% tags=["solution", "hide-input"]
my_nfe = 35  # 17 Heun steps of two calls each, and one Euler step into sigma = 0
ch05.check_predict_heun_nfe(my_nfe)

# %%
heun_18 = edm.heun_sample(
    exact_D, sigma_max_toy * z_toy, edm.time_grid(18, sigma_min, sigma_max_toy), keep=1
)
print(
    f"EDM Heun, 18 steps: {heun_18.nfe} denoiser calls; σ levels {heun_18.times[:4].tolist()} ..."
)

# %% [markdown]
# ### Churn: a little noise back in
#
# EDM's stochastic sampler (Algorithm 2) adds noise before each step. Where
# $S_{\min} \le \sigma_i \le S_{\max}$ it raises the noise level $\sigma_i$ to
# $\hat\sigma_i = (1+\gamma_i)\sigma_i$, $\gamma_i = \min(S_{\text{churn}}/N, \sqrt2 - 1)$,
# by adding fresh noise of just the missing variance,
#
# $$ \hat x \leftarrow \hat x + \sqrt{\hat\sigma_i^2 - \sigma_i^2}\;S_{\text{noise}}\,\varepsilon ,
#    \qquad \varepsilon \sim \mathcal N(0, I) $$
#
# (variances add: $\sigma_i^2 + (\hat\sigma_i^2 - \sigma_i^2) = \hat\sigma_i^2$; an
# $S_{\text{noise}}$ slightly above 1 inflates it a little), and then takes the ODE step
# from $\hat\sigma_i$ to $\sigma_{i+1}$. Like the corrector of section 3 it is
# a Langevin-like move that pulls the samples back towards $p(\hat x; \sigma)$ and so
# forgets errors made earlier — the network's errors, mainly, since an ODE carries every
# error to the end. With the exact denoiser there is nothing to forget and churn only
# adds discretisation noise; with chapter 3's 2D network it can help. The learned
# model's KL, with and without churn, at 18 steps:

# %%
toy = toy_diffusion.train_toy_diffusion(cfg, toy_name)
toy_D = edm.denoiser_from_ddpm(toy.model, toy.schedule)  # chapter 3's MLP as a denoiser
print(
    f"{toy_name}: chapter 3's MLP, {'loaded from ' + toy.checkpoint.name if toy.resumed_at == toy.recipe.steps else 'trained now'}"
)
for churn in (0.0, 3.0, 7.0):  # gamma_i = S_churn / N = 0, 0.17, 0.39
    res = edm.heun_sample(
        toy_D,
        sigma_max_toy * z_toy,
        edm.time_grid(18, sigma_min, sigma_max_toy),
        S_churn=churn,
        generator=torch.Generator().manual_seed(5),
    )
    print(f"S_churn = {churn:4.0f}: KL to the twin {kl_to_twin(res.x):.3f} nats ({res.nfe} NFE)")

# %% [markdown]
# (EDM tuned $S_{\text{churn}}$, $S_{\min}$, $S_{\max}$, $S_{\text{noise}}$ per data set,
# their Table 5. Churn improved the pre-trained networks of their §4, and ImageNet-64
# even after retraining; with their retrained CIFAR-10 networks of §5 the deterministic
# sampler was best, and their recommended CIFAR-10 setting is deterministic, 18 steps.)
#
# ## 6. Samplers against the number of network calls
#
# ### The yardstick
#
# Chapter 4 measured samplers with an MMD and found that at a thousand samples it could
# not tell good samplers apart: all landed inside the two-sample noise. Because the toys
# have exact densities, a sharper measure is available,
# $\mathrm{KL}(q\|p) = \mathbb E_q[-\log p] - H(q)$. The first term is an average of
# exact values. The entropy is estimated from the samples alone: around each sample
# $x_i$, the ball reaching to its $k$-th nearest neighbour holds, in probability, about
# $k/n$ of the mass, so its volume $V_D r_i^D$ times the density is about $k/n$, and
# $-\log q(x_i) \approx \log(n V_D r_i^D / k)$ up to digamma corrections — the
# Kozachenko–Leonenko estimator {cite}`kozachenko1987entropy`. Both terms matter: a
# sampler that lands on posterior means scores a *lower* cross-entropy than the truth
# (its samples sit where $p$ is high), and only the entropy term, smaller for a too
# concentrated sample, charges for it.

# %%
course_lib.show(metrics.knn_entropy)
course_lib.show(metrics.kl_divergence, docstring=False)

# %% [markdown]
# ### Every sampler on the same footing
#
# The chapter's samplers, each given the model twice — as the EDM denoiser and as
# chapter 3's $\varepsilon$-network on its schedule — and each started from the same
# noise: Euler, Heun and RK4 on EDM's grid (RK4 ends with an Euler step too), an
# adaptive dopri5 solve of the same ODE at a few tolerances, predictor–corrector on the
# VP SDE, DDIM, and DDPM's ancestral sampler, whose 1000-step run is the reference.
# The same functions serve the exact model and the learned one.

# %%
course_lib.show(sf.nfe_samplers, docstring=False)
course_lib.show(sf.quality_vs_nfe, docstring=False)

# %%
ref_steps = cfg.pick(smoke=200, cpu=1000, gpu=1000)  # the "DDPM@1000" reference
plan = cfg.pick(
    smoke={
        sf.EULER: [9, 18],
        sf.HEUN: [5, 18],
        sf.RK4: [3, 9],
        sf.DOPRI5: [2, 3],
        sf.PC: [4, 17],
        sf.DDIM: [9, 50],
        sf.DDPM: [35, ref_steps],
    },
    cpu={
        sf.EULER: [9, 18, 35],
        sf.HEUN: [5, 9, 18],
        sf.RK4: [3, 5, 9],
        sf.DOPRI5: [2, 3],
        sf.PC: [4, 8, 17],
        sf.DDIM: [9, 18, 50],
        sf.DDPM: [35, ref_steps],
    },
    gpu={
        sf.EULER: [9, 18, 35, 70],
        sf.HEUN: [5, 9, 18, 35],
        sf.RK4: [3, 5, 9, 18],
        sf.DOPRI5: [2, 3, 4, 5],
        sf.PC: [4, 8, 17, 34],
        sf.DDIM: [9, 18, 35, 50, 100],
        sf.DDPM: [35, 100, 200, ref_steps],
    },
)
n_study = cfg.pick(smoke=400, cpu=4000, gpu=4000)  # issue 16's protocol: 4,000 samples,
study_seeds = cfg.pick(smoke=(0,), cpu=(0, 1, 2), gpu=(0, 1, 2))  # three seeds
studies = {
    "exact model": (exact_D, exact_eps, schedule, lambda n: twin.sample(n, generator)),
    "learned model": (
        toy_D,
        toy.model,
        toy.schedule,
        lambda n: toys.sample(toy_name, n, generator),
    ),
}
toy_tables, toy_floors = {}, {}
for label, (denoiser, eps_model, sched, draw) in studies.items():
    fns = sf.nfe_samplers(denoiser, eps_model, sched, sigma_min, sigma_max_toy)
    toy_tables[label] = sf.quality_vs_nfe(fns, plan, kl_to_twin, (n_study, 2), study_seeds)
    toy_floors[label] = metrics.kl_floor(
        draw, twin.log_prob, n_study, repeats=cfg.pick(smoke=3, cpu=5, gpu=5)
    )
    f = toy_floors[label]
    print(
        f"{toy_name}, {label}: KL to the twin (nats), {n_study} samples, {len(study_seeds)} seed(s)"
    )
    print(sf.format_nfe_table(toy_tables[label], floor=(f.mean, f.std)))
    print()

fig, axes = plotting.figure_row(2, size=5.4)
for ax, (label, table) in zip(axes, toy_tables.items(), strict=True):
    f = toy_floors[label]
    sf.plot_quality_vs_nfe(
        table,
        ax=ax,
        floor=(f.mean, f.std),
        title=f"{toy_name}, {label} (floor {f.mean:.3f} ± {f.std:.3f})",
    )
fig.tight_layout()
plt.show()

# %%
for label, table in toy_tables.items():
    far = {name: int((points[-1].x.norm(dim=1) > 4).sum()) for name, points in table.items()}
    print(f"{label}: samples farther than 4 from the origin (largest NFE, first seed): {far}")

# %% [markdown]
# The floor of the learned model is that of the *toy's* own samples measured against
# the twin's density: it includes the small misfit between the toy and its twin, so it
# is what a perfect sampler of a perfect network would score.
#
# One entry of the learned model is off the scale: DDIM. The KL charges every sample
# that lands where the target has no mass, and a handful of DDIM's samples land at
# $|x| \approx 100$. They start from the rare prior draws with $|x_T| \gtrsim 3.5$, where
# chapter 3's MLP has seen almost no training points at $t = T$: its noise estimate
# saturates, and DDIM's first step divides the error by $\sqrt{\bar\alpha_T} \approx 0.006$.
# The MMD of chapter 4 is blind to a few far outliers; the KL, rightly, is not. EDM's
# samplers call the same network only from $\sigma_{\max} = 4.5$ down, never at
# $t = T$, and avoid the problem.
#
# ### The goal: EDM Heun at 35 calls against DDPM at 1000

# %%
goal = {}
for label, table in toy_tables.items():
    heun, ddpm_ref = sf.find(table, sf.HEUN, 18), sf.find(table, sf.DDPM, ref_steps)
    ddim_50 = sf.find(table, sf.DDIM, 50)
    f = toy_floors[label]
    met = abs(heun.quality - ddpm_ref.quality) <= f.std
    goal[label] = (heun, ddpm_ref, ddim_50, f, met)
    print(
        f"{label:>13}: EDM Heun@{heun.nfe:.0f} {heun.quality:.3f} ± {heun.spread:.3f} | "
        f"DDPM@{ref_steps} {ddpm_ref.quality:.3f} ± {ddpm_ref.spread:.3f} | "
        f"DDIM@50 {ddim_50.quality:.3f} ± {ddim_50.spread:.3f} | floor {f.mean:.3f} ± {f.std:.3f}"
        f" -> Heun within one floor spread of DDPM: {'yes' if met else 'no'}"
    )

# the same exact model and noise on the grid of EDM's default sigma_max = 80
grid_80 = edm.time_grid(18, sigma_min, 80.0)
fns_80 = sf.nfe_samplers(exact_D, exact_eps, schedule, sigma_min, 80.0)
table_80 = sf.quality_vs_nfe(fns_80, {sf.HEUN: [18]}, kl_to_twin, (n_study, 2), study_seeds)
heun_80 = sf.find(table_80, sf.HEUN, 18)
_, exact_ref, _, exact_floor, _ = goal["exact model"]
print(
    f"  exact model, σ_max = 80: {int((grid_80[:-1] > 5).sum())} of the 18 levels above "
    f"σ = 5; EDM Heun@{heun_80.nfe:.0f} {heun_80.quality:.3f} ± {heun_80.spread:.3f} | "
    f"DDPM@{ref_steps} {exact_ref.quality:.3f} | floor spread {exact_floor.std:.3f}"
)

# %% [markdown]
# How to read it (your numbers will differ a little; the spreads say by how much).
#
# * **Order matters, and so does the grid.** With small enough steps Heun and RK4 beat
#   Euler at equal NFE; with very few (9 NFE) they are worse, because their second
#   slope is evaluated at a badly wrong point. dopri5 reaches the floor too, with more
#   calls than Heun: it cannot know in advance that only the end of the path is hard.
# * **ODE samplers win at small budgets.** PC, on its uniform grid in $t$, stays far
#   above the floor at every budget of the table (a few dozen calls, half of them
#   corrector steps; score SDE ran it with a thousand predictor steps); DDPM's
#   ancestral sampler is respectable at 35 steps but reaches the floor only with many
#   more.
# * **DDIM is Euler's method on DDPM's uniform grid**, and Euler on EDM's grid is
#   several times better at equal NFE: same method, same ODE, better grid.
# * **The learned model** levels off far above the floor, at the network's quality,
#   after few steps. DDPM at a thousand steps is best: its noise lets later steps
#   correct earlier errors, as churn did above.
# * **The goal** (EDM Heun at 35 calls within one floor spread of DDPM@1000, exact model)
#   is printed above. It needs a $\sigma_{\max}$ suited to the data. With EDM's default
#   $\sigma_{\max} = 80$, eight of the 18 levels, nearly half, are spent above
#   $\sigma = 5$, where nothing happens; the last line above runs Heun@35 on that grid,
#   with the same model and noise, so you can compare it with the reference and the
#   floor's spread. DDIM@50, chapter 4's recommendation, is several spreads away: its
#   last step lands on posterior means.
#
# ## 7. MNIST: chapter 3's network with EDM's sampler
#
# Now the same comparison on images, with chapter 3's MNIST U-Net (loaded if chapter 3
# has run, trained now otherwise), its EDM denoiser through `denoiser_from_ddpm`, and
# the classifier-feature FID of chapter 4 (a small classifier trained on MNIST by the
# course; **not comparable** with any Inception FID in a paper), each entry on the same
# number of samples with the FID of that many real digits as the floor. This is what
# EDM's §3 (Figure 2) does on CIFAR-10: score SDE's pre-trained DDPM++ (VP) network,
# trained for another sampler, sampled with EDM's grid and Heun across NFE (at 35 NFE:
# FID 3.01 unconditional, Table 2 row A, the baseline whose networks EDM took from
# score SDE).

# %%
mnist = image_diffusion.train_image_diffusion(cfg, "mnist")
mnist_D = edm.denoiser_from_ddpm(mnist.model, mnist.schedule)
print(
    f"MNIST U-Net: {sum(p.numel() for p in mnist.model.parameters()):,} parameters, "
    f"{'trained now' if mnist.trained_now else 'loaded from ' + mnist.checkpoint.name}"
)
evaluator = evaluate.course_evaluator(cfg, "mnist")  # the same classifier as chapters 3-4
n_fid = cfg.pick(smoke=8, cpu=32, gpu=2000)
fid_floor, fid_floor_std = df.fid_floor(
    evaluator.fid, mnist.images, n_fid, repeats=5, generator=generator
)
mnist_sigma_min = 1.001 * edm.sigma_range(mnist.schedule)[0]  # inside its trained range
img_fns = sf.nfe_samplers(
    mnist_D, mnist.model, mnist.schedule, mnist_sigma_min, 80.0, clip_x0=1.0
)  # sigma_max = 80: EDM's default
mnist_ref = cfg.pick(smoke=100, cpu=1000, gpu=1000)
img_plan = {
    sf.HEUN: cfg.pick(smoke=[5, 18], cpu=[5, 10, 18], gpu=[5, 10, 18, 40]),
    sf.DDIM: cfg.pick(smoke=[10, 50], cpu=[10, 20, 50], gpu=[10, 20, 50, 100]),
    sf.DDPM: cfg.pick(smoke=[mnist_ref], cpu=[mnist_ref], gpu=[100, mnist_ref]),
}
mnist_table = sf.quality_vs_nfe(
    img_fns, img_plan, evaluator.fid, (n_fid, 1, 28, 28), seeds=(cfg.seed,), device=cfg.device
)
print(f"MNIST classifier-feature FID, {n_fid} samples per entry (lower is better)")
print(sf.format_nfe_table(mnist_table, floor=(fid_floor, fid_floor_std), digits=2))
sf.plot_quality_vs_nfe(
    mnist_table,
    floor=(fid_floor, fid_floor_std),
    title=f"MNIST, chapter 3's U-Net, {n_fid} samples per entry",
    ylabel="classifier-feature FID (lower is better)",
    ymin=1.0,
)
plt.show()

# %%
heun_img = sf.find(mnist_table, sf.HEUN, 18)
ddim_img = sf.find(mnist_table, sf.DDIM, 50)
ddpm_img = sf.find(mnist_table, sf.DDPM, mnist_ref)
rows = [
    (f"EDM Heun, 18 steps ({heun_img.nfe:.0f} NFE)", heun_img),
    ("DDIM, 50 steps", ddim_img),
    (f"DDPM ancestral, {mnist_ref} steps", ddpm_img),
]
n_show = min(12, n_fid)
fig, axes = plt.subplots(len(rows), 1, figsize=(n_show * 0.75, len(rows) * 1.2))
for ax, (title, p) in zip(axes, rows, strict=True):
    plotting.image_grid(
        p.x[:n_show],
        nrow=n_show,
        ax=ax,
        title=f"{title}: FID {p.quality:.1f}, {p.per_second:.1f} images/s",
    )
fig.suptitle("the same noise in every column")
fig.tight_layout()
plt.show()
for title, p in rows:
    print(f"{title:<36} FID {p.quality:7.2f}   {p.per_second:8.2f} images/s   ({p.seconds:.1f} s)")
print(f"real-digit floor: {fid_floor:.2f} ± {fid_floor_std:.2f} ({n_fid} images)")

# %% [markdown]
# What to notice. EDM's sampler drives a network that was never trained for it: the
# conversion is exact, only the integrator and the grid changed — and one detail of the
# samplers: DDIM and DDPM clip their estimate of $x_0$ to $[-1, 1]$ at every step, as in
# chapters 3–4 (`clip_x0=1.0`), while the EDM samplers never clip. The Heun and DDIM rows
# start from the same noise and show the same digits (both solve one ODE), DDPM's
# chain ends elsewhere. With a few dozen samples, FID differences smaller than the
# floor's spread are noise; the throughput column is not: it is set by the number of
# network calls. On this small, briefly trained network the deterministic samplers pay
# for the network's errors (chapter 4 saw the same), which the stochastic sampler keeps
# correcting.
#
# ### The PF-ODE likelihood of chapter 3's model
#
# Chapter 3 bounded the MNIST model's likelihood with the ELBO, $-\log P \le L$. The
# PF-ODE gives the exact likelihood of a slightly different model: the continuous flow
# defined by the same network. We evaluate it on a few test digits with Hutchinson's
# estimator, in VP time with the network's score (`edm.score_fn_from_denoiser`), from
# $t_0 = 10^{-3}$ — $\sigma \approx 0.0105$, just above the lowest level the network was
# trained at ($\sigma_1 \approx 0.0100$) — to $t = 1$, with prior $\mathcal N(0, I)$ and
# the 8-bit offset; beside it the chapter-3 bound on the same digits, and the mistakes
# of the docstring, measured.

# %%
n_bpd = cfg.pick(smoke=2, cpu=4, gpu=64)
tol = cfg.pick(smoke=1e-3, cpu=1e-4, gpu=1e-5)
test_digits = data.load("mnist", split="test").subset(n_bpd, generator)
y_deq = likelihood.dequantize(test_digits.images, generator).to(cfg.device)
x_grid = test_digits.to_float().to(cfg.device)  # the pixel values themselves, k / 127.5 - 1
mnist_drift = sdes.pf_ode_drift(vp, edm.score_fn_from_denoiser(mnist_D, vp))
t_eps = 1e-3


def pf_bits(x, t0, seed=6):
    res = likelihood.ode_log_likelihood(
        mnist_drift,
        x,
        t0,
        1.0,
        vp.prior_log_prob,
        divergence="hutchinson",
        rtol=tol,
        atol=tol,
        generator=torch.Generator(device=x.device).manual_seed(seed),
    )
    return res.log_p, res.nfe


bpd_start = time.perf_counter()
log_p_deq, nfe_deq = pf_bits(y_deq, t_eps)
log_p_grid, nfe_grid = pf_bits(x_grid, t_eps)
log_p_late, nfe_late = pf_bits(y_deq, 1e-2)
elbo_bits = ddpm.nll_bound_bits_per_dim(
    mnist.model,
    x_grid,
    mnist.schedule,
    decoder="discrete",
    generator=torch.Generator(device=cfg.device).manual_seed(7),
    max_rows=cfg.pick(smoke=256, cpu=512, gpu=16_384),
)
bpd_seconds = time.perf_counter() - bpd_start
D_img = 784
offset = likelihood.EIGHT_BIT_OFFSET_BITS
bpd_correct = likelihood.bits_per_dim(log_p_deq, D_img, offset)
mnist_rows = sf.likelihood_rows(
    {
        "PF-ODE, dequantised, t0 = 1e-3, +7 bits (correct)": (bpd_correct, nfe_deq),
        "  no dequantisation (pixel values)": (
            likelihood.bits_per_dim(log_p_grid, D_img, offset),
            nfe_grid,
        ),
        "  offset log2(256) = 8 ([0, 1] data)": (
            likelihood.bits_per_dim(log_p_deq, D_img, 8.0),
            nfe_deq,
        ),
        "  no offset (density on [-1, 1])": (
            likelihood.bits_per_dim(log_p_deq, D_img, 0.0),
            nfe_deq,
        ),
        "  start at t0 = 1e-2 (σ ≈ 0.045)": (
            likelihood.bits_per_dim(log_p_late, D_img, offset),
            nfe_late,
        ),
        "chapter 3's ELBO bound (discrete decoder)": (elbo_bits.float().cpu(), mnist.schedule.T),
    },
    reference="PF-ODE, dequantised, t0 = 1e-3, +7 bits (correct)",
)
print(f"{n_bpd} MNIST test digits, {bpd_seconds:.0f} s")
print(sf.format_likelihood_rows(mnist_rows, unit="bits/dim"))
try:
    pf_bits(y_deq, 0.0)
except ValueError as err:
    print(f"\nintegrating from t0 = 0 instead: ValueError: {str(err)[:110]}...")

# %% [markdown]
# What to notice.
#
# * **The ODE beats the bound.** The PF-ODE's bits/dim are below the ELBO's on the same
#   digits, as on CIFAR-10 (score SDE's best PF-ODE: 2.99 bits/dim; DDPM's bound: 3.70).
#   The two are not the same model (the ODE is a flow built from the network, the ELBO
#   bounds the Markov chain's likelihood), so the gap is not the bound's looseness alone.
# * **No dequantisation** looks better, much better — and is meaningless: evaluated at
#   the 256 pixel values, the continuous density measures nothing about the
#   probability of those values, and a model that put spikes on them could score any
#   number. The **offset** is an exact shift, of one bit or seven: easy to get wrong,
#   easy to check. **Where the integral starts** matters a great deal: from
#   $t_0 = 10^{-2}$ the number describes digits blurred by $\sigma \approx 0.045$ (about
#   six 8-bit bins). Score SDE integrates from $10^{-5}$ with networks trained down to
#   that level; chapter 3's network has never seen $\sigma < 0.01$, and the course's
#   code refuses to start at $t_0 = 0$, where the score of discrete data does not exist.
# * **Prior.** For the VP SDE, $\mathcal N(0, I)$ in place of $p_1$ costs nothing
#   measurable (section 4's table); a VE SDE with too small a $\sigma_{\max}$ pays.
#
# ## CIFAR-10 (`gpu` profile)
#
# On a GPU the same sampler table runs for CIFAR-10 with chapter 3's CIFAR-10 U-Net (its
# `gpu` recipe; about half an hour of training if chapter 3 has not trained it). The
# list of extra data sets is empty in `smoke` and `cpu`. The course has not run this
# cell on a GPU yet: treat its output as a first measurement.

# %%
extra_tables = {}
for name in cfg.pick(smoke=[], cpu=[], gpu=["cifar10"]):
    run = image_diffusion.train_image_diffusion(cfg, name)
    ev = evaluate.course_evaluator(cfg, name)
    fns = sf.nfe_samplers(
        edm.denoiser_from_ddpm(run.model, run.schedule),
        run.model,
        run.schedule,
        1.001 * edm.sigma_range(run.schedule)[0],
        80.0,
        clip_x0=1.0,
    )
    extra_tables[name] = sf.quality_vs_nfe(
        fns, img_plan, ev.fid, (n_fid, *run.images.shape[1:]), seeds=(cfg.seed,), device=cfg.device
    )
    floor_extra = df.fid_floor(ev.fid, run.images, n_fid, repeats=3, generator=generator)
    print(f"{name}: classifier-feature FID, {n_fid} samples per entry")
    print(sf.format_nfe_table(extra_tables[name], floor=floor_extra, digits=2))

# %% [markdown]
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
card = [("run", cfg.describe()), ("chapter wall time", f"{elapsed:.1f} s")]
for label, (heun, ddpm_ref, ddim_50, f, met) in goal.items():
    card.append(
        (
            f"quality: 2D KL EDM Heun@35 vs DDPM@{ref_steps}, {label}",
            f"{heun.quality:.3f} ± {heun.spread:.3f} vs {ddpm_ref.quality:.3f} ± "
            f"{ddpm_ref.spread:.3f} nats (floor {f.mean:.3f} ± {f.std:.3f}, {n_study} samples, "
            f"{len(study_seeds)} seed(s); within one floor spread: {'yes' if met else 'no'})",
        )
    )
    card.append(
        (f"quality: 2D KL DDIM@50, {label}", f"{ddim_50.quality:.3f} ± {ddim_50.spread:.3f} nats")
    )
card.append(
    (
        "quality: 2D PF-ODE log p error, exact model",
        f"{lik_err.max():.1e} nats max over {len(x_lik)} points (dopri5, exact divergence)",
    )
)
for name, rows_pc in pc_results.items():
    p_2n, pc_n = rows_pc[f"P, {2 * pc_steps} steps"], rows_pc[f"PC, {pc_steps} steps"]
    card.append(
        (
            f"quality: 2D KL PC vs P at {pc_n.nfe} NFE, {name}",
            f"PC {pc_n.mean:.3f} ± {pc_n.std:.3f} vs P {p_2n.mean:.3f} ± {p_2n.std:.3f} nats",
        )
    )
card += [
    (
        f"quality: MNIST classifier-FID Heun@35 / DDIM@50 / DDPM@{mnist_ref}",
        f"{heun_img.quality:.2f} / {ddim_img.quality:.2f} / {ddpm_img.quality:.2f}  "
        f"(real-digit floor {fid_floor:.2f} ± {fid_floor_std:.2f}, {n_fid} samples; not Inception FID)",
    ),
    (
        "quality: MNIST PF-ODE bits/dim vs ELBO bound",
        f"{float(bpd_correct.mean()):.3f} vs {float(elbo_bits.mean()):.3f}  "
        f"({n_bpd} test digits, Hutchinson, t0 = 1e-3)",
    ),
]
for title, p in rows:
    card.append(
        (
            f"throughput: MNIST {title}",
            f"{p.per_second:.2f} images/s  (batch {n_fid}, {cfg.device.type})",
        )
    )
card += [
    (
        "published: EDM Table 2, CIFAR-10 VP, 35 NFE",
        "FID 3.01 (A: baseline, score SDE's network, EDM Heun) -> 2.05 (E: + retuned "
        "hyperparameters, capacity, preconditioning, loss) -> 1.97 (F: + non-leaky "
        "augmentation), unconditional, as reported (secondary sources); Inception FID of 50k "
        "samples, training ~2 days on 8 V100",
    ),
    (
        "published: score SDE Table 1, CIFAR-10, 1000 steps",
        "FID VE 4.79 (P) / 3.60 (PC), VP 3.21 / 3.18, reverse diffusion predictor; VP PF-ODE "
        "3.59 (P); 1.3M iterations, batch 128",
    ),
    (
        "published: score SDE Tables 2-3, CIFAR-10",
        "DDPM++ cont. deep sub-VP: NLL 2.99 bits/dim (PF-ODE), FID 2.41 (PC) / 2.92 (ODE); "
        "DDPM's ELBO bound 3.70-3.75",
    ),
]
results_card(card)

# %% [markdown]
# How to read it. The 2D lines put EDM's Heun sampler at 35 calls beside DDPM's at a
# thousand, for the exact model (the sampler's error alone) and chapter 3's MLP (sampler
# plus network), with the floor of exact samples; DDIM@50 is chapter 4's recommendation
# on the same footing. The published lines are for scale only: Inception FID on
# CIFAR-10 from models trained for days on GPU or TPU clusters is a different measure
# of a different model.
#
# ## Summary
#
# * The diffusion chains of chapters 2 and 3 are discretisations of linear SDEs
#   $dx = f\,dt + g\,dw$ (VE, VP, sub-VP) whose marginals are Gaussian in closed form,
#   $x_t = s(t)\big(x_0 + \sigma(t)\varepsilon\big)$.
# * Rewriting the heat term of the Fokker–Planck equation as a divergence gives, for
#   every $\lambda \ge 0$, a reverse process $dx = \big[f - \tfrac{1+\lambda^2}{2}g^2\nabla\log p_t\big]dt + \lambda g\,d\bar w$
#   with the same marginals: $\lambda = 1$ is Anderson's reverse SDE, $\lambda = 0$ the
#   deterministic **probability-flow ODE**. Predictor–corrector adds Langevin steps that
#   pull the samples back to $p_t$.
# * Along the ODE, $d\log p_t/dt = -\nabla\cdot u$: the **exact likelihood** is a prior
#   term plus an integrated divergence, exact in 2D, unbiased with Hutchinson's
#   estimator if the probe is fixed per solve. Images need dequantisation, the offset
#   $\log_2 128$ on $[-1, 1]$, and a start no lower than the lowest trained noise level.
# * EDM writes every model as a **denoiser** $D_\theta(\hat x; \sigma)$ and every sampler as an
#   ODE solver in $\sigma$: preconditioning ($c_{\text{skip}}, c_{\text{out}}, c_{\text{in}}$),
#   the $\rho = 7$ grid with a $\sigma_{\max}$ suited to the data, and Heun's method with
#   a last Euler step ($2N - 1$ calls) take a pre-trained VP network to good samples at
#   35 calls.
# * Measured with an exact yardstick, the **grid and the integrator's order** decide the
#   quality at a small budget; stochastic samplers need more steps but forgive a
#   network's errors.
#
# ## Further reading
#
# * Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole {cite}`song2021sde`: the SDE
#   families (§3.4, App. B), the reverse SDE (§3.2, eq. 6), the PF-ODE (§4.3, eq. 13,
#   App. D), predictor–corrector (§4.2, App. G), exact likelihoods (App. D.2),
#   Tables 1–3.
# * Anderson {cite}`anderson1982reverse` for the reverse-time SDE; Chen et al.
#   {cite}`chen2018neuralode` for the instantaneous change of variables; Grathwohl et al.
#   {cite}`grathwohl2019ffjord` and Hutchinson {cite}`hutchinson1989` for the trace
#   estimator; Theis, van den Oord & Bethge {cite}`theis2016note` for dequantisation and
#   bits/dim.
# * Karras, Aittala, Aila & Laine {cite}`karras2022edm`: the design space (Table 1), the
#   grid and the Heun sampler (§3), churn (§4), preconditioning and training (§5).
# * Lu et al. {cite}`lu2022dpmsolver`: DPM-Solver, an integrator that uses the ODE's
#   semi-linear form and needs 10–20 calls; Kozachenko & Leonenko
#   {cite}`kozachenko1987entropy` for the entropy estimator behind the KL yardstick.
# * Holderrieth & Erives, MIT 6.S184 lecture notes {cite}`holderrieth2025introduction`,
#   for the "same marginals, any noise" view and the flow-matching chapter that comes
#   next; Yang Song's blog post {cite}`song2021blog` and Lilian Weng's overview
#   {cite}`weng2021diffusion`.
