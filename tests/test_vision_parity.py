"""ONNX Runtime (CPU) runs of the exported vision graph against the PyTorch model +
select_tokens: identical kept indices and visual features within 1e-4 (float32 export)."""
import numpy as np
import pytest
import torch

from exporter.onnx_export import ONNX_IR_VERSION, ONNX_OPSET, export_vision_onnx
from exporter.pruning import make_config, select_tokens

CASES = [("none", None)] + [(m, k) for m in ("hivtp", "hiprune", "hiprune++") for k in (16, 64, 128, 192)]


@pytest.fixture(scope="module")
def projection(tiny):
    from models.text_tower import load_visual_projection

    return load_visual_projection(tiny)


def _text_embeds(batch: int, dim: int) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(99))


def _reference(tiny, ref, cfg, projection, text_embeds, batch):
    scores = ref["scores"][:batch]
    features = ref["features"][:batch]
    kw = {}
    if cfg.method == "hiprune++":
        clip = tiny.vision.clip
        with torch.no_grad():
            image = projection(clip.post_layernorm(features))
        image = image / image.norm(dim=-1, keepdim=True)
        text = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        kw["text_similarity"] = torch.einsum("bnd,bd->bn", image, text)
    kept = select_tokens(cfg.method, scores, cfg.keep if cfg.method != "none" else None, **kw)
    gathered = torch.gather(features, 1, kept[..., None].expand(-1, -1, features.shape[-1]))
    with torch.no_grad():
        return kept, tiny.vision.projector(gathered)


@pytest.mark.parametrize("method,keep", CASES)
def test_onnxruntime_matches_pytorch(tmp_path, tiny, tiny_reference, projection, method, keep):
    import onnx
    import onnxruntime as ort

    cfg = make_config(method, keep)
    path = tmp_path / "vision.onnx"
    io = export_vision_onnx(tiny.vision, cfg, path, debug_scores=True,
                            clip_projection=projection if method == "hiprune++" else None)
    model = onnx.load(str(path))
    assert model.ir_version == ONNX_IR_VERSION
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == ONNX_OPSET
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"NonZero", "ScatterElements", "ScatterND"}
    # Only the scored layers materialise attention probabilities for the score reduction.
    assert sum(1 for n in model.graph.node if n.op_type == "ReduceMean") == len(cfg.layers)
    assert [o.name for o in model.graph.output] == io.output_names

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feeds = {"pixel_values": tiny_reference["pixels"][:batch].numpy()}
        text = _text_embeds(batch, projection.out_features)
        if cfg.uses_prompt:
            feeds["text_embeds"] = text.numpy()
        visual, kept, scores = session.run(None, feeds)
        ref_kept, ref_visual = _reference(tiny, tiny_reference, cfg, projection, text, batch)
        assert kept.dtype == np.int64
        np.testing.assert_array_equal(kept, ref_kept.numpy())
        assert visual.shape == (batch, cfg.output_count, tiny.config.text_config.hidden_size)
        np.testing.assert_allclose(visual, ref_visual.numpy(), atol=1e-4, rtol=0)
        if cfg.layers:
            ref_scores = tiny_reference["scores"][:batch, list(cfg.layers)].numpy()
            np.testing.assert_allclose(scores, ref_scores, atol=1e-6, rtol=0)


def test_none_graph_has_no_selection(tmp_path, tiny):
    import onnx

    path = tmp_path / "none.onnx"
    export_vision_onnx(tiny.vision, make_config("none", None), path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "TopK" not in ops and "GatherElements" not in ops and "ReduceMean" not in ops


def test_fp16_graph_keeps_layernorm_and_scores_in_float32(tmp_path, tiny):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "v16.onnx"
    export_vision_onnx(tiny.vision, make_config("hiprune", 64), path, precision="fp16", debug_scores=True)
    model = onnx.load(str(path))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.output}
    assert types["visual_features"] == onnx.TensorProto.FLOAT16
    assert types["layer_scores"] == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    visual, kept, _ = session.run(None, {"pixel_values": pixels.half().numpy()})
    assert visual.dtype == np.float16 and np.isfinite(visual).all()
    assert kept.shape == (1, 64)
