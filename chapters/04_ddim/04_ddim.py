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
# # 4. DDIM: the same network, far fewer steps
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/04_ddim/04_ddim.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Derive* the family of non-Markovian processes that share DDPM's marginals and the DDIM update with its noise knob $\eta$. *Show* that $\eta = 1$ is DDPM's ancestral sampler and that $\eta = 0$ is the Euler method for an ODE. *Compare* DDIM ($\eta = 0, 1$) and DDPM's ancestral sampler from 5 to 1000 steps with one trained model, on a 2D toy and on MNIST, in the shape of DDIM's Table 1. *Invert* data into latents and *interpolate* between latents with slerp. |
# | **Prerequisites** | Chapter 3 (the forward process, the posterior $q(x_{t-1}\mid x_t, x_0)$, the simple loss, ancestral sampling) and chapter 1 (denoising score matching, Tweedie's formula). |
# | **Run time** | `smoke` ≈ 30 s · `cpu` ≈ 2 min once chapter 3 has trained its models (they are loaded from disk; about 5 min if this chapter has to train them and the evaluation classifier) · `gpu` ≈ 5–10 min, plus about half an hour if the CIFAR-10 model is not trained yet (not yet measured) |

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
    ddim,
    ddpm,
    evaluate,
    image_diffusion,
    metrics,
    plotting,
    schedules,
    toy_diffusion,
    toys,
)
from course_lib import ddim_figures as df
from course_lib.exercises import ch04

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: a thousand network calls per sample
#
# Chapter 3 ended with a working generative model and an uncomfortable bill. DDPM's
# ancestral sampler walks down the chain $x_T \to x_{T-1} \to \dots \to x_0$ one step at
# a time, and every step calls the network: $T = 1000$ calls for one batch of samples.
# A GAN or a normalising flow needs one. On the small MNIST U-Net of this course, on a
# laptop CPU, a thousand calls take several seconds *per image*; on CIFAR-10, Ho et al.
# needed 17 seconds on a TPU v3-8 for a batch of 256.
#
# The obvious fix is to take fewer steps: call the network at $t = 1000, 900, \dots, 100$
# and skip the rest. The next cell tries exactly that with the simplest possible
# implementation — DDPM's own one-step update, applied only at the ten chosen steps —
# and compares it with the full chain and with the sampler this chapter builds. To be
# sure that what we see is the sampler's fault and not the network's, all three use the
# **exact** noise predictor of the `moons` toy's Gaussian-mixture twin (chapter 0,
# `ddpm.exact_model`): a perfect network.
#
# First, the models of this chapter: the 2D DDPM of chapter 3 (an MLP trained on `moons`
# with the linear schedule, $T = 1000$) and the exact model of the toy's twin. If
# chapter 3 has run, `train_toy_diffusion` finds its checkpoint and loads it in a
# second; otherwise it trains the same recipe now.

# %%
toy_name = "moons"
toy = toy_diffusion.train_toy_diffusion(cfg, toy_name)
schedule = toy.schedule  # DDPM's linear schedule, T = 1000
T = schedule.T
toy_model = toy.model  # eps-prediction MLP (EMA weights), called as model(x_t, t / T)
twin = toys.twin(toy_name)
exact_model = ddpm.exact_model(twin, schedule)  # the Bayes-optimal eps-predictor of the twin
print(
    f"{toy_name}: {'loaded from ' + toy.checkpoint.name if toy.resumed_at == toy.recipe.steps else 'trained now'}"
    f" ({toy.recipe.steps} steps, {schedule})"
)

# %%
n_toy = cfg.pick(smoke=300, cpu=1000, gpu=2000)
x_T_toy = torch.randn(n_toy, 2, generator=generator)  # one x_T for every 2D sampler below
few = 10
full = cfg.pick(smoke=200, cpu=T, gpu=T)  # the whole chain (fewer steps in smoke)
motivation = {
    f"DDPM, {full} steps": ddpm.ancestral_sample(
        exact_model,
        x_T_toy,
        schedules.respace(schedule, ddim.timesteps(T, full)),
        "beta",
        generator=torch.Generator().manual_seed(1),
    ).x,
    f"DDPM's update at {few} strided steps": df.naive_skip_sample(
        exact_model, x_T_toy, schedule, few
    ).x,
    f"DDIM, {few} steps": ddim.ddim_sample(
        exact_model, x_T_toy, schedule, ddim.timesteps(T, few, "quadratic")
    ).x,
}
fig, axes = plotting.figure_row(3)
twin_sample = twin.sample(n_toy, generator)
for ax, (title, x) in zip(axes, motivation.items(), strict=True):
    plotting.scatter(x.clamp(-3, 3), data=twin_sample, ax=ax, title=title, label="samples")
fig.suptitle("the exact noise predictor of the moons twin, three samplers")
fig.tight_layout()
plt.show()

