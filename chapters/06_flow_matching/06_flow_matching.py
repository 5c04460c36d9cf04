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
# # 6. Flow matching: paths, couplings, rectified flow and optimal transport
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/06_flow_matching/06_flow_matching.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Derive* the continuity equation, the marginal velocity of a conditional path (in closed form for a Gaussian mixture), the flow-matching gradient identity, and the exact sense in which flow matching on a Gaussian path is diffusion training. *Implement* the conversion from a noise prediction to a velocity. *Train* flows with three couplings — independent pairs (rectified flow, I-CFM), minibatch optimal transport (OT-CFM) and reflow — and *measure* their straightness, their one-step samples and their quality against the number of network calls, beside chapter 5's samplers of a diffusion model, on 2D toys and on MNIST. |
# | **Prerequisites** | Chapters 3 and 5 (and 0, 1, 4: the optimal denoiser, denoising score matching, DDIM): the forward noising $x = a\,x_0 + s\,\varepsilon$, Tweedie's formula, the probability-flow ODE, its solvers and the KL yardstick with its floor. Integration by parts; conditional expectations. |
# | **Run time** | `smoke` ≈ 25 s · `cpu` ≈ 5 min with chapter 3's models on disk (this chapter trains its three 2D flows and the MNIST flow; about 2 min more if it must train chapter 3's MNIST model too) · `gpu` not yet measured |

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
from course_lib import (
    cnf,
    couplings,
    edm,
    evaluate,
    image_diffusion,
    image_flow,
    likelihood,
    metrics,
    plotting,
    solvers,
    toy_diffusion,
    toy_flow,
    toys,
)
from course_lib import ddim_figures as df
from course_lib import flow_figures as ff
from course_lib import flow_matching as fm
from course_lib import sde as sdes
from course_lib import sde_figures as sf
from course_lib.exercises import ch06
from course_lib.gaussian_mixture import GaussianMixture

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: the same data, two roads
#
# Chapter 5 ended with a deterministic sampler: an ODE $dx/dt = u_t(x)$ that carries
# Gaussian noise to data, solved with a few dozen network calls. Nothing in that
# sentence mentions a score or a noise schedule. Flow matching
# {cite}`lipman2023flow,liu2023rectified` takes it literally: *choose* how noise should
# turn into data, a **probability path** $p_t$ from $\mathcal N(0, I)$ at $t = 0$ to the
# data at $t = 1$, and regress a network $v_\theta(x, t)$ on the velocity field that
# moves the samples along it. Diffusion is one choice of path. There are better ones.
#
# The cell below makes the point with no learning at all. Our toy is `gaussians8`, eight
# narrow Gaussians on a circle; it *is* a Gaussian mixture, so its exact velocity field
# is known in closed form for any path (section 2). Two exact fields, two paths: the
# path chapter 5's VP diffusion follows, and the straight-line path of this chapter.
# Each is integrated with **four Euler steps** from the same noise.

# %%
toy_name = "gaussians8"
twin = toys.twin(toy_name)  # the toy is a mixture of 8 Gaussians: its twin is exact
linear, cosine, vp = fm.linear_path(), fm.cosine_path(), fm.vp_path()
paths = {"linear (rectified flow, I-CFM)": linear, "cosine": cosine, "VP (diffusion)": vp}


def kl_to_twin(x):
    return metrics.kl_divergence(x, twin.log_prob)


n_toy = cfg.pick(smoke=600, cpu=2000, gpu=4000)
z_toy = torch.randn(n_toy, 2, generator=generator, dtype=torch.float64)
fig, axes = plotting.figure_row(3, size=3.8)
plotting.scatter(twin.sample(n_toy, generator), ax=axes[0], title="data (the exact mixture)")
for ax, (label, path) in zip(axes[1:], [("VP (diffusion)", vp), ("linear", linear)], strict=True):
    x4 = fm.sample(fm.exact_velocity(twin, path), z_toy, 4, "euler", path).x
    plotting.scatter(x4, ax=ax, kind="model", title=f"{label} path, 4 Euler steps")
    ax.set_xlabel(f"KL to the data: {kl_to_twin(x4):.2f} nats")
fig.tight_layout()
plt.show()

# %% [markdown]
# Both fields are exact, the solver and the noise are the same; only the path differs.
# The straight-line path gets far closer to the data in four steps. Surprisingly, both
# fields carry each noise draw to the *same* data point (section 4 shows why: with
# independent pairs, every Gaussian path is the same map reparameterised in time and
# scale); what differs is how hard the trajectories are for a solver that takes
# uniform steps in $t$. This chapter explains the paths, shows how to train a network
# on any of them without ever computing its velocity field, and then changes what no
# reparameterisation can change — the *coupling* between noise and data — with optimal
# transport and with *reflow*, until one step nearly suffices.
#
# ```{admonition} Time runs the other way in this chapter
# :class: important
# Chapters 2–5 follow the diffusion papers: $t = 0$ is data, $t = 1$ (or $T$) is noise,
# and $x_0$ is a *data* point. Flow matching follows Lipman et al. {cite}`lipman2023flow`:
# **$t = 0$ is noise, $t = 1$ is data**, $x_0 \sim \mathcal N(0, I)$ is the *noise* and
# $x_1$ the data point. The chapter's code uses these letters throughout
# (`course_lib.flow_matching`), and one tested function, `fm.diffusion_time`, maps a flow
# time $t$ to chapter 5's diffusion time $s = 1 - t$. When this chapter talks about a
# diffusion model's $\hat x_0$, it calls it $\hat x_1$.
# ```
#
# ## 1. Probability paths and the continuity equation
#
# ### Moving mass without losing it
#
# An ODE $dx/dt = u_t(x)$ moves every point; a density $p_0$ of starting points becomes a
# density $p_t$ of positions at time $t$. How does $p_t$ change? Take any smooth test
# function $f$ and follow the expectation $\mathbb E[f(x_t)] = \int f\,p_t\,dx$ in time.
# Differentiating inside the expectation along the trajectories,
#
# $$ \frac{d}{dt}\mathbb E[f(x_t)] = \mathbb E\big[\nabla f(x_t)\cdot u_t(x_t)\big]
#    = \int \nabla f\cdot u_t\,p_t\,dx = -\int f\,\nabla\cdot(p_t u_t)\,dx, $$
#
# the last step by integration by parts (the boundary term vanishes for densities that
# decay). Differentiating $\int f\,p_t\,dx$ directly gives $\int f\,\partial_t p_t\,dx$.
# The two agree for *every* $f$, so
#
# $$ \partial_t p_t(x) + \nabla\cdot\big(p_t(x)\,u_t(x)\big) = 0, $$
#
# the **continuity equation**: the density at a point changes only by the net flux of
# mass through it. We say $u_t$ *generates* the path $p_t$. Dividing by $p_t$ gives the
# form the code checks, $\partial_t\log p_t = -\nabla\cdot u_t - u_t\cdot\nabla\log p_t$,
# and following one particle ($\tfrac{d}{dt}\log p_t(x_t) = \partial_t \log p_t + u_t\cdot\nabla\log p_t$)
# gives chapter 5's instantaneous change of variables, $\tfrac{d}{dt}\log p_t(x_t) = -\nabla\cdot u_t(x_t)$.
# Chapter 5 met the equation as the Fokker–Planck equation without its heat term; here it
# is the whole story, because there is no noise.
#
# ### Conditional paths: one noise draw, one data point
#
# Many velocity fields generate a given path, and we have not yet chosen a path. Flow
# matching builds both from the simplest possible piece: one noise draw $x_0$, one data
# point $x_1$, and a curve between them,
#
# $$ x_t = \alpha_t\,x_1 + \sigma_t\,x_0, \qquad
#    \tfrac{d}{dt}x_t = \dot\alpha_t\,x_1 + \dot\sigma_t\,x_0 =: u_t(x_t \mid x_0, x_1), $$
#
# with $\alpha_0 = 0, \sigma_0 = 1$ (pure noise) and $\alpha_1 = 1, \sigma_1 = 0$ (the data
# point). Drawing $x_0 \sim \mathcal N(0, I)$ and $x_1 \sim p_{\text{data}}$ and looking at
# $x_t$ defines the marginal path $p_t$, which starts at $\mathcal N(0, I)$ and ends at
# the data. This is the same Gaussian noising as chapters 3 and 5 — $\alpha_t$ plays
# $\sqrt{\bar\alpha}$, $\sigma_t$ plays $\sqrt{1-\bar\alpha}$ — with time reversed and the
# schedule free to choose. Three choices, as small objects that return $x_t$ and its
# velocity:
#
# * **linear**, $\alpha_t = t$, $\sigma_t = 1 - t$: the straight segment from $x_0$ to
#   $x_1$ at constant speed $x_1 - x_0$. Liu et al. call the model trained on it
#   *rectified flow* {cite}`liu2023rectified`, Lipman et al. the *OT path* (with
#   $\sigma_{\min} = 0$), Tong et al. *I-CFM* {cite}`tong2024otcfm`;
# * **cosine**, $\alpha_t = \sin(\pi t/2)$, $\sigma_t = \cos(\pi t/2)$, which keeps
#   $\alpha_t^2 + \sigma_t^2 = 1$;
# * **VP**, chapter 5's variance-preserving SDE read backwards: $\alpha_t$ is its mean
#   coefficient at diffusion time $s = 1 - t$, $\sigma_t$ its standard deviation. Its
#   $\dot\sigma_t$ is infinite at $t = 1$, so its grids stop at $t_{\max} = 1 - 10^{-3}$,
#   the same place chapter 5's PF-ODE stopped; and $\alpha_0 \approx 0.0066$, not $0$, so
#   its $p_0$ is $\mathcal N(0, I)$ only approximately (as in chapter 5).

