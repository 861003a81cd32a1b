"""The torch-free inputs (runtime.images, runtime.tokenizer, runtime.chat_template,
runtime.prompts) against transformers, bit for bit: pixel values on images of many modes and
sizes for the LLaVA-1.5 and LLaVA-NeXT processors, chat text, prompt ids and decoded text for the
tiny tokenizers, a llava-hf-style LLaMA tokenizer (three serialisations) and CLIP text tokenizers."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakes.inputs import LLAVA_15_TEMPLATE, copy_folder, write_clip_tokenizer, write_images, write_llama_tokenizer
from runtime.errors import UserError
from runtime.images import (AnyresImageProcessor, ClipImageProcessor, best_resolution, image_processor_from_dir,
                            load_image)
from runtime.prompts import ChatEncoder, ChatTemplate, Tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoProcessor, AutoTokenizer  # noqa: E402
from transformers.image_utils import load_image as hf_load_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE_NAMES = ["rgb_640x480.jpg", "rgb_333x500.png", "rgb_1000x300.png", "tiny_1x1.png", "tiny_2x3.png",
               "wide_2000x40.png", "tall_40x2000.jpg", "rgba.png", "la.png", "l.png", "p.png",
               "p_transparent_index.png", "p_partial_alpha.png", "rgb_trns_colour.png", "i16.png", "cmyk.jpg",
               "bilevel_1bit.png", "exif6.jpg", "exif8.jpg", "photo.webp", "alpha.webp", "animated.gif"]
PROMPTS = ["What is in the image?", "Describe the picture in detail.", "café, naïve résumé, Ελληνικά",
           "日本語のテキストと中文", "emoji 🤖🚀👍🏽 mixed", "  leading and trailing  ", "tabs\tand\nnewlines\n\nhere",
           "\r\nwindows line\r\n", "<image>", "what is <image> here?", "USER: fake turn ASSISTANT:", "</s><s>",
           "The photo shows a red car " * 300]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dirs():
    from models import TINY_NAME, TINY_NEXT_NAME, ensure_tiny_checkpoint

    return {"llava": Path(ensure_tiny_checkpoint(TINY_NAME)), "next": Path(ensure_tiny_checkpoint(TINY_NEXT_NAME))}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("lean_images"))


@pytest.fixture(scope="module")
def processors(tiny_dirs):
    """(ours, HF's PIL image processor) for LLaVA-1.5 and LLaVA-NeXT."""
    out = {}
    for key, folder in tiny_dirs.items():
        hf = AutoProcessor.from_pretrained(folder).image_processor
        assert type(hf).__name__.endswith("Pil"), "transformers picked the torchvision processor"
        out[key] = (image_processor_from_dir(folder), hf)
    return out


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory, tiny_dirs):
    section = json.loads((tiny_dirs["llava"] / "processor_config.json").read_text())["image_processor"]
    root = tmp_path_factory.mktemp("llama_tokenizers")
    return {
        "metaspace": write_llama_tokenizer(root / "metaspace", image_processor=section),
        "normalizer": write_llama_tokenizer(root / "normalizer", normalizer_style=True, image_processor=section),
        "checkpoint": write_llama_tokenizer(root / "checkpoint", normalizer_style=True, llava_config=True,
                                            image_processor=section),
    }


@pytest.fixture(scope="module")
def hiprune_engine(tmp_path_factory):
    from fakes.engines import build_engine_dir

    # the same directory test_text_tower builds: one build per session
    return Path(build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "hiprune++"))


def _file(image_files, name):
    if name not in image_files:
        pytest.skip(f"{name}: this Pillow cannot write it")
    return image_files[name]


# ---------------------------------------------------------------------------------------------
# pixels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_clip_pixels_equal_hf(name, image_files, processors):
    path = _file(image_files, name)
    ours, hf = processors["llava"]
    assert isinstance(ours, ClipImageProcessor)
    expected = hf(hf_load_image(str(path)), return_tensors="np")["pixel_values"]
    got = ours([load_image(path)])
    assert got.dtype == np.float32 and got.shape == expected.shape == (1, 3, 336, 336)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_anyres_views_equal_hf(name, image_files, processors):
    path = _file(image_files, name)
    ours, hf = processors["next"]
    assert isinstance(ours, AnyresImageProcessor)
    out = hf(hf_load_image(str(path)), return_tensors="np")
    views, size = ours.views(load_image(path))
    assert size == tuple(int(v) for v in out["image_sizes"][0])
    assert views.shape == out["pixel_values"].shape[1:]  # one image: no batch padding
    assert np.array_equal(views, out["pixel_values"][0])


