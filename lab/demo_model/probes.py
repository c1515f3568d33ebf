"""What the demo model's image condition carries: the denoising probe and the ridge probes of the adapter tokens.

Both are part of ``python -m lab evaluate-demo-model``'s report (``evaluate.py`` runs them on held-out shots).
"""

from __future__ import annotations

import numpy as np

from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET, ProductSpec, render_product

PROBE_TIMESTEPS = (999, 800, 600, 400)


def condition_probe(pipe, z0, text, image_embeds, timesteps=PROBE_TIMESTEPS, seed: int = 0) -> list[dict]:
    """What the image condition tells the model: the error (MSE) of its clean-latent prediction from a noised
    input at several timesteps with the text alone (scale 0), with text + the shot's own image (scale 1), and
    with text + another shot's image (scale 1, images rolled by one). An adapter that carries information
    about the shot makes ``own_image`` clearly lower than ``text_only`` and ``other_image`` higher; Tight
    Inversion's reconstruction gain comes from that gap (a straighter inversion path at high noise).
    The adapter scale is left at 0 afterwards."""
    import torch

    from tight_pipeline.method import conditioning, inversion

    prediction_type = pipe.scheduler.config.prediction_type
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(z0)
    rows = []
    for t in timesteps:
        alpha = float(pipe.scheduler.alphas_cumprod[t])
        xt = alpha**0.5 * z0 + (1 - alpha) ** 0.5 * noise
        row = {"timestep": int(t)}
        for label, scale, embeds in (("text_only", 0.0, image_embeds), ("own_image", 1.0, image_embeds),
                                     ("other_image", 1.0, image_embeds.roll(1, 0))):
            conditioning.set_adapter_scale(pipe, scale)
            out = conditioning.predict_noise(pipe, xt, torch.tensor(t), text, embeds)
            x0, _ = inversion.split_prediction(out, xt, alpha, prediction_type)
            row[label] = round(float((x0 - z0).pow(2).mean()), 5)
        rows.append(row)
    conditioning.set_adapter_scale(pipe, 0.0)
    return rows


def ridge_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             lambdas=(1e-1, 1e0, 1e1, 1e2, 1e3, 1e4)) -> float:
    """Held-out R^2 of a ridge regression (dual form: features may outnumber samples); the strength is chosen
    on the last quarter of the fit set, then refit on all of it. 1 = the features determine ``y`` linearly,
    <= 0 = they tell nothing about it."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit, x_test = (x_fit - mean) / std, (x_test - mean) / std

    def fit_predict(xa, ya, xb, lam):
        a = np.linalg.solve(xa @ xa.T + lam * np.eye(len(xa)), ya - ya.mean())
        return xb @ (xa.T @ a) + ya.mean()

    cut = len(x_fit) * 3 // 4
    val_err = [float(((fit_predict(x_fit[:cut], y_fit[:cut], x_fit[cut:], lam) - y_fit[cut:]) ** 2).mean())
               for lam in lambdas]
    pred = fit_predict(x_fit, y_fit, x_test, lambdas[int(np.argmin(val_err))])
    return float(1 - ((pred - y_test) ** 2).mean() / y_test.var())


def token_probe(pipe, seed: int = 0, fit: int = 768, test: int = 256) -> list[dict]:
    """What the image path carries about a shot beyond its caption: held-out R^2 of ridge probes for the
    product's position (``dx``) and size (``scale``), neither of which a caption states, from (a) the image
    encoder's hidden states that feed the adapter and (b) the adapter's image tokens (after the Resampler)
    that the UNet's image attention reads. Fitted on training shots, tested on held-out ones. Where (a) is
    high and (b) low, the Resampler drops what the encoder saw."""
    import torch

    device, dtype = pipe.image_encoder.device, pipe.image_encoder.dtype

    def features(specs):
        states, tokens = [], []
        with torch.no_grad():
            for lo in range(0, len(specs), 128):
                images = [render_product(spec).image for spec in specs[lo : lo + 128]]
                # what ``prepare_ip_adapter_image_embeds`` computes for an IP-Adapter Plus, batched
                pixels = pipe.feature_extractor(images=images, return_tensors="pt").pixel_values.to(device, dtype)
                hidden = pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
                states.append(hidden.flatten(1).float().cpu().numpy())
                tokens.append(pipe.unet.encoder_hid_proj([hidden[:, None]])[0].flatten(1).float().cpu().numpy())
        return np.concatenate(states), np.concatenate(tokens)

    fit_specs = [ProductSpec.sample(seed, i) for i in range(fit)]
    test_specs = [ProductSpec.sample(seed + HELDOUT_SEED_OFFSET, i) for i in range(test)]
    (s_fit, t_fit), (s_test, t_test) = features(fit_specs), features(test_specs)
    rows = []
    for target in ("dx", "scale"):
        y_fit = np.array([getattr(s, target) for s in fit_specs])
        y_test = np.array([getattr(s, target) for s in test_specs])
        rows.append({"target": target,
                     "encoder_states_r2": round(ridge_r2(s_fit, y_fit, s_test, y_test), 3),
                     "adapter_tokens_r2": round(ridge_r2(t_fit, y_fit, t_test, y_test), 3)})
    return rows
