"""RF-Inversion (Rout et al. 2024) for flow-matching models such as FLUX, as explicit loops.

Flow convention of FLUX: x_s = (1 - s) x_0 + s * noise, s from 1 (noise) to 0 (image); the transformer predicts
the velocity v = noise - x_0, and one Euler denoising step is x_{s'} = x_s + (s' - s) v(x_s, s) for s' < s.
``sigmas`` is the model's own descending schedule s_0 = 1 > ... > s_N = 0 (with FLUX's resolution shift).

**Controlled forward ODE** (``invert_rf``, image -> noise), per step from s_{i+1} up to s_i:

    u   = v(Y, s)                               the model's velocity: inversion prompt + the image's embeds
    u_c = (y_1 - Y) / (1 - s_{i+1})             straight to a fixed target noise y_1
    Y  <- Y + (s_i - s_{i+1}) * (u + gamma * (u_c - u))

gamma = 0 is plain flow-ODE inversion. The explicit step evaluates v at the lower level, while the denoising
Euler step from s_i uses v(x_{s_i}, s_i): ``fixed_point_iterations`` re-evaluates v at the current guess of
Y_{s_i} (at level s_i) so that, at gamma = 0, the result is the exact inverse of the Euler sampler.

**Controlled reverse ODE** (``denoise_rf``, noise -> image), per step from s_i down to s_{i+1}:

    d   = -v                                    towards the image, per unit of s (CFG-combined for edits)
    d_c = (y_0 - X) / s_i                       straight back to the input's latent y_0
    X  <- X + (s_i - s_{i+1}) * (d + eta_i * (d_c - d))

with eta_i = ``eta`` while the step is inside [eta_start, eta_stop) of the run and 0 after, so edits keep the
input's layout early and follow the prompt late. Reconstruction rows run with eta = 0 (an honest inverse).

``velocity(x, i_level)`` is supplied by the caller: it evaluates the model at level ``sigmas[i_level]``
for the rows of ``x`` (each row carries its own conditions; a fresh ``joint_attention_kwargs`` dict per call).
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def invert_rf(
    velocity: Velocity,
    y0: torch.Tensor,
    sigmas: list[float],
    gamma: float = 0.0,
    target_noise: torch.Tensor | None = None,
    fixed_point_iterations: int = 0,
    callback=None,
    trajectory: dict | None = None,
) -> torch.Tensor:
    """Controlled forward ODE from the clean latent ``y0`` (level sigmas[-1] = 0) to level sigmas[0];
    ``trajectory``, if given, gets the latent reached at every level index (``{i: Y_i}``)."""
    if gamma > 0 and target_noise is None:
        raise ValueError("RF-Inversion with gamma > 0 needs a target noise")
    y = y0
    n = len(sigmas) - 1
    for step, i in enumerate(range(n - 1, -1, -1)):  # level index i+1 (lower) -> i (higher)
        s_low, s_high = sigmas[i + 1], sigmas[i]
        u = velocity(y, i + 1)
        control = (target_noise - y) / (1.0 - s_low) if gamma > 0 else None
        guess = y + (s_high - s_low) * (u if control is None else u + gamma * (control - u))
        for _ in range(fixed_point_iterations):
            u = velocity(guess, i)  # what the Euler step from s_high will see
            guess = y + (s_high - s_low) * (u if control is None else u + gamma * (control - u))
        y = guess
        if trajectory is not None:
            trajectory[i] = y
        if callback:
            callback(step)
    return y


@torch.no_grad()
def denoise_rf(
    velocity: Velocity,
    x1: torch.Tensor,
    sigmas: list[float],
    y0: torch.Tensor | None = None,
    eta: torch.Tensor | float = 0.0,
    eta_start: float = 0.0,
    eta_stop: float = 0.0,
    callback=None,
    blend=None,
) -> torch.Tensor:
    """Controlled reverse ODE from ``x1`` (level sigmas[0]) to the clean latent.

    ``eta`` may be a per-row tensor shaped like ``x1``'s batch (0 for reconstruction rows). With ``blend``
    (``region.Blend`` over packed tokens), every row keeps the inversion's latent outside its region.
    """
    x = x1
    n = len(sigmas) - 1
    eta_rows = torch.as_tensor(eta, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
    for i in range(n):
        s_high, s_low = sigmas[i], sigmas[i + 1]
        d = -velocity(x, i)
        if y0 is not None and eta_start <= i / n < eta_stop and bool((eta_rows > 0).any()):
            d = d + eta_rows * ((y0 - x) / s_high - d)
        x = x + (s_high - s_low) * d
        if blend is not None:
            x = blend.apply(x, i)
        if callback:
            callback(i)
    return x