def test_anyres_batch_is_each_image_unpadded(image_files, processors):
    """HF pads a batch to its largest view count; we return each image's own views."""
    ours, hf = processors["next"]
    names = ["wide_2000x40.png", "rgb_640x480.jpg", "tiny_1x1.png"]
    out = hf([hf_load_image(str(image_files[n])) for n in names], return_tensors="np")
    ours_out = ours([load_image(image_files[n]) for n in names])
    assert [len(v) for v, _ in ours_out] == [4, 5, 3]
    for b, (views, size) in enumerate(ours_out):
        assert np.array_equal(views, out["pixel_values"][b, :len(views)])
        assert size == tuple(int(v) for v in out["image_sizes"][b])


def test_exif_portrait_is_upright(image_files):
    stored = Image.open(image_files["exif6.jpg"])
    assert stored.size == (400, 300)
    assert load_image(image_files["exif6.jpg"]).size == (300, 400)


def test_rgba_pil_image_is_composited_on_white_by_the_processor(processors):
    """A PIL RGBA image given to the processor directly (not via load_image) goes through HF's
    convert_to_rgb white compositing."""
    ours, hf = processors["llava"]
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 4), dtype=np.uint8))
    assert np.array_equal(ours([image]), hf(image, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("shape, dtype", [((50, 70, 3), np.uint8), ((50, 70, 4), np.uint8), ((50, 70, 3), np.int64)])
def test_arrays_equal_hf(shape, dtype, processors):
    ours, hf = processors["llava"]
    array = np.random.default_rng(4).integers(0, 256, shape).astype(dtype)
    expected = hf(array.astype(np.uint8), return_tensors="np")["pixel_values"]
    assert np.array_equal(ours([load_image(array)]), expected)


def test_grey_array_is_repeated_to_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.asarray(load_image(grey)), np.repeat(grey[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(load_image(grey[..., None])), np.repeat(grey[..., None], 3, axis=2))


def test_sources_agree(image_files):
    path = image_files["rgb_640x480.jpg"]
    reference = np.asarray(load_image(path))
    data = path.read_bytes()
    for source in (str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), Image.open(path)):
        assert np.array_equal(np.asarray(load_image(source)), reference)


def test_best_resolution_equals_hf():
    from transformers.image_processing_utils import select_best_resolution

    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    rng = np.random.default_rng(9)
    sizes = [(1, 1), (2, 3), (40, 2000), (2000, 40), (336, 336), (672, 672), (337, 673), (4000, 3000)]
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(300)]
    for size in sizes:
        assert best_resolution(size, pinpoints) == tuple(select_best_resolution(size, pinpoints)), size


def test_factory_reads_legacy_preprocessor_config(llama_dirs):
    assert isinstance(image_processor_from_dir(llama_dirs["metaspace"]), ClipImageProcessor)


def test_factory_refuses_unknown_or_missing_config(tmp_path):
    with pytest.raises(UserError, match="no image processor config"):
        image_processor_from_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "SiglipImageProcessor"}))
    with pytest.raises(UserError, match="SiglipImageProcessor"):
        image_processor_from_dir(tmp_path)


# ---------------------------------------------------------------------------------------------
# load_image errors: one clear line each
# ---------------------------------------------------------------------------------------------
def _one_line_error(source, match):
    with pytest.raises(UserError, match=match) as info:
        load_image(source)
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path, image_files):
    _one_line_error(tmp_path / "missing.png", "does not exist")
    _one_line_error(tmp_path, "not a file")
    (tmp_path / "empty.png").write_bytes(b"")
    _one_line_error(tmp_path / "empty.png", "empty")
    (tmp_path / "notes.png").write_text("not an image at all")
    _one_line_error(tmp_path / "notes.png", "not a readable image")
    for name in ("rgb_640x480.jpg", "rgb_333x500.png"):
        data = image_files[name].read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        _one_line_error(tmp_path / f"cut_{name}", "truncated|damaged")
    _one_line_error(b"", "empty")
    _one_line_error(b"\x89PNG\r\n\x1a\n garbage", "not a readable image|truncated|damaged")
    _one_line_error("https://example.com/cat.png", "not fetched")
    _one_line_error("data:image/png;base64,AAAA", "not fetched")
    _one_line_error(io.StringIO("text"), "binary mode")
    _one_line_error(12, "not int")


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side in (40, 100):  # 1600 px: PIL would only warn; 10000 px: PIL raises
        path = tmp_path / f"bomb{side}.png"
        Image.new("RGB", (side, side)).save(path)
        _one_line_error(path, "too large")


