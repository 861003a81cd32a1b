"""Every worked example of PRUNING.md, through the reference and the vectorised form."""
import pytest
import torch

from exporter.pruning import make_config, select_tokens, select_tokens_vectorized

BOTH = [select_tokens, select_tokens_vectorized]


def _scores(*rows, n=None):
    n = len(rows[0])
    out = torch.zeros(1, len(rows), n + 1)
    for i, r in enumerate(rows):
        out[0, i, 1:] = torch.tensor(r)
    return out


H1 = [0.10, 0.50, 0.20, 0.20, 0.30, 0.05, 0.90, 0.10, 0.40, 0.38, 0.15, 0.60, 0.35, 0.20, 0.70, 0.65]


def test_h1_released_hivtp_4x4():
    # Same map in three layers: the importance is their (scaled) mean.
    got = select_tokens("hivtp", _scores(H1, H1, H1), None, grid=(4, 4), layers=(0, 1, 2))
    assert [t.tolist() for t in got] == [[1, 2, 4, 6, 8, 9, 14, 15]]


def test_h2_released_hivtp_8x8_skips_full_window():
    base = torch.tensor([[90, 80, 10, 11], [85, 95, 12, 13], [20, 21, 30, 31], [22, 23, 32, 33]], dtype=torch.float)
    grid = torch.zeros(8, 8)
    grid[:4, :4], grid[:4, 4:], grid[4:, :4], grid[4:, 4:] = base, base + 100, base + 200, base + 300
    got = select_tokens("hivtp", _scores((grid.flatten() / 1000).tolist()), None, grid=(8, 8), layers=(0,))
    assert got[0].tolist() == [0, 1, 4, 5, 8, 9, 11, 12, 13, 15, 25, 27, 29, 31, 32, 33, 36, 37,
                               40, 41, 43, 44, 45, 47, 57, 59, 61, 63]


P1_OBJ = [0.10, 0.12, 0.15, 0.11, 0.13, 0.90, 0.14, 0.16, 0.17, 0.18, 0.19, 0.20, 0.21, 0.22, 0.23, 0.24]
P1_DEEP = [0.02, 0.50, 0.03, 0.40, 0.01, 0.90, 0.05, 0.06, 0.30, 0.80, 0.07, 0.08, 0.09, 0.04, 0.35, 0.10]
P1_COS = [0.10, 0.85, 0.20, 0.30, 0.40, 0.95, 0.50, 0.60, 0.45, 0.70, 0.55, -0.30, 0.00, 0.05, 0.20, 0.58]
HIPRUNE_4X4 = dict(grid=(4, 4), object_layer=1, deep_layer=-1)


@pytest.mark.parametrize("select", BOTH)
def test_p1_hiprune(select):
    got = select("hiprune", _scores(P1_OBJ, P1_DEEP), 8, alpha=0.5, **HIPRUNE_4X4)
    assert got.tolist() == [[1, 3, 4, 5, 6, 8, 9, 14]]


@pytest.mark.parametrize("select", BOTH)
def test_p2_hiprune_clamped_buffers(select):
    obj = [0.10, 0.20, 0.90, 0.10, 0.80, 0.30, 0.15, 0.12, 0.11, 0.13, 0.14, 0.16, 0.17, 0.18, 0.19, 0.21]
    deep = [0.90, 0.80, 0.10, 0.10, 0.10, 0.10, 0.10, 0.20, 0.10, 0.05, 0.30, 0.25, 0.02, 0.15, 0.01, 0.40]
    got = select("hiprune", _scores(obj, deep), 12, alpha=0.8, **HIPRUNE_4X4)
    assert got.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 15]]


