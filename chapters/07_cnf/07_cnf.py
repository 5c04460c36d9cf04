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
# # 7. Continuous normalizing flows: neural ODEs, the change of variables, FFJORD, and why flow matching won
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/07_cnf/07_cnf.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Derive* the change of variables of a normalizing flow, the triangular Jacobian of a coupling layer, the instantaneous change of variables $d\log p/dt = -\nabla\cdot v$, and the mean and variance of Hutchinson's trace estimator. *Implement* an affine change of variables and predict an estimator's variance. *Train* the same network as a continuous normalizing flow by maximum likelihood (FFJORD) and by flow matching, and *measure* what each costs — wall time, network calls, and likelihood against the twin's exact $\log p$. |
# | **Prerequisites** | Chapters 5 and 6: ODE solvers, the probability-flow likelihood, flow matching and its paths. The determinant of a triangular matrix; the trace; variances of sums. |
# | **Run time** | `smoke` ≈ 15 s · `cpu` ≈ 3 min with chapters 3 and 6's MNIST models on disk (about 2 min more for each it must train) · `gpu` not yet measured |

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
from course_lib import (
    cnf,
    data,
    ddpm,
    image_diffusion,
    image_flow,
    likelihood,
    metrics,
    plotting,
    realnvp,
    solvers,
    toy_cnf,
    toy_flow,
    toys,
    train,
)
from course_lib import cnf_figures as cf
from course_lib import flow_matching as fm
from course_lib import sde_figures as sf
from course_lib.exercises import ch07

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: one model, two ways to train it
#
# Chapter 6 trained a velocity field $v_\theta(x, t)$ by regression and then solved its
# ODE to sample. The same object — an ODE whose flow carries $\mathcal N(0, I)$ to the
# data — was studied for about four years before flow matching (2018–2022) under the
# name **continuous normalizing flow** (CNF) {cite}`chen2018neuralode,grathwohl2019ffjord`,
# and trained the way normalizing flows are trained: by maximising the exact likelihood
# of the data, which an ODE provides. This chapter builds that older road, measures what it
# costs, and shows why flow matching replaced it.
#
# The cell below times one training step of each, for the same network and batch: a
# maximum-likelihood step must *solve the ODE* (here with 8 RK4 steps, 32 network calls,
# each with its divergence) and backpropagate through the solve; a flow-matching step
# calls the network once.

# %%
toy_name = "moons"
twin = toys.twin(toy_name)  # the Gaussian-mixture twin (an EM fit): exact log p of a close proxy
net_kw = dict(hidden=64, depth=2, time_scale=1.0)
batch = toys.sample(toy_name, 128, generator)
probe_net = toy_cnf.build_model(net_kw["hidden"], net_kw["depth"], net_kw["time_scale"])


def seconds_per_step(loss, repeats=5):
    start = time.perf_counter()
    for _ in range(repeats):
        probe_net.zero_grad()
        loss().backward()
    return (time.perf_counter() - start) / repeats


mle_step = seconds_per_step(
    lambda: cnf.mle_loss(probe_net, batch, method="rk4", n_steps=8, jacobian=False)
)
fm_step = seconds_per_step(lambda: fm.cfm_loss(probe_net, batch, fm.linear_path()))
print(
    f"one training step, batch 128: maximum likelihood {1000 * mle_step:.0f} ms, "
    f"flow matching {1000 * fm_step:.1f} ms ({mle_step / fm_step:.0f}x)"
)

# %% [markdown]
# The ratio printed above — typically two orders of magnitude — is per step, before
# asking which step is worth more. The rest of
# the chapter earns the right to compare them: what a likelihood of an ODE is, how to
# compute and differentiate it, and what the two models are worth when both are done.
#
# The road map: section 1 recalls discrete normalizing flows and the change of
# variables, with a coupling flow trained on the toy; section 2 lets the number of
# layers go to infinity and finds the instantaneous change of variables; section 3
# makes its trace affordable in high dimension with Hutchinson's estimator and computes
# that estimator's variance; section 4 trains a CNF by maximum likelihood, with the
# adjoint method and two regularisers; section 5 trains the same network by flow
# matching and compares the two against the twin's exact density; section 6 turns to
# images, where the bookkeeping of a likelihood decides the number it reports.
#
# ## 1. Normalizing flows in one page
#
# ### The change of variables
#
# A normalizing flow is an invertible, differentiable map $x = f(z)$ from noise
# $z \sim \mathcal N(0, I)$ to data. The probability of a small box around $z$ is carried
# to its image, to first order a parallelepiped whose volume is $|\det \partial f/\partial z|$
# times the box's, so densities divide by it:
#
# $$ \log p_X(x) = \log p_Z\big(f^{-1}(x)\big) + \log\Big|\det\frac{\partial f^{-1}(x)}{\partial x}\Big|
#                = \log p_Z(z) - \log\Big|\det\frac{\partial f(z)}{\partial z}\Big|. $$
#
# Maximum likelihood needs $f^{-1}$ and the determinant at every data point; sampling
# needs $f$. A $D\times D$ determinant costs $O(D^3)$ — for a 784-pixel image, for every
# example at every step — so the whole art of discrete flows is to build maps whose
# Jacobians are cheap.
#
# ### Exercise 7.1: an affine change of variables
#
# The simplest flow scales and shifts each coordinate: $x = a \odot z + b$ with $a_j \neq 0$.
# Write `affine_log_prob(x, a, b)`: $\log p_X(x)$ per sample for $z \sim \mathcal N(0, I)$,
# `x` of shape `(B, D)`, `a` and `b` of shape `(D,)`.


