"""§3.4 losses (Eq. 4 focal L2, focal CE of [13]) and the base -> focal loss schedule."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from ahnet import CheckpointError, ConfigError, InputShapeError
from ahnet.losses import (LossSchedule, cross_entropy_loss, soft_dice_loss, focal_cross_entropy_loss, focal_l2_loss,
                          l2_loss)


# -------------------------------------------------------------------------------------- L2
def test_l2_hand_computed():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]]]])
    assert l2_loss(pred, target).item() == pytest.approx((1 + 0 + 4 + 9) / 4)
    weight = torch.tensor([[[[2.0, 1.0], [0.0, 1.0]]]])
    assert l2_loss(pred, target, weight).item() == pytest.approx((2 + 0 + 0 + 9) / 4)
    assert l2_loss(pred, target, torch.tensor(3.0)).item() == pytest.approx(3 * 14 / 4)


def test_l2_rejects_bad_shapes():
    with pytest.raises(InputShapeError, match="same shape"):
        l2_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(InputShapeError, match="broadcast"):
        l2_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.ones(3))


# -------------------------------------------------------------------------------- focal L2
def test_focal_l2_hand_computed():
    pred = torch.tensor([0.0, 0.5, 1.0, 3.0])
    target = torch.zeros(4)
    d = [0.0, 0.25, 1.0, 9.0]
    for gamma, d_max in [(2.0, 1.0), (1.0, 4.0), (0.5, 0.25)]:
        expected = sum((math.log1p(x) / math.log1p(d_max)) ** gamma * x for x in d) / 4
        assert focal_l2_loss(pred, target, gamma, d_max).item() == pytest.approx(expected, rel=1e-6)


def test_focal_l2_factor_monotone_zero_and_one():
    d = torch.linspace(0, 4, 401, dtype=torch.float64)
    pred = d.sqrt()
    for gamma, d_max in [(2.0, 1.0), (0.5, 2.0), (3.0, 0.5)]:
        per_voxel = torch.stack([focal_l2_loss(p.view(1), torch.zeros(1, dtype=torch.float64), gamma, d_max)
                                 for p in pred])
        factor = per_voxel[1:] / d[1:]
        assert per_voxel[0].item() == 0.0
        assert (factor[1:] > factor[:-1]).all()  # down-weights easy (small-error) voxels
        one = focal_l2_loss(torch.tensor([math.sqrt(d_max)], dtype=torch.float64),
                            torch.zeros(1, dtype=torch.float64), gamma, d_max)
        assert one.item() == pytest.approx(d_max, rel=1e-12)  # factor 1 at D = d_max


def test_focal_l2_gamma0_is_l2_exactly():
    pred, target = torch.randn(2, 1, 5, 6, 3), torch.rand(2, 1, 5, 6, 3)
    assert torch.equal(focal_l2_loss(pred, target, gamma=0.0), l2_loss(pred, target))


def test_focal_l2_factor_not_detached_and_grad_finite():
    target = torch.zeros(3, dtype=torch.float64)
    pred = torch.tensor([0.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    focal_l2_loss(pred, target, gamma=2.0).backward()
    # d/dp mean((ln(1+p^2) / ln 2)^2 p^2), factor included: (2 l 2p/(1+p^2) p^2 + l^2 2p) / (3 ln(2)^2)
    p = pred.detach()
    l = torch.log1p(p * p)
    expected = (2 * l * 2 * p / (1 + p * p) * p * p + l * l * 2 * p) / (3 * math.log(2) ** 2)
    assert torch.allclose(pred.grad, expected)
    pred.grad = None
    focal_l2_loss(pred, target, gamma=0.5).backward()  # pow'(0) is infinite for gamma < 1
    assert torch.isfinite(pred.grad).all() and pred.grad[0] == 0


@pytest.mark.parametrize("kwargs", [{"gamma": -1.0}, {"d_max": 0.0}, {"d_max": -2.0},
                                    {"gamma": float("nan")}, {"gamma": True}])
def test_focal_l2_rejects_bad_config(kwargs):
    with pytest.raises(ConfigError):
        focal_l2_loss(torch.zeros(2), torch.zeros(2), **kwargs)


def test_focal_l2_rejects_shape_mismatch():
    with pytest.raises(InputShapeError, match="same shape"):
        focal_l2_loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2))


# ----------------------------------------------------------------------------- cross-entropy
LOGITS = torch.tensor([[[2.0, 0.0], [1.0, -1.0], [0.0, 3.0]]])  # (N=1, C=3, X=2)
TARGET = torch.tensor([[0, 2]])


def _log_softmax_manual(logits):
    return [[logits[0, c, x] - torch.log(torch.exp(logits[0, :, x]).sum()) for x in range(2)] for c in range(3)]


def test_cross_entropy_hand_computed():
    ls = _log_softmax_manual(LOGITS)
    nll = [-ls[0][0], -ls[2][1]]
    assert cross_entropy_loss(LOGITS, TARGET).item() == pytest.approx(float(sum(nll) / 2), rel=1e-6)
    w = [0.5, 1.0, 3.0]
    expected = (0.5 * nll[0] + 3.0 * nll[1]) / (0.5 + 3.0)
    assert cross_entropy_loss(LOGITS, TARGET, class_weights=w).item() == pytest.approx(float(expected), rel=1e-6)


def test_focal_ce_hand_computed():
    ls = _log_softmax_manual(LOGITS)
    log_pt = [ls[0][0], ls[2][1]]
    for gamma, alpha in [(2.0, None), (1.5, [0.25, 1.0, 0.75])]:
        a = [1.0, 1.0] if alpha is None else [alpha[0], alpha[2]]
        expected = sum(-a[i] * (1 - math.exp(log_pt[i])) ** gamma * float(log_pt[i]) for i in range(2)) / 2
        got = focal_cross_entropy_loss(LOGITS, TARGET, gamma=gamma, alpha=alpha).item()
        assert got == pytest.approx(expected, rel=1e-6)


def test_focal_ce_against_direct_formula_3d():
    logits = torch.randn(2, 4, 5, 6, 3, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 5, 6, 3))
    alpha = [0.1, 0.2, 0.3, 0.4]
    p = torch.softmax(logits, 1)
    pt = p.gather(1, target.unsqueeze(1)).squeeze(1)
    direct = (-torch.tensor(alpha, dtype=torch.float64)[target] * (1 - pt) ** 2 * torch.log(pt)).mean()
    assert torch.allclose(focal_cross_entropy_loss(logits, target, 2.0, alpha), direct)


def test_focal_ce_gamma0_is_cross_entropy():
    logits = torch.randn(2, 3, 4, 5, 2)
    target = torch.randint(0, 3, (2, 4, 5, 2))
    assert torch.allclose(focal_cross_entropy_loss(logits, target, gamma=0.0),
                          cross_entropy_loss(logits, target), rtol=1e-6, atol=0)
    assert torch.allclose(cross_entropy_loss(logits, target), F.cross_entropy(logits, target))


def test_focal_ce_matches_monai_times_classes():
    """MONAI's softmax FocalLoss averages over the one-hot class axis too: ours = C * MONAI's."""
    from monai.losses import FocalLoss

    logits = torch.randn(2, 3, 6, 5, 4)
    target = torch.randint(0, 3, (2, 6, 5, 4))
    for gamma, alpha in [(2.0, None), (0.5, [0.2, 0.5, 0.3])]:
        monai = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=alpha)(logits, target.unsqueeze(1))
        ours = focal_cross_entropy_loss(logits, target, gamma=gamma, alpha=alpha)
        assert torch.allclose(ours, 3 * monai, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_ce_losses_finite_at_extreme_logits(gamma):
    logits = torch.tensor([[[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]], requires_grad=True)  # (1, 2, 3)
    target = torch.tensor([[0, 0, 1]])  # right, confidently wrong, undecided
    loss = focal_cross_entropy_loss(logits, target, gamma=gamma, alpha=[0.3, 0.7])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # the confidently wrong voxel costs ~2e4 (times alpha 0.3), the right one nothing
    assert loss.item() == pytest.approx((0.3 * 2e4 + 0.7 * (0.5 ** gamma) * math.log(2)) / 3, rel=1e-5)
    assert logits.grad[0, :, 0].abs().max() == 0
    logits.grad = None
    cross_entropy_loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


def test_ce_rejects_bad_targets():
    logits = torch.zeros(1, 3, 4, 4)
    with pytest.raises(InputShapeError, match=r"\[0, 3\)"):
        focal_cross_entropy_loss(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(InputShapeError, match=r"\[0, 3\)"):
        cross_entropy_loss(logits, torch.full((1, 4, 4), -1))
    with pytest.raises(InputShapeError, match="integer"):
        cross_entropy_loss(logits, torch.zeros(1, 4, 4))
    with pytest.raises(InputShapeError, match=r"\(N, \.\.\.\)"):
        focal_cross_entropy_loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="3 classes"):
        focal_cross_entropy_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), alpha=[1.0, 1.0])
    with pytest.raises(ConfigError):
        focal_cross_entropy_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), gamma=-0.5)


# ---------------------------------------------------------------------------------- schedule
def test_schedule_switches_after_exactly_patience_flat_epochs():
    s = LossSchedule("l2", patience=3, threshold=0.01)
    losses = [1.0, 0.8, 0.6, 0.599, 0.6, 0.5995, 0.59]
    switched = [s.end_epoch(e, v) for e, v in enumerate(losses[:6])]
    assert switched == [False, False, False, False, False, True]
    assert s.phase == "focal" and s.switched_at == 5
    assert s.end_epoch(6, 10.0) is False and s.end_epoch(7, 10.0) is False and s.end_epoch(8, 10.0) is False
    assert s.switched_at == 5  # no second switch


def test_schedule_flat_count_resets_on_improvement():
    s = LossSchedule("l2", patience=2, threshold=0.01)
    for e, v in enumerate([1.0, 0.999, 0.9, 0.899, 0.8, 0.7]):
        assert s.end_epoch(e, v) is False
    assert s.end_epoch(6, 0.7) is False and s.end_epoch(7, 0.7) is True


def test_schedule_does_not_switch_while_improving():
    s = LossSchedule("ce", patience=1, threshold=0.01)
    assert not any(s.end_epoch(e, 0.95 ** e) for e in range(50))
    assert s.phase == "base" and s.switched_at is None


def test_schedule_switch_epoch():
    s = LossSchedule("l2", switch_epoch=4, patience=1)
    assert [s.end_epoch(e, 1.0) for e in range(7)] == [False, False, False, False, True, False, False]
    assert s.switched_at == 4 and s.phase == "focal"


def test_schedule_never_switches_without_focal():
    s = LossSchedule("l2", focal=False, patience=1, switch_epoch=2)
    assert not any(s.end_epoch(e, 1.0) for e in range(10))
    assert s.phase == "base"


def test_schedule_calls_the_phase_loss():
    pred, target = torch.tensor([0.0, 0.5, 2.0]), torch.zeros(3)
    s = LossSchedule("l2", gamma=2.0, d_max=4.0, switch_epoch=0)
    assert torch.equal(s(pred, target), l2_loss(pred, target))
    s.end_epoch(0, 1.0)
    assert torch.equal(s(pred, target), focal_l2_loss(pred, target, 2.0, 4.0))
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    s = LossSchedule("ce", gamma=1.0, alpha=[0.2, 0.3, 0.5], switch_epoch=0)
    assert torch.equal(s(logits, labels), cross_entropy_loss(logits, labels))
    s.end_epoch(0, 1.0)
    assert torch.equal(s(logits, labels), focal_cross_entropy_loss(logits, labels, 1.0, [0.2, 0.3, 0.5]))


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save({"loss_schedule": state}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["loss_schedule"]


def test_schedule_state_dict_roundtrip_preserves_behaviour():
    a = LossSchedule("ce", gamma=1.5, patience=3, threshold=0.05, alpha=[0.25, 0.75])
    for e, v in enumerate([1.0, 0.9, 0.89, 0.88]):  # two flat epochs so far
        a.end_epoch(e, v)
    b = LossSchedule("l2")
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert b.state_dict() == a.state_dict()
    assert b.end_epoch(4, 0.88) is True and b.switched_at == 4  # the third flat epoch
    logits, labels = torch.randn(1, 2, 3, 3), torch.randint(0, 2, (1, 3, 3))
    assert torch.equal(b(logits, labels), focal_cross_entropy_loss(logits, labels, 1.5, [0.25, 0.75]))
    c = LossSchedule("ce")
    c.load_state_dict(_roundtrip(b.state_dict()))
    assert c.phase == "focal" and c.switched_at == 4 and c.end_epoch(5, 0.1) is False


def test_schedule_rejects_bad_config_and_state():
    for kwargs in [{"base": "dice"}, {"base": "l2", "patience": 0}, {"base": "l2", "threshold": -0.1},
                   {"base": "l2", "switch_epoch": -1}, {"base": "l2", "alpha": [1.0, 2.0]},
                   {"base": "ce", "gamma": -1}, {"base": "l2", "d_max": 0}]:
        with pytest.raises(ConfigError):
            LossSchedule(**kwargs)
    state = LossSchedule("l2").state_dict()
    with pytest.raises(CheckpointError, match="lacks"):
        LossSchedule("l2").load_state_dict({k: v for k, v in state.items() if k != "phase"})
    with pytest.raises(CheckpointError):
        LossSchedule("l2").load_state_dict(dict(state, base="dice"))


def test_soft_dice_hand_computed_over_the_batch_and_foreground_only():
    # two classes, probabilities p = softmax: logits (0, log 3) give p1 = 0.75 everywhere
    logits = torch.zeros(2, 2, 2, 1)
    logits[:, 1] = math.log(3.0)
    target = torch.tensor([[[1], [0]], [[0], [0]]])  # one foreground voxel of four, in the first patch
    overlap, total = 0.75, 4 * 0.75 + 1
    assert torch.allclose(soft_dice_loss(logits, target, smooth=0.0), torch.tensor(1 - 2 * overlap / total))
    perfect = F.one_hot(target, 2).movedim(-1, 1).float() * 40
    assert soft_dice_loss(perfect, target).item() < 1e-6
    # background is not scored: all background predicted right and no foreground found is the worst
    none = torch.zeros_like(target)
    all_background = F.one_hot(none, 2).movedim(-1, 1).float() * 40
    assert soft_dice_loss(all_background, none).item() < 1e-6  # nothing to find, nothing found
    assert soft_dice_loss(all_background, target).item() > 0.99  # the foreground voxel missed


def test_soft_dice_pushes_uncertain_foreground_over_the_threshold():
    """At p = 0.5 on a foreground voxel the Dice gradient still raises it (cross-entropy's does too,
    but Dice's does not fade with the share of foreground in the patch)."""
    logits = torch.zeros(1, 2, 8, 8, 2, requires_grad=True)
    target = torch.zeros(1, 8, 8, 2, dtype=torch.long)
    target[0, :2] = 1
    soft_dice_loss(logits, target).backward()
    g = logits.grad[0, 1]
    assert (g[:2] < 0).all() and (g[2:] > 0).all()


def test_schedule_adds_dice_to_both_phases_and_old_states_load():
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    s = LossSchedule("ce", dice=True, switch_epoch=0)
    assert torch.allclose(s(logits, labels), cross_entropy_loss(logits, labels) + soft_dice_loss(logits, labels))
    s.end_epoch(0, 1.0)
    assert torch.allclose(s(logits, labels), focal_cross_entropy_loss(logits, labels) + soft_dice_loss(logits, labels))
    restored = LossSchedule("ce")
    restored.load_state_dict(_roundtrip(s.state_dict()))
    assert restored.dice and restored.phase == "focal"
    old = {k: v for k, v in LossSchedule("ce").state_dict().items() if k != "dice"}  # written before the field
    restored.load_state_dict(_roundtrip(old))
    assert restored.dice is False
    with pytest.raises(ConfigError, match="dice"):
        LossSchedule("l2", dice=True)
