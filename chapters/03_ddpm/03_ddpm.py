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
# # 3. DDPM: denoising diffusion probabilistic models
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scores-to-flows/scores-to-flows/blob/main/chapters/03_ddpm/03_ddpm.ipynb)
#
# | | |
# | --- | --- |
# | **Learning goals** | *Derive* the closed-form marginal $q(x_t \mid x_0)$ and the posterior $q(x_{t-1} \mid x_t, x_0)$ of the forward process. *Derive* the variational bound and the simple $\varepsilon$-prediction loss from it, and *convert* between the $\varepsilon$, $x_0$, $v$ and score parameterisations. *Implement* the forward sample and one ancestral step. *Compare* the linear and cosine schedules, the two reverse variances, and a learned model with the exact one. *Measure* samples (MMD, classifier-feature FID, nearest neighbours) and the bound in bits per dimension. |
# | **Prerequisites** | Chapter 0 (the Gaussian-mixture ground truth), chapter 1 (denoising score matching, Tweedie's formula), chapter 2 (annealed Langevin dynamics, noise-conditional networks); products of Gaussian densities; the Kullback–Leibler divergence. |
# | **Run time** | `smoke` ≈ 30 s · `cpu` ≈ 5 min on two cores (3 of them train the 2D and MNIST models, which chapter 4 then loads from their checkpoints) · `gpu` ≈ 4 min (not yet measured) |

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
    evaluate,
    image_diffusion,
    metrics,
    plotting,
    schedules,
    toy_diffusion,
    toys,
)
from course_lib import ddpm_figures as dfig
from course_lib.exercises import ch03

cfg = course_lib.get_config()
generator = course_lib.seed_everything(cfg.seed)
chapter_start = time.perf_counter()
print(cfg.describe())

# %% [markdown]
# ## Motivation: noise in a thousand small steps, and back
#
# Chapter 2 ended with a sampler that worked: annealed Langevin dynamics started from
# broad noise and walked down a ladder of noise levels $\sigma_1 > \dots > \sigma_L$,
# with a noise-conditional score network telling it where to go at each rung. It also
# left loose ends. The levels, the number of Langevin steps per level and the step sizes
# were chosen by rules of thumb; the loss was a sum of denoising score-matching terms
# with a weight chosen "so that every level counts"; and nothing told us how *good* the
# model is as a probability distribution.
#
# Denoising diffusion probabilistic models (DDPM) {cite}`sohldickstein2015deep,ho2020ddpm`
# tie those ends together with one idea: **write down the noising as a Markov chain,
# and learn its reverse as another Markov chain.** The forward chain $x_0 \to x_1 \to
# \dots \to x_T$ adds a little Gaussian noise at each of $T = 1000$ steps, until nothing
# of the data is left. The reverse chain $x_T \to \dots \to x_0$ is a generative model:
# each of its steps is a Gaussian whose mean a network predicts. Because both chains are
# probability models, the log-likelihood has a variational bound, and that bound tells
# us what to train, which sampler to use (no tuning of Langevin steps: one step per
# level, prescribed by the model), and how many bits per pixel the model spends.
#
# This is where we are going. Here is one MNIST digit and a 2D data set pushed through
# the forward chain at a few steps; the rest of the chapter builds the machinery to run
# it backwards.

# %%
mnist = data.load("mnist", split=cfg.train_split)
digits = mnist.subset(8, generator).to_float()  # (8, 1, 28, 28) in [-1, 1]
linear = schedules.by_name("linear", 1000)
cosine = schedules.by_name("cosine", 1000)

show_steps = [0, 50, 150, 300, 600, 1000]
eps_show = torch.randn(digits[:1].shape, generator=generator)
moons_show = toys.sample("moons", cfg.pick(smoke=300, cpu=1000, gpu=1000), generator)
eps_moons = torch.randn(moons_show.shape, generator=generator)
fig, axes = plt.subplots(2, len(show_steps), figsize=(2.4 * len(show_steps), 5.0))
for j, t in enumerate(show_steps):
    x_t = ddpm.q_sample(digits[:1], t, linear, eps_show)
    plotting.image_grid(x_t, ax=axes[0, j], title=f"t = {t}")
    plotting.scatter(
        ddpm.q_sample(moons_show, t, linear, eps_moons),
        ax=axes[1, j],
        title=f"t = {t}",
        label="x_t",
        s=1.0,
    )
fig.suptitle("the forward process q(x_t | x_0) on a digit and on the moons (linear schedule)")
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: by $t = 300$ the digit is hard to read and the two moons have merged
# into one cloud; from $t = 600$ on, both look like pure Gaussian noise. Keep this picture
# in mind: a large part of the linear schedule's thousand steps is spent on samples that
# are already noise. We will measure that waste and see the fix.
#
# ## From noise levels to a Markov chain
#
# ### The forward process
#
# ```{admonition} Notation: DDPM's letters from here on
# :class: important
# This chapter takes over Ho et al.'s letters {cite}`ho2020ddpm`: $\beta_t$,
# $\alpha_t = 1 - \beta_t$, $\bar\alpha_t$, and $\sigma_t$ for the standard deviation
# of a *reverse* step, $\sigma_t^2 = \beta_t$ or $\tilde\beta_t$ (chapter 4's
# $\sigma_t(\eta)$ is the same quantity, generalised). It is not chapters 1–2's noise
# level $\sigma$: the noise scale of $x_t$ is always written out, $\sqrt{1-\bar\alpha_t}$.
# One code name differs from the text: `schedule.sigma` is that noise scale
# $\sqrt{1-\bar\alpha_t}$ (a name the later chapters rely on), never the reverse $\sigma_t$.
# ```
#
# Pick a sequence of small variances $\beta_1, \dots, \beta_T \in (0, 1)$ and define one
# forward step as
#
# $$ q(x_t \mid x_{t-1}) = \mathcal N\big(x_t;\ \sqrt{1-\beta_t}\, x_{t-1},\ \beta_t I\big),
#    \qquad\text{i.e.}\qquad x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{\beta_t}\, z_t, \quad z_t \sim \mathcal N(0, I), $$
#
# with $\alpha_t = 1 - \beta_t$ (the course's notation throughout: $t = 0$ is the data,
# $t = T$ the noise). Why shrink by $\sqrt{\alpha_t}$ before adding noise? Take one
# coordinate with variance $v$: after the step its variance is $\alpha_t v + \beta_t$,
# which is $1$ whenever $v = 1$. The chain is **variance preserving**: data scaled to
# unit variance stays at unit variance, and the noise replaces the signal instead of
# piling on top of it (chapter 2's NCSN did the latter, which is why its $\sigma_1$ had
# to be as large as the data's diameter; chapter 5 calls the two families VP and VE).
#
# ### The marginal in closed form
#
# Training will need $x_t$ for a random $t$, and running $t$ steps of the chain each time
# would be slow. We do not have to: the composition of Gaussian steps is Gaussian. Let
# $\bar\alpha_t = \prod_{s=1}^t \alpha_s$ and suppose, as an induction hypothesis, that
# $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\, x_0 + \sqrt{1 - \bar\alpha_{t-1}}\, \varepsilon'$ with
# $\varepsilon' \sim \mathcal N(0, I)$ (true for $t - 1 = 1$). One more step gives
#
# $$ x_t = \sqrt{\alpha_t}\sqrt{\bar\alpha_{t-1}}\, x_0 + \underbrace{\sqrt{\alpha_t(1 - \bar\alpha_{t-1})}\,\varepsilon' + \sqrt{1 - \alpha_t}\, z_t}_{\text{two independent Gaussians}} . $$
#
# The two noise terms are independent and centred, so their sum is Gaussian with variance
# $\alpha_t(1-\bar\alpha_{t-1}) + 1 - \alpha_t = 1 - \alpha_t\bar\alpha_{t-1} = 1 - \bar\alpha_t$.
# Hence, for every $t$,
#
# $$ q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big),
#    \qquad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon, \quad \varepsilon\sim\mathcal N(0, I). $$
#
# This is DDPM's eq. 4, and the most used line of the chapter. Two numbers describe
# step $t$ completely: the signal scale $\sqrt{\bar\alpha_t}$ and the noise scale
# $\sqrt{1-\bar\alpha_t}$. Their ratio squared is the **signal-to-noise ratio**
# $\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)$ {cite}`kingma2021vdm`, which falls from
# $+\infty$ at $t = 0$ to almost $0$ at $t = T$.
#
# ### The schedule object
#
# Everything, then, follows from $\bar\alpha_0 = 1 > \bar\alpha_1 > \dots > \bar\alpha_T$.
# The course stores exactly that one array and derives the rest from it:
# $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$, $\alpha_t$, the noise scale
# $\sqrt{1-\bar\alpha_t}$ (code name `sigma`), the posterior variance $\tilde\beta_t$ of the next section, and the SNR. Storing
# $\bar\alpha$ rather than $\beta$ will make chapter 4's respacing to fewer steps a
# one-liner.

# %%
course_lib.show(schedules.DiscreteSchedule.beta.fget)  # a property: show its getter
course_lib.show(schedules.DiscreteSchedule.log_snr.fget)