# %% tags=["exercise"]
def affine_log_prob(x, a, b):
    # YOUR CODE HERE: return log p_X(x), shape (B,)
    raise NotImplementedError


# %%
ch07.check_affine_log_prob(affine_log_prob)


# %% tags=["solution", "hide-input"]
def affine_log_prob(x, a, b):
    z = (x - b) / a
    log_pz = -0.5 * (z**2).sum(1) - 0.5 * x.shape[1] * torch.log(torch.tensor(2 * torch.pi))
    return log_pz - torch.log(a.abs()).sum()


ch07.check_affine_log_prob(affine_log_prob)

# %% [markdown]
# ### Coupling layers
#
# An affine map is too simple; a general network has an expensive determinant. The
# coupling layer of RealNVP {cite}`dinh2017realnvp` sits between: split the coordinates
# into a part $A$ that passes unchanged and a part $B$ that is scaled and shifted by
# functions of $A$,
#
# $$ y_A = x_A, \qquad y_B = x_B \odot e^{s(x_A)} + t(x_A). $$
#
# Its Jacobian is block-triangular — $\partial y_A/\partial x_B = 0$ — with the identity
# and $\operatorname{diag}(e^{s(x_A)})$ on the diagonal, so
# $\log|\det \partial y/\partial x| = \sum_j s_j(x_A)$ ($s$ and $t$ are Dinh et al.'s
# letters for the log-scale and shift networks; $t$ is not time here), whatever the networks $s$ and $t$
# are. The inverse is as cheap: $x_B = (y_B - t(y_A)) \odot e^{-s(y_A)}$. Layers with
# alternating masks transform every coordinate.

# %%
course_lib.show(realnvp.AffineCoupling.forward, docstring=False)
course_lib.show(realnvp.CouplingFlow.log_prob, docstring=False)

# %% [markdown]
# A stack of six layers, trained by maximum likelihood on the toy with the course's one
# training loop. Every step needs only the inverse map and a sum of log-scales: fast.

# %%
n_train = cfg.pick(smoke=2_000, cpu=20_000, gpu=50_000)
x_train = toys.sample(toy_name, n_train, generator)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(cfg.seed)
    coupling_flow = realnvp.CouplingFlow(2, n_layers=6, hidden=64)
nvp_result = train.train(
    coupling_flow,
    lambda f, b: -f.log_prob(b).mean(),
    train.random_batches(x_train, batch_size=256, generator=generator),
    steps=cfg.pick(smoke=50, cpu=1_500, gpu=5_000),
    lr=2e-3,
    desc="RealNVP on moons",
)
n_eval = cfg.pick(smoke=500, cpu=2000, gpu=4000)
x_eval = toys.sample(toy_name, n_eval, generator)
log_p_eval = twin.log_prob(x_eval)  # the twin's exact log p, for every model of the chapter
with torch.no_grad():
    nvp_kl = cf.kl_to_model(lambda x: (coupling_flow.log_prob(x), 0), x_eval, log_p_eval)
fig, axes = plotting.figure_row(2, size=4.0)
plotting.density(
    lambda x: coupling_flow.log_prob(x).detach(), ax=axes[0], log=True, title="RealNVP log-density"
)
plotting.scatter(
    coupling_flow.sample(n_eval, generator), ax=axes[1], kind="model", title="RealNVP samples"
)
fig.tight_layout()
plt.show()
print(
    f"RealNVP, {nvp_result.steps} steps in {nvp_result.seconds:.0f} s: KL(p‖q) ≈ {nvp_kl.kl:.3f} "
    f"± {nvp_kl.se:.3f} nats against the twin"
)