# %% [markdown]
# The left panel is chapter 3's sampler with every step: the two moons. The middle panel
# called the same perfect network ten times, at the times $t = 1000, 900, \dots, 100$,
# with DDPM's update
# $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\hat\varepsilon\big) + \sqrt{\beta_t}\,z$.
# That update was derived to remove the noise of *one* step: $\beta_t$ is between
# $10^{-4}$ and $0.02$. Ten such updates do the work of ten steps out of a thousand,
# and the samples are still a Gaussian blob. The right panel also called the network ten
# times — but with the DDIM update on a well-chosen grid of ten steps, and it is hard to
# tell apart from the left.
#
# This chapter explains the right panel. Its two ideas are due to Song, Meng & Ermon
# {cite}`song2021ddim`: the trained network does not care which *process* produced its
# training data, only which *marginals*; and among the processes with DDPM's marginals,
# some have reverse steps that can be large. We will derive the update, see that it
# contains DDPM as a special case and an ODE solver as another, measure quality against
# the number of steps on a toy and on MNIST with one trained network, and use the
# deterministic version to turn images into latents and back.
#
# ## The key observation: the loss only sees marginals
#
# Look again at the loss that trained the network of chapter 3 (DDPM, Algorithm 1):
#
# $$ L_{\text{simple}}(\theta) = \mathbb E_{t,\,x_0,\,\varepsilon}\,
#    \Big\| \varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)\Big\|^2 . $$
#
# The forward process enters it through one thing only: the marginal
# $q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big)$,
# used to draw $x_t$ in one shot. The transitions $q(x_t \mid x_{t-1})$ — the Markov
# chain that chapter 3 started from — appear nowhere. For every $t$ separately the network
# learns to guess the noise in a sample of $q(x_t \mid x_0)$, and by Tweedie's formula
# (chapter 1) its best guess is a score of the marginal,
#
# $$ \varepsilon^*(x_t, t) = \mathbb E[\varepsilon \mid x_t] = -\sqrt{1-\bar\alpha_t}\;\nabla_{x_t} \log q_t(x_t),
#    \qquad q_t(x_t) = \int q(x_t \mid x_0)\, p(x_0)\, dx_0 , $$
#
# which again depends on nothing but the marginals. So the trained network does not
# know which joint process its training pairs came from. Chapter 3 derived a sampler from
# one particular joint process, the Markov chain, by reversing it step by step. Any
# other joint process with the same marginals has an equally good claim to the same
# network — and if its reverse can be simulated in fewer, larger steps, we get a faster
# sampler *without retraining anything*.
#
# (DDIM's Theorem 1 makes the same point through the variational bound: for each member
# of the family below, the bound equals a weighted sum over $t$ of the noise-prediction
# errors plus a constant. When the network can fit each $t$ on its own, every weighting
# has the same minimiser, the one the simple loss finds.)
#
# ## A family of processes with DDPM's marginals
#
# ```{admonition} Notation: DDIM's letters, the course's bars
# :class: important
# DDIM {cite}`song2021ddim` writes $\alpha_t$ for what DDPM and this course call
# $\bar\alpha_t$; the chapter keeps chapter 3's $\bar\alpha_t$, so the paper's equations
# appear here with a bar added. Its $\sigma_t$ is the standard deviation of the fresh
# noise of a reverse step, chapter 3's reverse $\sigma_t$ generalised to $\sigma_t(\eta)$
# (never the noise scale $\sqrt{1-\bar\alpha_t}$ of $x_t$, which is written out). For the
# ODE the chapter adds $\bar\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$, with a bar: the
# noise-to-signal ratio, EDM's $\sigma(t)$ of chapter 5.
# ```
#
# ### Building the process from the top
#
# We want a joint law of $x_1, \dots, x_T$ given $x_0$ whose marginals are, for every $t$,
#
# $$ q_\sigma(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big). $$
#
# DDIM builds it from the top down: draw $x_T$ from its marginal, then go *down* one
# level at a time with a Gaussian that is allowed to look at $x_0$,
#
# $$ q_\sigma(x_{1:T} \mid x_0) = q_\sigma(x_T \mid x_0) \prod_{t=2}^{T} q_\sigma(x_{t-1} \mid x_t, x_0). $$
#
# Chapter 3's posterior $q(x_{t-1} \mid x_t, x_0)$ is one possible choice of the factors.
# Let us find all Gaussian ones. Make the ansatz of a mean linear in $x_0$ and $x_t$ and
# an isotropic variance $\sigma_t^2$:
#
# $$ q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal N\big(a_t\, x_0 + b_t\, x_t,\ \sigma_t^2 I\big). $$
#
# Now argue by induction, downwards from $t = T$. Suppose $x_t$ has the right marginal,
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ with
# $\varepsilon \sim \mathcal N(0, I)$. One step down with fresh noise $z$ independent of
# $\varepsilon$ gives
#
# $$ x_{t-1} = a_t x_0 + b_t\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon\big) + \sigma_t z
#    = \big(a_t + b_t\sqrt{\bar\alpha_t}\big)\, x_0 + b_t\sqrt{1-\bar\alpha_t}\,\varepsilon + \sigma_t z , $$
#
# a Gaussian given $x_0$ with mean $(a_t + b_t\sqrt{\bar\alpha_t})\,x_0$ and variance
# $b_t^2(1-\bar\alpha_t) + \sigma_t^2$ (the two noises are independent, so their
# variances add). For it to be the marginal at $t-1$ we need
#
# $$ b_t^2 (1-\bar\alpha_t) + \sigma_t^2 = 1 - \bar\alpha_{t-1}
#    \quad\Longrightarrow\quad b_t = \sqrt{\frac{1-\bar\alpha_{t-1}-\sigma_t^2}{1-\bar\alpha_t}},
#    \qquad a_t = \sqrt{\bar\alpha_{t-1}} - b_t\sqrt{\bar\alpha_t} . $$
#
# Put $a_t$ and $b_t$ back into the mean and group the terms with the noise that $x_t$
# contains, $\varepsilon_t = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}$:
#
# $$ q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal N\Big(\sqrt{\bar\alpha_{t-1}}\;x_0 \;+\; \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},\ \ \sigma_t^2 I\Big) \qquad \text{(DDIM eq. 7)}. $$
#
# Read it as a recipe for going down one level: keep the signal $x_0$ at its new scale
# $\sqrt{\bar\alpha_{t-1}}$; keep the *same noise direction* $\varepsilon_t$ that $x_t$
# carries, rescaled; and top up with fresh noise $\sigma_t z$ so that the total noise
# variance is exactly $1-\bar\alpha_{t-1}$. There is one free number per step, the
# amount of fresh noise $\sigma_t$, with $0 \le \sigma_t^2 \le 1 - \bar\alpha_{t-1}$.
#
# By Bayes' rule the implied forward step $q_\sigma(x_t \mid x_{t-1}, x_0)$ depends on
# $x_0$ in general: the forward process is no longer a Markov chain, which is why DDIM
# calls the family *non-Markovian*. That costs nothing, since we never simulate it. We
# need its marginals (for training, and they are DDPM's) and its reverse steps (for
# sampling).
#
# ### The sampler: replace $x_0$ by the network's guess
#
# To sample we do not know $x_0$, so we use the network. At $x_t$ it predicts the noise
# $\hat\varepsilon = \varepsilon_\theta(x_t, t)$, and chapter 3's forward equation solved for
# $x_0$ gives the denoised guess
# $\hat x_0 = \big(x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon\big)/\sqrt{\bar\alpha_t}$.
# With $\hat x_0$ in place of $x_0$ the noise direction $\varepsilon_t$ becomes exactly
# $\hat\varepsilon$, and the reverse step is
#
# $$ x_{t-1} = \underbrace{\sqrt{\bar\alpha_{t-1}}\;\hat x_0}_{\text{predicted } x_0}
#    \;+\; \underbrace{\sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\hat\varepsilon}_{\text{direction pointing to } x_t}
#    \;+\; \underbrace{\sigma_t\, z}_{\text{fresh noise}}, \qquad z \sim \mathcal N(0, I)
#    \qquad \text{(DDIM eq. 12)}. $$
#
# At the last step $\bar\alpha_0 = 1$, which forces $\sigma_1 = 0$ and returns
# $x_0 = \hat x_0$: the final answer is the network's last denoised guess.
#
# ### The knob $\eta$: from DDPM to a deterministic sampler
#
# DDIM parameterises the free variances by one number $\eta \ge 0$:
#
# $$ \sigma_t(\eta) = \eta\, \sqrt{\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}}\;\sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}}} \qquad \text{(DDIM eq. 16)}. $$
#
# For $\eta \le 1$ the constraint $\sigma_t^2 \le 1-\bar\alpha_{t-1}$ holds, because
# $1 - \bar\alpha_t/\bar\alpha_{t-1} \le 1 - \bar\alpha_t$. Two values matter.
#
# **$\eta = 1$ is DDPM.** On consecutive steps $\bar\alpha_t/\bar\alpha_{t-1} = \alpha_t = 1-\beta_t$,
# so $\sigma_t(1)^2 = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t = \tilde\beta_t$, chapter 3's
# posterior variance. The mean is the posterior mean too; try to show it before
# reading on.
#
# ### Exercise 4.1: $\eta = 1$ is DDPM's posterior
#
# Expand the mean of eq. 7 into a coefficient of $x_0$ and a coefficient of $x_t$, with
# $\sigma_t(\eta)$ of eq. 16, and write `ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta)` returning
# `(coef_x0, coef_xt, sigma)` for a step from $t$ down to any lower level. Then compare,
# on paper, your coefficients at $\eta = 1$ with chapter 3's $c_0$ and $c_t$ (with
# $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$). The check asks for the three numbers at
# four steps, two of them with $\eta = 1$.


# %% tags=["exercise"]
def ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta):
    # YOUR CODE HERE: return (coef_x0, coef_xt, sigma)
    raise NotImplementedError


# %%
ch04.check_ddim_coefficients(ddim_coefficients)


# %% tags=["solution", "hide-input"]
def ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta):
    beta_stride = 1 - alpha_bar_t / alpha_bar_prev
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_stride)  # eq. 16
    coef_xt = math.sqrt((1 - alpha_bar_prev - sigma**2) / (1 - alpha_bar_t))
    return math.sqrt(alpha_bar_prev) - coef_xt * math.sqrt(alpha_bar_t), coef_xt, sigma


ch04.check_ddim_coefficients(ddim_coefficients)

# %% [markdown]
# Here is the algebra for one step with $\eta = 1$. Using
# $1 - \bar\alpha_t - \beta_t = \alpha_t - \bar\alpha_t = \alpha_t(1-\bar\alpha_{t-1})$,
#
# $$ 1 - \bar\alpha_{t-1} - \tilde\beta_t
#    = (1-\bar\alpha_{t-1})\Big(1 - \frac{\beta_t}{1-\bar\alpha_t}\Big)
#    = \frac{(1-\bar\alpha_{t-1})^2\,\alpha_t}{1-\bar\alpha_t}, $$
#
# so the coefficient of $x_t$ in eq. 7 is $\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$
# and that of $x_0$ is
# $\sqrt{\bar\alpha_{t-1}} - \sqrt{\alpha_t\bar\alpha_t}\,(1-\bar\alpha_{t-1})/(1-\bar\alpha_t) = \sqrt{\bar\alpha_{t-1}}\,\beta_t/(1-\bar\alpha_t)$:
# exactly the two weights of $\tilde\mu_t(x_t, x_0)$ in DDPM's eq. 7. With $\eta = 1$ the
# family *is* chapter 3's posterior, the forward process is Markovian again, and the
# sampler is ancestral sampling with $\sigma_t^2 = \tilde\beta_t$.
#
# **$\eta = 0$ is deterministic.** No fresh noise is ever added: the sample is a fixed
# function of the starting point $x_T$. The model has become an *implicit* generative
# model, like a GAN's generator or a normalising flow — hence the name, denoising
# diffusion *implicit* models. Values in between interpolate. (DDPM's other variance,
# $\sigma_t^2 = \beta_t$, is not in the family: it is larger than $\tilde\beta_t$, and DDIM's
# Table 1 lists it as a separate row, $\hat\sigma$.)
#
# Here is the course's implementation of $\sigma_t(\eta)$ and of one step of eq. 12.

# %%
course_lib.show(ddim.ddim_sigma)

# %% [markdown]
# ### Exercise 4.2: the reverse standard deviation $\sigma_t(\eta)$
#
# Write `ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)` for a step from $t$ down to a
# lower level $t_{\text{prev}}$ with the two given values of $\bar\alpha$.


# %% tags=["exercise"]
def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    # YOUR CODE HERE: return sigma_t(eta), a float
    raise NotImplementedError


# %%
ch04.check_ddim_sigma(ddim_sigma)


# %% tags=["solution", "hide-input"]
def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    ratio = (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    return eta * math.sqrt(ratio * (1 - alpha_bar_t / alpha_bar_prev))


ch04.check_ddim_sigma(ddim_sigma)

# %%
course_lib.show(ddim.ddim_step)

# %% [markdown]
# `ddpm.predict` calls the network at the step's training time and returns both
# $\hat x_0$ and $\hat\varepsilon$ (for images, `clip_x0` clamps $\hat x_0$ to the pixel
# range and recomputes $\hat\varepsilon$ from it so that the two stay consistent with
# $x_t$). Notice that fresh noise is drawn only when $\sigma_t > 0$.
#
# ### Exercise 4.3: one deterministic step
#
# Write the $\eta = 0$ update `ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev)`
# for a given noise prediction `eps_hat` (a tensor of the shape of `x_t`).


# %% tags=["exercise"]
def ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    # YOUR CODE HERE: x0_hat first, then x_prev
    raise NotImplementedError


# %%
ch04.check_ddim_step(ddim_step)


# %% tags=["solution", "hide-input"]
def ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev) * eps_hat


