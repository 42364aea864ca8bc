"""Grounding scores (repsim.inference.grounding) on cases with a known answer, and the zoo.data perturbations."""

import itertools
import math

import numpy as np
import pytest
import torch

from repsim.inference import grounding
from zoo.data import StampedViews, add_shortcut, digits_augment, grayscale_augment, randomise_labels


def _triples_reference(s):
    """Brute-force conformity written from the definition (independent loop order)."""
    n = len(s)
    good = total = 0.0
    for i, j, k in itertools.permutations(range(n), 3):
        if abs(i - j) < abs(i - k):
            total += 1
            good += (s[i][j] > s[i][k]) + 0.5 * (s[i][j] == s[i][k])
    return good / total


def test_layer_monotonicity_perfect_and_reversed():
    n = 5
    s = np.array([[1 - abs(i - j) / n for j in range(n)] for i in range(n)])
    assert grounding.layer_monotonicity(s) == {"spearman": pytest.approx(1.0), "conformity": 1.0}
    # a distance with the same matrix is perfectly anti-monotone
    rev = grounding.layer_monotonicity(s, larger_is_more_similar=False)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["conformity"] == 0.0
    # a constant matrix: all ties, chance conformity, no correlation
    flat = grounding.layer_monotonicity(np.ones((4, 4)))
    assert flat["conformity"] == 0.5 and math.isnan(flat["spearman"])


def test_layer_monotonicity_matches_brute_force():
    gen = np.random.default_rng(0)
    for _ in range(5):
        s = gen.random((6, 6))
        assert grounding.layer_monotonicity(s)["conformity"] == pytest.approx(_triples_reference(s))