# %% [markdown]
# Two families are in use. DDPM's **linear** schedule lets $\beta_t$ grow linearly from
# $10^{-4}$ to $0.02$ over $T = 1000$ steps {cite}`ho2020ddpm`. Improved DDPM's **cosine**
# schedule {cite}`nichol2021improved` instead prescribes $\bar\alpha_t$ directly,
#
# $$ \bar\alpha_t = \frac{f(t)}{f(0)}, \qquad f(t) = \cos^2\Big(\frac{t/T + s}{1 + s}\cdot\frac\pi2\Big), \qquad s = 0.008, $$
#
# with each $\beta_t$ clipped at $0.999$ so that the last step, where $f(T) = 0$, stays
# finite. The small offset $s$ keeps $\beta_1$ from being absurdly small: the very first
# noise level should already be of the order of a pixel's quantisation step.

# %%
course_lib.show(schedules.linear_schedule, docstring=False)
course_lib.show(schedules.cosine_schedule, docstring=False)

# %% [markdown]
# ### Exercise 3.1: predict before you run
#
# With the linear schedule and $T = 1000$: at which step $t$ does the signal-to-noise
# ratio first fall below 1, i.e. when does the noise in $x_t$ first carry more variance
# than the signal? Write down your guess **before** running the cells after it. (A rough
# hand calculation works: for small $\beta$, $\log\bar\alpha_t = \sum_s \log(1 - \beta_s)
# \approx -\sum_{s \le t}\beta_s$.)

# %% tags=["exercise"]
my_crossing_step = None  # YOUR PREDICTION: an integer step between 1 and 1000

# %%
ch03.check_predict_snr_crossing(my_crossing_step)

# %% tags=["solution", "hide-input"]
my_crossing_step = 260  # sum of betas = 1e-4 t + 1e-5 t^2 reaches ln 2 near t = 260
ch03.check_predict_snr_crossing(my_crossing_step)

# %% [markdown]
# Now look at both schedules. The left panel is the fraction of the variance of $x_t$
# that is signal, $\bar\alpha_t$; the right one its log-SNR. The function behind the
# crossing step is one line, shown first.

# %%
course_lib.show(dfig.snr_crossing, docstring=False)

# %% expected_output="first t with SNR < 1: linear 260, cosine 497\nsignal scale left at t = T, sqrt(alpha_bar_T): linear 6.35e-03, cosine 4.93e-05\n"
# deterministic facts of the two schedules (compared by the tests)
print(
    f"first t with SNR < 1: linear {dfig.snr_crossing(linear)}, cosine {dfig.snr_crossing(cosine)}"
)
print(
    "signal scale left at t = T, sqrt(alpha_bar_T): "
    f"linear {float(linear.sqrt_alpha_bar[-1]):.2e}, cosine {float(cosine.sqrt_alpha_bar[-1]):.2e}"
)

# %%
dfig.schedule_curves({"linear": linear, "cosine": cosine})
plt.show()
for name, sched in [("linear", linear), ("cosine", cosine)]:
    late = float((sched.log_snr[1:] < -5).double().mean())
    print(f"{name}: share of the {sched.T} steps with log-SNR below -5 (SNR < 0.7%): {late:.0%}")

# %% [markdown]
# What to notice. The linear schedule's SNR crosses 1 a quarter of the way in, at
# $t = 260$; the cosine schedule's at the half-way point. After its crossing, the linear
# schedule keeps going for hundreds of steps at a log-SNR below $-5$, where $x_t$ is noise
# with a faint trace of data: those steps teach the network little and cost a network
# evaluation each when sampling. Nichol & Dhariwal {cite}`nichol2021improved` (§3.2)
# found that skipping up to the last 20% of a linear-schedule reverse process barely
# changed sample quality, and designed the cosine schedule so that $\bar\alpha_t$ (left
# panel) falls *roughly linearly* in the middle of the chain and changes very little
# near $t = 0$ and $t = T$; its log-SNR (right panel) then changes fastest at the two
# ends. The flat start means the first steps destroy less, which matters most for
# small images like $32\times 32$ (and $28\times28$), where a little noise already
# hides fine detail.
#
# Both schedules end near, but not at, pure noise: a linear chain keeps $0.6\%$ of the
# signal's scale at $t = T$. The prior term of the bound below measures what that costs
# (almost nothing).
#
# ## Try it: the forward process, step by step
#
# The widget noises eight MNIST digits and a 2D toy with the same noise at every $t$,
# so that moving the slider follows one path per point. Switch the schedule to compare
# the two at equal $t$. It calls one plain, tested function, `dfig.forward_panel`.

# %%
import ipywidgets as widgets


def redraw(t: int = 150, schedule_name: str = "linear", toy: str = "moons") -> None:
    dfig.forward_panel(
        t, schedule_name, digits=digits, toy=toy, n=cfg.pick(smoke=300, cpu=1000, gpu=1000)
    )
    plt.show()


widgets.interact(
    redraw,
    t=widgets.IntSlider(value=150, min=0, max=1000, step=10, description="step t"),
    schedule_name=widgets.Dropdown(options=list(schedules.FAMILIES), description="schedule"),
    toy=widgets.Dropdown(options=["moons", "gaussians8", "swiss_roll"], description="toy"),
)

# %% [markdown]
# What to notice: at $t = 150$ the linear schedule has already blurred the moons into a
# thick band, while under the cosine schedule the two crescents are still plain; the
# digits, too, stay readable for roughly twice as many steps under the cosine schedule.
# The 2D points also *shrink* towards the origin as $t$ grows, by $\sqrt{\bar\alpha_t}$: variance preserving
# means the signal is scaled down as the noise is scaled up.
#
# ### Exercise 3.2: write `q_sample`
#
# Write the forward sample $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$
# for a batch: `x0` has shape `(B, ...)` (2D points or images), `t` is a long tensor
# `(B,)` of steps, `eps` has the shape of `x0`, and `schedule.alpha_bar` is the
# `(T + 1,)` tensor of $\bar\alpha_t$. The only trap is broadcasting: $\bar\alpha_t$ must
# be shaped `(B, 1, ..., 1)`.


# %% tags=["exercise"]
def q_sample(x0, t, schedule, eps):
    # YOUR CODE HERE: return x_t
    raise NotImplementedError


# %%
ch03.check_q_sample(q_sample)