ch04.check_ddim_step(ddim_step)

# %% [markdown]
# The common mistake here is to keep the noise at the *old* level,
# $\sqrt{1-\bar\alpha_t}\,\hat\varepsilon$: then $x_{t-1}$ carries as much noise as $x_t$
# and the sampler never gets anywhere. The step removes noise *only* through the change
# of the coefficient from $\sqrt{1-\bar\alpha_t}$ to $\sqrt{1-\bar\alpha_{t-1}}$.
#
# ### Skipping steps is now allowed
#
# Nothing in the construction used that $t-1$ is *one* step below $t$. Pick any increasing
# sub-sequence of the training steps $\tau_1 < \tau_2 < \dots < \tau_S = T$ and build the
# same family on it (DDIM §4.2): the marginals $q(x_{\tau_i} \mid x_0)$ are DDPM's, so the
# network still fits; and the update is eq. 12 with $\bar\alpha_{\tau_i}$ and
# $\bar\alpha_{\tau_{i-1}}$ in place of $\bar\alpha_t$ and $\bar\alpha_{t-1}$
# ($\bar\alpha_{\tau_0} = 1$). The network is called at the *training* times $\tau_i$.
# This is what `schedules.respace` provides (chapter 3 used it too): the schedule read off
# on the sub-grid, each entry remembering its training time so that `ddpm.call_model`
# passes $\tau_i / T$ to the network. The sampler costs $S$ calls instead of $T$.
#
# The same reasoning gives DDPM's ancestral sampler on a sub-grid: on the respaced
# schedule its betas are $\beta'_i = 1 - \bar\alpha_{\tau_i}/\bar\alpha_{\tau_{i-1}}$ —
# the noise of the *whole* stride — and it becomes the DDPM of an $S$-step chain. The
# naive sampler of the motivation kept the one-step $\beta_t$: that is the mistake, and
# it costs a factor of a hundred in noise removed. Two other mistakes are common when
# writing a strided sampler by hand: calling the network at the sub-grid index $i$
# instead of the training step $\tau_i$ (the network has never seen time $i/T$ with that
# noise level), and dropping the final step to $\bar\alpha_0 = 1$, which leaves the noise
# of $\tau_1$ in the samples.

# %%
course_lib.show(ddim.ddim_sample, docstring=False)

# %% [markdown]
# Let us check the claim "$\eta = 1$ is DDPM" on a respaced grid of twenty steps with
# the trained 2D network: DDIM with $\eta = 1$ and chapter 3's ancestral sampler with
# $\sigma^2 = \tilde\beta$ on the respaced schedule, started from the same $x_T$ with two
# generators of the same seed, so that they draw the same noise.

# %%
grid_20 = ddim.timesteps(T, 20)
ddim_eta1 = ddim.ddim_sample(
    toy_model, x_T_toy, schedule, grid_20, eta=1.0, generator=torch.Generator().manual_seed(7)
).x
ancestral = ddpm.ancestral_sample(
    toy_model,
    x_T_toy,
    schedules.respace(schedule, grid_20),
    "beta_tilde",
    generator=torch.Generator().manual_seed(7),
).x
print(f"20-step grid: {grid_20.tolist()}")
print(f"max |DDIM(eta = 1) - DDPM(beta_tilde)| = {(ddim_eta1 - ancestral).abs().max():.1e}")

# %% [markdown]
# The two agree to float32 rounding: same means, same variances, same noise.
#
# ## $\eta = 0$ is an ODE solver
#
# ### Rescaled variables
#
# The deterministic update has a second reading that explains why it tolerates large
# steps. Take eq. 12 with $\sigma_t = 0$ and divide by $\sqrt{\bar\alpha_{t-1}}$:
#
# $$ \frac{x_{t-1}}{\sqrt{\bar\alpha_{t-1}}} = \hat x_0 + \sqrt{\frac{1-\bar\alpha_{t-1}}{\bar\alpha_{t-1}}}\;\hat\varepsilon,
#    \qquad \hat x_0 = \frac{x_t}{\sqrt{\bar\alpha_t}} - \sqrt{\frac{1-\bar\alpha_t}{\bar\alpha_t}}\;\hat\varepsilon . $$
#
# Name the rescaled point and the noise-to-signal ratio
#
# $$ \bar x_t = \frac{x_t}{\sqrt{\bar\alpha_t}}, \qquad \bar\sigma_t = \sqrt{\frac{1-\bar\alpha_t}{\bar\alpha_t}} $$
#
# ($\bar\sigma$ rises from 0 at the data to about 160 at $t = T$ for the linear schedule;
# it is not the $\sigma_t(\eta)$ above, hence the bar). Substituting the second equation
# into the first,
#
# $$ \bar x_{t-1} = \bar x_t + \big(\bar\sigma_{t-1} - \bar\sigma_t\big)\;\hat\varepsilon(x_t, t) . $$
#
# This is one step of Euler's method, from $\bar\sigma_t$ down to $\bar\sigma_{t-1}$, for
# the ordinary differential equation
#
# $$ \frac{d\bar x}{d\bar\sigma} = \varepsilon_\theta\Big(\frac{\bar x}{\sqrt{1+\bar\sigma^2}},\ t(\bar\sigma)\Big) \qquad \text{(DDIM eq. 14)}, $$
#
# where $x = \bar x/\sqrt{1+\bar\sigma^2}$ because $\bar\alpha = 1/(1+\bar\sigma^2)$. A
# strided grid is simply a coarser Euler grid for the same ODE. In the rescaled
# variables the forward process is $\bar x_t = x_0 + \bar\sigma_t\,\varepsilon$: data plus
# noise of standard deviation $\bar\sigma$, the "variance-exploding" form, and $\bar\sigma$
# is the $\sigma$ of chapter 5 and of EDM {cite}`karras2022edm`.
#
# ### The score behind it
#
# Write $\bar q_{\bar\sigma}$ for the law of $\bar x = x_0 + \bar\sigma\varepsilon$. Since
# $x = \sqrt{\bar\alpha}\,\bar x$, the chain rule gives
# $\nabla_{\bar x} \log \bar q_{\bar\sigma}(\bar x) = \sqrt{\bar\alpha}\,\nabla_x \log q_t(x)$, and
# with Tweedie's $\varepsilon^* = -\sqrt{1-\bar\alpha}\,\nabla_x\log q_t$ the ODE becomes
#
# $$ \frac{d\bar x}{d\bar\sigma} = -\bar\sigma\,\nabla_{\bar x}\log \bar q_{\bar\sigma}(\bar x) . $$
#
# This is the *probability-flow ODE* of the variance-exploding diffusion
# {cite}`song2021sde`: its solutions carry the marginals, so that if
# $\bar x(\bar\sigma_{\max}) \sim \bar q_{\bar\sigma_{\max}}$ then
# $\bar x(\bar\sigma) \sim \bar q_{\bar\sigma}$ at every level. Chapter 5 proves it with the
# continuity equation and builds better solvers for it. Here the simplest case already
# shows why DDIM works with few steps. If the data is a single point $\mu$, then
# $\bar q_{\bar\sigma} = \mathcal N(\mu, \bar\sigma^2 I)$, the score is
# $-(\bar x-\mu)/\bar\sigma^2$, and the ODE is $d\bar x/d\bar\sigma = (\bar x-\mu)/\bar\sigma$,
# whose solutions are the straight lines $\bar x = \mu + \bar\sigma c$. Along each line
# $\hat\varepsilon = c$ is constant, so Euler's method is **exact**, in one step, from any
# level to any other. For real data the paths bend where the posterior over $x_0$
# changes its mind — where $\hat x_0$ moves — and DDIM's error comes from those bends
# only. When the paths are nearly straight, a handful of steps suffice.
#
# The course's Euler step is written in exactly these variables:

# %%
course_lib.show(ddim.probability_flow_euler_step)

# %% [markdown]
# and on one step of the trained 2D network, from $t = 600$ to $t = 550$, it agrees
# with `ddim_step` at $\eta = 0$ (`tests/test_ddim.py` checks the identity for many
# steps and both parameterisations):

# %%
x_600 = ddpm.q_sample(toy.x0[:500], 600, schedule, torch.randn(500, 2, generator=generator))
via_ddim = ddim.ddim_step(toy_model, x_600, 600, 550, schedule, eta=0.0)
via_euler = ddim.probability_flow_euler_step(toy_model, x_600, 600, 550, schedule)
print(f"max |DDIM step - Euler step| = {(via_ddim - via_euler).abs().max():.1e}")

# %% [markdown]
# ### Watching the paths
#
# Trajectories make the difference between the two ends of $\eta$ visible. With
# $\eta = 0$ each point follows a smooth path from its $x_T$ to a sample; with
# $\eta = 1$ the paths jitter, because every step adds fresh noise and the next steps
# remove it again. Both use the trained network, 50 steps, and the same $x_T$.

# %%
paths = {
    eta: ddim.ddim_sample(
        toy_model,
        x_T_toy[:40],
        schedule,
        50,
        eta=eta,
        generator=torch.Generator().manual_seed(3),
        keep=1,
    )
    for eta in (0.0, 1.0)
}
fig, axes = plotting.figure_row(2, size=4.2)
for ax, (eta, res) in zip(axes, paths.items(), strict=True):
    plotting.trajectories(res.trajectory, ax=ax, title=f"DDIM, η = {eta:g}, 50 steps", n=40)
