"""Parity with the authors' reference pipelines: the ReNoise authors' iteration schedule and noise regularisation,
and the Tight Inversion demo's CFG sharpening, each checked against a small case computed by hand (no model: a
stub network whose outputs are known)."""

from __future__ import annotations

import math

import pytest
import torch

from tight_pipeline.method.conditioning import TextCondition
from tight_pipeline.method.inversion import Schedule, invert_renoise
from tight_pipeline.method.regularization import NoiseRegularization, autocorrelation, patch_kl, regularize
from tight_pipeline.method.presets import Preset, load_preset, load_presets


class _ScriptedUNet:
    """Returns the k-th scripted value (a constant tensor) on its k-th call; records the timesteps it saw."""

    dtype = torch.float32

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def __call__(self, latents, t, **_):
        self.calls.append(int(t))
        value = self.values[len(self.calls) - 1]
        return (value.clone() if torch.is_tensor(value) else torch.full_like(latents, value),)


class _Pipe:
    def __init__(self, unet):
        self.unet = unet


def _one_step(t: int) -> Schedule:
    """One DDIM step from the clean latent (alpha-bar 1) up to timestep ``t`` (alpha-bar 0.64)."""
    alphas = torch.full((1000,), 0.64)
    return Schedule(timesteps=[t], step_ratio=1000, alphas_cumprod=alphas, final_alpha_cumprod=1.0,
                    prediction_type="epsilon")


def _text() -> TextCondition:
    return TextCondition(torch.zeros(1, 2, 4), None, None)


def _expected(z: float, eps: float) -> float:
    # move(z, eps) from alpha-bar 1 to 0.64: 0.8 * z + 0.6 * eps
    return 0.8 * z + 0.6 * eps


def test_renoise_late_steps_average_the_last_predictions():
    unet = _ScriptedUNet([float(k) for k in range(10)])  # eps_0 .. eps_9
    z = invert_renoise(_Pipe(unet), torch.ones(1, 4, 8, 8), _one_step(600), _text(), None, iterations=9,
                       average_last=2, early_t=250, early_average=5)
    assert len(unet.calls) == 10  # the DDIM guess's prediction + 9 iterations
    assert torch.allclose(z, torch.full_like(z, _expected(1.0, (8 + 9) / 2)))


def test_renoise_early_steps_average_the_first_predictions():
    unet = _ScriptedUNet([float(k) for k in range(10)])
    z = invert_renoise(_Pipe(unet), torch.ones(1, 4, 8, 8), _one_step(200), _text(), None, iterations=9,
                       average_last=2, early_t=250, early_average=5)
    assert len(unet.calls) == 5  # below t=250: the first five predictions, nothing after them
    assert torch.allclose(z, torch.full_like(z, _expected(1.0, (0 + 1 + 2 + 3 + 4) / 5)))


def test_renoise_without_the_schedule_is_the_plain_fixed_point():
    unet = _ScriptedUNet([float(k) for k in range(5)])
    z = invert_renoise(_Pipe(unet), torch.ones(1, 4, 8, 8), _one_step(200), _text(), None, iterations=4)
    assert len(unet.calls) == 5 and torch.allclose(z, torch.full_like(z, _expected(1.0, 4.0)))


def test_patch_kl_matches_the_hand_computed_gap():
    # one 4x4x4 block; channel c holds 0..15 (+c): mean 7.5 + c, unbiased variance 16*17/12; x = 2 * target + 1
    target = torch.stack([torch.arange(16.0).reshape(4, 4) + c for c in range(4)])[None]
    x = 2 * target + 1
    var = 16 * 17 / 12
    # per channel: log(var_t / var_x) + (var_x + (mu_x - mu_t)^2) / var_t - 1 with var_x = 4 var, mu_x - mu_t = 8.5 + c
    hand = sum(abs(math.log(1 / 4) + (4 * var + (8.5 + c) ** 2) / var - 1) for c in range(4))
    assert float(patch_kl(x, target)) == pytest.approx(hand, rel=1e-4)
    assert float(patch_kl(target, target)) == pytest.approx(0.0, abs=1e-4)


def test_autocorrelation_of_a_checkerboard_is_hand_computed():
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0  # +-1 checkerboard, 16x16
    x = torch.stack([board, board])[None]  # two channels
    # shift 1: every product is -1 -> (mean)^2 = 1 per direction per channel at 16x16; the 8x8 average-pooled
    # board is all zeros and adds nothing: 2 channels x 2 directions x 1
    assert float(autocorrelation(x, random_shift=False)) == pytest.approx(4.0)
    smooth = torch.ones(1, 1, 8, 8)  # shift-invariant: every product is 1
    assert float(autocorrelation(smooth, generator=torch.Generator().manual_seed(0))) == pytest.approx(2.0)


