"""Finding 2 of "Short Data, Long Context": positional signal reaches the logits.

Move the positions RoPE applies to the queries and/or keys of one layer (a constant shift or Gaussian noise)
and trace what changes downstream: the relative change of every residual stream and the KL between the clean
and the perturbed next-token distributions. A nonzero KL is positional information in the logits, the thing
logit distillation can hand to a student. Only the model's `Inspect` hooks move the positions, never a copy of
the forward pass. `python analyze.py perturb` runs this on checkpoints and draws it (viz.plots.plot_perturb).
"""
import torch

from data import to_device
from distill import forward_kl
from model import Inspect

REACHES_LOGITS_KL = 1e-6  # nats; our choice: a mean KL above this is a real change, not float rounding


def perturbed_positions(pos, kind, size, seed=0):
    """Position ids + a constant shift, or + Gaussian noise of std `size` (same draw for every layer)."""
    if kind == "shift":
        return pos.float() + size
    noise = torch.randn(pos.shape, generator=torch.Generator().manual_seed(seed))
    return pos.float() + size * noise.to(pos.device)


def relative_change(h_pert, h_clean):
    """||h_pert - h_clean|| / ||h_clean|| over the model dimension: (B, T)."""
    return (h_pert - h_clean).float().norm(dim=-1) / h_clean.float().norm(dim=-1).clamp_min(1e-12)


@torch.no_grad()
def perturbation_propagation(model, batch, layers, perturbations, target="q", device="cpu", seed=0):
    """For each layer l and (kind, size): relative change of residual streams 0..n_layer and KL at the logits.

    residuals[0] is the embedding, residuals[j] the stream after block j-1, so moving block l's
    RoPE positions leaves residuals[0..l] unchanged. Shifting q and k by the same constant is a
    no-op up to rounding (RoPE depends only on relative positions); noise is not.
    """
    x, _, pos, _, _ = to_device(batch, torch.device(device))
    clean = Inspect()
    logits = model(x, pos, inspect=clean)
    runs = []
    for layer in layers:
        for kind, size in perturbations:
            new = perturbed_positions(pos, kind, size, seed)
            probe = Inspect(q_positions={layer: new} if "q" in target else {},
                            k_positions={layer: new} if "k" in target else {})
            pert = model(x, pos, inspect=probe)
            change = torch.stack([relative_change(p, c).mean(0) for p, c in zip(probe.residuals, clean.residuals)])
            kl = forward_kl(pert.float(), logits.float()).clamp_min(0).mean(0)  # KL(clean || perturbed), (T,)
            runs.append({"layer": layer, "kind": kind, "size": size, "rel_change": change.mean(1).tolist(),
                         "rel_change_per_position": change.tolist(), "kl_mean": kl.mean().item(),
                         "kl_per_position": kl.tolist(), "reaches_logits": kl.mean().item() > REACHES_LOGITS_KL})
    return runs
