"""SCOPE and VisionZip at run time: end to end on tiny-llava and tiny-llava-next engine
directories, the ONNX Runtime graphs against the torch reference (HF tower eagerly, the reference
selection and merge), identical kept rows and greedy tokens; VisionZip's LLaVA-NeXT merge order
on a hand-made example."""
from __future__ import annotations

import numpy as np
import pytest

from fakes.engines import build_engine_dir
from runtime import Pipeline
from runtime.anyres import Layout, arrange_visionzip
from test_anyres_runtime import ALL_SIZES, next_engine, next_images  # noqa: F401 - fixtures

PROMPTS = ["what is in the picture?", "how many objects are on the table?", "describe the image"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def engine_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "engines"


@pytest.mark.parametrize("method,keep,extra", [("scope", 64, ()), ("visionzip", 64, ()),
                                               ("visionzip", 32, ("--param", "contextual=5"))])
def test_llava_onnxruntime_equals_torch(engine_root, images, method, keep, extra):
    engine = build_engine_dir(engine_root, method, keep=keep, extra=extra)
    ort = Pipeline.from_dir(engine, backend="onnxruntime")
    ref = Pipeline.from_dir(engine, backend="torch")
    got = ort.generate(images, PROMPTS, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    want = ref.generate(images, PROMPTS, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    for g, w, image, prompt in zip(got, want, images, PROMPTS):
        assert len(g.kept_indices) == keep and g.visual_tokens == keep
        assert g.kept_indices == w.kept_indices
        assert g.token_ids == w.token_ids
        alone = ort.generate(image, prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        assert alone.token_ids == g.token_ids and alone.kept_indices == g.kept_indices
    if method == "scope":
        assert all(g.kept_indices == sorted(g.kept_indices) for g in got)
    else:  # [CLS, dominant ascending, contextual targets]
        contextual = 5 if extra else 10
        for g in got:
            dominant = g.kept_indices[1:keep - contextual]
            assert g.kept_indices[0] == -1 and dominant == sorted(dominant)
            assert not set(dominant) & set(g.kept_indices[keep - contextual:])


@pytest.mark.parametrize("method", ["scope", "visionzip"])
def test_llava_next_onnxruntime_equals_torch(next_engine, next_images, method):  # noqa: F811
    engine = next_engine(method, 640)
    ort = Pipeline.from_dir(engine, backend="onnxruntime")
    ref = Pipeline.from_dir(engine, backend="torch")
    picks = [0, 2, 3]  # 3, 5 and 4 views
    images, prompts = [next_images[i] for i in picks], PROMPTS
    got = ort.generate(images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    want = ref.generate(images, prompts, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    spec = ort.inputs.anyres
    for i, g, w in zip(picks, got, want):
        layout = spec.layout(ALL_SIZES[i])
        k_view, output = spec.budget(layout.views)
        assert k_view == 640 // layout.views and output == k_view
        assert g.visual_tokens == w.visual_tokens == layout.views * output
        assert g.kept_indices == w.kept_indices
        assert g.token_ids == w.token_ids


def test_visionzip_view_order_on_a_hand_made_example():
    """2 x 2 crops of a 4 x 4 grid; each view is [CLS, 2 dominant, 1 contextual]. A row's feature
    encodes (view, row) so the merged order can be read back."""
    layout, grid = Layout((672, 672), 2, 2), (4, 4)
    kept = np.array([[-1, 3, 9, 0], [-1, 5, 15, 1], [-1, 0, 6, 2], [-1, 2, 4, 3], [-1, 1, 8, 7]], np.int64)
    feats = (np.arange(5)[:, None] * 10 + np.arange(4)[None, :]).astype(np.float32)[..., None]
    merged, per_view = arrange_visionzip(feats, kept, layout, output=4, dominant=2, grid=grid)
    # stitched keys of the crops' dominant patches: crop 0 (5, 15) -> 9, 27; crop 1 (0, 6) -> 4, 14;
    # crop 2 (2, 4) -> 34, 40; crop 3 (1, 8) -> 37, 52
    assert merged[:, 0].tolist() == [0, 1, 2, 3,  # base view as it is
                                     21, 11, 22, 12, 31, 41, 32, 42,  # crops' dominant rows, raster order
                                     10, 20, 30, 40,  # the crops' CLS rows
                                     13, 23, 33, 43]  # the crops' contextual rows, crop by crop
    assert per_view == kept.tolist()