def test_regularisation_lowers_both_penalties_and_is_per_row():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 16, 16, generator=g)
    eps = 0.5 * torch.randn(2, 4, 16, 16, generator=g) + 0.3 * torch.roll(target, 1, 2)  # off-statistics, correlated
    gens = lambda: [torch.Generator().manual_seed(1) for _ in range(2)]  # noqa: E731
    kl_only = regularize(eps, target, NoiseRegularization(kl=0.065, steps=4), gens())
    assert float(patch_kl(kl_only, target)) < 0.9 * float(patch_kl(eps, target))
    ac_only = regularize(eps, target, NoiseRegularization(ac=20.0, steps=4, rolls=5), gens())
    fixed = [autocorrelation(t[None], random_shift=False) for t in (eps[0], ac_only[0])]
    assert float(fixed[1]) < 0.9 * float(fixed[0])
    reg = NoiseRegularization(kl=0.065, ac=20.0, steps=4, rolls=5)
    out = regularize(eps, target, reg, gens())
    alone = regularize(eps[1:], target[1:], reg, [torch.Generator().manual_seed(1)])
    assert torch.allclose(alone, out[1:], atol=1e-6)  # a row's result does not depend on its batch
    assert regularize(eps, target, NoiseRegularization(), []) is eps  # off: untouched


def test_regularised_renoise_pulls_towards_the_forward_prediction():
    # the forward prediction (first call of the step) is standard noise; the iterations predict the same noise
    # shifted by +3: the KL term pulls the used noise's block means back towards the forward prediction's
    g = torch.Generator().manual_seed(0)
    forward, drift = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    z0 = torch.zeros(1, 4, 16, 16)
    reg = NoiseRegularization(kl=0.065, ac=0.0, steps=4, rolls=1)
    unet = _ScriptedUNet([forward] + [drift + 3.0] * 3)
    z = invert_renoise(_Pipe(unet), z0, _one_step(600), _text(), None, iterations=2, average_last=1, reg=reg)
    assert len(unet.calls) == 4  # the forward prediction + the guess's + 2 iterations
    plain = _expected(0.0, drift + 3.0)  # without regularisation: move(z_0, drift + 3)
    assert float(z.mean()) < float(plain.mean()) - 0.05
    # the pull is the hand-computable KL gradient of the block means: at most 4 steps x 0.065 x the clip 100
    assert float((plain - z).abs().max()) <= 0.6 * 4 * 0.065 * 100 + 1e-4


def test_parity_fields_keep_existing_hashes_and_are_validated():
    presets = load_presets()
    assert presets["renoise-reference"].renoise_reg_steps == 4 and presets["renoise-reference"].renoise_early_t == 250
    for name in ("faithful", "balanced", "off", "draft"):  # fields at their defaults stay out of the hash
        assert not any(key.startswith(("renoise_early", "renoise_reg")) for key in presets[name].settings())
    plain = Preset(name="p", method="renoise", renoise_iterations=9, renoise_average_last=2)
    assert plain.hash != Preset(name="p", method="renoise", renoise_iterations=9, renoise_average_last=2,
                                renoise_reg_steps=4, renoise_reg_kl=0.065).hash
    with pytest.raises(ValueError, match="renoise_reg_steps"):
        Preset(name="x", method="renoise", renoise_iterations=2, renoise_reg_steps=-1)
    with pytest.raises(ValueError, match="renoise_reg_ac"):
        Preset(name="x", method="renoise", renoise_iterations=2, renoise_reg_ac="a lot")
    assert load_preset("renoise-reference@0.6").renoise_reg_kl == 0.065


def test_cfg_sharpening_matches_the_hand_computed_case_row_by_row():
    from tight_pipeline.method.editing import guide

    uncond = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    diff = torch.tensor([[-2.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    cond = uncond + diff
    # factor 2, largest magnitude 2: sign(d) * 2 * (|d| / 2) ** 2 = [-2, 0.5, 0.125, 0]; guidance 3 on top of uncond 1
    out = guide(uncond, cond, 3.0, 2.0)
    assert torch.allclose(out[0].flatten(), torch.tensor([1 - 6.0, 1 + 1.5, 1 + 0.375, 1.0]))
    assert torch.equal(out[1], torch.zeros(1, 2, 2))  # a row with no difference stays put (no 0/0)
    # factor 0.5 lifts the small differences towards the largest: 2 * sqrt(0.25) = 1 for the 0.5 entry
    assert torch.allclose(guide(uncond, cond, 1.0, 0.5)[0].flatten(), torch.tensor([-1.0, 1 + 2 * 0.5 ** 0.5, 2.0, 1.0]))
    # per row: a row's result does not depend on its batch neighbours (theirs normalises over the batch of one)
    big = cond.clone()
    big[1] = 100.0
    assert torch.equal(guide(uncond, big, 3.0, 2.0)[0], out[0])
    # 1.0 is plain CFG, bit for bit
    assert torch.equal(guide(uncond, cond, 7.5, 1.0), uncond + 7.5 * (cond - uncond))


def test_cfg_sharpening_is_a_validated_preset_field_outside_existing_hashes():
    presets = load_presets()
    # the default 1.0 stays out of the hash: only the preset that asks for sharpening carries it
    assert [name for name, p in presets.items() if "cfg_sharpening" in p.settings()] == ["catalog-sharp"]
    assert presets["catalog-sharp"].cfg_sharpening == 2.0 and presets["catalog-sharp"].method == "ddim"
    assert Preset(name="s", cfg_sharpening=0.5).hash != Preset(name="s").hash
    assert Preset(name="s", cfg_sharpening=1).hash == Preset(name="s").hash
    with pytest.raises(ValueError, match="cfg_sharpening 0 must be a number in 0.05..10"):
        Preset(name="x", cfg_sharpening=0)
    with pytest.raises(ValueError, match="cfg_sharpening"):
        Preset(name="x", cfg_sharpening="sharp")