# %%
course_lib.show(fm.AffinePath.interpolate, docstring=False)
course_lib.show(fm.AffinePath.conditional_velocity, docstring=False)
course_lib.show(fm.linear_path)
course_lib.show(fm.vp_path, docstring=False)

# %%
ff.plot_path_coefficients({"linear": linear, "cosine": cosine, "VP": vp})
plt.show()

# %% [markdown]
# The VP path spends its first third almost entirely in noise ($\alpha_t$ stays near zero
# until $t \approx 0.3$) and then rushes; its log signal-to-noise ratio climbs steadily
# and shoots up near $t = 1$, while the linear path's, $\operatorname{logit}(t)$, is steep at
# both ends. Where a path moves fast, a solver needs small steps.
#
# ## 2. The marginal velocity
#
# ### The field that generates the path
#
# Every conditional path has its own velocity, but a sampler cannot use it: at sampling
# time we hold $x_t$, not the pair $(x_0, x_1)$ it came from. The velocity we can use is
# the **marginal velocity**, the conditional one averaged over all the pairs that could
# have produced $x_t$:
#
# $$ u_t(x) = \mathbb E\big[\dot\alpha_t\,x_1 + \dot\sigma_t\,x_0 \,\big|\, x_t = x\big]. $$
#
# It generates $p_t$. Run the computation of section 1 with the conditional paths:
# $\tfrac{d}{dt}\mathbb E[f(x_t)] = \mathbb E[\nabla f(x_t)\cdot(\dot\alpha_t x_1 + \dot\sigma_t x_0)]$,
# and condition on $x_t$ inside the expectation (the tower property):
# $= \mathbb E\big[\nabla f(x_t)\cdot\mathbb E[\dot\alpha_t x_1 + \dot\sigma_t x_0 \mid x_t]\big] = \mathbb E[\nabla f(x_t)\cdot u_t(x_t)]$.
# That is the left side of section 1's computation with $u_t$ in place of the
# trajectory's velocity, so $p_t$ satisfies the continuity equation with $u_t$
# (Lipman et al. {cite}`lipman2023flow`, Theorem 1). Solving $dx/dt = u_t(x)$ from
# $x_0 \sim \mathcal N(0, I)$ therefore lands on the data (for a $u_t$ regular enough that
# the ODE and the continuity equation have unique solutions, as it is here).
#
# ### In closed form for a Gaussian mixture
#
# For data from a mixture $\sum_k w_k\,\mathcal N(\mu_k, C_k)$ both conditional
# expectations are known. $x_t$ given component $k$ is Gaussian,
# $\mathcal N(\alpha_t\mu_k,\ \Sigma_k)$ with $\Sigma_k = \alpha_t^2 C_k + \sigma_t^2 I$, so
#
# * $\mathbb E[x_1 \mid x_t] = \sum_k r_k(x_t)\,\big(\mu_k + \alpha_t C_k \Sigma_k^{-1}(x_t - \alpha_t\mu_k)\big)$,
#   the per-component Gaussian posterior means weighted by the responsibilities
#   $r_k(x_t) = p(k \mid x_t)$ (chapter 0's optimal denoiser);
# * $\mathbb E[x_0 \mid x_t] = -\sigma_t\nabla\log p_t(x_t)$: Tweedie's formula for the
#   noise, because the noise part of $x_t$ is $\sigma_t x_0$ with $x_0$ standard normal.
#
# Hence $u_t(x) = \dot\alpha_t\,\mathbb E[x_1 \mid x_t = x] - \dot\sigma_t\sigma_t\nabla\log p_t(x)$,
# which is what `GaussianMixture.marginal_velocity` computes for any affine path:

# %%
course_lib.show(twin.marginal_velocity)

# %% [markdown]
# It should satisfy the continuity equation with the mixture's exact noised densities.
# The check below draws points from $p_t$ and evaluates both sides of
# $\partial_t\log p_t = -\nabla\cdot u_t - u_t\cdot\nabla\log p_t$, the left by a central
# difference in $t$, the right by automatic differentiation. The last line pairs the
# linear path's velocity with the cosine path's densities, which it does not generate:
# the check can fail.

# %%
for label, path in paths.items():
    for t in (0.25, 0.5, 0.75):
        c = ff.continuity_check(twin, path, fm.exact_velocity(twin, path), t, generator=generator)
        print(
            f"{label:<32} t = {t:.2f}: max |residual| {c.max_error:.1e} "
            f"(size of ∂_t log p: {c.scale:.1e})"
        )
wrong = ff.continuity_check(twin, cosine, fm.exact_velocity(twin, linear), 0.5, generator=generator)
print(f"{'linear velocity, cosine densities':<32} t = 0.50: max |residual| {wrong.max_error:.1e}")

# %% [markdown]
# Residuals of order $10^{-7}$ or below (the central difference's round-off) against
# relative residuals of $10^{-7}$ or below: the closed form is right, for every path. The field is
# worth looking at. Early on ($t = 0.2$) it points almost straight at the data's mean;
# late ($t = 0.8$) every region has decided which Gaussian it goes to.