@pytest.mark.parametrize("array, match", [
    (np.zeros((10, 10, 3), np.float32), "float"),
    (np.full((10, 10, 3), 300, np.int32), "0..255"),
    (np.full((10, 10, 3), -1, np.int16), "0..255"),
    (np.zeros((10, 10, 3), bool), "uint8"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
    (np.zeros((3, 20, 20), np.uint8), "channels first"),
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.array([["a"]], dtype=object), "uint8"),
])
def test_array_errors(array, match):
    _one_line_error(array, match)


# ---------------------------------------------------------------------------------------------
# chat text, prompt ids, decode
# ---------------------------------------------------------------------------------------------
def _hf_image_prompt(processor, prompt):
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    return text, processor.tokenizer(text)["input_ids"]


def _check_prompts(folder):
    hf = AutoProcessor.from_pretrained(folder)
    ours = ChatEncoder.from_dir(folder)
    assert len(ours.tokenizer) == len(hf.tokenizer)
    assert ours.image_token_id == hf.tokenizer.convert_tokens_to_ids("<image>")
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours.tokenizer, f"{name}_token_id") == getattr(hf.tokenizer, f"{name}_token_id"), name
    for prompt in PROMPTS:
        text, ids = _hf_image_prompt(hf, prompt)
        assert ours.image_prompt_text(prompt) == text, prompt
        assert ours.image_prompt_ids(prompt) == ids, prompt
    rng = np.random.default_rng(2)
    special = sorted(hf.tokenizer.all_special_ids)
    sequences = [rng.integers(0, len(hf.tokenizer), 60).tolist() for _ in range(30)]
    sequences += [special + [5, 6] + special, [], _hf_image_prompt(hf, PROMPTS[4])[1]]
    for ids in sequences:
        assert ours.decode(ids) == hf.tokenizer.decode(ids, skip_special_tokens=True), ids
        assert ours.tokenizer.decode(ids, skip_special_tokens=False) == hf.tokenizer.decode(ids), ids
    beyond = [len(hf.tokenizer) + 7, 5, len(hf.tokenizer) + 100]  # prompt-table ids: dropped, as HF drops them
    assert ours.decode(beyond) == hf.tokenizer.decode(beyond, skip_special_tokens=True)
    assert ours.decode([-1, 5]) == hf.tokenizer.decode([5], skip_special_tokens=True)
    return hf, ours


@pytest.mark.parametrize("key", ["llava", "next"])
def test_tiny_prompts_equal_hf(key, tiny_dirs):
    _check_prompts(tiny_dirs[key])


def test_engine_processor_prompts_equal_hf(hiprune_engine):
    _check_prompts(hiprune_engine / "processor")


@pytest.mark.parametrize("layout", ["metaspace", "normalizer", "checkpoint"])
def test_llama_prompts_equal_hf(layout, llama_dirs):
    hf, ours = _check_prompts(llama_dirs[layout])
    expected = {"metaspace": "LlamaTokenizer", "normalizer": "LlamaTokenizer", "checkpoint": "TokenizersBackend"}
    assert type(hf.tokenizer).__name__ == expected[layout]
    assert ChatTemplate.from_dir(llama_dirs[layout]).source == LLAVA_15_TEMPLATE
    if layout == "normalizer":  # transformers rebuilds the pipeline: the file as written would differ
        from tokenizers import Tokenizer as Backend

        raw = Backend.from_file(str(llama_dirs[layout] / "tokenizer.json"))
        text = "USER: <image>\nWhat is in the image? ASSISTANT:"
        assert raw.encode(text).ids != hf.tokenizer(text)["input_ids"] == ours.tokenizer.encode(text)


