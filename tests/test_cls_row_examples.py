"""SCOPE and VisionZip (PRUNING.md 8-10): the worked examples S1 and Z1 through the reference and
the vectorised form, the derived constants, the helpers that read a layer's CLS row and keys, and
bad arguments."""
import pytest
import torch

from exporter.pruning import (
    cls_attention,
    default_contextual,
    head_mean_keys,
    make_config,
    select_tokens,
    select_tokens_vectorized,
    visionzip,
    visionzip_vectorized,
)

BOTH_SELECT = [select_tokens, select_tokens_vectorized]
BOTH_ZIP = [visionzip, visionzip_vectorized]

# ---- S1 (9.3): 4 x 4 grid, four feature types, exact cosines -------------------------------
A, B, C, D = (1, 0, 0, 0), (1, 1, 1, 1), (1, 1, 1, -1), (0, 0, 0, 1)
S1_FEATURES = torch.tensor([[A, A, A, B, A, A, B, B, C, C, B, B, C, D, D, D]], dtype=torch.float32)
S1_SALIENCY = [0.10, 0.09, 0.03, 0.06, 0.05, 0.02, 0.08, 0.05, 0.03, 0.07, 0.04, 0.03, 0.02, 0.06, 0.05, 0.02]
S1_CLS = torch.tensor([[0.0] + S1_SALIENCY])  # CLS key at column 0


def _s1(select, keep, **params):
    return select("scope", None, keep, grid=(4, 4), cls_scores=S1_CLS, features=S1_FEATURES, **params).tolist()


@pytest.mark.parametrize("select", BOTH_SELECT)
@pytest.mark.parametrize("keep,expected", [(4, [0, 6, 9, 13]), (6, [0, 1, 2, 6, 9, 13])])
def test_s1_scope(select, keep, expected):
    assert _s1(select, keep) == [expected]


def test_s1_greedy_order_and_saliency_alone():
    from exporter.pruning import reference

    cfg = make_config("scope", 6, grid=(4, 4))
    order = reference.scope_order(S1_CLS[0, 1:], S1_FEATURES[0], cfg, 6)
    assert order == [0, 6, 9, 13, 1, 2]  # steps 5-6: every score is 0, the lowest index fills
    # the saliency top-4 would be [0, 1, 6, 9]: two A tokens; coverage spreads the picks
    assert sorted(range(16), key=lambda p: (-S1_SALIENCY[p], p))[:4] == [0, 1, 6, 9]


@pytest.mark.parametrize("select", BOTH_SELECT)
def test_s1_scaling_the_cls_row_changes_nothing(select):
    """The authors sum the heads, we average them: a power-of-two rescaling keeps every pick."""
    scaled = S1_CLS * 16
    for keep in range(1, 17):
        got = select("scope", None, keep, grid=(4, 4), cls_scores=scaled, features=S1_FEATURES)
        assert got.tolist() == [sorted([0, 6, 9, 13, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12, 14, 15][:keep])]


@pytest.mark.parametrize("select", BOTH_SELECT)
def test_scope_add_combine_and_alpha(select):
    # add: step 1 scores are gain + a: B tokens (10.5 + a) win, the highest-saliency B is p6
    assert _s1(select, 1, combine="add") == [[6]]
    # alpha = 0.5: p6 10.5 * sqrt(.08) = 2.97 beats p0 9 * sqrt(.10) = 2.85; alpha = 2: p0 .09 wins
    assert _s1(select, 1, alpha=0.5) == [[6]]
    assert _s1(select, 1, alpha=2.0) == [[0]]


# ---- Z1 (10.3): 4 x 4 grid, D = 4 (CLS + 3), C = 2 ----------------------------------------
Z1_SALIENCY = [0.02, 0.30, 0.03, 0.04, 0.05, 0.06, 0.25, 0.01, 0.07, 0.02, 0.03, 0.20, 0.04, 0.05, 0.02, 0.01]
Z1_KEYS = {0: (1, 0), 2: (3, 1), 3: (1, 2), 4: (2, 1), 5: (1, 1), 7: (1, 3), 8: (0, 1), 9: (0, 2), 10: (1, 4),
           12: (4, 1), 13: (2, 2), 14: (1, 5), 15: (5, 1)}


def _z1_inputs():
    keys = torch.full((1, 17, 2), 7.0)  # CLS and dominant rows: never read
    for p, k in Z1_KEYS.items():
        keys[0, 1 + p] = torch.tensor(k, dtype=torch.float32)
    hidden = torch.tensor([[[100.0, 100.0]] + [[float(p), 1.0] for p in range(16)]])
    return {"cls_scores": torch.tensor([[0.0] + Z1_SALIENCY]), "hidden_states": hidden, "keys": keys}


@pytest.mark.parametrize("zip_", BOTH_ZIP)
def test_z1_visionzip(zip_):
    got = zip_(**_z1_inputs(), dominant=4, contextual=2)
    assert got.dominant.tolist() == [[1, 6, 11]]
    assert got.targets.tolist() == [[0, 8]]
    group0, group8 = {0, 2, 4, 5, 12, 13, 15}, {3, 7, 8, 9, 10, 14}  # p5, p13: equal cosines -> first
    assert got.assignment.tolist() == [[-1 if p in (1, 6, 11) else 0 if p in group0 else 1 for p in range(16)]]
    assert group0 | group8 | {1, 6, 11} == set(range(16))
    expected = [[100, 100], [1, 1], [6, 1], [11, 1], [8.5, 2], [16.6, 2]]
    torch.testing.assert_close(got.tokens, torch.tensor([expected]), rtol=0, atol=1e-6)
    assert got.tokens.dtype == torch.float32 and got.dominant.dtype == torch.int64


