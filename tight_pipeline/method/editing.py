"""Denoising from one inverted z_T: the reconstruction and any number of edits, in one batch.

Rows of a batch come in two kinds:
- *plain* rows run the conditional branch only (guidance 1.0): the reconstruction, with the source
  prompt and the image's positive embeds;
- *guided* rows run classifier-free guidance: an unconditional row (negative prompt + the adapter's
  *negative* image embeds) and a conditional row (edit prompt + positive image embeds) per edit.

All rows start from the same z_T, so one inversion serves every edit of an item (variants, locales).
"""

from __future__ import annotations

import torch

from tight_pipeline.method.conditioning import TextCondition, predict_noise
from tight_pipeline.method.inversion import Schedule, ddim_move, noised_move, split_prediction


def guide(uncond: torch.Tensor, cond: torch.Tensor, guidance: float, sharpening: float = 1.0) -> torch.Tensor:
    """Classifier-free guidance ``ε_u + guidance · d`` with ``d = ε_c - ε_u``, row by row.

    ``sharpening`` is the Tight Inversion authors' demo knob (their "sharpening factor"): each row's ``d`` is
    divided by its largest magnitude ``m``, raised to the power ``sharpening`` with its sign kept, and scaled back,
    ``d ← sign(d) · m · (|d| / m) ** sharpening``. 1.0 is plain CFG (and is computed as plain CFG); below 1 the
    small differences are lifted towards the largest, above 1 only the largest keep their weight. Their pipeline
    takes ``m`` over the whole batch and runs one edit per batch; here it is per row, so an edit's result does
    not depend on which items share its batch (the same as theirs at one edit per batch)."""
    d = cond - uncond
    if sharpening != 1.0:
        d = d.float()
        m = d.abs().flatten(1).amax(1).view(-1, *([1] * (d.dim() - 1)))
        m = torch.where(m > 0, m, torch.ones_like(m))  # an all-zero row stays zero
        d = (torch.sign(d) * (d.abs() / m) ** sharpening * m).to(cond.dtype)
    return uncond + guidance * d


@torch.no_grad()
def denoise(
    pipe,
    z_T: torch.Tensor,
    schedule: Schedule,
    text: TextCondition,
    image_embeds: torch.Tensor | None,
    n_plain: int,
    n_guided: int,
    guidance: float,
    callback=None,
    noises: list[torch.Tensor] | None = None,
    max_batch: int = 0,
    sharpening: float = 1.0,
    blend=None,
    cfgpp: bool = False,
) -> torch.Tensor:
    """DDIM denoising of ``n_plain + n_guided`` latents that all start at ``z_T``.

    ``text`` and ``image_embeds`` hold ``n_plain + 2 * n_guided`` rows, ordered
    ``[plain..., unconditional..., conditional...]``. Returns the ``n_plain + n_guided`` clean latents
    (plain rows first). ``z_T`` is one latent shared by all rows, or one per row (``n_plain + n_guided``
    rows: a batch of different images, as the demo model's evaluation runs). With ``noises`` (from ``invert_ddpm_ef``) every step is the stochastic DDPM step
    (the Euler-ancestral or LCM step with ``schedule.sampler`` ``"euler_ancestral"`` / ``"lcm"``, maps from
    ``invert_renoise_corrected``)
    driven by that step's noise map (one map shared by all rows, or one per row, ``n_plain + n_guided``);
    without, the deterministic DDIM step. Latents and updates are float32; at most ``max_batch`` rows per
    UNet call (0 = all).

    Per step from t down to t - Δ: ε̂ = ε_u + guidance (ε_c - ε_u) for guided rows (``guide``: with the
    authors' ``sharpening`` of the difference when it is not 1), ε for plain rows, then
    z ← sqrt(a_prev) x0 + sqrt(1 - a_prev) ε̂ (DDIM, eq. 12 with η = 0) or the DDPM step with the stored map.
    With ``blend`` (``region.Blend``, one mask per guided row), the guided rows then keep the inversion's own
    latent outside their regions (blended latent diffusion).

    ``cfgpp``: CFG++ (Chung et al. 2025, "Manifold-constrained classifier free guidance"): a guided row's clean
    estimate x0 comes from the guided prediction (``guidance`` is then CFG++'s λ, in 0..1) but the step re-noises
    it with the *unconditional* noise, z ← sqrt(a_prev) x0(ε̂) + sqrt(1 - a_prev) ε_u (with noise maps the same
    substitution in the stochastic step), which keeps each step nearer the data manifold than CFG's extrapolated
    noise does. Plain rows are unchanged.
    """
    p, g = n_plain, n_guided
    z_T = z_T.float()
    z = z_T if z_T.shape[0] == p + g else z_T.repeat(p + g, 1, 1, 1)
    # Guidance 1 without sharpening is the conditional prediction alone (few-step models edit so): the
    # unconditional rows are not run at all.
    cond_only = bool(g) and guidance == 1.0 and sharpening == 1.0 and not cfgpp
    if cond_only:
        keep = list(range(p)) + list(range(p + g, p + 2 * g))
        text = text.rows(keep)
        image_embeds = None if image_embeds is None else image_embeds[keep]
    for i, t in enumerate(schedule.timesteps):
        a_t, a_prev = schedule.alpha(t), schedule.alpha(schedule.below(t))
        pt = schedule.prediction_type
        if cond_only:
            combined = predict_noise(pipe, z, t, text, image_embeds, max_batch)
        else:
            model_in = torch.cat([z[:p], z[p:], z[p:]]) if g else z
            out = predict_noise(pipe, model_in, t, text, image_embeds, max_batch)
            uncond, cond = out[p : p + g], out[p + g :]
            combined = torch.cat([out[:p], guide(uncond, cond, guidance, sharpening)])
        start = z
        if cfgpp and g:  # the step from (x0 of the guided prediction, ε_u): as an ε-prediction at a stand-in latent
            x0_guided, _ = split_prediction(combined[p:].float(), z[p:], a_t, pt)
            _, eps_u = split_prediction(uncond.float(), z[p:], a_t, pt)
            _, eps_plain = split_prediction(combined[:p].float(), z[:p], a_t, pt)
            start = torch.cat([z[:p], a_t**0.5 * x0_guided + (1 - a_t) ** 0.5 * eps_u])
            combined, pt = torch.cat([eps_plain, eps_u]), "epsilon"
        if noises is None:
            z = ddim_move(start, combined, a_t, a_prev, pt)
        else:
            z = noised_move(schedule, t, start, combined, noises[i], pt)
        if blend is not None and g:
            z = torch.cat([z[:p], blend.apply(z[p:], i)])
        if callback:
            callback(i)
    return z
