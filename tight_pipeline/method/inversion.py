"""Inversion loops: image latents z_0 → noise z_T, conditioned on the source prompt *and* the image.

Both loops are written out step by step; the schedule is the model's own DDIM schedule.

``invert_ddim`` is the reverse DDIM update, the same arithmetic as diffusers' ``DDIMInverseScheduler``:
going from noise level ``t - Δ`` to ``t``, the model is evaluated at timestep ``t`` on the current latent.

``invert_renoise`` refines every inversion step towards its fixed point (ReNoise, Garibi et al. 2024):
the denoising step from ``z_t`` uses ε(z_t, t), so an exact inverse needs z_t = step(z_{t-Δ}, ε(z_t, t)).
Starting from the DDIM guess, it re-evaluates the model at the current guess ``iterations`` times and uses
the mean of the last ``average_last`` predictions. ``average_last = 1`` is the pure fixed-point iteration.
Optionally as the ReNoise authors run it: near the clean end (t < ``early_t``) fewer iterations averaged from
the first, and every used prediction regularised towards Gaussian-noise statistics (``regularization.py``).

``invert_ddpm_ef`` is edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, the inversion behind
LEDITS++): independent noisy versions x_t of the latent at every level, then per step the noise map
z_t = (x_{t-Δ} - μ(x_t, ε(x_t, t))) / σ_t that makes the stochastic DDPM step land exactly on x_{t-Δ}.
Denoising with the same maps (``editing.denoise(..., noises=...)``) reconstructs exactly; with an edit
prompt it edits while the maps keep the structure.

``invert_renoise_corrected`` is ReNoise as its authors run it on few-step models: the sampler's stochastic step
(Euler-ancestral for SDXL-Turbo, the LCM step for LCM / LCM-LoRA models) inverted with every step iterated to its
fixed point, then the authors' *noise correction*: the step's noise map set so that the step with the prediction at
the inverted latent lands exactly on the latent below it. Denoising with those maps (``Schedule.sampler``
``"euler_ancestral"`` / ``"lcm"``) reconstructs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tight_pipeline.method.conditioning import TextCondition, predict_noise
from tight_pipeline.method.regularization import NoiseRegularization, regularize


@dataclass(frozen=True)
class Schedule:
    """DDIM schedule of a model: descending timesteps and the alpha-bar at each noise level."""

    timesteps: list[int]  # descending, as used for denoising
    step_ratio: int
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float  # alpha-bar "below" the last timestep (level of the clean latent)
    prediction_type: str
    sampler: str = "ddim"  # how stochastic steps move with their noise maps: "ddim" (DDPM, η = 1), "euler_ancestral", "lcm"
    lower: tuple[int, ...] = ()  # the timestep below each one where the spacing is not uniform (LCM's); -1 = clean
    timestep_scaling: float = 10.0  # LCM's boundary condition (diffusers' ``LCMScheduler.timestep_scaling``)

    def alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def below(self, t: int) -> int:
        """The timestep one step below ``t`` (negative: the clean latent's level)."""
        return self.lower[self.timesteps.index(t)] if self.lower else t - self.step_ratio

    def boundary(self, t: int) -> tuple[float, float]:
        """LCM's consistency boundary condition at ``t``: (c_skip, c_out), σ_data = 0.5, as diffusers'
        ``LCMScheduler.get_scalings_for_boundary_condition_discrete``."""
        scaled = t * self.timestep_scaling
        return 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25) ** 0.5