# %% [markdown]
# Look at the log-density: a coupling flow typically leaves a faint bridge of mass
# between the moons. Any continuous invertible map carries the connected Gaussian onto a
# connected set, so emptying the gap needs steep Jacobians, and a few coupling layers
# bend space only so far. Making the map expressive while keeping the determinant cheap
# is what half a decade of flow architectures (Glow {cite}`kingma2018glow`, neural spline
# flows {cite}`durkan2019neural`, …) worked on. A CNF's flow map is such a map too, so
# continuous time does not lift the topological limit; what it removes is the
# architectural one — any network $v_\theta$, with no triangular Jacobian to maintain.
#
# ## 2. Neural ODEs and the instantaneous change of variables
#
# ### Infinitely many infinitesimal layers
#
# Let the flow be the solution map of an ODE, $dx/dt = v_\theta(x, t)$, from $t = 0$
# (noise) to $t = 1$ (data), in chapter 6's time. One Euler step $x \mapsto x + h\,v(x, t)$
# is a residual layer with Jacobian $I + h\,\partial v/\partial x$, and for small $h$
#
# $$ \log\det\big(I + h\,J\big) = h\operatorname{tr}J + O(h^2), $$
#
# because the determinant is the product of the eigenvalues $1 + h\lambda_i$ and
# $\log(1 + h\lambda) = h\lambda + O(h^2)$. Summing the layers and letting $h \to 0$, the
# log-density of a particle changes by the integrated divergence,
#
# $$ \frac{d}{dt}\log p_t(x_t) = -\operatorname{tr}\frac{\partial v_\theta}{\partial x}(x_t, t) = -\nabla\cdot v_\theta(x_t, t), $$
#
# Chen et al.'s instantaneous change of variables {cite}`chen2018neuralode` — the same
# equation chapter 5 derived from the continuity equation along a trajectory. So
#
# $$ \log p_1(x) = \log p_0(z) - \int_0^1 \nabla\cdot v_\theta(x_t, t)\,dt, \qquad z = x_0, $$
#
# computed by one ODE solve *backwards* from the data point $x_1 = x$, integrating the
# state $x_t$ and the accumulated divergence together. The solver integrates
# $d\Delta/dt = +\nabla\cdot v$ from $t = 1$ down to $0$, so $\Delta(0) = -\int_0^1\nabla\cdot v\,dt$
# is exactly the correction above (`delta` in the code). No architectural constraint on
# $v_\theta$ beyond being Lipschitz (so that the ODE has unique, invertible solutions): a
# trace needs $D$ vector–Jacobian products, not an $O(D^3)$ determinant. This
# is chapter 5's likelihood computation; the course's CNF code keeps the graph so that
# it can be trained.

# %%
course_lib.show(cnf.CNFDynamics.forward, docstring=False)
course_lib.show(cnf.log_prob, docstring=False)

# %% [markdown]
# ### Ground truth, and what a tolerance costs
#
# Chapter 6's exact marginal velocity of the linear path carries $\mathcal N(0, I)$ to the
# twin; as a CNF, its likelihood must be the mixture's own $\log p$. The adaptive solver's
# tolerance sets the error — and the bill in network calls.

# %%
exact_field = toy_cnf.ExactField(fm.exact_velocity(twin, fm.linear_path()))
x_check = twin.sample(cfg.pick(smoke=64, cpu=256, gpu=512), generator).double()
tol_rows = cf.tolerance_study(
    exact_field,
    x_check,
    twin.log_prob(x_check),
    cfg.pick(
        smoke=[1e-3, 1e-5], cpu=[1e-2, 1e-3, 1e-4, 1e-5, 1e-7], gpu=[1e-2, 1e-3, 1e-4, 1e-5, 1e-7]
    ),
)
print(f"{'rtol = atol':>12} {'max |log p error|':>18} {'NFE':>6} {'seconds':>8}")
for r in tol_rows:
    print(f"{r.tol:>12.0e} {r.max_error:>18.2e} {r.nfe:>6} {r.seconds:>8.2f}")