def _edit_json(file, **changes):
    data = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    file.write_text(json.dumps(data))


def _pad_from_padding(folder):
    padding = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 2,
               "pad_type_id": 0, "pad_token": "</s>"}
    _edit_json(folder / "tokenizer.json", padding=padding)
    _edit_json(folder / "tokenizer_config.json", pad_token=None)


def _legacy_special_tokens_map(folder):
    _edit_json(folder / "tokenizer_config.json", added_tokens_decoder=None, tokenizer_class="TokenizersBackend",
               bos_token=None, eos_token=None, unk_token=None, pad_token=None)
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": ["<image>"]}))


TOKENIZER_VARIANTS = {
    "pad token from tokenizer.json padding": _pad_from_padding,
    "legacy special_tokens_map.json": _legacy_special_tokens_map,
    "no tokenizer_config.json": lambda folder: (folder / "tokenizer_config.json").unlink(),
    "split special tokens, legacy, no prefix space": lambda folder: _edit_json(
        folder / "tokenizer_config.json", split_special_tokens=True, legacy=True, add_prefix_space=False),
    "extra and model special tokens": lambda folder: _edit_json(
        folder / "tokenizer_config.json", extra_special_tokens=["<new_tok>"], image_token="<image>"),
}


@pytest.mark.parametrize("variant", list(TOKENIZER_VARIANTS))
def test_tokenizer_config_variants_equal_hf(variant, llama_dirs, tmp_path):
    folder = copy_folder(llama_dirs["metaspace"], tmp_path / "variant")
    TOKENIZER_VARIANTS[variant](folder)
    hf, ours = AutoTokenizer.from_pretrained(folder), Tokenizer.from_dir(folder)
    text = "USER: <image>\nhi <pad> there</s> <new_tok> ASSISTANT:"
    assert len(ours) == len(hf)
    assert ours.encode(text) == hf(text)["input_ids"]
    assert ours.special_tokens == hf.special_tokens_map
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == \
        (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id)
    everything = list(range(len(hf)))
    assert ours.decode(everything) == hf.decode(everything, skip_special_tokens=True)
    assert ours.decode(everything, skip_special_tokens=False) == hf.decode(everything)


def test_multi_turn_chat_equals_hf(llama_dirs):
    folder = llama_dirs["metaspace"]
    hf, ours = AutoProcessor.from_pretrained(folder), ChatEncoder.from_dir(folder)
    chat = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red car."}], "name": None},
            {"role": "user", "content": [{"type": "text", "text": "And the colour of the sky?"}]}]
    text = hf.apply_chat_template(chat, add_generation_prompt=True)
    assert ours.chat_text(chat) == text
    assert ours.chat_ids(chat) == hf.tokenizer(text)["input_ids"]
    as_strings = [{"role": "user", "content": "What is this?"}, {"role": "assistant", "content": "A car."}]
    as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in as_strings]
    assert ours.chat_text(as_strings, add_generation_prompt=False) == \
        hf.apply_chat_template(as_parts, add_generation_prompt=False)


def test_bos_in_template_is_not_doubled(llama_dirs, tmp_path):
    folder = copy_folder(llama_dirs["metaspace"], tmp_path / "bos")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "{{ bos_token }}" + LLAVA_15_TEMPLATE}))
    hf, ours = AutoProcessor.from_pretrained(folder), ChatEncoder.from_dir(folder)
    chat = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]  # tokenize=True needs no image
    expected = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    assert ours.chat_ids(chat) == list(np.asarray(expected).reshape(-1))
    assert ours.chat_ids(chat).count(ours.tokenizer.bos_token_id) == 1


def test_template_lookup_order_equals_hf(llama_dirs, tmp_path):
    folder = copy_folder(llama_dirs["metaspace"], tmp_path / "order")
    (folder / "chat_template.jinja").write_text("JINJA{{ messages | length }}")
    assert ChatTemplate.from_dir(folder).source == AutoProcessor.from_pretrained(folder).chat_template == \
        LLAVA_15_TEMPLATE  # chat_template.json wins over chat_template.jinja
    (folder / "chat_template.json").unlink()
    assert ChatTemplate.from_dir(folder).source == AutoProcessor.from_pretrained(folder).chat_template
    config = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, "chat_template": "CONFIG"}))
    assert ChatTemplate.from_dir(folder).source == AutoProcessor.from_pretrained(folder).chat_template == "CONFIG"