def make_schedule(scheduler, steps: int, sampler: str = "ddim") -> Schedule:
    """The schedule for ``steps`` steps from a diffusers scheduler's config (any SD scheduler: the noise levels and
    the timestep spacing are read as DDIM reads them — ``trailing`` starts at t = 999, as Turbo and Lightning do).
    ``sampler = "euler_ancestral"`` ends at the clean latent itself (σ = 0, ᾱ = 1), as Euler samplers do.
    ``sampler = "lcm"`` takes LCM's own timesteps (``LCMScheduler.set_timesteps``: ``steps`` of the
    ``original_inference_steps`` grid, e.g. 999, 759, 499, 259 for 4 of 50) and also ends at the clean latent."""
    from diffusers import DDIMScheduler, LCMScheduler

    if sampler == "lcm":
        lcm = scheduler if isinstance(scheduler, LCMScheduler) else LCMScheduler.from_config(scheduler.config)
        if steps > lcm.config.original_inference_steps:
            raise ValueError(f"the LCM sampler takes at most {lcm.config.original_inference_steps} steps "
                             f"(its original_inference_steps), got {steps}")
        lcm.set_timesteps(steps)
        timesteps = [int(t) for t in lcm.timesteps]
        return Schedule(timesteps=timesteps, step_ratio=lcm.config.num_train_timesteps // steps,
                        alphas_cumprod=lcm.alphas_cumprod.clone(), final_alpha_cumprod=1.0,
                        prediction_type=lcm.config.prediction_type, sampler=sampler,
                        lower=tuple(timesteps[1:]) + (-1,), timestep_scaling=float(lcm.config.timestep_scaling))

    ddim = scheduler if isinstance(scheduler, DDIMScheduler) else DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    config = ddim.config
    final = 1.0 if (config.set_alpha_to_one or sampler == "euler_ancestral") else float(ddim.alphas_cumprod[0])
    return Schedule(
        timesteps=[int(t) for t in ddim.timesteps],
        step_ratio=config.num_train_timesteps // steps,
        alphas_cumprod=ddim.alphas_cumprod.clone(),
        final_alpha_cumprod=final,
        prediction_type=config.prediction_type,
        sampler=sampler,
    )


def split_prediction(output: torch.Tensor, sample: torch.Tensor, alpha: float, prediction_type: str):
    """Model output at noise level ``alpha`` → (predicted clean latent x0, predicted noise eps)."""
    a, b = alpha**0.5, (1 - alpha) ** 0.5
    if prediction_type == "epsilon":
        return (sample - b * output) / a, output
    if prediction_type == "v_prediction":
        return a * sample - b * output, a * output + b * sample
    if prediction_type == "sample":
        return output, (sample - a * output) / b
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def ddim_move(sample: torch.Tensor, output: torch.Tensor, alpha_from: float, alpha_to: float, prediction_type: str):
    """Deterministic DDIM move of ``sample`` from level ``alpha_from`` to ``alpha_to`` (either direction)."""
    x0, eps = split_prediction(output, sample, alpha_from, prediction_type)
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


@torch.no_grad()
def invert_ddim(pipe, latents: torch.Tensor, schedule: Schedule, text: TextCondition, image_embeds, callback=None,
                max_batch: int = 0, trajectory: dict | None = None):
    """Plain DDIM inversion at guidance 1 (conditional branch only). Returns z_T.

    Args:
        latents: clean latents z_0, (B, C, h, w), float32; B items are inverted together, row by row.
        text, image_embeds: one row per latent row (the item's source prompt and positive image embeds).
        max_batch: at most this many rows per UNet call (0 = all).
        trajectory: if given, filled with the latent reached at every timestep (``{t: z_t}``): what blended
            denoising keeps outside an edit's region (``region.Blend``).

    Per step from level ``a_from`` (t - Δ) up to ``a_to`` (t), with ε = ε(z, t):
    x0 = (z - sqrt(1 - a_from) ε) / sqrt(a_from);  z ← sqrt(a_to) x0 + sqrt(1 - a_to) ε
    (DDIM, Song et al. 2021, eq. 12 run backwards; diffusers' ``DDIMInverseScheduler.step``).
    """
    z = latents.float()
    for i, t in enumerate(reversed(schedule.timesteps)):
        a_from, a_to = schedule.alpha(schedule.below(t)), schedule.alpha(t)
        out = predict_noise(pipe, z, t, text, image_embeds, max_batch)
        z = ddim_move(z, out, a_from, a_to, schedule.prediction_type)
        if trajectory is not None:
            trajectory[t] = z
        if callback:
            callback(i)
    return z


