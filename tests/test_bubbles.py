"""The bubble table: membership by relative distance, and the two shells."""

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core.bubbles import (
    INNER,
    OUTER,
    TEST,
    VALIDATION,
    AnchorTable,
    assign_to_bubbles,
    shell_split,
)


@pytest.mark.parametrize("block", [None, 1, 3])
def test_assign_to_bubbles_nearest_relative_centre_and_shells(block):
    centres = unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    table = AnchorTable(
        centres=centres,
        centre_row=np.array([0, 1]),
        radius=np.array([0.5, 0.5]),
        inner_radius=np.array([0.1, 0.1]),
        layout=np.array([0, 1], np.int8),
        lid=np.array([2.0, 2.0]),
        round=np.array([0, 0], np.int32),
        n_captured=np.array([3, 3]),
        cut_pairs=np.array([0, 0]),
    )
    pts = unit(np.array([[1.0, 0.01, 0], [1.0, 0.9, 0], [0, 0, 1.0], [0.1, 1.0, 0]]))
    anchor, shell = assign_to_bubbles(pts, table, block=block)
    assert anchor.tolist() == [0, 0, -1, 1]
    assert shell.tolist() == [INNER, OUTER, 0, INNER]
    split = shell_split(table.layout[[0, 0, 1]], shell[[0, 1, 3]])
    assert split.tolist() == [VALIDATION, TEST, TEST]
