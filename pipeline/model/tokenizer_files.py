"""The checkpoint's tokenizer read from its files, for the driver's prompt plan, without transformers.

Any import of transformers' tokenizers or configs imports torch where torch is installed: 2.5 s of
CPU at every run's start, on the path to the first dispatch, beside Ray's own start on the same
cores (measured). Everything the plan needs is in the checkpoint's files: the `tokenizers` library
encodes with tokenizer.json (what transformers' fast tokenizer calls), tokenizer_config.json names
the special tokens, and a chat template is rendered by transformers' own renderer
(`transformers.utils.chat_template_utils`, which imports neither torch nor a model), with the same
arguments its tokenizer and processor give it. The tests hold every prompt plan equal to the one
transformers' tokenizer and processor give.
"""

from __future__ import annotations

import json
from pathlib import Path

# The named special tokens transformers hands a chat template (its special_tokens_map).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's fields."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_chat_template(model_dir: Path, tokenizer_config: dict) -> str | None:
    """The template transformers' tokenizer would use: tokenizer_config.json's, else the
    checkpoint's chat_template.jinja or chat_template.json (where processors save theirs)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template:
        return template
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    legacy = model_dir / "chat_template.json"
    if legacy.is_file():
        return json.loads(legacy.read_text()).get("chat_template")
    return None


class CheckpointTokenizer:
    """What prompts.build_prompt_plan and tokenizer_eos_ids use of a transformers tokenizer."""

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        config_path = self.model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.special_tokens = {name: text for name in SPECIAL_TOKEN_NAMES
                               if (text := _token_text(config.get(name))) is not None}
        self.chat_template = read_chat_template(self.model_dir, config)

    @classmethod
    def load(cls, model_dir: Path) -> CheckpointTokenizer | None:
        """None for a checkpoint without tokenizer.json (only transformers can read it)."""
        return cls(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _id(self, name: str) -> int | None:
        text = self.special_tokens.get(name)
        return self._tokenizer.token_to_id(text) if text is not None else None

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._id("unk_token")

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False) -> str:
        if tokenize:
            raise ValueError("only the rendered text is needed here")
        if not self.chat_template:
            raise ValueError(f"{self.model_dir} has no chat template")
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[conversation], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens)
        return rendered[0]
