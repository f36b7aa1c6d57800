"""Test helpers shared by several test modules."""

from __future__ import annotations

from torch import nn


def copy_weights_in_order(src: nn.Module, dst: nn.Module) -> None:
    """Copies every parameter and buffer of ``src`` into ``dst``, matched by registration order.

    Hand-written necks, their genotype twins, torchvision's FPN and effdet's BiFPN all register
    per node: fusion weights, resampling, post op; a shape mismatch fails loudly.
    """
    src_items, dst_items = list(src.state_dict().items()), list(dst.state_dict().items())
    assert len(src_items) == len(dst_items), f"{len(src_items)} tensors vs {len(dst_items)}"
    state = {}
    for (src_key, value), (dst_key, target) in zip(src_items, dst_items):
        assert value.shape == target.shape, (
            f"{src_key} {tuple(value.shape)} vs {dst_key} {tuple(target.shape)}"
        )
        state[dst_key] = value
    dst.load_state_dict(state)


def randomize_norm_stats(module: nn.Module) -> None:
    """Gives BN layers non-trivial running stats and affine params, so eval outputs test them."""
    import torch

    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
