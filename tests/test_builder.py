"""The builder: input forms and sizes, pruning, torch.export, torchvision detectors, the ASPP op."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from fixed_necks import FIXED_NECKS
from nas.genotype import Genotype, GenotypeError, Node
from nas.nets.backbone import BackboneWithNeck, resnet_body
from nas.nets.builder import build_neck
from nas.nets.ops import ASPP, post_op
from nas.proxy.profile import count_parameters, neck_inputs

# The necks with a genotype twin (AugFPN and RFP have none).
TWINS = [name for name, neck in FIXED_NECKS.items() if neck.make_genotype is not None]

WIDTHS = (32, 64, 128)


def test_dict_and_list_inputs_agree() -> None:
    neck = FIXED_NECKS["nasfpn"].build_twin(WIDTHS, 16, repeats=1).eval()
    feats = neck_inputs(WIDTHS, 64)
    with torch.no_grad():
        from_list = neck(feats)
        from_dict = neck(OrderedDict(zip(["C3", "C4", "C5"], feats)))
    assert list(from_list) == ["P3", "P4", "P5", "P6", "P7"]
    for a, b in zip(from_list.values(), from_dict.values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("size", [(128, 128), (100, 76), (33, 200)])
def test_any_ceil_halving_sizes_work(size: tuple[int, int]) -> None:
    h, w = size
    feats = [torch.randn(1, c, -(-h // 2**k), -(-w // 2**k)) for k, c in zip((3, 4, 5), WIDTHS)]
    for name in ("fpn", "panet", "bifpn", "nasfpn"):
        out = FIXED_NECKS[name].build_twin(WIDTHS, 16, repeats=1).eval()(feats)
        for level, p in zip(range(3, 8), out.values()):
            assert p.shape == (1, 16, -(-h // 2**level), -(-w // 2**level)), (name, level)


def test_inconsistent_sizes_raise_clear_error() -> None:
    feats = [torch.randn(1, 32, 16, 16), torch.randn(1, 64, 9, 8), torch.randn(1, 128, 4, 4)]
    with pytest.raises(ValueError, match="C4 is 9x8 but C3 is 16x16"):
        FIXED_NECKS["fpn"].build_twin(WIDTHS, 16)(feats)
    with pytest.raises(ValueError, match="3 feature maps, got 2"):
        FIXED_NECKS["fpn"].build_twin(WIDTHS, 16)(feats[:2])


def test_nodes_reaching_no_output_are_not_built() -> None:
    fpn = FIXED_NECKS["fpn"].genotype
    dead = Node(level=5, inputs=(2,), post="conv")  # a 1x1 + 3x3 conv nobody reads
    with_dead = Genotype.create(list(fpn.nodes) + [dead], outputs=fpn.outputs)
    assert count_parameters(build_neck(with_dead, WIDTHS, 16, norm=None)) == count_parameters(
        build_neck(fpn, WIDTHS, 16, norm=None)
    )


def test_repeats_stack_cells() -> None:
    genotype = FIXED_NECKS["nasfpn"].genotype
    one, three = (count_parameters(build_neck(genotype, WIDTHS, 16, repeats=r)) for r in (1, 3))
    # At uniform widths there are no projections and P6/P7 are max-pools: one cell's parameters.
    per_cell = count_parameters(build_neck(genotype, (16, 16, 16), 16, repeats=1))
    assert three - one == 2 * per_cell


@pytest.mark.parametrize("name", ["nasfpn", "bifpn", "panet"])
def test_torch_export_traces_and_matches(name: str) -> None:
    neck = FIXED_NECKS[name].build_twin(WIDTHS, 16, repeats=2).eval()
    feats = neck_inputs(WIDTHS, 128)
    program = torch.export.export(neck, (feats,))
    with torch.no_grad():
        expected = neck(feats)
        got = program.module()(feats)
    for e, g in zip(expected.values(), got.values()):
        torch.testing.assert_close(g, e)


def _detector(kind: str, neck_name: str, image_size: int) -> torch.nn.Module:
    neck = FIXED_NECKS[neck_name].build_twin((128, 256, 512), 32, repeats=1)
    backbone = BackboneWithNeck(resnet_body("resnet18"), neck)
    sizes = tuple((s,) for s in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    common = dict(min_size=image_size, max_size=image_size)
    if kind == "retinanet":
        return RetinaNet(backbone, num_classes=3, anchor_generator=anchors, **common)
    if kind == "fcos":
        return FCOS(backbone, num_classes=3, **common)
    roi_pool = MultiScaleRoIAlign(["P3", "P4", "P5", "P6"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=3, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, **common)


def _targets(image_size: int) -> tuple[list[torch.Tensor], list[dict]]:
    images = [torch.rand(3, image_size, image_size) for _ in range(2)]
    s = image_size
    targets = [
        {"boxes": torch.tensor([[0.1 * s, 0.1 * s, 0.5 * s, 0.6 * s]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[0.3 * s, 0.2 * s, 0.9 * s, 0.5 * s], [0.0, 0.0, 8.0, 8.0]]),
            "labels": torch.tensor([2, 1]),
        },
    ]
    return images, targets


@pytest.mark.parametrize("image_size", [128, 160])
@pytest.mark.parametrize("name", TWINS)
def test_every_neck_trains_a_step_in_retinanet(name: str, image_size: int) -> None:
    torch.manual_seed(0)
    model = _detector("retinanet", name, image_size).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, targets = _targets(image_size)
    neck_params = [p for p in model.backbone.neck.parameters()]
    before = [p.detach().clone() for p in neck_params]
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, neck_params)), "the neck did not learn"


@pytest.mark.parametrize("kind", ["fcos", "fasterrcnn"])
def test_neck_drops_into_fcos_and_faster_rcnn(kind: str) -> None:
    torch.manual_seed(0)
    model = _detector(kind, "bifpn", 128).train()
    images, targets = _targets(128)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and "boxes" in detections[0]


def test_only_the_extra_levels_in_use_are_built() -> None:
    # P7 straight from C5 and no node reading P6: the P6 projection must not be built.
    nodes = [Node(level=level, inputs=(min(level - 3, 2),), post="conv") for level in (3, 4, 5)]
    nodes += [Node(level=6, inputs=(7,)), Node(level=7, inputs=(4,))]
    extra = [Node(level=6, inputs=(2,)), Node(level=7, inputs=(2,), down="max")]
    neck = build_neck(Genotype.create(nodes, [5, 6, 7, 8, 9], extra), WIDTHS, 16, norm=None)
    assert list(neck.extra_levels) == ["4"]
    out = neck.eval()(neck_inputs(WIDTHS, 128))
    assert out["P7"].shape[-1] == 1


def test_aspp_branches_see_their_dilations_and_the_whole_map() -> None:
    """An impulse through all-ones weights: the 1x1 branch answers at the impulse, the dilated
    branches on their 3x3 grids of spacing 3 and 6, the pooling branch everywhere alike."""
    aspp = ASPP(1, 8, norm=None)
    with torch.no_grad():
        for name, p in aspp.named_parameters():
            p.fill_(1.0 if name.endswith("weight") else 0.0)
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    out = aspp(x)
    assert out.shape == (1, 8, 21, 21)
    for k, spacing in enumerate((0, 3, 6)):  # two channels a branch
        offsets = (0,) if spacing == 0 else (-spacing, 0, spacing)
        support = {(10 + dy, 10 + dx) for dy in offsets for dx in offsets}
        for channel in (2 * k, 2 * k + 1):
            assert {tuple(i) for i in out[0, channel].nonzero().tolist()} == support, (k, channel)
    torch.testing.assert_close(out[0, 6:], torch.full((2, 21, 21), 1 / 21**2))


@pytest.mark.parametrize("norm", ["bn", "gn", None])
def test_aspp_post_op_keeps_the_width_and_every_branch_learns(norm: str | None) -> None:
    torch.manual_seed(0)
    aspp = post_op("aspp", 30, norm)  # 30 = 7 + 7 + 8 + 8: a width that is no multiple of 4
    assert isinstance(aspp, ASPP)
    x = torch.randn(2, 30, 9, 7)
    out = aspp(x)
    assert out.shape == (2, 30, 9, 7)
    out.square().sum().backward()
    convs = [branch[0] for branch in aspp.branches] + [aspp.pool[1]]
    assert [c.out_channels for c in convs] == [7, 7, 8, 8]
    assert [c.dilation for c in convs] == [(1, 1), (3, 3), (6, 6), (1, 1)]
    for conv in convs:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_a_genotype_with_aspp_builds_and_an_unknown_post_names_the_node() -> None:
    fpn = FIXED_NECKS["fpn"].genotype
    nodes = [
        Node(n.level, n.inputs, n.combine, "aspp" if n.post == "conv" else n.post, n.up, n.down)
        for n in fpn.nodes
    ]
    neck = build_neck(Genotype.create(nodes, fpn.outputs), WIDTHS, 16, norm="bn").eval()
    assert sum(isinstance(m, ASPP) for m in neck.modules()) == 3  # FPN's three output convs
    with torch.no_grad():
        out = neck(neck_inputs(WIDTHS, 64))
    assert [tuple(p.shape) for p in out.values()] == [(1, 16, s, s) for s in (8, 4, 2, 1, 1)]
    nodes[5] = Node(level=3, inputs=(9,), post="apsp")
    with pytest.raises(
        GenotypeError, match=r"^node 10: unknown post op 'apsp' \(known: .*swish_sepconv, aspp\)$"
    ):
        Genotype.create(nodes, fpn.outputs)
