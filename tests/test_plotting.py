"""Heatmap colour scales (issue 32): negative values never take the colour of 0, and every heatmap repsim draws
(Comparison.heatmap, `repsim compare`, `repsim many`) picks its scale from the measure by one rule."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from repsim.pipeline.comparison import Comparison
from repsim.pipeline.plotting import colour_scale, heatmap


def _frame(values):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame(values, index=[f"a{i}" for i in range(values.shape[0])],
                        columns=[f"b{j}" for j in range(values.shape[1])])  # fmt: skip


@pytest.mark.parametrize(
    ("measure", "values", "expected"),
    [
        ("linear_cka", [[0.2, 0.9], [0.5, 0.1]], ("magma", 0.0, 1.0, None)),
        ("minibatch_cka", [[0.2, 0.9], [0.5, 0.1]], ("magma", 0.0, 1.0, None)),
        ("rsa", [[-0.3, 0.9], [0.5, 0.1]], ("vlag", -1.0, 1.0, 0.0)),
        ("debiased_cka", [[-0.01, 0.4], [0.5, 0.1]], ("vlag", -1.0, 1.0, 0.0)),
        ("procrustes", [[0.2, 1.7], [0.5, 0.1]], ("magma", 0.0, 1.7, None)),
        (None, [[-2.0, 1.0], [0.5, 0.1]], ("vlag", -2.0, 2.0, 0.0)),
    ],
)
def test_colour_limits_follow_the_measure(measure, values, expected):
    scale = colour_scale(_frame(values), measure)
    assert (scale["cmap"], scale["vmin"], scale["vmax"], scale["center"]) == pytest.approx(expected)


def test_a_negative_cell_is_not_coloured_as_zero():
    ax = heatmap(_frame([[-0.5, 0.0], [0.5, 1.0]]), title="rsa", measure="rsa")
    mesh = ax.collections[0]
    assert mesh.get_clim() == (-1.0, 1.0)
    colours = mesh.get_facecolors()  # row-major: (-0.5, 0.0, 0.5, 1.0)
    assert not np.allclose(colours[0], colours[1]) and not np.allclose(colours[1], colours[2])
    plt.close(ax.figure)


def test_compare_and_many_heatmaps_share_the_scale():
    table = pd.DataFrame(
        {"measure": "rsa", "layer_a": ["l1", "l1", "l2", "l2"], "layer_b": ["m1", "m2", "m1", "m2"],
         "value": [-0.2, 0.3, 0.6, 0.1]}
    )
    result = Comparison(table, layers_a=["l1", "l2"], layers_b=["m1", "m2"])
    from_compare = result.heatmap("rsa").collections[0].get_clim()
    from_many = heatmap(result.matrix("rsa"), measure="rsa").collections[0].get_clim()  # what `repsim many` calls
    assert from_compare == from_many == (-1.0, 1.0)
    plt.close("all")