@pytest.mark.parametrize("zip_", BOTH_ZIP)
def test_visionzip_without_dominant_patches(zip_):
    """D = 1: only CLS and C contextual tokens; all patches are merged."""
    got = zip_(**_z1_inputs(), dominant=1, contextual=1)
    assert got.dominant.shape == (1, 0) and got.targets.tolist() == [[0]]
    assert got.assignment.tolist() == [[0] * 16]
    torch.testing.assert_close(got.tokens[0, 1], torch.tensor([sum(range(1, 16)) / 15, 2.0]))


# ---- constants ----------------------------------------------------------------------------
@pytest.mark.parametrize("keep,contextual", [(64, 10), (128, 20), (192, 30), (160, 25), (320, 50), (640, 100),
                                             (8, 2), (16, 4), (32, 6), (48, 8), (2, 1), (100, 16), (213, 33)])
def test_default_contextual(keep, contextual):
    assert default_contextual(keep) == contextual
    if keep > 576:
        return
    cfg = make_config("visionzip", keep)
    assert (cfg.contextual, cfg.dominant, cfg.output_count) == (contextual, keep - contextual, keep)


@pytest.mark.parametrize("keep,step", [(64, 52), (128, 23), (192, 13)])
def test_visionzip_target_step(keep, step):
    cfg = make_config("visionzip", keep)
    assert cfg.target_step == step
    assert cfg.target_positions[:3] == (0, step, 2 * step)
    assert make_config("visionzip", 32, contextual=6).remaining == 576 - 25


def test_describe_records_the_split():
    zip_ = make_config("visionzip", 64).describe()
    assert zip_.derived["dominant"] == 54 and zip_.derived["contextual"] == 10
    assert zip_.derived["dominant_patches"] == 53 and zip_.derived["cls_layer"] == 22
    assert zip_.output_tokens == 64 and zip_.score_layers == []
    scope = make_config("scope", 128, alpha=0.5).describe()
    assert scope.params == {"alpha": 0.5, "combine": "multi"}
    assert scope.derived == {"cls_layer": 22, "greedy_steps": 128}


# ---- reading the inputs -------------------------------------------------------------------
def test_cls_attention_is_the_head_mean_of_row_zero():
    att = torch.zeros(1, 2, 3, 3)
    att[0, 0, 0] = torch.tensor([0.2, 0.5, 0.3])
    att[0, 1, 0] = torch.tensor([0.4, 0.1, 0.5])
    att[0, :, 1:] = 1.0  # other query rows are never read
    assert cls_attention(att).tolist() == [[pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.4)]]


def test_head_mean_keys():
    k = torch.arange(12, dtype=torch.float32).reshape(1, 1, 12)  # 3 heads of 4
    assert head_mean_keys(k, 3).tolist() == [[[4.0, 5.0, 6.0, 7.0]]]
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        head_mean_keys(k, 5)


# ---- bad arguments ------------------------------------------------------------------------
SCORES = torch.rand(1, 577)
FEATURES = torch.rand(1, 576, 8)


@pytest.mark.parametrize("select", BOTH_SELECT)
@pytest.mark.parametrize("keep,params,message", [
    (0, {}, "keep must be an integer in 1..576"),
    (577, {}, "keep must be an integer in 1..576"),
    (None, {}, "keep must be an integer in 1..576"),
    (64, {"alpha": 0.0}, "alpha must be a number > 0"),
    (64, {"alpha": -1}, "alpha must be a number > 0"),
    (64, {"combine": "max"}, "combine must be 'multi' or 'add'"),
    (64, {"beta": 0.1}, "unknown parameter(s) beta"),
])
def test_scope_bad_arguments(select, keep, params, message):
    with pytest.raises(ValueError) as err:
        select("scope", None, keep, cls_scores=SCORES, features=FEATURES, **params)
    assert message in str(err.value)


def test_scope_bad_inputs():
    with pytest.raises(ValueError, match="pass scores=None"):
        select_tokens("scope", torch.rand(1, 24, 577), 64, cls_scores=SCORES, features=FEATURES)
    with pytest.raises(ValueError, match="needs cls_scores with 1\\+576 columns"):
        select_tokens("scope", None, 64, cls_scores=torch.rand(1, 576), features=FEATURES)
    with pytest.raises(ValueError, match="features must be a \\(1, 576, D\\) tensor"):
        select_tokens("scope", None, 64, cls_scores=SCORES, features=torch.rand(1, 577, 8))
    with pytest.raises(ValueError, match="call exporter.pruning.visionzip"):
        select_tokens("visionzip", None, 64)


@pytest.mark.parametrize("zip_", BOTH_ZIP)
@pytest.mark.parametrize("dominant,contextual,message", [
    (54, 0, "contextual must be an integer >= 1"),
    (0, 10, "dominant must be an integer >= 1"),
    (570, 10, "keep must be an integer in 2..576 for visionzip"),
    (54, 2.5, "contextual must be an integer >= 1"),
])
def test_visionzip_bad_arguments(zip_, dominant, contextual, message):
    hidden = torch.rand(1, 577, 8)
    with pytest.raises(ValueError) as err:
        zip_(cls_scores=SCORES, hidden_states=hidden, keys=hidden, dominant=dominant, contextual=contextual)
    assert message in str(err.value)


@pytest.mark.parametrize("keep,params,message", [
    (1, {}, "keep must be an integer in 2..576 for visionzip"),
    (64, {"contextual": 64}, "contextual=64 leaves no room for the CLS token in keep=64"),
    (64, {"contextual": 0}, "contextual must be an integer >= 1"),
    (64, {"alpha": 1.0}, "unknown parameter(s) alpha"),
])
def test_visionzip_config_errors(keep, params, message):
    with pytest.raises(ValueError) as err:
        make_config("visionzip", keep, **params)
    assert message in str(err.value)
