"""Intervals by bootstrap over test cases and seeds (ahnet.evaluation.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from ahnet.errors import ConfigError
from ahnet.evaluation import Detection, case_findings, evaluate_arrays, froc
from ahnet.evaluation.bootstrap import Bootstrap, Interval, dice_global, froc_tpr, mean_per_case, verdict

pytestmark = pytest.mark.timeout(60)


def _findings(detections, boxes):
    """case_findings as the experiments read it back from result.json (None: missed)."""
    return [(np.asarray(f["fp"], float), np.array([-np.inf if s is None else s for s in f["lesions"]], float))
            for f in case_findings(detections, boxes).values()]


def test_interval_covers_the_known_mean_at_the_nominal_rate():
    # 200 synthetic test sets of 30 cases, scores ~ N(0.6, 0.1): the 95 % interval must hold 0.6 in
    # about 95 % of them (a percentile bootstrap of a mean undercovers a little at n = 30).
    rng = np.random.default_rng(1)
    boot = Bootstrap(seeds=1, cases=30, resamples=500)
    hits = 0
    for _ in range(200):
        est = boot.estimate(mean_per_case, [rng.normal(0.6, 0.1, 30)])
        assert est.interval.low <= est.interval.mean <= est.interval.high
        hits += est.interval.low <= 0.6 <= est.interval.high
    assert 0.88 <= hits / 200 <= 0.99


def test_seeds_widen_the_interval():
    # Same cases, three trainings that disagree: the seed level must show their spread.
    rng = np.random.default_rng(2)
    cases = rng.normal(0.6, 0.05, 20)
    boot = Bootstrap(seeds=3, cases=20)
    one = Bootstrap(seeds=1, cases=20).estimate(mean_per_case, [cases]).interval
    three = boot.estimate(mean_per_case, [cases - 0.1, cases, cases + 0.1]).interval
    assert three.mean == pytest.approx(one.mean)
    assert three.high - three.low > 2 * (one.high - one.low)


def test_identical_rows_difference_holds_zero_and_is_not_shown():
    rng = np.random.default_rng(3)
    counts = [rng.integers(0, 100, (8, 3)) for _ in range(2)]
    boot = Bootstrap(seeds=2, cases=8)
    a, b = boot.estimate(dice_global, counts), boot.estimate(dice_global, counts)
    diff = boot.difference(a, b)
    assert diff.low <= 0 <= diff.high and verdict(diff) == "not shown"
    assert a.interval.overlaps(b.interval)


def test_clearly_better_row_holds_and_the_reverse_does_not():
    rng = np.random.default_rng(4)
    worse = rng.uniform(0.3, 0.5, 12)
    better = worse + rng.uniform(0.05, 0.1, 12)  # better on every case: paired, the difference is clear
    boot = Bootstrap(seeds=1, cases=12)
    hi, lo = boot.estimate(mean_per_case, [better]), boot.estimate(mean_per_case, [worse])
    assert verdict(boot.difference(hi, lo)) == "holds"
    assert verdict(boot.difference(lo, hi)) == "does not hold"
    assert boot.difference(hi, lo).low > 0.04


def test_pairing_finds_what_overlapping_intervals_hide():
    # Cases vary a lot, the rows differ a little but always the same way: the rows' own intervals
    # overlap, the paired difference's does not hold 0.
    rng = np.random.default_rng(5)
    worse = rng.uniform(0.1, 0.9, 10)
    boot = Bootstrap(seeds=1, cases=10)
    hi, lo = boot.estimate(mean_per_case, [worse + 0.02]), boot.estimate(mean_per_case, [worse])
    assert hi.interval.overlaps(lo.interval)
    assert verdict(boot.difference(hi, lo)) == "holds"


def test_dice_global_from_counts_equals_plain_dice_global():
    rng = np.random.default_rng(6)
    cases = [(f"c{i}", rng.integers(0, 3, (6, 6, 4)), rng.integers(0, 3, (6, 6, 4))) for i in range(5)]
    plain = evaluate_arrays(cases, surface_tolerance_mm=None).to_dict()
    for cls in ("liver", "lesion"):
        counts = np.array([[plain["counts"][c][cls][k] for k in ("tp", "fp", "fn")] for c, _, _ in cases])
        assert dice_global(counts, np.ones((1, 5)))[0] == pytest.approx(plain["dice_global"][cls], abs=1e-12)
        dice = np.array([plain["cases"][c][cls] for c, _, _ in cases])
        assert mean_per_case(dice, np.ones((1, 5)))[0] == pytest.approx(plain["dice_per_case"][cls], abs=1e-12)
        # a case drawn twice weighs as that case given twice
        twice = evaluate_arrays(cases + [("again", *cases[2][1:])], surface_tolerance_mm=None).dice_global[cls]
        assert dice_global(counts, np.array([[1.0, 1, 2, 1, 1]]))[0] == pytest.approx(twice, abs=1e-12)
    assert dice_global(np.zeros((2, 3)), np.ones((1, 2)))[0] == 1.0  # empty everywhere, as dice_from_counts


WORKED_BOXES = {"a": [[0, 0, 0, 9, 9, 9], [5, 5, 5, 14, 14, 14]], "b": [[20, 20, 2, 29, 29, 5]], "n1": [], "n2": []}
WORKED_DETS = [Detection("a", 7, 7, 7, 0.9), Detection("a", 1, 1, 1, 0.8), Detection("n1", 3, 3, 3, 0.8),
               Detection("b", 40, 40, 4, 0.6), Detection("b", 25, 25, 3, 0.5), Detection("n2", 0, 0, 0, 0.5),
               Detection("a", 50, 50, 50, 0.3)]


def _random_detection_set(rng, volumes=6):
    boxes, dets = {}, []
    for v in range(volumes):
        case = f"v{v}"
        picks = rng.choice(40, rng.integers(0, 3), replace=False) * 10
        boxes[case] = [[int(x), int(x), 1, int(x) + 5, int(x) + 5, 4] for x in picks]
        for _ in range(rng.integers(0, 4)):  # false positives, mostly (random places)
            dets.append(Detection(case, int(rng.integers(0, 400)), int(rng.integers(0, 400)), int(rng.integers(0, 6)),
                                  float(rng.choice([0.2, 0.4, 0.5, 0.7, 0.9]))))  # ties on purpose
        for x0, *_ in boxes[case]:
            if rng.random() < 0.7:  # found, with some score
                dets.append(Detection(case, x0 + 2, x0 + 2, 2, float(rng.choice([0.4, 0.5, 0.8, 0.95]))))
    return dets, boxes


@pytest.mark.parametrize("rate", [0.01, 0.25, 0.5, 1.0, 2.0])
def test_froc_from_findings_equals_froc(rate):
    rng = np.random.default_rng(7)
    for dets, boxes in [(WORKED_DETS, WORKED_BOXES)] + [_random_detection_set(rng) for _ in range(20)]:
        expected = froc(dets, boxes, rates=(rate,)).froc[f"{rate:g}"]
        assert froc_tpr(_findings(dets, boxes), np.ones((1, len(boxes))), rate)[0] == pytest.approx(expected)


def test_froc_resample_counts_volumes_and_fp_rate_of_the_resample():
    rng = np.random.default_rng(8)
    for _ in range(10):
        dets, boxes = _random_detection_set(rng)
        weights = rng.multinomial(len(boxes), np.full(len(boxes), 1 / len(boxes)), size=5).astype(float)
        got = froc_tpr(_findings(dets, boxes), weights, 0.5)
        for w, value in zip(weights, got):
            # the resample written out: volume v given w[v] times under new names
            names = list(boxes)
            copies = {f"{c}#{k}": boxes[c] for c, n in zip(names, w) for k in range(int(n))}
            copied = [Detection(f"{d.case}#{k}", d.x, d.y, d.z, d.score)
                      for d in dets for k in range(int(w[names.index(d.case)]))]
            assert value == pytest.approx(froc(copied, copies, rates=(0.5,)).froc["0.5"])


def test_one_seed_one_case_gives_the_value_itself():
    est = Bootstrap(seeds=1, cases=1).estimate(mean_per_case, [np.array([0.7])])
    assert (est.interval.mean, est.interval.low, est.interval.high) == pytest.approx((0.7, 0.7, 0.7))


def test_draws_are_seeded_and_shared():
    a, b = Bootstrap(3, 7, resamples=50, seed=9), Bootstrap(3, 7, resamples=50, seed=9)
    assert np.array_equal(a.case_weights, b.case_weights) and np.array_equal(a.seed_weights, b.seed_weights)
    assert (a.case_weights.sum(axis=1) == 7).all() and (a.seed_weights.sum(axis=1) == 3).all()


def test_bad_arguments():
    with pytest.raises(ConfigError, match="seeds must be"):
        Bootstrap(0, 5)
    with pytest.raises(ConfigError, match="2 seed"):
        Bootstrap(3, 2).estimate(mean_per_case, [np.ones(2), np.ones(2)])


def test_interval_text():
    assert Interval(0.41, 0.3, 0.52).format() == "0.410 [0.300, 0.520]"
    assert Interval(0.06, -0.03, 0.15).format(sign=True) == "+0.060 [-0.030, 0.150]"
    assert not Interval(0.5, 0.4, 0.6).overlaps(Interval(0.2, 0.1, 0.39))