def _fixed_point(pipe, z, t, a_from, a_to, up, text, image_embeds, max_batch, prediction_type, iterations,
                 average_last, early_t, early_average, reg, z0, noise, gens) -> torch.Tensor:
    """One ReNoise step's noise estimate (the mean of its window of predictions), for any step whose inverse with
    the noise fixed is ``up(eps)``: ε_0 = ε(z, t), then ε at each guess ``up(ε_{k-1})``; the window and the
    regularisation as ``invert_renoise`` describes them."""
    pt = prediction_type
    if t < early_t:
        n, lo, hi = early_average - 1, 0, early_average
    else:
        n, lo, hi = iterations, iterations + 1 - average_last, iterations + 1
    target = None
    if reg.on:
        forward = a_to**0.5 * z0 + (1 - a_to) ** 0.5 * noise
        target = split_prediction(predict_noise(pipe, forward, t, text, image_embeds, max_batch), forward, a_to, pt)[1]
    kept = []
    sample, level = z, a_from
    for k in range(n + 1):
        # The prediction at the guess for z_t is the one the denoising step from z_t will use.
        _, eps = split_prediction(predict_noise(pipe, sample, t, text, image_embeds, max_batch), sample, level, pt)
        if lo <= k < hi:
            kept.append(eps)
            if reg.on:
                eps = regularize(eps, target, reg, gens)
        if k < n:
            sample, level = up(eps), a_to
    mean = torch.stack(kept).mean(0)
    return regularize(mean, target, reg, gens) if reg.on else mean


@torch.no_grad()
def invert_renoise(
    pipe,
    latents: torch.Tensor,
    schedule: Schedule,
    text: TextCondition,
    image_embeds,
    iterations: int = 9,
    average_last: int = 1,
    callback=None,
    max_batch: int = 0,
    early_t: int = 0,
    early_average: int = 5,
    reg: NoiseRegularization = NoiseRegularization(),
    seed: int = 0,
    trajectory: dict | None = None,
):
    """ReNoise / fixed-point inversion: every step iterated towards z_t = move(z_{t-Δ}, ε(z_t, t)).

    Same arguments as ``invert_ddim``, plus the authors' schedule and regularisation (Garibi et al. 2024, ReNoise,
    Alg. 1 and Sec. 3.3). Per step from z = z_{t-Δ}, predictions ε_0 … ε_n of the noise at timestep t:
    ε_0 = ε(z, t) (the DDIM guess's), then ε_k = ε(g_k, t) at the guesses g_k = move(z, ε_{k-1}) — the affine DDIM
    step solved for the z_t whose denoising step lands on z_{t-Δ}. The step's result is move(z, mean of a window
    of the ε_k):

    - ``t >= early_t`` (every step when ``early_t`` is 0): n = ``iterations``, the mean of the last
      ``average_last`` (the authors: 9 iterations, the last 2);
    - ``t < early_t``: the mean of the first ``early_average`` predictions, ε_0 included (the authors: below
      t = 250, 5 from the first) — near the clean image the first guesses are already good.

    With ``reg`` on, every prediction inside the window (and the window's mean) is regularised
    (``regularization.regularize``) towards ε_fwd = ε(√ᾱ_t z_0 + √(1-ᾱ_t) n, t), n a Gaussian drawn once per item
    from ``seed``; that costs one more model call per step. All of it in float32; only the UNet runs in the
    model's dtype. Predictions are averaged as noise (ε), so a v-prediction model averages what an ε model does.
    """
    if iterations < 1 or not 1 <= average_last <= iterations:
        raise ValueError(f"renoise needs iterations >= 1 and 1 <= average_last <= iterations, got {iterations}, {average_last}")
    if early_t and early_average < 1:
        raise ValueError(f"renoise needs early_average >= 1, got {early_average}")
    z0 = latents.float()
    z = z0
    noise = gens = None
    if reg.on:  # per item, so that an item's noise and random shifts are its own in any batch
        noise = torch.cat([torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(seed))
                           for _ in range(z0.shape[0])]).to(z0.device)
        gens = [torch.Generator().manual_seed(seed + 1) for _ in range(z0.shape[0])]
    for i, t in enumerate(reversed(schedule.timesteps)):
        a_from, a_to = schedule.alpha(schedule.below(t)), schedule.alpha(t)
        def up(eps, z=z, a_from=a_from, a_to=a_to):  # with ε fixed the DDIM step is affine: the z_t that lands on z
            return ddim_move(z, eps, a_from, a_to, "epsilon")

        mean = _fixed_point(pipe, z, t, a_from, a_to, up, text, image_embeds, max_batch, schedule.prediction_type,
                            iterations, average_last, early_t, early_average, reg, z0, noise, gens)
        z = up(mean)
        if trajectory is not None:
            trajectory[t] = z
        if callback:
            callback(i)
    return z


