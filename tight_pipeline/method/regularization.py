"""ReNoise's noise regularisation: nudging each predicted noise towards what Gaussian noise looks like.

An inversion step trusts the model's noise prediction ε. Fresh Gaussian noise has two properties the prediction
can lose on a real photo: its local statistics match those of noise that was really added, and it is
uncorrelated with shifted copies of itself. ReNoise (Garibi et al. 2024, Sec. 3.3; after pix2pix-zero,
Parmar et al. 2023) pushes ε back towards both with a few gradient steps before it is used:

- **patch KL** (``patch_kl``): split ε and a *reference* prediction ε_fwd = ε(√ᾱ_t z_0 + √(1-ᾱ_t) n, t) — the
  model's prediction where the noise n is known to be Gaussian — into 4 × 4 × 4 blocks (4 channels × 4 × 4
  pixels); per block and channel compare mean μ and variance σ² with
  |log(σ²_fwd / σ²) + (σ² + (μ - μ_fwd)²) / σ²_fwd - 1|, summed over blocks and channels;
- **autocorrelation** (``autocorrelation``): for every channel, at the full size and every 2× average-pooled
  size down to 8 pixels, (mean of ε · roll(ε, r))² along rows and along columns, r a random shift below half
  the side (drawn from the row's own generator, so an item's shifts don't depend on its batch).

``regularize`` takes ``steps`` rounds of: one step ε ← ε - λ_kl · clip(∇ KL, ±100), then ``rolls`` steps
ε ← ε - λ_ac / rolls · ∇ AC. The authors' settings: λ_kl 0.065, λ_ac 20, 4 steps, 5 rolls. Every loss is a sum
over batch rows, so each row's gradient is its own: batching never changes an item's result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_EPS = 1e-6
PATCH = 4


@dataclass(frozen=True)
class NoiseRegularization:
    """Weights and step counts of the regularisation (``steps == 0`` or both weights 0: off)."""

    kl: float = 0.0
    ac: float = 0.0
    steps: int = 0
    rolls: int = 5

    @property
    def on(self) -> bool:
        return self.steps > 0 and (self.kl > 0 or self.ac > 0)


def patch_kl(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over 4 × 4 × 4 blocks (channel × height × width) and their channels of the absolute Gaussian KL-style
    gap between ``x``'s and ``target``'s per-channel mean and (unbiased) variance. Leftover rows, columns or
    channels that don't fill a block are not compared."""

    def blocks(t: torch.Tensor) -> torch.Tensor:
        b = t.unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (B, C/4, H/4, W/4, 4, 4, 4)
        return b.reshape(-1, PATCH, PATCH * PATCH)  # (blocks, channel in block, 16 pixels)

    a, b = blocks(x), blocks(target)
    mu0, mu1 = a.mean(-1), b.mean(-1)
    var0, var1 = a.var(-1), b.var(-1)
    gap = torch.log((var1 + _EPS) / (var0 + _EPS)) + (var0 + (mu0 - mu1) ** 2) / (var1 + _EPS) - 1
    return gap.abs().sum()


def autocorrelation(x: torch.Tensor, generator: torch.Generator | None = None, random_shift: bool = True) -> torch.Tensor:
    """The autocorrelation penalty of one row ``x`` (1, C, H, W): per channel and per pyramid level (halving
    until the side is at most 8), (mean of x · x rolled by r)² along rows plus along columns. ``r`` is drawn
    in [0, side/2) from ``generator`` when ``random_shift``, else 1."""
    if x.shape[0] != 1:
        raise ValueError(f"autocorrelation takes one row at a time, got {x.shape[0]}")
    loss = x.new_zeros(())
    for c in range(x.shape[1]):
        level = x[:, c : c + 1]
        while True:
            side = level.shape[2]
            r = int(torch.randint(0, max(1, side // 2), (1,), generator=generator)) if random_shift else 1
            loss = loss + (level * torch.roll(level, shifts=r, dims=2)).mean() ** 2
            loss = loss + (level * torch.roll(level, shifts=r, dims=3)).mean() ** 2
            if side <= 8:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return loss


def regularize(eps: torch.Tensor, target: torch.Tensor, reg: NoiseRegularization,
               generators: list[torch.Generator]) -> torch.Tensor:
    """``eps`` (B, C, H, W) after ``reg.steps`` rounds of KL and autocorrelation gradient steps (see the module
    docstring); ``target`` is the reference prediction ε_fwd, ``generators`` one per row (the random shifts)."""
    if not reg.on:
        return eps
    eps = eps.detach().float()
    target = target.detach().float()
    with torch.enable_grad():
        for _ in range(reg.steps):
            if reg.kl > 0:
                var = eps.clone().requires_grad_(True)
                patch_kl(var, target).backward()
                eps = eps - reg.kl * var.grad.clamp(-100, 100)
            if reg.ac > 0:
                for _ in range(reg.rolls):
                    var = eps.clone().requires_grad_(True)
                    sum(autocorrelation(var[r : r + 1], generators[r]) for r in range(var.shape[0])).backward()
                    eps = eps - reg.ac / reg.rolls * var.grad
            eps = eps.detach()
    return eps