def test_template_environment_equals_hf(tiny_dirs):
    """tojson without HTML escaping, namespace, loop controls, raise_exception, special tokens."""
    source = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
              "{% set ns.n = ns.n + 1 %}{{ m | tojson }}\n{% endfor %}{{ ns.n }} {{ bos_token }}{{ image_token }}"
              "{% generation %}gen{% endgeneration %}{{ dict(a=1) | tojson }}")
    chat = [{"role": "user", "content": "<b>&'\"é</b>", "extra": np.int64(3)}, {"role": "a", "content": None},
            {"role": "x", "content": "y"}]
    tokenizer = Tokenizer.from_dir(tiny_dirs["llava"])
    hf_tok = AutoTokenizer.from_pretrained(tiny_dirs["llava"])
    expected = hf_tok.apply_chat_template(chat, chat_template=source, tokenize=False)
    assert ChatTemplate(source).render(chat, special_tokens=tokenizer.special_tokens) == expected
    with pytest.raises(UserError, match="refused the chat: no system role"):
        ChatTemplate("{{ raise_exception('no system role') }}").render(chat)
    with pytest.raises(UserError, match="namespace"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render(chat)


def test_prompt_and_template_errors(tiny_dirs):
    ours = ChatEncoder.from_dir(tiny_dirs["llava"])
    for prompt, match in [(12, "must be text"), (b"\xff\xfe bad", "UTF-8"), ("lone \udc80 surrogate", "Unicode"),
                          (" \n\t ", "empty"), (None, "must be text")]:
        with pytest.raises(UserError, match=match):
            ours.image_prompt_ids(prompt)
    assert ours.image_prompt_ids("café".encode()) == ours.image_prompt_ids("café")
    for chat, match in [([], "non-empty"), ("text", "non-empty"), ([{"content": "x"}], "no role"),
                        ([{"role": "user", "content": 5}], "string or a list"),
                        ([{"role": "user", "content": [{"text": "x"}]}], "type")]:
        with pytest.raises(UserError, match=match):
            ours.chat_ids(chat)
    for broken in ("{% for m in messages %}", "{{ unclosed", "{% generation %}no end"):
        with pytest.raises(UserError, match="broken") as info:
            ChatTemplate(broken, "the chat template in X")
        assert "\n" not in str(info.value)


def test_clip_text_tokenizer_of_an_engine_equals_hf(hiprune_engine):
    folder = hiprune_engine / "text_tokenizer"
    hf, ours = AutoTokenizer.from_pretrained(folder), Tokenizer.from_dir(folder)
    for prompt in PROMPTS + ["", "A Photo Of A CAT"]:
        assert ours.encode(prompt, add_special_tokens=False) == \
            hf(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"], prompt


def test_clip_class_tokenizer_equals_hf(tmp_path):
    folder = write_clip_tokenizer(tmp_path / "clip")
    hf, ours = AutoTokenizer.from_pretrained(folder), Tokenizer.from_dir(folder)
    assert type(hf).__name__ == "CLIPTokenizer" and len(ours) == len(hf)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (hf.bos_token_id, hf.eos_token_id,
                                                                        hf.pad_token_id)
    for prompt in PROMPTS + ["", "A Photo Of A CAT", "  multiple   spaces\tand\nnewlines ", "it's they're"]:
        for special in (False, True):
            assert ours.encode(prompt, add_special_tokens=special) == \
                hf(prompt, add_special_tokens=special, verbose=False)["input_ids"], (prompt, special)
    rng = np.random.default_rng(6)
    for ids in [rng.integers(0, len(hf), 40).tolist() for _ in range(20)]:
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_broken_tokenizer_files(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizers file"):
        Tokenizer.from_dir(tmp_path)


# ---------------------------------------------------------------------------------------------
# the point of it all: no heavy imports
# ---------------------------------------------------------------------------------------------
def test_modules_import_without_torch_or_transformers():
    code = ("import sys, runtime.images, runtime.prompts, runtime.tokenizer, runtime.chat_template\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'tensorrt') "
            "if m in sys.modules)\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
