"""Hand-written necks against their references and their genotype twins."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from helpers import copy_weights_in_order, randomize_norm_stats
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from fixed_necks import FIXED_NECKS
from nas.proxy.profile import count_parameters, neck_inputs

WIDTHS = (64, 128, 256)


def _outputs(module: torch.nn.Module, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(module.eval()(list(feats)).values())


@pytest.mark.parametrize(
    ("name", "extra"), [("fpn", LastLevelP6P7(32, 32)), ("fpn_maxpool", LastLevelMaxPool())]
)
def test_fpn_equals_torchvision(name: str, extra: torch.nn.Module) -> None:
    torch.manual_seed(0)
    reference = FeaturePyramidNetwork(list(WIDTHS), 32, extra_blocks=extra)
    ours = FIXED_NECKS[name].build(WIDTHS, 32)
    copy_weights_in_order(reference, ours)
    feats = neck_inputs(WIDTHS, 128, batch=2)
    with torch.no_grad():
        expected = list(reference.eval()(OrderedDict(zip(["0", "1", "2"], feats))).values())
    got = _outputs(ours, feats)
    # torchvision's LastLevelMaxPool makes only P6; our P7 subsamples it once more.
    assert len(expected) == (5 if name == "fpn" else 4)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
    assert got[4].shape[-1] == 1


def _effdet_bifpn() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet import get_efficientdet_config
        from effdet.efficientdet import BiFpn
    config = get_efficientdet_config("efficientdet_d0")
    return BiFpn(config, [dict(num_chs=c, reduction=r) for c, r in ((40, 8), (112, 16), (320, 32))])


def test_bifpn_d0_matches_effdet() -> None:
    ours = FIXED_NECKS["bifpn"].build((40, 112, 320), 64)
    twin = FIXED_NECKS["bifpn"].build_twin((40, 112, 320), 64)
    assert count_parameters(ours) == count_parameters(twin) == 194_361
    reference = _effdet_bifpn()
    assert count_parameters(reference) == 194_361
    randomize_norm_stats(reference)
    copy_weights_in_order(reference, ours)
    for m in ours.modules():  # effdet keeps TF's BN epsilon
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    feats = neck_inputs((40, 112, 320), 512, batch=1)  # effdet fixes sizes from its 512 config
    with torch.no_grad():
        expected = reference.eval()(list(feats))  # effdet appends to the list it is given
    for e, g in zip(expected, _outputs(ours, feats)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name", [name for name, neck in FIXED_NECKS.items() if neck.make_genotype is not None]
)
def test_twin_has_same_parameters_and_outputs(name: str) -> None:
    neck = FIXED_NECKS[name]
    repeats = 2 if neck.repeats > 1 else None
    torch.manual_seed(0)
    hand = neck.build(WIDTHS, 32, repeats=repeats)
    twin = neck.build_twin(WIDTHS, 32, repeats=repeats)
    assert count_parameters(hand) == count_parameters(twin)
    randomize_norm_stats(hand)
    copy_weights_in_order(hand, twin)
    feats = neck_inputs(WIDTHS, 160, batch=2)  # 160: P6 and P7 are ceil-halvings (3x3, 2x2)
    for h, t in zip(_outputs(hand, feats), _outputs(twin, feats)):
        assert h.shape == t.shape
        torch.testing.assert_close(t, h, atol=1e-5, rtol=1e-5)