# %% [markdown]
# Tighter tolerances cost more network calls (the table shows how many). A training step
# pays in its forward solve and again in the backward pass (or the adjoint's second
# solve); a likelihood
# evaluated once at the end can afford a tight tolerance.
#
# ## 3. Hutchinson's trace estimator
#
# ### Unbiased, one derivative whatever the dimension
#
# In $D$ dimensions the exact divergence costs $D$ backward passes per network call —
# for images, 784 or 3072 of them. Hutchinson's estimator {cite}`hutchinson1989` replaces
# the trace by a random quadratic form: for a probe $\varepsilon$ with
# $\mathbb E[\varepsilon\varepsilon^\top] = I$ ($\varepsilon$ is FFJORD's letter for the
# probe, Gaussian or Rademacher — not the course's Gaussian noise $\varepsilon$),
#
# $$ \mathbb E\big[\varepsilon^\top J\,\varepsilon\big] = \mathbb E\Big[\sum_{ij}\varepsilon_i J_{ij}\varepsilon_j\Big] = \sum_{ij} J_{ij}\,\mathbb E[\varepsilon_i\varepsilon_j] = \sum_i J_{ii} = \operatorname{tr}J, $$
#
# and $\varepsilon^\top J$ is *one* vector–Jacobian product, a single backward pass.
# FFJORD {cite}`grathwohl2019ffjord` uses it inside the ODE: the log-likelihood stays
# unbiased, and a whole image costs one pass per network call.
#
# ### Its variance
#
# Only the symmetric part $S = (J + J^\top)/2$ enters $\varepsilon^\top J\varepsilon$, because
# $\varepsilon^\top J\varepsilon$ is a number and equals its own transpose
# $\varepsilon^\top J^\top\varepsilon$. For a **Gaussian** probe, Isserlis' theorem gives the
# fourth moments, $\mathbb E[\varepsilon_i\varepsilon_j\varepsilon_k\varepsilon_l] = \delta_{ij}\delta_{kl} + \delta_{ik}\delta_{jl} + \delta_{il}\delta_{jk}$,
# so $\mathbb E[(\varepsilon^\top S\varepsilon)^2] = (\operatorname{tr}S)^2 + 2\operatorname{tr}(S^2)$ and
# $\operatorname{Var} = 2\operatorname{tr}(S^2) = 2\|S\|_F^2 = 2\sum_{ij}S_{ij}^2$.
# For a **Rademacher** probe ($\pm 1$ with equal probability), $\varepsilon_i^2 = 1$, so
# $\varepsilon^\top S\varepsilon = \sum_i S_{ii} + 2\sum_{i<j} S_{ij}\varepsilon_i\varepsilon_j$:
# the diagonal is exact, and the products $\varepsilon_i\varepsilon_j$ ($i < j$) are
# uncorrelated with variance one, so $\operatorname{Var} = 4\sum_{i<j}S_{ij}^2 = 2\sum_{i\neq j}S_{ij}^2$ —
# the Gaussian's variance without its diagonal. In general, for i.i.d. entries of mean
# 0 and variance 1, $\operatorname{Var} = 2\sum_{i\neq j}S_{ij}^2 + (\mathbb E\varepsilon^4 - 1)\sum_i S_{ii}^2$,
# and $\mathbb E\varepsilon^4 \ge (\mathbb E\varepsilon^2)^2 = 1$: Rademacher is the best
# probe with independent entries (Hutchinson).

# %%
course_lib.show(cnf.hutchinson_variance, docstring=False)
a_demo = torch.randn(6, 6, generator=generator, dtype=torch.float64)
for r in cf.hutchinson_rows(a_demo, cfg.pick(smoke=20_000, cpu=200_000, gpu=200_000), generator):
    print(
        f"{r.probe:<10} mean {r.mean:+.3f} (tr A = {r.trace:+.3f})   variance {r.variance:.2f} "
        f"(closed form {r.closed_form:.2f}, {r.n:,} probes)"
    )

# %% [markdown]
# ### Exercise 7.2: predict before you run
#
# Let $A = \operatorname{diag}(1, 2, 3, 4)$. What is the variance of Hutchinson's
# estimate of $\operatorname{tr}A$ with **one Rademacher probe**? Write a number down
# before you run the cell after the check.

# %% tags=["exercise"]
my_variance = None  # YOUR PREDICTION: the variance of e^T A e for Rademacher e

# %%
ch07.check_predict_rademacher_variance(my_variance)

# %% tags=["solution", "hide-input"]
my_variance = 0  # e_i^2 = 1: e^T A e = sum_i A_ii exactly, for every probe
ch07.check_predict_rademacher_variance(my_variance)

# %%
a_diag = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
for r in cf.hutchinson_rows(a_diag, 10_000, generator):
    print(f"{r.probe:<10} empirical variance {r.variance:.3f} (closed form {r.closed_form:.3f})")