# %%
u_exact = fm.exact_velocity(twin, linear)
fig, axes = plotting.figure_row(3, size=3.8)
for ax, t in zip(axes, (0.2, 0.5, 0.8), strict=True):
    noised = twin.noised(float(linear.alpha(t)), float(linear.sigma(t)))
    plotting.density(noised.log_prob, ax=ax, log=True, title=f"p_t and u_t, t = {t}")
    plotting.vector_field(
        lambda x, t=t: u_exact(x.double(), torch.tensor(t, dtype=torch.float64)).float(),
        ax=ax,
        title=f"p_t and u_t on the linear path, t = {t}",
        n=15,
    )
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Regressing a field nobody can compute
#
# ### Flow matching, and why it is intractable
#
# For a data set of $N$ points $u_t$ does have a closed form — a posterior average over
# all $N$ training points, $O(N)$ work per evaluation — but its exact flow only
# reproduces the training set; for the data *distribution* there is none. The regression we would like to run,
#
# $$ \mathcal L_{\text{FM}}(\theta) = \mathbb E_{t,\,x_t \sim p_t}\,\big\|v_\theta(x_t, t) - u_t(x_t)\big\|^2, $$
#
# needs $u_t$ at every training point. The conditional velocity, in contrast, is a
# difference of two numbers we have in hand. The **conditional flow-matching** loss
# regresses it instead:
#
# $$ \mathcal L_{\text{CFM}}(\theta) = \mathbb E_{t \sim U[0,1],\ x_0 \sim \mathcal N(0,I),\ x_1 \sim p_{\text{data}}}\,
#    \big\|v_\theta(\alpha_t x_1 + \sigma_t x_0,\ t) - (\dot\alpha_t x_1 + \dot\sigma_t x_0)\big\|^2. $$
#
# ### The gradient identity, step by step
#
# Write $u^c = \dot\alpha_t x_1 + \dot\sigma_t x_0$ for the conditional target and
# $v = v_\theta(x_t, t)$. Expand both squares:
#
# $$ \|v - u^c\|^2 = \|v\|^2 - 2\,v\cdot u^c + \|u^c\|^2, \qquad
#    \|v - u_t(x_t)\|^2 = \|v\|^2 - 2\,v\cdot u_t(x_t) + \|u_t(x_t)\|^2. $$
#
# 1. The first terms have equal expectations: both are $\mathbb E\|v_\theta(x_t, t)\|^2$
#    over the same law of $(t, x_t)$.
# 2. The cross terms too: $v$ depends on the pair only through $x_t$, so conditioning on
#    $x_t$ gives $\mathbb E[v\cdot u^c] = \mathbb E\big[v\cdot\mathbb E[u^c \mid x_t]\big] = \mathbb E[v\cdot u_t(x_t)]$ —
#    the definition of the marginal velocity, used once more.
# 3. The last terms do not involve $\theta$.
#
# So $\mathcal L_{\text{CFM}}(\theta) = \mathcal L_{\text{FM}}(\theta) + C$ with
# $C = \mathbb E\|u^c\|^2 - \mathbb E\|u_t(x_t)\|^2 = \mathbb E\,\|u^c - u_t(x_t)\|^2$, the
# mean conditional variance of the target. The two losses have **the same gradient**
# and the same minimiser, $v_\theta = u_t$ (Lipman et al. {cite}`lipman2023flow`,
# Theorem 2), and the conditional loss never reaches zero: its minimum is $C$. This is
# chapter 1's denoising score matching argument again, for a velocity instead of a
# score. (The code averages the squared error over the $D$ coordinates, like chapter 3's
# loss, so the numbers it prints are these losses divided by $D$.)

# %%
course_lib.show(fm.cfm_loss)
course_lib.show(fm.cfm_loss_at, docstring=False)

# %% [markdown]
# With the exact field in hand we can watch the identity at work. Adding a constant
# $\delta$ to the exact field raises the (per-coordinate) loss by $\|\delta\|^2/D$ in
# expectation and by nothing else, because the cross term
# $(2/D)\,\delta\cdot\mathbb E[u_t(x_t) - u^c]$ has mean zero.
# The same pairs and times serve every row (common random numbers), so the
# differences are measured much more precisely than the losses themselves.

# %%
n_loss = cfg.pick(smoke=20_000, cpu=100_000, gpu=400_000)
x1_l = twin.sample(n_loss, generator).double()
x0_l = torch.randn(n_loss, 2, generator=generator, dtype=torch.float64)
t_l = torch.rand(n_loss, generator=generator, dtype=torch.float64)
base_loss = float(fm.cfm_loss_at(u_exact, x0_l, x1_l, t_l, linear))
print(f"CFM loss of the exact field (its minimum C / D, D = 2): {base_loss:.4f}")
for d in (0.05, 0.1, 0.3):
    delta = torch.tensor([d, -d], dtype=torch.float64)
    shifted = float(
        fm.cfm_loss_at(lambda x, s, delta=delta: u_exact(x, s) + delta, x0_l, x1_l, t_l, linear)
    )
    print(
        f"  exact field + ({d:+.2f}, {-d:+.2f}): loss {shifted:.4f}, increase "
        f"{shifted - base_loss:.5f} (predicted ‖δ‖²/2 = {float((delta**2).mean()):.5f})"
    )

# %% [markdown]
# ## 4. Flow matching with a Gaussian path *is* diffusion
#
# ### Four parameterisations of one prediction
#
# On an affine path, $x_t = \alpha_t x_1 + \sigma_t x_0$ ties together the two unknowns
# $x_1$ and $x_0$: a network that predicts one of them predicts the other, the
# velocity, and (by Tweedie's formula, $\nabla\log p_t = -\mathbb E[x_0 \mid x_t]/\sigma_t$)
# the score. The conversions are two-by-two linear systems; each is a tested function
# of `course_lib.flow_matching` (round trips to $10^{-10}$ in float64):
#
# | from | to velocity |
# | --- | --- |
# | noise prediction $\hat\varepsilon$ (chapter 3) | exercise 6.1 |
# | data prediction $\hat x_1$ (chapter 3's $\hat x_0$, EDM's $D_\theta$) | $u = \dot\alpha_t\hat x_1 + \frac{\dot\sigma_t}{\sigma_t}(x - \alpha_t\hat x_1)$ |
# | score $\nabla\log p_t$ | $u = \frac{\dot\alpha_t}{\alpha_t}x + \big(\frac{\dot\alpha_t\sigma_t^2}{\alpha_t} - \dot\sigma_t\sigma_t\big)\nabla\log p_t$ |
#
# and back, $\hat x_1 = (\sigma_t u - \dot\sigma_t x)/(\dot\alpha_t\sigma_t - \dot\sigma_t\alpha_t)$,
# $\hat\varepsilon = (\dot\alpha_t x - \alpha_t u)/(\dot\alpha_t\sigma_t - \dot\sigma_t\alpha_t)$ and
# $\nabla\log p_t = -\hat\varepsilon/\sigma_t = (\alpha_t u - \dot\alpha_t x)/\big(\sigma_t(\dot\alpha_t\sigma_t - \dot\sigma_t\alpha_t)\big)$.
# (All of this assumes independent pairs, $x_0 \sim \mathcal N(0, I)$ independent of $x_1$:
# Tweedie's formula for the noise needs it. The couplings of sections 5 and 6 keep the
# gradient identity of section 3 but lose the score conversions.)
#
# ### Exercise 6.1: a noise predictor as a velocity
#
# Write `velocity_from_eps(x, eps, alpha, sigma, d_alpha, d_sigma)`: the velocity of the
# path at $x = x_t$ when the noise is (predicted to be) `eps`, with the arguments
# $\alpha_t, \sigma_t, \dot\alpha_t, \dot\sigma_t$ at the current time. Derive it first:
# solve $x = \alpha_t x_1 + \sigma_t\varepsilon$ for $x_1$, then use
# $u = \dot\alpha_t x_1 + \dot\sigma_t\varepsilon$.


# %% tags=["exercise"]
def velocity_from_eps(x, eps, alpha, sigma, d_alpha, d_sigma):
    # YOUR CODE HERE: return u, shape (B, D)
    raise NotImplementedError


# %%
ch06.check_velocity_from_eps(velocity_from_eps)


# %% tags=["solution", "hide-input"]
def velocity_from_eps(x, eps, alpha, sigma, d_alpha, d_sigma):
    x1 = (x - sigma * eps) / alpha
    return d_alpha * x1 + d_sigma * eps


ch06.check_velocity_from_eps(velocity_from_eps)

# %% [markdown]
# The library's version, and the one function that turns a chapter 3/5 diffusion model
# into a flow: evaluate the noise predictor at diffusion time $s = 1 - t$ and convert.

# %%
course_lib.show(fm.velocity_from_eps, docstring=False)
course_lib.show(fm.velocity_from_diffusion_eps)

# %% [markdown]
# ### The probability-flow ODE is the VP flow
#
# If the statement "a diffusion model is a flow" is exact, the VP flow of the exact
# noise predictor must retrace chapter 5's probability-flow ODE step for step: the same
# RK4 steps, one run forward in flow time from $t = 0$, the other backward in diffusion
# time from $s = 1$, on mirrored grids.

# %%
vp_sde = sdes.VPSDE()
exact_score = sdes.exact_score(vp_sde, twin)


def exact_eps(x, s):  # chapter 5's exact noise predictor, in diffusion time s
    return -vp_sde.marginal(s).std[:, None].to(x) * exact_score(x, s)


flow_run = fm.sample(fm.velocity_from_diffusion_eps(exact_eps, vp), z_toy, 40, "rk4", vp).x
pf_run = solvers.solve_ode(
    sdes.pf_ode_drift(vp_sde, exact_score), z_toy, 1 - fm.time_grid(40, vp), "rk4"
).x
print(
    f"VP flow vs chapter 5's PF-ODE, 40 RK4 steps: max difference {float((flow_run - pf_run).abs().max()):.1e}"
)

