"""Invalid arguments raise ValueError naming the argument and the allowed range."""
import pytest
import torch

from exporter.pruning import select_tokens, select_tokens_vectorized

SCORES = torch.rand(1, 24, 577)


@pytest.mark.parametrize("select", [select_tokens, select_tokens_vectorized])
@pytest.mark.parametrize("method,keep,params,message", [
    ("magic", 64, {}, "method must be one of"),
    ("hivtp", 0, {}, "keep must be an integer in 1..576"),
    ("hivtp", 577, {}, "keep must be an integer in 1..576"),
    ("hiprune", None, {}, "keep must be an integer in 1..576"),
    ("hivtp", 3, {}, "keep must be at least regions^2 = 4"),
    ("hivtp", 64, {"regions": 5}, "regions must divide the grid"),
    ("hivtp", 64, {"global_fraction": 1.5}, "global_fraction must be a number in [0.0, 1.0]"),
    ("hivtp", 64, {"layers": (6, 30)}, "layers must be an integer in 0..23"),
    ("hiprune", 64, {"alpha": -0.1}, "alpha must be a number in [0.0, 1.0]"),
    ("hiprune", 64, {"object_layer": 0}, "object_layer must be an integer in 1..24"),
    ("hiprune", 64, {"buffer_edges": "wrap"}, "buffer_edges must be 'clamp' or 'discard'"),
    ("hiprune", 4, {"alpha": 1.0}, "do not fit in keep=4"),
    ("hiprune", 64, {"beta": 0.1}, "unknown parameter(s) beta"),
    ("none", 64, {}, "keep must be None or 576"),
])
def test_bad_arguments(select, method, keep, params, message):
    with pytest.raises(ValueError) as err:
        select(method, SCORES, keep, **params)
    assert message in str(err.value)


def test_grid_must_match_scores():
    with pytest.raises(ValueError, match="grid 20x20 needs scores with 1\\+400 columns"):
        select_tokens("hiprune", SCORES, 64, grid=(20, 20))


def test_hiprune_plus_plus_needs_similarity():
    with pytest.raises(ValueError, match="text_similarity must be a \\(1, 576\\) tensor"):
        select_tokens("hiprune++", SCORES, 64)


def test_released_hivtp_only_in_reference():
    with pytest.raises(ValueError, match="keep must be an integer for the vectorised"):
        select_tokens_vectorized("hivtp", SCORES, None)
