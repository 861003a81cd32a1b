"""Files for the lean-inputs tests: images in many modes and formats, and tokenizer folders
shaped like real checkpoints (a LLaMA/Vicuna tokenizer as llava-hf ships it, a CLIP text
tokenizer), all generated offline."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# llava-hf/llava-1.5-7b-hf's chat template (chat_template.json), the real text
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CORPUS = """USER ASSISTANT What is in the image? Describe the picture in detail. How many people are there?
The photo shows a red car parked near a tree, a dog on the grass and two people at a table.
Is it safe to cross the road? There is a bicycle, a truck and a traffic light. Café résumé naïve.
Answer the question using a single word or phrase. What color is the sky? Blue, cloudy, bright."""


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _photo(rng, height: int, width: int) -> np.ndarray:
    """A smooth gradient with noise and a few blocks: JPEG-friendly and not symmetric."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    base = base + rng.normal(0, 12, (height, width, 3))
    base[: height // 3, : width // 4] = (250, 30, 40)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_images(root: Path) -> dict[str, Path]:
    """name -> file, one per mode / format / size the HF stack must be matched on."""
    from PIL import Image, features

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    files: dict[str, Path] = {}

    def save(name, image, **kwargs):
        files[name] = root / name
        image.save(files[name], **kwargs)

    save("rgb_640x480.jpg", Image.fromarray(_photo(rng, 480, 640)), quality=90)
    save("rgb_333x500.png", Image.fromarray(_photo(rng, 500, 333)))
    save("rgb_1000x300.png", Image.fromarray(_photo(rng, 300, 1000)))
    save("tiny_1x1.png", Image.fromarray(_photo(rng, 1, 1)))
    save("tiny_2x3.png", Image.fromarray(_photo(rng, 3, 2)))
    save("wide_2000x40.png", Image.fromarray(_photo(rng, 40, 2000)))
    save("tall_40x2000.jpg", Image.fromarray(_photo(rng, 2000, 40)), quality=85)
    rgba = np.dstack([_photo(rng, 240, 320), np.tile(np.linspace(0, 255, 320).astype(np.uint8), (240, 1))])
    rgba[:, :40, :3] = 0  # fully transparent black columns: what dropping alpha reveals
    save("rgba.png", Image.fromarray(rgba))
    gray = _photo(rng, 200, 260)[..., 0]
    save("la.png", Image.fromarray(np.dstack([gray, gray[::-1]])))
    save("l.png", Image.fromarray(gray))
    palette = Image.fromarray(_photo(rng, 210, 300)).quantize(32)
    save("p.png", palette)
    save("p_transparent_index.png", palette, transparency=5)
    alphas = bytes(np.linspace(0, 255, 32).astype(np.uint8))  # a tRNS chunk with partial alphas
    save("p_partial_alpha.png", palette, transparency=alphas)
    save("rgb_trns_colour.png", Image.fromarray(_photo(rng, 180, 240)), transparency=(250, 30, 40))
    save("i16.png", Image.fromarray((rng.random((190, 250)) * 1200).astype(np.uint16)))  # 16-bit, mostly > 255
    save("cmyk.jpg", Image.fromarray(_photo(rng, 220, 280)).convert("CMYK"), quality=90)
    save("bilevel_1bit.png", Image.fromarray(_photo(rng, 150, 200)[..., 1] > 128))
    for orientation in (6, 8):  # a phone portrait: stored landscape, EXIF says rotate
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif{orientation}.jpg", Image.fromarray(_photo(rng, 300, 400)), quality=90, exif=exif.tobytes())
    if features.check("webp"):
        save("photo.webp", Image.fromarray(_photo(rng, 260, 350)), quality=80)
        save("alpha.webp", Image.fromarray(rgba), lossless=True)
    frames = [Image.fromarray(_photo(rng, 120, 160)).quantize(64) for _ in range(2)]
    files["animated.gif"] = root / "animated.gif"
    frames[0].save(files["animated.gif"], save_all=True, append_images=frames[1:], duration=100)
    return files


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------
def _trained_merges(pre_tokenizer, size: int, **trainer_kwargs) -> tuple[dict[str, int], list]:
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False, **trainer_kwargs)
    tok.train_from_iterator(CORPUS.splitlines() * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], model["merges"]


def _added_config(tokens: dict[int, str]) -> dict[str, dict]:
    return {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True} for i, t in tokens.items()}


def write_llama_tokenizer(folder: Path, *, normalizer_style: bool = False, llava_config: bool = False,
                          image_processor: dict | None = None) -> Path:
    """A llava-hf llava-1.5-style processor folder: a LLaMA BPE tokenizer with byte fallback
    (<unk> <s> </s>, the 256 byte tokens, then merges), `<image>` and `<pad>` added after the
    vocabulary, tokenizer_class LlamaTokenizer, the real llava-1.5 chat template.

    normalizer_style: the older serialisation (Prepend + Replace normalizer, no pre-tokenizer)
    instead of Metaspace. llava_config: a config.json with model_type llava next to it, as in a
    checkpoint folder (transformers then ignores the tokenizer class)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    trained, merges = _trained_merges(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), 600)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token in sorted(trained, key=trained.get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if normalizer_style:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    specials = [AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")]
    tok.add_special_tokens(specials)
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True),
                    AddedToken("<pad>", normalized=False, special=True)])
    tok.save(str(folder / "tokenizer.json"))
    image_id = tok.token_to_id("<image>")
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": _added_config({0: "<unk>", 1: "<s>", 2: "</s>", image_id: "<image>",
                                               image_id + 1: "<pad>"}),
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "left",
        "processor_class": "LlavaProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False, "unk_token": "<unk>", "use_default_system_prompt": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": LLAVA_15_TEMPLATE}))
    (folder / "processor_config.json").write_text(json.dumps({
        "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
        "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"}))
    if image_processor is not None:  # the legacy flat file, as llava-hf ships it
        (folder / "preprocessor_config.json").write_text(json.dumps(image_processor))
    if llava_config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llava", "image_token_index": image_id}))
    return folder


def write_clip_tokenizer(folder: Path) -> Path:
    """An openai/clip-style text tokenizer folder (tokenizer_class CLIPTokenizer): byte-level BPE
    with </w> word ends, lower-casing normalizer, <|startoftext|> / <|endoftext|>."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from runtime.tokenizer import CLIP_SPLIT

    folder.mkdir(parents=True, exist_ok=True)
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trained, merges = _trained_merges(split, 700, end_of_word_suffix="</w>", initial_alphabet=alphabet)
    vocab = {}
    for char in sorted(alphabet):
        vocab.setdefault(char, len(vocab))
    for char in sorted(alphabet):
        vocab.setdefault(char + "</w>", len(vocab))
    for token in sorted(trained, key=trained.get):
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                               unk_token="<|endoftext|>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = split
    tok.decoder = decoders.ByteLevel()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", eos), ("<|startoftext|>", bos),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.add_special_tokens([AddedToken(t, normalized=True, special=True) for t in ("<|startoftext|>", "<|endoftext|>")])
    tok.save(str(folder / "tokenizer.json"))
    config = {"added_tokens_decoder": {str(bos): {"content": "<|startoftext|>", "lstrip": False, "normalized": True,
                                                  "rstrip": False, "single_word": False, "special": True},
                                       str(eos): {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                                                  "rstrip": False, "single_word": False, "special": True}},
              "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": False, "do_lower_case": True,
              "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
              "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
