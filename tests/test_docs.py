"""The examples in the public docstrings run and give what they say."""

import doctest

import pytest

import nbbag.collection
import nbbag.functional
import nbbag.layer
import nbbag.optim


@pytest.mark.parametrize(
    "module",
    [nbbag.functional, nbbag.layer, nbbag.optim, nbbag.collection, nbbag.quantized],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