def ddpm_sigma(alpha_t: float, alpha_prev: float) -> float:
    """Standard deviation of the DDPM (eta = 1) step from level alpha_t to alpha_prev."""
    return ((1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)) ** 0.5


def ddpm_move(sample, output, alpha_t: float, alpha_prev: float, prediction_type: str, noise):
    """One stochastic DDPM step (eta = 1) from ``alpha_t`` to ``alpha_prev`` driven by the given ``noise``."""
    x0, eps = split_prediction(output, sample, alpha_t, prediction_type)
    sigma = ddpm_sigma(alpha_t, alpha_prev)
    return alpha_prev**0.5 * x0 + max(0.0, 1 - alpha_prev - sigma**2) ** 0.5 * eps + sigma * noise


def ancestral_sigmas(alpha_t: float, alpha_prev: float) -> tuple[float, float, float, float]:
    """(σ_t, σ_prev, σ_up, σ_down) of the Euler-ancestral step from level ``alpha_t`` down to ``alpha_prev``, in the
    variance-exploding σ = sqrt((1 - ᾱ) / ᾱ) of k-diffusion / diffusers' ``EulerAncestralDiscreteScheduler``:
    σ_up = sqrt(σ_prev² (σ_t² - σ_prev²) / σ_t²), σ_down = sqrt(σ_prev² - σ_up²)."""
    s_t = ((1 - alpha_t) / alpha_t) ** 0.5
    s_prev = ((1 - alpha_prev) / alpha_prev) ** 0.5
    s_up = (s_prev**2 * max(s_t**2 - s_prev**2, 0.0) / s_t**2) ** 0.5
    s_down = max(s_prev**2 - s_up**2, 0.0) ** 0.5
    return s_t, s_prev, s_up, s_down


def ancestral_move(sample, output, alpha_t: float, alpha_prev: float, prediction_type: str, noise):
    """One Euler-ancestral step from ``alpha_t`` down to ``alpha_prev`` driven by the given ``noise``, on the
    variance-preserving latents the UNet sees (z = sqrt(ᾱ) x, x = x0 + σ ε): x ← x + ε (σ_down - σ_t) + σ_up n.
    The same arithmetic as diffusers' ``EulerAncestralDiscreteScheduler.step`` with that noise (tested)."""
    _, eps = split_prediction(output, sample, alpha_t, prediction_type)
    s_t, _, s_up, s_down = ancestral_sigmas(alpha_t, alpha_prev)
    x = sample / alpha_t**0.5 + eps * (s_down - s_t) + noise * s_up
    return alpha_prev**0.5 * x


def ancestral_noise(sample, eps, alpha_t: float, alpha_prev: float, target) -> torch.Tensor:
    """The noise correction of ReNoise's authors: the map n with which ``ancestral_move`` from ``sample`` (level
    ``alpha_t``, predicted noise ``eps``) lands exactly on ``target`` (level ``alpha_prev``); zeros where the step
    adds no noise (σ_up = 0, the last step)."""
    s_t, _, s_up, s_down = ancestral_sigmas(alpha_t, alpha_prev)
    if s_up <= 0:
        return torch.zeros_like(sample)
    return (target / alpha_prev**0.5 - (sample / alpha_t**0.5 + eps * (s_down - s_t))) / s_up


def lcm_move(sample, output, alpha_t: float, alpha_prev: float, prediction_type: str, noise, c_skip: float,
             c_out: float):
    """One LCM step from ``alpha_t`` down to ``alpha_prev`` driven by the given ``noise``: the consistency function's
    clean estimate d = c_out x0 + c_skip z, then z ← sqrt(ᾱ_prev) d + sqrt(1 - ᾱ_prev) n (d itself at the clean end).
    The same arithmetic as diffusers' ``LCMScheduler.step`` with that noise (tested)."""
    x0, _ = split_prediction(output, sample, alpha_t, prediction_type)
    d = c_out * x0 + c_skip * sample
    return alpha_prev**0.5 * d + (1 - alpha_prev) ** 0.5 * noise if alpha_prev < 1 else d


