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