# %% tags=["solution", "hide-input"]
def q_sample(x0, t, schedule, eps):
    ab = schedule.alpha_bar.to(x0.dtype)[t].reshape(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


ch03.check_q_sample(q_sample)

# %% [markdown]
# The course's version does the same, and checks its inputs (integer steps in range,
# matching shapes) so that a wrong call fails loudly instead of broadcasting silently:

# %%
course_lib.show(ddpm.q_sample)

# %% [markdown]
# The classic mistake is to use $\bar\alpha_t$ and $1-\bar\alpha_t$ as the *scales*: they
# are the *variances*. The result still goes from data to noise, but its variance dips
# in the middle of the chain, and a network trained on it does not match the sampler.
#
# ## The reverse step: the posterior $q(x_{t-1} \mid x_t, x_0)$
#
# To generate, we must run the chain backwards: from $x_t$, draw $x_{t-1}$. The true
# reverse step $q(x_{t-1} \mid x_t)$ depends on the whole data distribution and is
# intractable (chapter 0 computes it only for Gaussian mixtures). But if we also knew
# *which* $x_0$ the chain started from, the reverse step would be a plain Gaussian, and
# that is the key to everything that follows.
#
# By Bayes' rule, and because the forward chain is Markov
# ($q(x_t \mid x_{t-1}, x_0) = q(x_t \mid x_{t-1})$),
#
# $$ q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)}
#    \ \propto\ \exp\Big(-\frac{\|x_t - \sqrt{\alpha_t}\,x_{t-1}\|^2}{2\beta_t} - \frac{\|x_{t-1} - \sqrt{\bar\alpha_{t-1}}\,x_0\|^2}{2(1 - \bar\alpha_{t-1})}\Big), $$
#
# where the denominator does not depend on $x_{t-1}$. The exponent is a quadratic in
# $x_{t-1}$, so the posterior is Gaussian.
#
# ### Exercise 3.3: derive the posterior
#
# Before reading on, find its mean and variance yourself: collect the terms of the
# exponent in $x_{t-1}$; the coefficient of $-\frac12\|x_{t-1}\|^2$ is the precision, and
# the linear coefficient divided by the precision is the mean. Write
# `posterior(x0, xt, alpha_bar_t, alpha_bar_prev)` returning `(mean, variance)` — the
# mean a tensor of the shape of `x0`, the variance a number; `alpha_bar_t` and
# `alpha_bar_prev` are Python floats (use `math.sqrt`) — with
# $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$ and $\alpha_t = 1 - \beta_t$. The check
# asks for numbers at four pairs of levels, near the data and far from it, one step
# and long strides (nothing in the algebra needs the two levels to be neighbours).


# %% tags=["exercise"]
def posterior(x0, xt, alpha_bar_t, alpha_bar_prev):
    # YOUR CODE HERE: return (mean, variance) of q(x_{t-1} | x_t, x0)
    raise NotImplementedError


# %%
ch03.check_posterior(posterior)


# %% tags=["solution", "hide-input"]
def posterior(x0, xt, alpha_bar_t, alpha_bar_prev):
    beta = 1 - alpha_bar_t / alpha_bar_prev
    precision = (1 - beta) / beta + 1 / (1 - alpha_bar_prev)  # alpha_t / beta_t + ...
    linear_xt = math.sqrt(1 - beta) / beta  # coefficient of x_t in the linear term
    linear_x0 = math.sqrt(alpha_bar_prev) / (1 - alpha_bar_prev)
    return (linear_x0 * x0 + linear_xt * xt) / precision, 1 / precision


ch03.check_posterior(posterior)

# %% [markdown]
# Here is the derivation. The precision is
#
# $$ \frac{\alpha_t}{\beta_t} + \frac{1}{1 - \bar\alpha_{t-1}}
#    = \frac{\alpha_t(1 - \bar\alpha_{t-1}) + \beta_t}{\beta_t(1 - \bar\alpha_{t-1})}
#    = \frac{1 - \bar\alpha_t}{\beta_t(1 - \bar\alpha_{t-1})}, $$
#
# using $\alpha_t + \beta_t = 1$ and $\alpha_t\bar\alpha_{t-1} = \bar\alpha_t$. Its inverse
# is the **posterior variance**
#
# $$ \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t . $$
#
# The linear coefficient is $\frac{\sqrt{\alpha_t}}{\beta_t} x_t + \frac{\sqrt{\bar\alpha_{t-1}}}{1 - \bar\alpha_{t-1}} x_0$;
# multiplying by $\tilde\beta_t$ gives the **posterior mean**
#
# $$ \tilde\mu_t(x_t, x_0) = \underbrace{\frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}}_{c_0}\, x_0 + \underbrace{\frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}}_{c_t}\, x_t , $$
#
# DDPM's eqs. 6–7. Read it as a blend: the posterior mean sits between the clean $x_0$
# (rescaled to level $t-1$) and the current $x_t$. At $t = 1$, $\bar\alpha_0 = 1$ gives
# $c_t = 0$, $c_0 = 1$ and $\tilde\beta_1 = 0$: one step from the data, knowing $x_0$
# means knowing $x_{t-1}$ exactly. And $\tilde\beta_t < \beta_t$ always: knowing where the
# chain started makes the step back more certain than the step forward was random.

# %%
course_lib.show(ddpm.posterior_coefficients)
course_lib.show(ddpm.q_posterior)

# %% [markdown]
# A derivation with several lines of algebra deserves an independent check. Here is one
# that uses no posterior formula at all: fix a scalar $x_0$, simulate many pairs
# $(x_{t-1}, x_t)$ by running the forward chain, and regress $x_{t-1}$ on $x_t$. For
# jointly Gaussian variables the conditional mean is exactly linear, so the slope should
# be $c_t$, the intercept $c_0 x_0$ and the residual variance $\tilde\beta_t$. (The test
# suite checks the same formulas against Bayes' rule by Monte Carlo in several
# dimensions, `tests/test_ddpm.py`.)

# %%
course_lib.show(dfig.posterior_by_regression, docstring=False)

# %%
x0_scalar = 0.7
n_pairs = cfg.pick(smoke=20_000, cpu=200_000, gpu=200_000)
print(
    f"{'t':>4} | {'slope':>8} {'c_t':>8} | {'intercept':>9} {'c_0 x0':>8} | {'resid var':>9} {'beta~_t':>9}"
)
for t in [2, 10, 100, 500, 1000]:
    fit = dfig.posterior_by_regression(x0_scalar, t, linear, n=n_pairs, generator=generator)
    c0, ct = ddpm.posterior_coefficients(torch.tensor(t), linear, torch.zeros(1))
    print(
        f"{t:4d} | {fit.slope:8.4f} {float(ct):8.4f} | {fit.intercept:9.4f} "
        f"{float(c0) * x0_scalar:8.4f} | {fit.residual_var:9.2e} {float(linear.beta_tilde[t]):9.2e}"
    )

# %% [markdown]
# What to notice: the simulated and the derived columns agree to Monte Carlo accuracy at
# every step. Near the data ($t = 2$) the posterior leans on $x_0$ (intercept close to
# $x_0$, small slope); at $t = 1000$ it leans almost entirely on $x_t$ (slope near one,
# intercept near zero) and $\tilde\beta_t \approx \beta_t$: far from the data, knowing
# $x_0$ hardly helps.
#
# ## Learning the reverse process: the variational bound
#
# ### The model
#
# The generative model is a reverse Markov chain that starts from the prior
# $p(x_T) = \mathcal N(0, I)$ and takes Gaussian steps
#
# $$ p_\theta(x_{t-1} \mid x_t) = \mathcal N\big(x_{t-1};\ \mu_\theta(x_t, t),\ \sigma_t^2 I\big), $$
#
# with a mean predicted by a network and a variance fixed in advance (DDPM does not learn
# it; more on the choice below). Its marginal $p_\theta(x_0) = \int p(x_T)\prod_t p_\theta(x_{t-1}\mid x_t)\, dx_{1:T}$
# is a $T$-fold integral, as hopeless as any latent-variable model's. What saves us is
# the same trick as for a variational auto-encoder: the forward chain is a ready-made
# "encoder" $q(x_{1:T} \mid x_0)$.
#
# ### Why a Gaussian step, and why a small one
#
# The true reverse step $q(x_{t-1} \mid x_t) = \int q(x_{t-1} \mid x_t, x_0)\, p(x_0 \mid x_t)\, dx_0$
# averages the Gaussian posterior of the previous section over every $x_0$ that could
# have led to $x_t$, so it is not Gaussian in general. For a Gaussian-mixture twin
# (chapter 0) the average is again a mixture, in closed form: component by component,
# $x_s$ and $x_t$ are jointly Gaussian. `ddpm.reverse_kernel` computes it for any
# stride $s < t$. Here it is for `gaussians8` at one point $x_t$ of step $t = 300$,
# going back one step and going back two hundred:

# %%
course_lib.show(ddpm.reverse_kernel, docstring=False)

# %%
g8_twin = toys.twin("gaussians8")
fig, kernel_panels = dfig.reverse_kernel_figure(g8_twin, linear, torch.tensor([0.3, 0.2]), 300)
plt.show()
for panel in kernel_panels:
    std = torch.linalg.eigvalsh(panel.kernel.covariance()).sqrt().tolist()
    print(
        f"q(x_{panel.s} | x_300): std {std[0]:.3f}, {std[1]:.3f} "
        f"(DDPM's Gaussian step over the stride: sqrt(beta) = {math.sqrt(panel.beta_stride):.3f}); "
        f"density at its mean / its peak = {panel.mean_density_ratio:.2f}"
    )

# %% [markdown]
# What to notice. One step back, the kernel is a single round bump whose width is
# $\sqrt{\beta_t}$ (the dashed circle, two standard deviations): over one small step the
# noise added is so small that $p(x_0 \mid x_t)$ barely changes across the kernel's
# width, and the Gaussian posterior dominates. That is why DDPM may model each reverse
# step as a Gaussian {cite}`sohldickstein2015deep`, and why it needs many small ones.
# Two hundred steps back, the kernel has split into the eight modes the point could
# still come from; its mean (the cross) sits between them, where it has almost no mass.
# A Gaussian step with the right mean and any variance puts its mass in the wrong place.
# A sampler that takes few large steps must therefore do something else: chapter 4's
# DDIM makes the step deterministic and lets the network's guess of $x_0$ choose the
# mode; chapter 5 treats the step as a piece of an ODE or SDE to be solved accurately.
#
# ### The bound
#
# For any distribution $q$ over the latents, Jensen's inequality gives
#
# $$ -\log p_\theta(x_0) = -\log \mathbb E_{q(x_{1:T}\mid x_0)}\Big[\frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\Big]
#    \ \le\ \mathbb E_q\Big[-\log \frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\Big] =: L . $$
#
# To make $L$ computable, rewrite the forward chain backwards. By the Bayes step of the
# previous section, $q(x_t \mid x_{t-1}) = q(x_{t-1}\mid x_t, x_0)\,q(x_t\mid x_0)/q(x_{t-1}\mid x_0)$
# for $t \ge 2$, and in the product over $t$ the ratios of marginals telescope:
#
# $$ q(x_{1:T} \mid x_0) = q(x_1\mid x_0)\prod_{t=2}^T q(x_t \mid x_{t-1})
#    = q(x_T \mid x_0) \prod_{t=2}^T q(x_{t-1} \mid x_t, x_0). $$
#
# Put this and $p_\theta(x_{0:T}) = p(x_T)\,p_\theta(x_0\mid x_1)\prod_{t\ge2} p_\theta(x_{t-1}\mid x_t)$
# into $L$ and group the factors that share a variable:
#
# $$ L = \underbrace{\mathrm{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T}
#    + \sum_{t=2}^T \underbrace{\mathbb E_{q(x_t\mid x_0)}\,\mathrm{KL}\big(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}}
#    \ \underbrace{-\ \mathbb E_{q(x_1\mid x_0)}\log p_\theta(x_0 \mid x_1)}_{L_0} . $$
#
# This is DDPM's eq. 5. Three kinds of terms:
#
# * $L_T$, the **prior term**, compares where the forward chain ends with
#   $\mathcal N(0, I)$. It has no parameters; with $\bar\alpha_T \approx 4\times10^{-5}$
#   it is tiny, and a closed form: per dimension
#   $\frac12(\bar\alpha_T x_0^2 - \bar\alpha_T - \log(1 - \bar\alpha_T))$.
# * $L_{t-1}$, the **denoising terms**, compare the learned reverse step with the
#   tractable posterior of the previous section. Both are Gaussians.
# * $L_0$, the **decoder**, scores the last step. For images with 256 grey levels, DDPM
#   makes it a *discrete* distribution: the probability that the Gaussian
#   $\mathcal N(\mu_\theta(x_1, 1), \sigma_1^2)$ falls into the pixel's bin of width
#   $2/255$ (eq. 13), so that the bound is on a probability and comparable with other
#   models of 8-bit images.
#
# ### Exercise 3.4: one term of the bound
#
# Take the model step $p_\theta(x_{t-1} \mid x_t) = \mathcal N(\tilde\mu_t(x_t, \hat x_0), \sigma_t^2 I)$,
# the posterior formula with a guess $\hat x_0$ in place of $x_0$. Derive
# $L_{t-1} = \mathrm{KL}\big(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)$ for one
# sample in $D$ dimensions (start from the definition, $\mathbb E_q[\log q - \log p_\theta]$,
# with two isotropic Gaussians), and write
# `kl_term(x0, x0_hat, xt, alpha_bar_t, alpha_bar_prev, sigma2)`, in nats. Your
# `posterior` of exercise 3.3 gives both means. The check asks for the number with
# $\sigma_t^2 = \tilde\beta_t$ and with $\sigma_t^2 = \beta_t$ (the argument `sigma2`).


# %% tags=["exercise"]
def kl_term(x0, x0_hat, xt, alpha_bar_t, alpha_bar_prev, sigma2):
    # YOUR CODE HERE: a float, KL(q(x_{t-1} | x_t, x0) || N(mu_tilde(x_t, x0_hat), sigma2 I))
    raise NotImplementedError


# %%
ch03.check_kl_term(kl_term)


# %% tags=["solution", "hide-input"]
def kl_term(x0, x0_hat, xt, alpha_bar_t, alpha_bar_prev, sigma2):
    mean, var = posterior(x0, xt, alpha_bar_t, alpha_bar_prev)
    mean_hat, _ = posterior(x0_hat, xt, alpha_bar_t, alpha_bar_prev)
    ratio = var / sigma2
    d = x0.numel()
    return float(
        ((mean - mean_hat) ** 2).sum() / (2 * sigma2) + d / 2 * (ratio - 1 - math.log(ratio))
    )


ch03.check_kl_term(kl_term)

# %% [markdown]
# ### Each denoising term is a squared error
#
# For two Gaussians with the same isotropic variance, the KL divergence is half the
# squared distance of the means over the variance; with variances $\tilde\beta_t$ and
# $\sigma_t^2$ in $D$ dimensions, in general (the answer to exercise 3.4),
#
# $$ \mathrm{KL}\big(\mathcal N(\tilde\mu, \tilde\beta_t I)\,\|\,\mathcal N(\mu_\theta, \sigma_t^2 I)\big)
#    = \frac{\|\tilde\mu - \mu_\theta\|^2}{2\sigma_t^2} + \frac D2\Big(\frac{\tilde\beta_t}{\sigma_t^2} - 1 - \log\frac{\tilde\beta_t}{\sigma_t^2}\Big). $$
#
# The second part is a constant. So the whole game is to make $\mu_\theta(x_t, t)$ close
# to $\tilde\mu_t(x_t, x_0)$, for $x_0$ and $x_t$ drawn together. The natural way to do
# that is to make $\mu_\theta$ *the same formula*, with a network's guess $\hat x_0$ in
# place of the unknown $x_0$: $\mu_\theta(x_t, t) = \tilde\mu_t(x_t, \hat x_0)$. Then
# $\tilde\mu - \mu_\theta = c_0\,(x_0 - \hat x_0)$, and the term is a weighted squared
# error of **denoising**.
#
# DDPM takes one more step. Since $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}$,
# predicting $x_0$ is equivalent to predicting the noise $\varepsilon$ that was added:
# $x_0 - \hat x_0 = \frac{\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t}}(\hat\varepsilon - \varepsilon)$.
# Substitute, simplify $c_0^2 (1-\bar\alpha_t)/\bar\alpha_t = \beta_t^2/(\alpha_t(1-\bar\alpha_t))$,
# and
#
# $$ L_{t-1} = \mathbb E_{x_0, \varepsilon}\Big[\frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1 - \bar\alpha_t)}\,
#    \big\|\varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)\big\|^2\Big] + \text{const}, $$
#
# DDPM's eq. 12. The mean of the reverse step in terms of $\varepsilon_\theta$ is (eq. 11)
#
# $$ \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big), $$
#
# which you can check by putting $\hat x_0$ into $\tilde\mu_t$ and using the identities
# above.
#
# ### The simple loss (Algorithm 1)
#
# Ho et al.'s empirical finding, and the reason DDPM took off, is that the weight in
# eq. 12 is best **dropped** {cite}`ho2020ddpm`. Training minimises
#
# $$ L_\text{simple}(\theta) = \mathbb E_{t\sim\mathcal U\{1..T\},\ x_0,\ \varepsilon}\
#    \big\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t)\big\|^2 \qquad\text{(eq. 14)}, $$
#
# one random $t$ per example. How much does dropping the weight
# $\lambda_t = \beta_t^2/(2\sigma_t^2\alpha_t(1-\bar\alpha_t))$ change? Here it is over $t$:

# %%
course_lib.show(ddpm.loss_weight, docstring=False)
dfig.loss_weight_figure(linear)
plt.show()
lam = ddpm.loss_weight(linear)
t_min = int(lam[1:].argmin()) + 1
print(
    f"sigma_t^2 = beta_t: lambda_1 = {float(lam[1]):.3f}, lambda_5 = {float(lam[5]):.3f} "
    f"(1/(2t) = 0.100), minimum {float(lam[t_min]):.4f} at t = {t_min}, "
    f"lambda_T = {float(lam[-1]):.4f}"
)
print(
    f"range: max / min = {float(lam[1:].max() / lam[1:].min()):.0f}x, "
    f"first / last = {float(lam[1] / lam[-1]):.0f}x"
)

# %% [markdown]
# What to notice. With $\sigma_t^2 = \beta_t$ the weight is $0.5$ at $t = 1$ and follows
# $1/(2t)$ only for the first handful of steps; it then falls much more slowly, to
# about $0.005$ near $t = 350$, and climbs back to $0.01$ at $t = T$. Its whole range is
# about a hundredfold (fiftyfold from the first step to the last), not the thousandfold
# that $1/(2t)$ would suggest. With $\sigma_t^2 = \tilde\beta_t$ it is larger still near
# the data and infinite at $t = 1$ (where $\tilde\beta_1 = 0$). Either way the true bound
# leans on the nearly clean steps, where the noise is imperceptible and the task easy.
# The simple loss re-weights towards larger $t$, where the network has to decide what
# the digit *is*. On CIFAR-10, Ho et al.'s Table 1 reports an FID of 3.17 for the simple
# loss against 13.51 for the true bound, and a bound of 3.75 against 3.70 bits/dim:
# better samples, slightly worse likelihood. It is one of several places in this
# course where the best likelihood and the best samples are not the same model.
#
# **Units.** The norm in eq. 14 sums over the $D$ dimensions; `ddpm.loss` *averages*
# over them (one learning rate then serves 2D points and 784-pixel images), while
# chapters 1–2's denoising score-matching losses, $\frac12\|\sigma s_\theta + \varepsilon\|^2$,
# sum. Loss values are therefore not comparable across chapters as printed: with
# $\varepsilon_\theta = -\sigma s_\theta$, the same noise-prediction error reads $D/2$ times
# larger in chapter 2's units than here ($392\times$ for MNIST, $1\times$ for the 2D toys),
# on top of the different noise levels the two chapters draw.

# %%
course_lib.show(ddpm.loss)

# %% [markdown]
# Note the time input: every network in the course is called as `model(x, t / T)` with a
# float time in $(0, 1]$, through one helper, so the same MLP or U-Net serves DDPM with
# 1000 steps, DDIM with 50 (chapter 4) and continuous time (chapter 5).
#
# ### The connection to denoising score matching
#
# Chapter 1's denoising score matching trains $s_\theta(x_t) \approx \nabla_{x_t}\log q(x_t\mid x_0)$
# averaged over $x_0$, whose minimiser is the score of the noised data, $\nabla\log p_t$.
# Here the noising kernel is $\mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$, so
#
# $$ \nabla_{x_t}\log q(x_t\mid x_0) = -\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{1 - \bar\alpha_t} = -\frac{\varepsilon}{\sqrt{1-\bar\alpha_t}} . $$
#
# The $\varepsilon$ loss is therefore denoising score matching with the weight
# $1 - \bar\alpha_t$ on each level (the noise variance, exactly chapter 2's $\lambda(\sigma) = \sigma^2$),
# and a trained noise predictor *is* a score model:
#
# $$ s_\theta(x_t, t) = -\frac{\varepsilon_\theta(x_t, t)}{\sqrt{1 - \bar\alpha_t}}, \qquad
#    \mathbb E[x_0 \mid x_t] = \frac{x_t + (1 - \bar\alpha_t)\,\nabla\log p_t(x_t)}{\sqrt{\bar\alpha_t}} \quad\text{(Tweedie)}. $$
#
# DDPM and NCSN are the same idea under two names {cite}`song2021sde`; chapter 5 makes
# this exact in continuous time.
#
# ### Parameterisations: $\varepsilon$, $x_0$, $v$ and the score
#
# A network's output is only a *parameterisation*; what it stands for can be converted.
# Besides $\varepsilon$ and $x_0$, Salimans & Ho {cite}`salimans2022progressive` use the
# **velocity** $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$. Write
# $a = \sqrt{\bar\alpha_t}$, $s = \sqrt{1-\bar\alpha_t}$ with $a^2 + s^2 = 1$: then
# $(x_t, v)$ is $(x_0, \varepsilon)$ rotated by the angle $\phi$ with $a = \cos\phi$, and
#
# $$ x_0 = a\,x_t - s\,v, \qquad \varepsilon = s\,x_t + a\,v . $$
#
# Why bother? An $\varepsilon$-predictor's $\hat x_0 = (x_t - s\hat\varepsilon)/a$ divides by
# $a$, which is $0.006$ at $t = T$: a small error in $\hat\varepsilon$ becomes a huge error in
# $\hat x_0$ at high noise. An $x_0$-predictor has the opposite problem near the data.
# $v$ stays well scaled at both ends (its variance is $1$ for unit-variance data at every
# $t$), which is why it is popular for few-step samplers and distillation. The course's
# conversions, each a named and round-trip-tested function:

# %%
for fn in (ddpm.x0_from_eps, ddpm.eps_from_x0, ddpm.v_from, ddpm.x0_from_v, ddpm.score_from_eps):
    course_lib.show(fn, docstring=False)

# %%
x0_demo = toys.sample("moons", 5, generator).double()
eps_demo = torch.randn(x0_demo.shape, generator=generator, dtype=torch.float64)
t_demo = torch.tensor([1, 10, 100, 500, 1000])
xt_demo = ddpm.q_sample(x0_demo, t_demo, linear, eps_demo)
v_demo = ddpm.v_from(x0_demo, eps_demo, t_demo, linear)
errors = {
    "x0 from eps": ddpm.x0_from_eps(xt_demo, eps_demo, t_demo, linear) - x0_demo,
    "x0 from v": ddpm.x0_from_v(xt_demo, v_demo, t_demo, linear) - x0_demo,
    "eps from v": ddpm.eps_from_v(xt_demo, v_demo, t_demo, linear) - eps_demo,
    "eps from score": ddpm.eps_from_score(
        ddpm.score_from_eps(eps_demo, t_demo, linear), t_demo, linear
    )
    - eps_demo,
}
for name, err in errors.items():
    print(f"round trip {name:>15}: max error {float(err.abs().max()):.1e}")
print("std of v over 20,000 moons points at t = 1, 500, 1000:", end=" ")
x_many = toys.sample("moons", 20_000, generator).double()
e_many = torch.randn(x_many.shape, generator=generator, dtype=torch.float64)
print([round(float(ddpm.v_from(x_many, e_many, t, linear).std()), 3) for t in (1, 500, 1000)])

# %% [markdown]
# What to notice: every conversion round-trips to float64 precision, from $t = 1$ to
# $t = 1000$, and $v$ keeps a scale of about one at every step: its variance is
# $\bar\alpha_t + (1 - \bar\alpha_t)\,\mathrm{Var}(x_0)$, exactly one for unit-variance data
# (the moons' coordinates have a variance a little below one). The rest of the chapter uses $\varepsilon$-prediction, as DDPM did.
#
# ## Ancestral sampling (Algorithm 2)
#
# Sampling runs the learned chain: draw $x_T \sim \mathcal N(0, I)$, then for
# $t = T, \dots, 1$
#
# $$ x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big) + \sigma_t z, \qquad z\sim\mathcal N(0, I)\ \text{for } t > 1,\ z = 0 \text{ for } t = 1. $$
#
# It is called *ancestral* because each $x_{t-1}$ is drawn from its parent in the
# graphical model. Compare it with chapter 2: annealed Langevin dynamics took several
# tuned steps per noise level; here there is exactly **one step per level**, and its
# size and noise are dictated by the model. Indeed, with $\sigma_t^2 = \beta_t$ and the
# score $s_\theta = -\varepsilon_\theta/\sqrt{1-\bar\alpha_t}$, the step reads
# $x_{t-1} = (x_t + \beta_t s_\theta)/\sqrt{\alpha_t} + \sqrt{\beta_t}\,z$: a step along the
# score plus fresh noise, like chapter 2's. It is not a Langevin step, though: ULA with
# the same drift $\beta_t s$ would add noise $\sqrt{2\beta_t}\,z$. The DDPM step does not
# sample $p_t$ at equilibrium; it *moves* $p_t$ to $p_{t-1}$, one step of the reverse-time
# process of chapter 5.
#
# ### Which variance?
#
# The model's variance $\sigma_t^2$ is not learned. Ho et al. tried two values and found
# them equally good for samples:
#
# * $\sigma_t^2 = \beta_t$, the forward step's variance. It is the exact reverse variance
#   when the data is itself $\mathcal N(0, I)$: the upper end of what is reasonable.
# * $\sigma_t^2 = \tilde\beta_t$, the posterior variance, exact when the data is a single
#   point (then $x_0$ is known and $q(x_{t-1}\mid x_t) = q(x_{t-1}\mid x_t, x_0)$): the lower
#   end.
#
# The true reverse variance is $\tilde\beta_t + c_0^2\,\mathrm{Var}(x_0\mid x_t)$ per
# dimension. It lies between the two *on average* over $x_t$ and over coordinates
# whenever the data's mean variance per coordinate is at most 1,
# $\mathrm{tr}\,\mathrm{Cov}(x_0) \le D$ (true of the course's data: about 0.27 for MNIST
# in $[-1, 1]$, about 1 for the toys), because the posterior variance is at most the
# error of the best *linear* estimate. Pointwise it is always at least $\tilde\beta_t$,
# but it can exceed $\beta_t$: exactly where $\mathrm{Var}(x_0 \mid x_t) > 1 - \bar\alpha_t$,
# for instance at a point $x_t$ between two well-separated modes, where the posterior
# over $x_0$ is split between them. The two choices differ only near the data ($\tilde\beta_t/\beta_t = 0$ at
# $t = 1$, and is within a few percent of 1 from $t \approx 50$ on), which is why they barely matter for
# samples with $T = 1000$ steps and matter a great deal for the likelihood and for short
# chains (improved DDPM learns an interpolation between them {cite}`nichol2021improved`).

# %%
course_lib.show(ddpm.ancestral_sample)

# %% [markdown]
# Notice how the code builds the step: it predicts $\hat x_0$ (optionally clipped to the
# pixel range $[-1, 1]$, a common stabiliser for images) and takes the posterior mean
# $\tilde\mu_t(x_t, \hat x_0)$. Without clipping this is exactly eq. 11.
#
# ### Exercise 3.5: one ancestral step
#
# Write the step from $x_t$ to $x_{t-1}$ with $\sigma_t^2 = \beta_t$, given the predicted
# noise `eps_hat`, an integer step `t`, the schedule (use `schedule.beta[t]`,
# `schedule.alpha[t]`, `schedule.alpha_bar[t]`) and standard normal noise `z`. Do not
# forget the last step.


# %% tags=["exercise"]
def ancestral_step(xt, eps_hat, t, schedule, z):
    # YOUR CODE HERE: return x_{t-1}
    raise NotImplementedError


# %%
ch03.check_ancestral_step(ancestral_step)


# %% tags=["solution", "hide-input"]
def ancestral_step(xt, eps_hat, t, schedule, z):
    beta, alpha = float(schedule.beta[t]), float(schedule.alpha[t])
    alpha_bar = float(schedule.alpha_bar[t])
    mean = (xt - beta / math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha)
    return mean + math.sqrt(beta) * z if t > 1 else mean


ch03.check_ancestral_step(ancestral_step)

# %% [markdown]
# Two mistakes are common. Dividing by $1 - \bar\alpha_t$ instead of its square root
# over-corrects by a factor that reaches $100$ at $t = 1$, and the samples explode.
# Adding noise at the last step leaves a layer of $\sqrt{\beta_1} = 1\%$ noise in every
# image; the check above catches both.
#
# ## DDPM on 2D data
#
# ### Training (Algorithm 1)
#
# The course trains one DDPM per toy, once: an MLP $\varepsilon_\theta(x_t, t/T)$ with
# the linear schedule and $T = 1000$, trained with `ddpm.loss` through the course's one
# training loop, with an exponential moving average (EMA) of the weights. The model is
# checkpointed under `data/checkpoints/` with a hash of its recipe, so chapter 4, which
# samples the *same* networks with DDIM, loads them in a second.

# %%
course_lib.show(toy_diffusion.train_toy_diffusion, docstring=False)

# %%
toy_names = ["moons", "gaussians8"]
toy_models = {}
for name in toy_names:
    td = toy_diffusion.train_toy_diffusion(cfg, name)
    toy_models[name] = td
    how = "loaded from its checkpoint" if td.resumed_at >= td.recipe.steps else "trained"
    print(
        f"{name}: {td.recipe.steps} steps at batch {td.recipe.batch_size}, "
        f"MLP width {td.recipe.hidden}; {how} in {td.result.seconds:.1f} s"
    )

fig, axes = plotting.figure_row(len(toy_names), size=4.0)
for ax, name in zip(axes, toy_names, strict=True):
    plotting.loss_curve(
        toy_models[name].result.losses, ax=ax, title=f"simple loss (eq. 14), {name}"
    )
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: the loss does not go to zero, and it should not. Even the perfect
# predictor $\mathbb E[\varepsilon \mid x_t]$ cannot guess the noise at large $t$, where
# $x_t$ is almost all noise but the noise could have come from any data point; the
# minimum of the simple loss is the average posterior variance of $\varepsilon$, which
# for data in 2D sits at a fair fraction of one. The curve is noisy because every step
# draws fresh $t$ and $\varepsilon$.
#
# ### Sampling, against the exact model
#
# We sample each model with both variances, and beside it the **exact** model: the
# Bayes-optimal predictor $\mathbb E[\varepsilon\mid x_t]$ of the toy's Gaussian-mixture
# twin (chapter 0), which `ddpm.exact_model` provides in closed form. Run through the
# same sampler, it shows what a perfect network would give, and so separates the error
# of the *network* from the error of the *sampler*. Each learned/exact pair starts from
# the same $x_T$ and uses the same noise (two generators with one seed). Quality is the
# MMD to a fresh sample of the toy, beside the floor, the MMD between two samples of the
# toy itself.
#
# A practical note: the `smoke` profile, which only checks that every line runs, samples
# on a strided sub-grid of 100 of the 1000 steps (`schedules.respace`; chapter 4 explains
# why a network trained on all steps can do that). The `cpu` and `gpu` profiles take all
# 1000 steps, as DDPM does.

# %%
course_lib.show(ddpm.exact_model, docstring=False)

# %%
n_eval = cfg.pick(smoke=300, cpu=600, gpu=4000)
n_steps = cfg.pick(smoke=100, cpu=1000, gpu=1000)  # sampling steps (1000 = every step)
toy_quality = {}
toy_runs = {}
fig, axes = plt.subplots(len(toy_names), 4, figsize=(16, 4.0 * len(toy_names)), squeeze=False)
for i, name in enumerate(toy_names):
    td = toy_models[name]
    exact = ddpm.exact_model(toys.twin(name), td.schedule)
    x_T = torch.randn(n_eval, 2, generator=generator)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    reference = toys.sample(name, n_eval, generator)
    floor = metrics.floor(lambda n, name=name: toys.sample(name, n, generator), n_eval)["mmd"]
    q = {"floor": floor}
    for variance in ("beta", "beta_tilde"):
        for who, model in (("learned", td.model), ("exact", exact)):
            run = ddpm.ancestral_sample(
                model,
                x_T,
                schedules.respace(td.schedule, ddim.timesteps(td.schedule.T, n_steps)),
                variance=variance,
                generator=torch.Generator().manual_seed(seed),
                keep=max(1, n_steps // 50) if who == "learned" else None,
            )
            toy_runs[(name, who, variance)] = run
            q[(who, variance)] = metrics.mmd(run.x, reference)
    toy_quality[name] = q
    panels = [
        (("learned", "beta"), "learned, σ² = β", "model"),
        (("learned", "beta_tilde"), "learned, σ² = β̃", "model"),
        (("exact", "beta_tilde"), "exact model, σ² = β̃", "truth"),
    ]
    for j, ((who, variance), title, kind) in enumerate(panels):
        plotting.scatter(
            toy_runs[(name, who, variance)].x, data=reference, ax=axes[i, j], kind=kind,
            label="samples", title=f"{name}: {title}\nMMD {q[(who, variance)]:.5f}",
        )  # fmt: skip
    plotting.scatter(
        reference, ax=axes[i, 3], kind="init", label="fresh target sample",
        title=f"{name}: target\nfloor {floor:.5f}",
    )  # fmt: skip
fig.tight_layout()
plt.show()

print(
    f"{'toy':>11} | {'variance':>10} | {'MMD learned':>11} | {'MMD exact':>9} | {'floor':>8} | learned / exact"
)
for name, q in toy_quality.items():
    for variance in ("beta", "beta_tilde"):
        learned_mmd, exact_mmd = q[("learned", variance)], q[("exact", variance)]
        print(
            f"{name:>11} | {variance:>10} | {learned_mmd:11.5f} | {exact_mmd:9.5f} | "
            f"{q['floor']:8.5f} | {learned_mmd / exact_mmd:.2f}x"
        )

# %% [markdown]
# What to notice. With the exact model, ancestral sampling lands at the floor for both
# variances: a thousand small steps leave no visible sampler error on these toys. The
# learned models come close; their residual gap is the network's error, which shows as a
# little fuzz around the thin moons or the eight tight modes. On `gaussians8` look at
# the mode weights: all eight clusters are equally full, the weights problem of
# chapter 2 does not arise, because the chain starts where all modes still overlap. The
# two variances give almost the same samples: they differ only in the last few dozen
# steps, where $\beta_t$ and $\tilde\beta_t$ part ways. (MMD on a thousand points is
# itself noisy; ratios move by tens of percent from seed to seed, which is why each
# pair shares its random numbers.)
#
# ### Watching the reverse process
#
# The animation replays the learned moons sampler ($\sigma_t^2 = \beta_t$), one frame
# every twenty steps: the blob of noise contracts, splits into two arcs around
# $t \approx 300$ and sharpens in the last hundred steps. Compare it with the widget's
# forward process, played backwards.

# %%
anim_run = toy_runs[("moons", "learned", "beta")]
print(f"{anim_run.trajectory.shape[0]} recorded states of {anim_run.nfe} steps")
display(
    HTML(
        plotting.animate(
            anim_run.trajectory,
            data=toy_models["moons"].x0[:2000],
            times=anim_run.times.tolist(),
            title="DDPM on moons,",
            max_frames=cfg.pick(smoke=8, cpu=60, gpu=60),
        )
    )
)

# %% [markdown]
# ## DDPM on MNIST
#
# ### Training
#
# Images need a convolutional network: the course's U-Net, with the time $t/T$ entering
# every residual block through a sinusoidal embedding, as in DDPM. The function below
# trains it with the same `ddpm.loss`, keeps EMA weights, and **checkpoints** every 250
# steps. Two consequences: on Colab, a session that dies mid-training resumes where it
# stopped when you run the cell again; and chapter 4, which calls the same function with
# the same recipe, loads this chapter's model instead of training its own. The recipe
# (data, network, schedule, budget, seed) is hashed into the checkpoint's name, so
# changing anything trains a new model rather than loading a stale one.

# %%
course_lib.show(image_diffusion.train_image_diffusion)

# %%
mnist_model = image_diffusion.train_image_diffusion(cfg, "mnist")
r = mnist_model.recipe
n_params = sum(p.numel() for p in mnist_model.model.parameters())
print(
    f"U-Net with {n_params:,} parameters (base {r.base_channels} channels, mults "
    f"{r.channel_mults}); {r.steps} steps at batch {r.batch_size} on "
    f"{mnist_model.images.shape[0]:,} images; "
    + (
        f"trained now in {mnist_model.result.seconds:.0f} s"
        if mnist_model.trained_now
        else "loaded from its checkpoint"
    )
)
plotting.loss_curve(mnist_model.result.losses, title="simple loss (eq. 14), MNIST")
plt.show()

# %% [markdown]
# What to notice: the loss falls fast in the first few hundred steps and then slowly;
# it is far lower than on the toys, because in 784 dimensions most of the noise can be
# told apart from a digit (strokes are smooth, the noise is not), whereas in 2D the noise
# and the data live in the same place.
#
# ### Samples, and the reverse process
#
# Ancestral sampling with 1000 steps, $\sigma_t^2 = \beta_t$, and $\hat x_0$ clipped to
# $[-1, 1]$ at every step. We time it: one network evaluation per step and per image,
# so a thousand-step sampler is slow, and chapter 4 is about making it fast. The run
# also records the state every 125 steps for the strip below.

# %%
n_samples = cfg.pick(smoke=4, cpu=25, gpu=400)
device_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 3)
x_T = torch.randn(n_samples, 1, 28, 28, generator=device_gen, device=cfg.device)
sample_start = time.perf_counter()
mnist_run = ddpm.ancestral_sample(
    mnist_model.model,
    x_T,
    schedules.respace(mnist_model.schedule, ddim.timesteps(mnist_model.schedule.T, n_steps)),
    variance="beta",
    generator=device_gen,
    keep=max(1, n_steps // 8),  # nine states for the strip below
    clip_x0=1.0,
)
samples = mnist_run.x.float().cpu()  # .cpu() waits for the device to finish
sample_seconds = time.perf_counter() - sample_start
throughput = n_samples / sample_seconds
print(
    f"{n_samples} images x {mnist_run.nfe} steps in {sample_seconds:.1f} s: "
    f"{throughput:.2f} images/s ({n_samples * mnist_run.nfe / sample_seconds:.0f} network "
    f"evaluations per second on {cfg.device.type})"
)

fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
plotting.image_grid(
    samples[:64], ax=axes[0], title=f"DDPM samples ({mnist_run.nfe} ancestral steps)"
)
plotting.image_grid(
    mnist_model.images[: min(64, n_samples)].cpu(), ax=axes[1], title="training digits"
)
fig.tight_layout()
plt.show()

# %%
course_lib.show(dfig.predicted_x0_along, docstring=False)
x0_hats = dfig.predicted_x0_along(
    mnist_model.model, mnist_run, mnist_model.schedule, clip_x0=1.0, device=cfg.device
)
dfig.reverse_strip(mnist_run.trajectory, x0_hats, mnist_run.times, n=4)
plt.show()

# %% [markdown]
# What to notice. In the strip, the top row of each pair is the state $x_t$, the bottom
# row the network's guess $\hat x_0(x_t)$. At $t = 1000$ the guess is clipped noise:
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ divides the
# network's small error by $0.006$, the weakness of $\varepsilon$-prediction at high noise
# met above. Around $t \approx 600$ a blurry average digit appears, by $t \approx 400$ the
# guess has committed to a class and a shape, although $x_t$ still looks like noise to
# us, and the last few hundred steps only refine strokes. Most of what the sample *is* gets decided in the middle of the chain, where
# the log-SNR is near zero; that is where the cosine schedule spends more of its steps.
#
# With the `cpu` profile's budget (1000 steps at batch 32: 32,000 digits seen, about
# half an epoch, a few minutes on two cores), expect many, but not all, samples to read as digits; some are
# broken strokes or hybrids of two classes. That is the network's budget, not the
# method: the `gpu` profile shows a bigger U-Net 64 times as many images (8,000 steps at
# batch 256, about 34 epochs) with the same code.
#
# ### Sample quality: classifier-feature FID and nearest neighbours
#
# How good are they, in numbers? The standard measure for images is the Fréchet
# Inception distance (FID) {cite}`heusel2017fid`: fit a Gaussian to the features of real
# and of generated images and compute the *squared* 2-Wasserstein distance between the two,
# $\|\mu_1 - \mu_2\|^2 + \mathrm{tr}\big(C_1 + C_2 - 2(C_1^{1/2} C_2 C_1^{1/2})^{1/2}\big)$.
# The Inception network's weights must be downloaded, and MNIST has no standard FID
# anyway, so the course applies the same formula to the features of a small MNIST
# classifier that it trains (and caches) itself. **This classifier-feature FID is not
# comparable with any paper's FID**: it is a yardstick for comparing runs of this course.
#
# An FID estimated from a few dozen images is biased upwards (the covariance of 128
# features from 25 images is poor), so the number only means something beside
# references computed the same way: the FID of the same number of *real* images (its
# floor), and of pure noise (the starting point $x_T$, clipped).

# %%
evaluator = evaluate.course_evaluator(cfg, "mnist")
real_split = "test"  # held out when the model trains on "train" (the default online)
real = data.load("mnist", split=real_split).subset(n_samples, generator).to_float()
noise = x_T.float().cpu().clamp(-1, 1)
fid_samples, fid_real, fid_noise = (evaluator.fid(x) for x in (samples, real, noise))
print(
    f"evaluator: held-out accuracy {evaluator.accuracy:.3f}; reference = the '{cfg.train_split}' split"
)
note = (
    "held out" if cfg.train_split == "train" else "NOT held out: this run trains on the test split"
)
print(f"classifier-feature FID with {n_samples} images each:")
print(f"  DDPM samples                 {fid_samples:8.2f}")
print(f"  real test images ({note}) {fid_real:8.2f}")
print(f"  noise x_T, clipped           {fid_noise:8.2f}")

# %% [markdown]
# Does the model copy its training set? A model that memorised its data would have
# excellent FID and be useless. The nearest training image of each sample, in pixel
# distance, answers this directly:

# %%
fig, nn_dist = dfig.nearest_figure(samples, mnist_model.images, n=min(10, n_samples))
plt.show()
# reference: how far is a training digit from its nearest *other* training digit?
others_nn = evaluate.nearest_training_images(
    mnist_model.images[:n_samples].cpu(), mnist_model.images[n_samples:].cpu()
)[1]
print(f"median distance to the nearest training image: samples {float(nn_dist.median()):.2f}")
print(
    f"for comparison, training digits to their nearest other training digit: "
    f"{float(others_nn.median()):.2f} (a copy would be at 0)"
)

# %% [markdown]
# What to notice. The samples' FID sits between the real images' floor and the noise
# baseline: much closer to the floor than to noise, but clearly above it. The nearest
# training images resemble the samples in class and style, but the distances are those
# of two different handwritten digits, comparable with the distance between a training
# digit and its nearest *other* training digit, not those of copies (a copy would be at
# distance near zero). A small network that has seen some 32,000 digits (1000 steps at
# batch 32: about half an epoch of MNIST's 60,000 training images) generalises rather
# than memorises; memorisation becomes a real concern for
# large models trained long on small data sets.
#
# ## The bound in bits per dimension
#
# The variational bound makes DDPM a likelihood model, and lets us report the number
# likelihood models are compared by: **bits per dimension**, $L/(D\ln 2)$, the average
# number of bits a code built from the model would spend per pixel. The course
# evaluates every term of eq. 5 for a batch of images: $L_T$ in closed form, each of the
# $T - 1$ denoising terms with one draw of $x_t$ (an unbiased estimate of their sum), and
# the decoder $L_0$.

# %%
course_lib.show(ddpm.elbo_terms, docstring=False)
course_lib.show(ddpm.nll_bound_bits_per_dim)

# %% [markdown]
# ### First on 2D, where the truth is known
#
# For `gaussians8` the data *is* a Gaussian mixture, so the true $-\log_2 p(x_0)/D$ is
# known exactly, and any model's bound must lie above it on average (the bound is above
# the model's own $-\log p_\theta$, which in turn averages above the data's entropy).
# We evaluate the bound of the learned model with both variances and of the exact model,
# with the continuous decoder (2D points have no pixel grid).

# %%
g8 = toy_models["gaussians8"]
g8_twin = toys.twin("gaussians8")
x_bound = toys.sample("gaussians8", cfg.pick(smoke=100, cpu=500, gpu=2000), generator)
true_bits = float(-g8_twin.log_prob(x_bound).mean() / (2 * math.log(2)))
print(f"true -log2 p(x0) / D on these points: {true_bits:.3f} bits/dim")
print(
    f"{'model':>8} | {'variance':>10} | {'L_T':>9} | {'sum L_t-1':>9} | {'L_0':>7} | total ± s.e."
)
toy_bounds = {}
for who, model in (("learned", g8.model), ("exact", ddpm.exact_model(g8_twin, g8.schedule))):
    for variance in ("beta", "beta_tilde"):
        terms = ddpm.elbo_terms(model, x_bound, g8.schedule, variance=variance, generator=generator)
        b = dfig.bound_breakdown(terms)
        toy_bounds[(who, variance)] = b["total"][0]
        print(
            f"{who:>8} | {variance:>10} | {b['L_T'][0]:9.1e} | {b['sum L_t-1'][0]:9.3f} | "
            f"{b['L_0'][0]:7.3f} | {b['total'][0]:.3f} ± {b['total'][1]:.3f}"
        )

# %% [markdown]
# What to notice. With $\sigma_t^2 = \beta_t$ the exact model's bound is within about its
# standard error of the truth: with a thousand steps, the variational gap of a good
# model is small. With $\sigma_t^2 = \tilde\beta_t$ the same exact model is several tenths
# of a bit per dimension worse. The reason is the first few steps: near the data the true
# reverse variance is close to $\beta_t$, and $\tilde\beta_t$, much smaller there,
# makes each of those steps overconfident; the penalty does not shrink as $T$ grows
# (at least about $D\gamma/2$ nats for a constant $\beta$, with $\gamma = 0.577$ Euler's
# constant; the linear schedule's growing $\beta_t$ makes it larger, about 0.5 bits/dim
# here; see the docstring of `elbo_terms`). That is why Ho et al. reported likelihoods with $\beta_t$, and why
# improved DDPM learns the variance. The learned model pays a further price for its
# network error, mostly at small $t$, where the bound is most sensitive. $L_0$ is
# negative here: a continuous density can exceed one.
#
# ### MNIST
#
# Now the digits, with DDPM's discrete decoder, so the number is a bound on
# $-\log_2$ of the *probability* of the 8-bit image, per pixel. Each image costs
# $T = 1000$ network evaluations (999 denoising terms and the decoder), so we take a
# modest batch of test images and
# report the standard error of the mean with it.
#
# **Probabilities and densities.** Models with a continuous density — normalising
# flows, and chapter 5's likelihood of the probability-flow ODE — cannot score an 8-bit
# image directly. They score a *dequantised* copy, $y = (x + u)/128 - 1$ with
# $u \sim \mathcal U[0, 1)^D$, so that $y \in [-1, 1)$ like our images. Each pixel's bin
# then has width $1/128$ in $y$, and width 1 on the usual $[0, 256)$ scale, so a density
# on the $y$ scale is $128^D$ times the density on the $[0, 256)$ scale. On that scale,
# $-\log_2 p(y)/D + \log_2 128 = -\log_2 p(y)/D + 7$ bits/dim averages above
# $-\log_2 P(x)/D$ (Jensen), the same quantity DDPM's discrete decoder bounds. So: a
# flow's bits/dim in a paper is (continuous $y$-density bits) $+\,7$ for data scaled to
# $[-1, 1]$ (`ddpm.EIGHT_BIT_OFFSET_BITS`, used by `likelihood.bits_per_dim` in chapter
# 5); the number below needs no offset, because it already is a probability. Forgetting
# the offset makes a continuous model look 7 bits/dim better than it is. (The 2D
# `gaussians8` bound above has no pixel grid, so no offset applies there.)

# %%
n_bits_images = cfg.pick(smoke=2, cpu=6, gpu=128)
x_bits = data.load("mnist", split="test").subset(n_bits_images, generator).to_float().to(cfg.device)
bits_start = time.perf_counter()
mnist_terms = ddpm.elbo_terms(
    mnist_model.model,
    x_bits,
    mnist_model.schedule,
    variance="beta",
    decoder="discrete",
    generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed + 4),
    max_rows=cfg.pick(smoke=256, cpu=512, gpu=16_384),
)
mnist_bits = dfig.bound_breakdown(mnist_terms)
print(
    f"{n_bits_images} test images, {mnist_terms.diffusion.shape[1] + 2} terms each, in {time.perf_counter() - bits_start:.0f} s"
)
for key, label in [
    ("L_T", "prior L_T"),
    ("sum L_t-1", "sum of L_t-1, t = 2..T"),
    ("L_0", "decoder L_0"),
    ("total", "bound L"),
]:
    mean, err = mnist_bits[key]
    print(f"  {label:<24} {mean:8.4f} ± {err:.4f} bits/dim")

per_step = dfig.bits_per_step(mnist_terms)
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(
    torch.arange(2, per_step.shape[0] + 2), per_step.clamp_min(1e-6), color=plotting.COLORS["model"]
)
ax.set(
    xscale="log",
    yscale="log",
    xlabel="step t",
    ylabel="bits/dim",
    title="where the bound is spent: L_(t-1) per step (MNIST, batch mean)",
)
plt.show()

# %% [markdown]
# What to notice. $L_T$ is negligible (the linear chain ends close enough to
# $\mathcal N(0, I)$); the decoder $L_0$ is a sizeable part; and the denoising terms are
# concentrated at the smallest $t$: the curve falls by orders of magnitude from $t = 2$
# to $t = 1000$. The bits of a likelihood are spent on imperceptible detail near the
# data, which is exactly the part the simple loss down-weights; a model trained for
# samples is not trained for bits.
#
# How does the number compare? Published MNIST figures (bits/dim, dequantised, test
# set) are about 1.06 for RealNVP, 1.05 for Glow and 0.99 for FFJORD
# {cite}`grathwohl2019ffjord` (their Table 2), from models trained for days on GPUs. The
# DDPM paper reports no MNIST figure; on CIFAR-10 its bound is 3.70 bits/dim (3.75 for
# the model trained with the simple loss), after 800k steps at batch 128 on a TPU v3-8.
# Our `cpu` model was trained for 1000 steps at batch 32 (about half an epoch of the
# 60,000 training digits), in a few minutes on two CPU cores, with a 0.3M-parameter U-Net trained with the loss that ignores the
# likelihood: expect its bound to be far above the flows' (about twice theirs in our
# `cpu` run), with most of the gap in the small-$t$ terms and the decoder. The estimate from a handful of images
# is itself uncertain by the standard error printed beside it.
#
# ## Results card

# %%
from course_lib.show import results_card

elapsed = time.perf_counter() - chapter_start
card = [("run", cfg.describe()), ("chapter wall time", f"{elapsed:.1f} s")]
for name, q in toy_quality.items():
    for variance, sym in (("beta", "β"), ("beta_tilde", "β̃")):
        ratio = q[("learned", variance)] / q[("exact", variance)]
        card.append(
            (
                f"quality: 2D {name} MMD, learned / exact ({sym})",
                f"{ratio:.2f}x  (learned {q[('learned', variance)]:.5f}, "
                f"exact {q[('exact', variance)]:.5f}, floor {q['floor']:.5f})",
            )
        )
card += [
    (
        "quality: 2D gaussians8 bound, learned / true",
        f"{toy_bounds[('learned', 'beta')]:.3f} / {true_bits:.3f} bits/dim  "
        f"(exact model {toy_bounds[('exact', 'beta')]:.3f})",
    ),
    (
        "quality: MNIST classifier-FID (samples / real)",
        f"{fid_samples:.2f} / {fid_real:.2f}  ({n_samples} images each; noise {fid_noise:.2f}; "
        "not comparable with Inception FID)",
    ),
    (
        "quality: MNIST NLL bound (bits/dim)",
        f"{mnist_bits['total'][0]:.3f} ± {mnist_bits['total'][1]:.3f}  ({n_bits_images} test "
        f"images; L_T {mnist_bits['L_T'][0]:.1e}, sum L_t-1 {mnist_bits['sum L_t-1'][0]:.3f}, "
        f"L_0 {mnist_bits['L_0'][0]:.3f})",
    ),
    (
        f"throughput: MNIST ancestral, {mnist_run.nfe} steps",
        f"{throughput:.2f} images/s on {cfg.device.type} (batch {n_samples})",
    ),
    ("MNIST U-Net", f"{n_params:,} parameters, {r.steps} steps at batch {r.batch_size}"),
    (
        "published: MNIST bits/dim, RealNVP/Glow/FFJORD",
        "1.06 / 1.05 / 0.99 (Grathwohl et al. 2019, Table 2; GPUs, days)",
    ),
    (
        "published: DDPM on CIFAR-10 (Ho et al. 2020)",
        "FID 3.17, bound <= 3.75 bits/dim; 800k steps at batch 128 on a TPU v3-8",
    ),
]
results_card(card)

# %% [markdown]
# How to read it. The 2D lines compare the learned sampler with the same sampler run on
# the exact model (a ratio near one: the network is as good as the truth for this
# sampler) and give the floor that a perfect sampler would reach. The `gaussians8`
# bound line sets a learned likelihood bound beside the exact answer, which only a toy
# can give. The MNIST lines set the samples' classifier-feature FID beside that of the
# same number of real images, and the bound beside published figures from far larger
# budgets; the throughput line is the cost that chapter 4 sets out to cut.
#
# ## Summary
#
# * The forward process $q(x_t\mid x_{t-1}) = \mathcal N(\sqrt{\alpha_t}x_{t-1}, \beta_t I)$
#   has the closed-form marginal $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$;
#   a schedule is one decreasing array $\bar\alpha_t$, and the **cosine** schedule spends
#   fewer steps than the **linear** one on near-pure noise.
# * Given $x_0$, the reverse step is Gaussian: $q(x_{t-1}\mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$
#   with $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ and $\tilde\mu_t$ a
#   blend of $x_0$ and $x_t$ (Bayes with two Gaussians).
# * The variational bound splits into $L_T + \sum_t L_{t-1} + L_0$; each $L_{t-1}$ is a
#   weighted squared error of the predicted noise, and dropping the weight gives the
#   **simple loss** (Algorithm 1), which is denoising score matching with
#   $s_\theta = -\varepsilon_\theta/\sqrt{1-\bar\alpha_t}$. The $\varepsilon$, $x_0$, $v$ and
#   score parameterisations are interchangeable by linear conversions.
# * **Ancestral sampling** (Algorithm 2) takes one model-prescribed step per level,
#   with $\sigma_t^2 = \beta_t$ or $\tilde\beta_t$: equal for samples at $T = 1000$, very
#   different for the likelihood bound. On the toys it comes close to the exact model;
#   on MNIST a CPU-minutes U-Net gives mostly readable digits at a cost of a thousand
#   network evaluations per image.
# * The bound in **bits per dimension** concentrates in the nearly clean steps and the
#   decoder: a model trained for samples is far from the best likelihoods.
#
# ## Further reading
#
# * Ho, Jain & Abbeel, *Denoising diffusion probabilistic models* {cite}`ho2020ddpm`:
#   this chapter's eqs. 4–14, Algorithms 1 and 2, and the variance and loss ablations.
# * Sohl-Dickstein et al. {cite}`sohldickstein2015deep`, who introduced diffusion
#   probabilistic models and the variational bound in 2015.
# * Nichol & Dhariwal, *Improved denoising diffusion probabilistic models*
#   {cite}`nichol2021improved`: the cosine schedule, learned variances, and likelihoods
#   competitive with other models; Kingma et al. {cite}`kingma2021vdm` on the
#   signal-to-noise ratio as the one quantity a schedule is about.
# * Salimans & Ho {cite}`salimans2022progressive` for the $v$ parameterisation, and
#   Song et al. {cite}`song2021sde` for DDPM as a discretised SDE (chapter 5).
# * Lilian Weng's post {cite}`weng2021diffusion` derives the same formulas with
#   slightly different notation; Yang Song's {cite}`song2021blog` tells the score-based
#   side of the story. Chapter 4 samples this chapter's models in fifty steps instead of
#   a thousand {cite}`song2021ddim`.