def noised_move(schedule: Schedule, t: int, sample, output, noise, prediction_type: str | None = None):
    """The schedule's stochastic step from ``t`` to the level below it, driven by ``noise``: Euler-ancestral, LCM or
    DDPM (η = 1)."""
    pt = prediction_type or schedule.prediction_type
    a_t, a_low = schedule.alpha(t), schedule.alpha(schedule.below(t))
    if schedule.sampler == "euler_ancestral":
        return ancestral_move(sample, output, a_t, a_low, pt, noise)
    if schedule.sampler == "lcm":
        return lcm_move(sample, output, a_t, a_low, pt, noise, *schedule.boundary(t))
    return ddpm_move(sample, output, a_t, a_low, pt, noise)


def _corrected_step(schedule: Schedule, t: int):
    """For the stochastic step from ``t`` down: ``start(eps, z, n)`` — the latent at ``t`` from which the step with
    noise prediction ε and map n lands on ``z`` (affine with ε and n fixed: what ReNoise iterates) — and
    ``correct(z_t, eps, z)`` — the map with which the step from ``z_t`` with ε lands exactly on ``z`` (the noise
    correction; zeros where the step adds no noise)."""
    a_t, a_low = schedule.alpha(t), schedule.alpha(schedule.below(t))
    if schedule.sampler == "euler_ancestral":
        s_t, _, s_up, s_down = ancestral_sigmas(a_t, a_low)

        def start(eps, z, n):
            return a_t**0.5 * (z / a_low**0.5 - eps * (s_down - s_t) - n * s_up)

        return start, lambda z_t, eps, z: ancestral_noise(z_t, eps, a_t, a_low, z)
    if schedule.sampler == "lcm":
        c_skip, c_out = schedule.boundary(t)
        b_t = (1 - a_t) ** 0.5

        def start(eps, z, n):  # the consistency estimate d the step needs, then the z_t whose estimate it is
            d = (z - (1 - a_low) ** 0.5 * n) / a_low**0.5 if a_low < 1 else z
            return (d + c_out * b_t / a_t**0.5 * eps) / (c_out / a_t**0.5 + c_skip)

        def correct(z_t, eps, z):
            if a_low >= 1:
                return torch.zeros_like(z)
            d = c_out * (z_t - b_t * eps) / a_t**0.5 + c_skip * z_t
            return (z - a_low**0.5 * d) / (1 - a_low) ** 0.5

        return start, correct
    raise ValueError(f"no noise-corrected inversion for sampler {schedule.sampler!r} (euler_ancestral or lcm)")