def test_layer_monotonicity_rejects_bad_input():
    with pytest.raises(ValueError, match="L >= 3"):
        grounding.layer_monotonicity(np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        grounding.layer_monotonicity(np.full((3, 3), np.nan))


def test_group_ordering_known_answers():
    gaps = np.array([0, 0, 0.5, 0.5, 1.0, 1.0])
    perfect = grounding.group_ordering(1 - gaps, gaps)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["auprc"] == pytest.approx(1.0)
    assert perfect["chance"] == pytest.approx(1 / 3)
    worst = grounding.group_ordering(1 - gaps, gaps, larger_is_more_similar=False)
    assert worst["spearman"] == pytest.approx(-1.0)
    # the two in-group pairs tie last: one threshold reaches recall 1 at precision 2/6
    assert worst["auprc"] == pytest.approx(2 / 6)
    # untied: positives ranked 1st and 4th -> AP = (1/1 + 2/4) / 2
    mixed = grounding.group_ordering([0.9, 0.6, 0.8, 0.7, 0.1, 0.2], gaps)
    assert mixed["auprc"] == pytest.approx((1 + 2 / 4) / 2)
    with pytest.raises(ValueError, match="same length"):
        grounding.group_ordering([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        grounding.group_ordering([1, 2, 3], [0, -1, 1])
    with pytest.raises(ValueError, match="NaN"):
        grounding.group_ordering([1, np.nan, 3], [0, 1, 1])


def test_shortcut_affinity_and_agreement():
    logits_a = torch.eye(4)
    logits_b = torch.eye(4)[[0, 1, 3, 2]]
    assert float(grounding.prediction_agreement(logits_a, logits_b)) == 0.5
    agree = [0.9, 0.7, 0.5, 0.3]
    assert grounding.shortcut_affinity([0.8, 0.6, 0.4, 0.1], agree) == pytest.approx(1.0)
    assert grounding.shortcut_affinity([0.8, 0.6, 0.4, 0.1], agree, larger_is_more_similar=False) == pytest.approx(-1)
    with pytest.raises(ValueError, match="same shape"):
        grounding.prediction_agreement(torch.eye(3), torch.eye(4))


def test_separation_effect_sizes():
    out = grounding.separation([0.9, 0.95, 1.0], [0.5, 0.55, 0.6])
    assert out["superiority"] == 1.0
    assert out["cohens_d"] == pytest.approx(0.4 / 0.05)  # both sds 0.05: pooled sd 0.05
    assert grounding.separation([1.0], [1.0])["superiority"] == 0.5
    assert grounding.separation([1.0], [0.0])["cohens_d"] == math.inf
    assert grounding.separation([0.0], [1.0], larger_is_more_similar=False)["superiority"] == 1.0


def test_randomise_labels_fraction_and_seed():
    labels = np.repeat(np.arange(10), 100)
    assert (randomise_labels(labels, 0.0, 10) == labels).all()
    half = randomise_labels(labels, 0.5, 10, seed=3)
    changed = (half != labels).mean()
    assert 0.5 * 0.9 - 0.05 < changed < 0.5 * 0.9 + 0.05  # a random class hits the true one 1 time in 10
    assert (half == randomise_labels(labels, 0.5, 10, seed=3)).all()
    with pytest.raises(ValueError, match="fraction"):
        randomise_labels(labels, 1.5, 10)


def test_shortcut_is_class_coded_and_optional():
    images = np.zeros((200, 8, 8), dtype=np.uint8)
    labels = np.arange(200) % 10
    assert (add_shortcut(images, labels, 0.0) == 0).all()
    full = add_shortcut(images, labels, 1.0)
    marks = [tuple(np.argwhere(full[i])[0]) for i in range(10)]
    assert len(set(marks)) == 10 and all(full[i].sum() == 16 for i in range(10))
    # the same class always gets the same mark
    assert all(tuple(np.argwhere(full[i])[0]) == marks[labels[i]] for i in range(200))
    some = add_shortcut(images, labels, 0.5, seed=1)
    assert 0.35 < (some.reshape(200, -1).sum(1) > 0).mean() < 0.65
    with pytest.raises(ValueError, match="probability"):
        add_shortcut(images, labels, -0.1)


def test_stamped_shortcut_survives_crops_and_flips():
    """Under random resized crops and flips a raw-image mark is mostly lost; the stamp is on every
    augmented view of a carrier, at its class's slot, with the normalised range's brightest value."""
    from repsim.networks.data import ArrayImages

    images = np.zeros((40, 32, 32), dtype=np.uint8)
    labels = np.arange(40) % 10
    augment = grayscale_augment(32)
    torch.manual_seed(0)
    raw = ArrayImages(add_shortcut(images, labels, 1.0), labels, augment)
    bright = (1.0 - 0.2860) / 0.3530
    kept = np.mean([(raw[i][0] > 0.5 * bright).any().item() for i in range(40)])
    assert kept < 0.9  # crops cut the 2 x 2 mark away (or blur it) for part of the views
    stamped = StampedViews(ArrayImages(images, labels), augment, labels, 1.0, "fashion-mnist")
    clean = add_shortcut(images, labels, 1.0)
    for i in range(40):
        v1, v2, y = stamped[i]
        assert int(y) == labels[i]
        for v in (v1, v2):
            mark = torch.from_numpy(clean[i] > 0)
            assert torch.allclose(v[0][mark], torch.tensor(bright)) and (v[0][~mark] < 0).all()
    none = StampedViews(ArrayImages(images, labels), augment, labels, 0.0, "fashion-mnist")
    assert all((none[i][0] < 0).all() for i in range(40))
    some = StampedViews(ArrayImages(images, labels), augment, labels, 0.5, "fashion-mnist", seed=1)
    assert (some.carry == (add_shortcut(images, labels, 0.5, seed=1).reshape(40, -1).sum(1) > 0)).all()


def test_augmentation_strength_zero_is_identity():
    img = torch.randint(0, 17, (1, 8, 8), dtype=torch.uint8)
    plain = digits_augment(strength=0.0)(img)
    torch.testing.assert_close(plain, (img.float() / 16 - 0.5) / 0.5)
    with pytest.raises(ValueError, match="strength"):
        digits_augment(strength=-1)
