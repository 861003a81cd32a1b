"""User prompts and chats -> the decoder's token ids, from an engine directory's `processor/`
folder, without transformers: the tokenizer (`runtime.tokenizer`) and the chat template
(`runtime.chat_template`) rebuilt from the files, equal to what the checkpoint's HF processor
produces (`processor.apply_chat_template(...)` then `processor.tokenizer(text)`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .chat_template import ChatTemplate
from .errors import UserError, one_line
from .tokenizer import Tokenizer

__all__ = ["ChatEncoder", "ChatTemplate", "Tokenizer", "checked_messages", "checked_text"]

DEFAULT_IMAGE_TOKEN = "<image>"


def checked_text(text: Any, what: str = "the prompt") -> str:
    """`text` as a str that is valid Unicode: UTF-8 bytes are decoded, anything else (other
    types, undecodable bytes, strings with lone surrogates) is a UserError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(text, str):
        raise UserError(f"{what} must be text, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{what} is not valid Unicode ({exc.reason} at character {exc.start})") from None
    return text


def checked_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI-style messages checked: each a dict with a str role and content that is a string or
    a list of parts; every text is valid Unicode. A string content becomes one text part (HF
    passes strings through, and LLaVA templates, which loop over parts, would drop them)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise UserError("a chat must be a non-empty list of messages")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise UserError(f"message {index} is a {type(message).__name__}, not a dict")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise UserError(f"message {index} has no role")
        message = dict(message)
        content = message.get("content")
        if isinstance(content, (str, bytes, bytearray)):
            message["content"] = [{"type": "text", "text": checked_text(content, f"message {index}'s text")}]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise UserError(f"part {j} of message {index} is not a {{\"type\": ...}} dict")
                if part["type"] == "text":
                    part = {**part, "text": checked_text(part.get("text"), f"the text of part {j} of message {index}")}
                parts.append(part)
            message["content"] = parts
        elif content is not None:
            raise UserError(f"message {index}'s content must be a string or a list of parts, "
                            f"not {type(content).__name__}")
        out.append(message)
    return out


class ChatEncoder:
    """Chat text and token ids for one processor folder (the tokenizer, the chat template and
    the image placeholder the decoder's prompt table replaces)."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, image_token: str = DEFAULT_IMAGE_TOKEN):
        self.tokenizer, self.template, self.image_token = tokenizer, template, image_token

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "ChatEncoder":
        folder = Path(path)
        if not folder.is_dir():
            raise UserError(f"processor folder {folder} does not exist")
        tokenizer = Tokenizer.from_dir(folder)
        image_token = tokenizer.special_tokens.get("image_token", DEFAULT_IMAGE_TOKEN)
        config = folder / "processor_config.json"
        if config.is_file():
            try:
                image_token = json.loads(config.read_text(encoding="utf-8")).get("image_token", image_token)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
                raise UserError(f"{config} is not a readable JSON object: {one_line(exc)}") from None
        return cls(tokenizer, ChatTemplate.from_dir(folder), str(image_token))

    @property
    def image_token_id(self) -> int | None:
        return self.tokenizer.token_to_id(self.image_token)

    # ---- one image + a question ---------------------------------------------------------------
    @staticmethod
    def image_question(prompt: Any) -> list[dict[str, Any]]:
        """The one-turn chat of an image followed by the prompt."""
        prompt = checked_text(prompt)
        if not prompt.strip():
            raise UserError("the prompt is empty")
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def image_prompt_text(self, prompt: Any) -> str:
        return self.chat_text(self.image_question(prompt))

    def image_prompt_ids(self, prompt: Any) -> list[int]:
        return self.chat_ids(self.image_question(prompt))

    # ---- general chats ------------------------------------------------------------------------
    def chat_text(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
        """The chat template rendered on OpenAI-style messages (`apply_chat_template(...,
        tokenize=False)`)."""
        return self.template.render(checked_messages(messages), add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.tokenizer.special_tokens)

    def chat_ids(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat. The tokenizer's special tokens (BOS) are added unless
        the text already starts with BOS, as the processor's `apply_chat_template(tokenize=True)`
        decides; llava templates do not write BOS, so this is `tokenizer(text)`."""
        text = self.chat_text(messages, add_generation_prompt)
        bos = self.tokenizer.bos_token
        return self.tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