# %% [markdown]
# Identical to round-off. The *training* objectives are related just as exactly. With
# $\hat v = $ `velocity_from_eps`$(\hat\varepsilon)$, the velocity error of a noise
# predictor is its noise error times one number per time,
# $\hat v - u^c = \big(\dot\sigma_t - \dot\alpha_t\sigma_t/\alpha_t\big)(\hat\varepsilon - x_0)$
# (substitute $x_1 = (x_t - \sigma_t x_0)/\alpha_t$ into $u^c$ and subtract). So the CFM
# loss of a noise predictor is chapter 3's $\varepsilon$-loss with the weight
#
# $$ \lambda_t = \Big(\dot\sigma_t - \frac{\dot\alpha_t\sigma_t}{\alpha_t}\Big)^2, $$
#
# which on the linear path is $\lambda_t = 1/t^2$. *This* is the precise sense in which
# flow matching with a Gaussian path is diffusion: the same family of models, the same
# marginal paths (up to the choice of $\alpha_t, \sigma_t$), a different weighting of
# the noise levels in the loss, and — the practical difference — what the network is
# asked to output: on the linear path the target $x_1 - x_0$ is of order one at every
# $t$, whereas turning $\hat\varepsilon$ into a velocity divides by $\alpha_t \to 0$ near
# $t = 0$. (Kingma & Gao {cite}`kingma2023understanding` push the weighting view to its
# end; chapter 5's EDM is another point of the same design space.)
#
# The equivalence goes further than the loss. With independent pairs, two Gaussian
# paths with the same signal-to-noise ratio $\alpha_t/\sigma_t$ at times $t$ and $t'$ have
# the same law of $x_t/\sigma_t$; so their flows differ only by a change of time and a
# rescaling of $x$, and they carry every noise draw to **the same data point**. The path
# does not change the model, only how its trajectories are parameterised — which
# matters to a solver with uniform steps in $t$ (the motivation's four Euler steps) and
# to the loss weighting, not to the destination. Chapter 4's DDIM is an example: DDIM's
# update is exactly Euler's method on the *linear* path, in the rescaled variable
# $x/(\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha})$ at time $t = \sqrt{\bar\alpha}/(\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha})$
# (substitute and compare the two updates). The cell checks the "same destination" claim
# for the linear and cosine paths with 400 RK4 steps from the same noise.

# %%
same_noise = z_toy[:500]
ends = {
    label: fm.sample(fm.exact_velocity(twin, path), same_noise, 400, "rk4", path).x
    for label, path in [("linear", linear), ("cosine", cosine)]
}
gap = float((ends["linear"] - ends["cosine"]).norm(dim=1).max())
print(
    f"linear vs cosine path, endpoints of the exact flows from the same noise: max distance {gap:.1e}"
)