# %% [markdown]
# **One probe per solve.** Inside an ODE the probe must stay fixed for the whole solve:
# a new probe at every call would make the dynamics random, an adaptive solver,
# comparing two estimates of the same step, would shrink its steps chasing the noise,
# and the adjoint's backward solve would integrate different dynamics from the forward
# one.
# `cnf.log_prob` draws one probe per sample and passes it to every call.
#
# ## 4. Training a CNF by maximum likelihood
#
# ### Gradients through a solve
#
# The loss is the negative log-likelihood per dimension, $-\frac1D\mathbb E\log p_1(x)$.
# Two ways give its gradient:
#
# * **Backpropagation through the solver**: record every operation of the solve and
#   differentiate them. Exact for the discrete solve, memory growing with the number of
#   steps.
# * **The adjoint method** {cite}`chen2018neuralode`: solve a second ODE in the opposite
#   direction (here from $t = 0$ up to $t = 1$) for $a(t) = \partial L/\partial x_t$, with
#   $\dot a = -a^\top\partial f/\partial x$ and $\partial L/\partial\theta = -\int_0^1 a^\top\partial f/\partial\theta\,dt$,
#   where $x$ is the augmented state $(x, \Delta, \dots)$ and $f$ its dynamics
#   $(v, \nabla\cdot v, \dots)$. Memory independent of the number of steps, at the price
#   of a second solve, and gradients that agree with backpropagation only up to the two
#   solves' discretisation error — well above the local tolerance, as the printed
#   difference shows.
#
# `torchdiffeq` provides both (`odeint`, `odeint_adjoint`); the tests check that they
# agree to $10^{-3}$ (relative) at $\text{rtol} = \text{atol} = 10^{-7}$. Here the same
# step both ways:

# %%
grads, costs = {}, {}
x_grad = batch.double()
probe_net64 = toy_cnf.build_model(16, 1, 1.0).double()
for label, adjoint in [("backprop through the solver", False), ("adjoint method", True)]:
    probe_net64.zero_grad()
    start = time.perf_counter()
    cnf.mle_loss(
        probe_net64, x_grad, adjoint=adjoint, rtol=1e-7, atol=1e-7,
        generator=torch.Generator().manual_seed(0),
    ).backward()  # fmt: skip
    costs[label] = time.perf_counter() - start
    grads[label] = torch.cat([p.grad.flatten() for p in probe_net64.parameters()])
rel = float(
    (grads["adjoint method"] - grads["backprop through the solver"]).norm()
    / grads["adjoint method"].norm()
)
for label, secs in costs.items():
    print(f"{label:<28} {secs:.2f} s")
print(
    f"relative difference of the two gradients: {rel:.1e} (rtol = atol = 1e-7; the error is global)"
)

# %% [markdown]
# ### Regularising the dynamics
#
# Nothing in the likelihood asks the dynamics to be easy to solve, and during training
# they tend to grow harder to integrate: the adaptive solver's NFE climbs. Finlay et al.
# {cite}`finlay2020rnode` add two penalties, integrated along the same solve: the kinetic
# energy $\int\|v\|^2dt$ (which favours straight, constant-speed paths — chapter 6's path
# energy) and the Jacobian's Frobenius norm $\int\|\partial v/\partial x\|_F^2dt$,
# estimated with the same probe since $\mathbb E\|\varepsilon^\top J\|^2 = \|J\|_F^2$.
#
# Two CNFs on the toy, the same network as chapter 6's flows (time scale 1 instead of
# the diffusion chapters' 1000, so that $v$ varies slowly in $t$), with the exact
# divergence (affordable in 2D), trained with dopri5 at $\text{rtol} = \text{atol} = 10^{-3}$,
# whose NFE per step measures how hard the dynamics have become: one plain, one
# regularised. (The regularisers are integrated along the solve but do not steer its
# step sizes: `cnf.log_prob` controls the error of $x$ and $\Delta$ only.)

# %%
course_lib.show(cnf.regularized_loss, docstring=False)
cnf_recipes = {
    "MLE": toy_cnf.recipe(cfg, toy_name, **net_kw),
    "MLE + kinetic + Jacobian": toy_cnf.recipe(
        cfg, toy_name, kinetic_weight=0.05, jacobian_weight=0.05, **net_kw
    ),
}
cnfs = {label: toy_cnf.train_toy_cnf(cfg, toy_name, r) for label, r in cnf_recipes.items()}
for label, m in cnfs.items():
    status = "loaded" if m.result.resumed_at == m.recipe.base.steps else "trained now"
    print(f"{label:<26} {m.recipe.base.steps} steps, {m.result.seconds:.0f} s, {status}")
if all(m.nfe for m in cnfs.values()):
    cf.plot_nfe_history({label: m.nfe for label, m in cnfs.items()})
    plt.show()

# %% [markdown]
# ## 5. The same network, trained by flow matching
#
# Chapter 6's flow matching trains exactly this model — a velocity field whose ODE
# carries noise to data — without ever solving the ODE during training. Its likelihood
# is computed the same way afterwards. Below, the same network (architecture, data,
# batch size, seed) is trained by flow matching for several budgets: as many steps as the
# CNF, and more (the "train s" column shows how they compare with the CNF's wall time).
# Each model is then measured on the same held-out moons points against the twin's
# exact $\log p$: $\mathbb E[\log p_{\text{twin}} - \log q]$, which is $\mathrm{KL}(p\|q)$ up
# to the constant $\mathrm{KL}(p\|p_{\text{twin}})$, the same for every model (differences
# between rows are exact; the level is shifted down a little, so a row can even dip
# below zero); the NFE of its likelihood solve
# (dopri5, tolerance $10^{-5}$), and $\mathrm{KL}(q\|p)$ of its samples (chapter 5's
# yardstick, with its floor).