fig.tight_layout()
plt.show()

anim = ddim.ddim_sample(toy_model, x_T_toy, schedule, 50, keep=1)
display(
    HTML(
        plotting.animate(
            anim.trajectory,
            data=toy.x0[:2000],
            times=anim.times.tolist(),
            title="DDIM η = 0, training step",
            max_frames=cfg.pick(smoke=8, cpu=51, gpu=51),
        )
    )
)

# %% [markdown]
# What to notice: the deterministic paths are gently curved and end on the moons; the
# $\eta = 1$ paths wander and end on the moons too, in other places — the same $x_T$
# no longer decides the sample. In the animation, the cloud hardly changes during the
# first half of the steps (the noise still dominates) and then condenses quickly: the
# last few hundred training steps, where $\bar\sigma$ falls from about one to zero, do
# most of the work. That observation is the subject of the next section.
#
# ## Which steps? Uniform and quadratic grids
#
# With $S$ steps to spend, where should they go? DDIM's appendix proposes two grids
# (`ddim.timesteps`): **uniform**, $\tau_i = \lfloor c\, i \rfloor$ with $c = T/S$, and
# **quadratic**, $\tau_i = \lfloor c\, i^2\rfloor$ with $c = T/S^2$, which puts more of
# the steps near the data; the paper used the quadratic grid for CIFAR-10 and the
# uniform grid elsewhere. (Where $\lfloor c\, i^2\rfloor$ would repeat a step, for the
# first few $i$ when $S$ is large, the code takes $\max(\lfloor c\, i^2\rfloor, i)$.)

# %%
course_lib.show(ddim.timesteps, docstring=False)

# %%
fig = df.plot_time_grids(schedule, 10)
plt.show()
for kind in ddim.KINDS:
    tau = ddim.timesteps(T, 10, kind)
    ab = schedule.alpha_bar[tau[:3]]
    sigma_bar = ((1 - ab) / ab).sqrt()
    print(
        f"{kind:>9} grid, 10 steps: first steps {tau[:3].tolist()}, "
        f"noise-to-signal sigma_bar = {[round(float(s), 3) for s in sigma_bar]}"
    )

# %% [markdown]
# The right panel is the key. A natural clock for a diffusion is the log
# signal-to-noise ratio $\log\big(\bar\alpha_t/(1-\bar\alpha_t)\big) = -2\log\bar\sigma_t$: equal
# steps in it are equal *relative* changes of the noise. DDPM's linear schedule spends
# most of its training steps at low log-SNR, in heavy noise, and races through the
# high-SNR end: between $t = 100$ and $t = 1$ the log-SNR climbs from about 2 to 9. The
# uniform 10-step grid's last step jumps over all of it, from $\bar\sigma \approx 0.34$
# — a third of the data's scale — straight to the data; one Euler step has to resolve
# all the fine structure of the data at once, where the ODE's paths bend most. The
# quadratic grid ends at $t = 10$, $\bar\sigma \approx 0.04$, and takes its steps where the
# paths bend. At large $S$ the choice matters less: both grids become fine everywhere.
# (Chapter 5 takes the idea further: EDM spaces its levels evenly in
# $\bar\sigma^{1/\rho}$ with $\rho = 7$, which crowds them near the data.)
#
# ## Quality against the number of steps: a 2D study
#
# Now the measurement that DDIM's Table 1 made on CIFAR-10: one trained model, several
# samplers, several numbers of steps. The samplers are
#
# * **DDIM, η = 0** on the uniform grid, and on the quadratic grid;
# * **DDIM, η = 1**: ancestral sampling with $\tilde\beta$ on the respaced chain;
# * **DDPM ancestral, σ² = β**: chapter 3's sampler on the respaced chain with the
#   larger variance $\beta'_i$ (DDIM's $\hat\sigma$ row). At $S = T$ this is DDPM
#   exactly as Ho et al. sampled it, and it is the **reference** of this chapter:
#   "DDPM@1000".
#
# Every sampler starts from the same $x_T$ and uses a generator with the same seed
# (`df.samplers`), so the differences between entries are the samplers'. The loop that
# fills the table is a plain function; it times each sampler and keeps the samples:

# %%
course_lib.show(df.samplers, docstring=False)

# %%
course_lib.show(df.quality_vs_steps, docstring=False)

# %% [markdown]
# The quality measure is the MMD to a large fresh sample of the target (chapter 0), with
# one choice made explicit: the kernel bandwidth. The course's default, the median
# distance between points, is about one and a half here — the size of the whole
# toy. A kernel that wide sees the overall shape of a sample well and the width of the
# moons hardly at all, and blurring the moons is exactly what a sampler with too few
# steps does. A fixed kernel bandwidth of $0.2$, a fifth of the data's standard deviation,
# resolves the moons. (MMDs with different bandwidths are different numbers: do not
# compare this chapter's with chapter 2's.) Beside every table stands its floor:
# the MMD that a fresh sample of the truth gets, what a perfect sampler would score.
# The exact model is measured against its twin (the mixture it is exact for), the
# trained model against the toy itself.

# %%
BANDWIDTH = 0.2
toy_steps = cfg.pick(smoke=[10, 50], cpu=[5, 10, 20, 50, 100], gpu=[5, 10, 20, 50, 100, 200])
toy_ref_steps = cfg.pick(smoke=200, cpu=1000, gpu=1000)  # the "DDPM@1000" reference
long_rows = cfg.pick(smoke=[df.DDPM], cpu=[df.DDPM], gpu=[df.DDPM, df.DDIM0, df.DDIM1])
n_ref = 4 * n_toy
studies = {
    "exact model": (exact_model, lambda n: twin.sample(n, generator)),
    "trained model": (toy_model, lambda n: toys.sample(toy_name, n, generator)),
}
toy_tables, toy_floors, toy_floor_spread = {}, {}, {}
for label, (model, draw) in studies.items():
    reference = draw(n_ref)

    def mmd_to_reference(x, reference=reference):
        return metrics.mmd(x, reference, bandwidth=BANDWIDTH)

    fns = df.samplers(model, schedule, x_T_toy, seed=cfg.seed, quadratic=True)
    plan = {name: toy_steps + ([toy_ref_steps] if name in long_rows else []) for name in fns}
    toy_tables[label] = df.quality_vs_steps(fns, plan, mmd_to_reference)
    floors = torch.tensor([mmd_to_reference(draw(n_toy)) for _ in range(5)])
    toy_floors[label], toy_floor_spread[label] = float(floors.mean()), float(floors.std())
    print(
        f"{toy_name}, {label}: MMD (bandwidth {BANDWIDTH}) of {n_toy} samples to {n_ref} of the target"
    )
    print(df.format_table(toy_tables[label], floor=toy_floors[label]))
    print()

fig, axes = plotting.figure_row(2, size=5.0)
for ax, (label, table) in zip(axes, toy_tables.items(), strict=True):
    df.plot_quality_vs_steps(table, ax=ax, floor=toy_floors[label], title=f"{toy_name}, {label}")
fig.tight_layout()
plt.show()

# %%
few_toy = 10  # in every profile's list of steps
trained = toy_tables["trained model"]
fig, axes = plotting.figure_row(len(trained), size=3.4)
for ax, (name, row) in zip(axes, trained.items(), strict=True):
    plotting.scatter(
        row[few_toy].x.clamp(-3, 3),
        data=toy.x0[:n_toy],
        ax=ax,
        title=f"{name}\n{few_toy} steps, MMD {row[few_toy].quality:.4f}",
        label="samples",
    )
fig.suptitle(f"the trained {toy_name} model, {few_toy} network calls per sample")
fig.tight_layout()
plt.show()

toy_check = {}
for label, table in toy_tables.items():
    q_ddim, q_ddpm = table[df.DDIM0][50].quality, table[df.DDPM][toy_ref_steps].quality
    toy_check[label] = (q_ddim, q_ddpm, q_ddim / q_ddpm)
    print(
        f"{label:>13}: DDIM@50 {q_ddim:.5f} / DDPM@{toy_ref_steps} {q_ddpm:.5f} = "
        f"{q_ddim / q_ddpm:.2f}  (floor {toy_floors[label]:.5f} ± {toy_floor_spread[label]:.5f})"
        " -> within 10%: "
        f"{'yes' if q_ddim <= 1.1 * q_ddpm else 'no'}"
    )

