"""LLaVA-NeXT (anyres) at run time: the view arrangement of runtime/anyres.py (the ordering rule
on a hand-made example, the stock packing against transformers' own), anyres preprocessing, and
end to end on `tiny-llava-next` engine directories: ONNX Runtime against the torch reference for
every layout, batches against single requests, and the unpruned stock path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.anyres import Layout, layout_for
from models.specs import LLAVA_NEXT_PINPOINTS
from runtime.anyres import AnyresSpec, arrange_spatial, pack_unpadded, stitched_keys, unpad_bounds

# (h, w) images selecting each of the five layouts, and one extreme aspect ratio
LAYOUT_IMAGES = {(1, 2): (300, 620), (2, 1): (620, 300), (2, 2): (600, 600), (3, 1): (900, 300), (1, 3): (300, 900)}
EXTREME = (40, 2000)


def test_images_select_each_layout():
    for (rows, cols), size in LAYOUT_IMAGES.items():
        layout = layout_for(LLAVA_NEXT_PINPOINTS, 336, size)
        assert (layout.rows, layout.cols) == (rows, cols)
    assert layout_for(LLAVA_NEXT_PINPOINTS, 336, EXTREME).views in (3, 4, 5)


# ---- ordering rule ---------------------------------------------------------------------------
def test_spatial_order_on_a_hand_made_2x2_example():
    """2 x 2 crops of a 4 x 4 grid (stitched 8 x 8), 3 kept tokens per view. The feature of a
    token encodes (view, patch) so the merged order can be read back."""
    layout, grid, out = Layout((672, 672), 2, 2), (4, 4), 3
    kept = np.array([[0, 5, 15], [1, 4, 14], [0, 3, 12], [2, 9, 10], [5, 6, 15]], np.int64)
    feats = (np.arange(5)[:, None] * 100 + kept).astype(np.float32)[..., None]
    # stitched keys: crop (i, j), patch p = 4r + c -> (4i + r) * 8 + (4j + c)
    assert stitched_keys(layout, grid, 0, kept[1]).tolist() == [1, 8, 26]
    assert stitched_keys(layout, grid, 1, kept[2]).tolist() == [4, 7, 28]
    assert stitched_keys(layout, grid, 2, kept[3]).tolist() == [34, 49, 50]
    assert stitched_keys(layout, grid, 3, kept[4]).tolist() == [45, 46, 63]
    merged, per_view = arrange_spatial(feats, kept, layout, out, grid)
    assert per_view == kept.tolist()
    assert merged[:, 0].tolist() == [0, 5, 15,  # base view as kept
                                     101, 200, 203, 104, 114, 212, 302, 405, 406, 309, 310, 415]


def test_spatial_order_ignores_padding_rows_and_rejects_mismatches():
    from runtime.errors import UserError

    layout, grid = Layout((336, 672), 1, 2), (2, 2)
    kept = np.array([[1, 3, -1], [0, 2, -1], [1, 3, -1]], np.int64)
    feats = np.random.default_rng(0).normal(size=(3, 3, 4)).astype(np.float32)
    merged, per_view = arrange_spatial(feats, kept, layout, 2, grid)
    assert merged.shape == (6, 4) and per_view == [[1, 3], [0, 2], [1, 3]]
    # stitched 2 x 4: crop 0 patches 0, 2 -> keys 0, 4; crop 1 patches 1, 3 -> keys 3, 7
    assert np.array_equal(merged[2:], np.stack([feats[1, 0], feats[2, 0], feats[1, 1], feats[2, 1]]))
    with pytest.raises(UserError, match="kept 2 tokens of view 0, its config.json says 3"):
        arrange_spatial(feats, kept, layout, 3, grid)


# ---- stock packing ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_next():
    from models import TINY_NEXT_NAME, load_model

    return load_model(TINY_NEXT_NAME)


@pytest.mark.parametrize("size", [*LAYOUT_IMAGES.values(), EXTREME, (336, 336), (1000, 999), (17, 23)])
def test_pack_unpadded_equals_transformers(tiny_next, size):
    model = tiny_next.model.model
    layout = layout_for(LLAVA_NEXT_PINPOINTS, 336, size)
    hidden = tiny_next.config.text_config.hidden_size
    feats = torch.randn(layout.views, 576, hidden, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        ref, lens = model.pack_image_features([feats], torch.tensor([size]), "default", model.image_newline)
    newline = model.image_newline.detach().numpy()
    ours = pack_unpadded(feats.numpy(), layout, (24, 24), size, newline)
    assert ours.shape == tuple(ref[0].shape)
    assert np.array_equal(ours, ref[0].numpy())
    spec = AnyresSpec(tuple(map(tuple, LLAVA_NEXT_PINPOINTS)), 336, (24, 24), "spatial_unpad", {}, 0, "image_newline.npy")
    assert spec.token_count(layout, size) == int(lens[0])


def test_unpad_bounds_cut_the_padding_side():
    assert unpad_bounds(24, 48, (300, 620)) == (0, 24, 0, 48)  # 23.2 rows of image: 1 padding row, floor(1/2) = 0
    assert unpad_bounds(48, 48, (600, 300)) == (0, 48, 12, 36)
    top, bottom, left, right = unpad_bounds(24, 72, EXTREME)
    assert (left, right) == (0, 72) and bottom - top < 24
    top, bottom, left, right = unpad_bounds(72, 24, EXTREME[::-1])
    assert (top, bottom) == (0, 72) and right - left < 24


# ---- end to end on tiny-llava-next engine directories -----------------------------------------
PROMPTS = ("what is in the picture?", "how many objects are on the table?", "describe the image",
           "where is the red box?", "is the path clear?", "count the cups")
NEW_TOKENS = 32
ALL_SIZES = [*LAYOUT_IMAGES.values(), EXTREME]


def _build(root, method: str, keep: int | None) -> str:
    from fakes.engines import build_next_engine_dir

    return build_next_engine_dir(root, method, keep)


@pytest.fixture(scope="module")
def next_engine(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "engines"
    return lambda method, keep=None: _build(root, method, keep)


@pytest.fixture(scope="module")
def next_images(tmp_path_factory):
    """Blocky images (attention-friendly) of every layout, then the extreme one, in ALL_SIZES order."""
    from PIL import Image

    root = tmp_path_factory.getbasetemp() / "next-images"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for h, w in ALL_SIZES:
        base = rng.integers(0, 255, (max(1, h // 12), max(1, w // 12), 3), dtype=np.uint8)
        paths.append(root / f"{h}x{w}.png")
        Image.fromarray(base).resize((w, h), Image.NEAREST).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def pipelines(next_engine):
    """(onnxruntime, torch) pipelines per (method, keep), opened once."""
    from runtime import Pipeline

    cache = {}

    def get(method, keep=None):
        if (method, keep) not in cache:
            d = next_engine(method, keep)
            cache[method, keep] = (Pipeline.from_dir(d, backend="onnxruntime"), Pipeline.from_dir(d, backend="torch"))
        return cache[method, keep]

    return get


@pytest.mark.parametrize("method,keep,sizes", [
    ("hivtp", 640, ALL_SIZES), ("hiprune", 640, ALL_SIZES), ("hiprune++", 640, ALL_SIZES),
    ("hiprune", 160, [(300, 620), (300, 900), (600, 600)]),
])
def test_pruned_onnxruntime_equals_torch_for_every_layout(pipelines, next_images, method, keep, sizes):
    ort, ref = pipelines(method, keep)
    spec = ort.inputs.anyres
    images = [next_images[ALL_SIZES.index(s)] for s in sizes]
    prompts = list(PROMPTS[: len(images)])
    got = ort.generate(images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    want = ref.generate(images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    for size, g, w in zip(sizes, got, want):
        layout = spec.layout(size)
        k_view, output = spec.budget(layout.views)
        assert k_view == keep // layout.views
        assert len(g.kept_indices) == layout.views and all(len(v) == output for v in g.kept_indices)
        assert all(v == sorted(v) and 0 <= v[0] and v[-1] < 576 for v in g.kept_indices)
        assert g.kept_indices == w.kept_indices, f"{method} K={keep} {size}"
        assert g.visual_tokens == w.visual_tokens == layout.views * output
        assert len(g.token_ids) == NEW_TOKENS and g.token_ids == w.token_ids, f"{method} K={keep} {size}"


def test_batch_of_layouts_equals_each_image_alone(pipelines, next_images):
    """Different view counts (3, 5, 4) and different prompts (hiprune++ repeats each image's
    prompt embedding over its views) in one batch."""
    ort, _ = pipelines("hiprune++", 640)
    picks = [0, 2, 3]
    images, prompts = [next_images[i] for i in picks], [PROMPTS[i] for i in picks]
    batch = ort.generate(images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    assert len({g.visual_tokens for g in batch}) == 3
    for g, image, prompt in zip(batch, images, prompts):
        alone = ort.generate(image, prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        assert g.kept_indices == alone.kept_indices
        assert g.token_ids == alone.token_ids and g.text == alone.text
        assert g.visual_tokens == alone.visual_tokens


def test_unpruned_stock_path_equals_transformers(pipelines, next_images):
    """method none: ORT views + our numpy packing against the HF model's get_image_features."""
    ort, ref = pipelines("none")
    prompts = list(PROMPTS)
    got = ort.generate(next_images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    want = ref.generate(next_images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    batch = ort.inputs.anyres_views(next_images, "float32")
    ours, kept = ort.image_features(batch, prompts)
    stock, _ = ref.image_features(batch, prompts)
    for b, size in enumerate(ALL_SIZES):
        layout = ort.inputs.anyres.layout(size)
        assert ours[b].shape == stock[b].shape  # HF's feature_lens
        assert np.abs(ours[b] - stock[b]).max() < 1e-4, size
        assert got[b].visual_tokens == want[b].visual_tokens == stock[b].shape[0] == batch.counts[b]
        assert got[b].kept_indices == [list(range(576))] * layout.views == kept[b]
        assert got[b].token_ids == want[b].token_ids, size


def test_requests_use_their_own_count_of_prompt_table_rows(pipelines):
    ort, _ = pipelines("hivtp", 640)
    k, vocab = ort.engine.visual_tokens, ort.engine.decoder.vocab_size
    ids = ort.inputs.prompt_ids("hi", 2, k, 639)
    fake = [t for t in ids if t >= vocab]
    assert fake == list(range(vocab + 2 * k, vocab + 2 * k + 639))


def test_generate_json_reports_views_and_counts(pipelines, next_images, capsys):
    import json

    from runtime.cli import main

    ort, _ = pipelines("hivtp", 640)
    argv = ["generate", "--engine-dir", str(ort.engine.path), "--image", str(next_images[2]), "--prompt", "hi",
            "--max-new-tokens", "4", "--backend", "onnxruntime", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["visual_tokens"] == 5 * 128 and [len(v) for v in out["kept_indices"]] == [128] * 5


def test_random_weight_engines_hold_the_builtin_anyres_processor(pipelines, next_images, tmp_path):
    """A random-weight anyres build (no processor of its own) writes tiny-llava-next's processor
    into processor/: same pinpoints and CLIP mean/std, so the same views as a checkpoint's processor."""
    from types import SimpleNamespace

    from exporter.build import _processor, _save_processor
    from runtime.images import image_processor_from_dir, load_image

    ort, _ = pipelines("hivtp", 640)
    random = SimpleNamespace(name="llava-next-7b", source="random-weights", anyres=True, processor=None,
                             processor_error=None)
    _save_processor(_processor(random), tmp_path)
    builtin = image_processor_from_dir(tmp_path / "processor")
    assert sorted(builtin.pinpoints) == sorted(ort.inputs.anyres.pinpoints)
    want = ort.inputs.anyres_views(next_images, "float32")
    got = [builtin.views(load_image(image)) for image in next_images]
    assert [tuple(size) for _, size in got] == want.sizes == [tuple(s) for s in ALL_SIZES]
    assert [views.shape[0] for views, _ in got] == [layout.views for layout in want.layouts]
    assert all(np.array_equal(views, w) for (views, _), w in zip(got, want.views))
