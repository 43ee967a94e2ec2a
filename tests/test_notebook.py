"""labkit.notebook: glue for the book's prose."""

from __future__ import annotations

import pytest

from labkit.notebook import glue


def test_glue_returns_the_value():
    assert glue("ch_test_value", 3.5) == 3.5


@pytest.mark.parametrize("name", ["", "has space", "1starts_with_digit", 7])
def test_glue_rejects_bad_names(name):
    with pytest.raises(ValueError, match="glue name"):
        glue(name, 1)


def test_source_excerpt_cuts_between_markers():
    from labkit.notebook import source_excerpt

    def sample():
        a = 1
        b = 2
        return a + b

    assert source_excerpt(sample, "b = 2") == "b = 2\nreturn a + b"
    assert source_excerpt(sample, "a = 1", "b = 2") == "a = 1\nb = 2"
    with pytest.raises(ValueError, match="no line containing"):
        source_excerpt(sample, "missing")


def test_format_table_aligns_and_checks_rows():
    from labkit.notebook import format_table

    text = format_table(["name", "error"], [["sdpa", 1.5e-7], ["mha", 12]])
    lines = text.splitlines()
    assert lines[0].startswith("name") and lines[2] == "sdpa  1.5e-07" and lines[3].endswith("     12")
    with pytest.raises(ValueError, match="cells"):
        format_table(["a", "b"], [[1]])


def test_compare_pair_sees_a_wrong_gradient():
    import torch

    from labkit.notebook import compare_pair

    x = torch.randn(4, 3, dtype=torch.float64)
    same = compare_pair(lambda t: t.exp(), torch.exp, [x])
    assert same == (0.0, 0.0)
    # equal values, wrong gradient: the comparison must notice
    wrong = compare_pair(lambda t: t.exp().detach() + 0 * t, torch.exp, [x])
    assert wrong[0] == 0.0 and wrong[1] > 0.1