# %%
fm_steps = cfg.pick(smoke=[10, 40], cpu=[250, 1_000, 4_000, 10_000], gpu=[5_000, 20_000, 80_000])
fm_models = {}
for steps in fm_steps:
    r = toy_flow.recipe(
        cfg, toy_name, steps=steps, batch_size=cnf_recipes["MLE"].base.batch_size, **net_kw
    )
    fm_models[f"flow matching, {steps} steps"] = toy_flow.train_toy_flow(cfg, toy_name, r)
models = {label: m.model for label, m in cnfs.items()} | {
    label: f.model for label, f in fm_models.items()
}
train_seconds = {label: m.result.seconds for label, m in cnfs.items()} | {
    label: f.result.seconds for label, f in fm_models.items()
}
n_sample = cfg.pick(smoke=500, cpu=2000, gpu=4000)
floor = metrics.kl_floor(
    lambda n: toys.sample(toy_name, n, generator), twin.log_prob, n_sample, repeats=3
)
z_sample = torch.randn(n_sample, 2, generator=generator)
rows = {}
for label, net in models.items():
    lik = cf.kl_to_model(cf.cnf_log_q(net), x_eval, log_p_eval)
    res = solvers.solve_ode_adaptive(
        lambda x, t, net=net: net(x, t.float()), z_sample, 0.0, 1.0, rtol=1e-5, atol=1e-5
    )
    rows[label] = (lik, metrics.kl_divergence(res.x, twin.log_prob), res.nfe)
print(
    f"{'model':<30} {'train s':>8} {'KL(p‖q)':>16} {'NFE (log p)':>11} {'KL(q‖p) samples':>16} {'NFE (sample)':>12}"
)
for label, (lik, kl_qp, nfe_s) in rows.items():
    print(
        f"{label:<30} {train_seconds[label]:>8.1f} {lik.kl:>9.3f} ± {lik.se:.3f} {lik.nfe:>11} "
        f"{kl_qp:>16.3f} {nfe_s:>12}"
    )