# %% [markdown]
# How to read the tables (your numbers will differ a little from run to run; an MMD of
# a thousand points is itself noisy, by some tens of percent near the floor).
#
# * **Few steps.** At 5 and 10 steps every sampler is far above the floor, and the
#   quadratic grid is by far the best DDIM: the uniform grid's last jump from
#   $\bar\sigma \approx 0.3$ lands its samples on $\mathbb E[x_0 \mid x_{\tau_1}]$, a blurred
#   average that fills the gap between the moons (look at the panels). Among the
#   uniform-grid samplers, $\eta = 1$ is worst. In two dimensions, DDPM's larger
#   variance $\beta'$ is *not* the disaster it is for images: its extra noise partly
#   undoes the shrinkage of the denoised guesses, and a little excess noise is nearly
#   invisible to an MMD. On images, excess noise shows as grain.
# * **Many steps.** From about 20 to 50 steps on, every sampler comes within a factor
#   of two of the floor, and the differences between them become as small as the
#   spread of the floor itself (the $\pm$ above: five fresh samples of the truth). An
#   MMD of a thousand points cannot resolve a 10% difference there, so the
#   "DDIM@50 within 10% of DDPM@1000" verdict printed above is not a reliable one in
#   2D: it fails about as clearly for the *exact* model, whose ODE has no error but the
#   discretisation's, as for the trained one. (With the exact model, DDPM@1000 even
#   lands below the floor's mean, within its spread.) Read the 2D table for its shape: the
#   few-step columns, where the samplers differ by factors of several, and the plateau.
#   Whether a deterministic sampler pays for the network's errors at many steps is
#   easier to see on images, next.
#
# ### A sharper yardstick: the KL divergence (chapter 5)
#
# The twin has an exact density $p$, so there is a measure that does resolve the
# plateau: the KL divergence of the samples' law $q$ from $p$,
# $\mathrm{KL}(q\,\|\,p) = \mathbb E_q[-\log p] - H(q)$, with the cross-entropy averaged
# exactly over the samples and the entropy $H(q)$ estimated from the distances to their
# nearest neighbours (`metrics.kl_divergence`; chapter 5 explains it and uses it for
# every sampler). Here it is on the exact model's samples of the table above, split into
# its two terms, beside its floor on exact samples:

# %%
kl_generator = torch.Generator().manual_seed(cfg.seed + 5)  # the chapter's stream is left alone
kl_floor = metrics.kl_floor(lambda n: twin.sample(n, kl_generator), twin.log_prob, n_toy, repeats=5)
entropy_p = metrics.cross_entropy(twin.sample(4 * n_toy, kl_generator), twin.log_prob)
exact_table = toy_tables["exact model"]
for name, entry in [
    ("DDIM, η = 0, 50 steps", exact_table[df.DDIM0][50]),
    (f"DDPM, {toy_ref_steps} steps", exact_table[df.DDPM][toy_ref_steps]),
]:
    cross = metrics.cross_entropy(entry.x, twin.log_prob)
    h_q = metrics.knn_entropy(entry.x)
    print(f"{name:<22} KL {cross - h_q:.3f} nats = cross-entropy {cross:.3f} − entropy {h_q:.3f}")
print(
    f"{'exact samples':<22} KL floor {kl_floor.mean:.3f} ± {kl_floor.std:.3f} nats "
    f"({n_toy} samples, 5 draws); entropy of the twin H(p) ≈ {entropy_p:.3f}"
)

# %% [markdown]
# DDPM's thousand steps are at the floor; DDIM's fifty are well above it, by a few
# spreads of the floor at this sample size and by about six with 4,000 samples and three
# seeds (chapter 5's protocol, over runs: DDIM@50 about 0.12–0.13 nats, DDPM@1000 about
# 0.02, the floor about 0.03, each with a spread near 0.01). The split says why: DDIM's
# cross-entropy is *lower* than the twin's own entropy $H(p)$ — its samples sit where
# $p$ is high — and its entropy lower still. The samples are too concentrated, not
# blurred: the last DDIM step lands on the posterior mean $\mathbb E[x_0 \mid x_{\tau_1}]$,
# which pulls each point towards the middle of its moon. An MMD with a fixed bandwidth
# barely sees that; a density-based measure does.
#
# ## Try it: steps, η and the grid
#
# The widget samples the trained 2D model with DDIM for a number of steps, an $\eta$
# and a grid, always from the same $x_T$, and draws the samples with the paths of thirty
# of them. It calls one plain, tested function, `df.ddim_panel`.

# %%
import ipywidgets as widgets


def redraw(steps: int = 10, eta: float = 0.0, grid: str = "uniform") -> None:
    df.ddim_panel(
        toy_model,
        schedule,
        toy.x0[: cfg.pick(smoke=300, cpu=2000, gpu=2000)],
        steps=steps,
        eta=eta,
        grid=grid,
        n=cfg.pick(smoke=200, cpu=500, gpu=1000),
    )
    plt.show()


widgets.interact(
    redraw,
    steps=widgets.IntSlider(value=10, min=1, max=200, step=1, description="steps S"),
    eta=widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="η"),
    grid=widgets.Dropdown(options=list(ddim.KINDS), value="uniform", description="grid"),
)

# %% [markdown]
# Things to try: one step (the samples are the network's first guess
# $\hat x_0(x_T)$, and since $x_T$ holds almost no signal, that guess is close to the
# data's mean for every point: a small cloud in the middle); two and three
# steps on both grids; ten steps with $\eta$ from 0 to 1, watching the paths go from
# smooth to jittery; and a hundred steps, where the grid no longer matters.
#
# ## MNIST: DDIM's Table 1 on digits
#
# The same study on images uses chapter 3's MNIST U-Net. Again, if chapter 3 has run,
# the model is loaded; otherwise the recipe is trained now (a few minutes on a laptop
# CPU in the `cpu` profile, longer on a busy machine).

# %%
mnist = image_diffusion.train_image_diffusion(cfg, "mnist")
r = mnist.recipe
print(
    f"MNIST U-Net: {sum(p.numel() for p in mnist.model.parameters()):,} parameters, "
    f"{r.steps} steps at batch {r.batch_size}, "
    f"{'trained now' if mnist.trained_now else 'loaded from ' + mnist.checkpoint.name}"
)

# %% [markdown]
# **The quality measure.** The standard FID compares Inception-v3 features of samples and
# real images; its weights cannot be downloaded offline, and MNIST has no standard FID
# anyway. The course computes the same Fréchet distance on the features of a small
# classifier it trains itself on MNIST (`evaluate.course_evaluator`, cached after the
# first run, shared with chapter 3). Call it what it is: a **classifier-feature FID**. It is useful to compare
# samplers of this course with each other and is **not comparable** with any Inception
# FID in a paper.
#
# FID is biased upwards at small sample sizes — the covariance of a few dozen feature
# vectors is a poor estimate — so every entry of the table uses the **same number of
# samples**, and the table's floor is the FID of that many *real* digits (averaged over
# five random subsets, with its spread). In the `cpu` profile the budget is small:
# DDPM@1000 alone makes a thousand U-Net calls per image, so the table uses a few dozen
# images, and differences smaller than the floor's spread are noise.

# %%
evaluator = evaluate.course_evaluator(cfg, "mnist")  # the same classifier as chapter 3
n_fid = cfg.pick(smoke=8, cpu=32, gpu=2000)
fid_floor, fid_floor_std = df.fid_floor(
    evaluator.fid, mnist.images, n_fid, repeats=5, generator=generator
)
print(
    f"classifier accuracy on held-out digits: {evaluator.accuracy:.3f}; "
    f"FID of {n_fid} real digits: {fid_floor:.1f} ± {fid_floor_std:.1f}"
)

# %%
mnist_steps = cfg.pick(smoke=[10, 50], cpu=[10, 20, 50], gpu=[10, 20, 50, 100])
mnist_ref_steps = cfg.pick(smoke=100, cpu=1000, gpu=1000)
x_T_img = torch.randn(n_fid, 1, 28, 28, generator=generator).to(cfg.device)
img_samplers = df.samplers(mnist.model, mnist.schedule, x_T_img, seed=cfg.seed, clip_x0=1.0)
img_plan = {name: mnist_steps for name in img_samplers}
img_plan[df.DDPM] = [*mnist_steps, mnist_ref_steps]
mnist_table = df.quality_vs_steps(img_samplers, img_plan, evaluator.fid)
print(f"MNIST classifier-feature FID, {n_fid} samples per entry (lower is better)")
print(df.format_table(mnist_table, floor=fid_floor, digits=3))
df.plot_quality_vs_steps(
    mnist_table,
    floor=fid_floor,
    title=f"MNIST, {n_fid} samples per entry",
    ylabel="classifier-feature FID (lower is better)",
)
plt.show()

# %% [markdown]
# ### Exercise 4.4: predict before you look
#
# The table's DDIM ($\eta = 0$) entries at 10 and at 50 steps started from the **same**
# $x_T$. Before running the next cell, predict: does image $k$ at 10 steps show the
# `"same"` digit as image $k$ at 50 steps, or a `"different"` one?

# %% tags=["exercise"]
my_prediction = None  # YOUR PREDICTION: "same" or "different"

# %%
ch04.check_predict_consistency(my_prediction)

# %% tags=["solution", "hide-input"]
my_prediction = "same"  # eta = 0: both runs solve one ODE from one x_T
ch04.check_predict_consistency(my_prediction)

# %%
few_img, mid_img = 10, 50  # in every profile's list of steps
rows = [
    (f"DDIM η = 0, {few_img} steps", mnist_table[df.DDIM0][few_img].x),
    (f"DDIM η = 0, {mid_img} steps", mnist_table[df.DDIM0][mid_img].x),
    (f"DDIM η = 1, {mid_img} steps", mnist_table[df.DDIM1][mid_img].x),
    (f"DDPM σ² = β, {few_img} steps", mnist_table[df.DDPM][few_img].x),
    (f"DDPM σ² = β, {mnist_ref_steps} steps", mnist_table[df.DDPM][mnist_ref_steps].x),
]
n_show = min(12, n_fid)
fig, axes = plt.subplots(len(rows), 1, figsize=(n_show * 0.75, len(rows) * 1.15))
for ax, (title, x) in zip(axes, rows, strict=True):
    plotting.image_grid(x[:n_show], nrow=n_show, ax=ax, title=title)