@torch.no_grad()
def invert_renoise_corrected(pipe, latents: torch.Tensor, schedule: Schedule, text: TextCondition, image_embeds,
                             iterations: int = 4, average_last: int = 1, callback=None, max_batch: int = 0,
                             early_t: int = 0, early_average: int = 5, reg: NoiseRegularization = NoiseRegularization(),
                             seed: int = 0, trajectory: dict | None = None):
    """ReNoise on a few-step model's stochastic step with its noise correction (Garibi et al. 2024: the authors'
    SDXL-Turbo setting on the Euler-ancestral step; their LCM scheduler's ``inv_step`` on the LCM step). Returns
    (z_T, noise maps in denoising order, one per step).

    Per step, from z = z_{t↓} (the level below) up to level t, each item draws a Gaussian map n_t from its own
    generator (``seed``). The step from z_t, with ε and n_t fixed, is affine in z_t
    (Euler-ancestral: x_{t↓} = x_t + ε (σ_down - σ_t) + σ_up n_t; LCM: z_{t↓} = sqrt(ᾱ_{t↓}) (c_out x0(z_t, ε) +
    c_skip z_t) + sqrt(1 - ᾱ_{t↓}) n_t), so solving it for z_t is ``_corrected_step``'s ``start``, and the
    fixed-point iteration and the averaging windows are ``invert_renoise``'s (ε_0 = ε(z, t), then ε at each guess;
    ``early_t`` / ``early_average`` near the clean end; ``reg`` regularises the used predictions). Then the noise
    correction: with ε = ε(z_t, t) at the result, n_t becomes the map that makes the step from z_t land exactly on
    z. The schedule must end at the clean latent (``make_schedule(..., sampler="euler_ancestral" | "lcm")``).
    (The authors' LCM ``inv_step`` divides by c_out sqrt(ᾱ_{t↓}) / sqrt(ᾱ_t) + c_skip where the step's algebra gives
    sqrt(ᾱ_{t↓}) (c_out / sqrt(ᾱ_t) + c_skip); c_skip < 1e-5 at every t ≥ 19, so the two agree.)"""
    if iterations < 1 or not 1 <= average_last <= iterations:
        raise ValueError(f"renoise needs iterations >= 1 and 1 <= average_last <= iterations, got {iterations}, {average_last}")
    z0 = latents.float()
    z = z0
    rows = z0.shape[0]
    draws = [torch.Generator().manual_seed(seed) for _ in range(rows)]  # per item: the same maps alone or in a batch
    noise = gens = None
    if reg.on:
        noise = torch.cat([torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(seed + 2))
                           for _ in range(rows)]).to(z0.device)
        gens = [torch.Generator().manual_seed(seed + 1) for _ in range(rows)]
    pt = schedule.prediction_type
    maps: dict[int, torch.Tensor] = {}
    for i, t in enumerate(reversed(schedule.timesteps)):
        a_low, a_t = schedule.alpha(schedule.below(t)), schedule.alpha(t)
        n_t = torch.cat([torch.randn((1, *z0.shape[1:]), generator=g) for g in draws]).to(z0.device)
        start, correct = _corrected_step(schedule, t)

        def up(eps, z=z, n_t=n_t, start=start):  # the step from level t solved for its start, ε and n_t fixed
            return start(eps, z, n_t)

        mean = _fixed_point(pipe, z, t, a_low, a_t, up, text, image_embeds, max_batch, pt, iterations, average_last,
                            early_t, early_average, reg, z0, noise, gens)
        z_t = up(mean)
        _, eps = split_prediction(predict_noise(pipe, z_t, t, text, image_embeds, max_batch), z_t, a_t, pt)
        maps[t] = correct(z_t, eps, z)  # the noise correction
        z = z_t
        if trajectory is not None:
            trajectory[t] = z
        if callback:
            callback(i)
    return z, [maps[t] for t in schedule.timesteps]


@torch.no_grad()
def invert_ddpm_ef(pipe, latents: torch.Tensor, schedule: Schedule, text: TextCondition, image_embeds,
                   seed: int = 0, callback=None, max_batch: int = 0, trajectory: dict | None = None):
    """Edit-friendly DDPM inversion. Returns (x_T, noise maps in denoising order, one per step).

    Each row of ``latents`` (one item) draws its noisy levels x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) n_t from its own
    generator seeded with ``seed``, so an item gets the same levels and maps alone or in a batch. Then per step
    z_t = (x_{t-Δ} - μ(x_t, ε(x_t, t))) / σ_t, with μ the DDPM (η = 1) posterior mean (Huberman-Spiegelglas et al.
    2024, eq. 5). Maps are float32, shaped like ``latents``. ``trajectory``, if given, gets the levels ``{t: x_t}``
    (denoising with the maps lands on them exactly).
    """
    latents = latents.float()
    levels = {t: torch.empty_like(latents) for t in schedule.timesteps}
    for row in range(latents.shape[0]):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for t in schedule.timesteps:
            a = schedule.alpha(t)
            noise = torch.randn((1, *latents.shape[1:]), generator=gen, dtype=torch.float32).to(latents.device)
            levels[t][row : row + 1] = a**0.5 * latents[row : row + 1] + (1 - a) ** 0.5 * noise
    if trajectory is not None:
        trajectory.update(levels)
    noises = []
    for i, t in enumerate(schedule.timesteps):
        t_prev = schedule.below(t)
        a_t, a_prev = schedule.alpha(t), schedule.alpha(t_prev)
        out = predict_noise(pipe, levels[t], t, text, image_embeds, max_batch)
        target = levels[t_prev] if t_prev in levels else latents
        mean = ddpm_move(levels[t], out, a_t, a_prev, schedule.prediction_type, torch.zeros_like(latents))
        noises.append((target - mean) / ddpm_sigma(a_t, a_prev))
        if callback:
            callback(i)
    return levels[schedule.timesteps[0]], noises