print(
    f"{'floor of KL(q‖p), exact samples':<30} {'':>8} {'':>16} {'':>11} {floor.mean:>10.3f} ± {floor.std:.3f}"
)
print(f"{'RealNVP (section 1)':<30} {nvp_result.seconds:>8.1f} {nvp_kl.kl:>9.3f} ± {nvp_kl.se:.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for label, (lik, _, _) in rows.items():
    marker = "o" if label.startswith("MLE") else "s"
    ax.errorbar(train_seconds[label], lik.kl, yerr=lik.se, fmt=marker, capsize=2, label=label)
ax.set(xscale="log", xlabel="training wall time (s)", ylabel="KL(p‖q), nats (lower is better)")
ax.set_title("likelihood against training cost, one network")
ax.legend(fontsize=7)
plt.show()
fig, axes = plotting.figure_row(3, size=3.6)
for ax, label in zip(axes, [*cnfs][:1] + [*fm_models][-1:] + [*cnfs][1:], strict=True):
    plotting.density(
        lambda x, net=models[label]: cf.cnf_log_q(net, 1e-4, 1e-4)(x)[0].float(),
        ax=ax, log=True, title=label,
    )  # fmt: skip
fig.tight_layout()
plt.show()

# %% [markdown]
# How to read it (your numbers will differ a little).
#
# * **Per unit of wall time.** Compare the rows at equal steps (the first flow-matching
#   row) and at comparable "train s". The MLE step optimises the likelihood itself, so
#   at equal steps it leads by far (in the `cpu` profile, 0.09 against 0.67 nats after
#   250 steps); but a flow-matching step costs far less (the ratio printed at the top),
#   and within a fraction of the MLE model's wall time flow matching reaches a lower
#   $\mathrm{KL}(p\|q)$ — the MLE model's own criterion — and better samples (in `cpu`:
#   4,000 steps in 12 s against 250 MLE steps in 37 s). This is the case Lipman et al.
#   {cite}`lipman2023flow` make for simulation-free training of the same model class.
# * **Regularisation.** The kinetic and Jacobian penalties are meant to keep the
#   dynamics easy to integrate (the NFE plot, when the models were trained in this run,
#   and the NFE columns), usually at a cost in likelihood; compare the two MLE rows.
# * **What each objective asks for.** Maximum likelihood minimises $\mathrm{KL}(p\|q)$
#   directly: every step solves the ODE from each data point back to the noise and
#   charges the model wherever it puts too little mass. Flow matching never looks at
#   the likelihood; it regresses a field whose flow has the right marginals, and the
#   likelihood improves only because the regression's minimiser is a field that carries
#   the noise onto the data. That is why an MLE step is worth more than a flow-matching
#   step, and why it does not matter: the regression's steps are so cheap, and their
#   gradients so much less noisy (no solver error, no trace estimate), that many of them
#   win.
# * **Sampling cost** (the NFE columns) depends on how smooth the learned field is in
#   $x$ and $t$, which neither plain objective controls directly (RNODE's penalties do,
#   in part); read the two NFE columns.
#
# ## 6. Likelihoods that can be trusted
#
# The 2D numbers above are measured against an exact $\log p$. Images are different in
# kind: their pixels take 256 values, so their law is discrete, and a continuous density
# can put arbitrarily high density on the grid points — a model that did so would report
# an arbitrarily good "likelihood". The remedy is **dequantisation**: add uniform noise
# $u \in [0, 1)^D$ to the integer pixels before scaling, and evaluate the continuous
# density of the jittered image. By Jensen's inequality the expected negative
# log-density of the jittered data bounds the discrete model's negative log-probability
# of the pixels from above, so the number means something again
# {cite}`theis2016note`. On images there is no
# exact answer, and the bookkeeping decides the number. Chapter 5 measured each common
# mistake on its diffusion model; here the same code runs on chapter 6's MNIST **flow**,
# a CNF trained by flow matching: dequantised test digits, Hutchinson's estimator with
# one probe per solve, the linear path's prior $\mathcal N(0, I)$ at $t = 0$, and the
# offset $\log_2 128 = 7$ bits for data scaled to $[-1, 1]$. Beside it: the same digits
# without dequantisation, with the $[0, 1]$ offset, and with none; and chapter 3's
# variational bound for its diffusion model on the same digits (a bound on a different
# model, trained with the same budget, loaded if chapter 3 has run). FFJORD reports 0.99
# bits/dim on MNIST (Grathwohl et al. {cite}`grathwohl2019ffjord`, Table 2, exact trace at
# test time); chapter 5's results card prints its PF-ODE's figure for the diffusion
# model on the same scale.

# %%
mnist_flow = image_flow.train_image_flow(cfg, "mnist")
n_bpd = cfg.pick(smoke=2, cpu=4, gpu=64)
tol = cfg.pick(smoke=1e-3, cpu=1e-4, gpu=1e-5)
test_digits = data.load("mnist", split="test").subset(n_bpd, generator)
y_deq = likelihood.dequantize(test_digits.images, generator).to(cfg.device)
x_grid = test_digits.to_float().to(cfg.device)


def flow_bits(x, seed=6):
    res = likelihood.ode_log_likelihood(
        mnist_flow.velocity, x, 1.0, 0.0, cnf.standard_normal_log_prob,
        divergence="hutchinson", rtol=tol, atol=tol,
        generator=torch.Generator(device=x.device).manual_seed(seed),
    )  # fmt: skip
    return res.log_p, res.nfe


bpd_start = time.perf_counter()
log_p_deq, nfe_deq = flow_bits(y_deq)
log_p_grid, nfe_grid = flow_bits(x_grid)
mnist_ddpm = image_diffusion.train_image_diffusion(cfg, "mnist")  # chapter 3's model
elbo_bits = ddpm.nll_bound_bits_per_dim(
    mnist_ddpm.model, x_grid, mnist_ddpm.schedule, decoder="discrete",
    generator=torch.Generator(device=cfg.device).manual_seed(7),
    max_rows=cfg.pick(smoke=256, cpu=512, gpu=16_384),
)  # fmt: skip
bpd_seconds = time.perf_counter() - bpd_start
D_img, offset = 784, likelihood.EIGHT_BIT_OFFSET_BITS
bpd_correct = likelihood.bits_per_dim(log_p_deq, D_img, offset)
bpd_rows = sf.likelihood_rows(
    {
        "flow, dequantised, +7 bits (correct)": (bpd_correct, nfe_deq),
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
        "chapter 3's diffusion model, ELBO bound (discrete decoder)": (
            elbo_bits.float().cpu(),
            mnist_ddpm.schedule.T,
        ),
    },
    reference="flow, dequantised, +7 bits (correct)",
)
print(
    f"{n_bpd} MNIST test digits, chapter 6's flow, Hutchinson, tolerance {tol:g}, {bpd_seconds:.0f} s"
)
print(sf.format_likelihood_rows(bpd_rows, unit="bits/dim"))

# %% [markdown]
# The correct row estimates, without bias, a quantity whose expectation (over digits,
# dequantisation noise and probes) is an upper bound on the discrete model's bits per
# dimension (dequantisation and Jensen, chapter 5); the others are the same computation with one
# bookkeeping step wrong, off by exactly one or seven bits, or — without dequantisation —
# meaningless. A few digits and a briefly trained network make this number rough; the
# `gpu` profile evaluates 64 digits at a tighter tolerance.
#
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
card = [
    ("run", cfg.describe()),
    ("chapter wall time", f"{elapsed:.1f} s"),
    (
        "cost: one training step, MLE (RK4 x 8) vs flow matching",
        f"{1000 * mle_step:.0f} ms vs {1000 * fm_step:.1f} ms (batch 128)",
    ),
    (
        "likelihood: exact-field CNF log p error, tightest tol",
        f"{tol_rows[-1].max_error:.1e} nats ({tol_rows[-1].nfe} NFE)",
    ),
    ("gradients: adjoint vs backprop, relative difference", f"{rel:.1e}"),
]
for label, (lik, kl_qp, nfe_s) in rows.items():
    card.append(
        (
            f"2D {label}",
            f"KL(p‖q) {lik.kl:.3f} ± {lik.se:.3f}, samples KL(q‖p) {kl_qp:.3f} "
            f"(floor {floor.mean:.3f}), train {train_seconds[label]:.0f} s, NFE log p {lik.nfe} / sample {nfe_s}",
        )
    )
card += [
    (
        "2D RealNVP (6 coupling layers)",
        f"KL(p‖q) {nvp_kl.kl:.3f} ± {nvp_kl.se:.3f}, train {nvp_result.seconds:.0f} s",
    ),
    (
        "MNIST bits/dim, chapter 6 flow (Hutchinson)",
        f"{float(bpd_correct.mean()):.3f} ({n_bpd} test digits, tolerance {tol:g}, "
        f"{cfg.device.type}); chapter 3's ELBO bound {float(elbo_bits.mean()):.3f}",
    ),
    (
        "published: FFJORD, MNIST / CIFAR-10 bits/dim",
        "0.99 / 3.40 (Grathwohl et al. 2019, Table 2); RealNVP 1.06 / 3.49; Glow 1.05 / 3.35",
    ),
    (
        "published: flow matching, CIFAR-10",
        "2.99 bits/dim, FID 6.35 @ 142 NFE (Lipman et al. 2023, Table 1)",
    ),
]
results_card(card)

# %% [markdown]
# How to read it. The 2D lines measure every model against the twin's exact $\log p$ on
# the same points; the training seconds are this machine's. The MNIST line is a
# few-digit estimate of a small model; the published lines are for scale.
#
# ## Summary
#
# * A normalizing flow's density follows from the change of variables; coupling layers
#   make the determinant a sum of log-scales at the price of a constrained architecture.
# * In continuous time the log-determinant becomes an integrated divergence,
#   $\log p_1(x) = \log p_0(z) - \int_0^1\nabla\cdot v\,dt$: any network is allowed, and
#   the likelihood is one ODE solve. Hutchinson's estimator makes the trace one
#   backward pass (Rademacher variance $2\sum_{i\neq j}S_{ij}^2$), unbiased, with one
#   probe per solve so that the augmented ODE is deterministic (adaptive steps, adjoint).
# * Maximum-likelihood training (FFJORD) solves and differentiates the ODE at every
#   step (backpropagation or the adjoint); regularisers keep the dynamics solvable.
# * Flow matching trains the same model without simulation; in this chapter's table it
#   reached a better likelihood than maximum likelihood within a fraction of the MLE
#   model's wall time, and, unlike FFJORD, its cost per step does not grow with the
#   ODE's difficulty — which is why flow matching scaled to images and maximum
#   likelihood for CNFs did not.
#
# ## Further reading
#
# * Dinh, Sohl-Dickstein & Bengio {cite}`dinh2017realnvp` for coupling layers; Chen,
#   Rubanova, Bettencourt & Duvenaud {cite}`chen2018neuralode` for neural ODEs, the
#   instantaneous change of variables and the adjoint method; Grathwohl et al.
#   {cite}`grathwohl2019ffjord` (FFJORD) for Hutchinson's estimator in CNFs and Table 2's
#   bits/dim; Hutchinson {cite}`hutchinson1989`.
# * Finlay, Jacobsen, Nurbekyan & Oberman {cite}`finlay2020rnode` for kinetic and
#   Jacobian regularisation; Lipman et al. {cite}`lipman2023flow` for flow matching as
#   simulation-free training of CNFs; Theis, van den Oord & Bethge
#   {cite}`theis2016note` for dequantisation and bits/dim.