fig.suptitle("the same x_T in every column")
fig.tight_layout()
plt.show()


def labels_of(x):
    with torch.no_grad():
        return evaluator.net(x.to(next(evaluator.net.parameters()).device)).argmax(1).cpu()


consistency = {
    f"DDIM η = 0: {few_img} vs {mid_img} steps": (
        mnist_table[df.DDIM0][few_img].x,
        mnist_table[df.DDIM0][mid_img].x,
    ),
    f"DDIM η = 1: {few_img} vs {mid_img} steps": (
        mnist_table[df.DDIM1][few_img].x,
        mnist_table[df.DDIM1][mid_img].x,
    ),
    f"DDIM η = 0 @{mid_img} vs DDPM @{mnist_ref_steps}": (
        mnist_table[df.DDIM0][mid_img].x,
        mnist_table[df.DDPM][mnist_ref_steps].x,
    ),
}
for name, (a, b) in consistency.items():
    same = float((labels_of(a) == labels_of(b)).float().mean())
    print(f"{name:<34} same class for {same:.0%} of the {n_fid} pairs (classifier's labels)")

# %% [markdown]
# What to notice.
#
# * **Consistency.** Down each column of the two deterministic rows, the digit is
#   the same, stroke for stroke. The classifier agrees: nine pairs in ten or so get
#   the same label, against one in five or fewer for the stochastic pairs (the
#   $\eta = 1$ chains at 10 and 50 steps draw different noises, and DDPM's chain from
#   the same $x_T$ is driven by a thousand fresh noises and ends wherever they lead).
#   DDIM §5.2 calls this *consistency*: with $\eta = 0$ the latent $x_T$ encodes the
#   sample's content, and the number of steps only its finish.
# * **Which sampler is best.** In DDIM's Table 1 on CIFAR-10 the deterministic sampler
#   wins at every step count below 1000, and the stochastic ones fall apart at ten
#   steps. This chapter's small MNIST model does not reproduce that ordering: in our
#   runs the stochastic samplers scored as well as DDIM or better at 10 to 50 steps,
#   and the deterministic rows carry a faint speckle in the background (look at the
#   grids). The speckle is the *network's* error. Its noise estimate misses part of
#   the noise, and a deterministic sampler has no second chance to remove what it
#   missed; a stochastic sampler re-noises and denoises again at every step, which
#   keeps pulling the chain back towards the marginals the network was trained on and
#   corrects earlier mistakes. The weaker the network, the more that matters: ours
#   was trained for minutes on a CPU, the paper's for 800,000 steps on a TPU v3-8
#   (one TPU board with eight cores). Even there the effect shows at 1000 steps: FID 4.04 for DDIM against 3.17
#   for DDPM's sampler. Chapter 5 returns to this trade-off (predictor–corrector
#   samplers, stochastic against deterministic).
# * **The small budget.** A U-Net trained for minutes produces many malformed digits,
#   whatever the sampler; with a few dozen samples per entry, the floor's spread tells
#   how large a difference must be before it means anything. The `gpu` profile uses
#   2000 samples per entry and a larger, longer-trained U-Net.
#
# ### Speed
#
# Each step is one U-Net call on the whole batch, whatever the sampler, so the
# throughput is set by the number of steps. The table timed every entry:

# %%
ddpm_entry = mnist_table[df.DDPM][mnist_ref_steps]
ddim_entry = mnist_table[df.DDIM0][50]
speedup = ddim_entry.per_second / ddpm_entry.per_second
print(f"device: {cfg.describe()}, batch of {n_fid} images")
print(
    f"DDPM ancestral, {mnist_ref_steps:>4} steps: {ddpm_entry.per_second:8.2f} images/s "
    f"({ddpm_entry.seconds:.1f} s)"
)
print(
    f"DDIM eta = 0,     50 steps: {ddim_entry.per_second:8.2f} images/s "
    f"({ddim_entry.seconds:.1f} s), {speedup:.0f}x faster"
)
mnist_ratio = ddim_entry.quality / ddpm_entry.quality
print(
    f"classifier-FID: DDIM@50 {ddim_entry.quality:.2f} / DDPM@{mnist_ref_steps} "
    f"{ddpm_entry.quality:.2f} = {mnist_ratio:.2f} (real-digit floor {fid_floor:.2f} ± "
    f"{fid_floor_std:.2f}) -> within 10%: {'yes' if mnist_ratio <= 1.1 else 'no'}"
)

# %% [markdown]
# The speed-up should be the ratio of step counts, twenty; timings on a shared machine
# are noisy, and the per-call overhead is not the same for every batch.
# Whether DDIM@50 lands within 10% of DDPM@1000 is printed above with the measured
# numbers; read it against the floor and its spread. In the DDIM paper, on CIFAR-10
# with a 35.7M-parameter U-Net, DDIM at 100 steps scored 4.16 against 3.17 for DDPM's
# 1000-step sampler (31% behind, at a tenth of the cost), and 4.04 at 1000 steps: the
# deterministic sampler trades a little quality for a large saving, and a 10% margin is
# a demanding target.
#
# ## Inversion: from data to latents and back
#
# A deterministic sampler is an invertible map — run the ODE the other way. Starting
# from a data point $x_0$ and stepping *up* the grid,
#
# $$ \bar x_{\tau_{i+1}} = \bar x_{\tau_i} + \big(\bar\sigma_{\tau_{i+1}} - \bar\sigma_{\tau_i}\big)\,\hat\varepsilon , $$
#
# gives a latent $x_T$ from which DDIM ($\eta = 0$) returns to $x_0$ (DDIM §4.3). Where
# should $\hat\varepsilon$ be evaluated? Euler's method up from $\tau_i$ would take
# $\hat\varepsilon(x_{\tau_i}, \tau_i)$. On the first step that is impossible — the network
# is not defined at $\tau_0 = 0$ — so the first step must use the destination time
# $\tau_1$. On the later steps either choice is possible. Decoding takes the step
# between $\tau_{i+1}$ and $\tau_i$ with $\hat\varepsilon(x_{\tau_{i+1}}, \tau_{i+1})$; the
# *destination* choice, $\hat\varepsilon(x_{\tau_i}, \tau_{i+1})$, uses the same time but
# shows the network a point with the noise level of $\tau_i$, while Euler's *source*
# choice, $\hat\varepsilon(x_{\tau_i}, \tau_i)$, keeps point and time consistent. Which
# round trip is closer is a question for measurement, and the table below measures
# both (`eps_at="source"`, the default, and `"destination"`). Two mistakes to avoid:
# inverting with `clip_x0` (clipping is not invertible) and inverting with one grid and
# decoding with another.
#
# ### Exercise 4.5: one step up
#
# Write the inversion step `invert_step(x, eps_hat, alpha_bar_t, alpha_bar_next)` from
# level $t$ up to a noisier level, in the variables $x$ of the sampler: go to
# $\bar x$, take the Euler step in $\bar\sigma$, come back. Then simplify it on paper:
# what is it in terms of $\hat x_0$, and how does it relate to your `ddim_step` of
# exercise 4.3? The check asks for the step at three pairs of levels and decodes it.


# %% tags=["exercise"]
def invert_step(x, eps_hat, alpha_bar_t, alpha_bar_next):
    # YOUR CODE HERE: return the point at the noisier level alpha_bar_next
    raise NotImplementedError


# %%
ch04.check_invert_step(invert_step)


# %% tags=["solution", "hide-input"]
def invert_step(x, eps_hat, alpha_bar_t, alpha_bar_next):
    sigma_bar = math.sqrt((1 - alpha_bar_t) / alpha_bar_t)
    sigma_bar_next = math.sqrt((1 - alpha_bar_next) / alpha_bar_next)
    x_bar = x / math.sqrt(alpha_bar_t)
    return math.sqrt(alpha_bar_next) * (x_bar + (sigma_bar_next - sigma_bar) * eps_hat)


ch04.check_invert_step(invert_step)

# %% [markdown]
# Simplified, the step is $\sqrt{\bar\alpha_{\text{next}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{\text{next}}}\,\hat\varepsilon$:
# DDIM's deterministic step with the two levels swapped. With the *same* $\hat\varepsilon$
# the step down undoes it exactly; all of the round-trip error comes from
# $\hat\varepsilon$ not being the same on the way up and on the way down.

# %%
course_lib.show(ddim.ddim_invert, docstring=False)

# %%
course_lib.show(df.inversion_study, docstring=False)

