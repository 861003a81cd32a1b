"""SCOPE and VisionZip: the vectorised (exported) forms equal the per-image references on random
inputs with planted ties (quantised CLS rows, duplicated feature rows and keys, integer-valued
vectors with many equal cosines), every K of a sweep, and batches of B equal B batches of one."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.pruning import (
    default_contextual,
    make_config,
    reference,
    select_tokens,
    select_tokens_vectorized,
    vectorized,
    visionzip,
    visionzip_vectorized,
)

GRIDS = [(4, 4), (8, 8), (6, 10), (24, 24)]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cls_row(gen, batch, n, levels):
    """(B, 1+N) CLS rows; levels > 0 quantises them so exact ties are frequent."""
    row = torch.rand(batch, n + 1, generator=gen)
    return torch.floor(row * levels) / levels if levels else row


def _vectors(gen, batch, rows, width, kind):
    """normal: continuous; duplicated: a third of the rows copied over others (exact ties);
    integer: small integer vectors (many exactly equal cosines), never the zero vector."""
    x = torch.randn(batch, rows, width, generator=gen)
    if kind == "duplicated":
        src = torch.randint(0, rows, (rows // 3,), generator=gen)
        dst = torch.randint(0, rows, (rows // 3,), generator=gen)
        x[:, dst] = x[:, src]
    elif kind == "integer":
        x = torch.randint(-2, 3, (batch, rows, width), generator=gen).float()
        x[x.abs().sum(-1) == 0] = 1.0
    return x


@st.composite
def inputs(draw):
    grid = draw(st.sampled_from(GRIDS))
    n = grid[0] * grid[1]
    return {
        "grid": grid,
        "batch": draw(st.integers(1, 3)),
        "width": draw(st.sampled_from([1, 2, 3, 8, 64])),
        "levels": draw(st.sampled_from([0, 0, 3, 50])),
        "kind": draw(st.sampled_from(["normal", "duplicated", "integer"])),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "keep": draw(st.integers(1, n)),
    }


@SETTINGS
@given(case=inputs(), alpha=st.sampled_from([1.0, 1.0, 0.5, 2.0]), combine=st.sampled_from(["multi", "multi", "add"]))
def test_scope_vectorised_matches_reference(case, alpha, combine):
    gen = torch.Generator().manual_seed(case["seed"])
    n = case["grid"][0] * case["grid"][1]
    cls = _cls_row(gen, case["batch"], n, case["levels"])
    features = _vectors(gen, case["batch"], n, case["width"], case["kind"])
    kw = dict(grid=case["grid"], cls_scores=cls, features=features, alpha=alpha, combine=combine)
    ref = select_tokens("scope", None, case["keep"], **kw)
    assert ref.shape == (case["batch"], case["keep"]) and ref.dtype == torch.int64
    assert torch.equal(select_tokens_vectorized("scope", None, case["keep"], **kw), ref)
    assert all(len(set(row)) == case["keep"] for row in ref.tolist())
    assert torch.equal(ref, ref.sort(dim=-1).values)


@SETTINGS
@given(case=inputs(), data=st.data())
def test_visionzip_vectorised_matches_reference(case, data):
    gen = torch.Generator().manual_seed(case["seed"])
    n = case["grid"][0] * case["grid"][1]
    keep = max(2, case["keep"])
    contextual = data.draw(st.one_of(st.just(default_contextual(keep)), st.integers(1, keep - 1)))
    if contextual >= keep:
        contextual = keep - 1
    batch = case["batch"]
    kw = dict(
        cls_scores=_cls_row(gen, batch, n, case["levels"]),
        hidden_states=torch.randn(batch, n + 1, case["width"], generator=gen),
        keys=_vectors(gen, batch, n + 1, data.draw(st.sampled_from([2, 3, 16])), case["kind"]),
        dominant=keep - contextual, contextual=contextual, grid=case["grid"],
    )
    ref = visionzip(**kw)
    got = visionzip_vectorized(**kw)
    assert torch.equal(got.dominant, ref.dominant)
    assert torch.equal(got.targets, ref.targets)
    assert torch.equal(got.assignment, ref.assignment)
    torch.testing.assert_close(got.tokens, ref.tokens, rtol=1e-6, atol=1e-5)
    assert ref.tokens.shape == (batch, keep, case["width"])
    # every patch is dominant or in exactly one group; targets head their own group
    for b in range(batch):
        assign = ref.assignment[b].tolist()
        assert sorted(p for p in range(n) if assign[p] == -1) == ref.dominant[b].tolist()
        assert [assign[t] for t in ref.targets[b].tolist()] == list(range(contextual))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), keep=st.sampled_from([1, 16, 64, 192]),
       kind=st.sampled_from(["normal", "duplicated"]))
def test_batch_equals_batches_of_one(seed, keep, kind):
    gen = torch.Generator().manual_seed(seed)
    cls = _cls_row(gen, 3, 576, 0)
    features = _vectors(gen, 3, 576, 32, kind)
    keys = _vectors(gen, 3, 577, 16, kind)
    hidden = torch.cat([torch.randn(3, 1, 32, generator=gen), features], dim=1)
    whole = select_tokens_vectorized("scope", None, keep, cls_scores=cls, features=features)
    zip_keep = max(2, keep)
    split = dict(dominant=zip_keep - default_contextual(zip_keep), contextual=default_contextual(zip_keep))
    zipped = visionzip_vectorized(cls_scores=cls, hidden_states=hidden, keys=keys, **split)
    for b in range(3):
        one = slice(b, b + 1)
        assert torch.equal(select_tokens_vectorized("scope", None, keep, cls_scores=cls[one], features=features[one])[0],
                           whole[b])
        single = visionzip_vectorized(cls_scores=cls[one], hidden_states=hidden[one], keys=keys[one], **split)
        assert torch.equal(single.dominant[0], zipped.dominant[b])
        assert torch.equal(single.assignment[0], zipped.assignment[b])
        torch.testing.assert_close(single.tokens[0], zipped.tokens[b], rtol=1e-6, atol=1e-6)
    if keep <= 64:  # the reference's per-step Python loop is the slow part
        assert torch.equal(select_tokens("scope", None, keep, cls_scores=cls[:1], features=features[:1])[0], whole[0])


def test_scope_every_k_on_a_small_grid():
    """The sweep: every K in 1..N on an 8 x 8 grid with duplicated rows and quantised scores."""
    gen = torch.Generator().manual_seed(3)
    cls = _cls_row(gen, 2, 64, 7)
    features = _vectors(gen, 2, 64, 8, "duplicated")
    for keep in range(1, 65):
        kw = dict(grid=(8, 8), cls_scores=cls, features=features)
        assert torch.equal(select_tokens_vectorized("scope", None, keep, **kw), select_tokens("scope", None, keep, **kw))


def test_scope_picks_are_prefix_consistent():
    """What the LLaVA-NeXT graph relies on: one greedy run of N steps, cut at K, is the K-run."""
    gen = torch.Generator().manual_seed(4)
    cls = _cls_row(gen, 1, 576, 0)
    features = _vectors(gen, 1, 576, 16, "normal")
    cfg = make_config("scope", 576)
    order = reference.scope_order(cls[0, 1:], features[0], cfg, 576)
    assert sorted(order) == list(range(576))
    steps = vectorized.scope_steps(cfg, cls[:, 1:], features, 576)
    assert steps[0, order].tolist() == list(range(576))
    for keep in range(1, 577):
        assert vectorized.scope_select(make_config("scope", keep), steps)[0].tolist() == sorted(order[:keep])
    for keep in (1, 2, 64, 128, 192):
        got = select_tokens("scope", None, keep, cls_scores=cls, features=features)
        assert got[0].tolist() == sorted(order[:keep])


def test_visionzip_k_sweep():
    """Every K on an 8 x 8 grid; the LLaVA grid at the edges and the benchmark budgets."""
    gen = torch.Generator().manual_seed(5)
    for grid, keeps in (((8, 8), range(2, 65)), ((24, 24), (2, 3, 64, 128, 192, 213, 320, 575, 576))):
        n = grid[0] * grid[1]
        _visionzip_sweep(grid, keeps, _cls_row(gen, 1, n, 50), torch.randn(1, n + 1, 4, generator=gen),
                         _vectors(gen, 1, n + 1, 8, "duplicated"))


def _visionzip_sweep(grid, keeps, cls, hidden, keys):
    for keep in keeps:
        c = default_contextual(keep)
        kw = dict(cls_scores=cls, hidden_states=hidden, keys=keys, dominant=keep - c, contextual=c, grid=grid)
        ref, got = visionzip(**kw), visionzip_vectorized(**kw)
        assert torch.equal(got.assignment, ref.assignment) and torch.equal(got.targets, ref.targets)
        torch.testing.assert_close(got.tokens, ref.tokens, rtol=1e-6, atol=1e-5)