# %%
course_lib.show(fm.eps_loss_weight)
for label, path in paths.items():
    lam = fm.eps_loss_weight(path, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    print(f"{label:<32} λ_t at t = 0.1, 0.5, 0.9: {', '.join(f'{v:.3g}' for v in lam.tolist())}")

# %% [markdown]
# ## 5. Rectified flow and reflow
#
# ### Straight conditional paths, curved marginal ones
#
# On the linear path every conditional path is a straight segment at constant speed.
# One Euler step would follow it exactly — *if* the sampler knew the pair. It does not,
# and the paths of independent pairs **cross**: two particles meet at the same point at
# the same time, and there the marginal velocity averages their directions. The
# trajectories of an ODE can never meet (from any point at any time there is one
# solution), so the marginal flow bends wherever the conditional paths cross.
#
# In one dimension the whole story fits in the $(t, x)$ plane, where a crossing is
# visible as two lines that intersect. The data are two narrow bumps at $\pm 1.5$ (a
# one-dimensional Gaussian mixture, with its exact marginal velocity from the same
# `marginal_velocity`). Left: the straight paths of forty independent pairs; right: the
# exact marginal flow from the same noise. In two or more dimensions two straight paths
# almost never meet *exactly*, but they pass close to each other everywhere, with the
# same effect.

# %%
twin_1d = GaussianMixture.isotropic([0.5, 0.5], [[-1.5], [1.5]], 0.15)
x0_1d = torch.randn(40, 1, generator=generator, dtype=torch.float64)
x1_1d = twin_1d.sample(40, generator).double()
run_1d = fm.sample(fm.exact_velocity(twin_1d, linear), x0_1d, 100, "rk4", keep=2)
ff.plot_crossing(x0_1d, x1_1d, run_1d.trajectory, run_1d.times)
plt.show()
n_pairs = 40 * 39 // 2
print(
    f"independent pairs: {ff.count_crossings(x0_1d, x1_1d)} of {n_pairs} pairs of paths meet; "
    f"the flow's own pairs (x0, x̂1): {ff.count_crossings(x0_1d, run_1d.x)}"
)

# %% [markdown]
# About half of all pairs of independent paths meet; the flow's trajectories never do,
# and its endpoints keep the order of its starting points. The flow pays for this with
# curves: early on ($u_t \approx \mathbb E[x_1] - x$) all particles contract towards the
# middle, where the two bumps' pulls cancel, and those that start near $x = 0$ decide
# last.
#
# %% [markdown]
# ### Exercise 6.2: predict before you run
#
# Take **one** Euler step, from $t = 0$ to $t = 1$, with the *exact* marginal velocity
# of the linear path and independent pairs: $\hat x_1 = x_0 + u_0(x_0)$. Where do the
# samples land? Choose a letter and write it down before you run the cell after the
# check.

# %%
for letter, text in ch06.ONE_STEP_CHOICES.items():
    print(f"({letter}) {text}")

# %% tags=["exercise"]
my_choice = None  # YOUR PREDICTION: "a", "b", "c" or "d"

# %%
ch06.check_predict_one_step(my_choice)

# %% tags=["solution", "hide-input"]
my_choice = "b"  # u_0(x) = E[x1 - x0 | x0 = x] = E[x1] - x: every sample lands on the mean
ch06.check_predict_one_step(my_choice)

# %%
one_step = fm.sample(u_exact, z_toy, 1, "euler").x
print(
    f"one Euler step of the exact field: mean of the samples {one_step.mean(0).tolist()}, "
    f"largest distance from it {float((one_step - one_step.mean(0)).norm(dim=1).max()):.1e}"
)
print(f"the data mean: {twin.mean().tolist()}")

# %% [markdown]
# ### Straightness
#
# How far from one step is a flow? Liu et al. {cite}`liu2023rectified` measure it along
# the flow's own trajectories $\hat x_t$, from $\hat x_0$ to $\hat x_1$:
#
# $$ S = \int_0^1 \mathbb E\,\big\|(\hat x_1 - \hat x_0) - v(\hat x_t, t)\big\|^2\,dt, $$
#
# zero exactly when every trajectory is a straight line at constant speed, and then
# one Euler step is exact. A related number is the **path energy**
# $\mathcal E = \int_0^1\mathbb E\|v(\hat x_t, t)\|^2 dt$. Since $\int_0^1 v\,dt = \hat x_1 - \hat x_0$,
# expanding the square gives $\mathcal E = S + \mathbb E\|\hat x_1 - \hat x_0\|^2$: the energy is
# the displacement's cost plus the detour. `fm.straightness` integrates both along Euler
# trajectories.

# %%
course_lib.show(fm.straightness, docstring=False)

# %% [markdown]
# ### Reflow: make the coupling deterministic, and train again
#
# The crossings come from the coupling: independent pairs. The trained flow itself
# defines a better one. Draw noise $x_0$, solve the flow's ODE to get $\hat x_1$, and
# train a *new* flow on the pairs $(x_0, \hat x_1)$ with the same linear path. That is
# **reflow** (Liu et al., Algorithm 1); the new model is "2-rectified flow", 2-RF. The
# pairs are a deterministic function of the noise, made by a flow whose trajectories
# never meet, so the straight paths between them meet far less often (in one
# dimension, never: the flow keeps the order of its particles, as the count above
# showed). For exact flows, Liu et al. prove that the transport cost
# $\mathbb E\|\hat x_1 - x_0\|^2$ never increases under reflow, and that the paths become
# straight as it is repeated (their §3); a learned 2-RF also inherits its teacher's
# errors.

# %%
course_lib.show(fm.reflow_pairs)

# %% [markdown]
# Now the networks. Chapter 3's MLP and training budget (`toy_flow.recipe`), trained with
# the CFM loss through the course's one training loop: first rectified flow with
# independent pairs (1-RF, also called I-CFM), then 2-RF on pairs from its ODE (100 RK4
# steps per pair). The OT-CFM model of section 6 is trained here too, so that every
# table of the chapter has all three.

# %%
flows = {}
flows["I-CFM (1-RF)"] = toy_flow.train_toy_flow(cfg, toy_name)
flows["OT-CFM"] = toy_flow.train_toy_flow(
    cfg, toy_name, toy_flow.recipe(cfg, toy_name, coupling="ot")
)
flows["2-RF (reflow)"] = toy_flow.train_toy_flow(
    cfg,
    toy_name,
    toy_flow.recipe(cfg, toy_name, coupling="reflow"),
    teacher=flows["I-CFM (1-RF)"],
)
for label, f in flows.items():
    status = "loaded" if f.resumed_at == f.recipe.base.steps else "trained now"
    print(f"{label:<14} {f.recipe.base.steps} steps, {status} ({f.checkpoint.name})")

# %%
straight = {"exact I-CFM field": fm.straightness(u_exact, z_toy, 100)}
straight |= {label: fm.straightness(f.velocity, z_toy.float(), 100) for label, f in flows.items()}
print(f"{'field':<18} {'straightness S':>15} {'path energy':>12} {'E‖x̂1 − x̂0‖²':>14}")
for label, s in straight.items():
    print(f"{label:<18} {s.straightness:>15.4f} {s.path_energy:>12.4f} {s.displacement:>14.4f}")

# %% [markdown]
# In the `cpu` profile reflow cuts the straightness by three orders of magnitude, and
# OT-CFM (section 6), trained with straight pairs from the start, by two. The
# displacement $\mathbb E\|\hat x_1 - \hat x_0\|^2$ is nearly the same for all four
# fields; what reflow removes is the detour, $\mathcal E - \mathbb E\|\hat x_1 - \hat x_0\|^2 = S$.
# (In `smoke` the networks train for thirty steps and these numbers mean little.) Now
# the payoff: **one Euler step** of each learned flow, from the same noise.

# %%
one_step_kl = {}
fig, axes = plotting.figure_row(len(flows) + 1, size=3.4)
plotting.scatter(twin.sample(n_toy, generator), ax=axes[0], title="data")
for ax, (label, f) in zip(axes[1:], flows.items(), strict=True):
    x_one = fm.sample(f.velocity, z_toy.float(), 1, "euler").x
    one_step_kl[label] = kl_to_twin(x_one)
    plotting.scatter(x_one, ax=ax, kind="model", title=f"{label}, 1 step")
    ax.set_xlabel(f"KL {one_step_kl[label]:.2f} nats")
fig.tight_layout()
plt.show()

# %% [markdown]
# Before reflow, one step collapses the samples towards the mean, as exercise 6.2
# predicted (the learned field is not exact, so the collapse is not complete). After
# reflow, one step lands on the eight modes. This is the two-dimensional picture of
# why one Euler step of a trained 1-RF on CIFAR-10 is reported at FID 378, and of 2-RF
# at 12.2 (Liu et al., Table 1, no distillation; figures from secondary sources, marked
# unverified in the course's list of published numbers). The animations follow the particles along the
# trajectories, 50 frames each:

# %%
for label in ("I-CFM (1-RF)", "2-RF (reflow)"):
    run = fm.sample(flows[label].velocity, z_toy[:400].float(), 50, "euler", keep=1)
    display(
        HTML(
            plotting.animate(
                run.trajectory,
                data=twin.sample(2000, generator),
                times=run.times.tolist(),
                title=label,
                max_frames=51,
            )
        )
    )

# %% [markdown]
# ## 6. Minibatch optimal transport
#
# ### The coupling is a choice
#
# Nothing in section 3 required $x_0$ and $x_1$ to be independent. Any **coupling**
# $\pi(x_0, x_1)$ with the right marginals ($\mathcal N(0, I)$ and the data) defines
# conditional paths, a marginal path from noise to data, and a CFM loss with the same
# gradient identity (the proof only used that $x_t$ is a function of the pair). The
# best coupling for straight paths is the **optimal transport** plan, which minimises
# $\mathbb E_\pi\|x_1 - x_0\|^2$; its value is the squared 2-Wasserstein distance $W_2^2$.
# Its straight paths never meet: if two particles, on paths $a \to b$ and $a' \to b'$ of
# lengths $L$ and $L'$, were at one point at one time $t$, swapping their destinations
# would cost $\|a - b'\|^2 + \|a' - b\|^2 \le L^2 + L'^2 - 2t(1-t)(L - L')^2$ (the triangle
# inequality through the meeting point, then convexity of the square), with equality
# only if the two paths are the same — contradicting optimality (McCann
# {cite}`mccann1997convexity`; in one dimension it says the OT coupling is monotone). So each
# point at each time has a single conditional velocity, the marginal flow moves along
# the straight paths themselves, and one Euler step is exact.
#
# The OT plan of a whole data set is out of reach. Tong et al. {cite}`tong2024otcfm`
# compute it **per batch**: draw $B$ noise vectors and $B$ data points, solve the
# assignment problem that pairs them with the least total squared distance, and use
# those pairs. The course solves it exactly with scipy's `linear_sum_assignment`
# (a shortest-augmenting-path algorithm of the Jonker–Volgenant kind, as described by
# Crouse; POT's network simplex was measured against it
# in `benchmarks/ot_solvers.py` and was not clearly faster at these batch sizes).

# %%
course_lib.show(couplings.minibatch_ot)
course_lib.show(couplings.ot_assignment, docstring=False)

# %%
x0_b = torch.randn(60, 2, generator=generator, dtype=torch.float64)
x1_b = twin.sample(60, generator).double()
x0_ot, x1_ot = couplings.minibatch_ot(x0_b, x1_b)
fig, axes = plotting.figure_row(2, size=4.2)
for ax, (label, (a, b)) in zip(
    axes, {"independent": (x0_b, x1_b), "minibatch OT": (x0_ot, x1_ot)}.items(), strict=True
):
    a_, b_ = a.numpy(), b.numpy()
    ax.plot([a_[:, 0], b_[:, 0]], [a_[:, 1], b_[:, 1]], "k-", lw=0.6, alpha=0.5)
    ax.scatter(a_[:, 0], a_[:, 1], s=8, c=plotting.COLORS["init"], label="x0")
    ax.scatter(b_[:, 0], b_[:, 1], s=8, c=plotting.COLORS["model"], label="x1")
    ax.set(xlim=plotting.LIMITS, ylim=plotting.LIMITS, aspect="equal")
    ax.set_title(f"{label}: mean cost {couplings.transport_cost(a, b):.2f}")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### The batch size moves the coupling towards the OT plan
#
# A batch's optimal pairing is optimal *for that batch*; averaged over batches it is a
# coupling of the two full distributions, so its expected cost is at least $W_2^2$, and
# it approaches $W_2^2$ as $B$ grows. To see the approach against an exact number we
# need a target whose $W_2$ is known: a Gaussian $\mathcal N(m, C)$, for which
# $W_2^2\big(\mathcal N(0, I), \mathcal N(m, C)\big) = \|m\|^2 + \operatorname{tr}\big(I + C - 2C^{1/2}\big)$.

# %%
m_g = torch.tensor([1.0, -0.5], dtype=torch.float64)
C_g = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
L_g = torch.linalg.cholesky(C_g)
w2_exact = couplings.gaussian_w2_squared(torch.zeros(2), torch.eye(2), m_g, C_g)
batch_sizes = cfg.pick(
    smoke=[4, 16, 64], cpu=[2, 4, 16, 64, 256, 1024], gpu=[2, 4, 16, 64, 256, 1024, 2048]
)
cost_rows = ff.ot_cost_vs_batch(
    lambda n, g: m_g + torch.randn(n, 2, generator=g, dtype=torch.float64) @ L_g.T,
    batch_sizes,
    repeats=lambda b: cfg.pick(smoke=3, cpu=max(8, 4096 // b), gpu=max(16, 8192 // b)),
    generator=generator,
)
independent_exact = float((m_g**2).sum() + 2 + torch.trace(C_g))  # E‖x1 - x0‖², x0 ⟂ x1
print(f"exact: independent {independent_exact:.3f}, W₂² = {w2_exact:.3f} (the OT plan)")
for r in cost_rows:
    print(
        f"B = {r.batch:>5}: independent {r.independent:.3f}, minibatch OT {r.ot:.3f} "
        f"± {r.ot_se:.3f} (standard error)"
    )
ff.plot_ot_cost(cost_rows, w2_exact)
plt.show()

# %% [markdown]
# The independent coupling pays $\mathbb E\|x_1 - x_0\|^2 = \|m\|^2 + \operatorname{tr}(I + C)$
# whatever the batch; minibatch OT falls towards $W_2^2$ from above. The training runs of
# this chapter use batches of a few hundred points: most of the way there in two
# dimensions. In high dimension the approach is much slower (the empirical OT cost
# converges at a rate that degrades with the dimension), one reason OT-CFM's advantage
# on images is smaller than on toys.
#
# ### Where OT fails: labels
#
# A class-conditional model $v_\theta(x, t, y)$ (chapter 8) is sampled by drawing
# $x_0 \sim \mathcal N(0, I)$ and a label $y$. Minibatch OT over a batch of *mixed*
# labels minimises the *total* squared distance, so each label receives the noise of its
# own region: the noise paired with label $y$
# is no longer $\mathcal N(0, I)$ but one region of it. Color each noise draw by the
# label (the mixture component) of its partner:

# %%
n_lab = cfg.pick(smoke=256, cpu=512, gpu=1024)
x1_lab, lab = twin.sample_with_labels(n_lab, generator)
x0_lab = torch.randn(n_lab, 2, generator=generator)
perm = couplings.ot_assignment(x0_lab, x1_lab)
fig, axes = plotting.figure_row(2, size=4.0)
ff.plot_label_partition(x0_lab, lab, ax=axes[0], title="independent: label of the partner")
ff.plot_label_partition(x0_lab, lab[perm], ax=axes[1], title="minibatch OT: label of the partner")
fig.tight_layout()
plt.show()
mass_ind = ff.label_mass(x0_lab, lab, twin.n_components)
mass_ot = ff.label_mass(x0_lab, lab[perm], twin.n_components)
print(f"‖E[x0 | label]‖ per label, independent: {', '.join(f'{v:.2f}' for v in mass_ind.tolist())}")
print(f"‖E[x0 | label]‖ per label, minibatch OT: {', '.join(f'{v:.2f}' for v in mass_ot.tolist())}")

# %% [markdown]
# Under OT each label owns a wedge of the noise, and the conditional noise has its mean
# about $1.2$ from the origin ($\sqrt{\pi/2}\,\sin(\pi/8)/(\pi/8) \approx 1.22$ for
# exact eighths of $\mathcal N(0, I)$). A conditional model trained on these pairs learns to
# transport only its wedge; at sampling time seven eighths of the noise it receives
# comes from wedges it never saw, and it has no reason to send them anywhere sensible.
# The remedies pair within each label (OT per class), or add the label to the cost.
# The course's chapter on guidance will train conditional models with independent pairs
# for this reason.
#
# ## 7. Samplers against the number of network calls
#
# Chapter 5 measured its samplers against their network calls (NFE) with the KL
# yardstick $\mathrm{KL}(q\|p) = \mathbb E_q[-\log p] - H(q)$ and the floor that exact
# samples score. The same table for flows, with the same functions
# (`sf.quality_vs_nfe`). Each flow is integrated with Euler, Heun and the adaptive
# dopri5 solver on a uniform grid in $t$; the diffusion model of chapter 3 (on this toy,
# the same MLP and budget) enters with chapter 5's samplers on EDM's grid, its best
# showing. First the exact fields of the three paths — the samplers' error alone —
# then the learned models.

# %%
course_lib.show(ff.flow_samplers, docstring=False)

# %%
plan = cfg.pick(
    smoke={ff.EULER: [2, 8], ff.HEUN: [2, 8], ff.DOPRI5: [2]},
    cpu={ff.EULER: [1, 2, 4, 8, 16, 32], ff.HEUN: [1, 2, 4, 8, 16], ff.DOPRI5: [2, 3, 4]},
    gpu={
        ff.EULER: [1, 2, 4, 8, 16, 32, 64],
        ff.HEUN: [1, 2, 4, 8, 16, 32],
        ff.DOPRI5: [2, 3, 4, 5],
    },
)
n_study = cfg.pick(smoke=500, cpu=4000, gpu=4000)
study_seeds = cfg.pick(smoke=(0,), cpu=(0, 1, 2), gpu=(0, 1, 2))
floor = metrics.kl_floor(
    lambda n: twin.sample(n, generator),
    twin.log_prob,
    n_study,
    repeats=cfg.pick(smoke=3, cpu=5, gpu=5),
)
exact_models = {
    f"exact, {label}": ff.flow_samplers(fm.exact_velocity(twin, path), path, torch.float64)
    for label, path in paths.items()
}
exact_plan = {m: [k for k in knobs if k > 1 or m != ff.EULER] for m, knobs in plan.items()}
exact_table = ff.quality_by_method(exact_models, exact_plan, kl_to_twin, (n_study, 2), study_seeds)
print(f"exact fields, KL to the data (nats), {n_study} samples, {len(study_seeds)} seed(s)")
print(ff.format_by_method(exact_table, floor=(floor.mean, floor.std)))
ff.plot_by_method(exact_table, floor=(floor.mean, floor.std), suptitle="exact velocity fields")
plt.show()

# %% [markdown]
# (One Euler step of the exact *linear-path* field puts every sample on the mean —
# exercise 6.2 — whose KL is infinite; on the cosine and VP paths one step leaves the
# noise almost where it is. The exact tables start at two steps.)
#
# Now the learned models, from the same noise. Chapter 3's diffusion MLP for this toy is
# loaded if chapter 3 has run; its EDM denoiser runs through chapter 5's samplers
# (`sf.nfe_samplers`: Euler and Heun on EDM's $\rho = 7$ grid, dopri5).

# %%
diffusion = toy_diffusion.train_toy_diffusion(cfg, toy_name)
toy_D = edm.denoiser_from_ddpm(diffusion.model, diffusion.schedule)
sigma_min = 1.001 * edm.sigma_range(diffusion.schedule)[0]
sigma_max_toy = 4.5  # chapter 5's sigma_max for the 2D toys
edm_fns = sf.nfe_samplers(toy_D, diffusion.model, diffusion.schedule, sigma_min, sigma_max_toy)
learned_models = {label: ff.flow_samplers(f.velocity, linear) for label, f in flows.items()}
learned_models["diffusion (ch. 3, EDM grid)"] = {
    ff.EULER: edm_fns[sf.EULER],
    ff.HEUN: edm_fns[sf.HEUN],
    ff.DOPRI5: edm_fns[sf.DOPRI5],
}
learned_table = ff.quality_by_method(learned_models, plan, kl_to_twin, (n_study, 2), study_seeds)
print(f"learned models, KL to the data (nats), {n_study} samples, {len(study_seeds)} seed(s)")
print(ff.format_by_method(learned_table, floor=(floor.mean, floor.std)))
ff.plot_by_method(learned_table, floor=(floor.mean, floor.std), suptitle="learned models")
plt.show()

# %%
# the sampler's share of the error: how many Euler calls bring each model within 0.1 nats
# of its own converged quality (dopri5 at the tightest tolerance of the table)
print("Euler NFE each model needs to come within 0.1 nats of its converged quality:")
reach = {}
for label, points in learned_table[ff.EULER].items():
    converged = learned_table[ff.DOPRI5][label][-1].quality
    reach[label] = ff.nfe_to_reach(points, converged + 0.1)
    print(f"  {label:<28} {reach[label]:>5.0f} NFE   (converged KL {converged:.3f})")

# %% [markdown]
# How to read it (your numbers will differ a little; the spreads say by how much).
#
# * **Among exact fields, the parameterisation decides the price.** All three paths have
#   the same noise-to-data map (section 4), but a solver with uniform steps in $t$ sees
#   them differently. With Euler the linear and cosine paths are close to each other
#   (cosine is better at two calls) and several times better than the VP path at 8–16
#   calls: the VP path's velocity changes fastest near the data, exactly where Euler's
#   error is made. Heun is *worse* than Euler at 2–8 calls (its second slope is taken at
#   a badly wrong point) and better from about 16 on for the linear and cosine paths, as
#   in chapter 5; on the VP path it has not converged at 32 calls. dopri5 reaches the
#   floor on every path.
# * **Among learned models, the coupling decides at small NFE.** One Euler step of
#   OT-CFM or 2-RF is already close to what those models reach with many steps; one
#   step of I-CFM collapses towards the mean (exercise 6.2). At large NFE every flow
#   levels off at the quality of its network, well above the floor: the eight narrow
#   Gaussians are hard for a small MLP, and the KL charges every sample between them.
#   Reflow's student inherits its teacher's errors, so its converged quality is no
#   better than I-CFM's.
# * **The diffusion model** (chapter 3's $\varepsilon$-objective, the same MLP and
#   budget, on EDM's grid) is worse at every NFE here, and its dopri5 value shows that
#   the gap is the network, not the solver. Its trajectories are no more curved than
#   I-CFM's: both use independent pairs, and Euler on EDM's ODE is Euler on the linear
#   path on another grid (section 4). What differs is the objective and its weighting
#   $\lambda_t$, the grid, and the start at $\sigma_{\max} = 4.5$ instead of pure noise.
#
# ### Likelihoods, with chapter 5's code
#
# A flow is a continuous normalizing flow, so chapter 5's `ode_log_likelihood` gives its
# exact log-likelihood: integrate $dx/dt = v$ backwards from the data at $t = 1$ to
# $t = 0$, accumulate $\int\nabla\cdot v\,dt$, and add the prior. With the exact field the
# answer must be the mixture's own $\log p$; with the learned fields it is the model's
# likelihood, and its mean over data points is a cross-entropy that can be compared with
# the data's exact entropy (its lowest possible value).


# %%
n_lik = cfg.pick(smoke=32, cpu=256, gpu=1024)
x_lik = twin.sample(n_lik, generator).double()
lik_exact = likelihood.ode_log_likelihood(
    u_exact, x_lik, 1.0, 0.0, cnf.standard_normal_log_prob, rtol=1e-7, atol=1e-7
)
lik_err = (lik_exact.log_p - twin.log_prob(x_lik)).abs()
print(
    f"exact linear-path flow: |log p - log p_mixture| max {lik_err.max():.1e} ({lik_exact.nfe} NFE)"
)
log_p_data = twin.log_prob(x_lik)
kl_pq = {}  # KL(p || q) estimated on the same points: mean of log p(x) - log q(x)
for label, f in flows.items():
    res = likelihood.ode_log_likelihood(
        f.velocity, x_lik.float(), 1.0, 0.0, cnf.standard_normal_log_prob, rtol=1e-5, atol=1e-5
    )
    kl_pq[label] = float((log_p_data - res.log_p.double()).mean())
    print(
        f"{label:<14} NLL {float(-res.log_p.mean()):.3f} nats, data entropy on the same points "
        f"{float(-log_p_data.mean()):.3f}: KL(p‖q) ≈ {kl_pq[label]:.3f} nats ({res.nfe} NFE)"
    )

# %% [markdown]
# The exact flow's likelihood agrees with the mixture to the solver's tolerance, as in
# chapter 5. The learned models' NLL exceeds the data's entropy by their KL from the
# data in the other direction, $\mathrm{KL}(p\|q) = \mathbb E_p[\log p - \log q]$, estimated
# here on the same points so that the two averages share their noise. The next chapter
# trains the same networks *for* this number, by maximum likelihood, and compares.
#
# ## 8. MNIST: a flow and a diffusion model with the same budget
#
# Chapter 3 trained a U-Net on MNIST with the $\varepsilon$-loss. `image_flow` trains the
# same U-Net, with the same data, steps, batch size, EMA and seed, with the CFM loss on
# the linear path: the two models differ in their objective only. Each is sampled with
# its natural samplers — the flow with Euler and Heun on a uniform grid, the diffusion
# model with DDIM (chapter 4) and EDM's Heun (chapter 5) — and measured with the course's
# classifier-feature FID (not comparable with any Inception FID), with the FID of as
# many real digits as the floor and its spread.

# %%
mnist_flow = image_flow.train_image_flow(cfg, "mnist")
mnist_diff = image_diffusion.train_image_diffusion(cfg, "mnist")
print(
    f"U-Net, {sum(p.numel() for p in mnist_flow.model.parameters()):,} parameters, "
    f"{mnist_flow.recipe.steps} steps each: flow {mnist_flow.checkpoint.name}, "
    f"diffusion {mnist_diff.checkpoint.name}"
)
evaluator = evaluate.course_evaluator(cfg, "mnist")
n_fid = cfg.pick(smoke=8, cpu=100, gpu=2000)
fid_floor, fid_floor_std = df.fid_floor(
    evaluator.fid, mnist_diff.images, n_fid, repeats=5, generator=generator
)
img_samplers = ff.flow_and_diffusion_samplers(mnist_flow.velocity, mnist_diff, linear)
img_plan = cfg.pick(
    smoke={"flow, Euler": [20], "flow, Heun": [10], sf.DDIM: [50], sf.HEUN: [18]},
    cpu={
        "flow, Euler": [10, 20, 50],
        "flow, Heun": [5, 10, 25],
        sf.DDIM: [20, 50],
        sf.HEUN: [10, 18],
    },
    gpu={
        "flow, Euler": [10, 20, 50, 100],
        "flow, Heun": [5, 10, 25, 50],
        sf.DDIM: [20, 50, 100],
        sf.HEUN: [10, 18, 40],
    },
)
mnist_table = sf.quality_vs_nfe(
    img_samplers, img_plan, evaluator.fid, (n_fid, 1, 28, 28), seeds=(cfg.seed,), device=cfg.device
)
print(f"MNIST classifier-feature FID, {n_fid} samples per entry (lower is better)")
print(sf.format_nfe_table(mnist_table, floor=(fid_floor, fid_floor_std), digits=2))
sf.plot_quality_vs_nfe(
    mnist_table,
    floor=(fid_floor, fid_floor_std),
    title=f"MNIST, one U-Net and budget, two objectives ({n_fid} samples)",
    ylabel="classifier-feature FID (lower is better)",
    ymin=1.0,
)
plt.show()

# %%
flow_20 = sf.find(mnist_table, "flow, Euler", 20)
heun_20 = sf.find(mnist_table, "flow, Heun", 10)
ddim_50 = sf.find(mnist_table, sf.DDIM, 50)
best_flow_20 = min(flow_20, heun_20, key=lambda p: p.quality)
margin = ddim_50.quality - best_flow_20.quality
goal_met = margin >= 0
outside_noise = abs(margin) > fid_floor_std
rows = [
    ("flow, 20 Euler steps (20 NFE)", flow_20),
    ("flow, 10 Heun steps (20 NFE)", heun_20),
    ("diffusion, DDIM 50 steps", ddim_50),
]
n_show = min(12, n_fid)
fig, axes = plt.subplots(len(rows), 1, figsize=(n_show * 0.75, len(rows) * 1.2))
for ax, (title, p) in zip(axes, rows, strict=True):
    plotting.image_grid(p.x[:n_show], nrow=n_show, ax=ax, title=f"{title}: FID {p.quality:.1f}")
fig.tight_layout()
plt.show()
print(
    f"goal: flow at 20 NFE ({best_flow_20.quality:.2f}) at least as good as DDIM@50 "
    f"({ddim_50.quality:.2f}): {'met' if goal_met else 'not met'}; the difference "
    f"{margin:+.2f} is {'outside' if outside_noise else 'inside'} the real-vs-real spread "
    f"± {fid_floor_std:.2f} ({n_fid} samples)"
)

# %% [markdown]
# What to notice. The flow's samples and the diffusion model's come from the same noise
# but different models, so the digits differ. At equal budgets the flow at 20 calls
# competes with DDIM at 50. Both samplers integrate the same linear-path geometry (DDIM
# is Euler on the linear path after rescaling $x$, section 4); the difference is the
# objective (velocity against $\varepsilon$, with its weighting $\lambda_t$) and the time
# grid. Whether the difference is real is printed above
# against the spread of real digits: with a hundred samples, differences of a few FID
# points are noise. The published picture on CIFAR-10 (Lipman et al., Table 1, dopri5):
# flow matching on the OT path reached FID 6.35 at 142 NFE and 2.99 bits/dim, against
# 7.48 at 274 NFE for a DDPM-trained model and 8.06 at 183 NFE for flow matching on the
# diffusion path — the same network, different paths and objectives.
#
# ## CIFAR-10 (`gpu` profile)
#
# On a GPU the same comparison runs for CIFAR-10, with chapter 3's CIFAR-10 recipe for
# both models (about half an hour each on one GPU if chapter 3 has not trained its
# model). The list is empty in `smoke` and `cpu`. The course has not run this cell on a
# GPU yet: treat its output as a first measurement.

# %%
extra_tables = {}
for name in cfg.pick(smoke=[], cpu=[], gpu=["cifar10"]):
    flow_x = image_flow.train_image_flow(cfg, name)
    diff_x = image_diffusion.train_image_diffusion(cfg, name)
    ev = evaluate.course_evaluator(cfg, name)
    samplers_x = ff.flow_and_diffusion_samplers(flow_x.velocity, diff_x, linear)
    extra_tables[name] = sf.quality_vs_nfe(
        samplers_x,
        img_plan,
        ev.fid,
        (n_fid, *diff_x.images.shape[1:]),
        seeds=(cfg.seed,),
        device=cfg.device,
    )
    floor_x = df.fid_floor(ev.fid, diff_x.images, n_fid, repeats=3, generator=generator)
    print(f"{name}: classifier-feature FID, {n_fid} samples per entry")
    print(sf.format_nfe_table(extra_tables[name], floor=floor_x, digits=2))

# %% [markdown]
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
card = [
    ("run", cfg.describe()),
    ("chapter wall time", f"{elapsed:.1f} s"),
    (
        "quality: 2D KL floor (exact samples)",
        f"{floor.mean:.3f} ± {floor.std:.3f} nats ({n_study} samples)",
    ),
]
for label, s in straight.items():
    card.append(
        (f"straightness S: {label}", f"{s.straightness:.4f}  (path energy {s.path_energy:.3f})")
    )
for label, kl in one_step_kl.items():
    card.append((f"quality: 2D KL, one Euler step, {label}", f"{kl:.3f} nats"))
for label, points in learned_table[ff.EULER].items():
    p4 = next((p for p in points if p.knob == 4), points[0])
    card.append(
        (
            f"quality: 2D KL, Euler@{p4.knob}, {label}",
            f"{p4.quality:.3f} ± {p4.spread:.3f} nats ({len(study_seeds)} seed(s))",
        )
    )
for label, r in reach.items():
    card.append((f"Euler NFE to within 0.1 nats of converged, {label}", f"{r:.0f}"))
card.append(
    (
        "likelihood: exact flow log p error",
        f"{lik_err.max():.1e} nats max over {n_lik} points",
    )
)
for label, v in kl_pq.items():
    card.append(
        (f"likelihood: 2D KL(p‖q) from exact log p, {label}", f"{v:.3f} nats ({n_lik} points)")
    )
card.append(
    (
        "quality: MNIST classifier-FID flow@20 NFE vs DDIM@50",
        f"{best_flow_20.quality:.2f} vs {ddim_50.quality:.2f} (real floor {fid_floor:.2f} ± "
        f"{fid_floor_std:.2f}, {n_fid} samples; goal {'met' if goal_met else 'not met'}, "
        f"{'outside' if outside_noise else 'inside'} the spread; not Inception FID)",
    )
)
for title, p in rows:
    card.append((f"throughput: MNIST {title}", f"{p.per_second:.2f} images/s ({cfg.device.type})"))
card += [
    (
        "published: Lipman et al. 2023, Table 1, CIFAR-10",
        "FM-OT FID 6.35 @ 142 NFE, 2.99 bits/dim; FM on the diffusion path 8.06 @ 183; "
        "DDPM objective 7.48 @ 274 (dopri5)",
    ),
    (
        "published: Liu et al. 2023 (ICLR), Table 1, CIFAR-10",
        "FID 1-RF 2.58 @ 127 NFE (RK45); one Euler step: 1-RF 378, 2-RF 12.21, 3-RF 8.15 "
        "(no distillation; secondary sources)",
    ),
    (
        "published: Tong et al. 2024 (TMLR; torchcfm), CIFAR-10",
        "OT-CFM FID 3.5 with dopri5; 400k iterations at batch 128 (users report ~19 h on one "
        "RTX 4090)",
    ),
]
results_card(card)

# %% [markdown]
# How to read it. The 2D lines are measured against exact answers: the floor of exact
# samples, the closed-form likelihood, the data's entropy. The MNIST line compares two
# objectives on one network and one budget, read against the spread of real digits. The
# published lines are for scale: Inception FID on CIFAR-10 from networks trained for
# hundreds of thousands of steps on GPUs.
#
# ## Summary
#
# * A **probability path** $p_t$ from $\mathcal N(0, I)$ ($t = 0$) to the data ($t = 1$)
#   is generated by a velocity field $u_t$ when they satisfy the **continuity equation**
#   $\partial_t p_t + \nabla\cdot(p_t u_t) = 0$. Affine conditional paths
#   $x_t = \alpha_t x_1 + \sigma_t x_0$ define both: $u_t(x) = \mathbb E[\dot\alpha_t x_1 + \dot\sigma_t x_0 \mid x_t = x]$,
#   in closed form for a Gaussian mixture.
# * The **CFM loss** regresses the conditional velocity; it differs from the intractable
#   marginal regression by a constant (the conditional variance), so it has the same
#   gradient and the same minimiser.
# * With a Gaussian path, flow matching *is* diffusion: $\varepsilon$, $\hat x_1$, score
#   and velocity convert exactly; the VP flow of a noise predictor is chapter 5's PF-ODE;
#   the CFM loss of a noise predictor is the $\varepsilon$-loss weighted by
#   $(\dot\sigma_t - \dot\alpha_t\sigma_t/\alpha_t)^2$.
# * Straight conditional paths do not make a straight flow: independent pairs cross,
#   and the marginal flow bends (one Euler step of the exact linear-path field lands on
#   the mean).
#   **Couplings** straighten it: **reflow** retrains on the flow's own pairs, **minibatch
#   OT** pairs each batch optimally (cost approaching $W_2^2$ as the batch grows, but
#   breaking conditional models). Straighter flows need fewer network calls.
#
# ## Further reading
#
# * Lipman, Chen, Ben-Hamu, Nickel & Le {cite}`lipman2023flow`: probability paths, the
#   marginal velocity (Theorem 1), the CFM gradient identity (Theorem 2), Gaussian paths
#   (§4, the diffusion and OT paths), Table 1.
# * Liu, Gong & Liu {cite}`liu2023rectified`: rectified flow, reflow (Algorithm 1),
#   straightness and the non-increasing transport cost (§3), one-step generation (Table 1).
# * Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf & Bengio {cite}`tong2024otcfm`:
#   minibatch OT couplings (OT-CFM), I-CFM, and the relation to dynamic OT.
# * Albergo & Vanden-Eijnden (stochastic interpolants) for the same construction with
#   stochastic paths; Holderrieth & Erives, MIT 6.S184 lecture notes
#   {cite}`holderrieth2025introduction`, for a course-length treatment of flows and
#   diffusion together; Song et al. {cite}`song2021sde` for the PF-ODE this chapter
#   recovers, and Chen et al. {cite}`chen2018neuralode` for the continuous normalizing
#   flows of chapter 7.