# %%
inv_steps = cfg.pick(smoke=[5, 20], cpu=[10, 50, 100], gpu=[10, 50, 100, 500])
digits = mnist.images[torch.randperm(mnist.images.shape[0], generator=generator)[:8].to(cfg.device)]
toy_points = toy.x0[: cfg.pick(smoke=100, cpu=300, gpu=1000)]
inv = {
    (name, eps_at): df.inversion_study(model, x, sched, inv_steps, eps_at=eps_at)
    for name, model, x, sched in [
        ("MNIST", mnist.model, digits, mnist.schedule),
        ("2D", toy_model, toy_points, schedule),
    ]
    for eps_at in ddim.INVERSION_STEPS
}
mnist_inv, toy_inv = inv[("MNIST", "source")], inv[("2D", "source")]  # the default
print("reconstruction rmse, eps evaluated at the source / the destination step")
print(
    f"{'steps':>5} | {'MNIST src':>9} {'dest.':>7} | {'latent std':>10} | {'2D src':>7} {'dest.':>7}"
)
for j, steps in enumerate(inv_steps):
    m_s, m_d = inv[("MNIST", "source")][j], inv[("MNIST", "destination")][j]
    t_s, t_d = inv[("2D", "source")][j], inv[("2D", "destination")][j]
    print(
        f"{steps:5d} | {m_s.rmse:9.4f} {m_d.rmse:7.4f} | {m_s.latent_std:10.3f} | "
        f"{t_s.rmse:7.4f} {t_d.rmse:7.4f}"
    )

fig = plt.figure(figsize=(12, 3.8))
ax = fig.add_subplot(1, 3, 1)
ax.plot(inv_steps, [r.rmse for r in mnist_inv], "o-", color=plotting.COLORS["model"], label="MNIST")
ax.plot(inv_steps, [r.rmse for r in toy_inv], "s-", color=plotting.COLORS["truth"], label="2D")
ax.set(
    xscale="log",
    yscale="log",
    xlabel="steps (inversion and decoding)",
    ylabel="reconstruction rmse",
    title="x0 -> x_T -> x0",
)
ax.legend(fontsize=8)
ax = fig.add_subplot(1, 3, (2, 3))
latent = ddim.ddim_invert(mnist.model, digits, mnist.schedule, inv_steps[-1]).x
plotting.image_grid(
    torch.cat(
        [
            digits.cpu(),
            (latent / 3).cpu(),  # scaled into the display range
            mnist_inv[0].reconstruction,
            mnist_inv[-1].reconstruction,
        ]
    ),
    nrow=8,
    ax=ax,
    title=f"digits / their latents x_T (÷3) / decoded, {inv_steps[0]} and {inv_steps[-1]} steps",
)
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: the reconstruction error falls as the grid is refined, for the digits
# and the 2D points alike, whichever step the network is evaluated at. But the better
# choice differs. For the digits it is the source step: in our `cpu` runs (two sets of
# eight digits) the rmse at 10 / 50 / 100 steps was 0.25 / 0.06 / 0.03–0.04 with the
# source step against 0.69–0.80 / 0.085 / 0.043 with the destination step,
# so the chapter uses the source step. For the 2D model it is the other way round,
# 0.058 / 0.016 / 0.008 at the destination against 0.19 / 0.041 / 0.019
# at the source, and the same holds for the exact model (0.063 against 0.14 at ten
# steps). The exact model is defined and smooth everywhere, so matching the decoder's
# *time* is what counts; the U-Net has only seen images whose noise matches its time
# input, and a mismatch costs more than the time shift. With ten steps the round trip
# loses much of each digit — any one-evaluation-per-step inversion is crude when the
# steps are large — and with a hundred the decoded digits are very close to the
# originals. The latents have the scale of $x_T \sim \mathcal N(0, I)$ (standard
# deviation close to one) but they are not white noise: the outline of the digit is
# still visible in them. The ODE maps the data distribution as a whole onto
# $\mathcal N(0, I)$; one latent is one point of that map, and it keeps traces of its
# image. Each one decodes to *its* digit. A stochastic sampler could not do this: with
# $\eta > 0$ the map from $x_T$ to $x_0$ is not a function. Inversion is the starting
# point of many image-editing methods: invert a real image, change the latent or the
# conditioning, decode.
#
# ## Interpolation between latents
#
# If $x_T$ encodes content, moving smoothly between two latents should morph one sample
# into another (DDIM §5.3). The obvious path is the straight line,
# $z(\alpha) = (1-\alpha) z_0 + \alpha z_1$. It is wrong, and the reason is a fact about
# Gaussians in high dimension.
#
# ### Exercise 4.6: predict before you run
#
# Take two independent latents $z_0, z_1 \sim \mathcal N(0, I_D)$ with $D = 784$. Their
# norms are both very close to $\sqrt D = 28$. Predict the ratio
# $\|(z_0 + z_1)/2\| \,/ \sqrt D$ for the midpoint of the straight line.

# %% tags=["exercise"]
my_ratio = None  # YOUR PREDICTION, a number

# %%
ch04.check_predict_lerp_norm(my_ratio)

# %% tags=["solution", "hide-input"]
my_ratio = 0.71  # each coordinate of (z0 + z1) / 2 has variance 1/4 + 1/4 = 1/2
ch04.check_predict_lerp_norm(my_ratio)

# %% [markdown]
# A standard Gaussian in $D$ dimensions lives on a thin shell: $\|z\|^2$ is a sum of $D$
# independent squares, with mean $D$ and standard deviation $\sqrt{2D}$, so
# $\|z\| = \sqrt D\,\big(1 + O(1/\sqrt D)\big)$ — for $D = 784$, $28 \pm 0.7$. The midpoint of
# the line has norm $\sqrt{D/2} \approx 19.8$, some twelve standard deviations inside the
# shell: a latent that DDIM has never been started from. Spherical interpolation
# follows the great circle through the two latents instead. With $\theta$ the angle
# between them,
#
# $$ \operatorname{slerp}(z_0, z_1; \alpha) = \frac{\sin\big((1-\alpha)\theta\big)}{\sin\theta}\, z_0 + \frac{\sin(\alpha\theta)}{\sin\theta}\, z_1,
#    \qquad \cos\theta = \frac{\langle z_0, z_1\rangle}{\|z_0\|\,\|z_1\|}, $$
#
# which keeps the norm exactly when the two end norms are equal — as they nearly are for
# Gaussian latents in high dimension — and otherwise need not even stay between them
# (for nearly opposite latents of unequal norm it overshoots both). It is the
# interpolation White {cite}`white2016sampling` recommended for generative models with
# Gaussian latents, and the one DDIM uses.
#
# ### Exercise 4.7: slerp
#
# Write `slerp(z0, z1, alpha)` for two batches of latents of shape `(B, D)` and a
# float `alpha`, one angle per row. The check includes identical and nearly parallel
# rows, where $\sin\theta \to 0$: your function must not return NaN there.


# %% tags=["exercise"]
def slerp(z0, z1, alpha):
    # YOUR CODE HERE: theta per row, then the two sine weights
    raise NotImplementedError


# %%
ch04.check_slerp(slerp)


# %% tags=["solution", "hide-input"]
def slerp(z0, z1, alpha):
    cos = (z0 * z1).sum(1, keepdim=True) / (
        z0.norm(dim=1, keepdim=True) * z1.norm(dim=1, keepdim=True)
    )
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    parallel = sin < 1e-6  # identical or nearly parallel rows: 0/0; the arc is the line
    w0 = torch.where(parallel, 1 - alpha, torch.sin((1 - alpha) * theta) / sin.clamp_min(1e-6))
    w1 = torch.where(parallel, alpha, torch.sin(alpha * theta) / sin.clamp_min(1e-6))
    return w0 * z0 + w1 * z1


ch04.check_slerp(slerp)

# %% [markdown]
# The course's version handles whole batches, a tensor of weights at once, and nearly
# parallel latents (where $\sin\theta \to 0$ and the straight line is the right answer):

# %%
course_lib.show(ddim.slerp, docstring=False)

# %% [markdown]
# The norms along both paths, for independent Gaussian latents and for the latents of
# two inverted digits:

# %%
interp_steps = cfg.pick(smoke=10, cpu=50, gpu=50)  # DDIM steps to invert and decode
alpha = torch.linspace(0, 1, 21)
gauss = torch.randn(2, 64, 784, generator=generator)
digit_latents = (
    ddim.ddim_invert(mnist.model, digits[:4], mnist.schedule, interp_steps).x.cpu().flatten(1)
)
fig, axes = plotting.figure_row(2, size=4.2)
for ax, (title, z0, z1) in zip(
    axes,
    [
        ("independent N(0, I) latents, D = 784", gauss[0], gauss[1]),
        ("DDIM latents of MNIST digits", digit_latents[:2], digit_latents[2:]),
    ],
    strict=True,
):
    lerp_norms, slerp_norms = df.interpolation_norms(z0, z1, alpha)
    scale = math.sqrt(z0.shape[1])
    ax.plot(alpha, lerp_norms.mean(1) / scale, "o-", color=plotting.COLORS["truth"], label="line")
    ax.plot(alpha, slerp_norms.mean(1) / scale, "s-", color=plotting.COLORS["model"], label="slerp")
    ax.axhline(math.sqrt(0.5), color=plotting.COLORS["data"], ls=":", label="√(1/2)")
    ax.set(title=title, xlabel="α", ylabel="‖z(α)‖ / √D", ylim=(0.5, 1.2))
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The latents of real digits behave almost like Gaussian ones (two of them are nearly
# orthogonal), so the line sags to about $\sqrt{1/2}$ in the middle while slerp stays on
# the shell. Now decode both paths between pairs of digits: `ddim.interpolate` inverts
# the two digits, slerps and decodes; `df.lerp_and_slerp` adds the straight line
# between the *same* two latents.

# %%
course_lib.show(ddim.interpolate, docstring=False)

# %%
n_interp = cfg.pick(smoke=5, cpu=8, gpu=10)
pairs = df.lerp_and_slerp(
    mnist.model, digits[:2], digits[2:4], mnist.schedule, interp_steps, n_interp
)
fig, axes = plt.subplots(4, 1, figsize=(n_interp * 0.8, 4 * 1.2))
for k in range(2):
    for j, (name, path) in enumerate([("slerp", pairs.slerp), ("straight line", pairs.lerp)]):
        plotting.image_grid(
            path[:, k].cpu(), nrow=n_interp, ax=axes[2 * k + j], title=f"pair {k + 1}: {name}"
        )
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: the slerp rows morph one digit into the other through intermediate
# shapes (with a small, CPU-trained model, some of them are odd, but they are strokes
# of the right width and contrast). The straight-line rows behave differently: they
# leave the end digits almost at once and spend the middle of the path on one bold,
# generic digit that belongs to neither end — often the same one for different pairs.
# A latent that is too short is like a sample drawn at a lower *temperature*,
# $\mathcal N(0, \tfrac12 I)$ instead of $\mathcal N(0, I)$: the ODE carries it to the
# smooth, prototypical middle of the data instead of to its varied surface. The end
# points of both rows coincide: they are the decoded latents of the two digits.
#
# ## CIFAR-10 (`gpu` profile)
#
# On a GPU the same table is computed for CIFAR-10 with chapter 3's CIFAR-10 U-Net (its
# `gpu` recipe: about half an hour of training on one modern GPU if chapter 3 has not
# trained it). The list of extra data sets is empty in the `smoke` and `cpu` profiles,
# so this cell does nothing there. The course has not been able to test this cell on a
# GPU yet: treat its output as a first measurement, with the classifier-feature FID of
# a CIFAR-10 classifier (again not comparable with Inception FID).

# %%
extra_tables = {}
for name in cfg.pick(smoke=[], cpu=[], gpu=["cifar10"]):
    run = image_diffusion.train_image_diffusion(cfg, name)
    ev = evaluate.course_evaluator(cfg, name)
    x_T_extra = torch.randn(n_fid, *run.images.shape[1:], generator=generator).to(cfg.device)
    fns = df.samplers(run.model, run.schedule, x_T_extra, seed=cfg.seed, clip_x0=1.0)
    plan = {key: mnist_steps for key in fns}
    plan[df.DDPM] = [*mnist_steps, mnist_ref_steps]
    extra_tables[name] = df.quality_vs_steps(fns, plan, ev.fid)
    extra_floor = df.fid_floor(ev.fid, run.images, n_fid, repeats=3, generator=generator)[0]
    print(f"{name}: classifier-feature FID, {n_fid} samples per entry")
    print(df.format_table(extra_tables[name], floor=extra_floor, digits=3))
    plotting.image_grid(extra_tables[name][df.DDIM0][50].x[:64], title=f"{name}: DDIM, 50 steps")
    plt.show()

# %% [markdown]
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
card = [("run", cfg.describe()), ("chapter wall time", f"{elapsed:.1f} s")]
for label, (q_ddim, q_ddpm, ratio) in toy_check.items():
    card.append(
        (
            f"quality: 2D DDIM@50 / DDPM@{toy_ref_steps} MMD, {toy_name} {label}",
            f"{ratio:.2f}x  (DDIM {q_ddim:.5f}, DDPM {q_ddpm:.5f}, "
            f"floor {toy_floors[label]:.5f} ± {toy_floor_spread[label]:.5f}; "
            f"within 10%: {'yes' if ratio <= 1.1 else 'no'})",
        )
    )
for label, table in toy_tables.items():
    card.append(
        (
            f"quality: 2D DDIM@10 quadratic / uniform, {label}",
            f"{table[df.DDIM0_QUADRATIC][few_toy].quality / table[df.DDIM0][few_toy].quality:.2f}x",
        )
    )
card += [
    (
        f"quality: MNIST classifier-FID DDIM@50 / DDPM@{mnist_ref_steps}",
        f"{mnist_ratio:.2f}x  (DDIM {ddim_entry.quality:.2f}, DDPM {ddpm_entry.quality:.2f}, "
        f"real-digit floor {fid_floor:.2f} ± {fid_floor_std:.2f}, {n_fid} samples; "
        f"within 10%: {'yes' if mnist_ratio <= 1.1 else 'no'})",
    ),
    (
        f"quality: MNIST classifier-FID DDPM@{few_img} / DDIM@{few_img}",
        f"{mnist_table[df.DDPM][few_img].quality / mnist_table[df.DDIM0][few_img].quality:.2f}x",
    ),
    (
        f"quality: MNIST inversion rmse, {inv_steps[-1]} steps",
        f"{mnist_inv[-1].rmse:.4f}  (pixels in [-1, 1])",
    ),
]
for name, table in extra_tables.items():
    ratio = table[df.DDIM0][50].quality / table[df.DDPM][mnist_ref_steps].quality
    card.append((f"quality: {name} classifier-FID DDIM@50 / DDPM@1000", f"{ratio:.2f}x"))
card += [
    (
        f"throughput: MNIST DDPM, {mnist_ref_steps} steps",
        f"{ddpm_entry.per_second:.2f} images/s  (batch {n_fid}, {cfg.device.type})",
    ),
    (
        "throughput: MNIST DDIM, 50 steps",
        f"{ddim_entry.per_second:.2f} images/s  ({speedup:.0f}x faster)",
    ),
    (
        "published: DDIM (Song et al. 2021), CIFAR-10",
        "FID 4.16 (DDIM, 100 steps), 4.04 (DDIM, 1000), 3.17 (DDPM, 1000): Inception FID, "
        "35.7M U-Net, 800k steps on TPU v3-8",
    ),
]
results_card(card)

# %% [markdown]
# How to read it. The 2D lines compare DDIM with fifty network calls against DDPM with a
# thousand, on the exact model (the sampler's error alone) and on the trained model
# (sampler plus network); the floor says what a perfect sampler would score. The
# quadratic-to-uniform line is the grid's effect at ten steps. The MNIST lines give the
# same comparison in classifier-feature FID with its real-digit floor, the collapse of
# the stochastic sampler at few steps, the inversion error, and the measured
# throughput. The published line is there for scale only: Inception FID on CIFAR-10,
# from a model trained for hours on a TPU v3-8, is a different measure of a
# different model, and no number of this card can be compared with it directly.
#
# ## Summary
#
# * DDPM's loss depends on the forward process only through the marginals
#   $q(x_t \mid x_0)$, so **any process with the same marginals** can use the trained
#   network. DDIM's family
#   $q_\sigma(x_{t-1}\mid x_t, x_0) = \mathcal N\big(\sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\,\varepsilon_t,\ \sigma_t^2 I\big)$
#   has them for every choice of $\sigma_t$, and on any sub-grid of steps.
# * The sampler is
#   $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\,\hat\varepsilon + \sigma_t z$
#   with $\sigma_t(\eta)$: $\eta = 1$ is DDPM's ancestral sampler with $\tilde\beta_t$,
#   $\eta = 0$ is deterministic.
# * With $\eta = 0$, in $\bar x = x/\sqrt{\bar\alpha}$ and $\bar\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$,
#   DDIM is **Euler's method** for $d\bar x/d\bar\sigma = \hat\varepsilon$, the
#   probability-flow ODE; for one data point the paths are straight lines and one
#   step is exact. Where the steps go matters: the quadratic grid spends them near the
#   data, where the paths bend.
# * With one trained model, DDIM at tens of steps comes close to DDPM at a thousand,
#   while stochastic samplers degrade at few steps (strongly on images); at many steps
#   the stochastic sampler can be better, because an ODE carries the network's error.
# * A deterministic sampler can be **inverted**: data → latent → data, with an error
#   that shrinks with the number of steps; latents are interpolated with **slerp**,
#   because the straight line leaves the shell $\|z\| \approx \sqrt D$.
#
# ## Further reading
#
# * Song, Meng & Ermon, *Denoising diffusion implicit models* {cite}`song2021ddim`: the
#   non-Markovian family (§3), the sampler and $\eta$ (§4, eqs. 12 and 16), the ODE view
#   (§4.3), Table 1, consistency, interpolation and reconstruction (§5).
# * Ho, Jain & Abbeel {cite}`ho2020ddpm` for the model and the two variances; Nichol &
#   Dhariwal {cite}`nichol2021improved` for respacing the chain and for learned
#   variances, which make the stochastic sampler good with fewer steps too.
# * Song et al. {cite}`song2021sde`: the probability-flow ODE behind $\eta = 0$; Karras et
#   al. {cite}`karras2022edm`: the $\bar\sigma$ parameterisation, better grids and
#   second-order (Heun) steps; Lu et al. {cite}`lu2022dpmsolver`: solvers that exploit
#   the ODE's semi-linear form and need about ten to twenty steps. All in chapter 5.
# * White {cite}`white2016sampling` on spherical interpolation in the latent spaces of
#   generative models; Heusel et al. {cite}`heusel2017fid` on the Fréchet distance.
# * Lilian Weng's overview {cite}`weng2021diffusion` (its DDIM section) and Yang Song's
#   blog post {cite}`song2021blog` on the score-based view of the same samplers.