@pytest.mark.parametrize("select", BOTH)
def test_p2_discard_drops_wrapped_and_clamped_neighbours(select):
    obj = [0.10, 0.20, 0.90, 0.10, 0.80, 0.30, 0.15, 0.12, 0.11, 0.13, 0.14, 0.16, 0.17, 0.18, 0.19, 0.21]
    deep = [0.90, 0.80, 0.10, 0.10, 0.10, 0.10, 0.10, 0.20, 0.10, 0.05, 0.30, 0.25, 0.02, 0.15, 0.01, 0.40]
    # anchors 2 and 4: true neighbours {1,3,6} and {5,0,8}; 3 is not 4's neighbour (row wrap)
    got = select("hiprune", _scores(obj, deep), 12, alpha=0.8, buffer_edges="discard", **HIPRUNE_4X4)
    # AB = {0,1,2,3,4,5,6,8} again here (3 and 0 come from other anchors); registers fill 4
    assert got.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 15]]
    got = select("hiprune", _scores(obj, deep), 8, alpha=0.4, buffer_edges="discard", **HIPRUNE_4X4)
    # one anchor (2): discard gives {1,2,3,6} (no clamped 0); registers 0, 15, 10, 11
    assert got.tolist() == [[0, 1, 2, 3, 6, 10, 11, 15]]


@pytest.mark.parametrize("select", BOTH)
def test_p1_hiprune_plus_plus(select):
    got = select("hiprune++", _scores(P1_OBJ, P1_DEEP), 8, alpha=0.5, beta=0.5,
                 text_similarity=torch.tensor([P1_COS]), **HIPRUNE_4X4)
    assert got.tolist() == [[1, 3, 4, 5, 6, 7, 8, 9, 14]]


@pytest.mark.parametrize("keep,anchors,extra", [(64, 1, 1), (128, 3, 3), (192, 4, 4), (25, 0, 0)])
def test_anchor_and_extra_counts(keep, anchors, extra):
    cfg = make_config("hiprune++", keep)
    assert (cfg.num_anchors, cfg.num_extra) == (anchors, extra)


@pytest.mark.parametrize("keep,window,windows", [(64, 4, 36), (128, 3, 64), (192, 2, 144), (288, 2, 144)])
def test_budgeted_hivtp_window_sizes(keep, window, windows):
    cfg = make_config("hivtp", keep)
    assert cfg.window == window
    assert (24 // window) ** 2 == windows


def test_budgeted_288_equals_released_when_no_window_is_skipped():
    gen = torch.Generator().manual_seed(3)
    checked = 0
    for _ in range(20):
        scores = torch.rand(1, 24, 577, generator=gen)
        released = select_tokens("hivtp", scores, None)[0]
        if len(released) != 288:  # some window was fully kept globally: budgets differ
            continue
        checked += 1
        assert torch.equal(select_tokens("hivtp", scores, 288)[0], released)
        assert torch.equal(select_tokens_vectorized("hivtp", scores, 288)[0], released)
    assert checked > 5


def test_released_hivtp_count_range():
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        kept = select_tokens("hivtp", torch.rand(2, 24, 577, generator=gen), None)
        for k in kept:
            assert 252 <= len(k) <= 288
            assert torch.equal(k, k.sort().values)


def test_none_keeps_everything():
    scores = torch.rand(2, 24, 577)
    for select in BOTH:
        assert torch.equal(select("none", scores, None), torch.arange(576).expand(2, 576))


def test_ties_go_to_the_lower_index():
    flat = torch.full((1, 24, 577), 0.5)
    for select in BOTH:
        assert select("hiprune", flat, 10).tolist() == [list(range(10))]
    # hivtp on a flat map: top-left of every region first
    kept = select_tokens("hivtp", flat, 8)
    assert kept.tolist()[0][:2] == [0, 1]


def test_layer_scores_means_over_heads_and_queries():
    from exporter.pruning import layer_scores

    att = torch.zeros(1, 2, 3, 3)
    att[0, 0, :, 0] = 1.0  # head 0: every query attends to token 0
    att[0, 1, :, 2] = 1.0  # head 1: every query attends to token 2
    got = layer_scores([att, att])
    assert got.shape == (1, 2, 3) and got.dtype == torch.float32
    assert got[0, 0].tolist() == [0.5, 0.0, 0.5]
