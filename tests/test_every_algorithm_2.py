"""The other half of tests/test_every_algorithm.py's cases (the odd ones of its sorted list),
the same checks; a separate file so that under xdist's loadfile scheduling the two halves run
on different workers."""

import pytest
import test_every_algorithm as every


@pytest.mark.parametrize("case", every.CASES[1::2])
def test_algorithm(case, tfds_dir, tmp_path):
    every.check_case(case, tfds_dir, tmp_path)
