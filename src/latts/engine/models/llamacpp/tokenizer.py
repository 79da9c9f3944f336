"""A GGUF's own tokenizer and chat template, behind the Hugging Face tokenizer methods latts calls.

The llama.cpp engine reads everything from the GGUF file: tokenization and detokenization are
llama.cpp's (``llama_tokenize`` with special tokens parsed, ``llama_detokenize``), the vocabulary is the
file's token texts, and the chat template (``tokenizer.chat_template``) is rendered with jinja2 the way
transformers renders chat templates (its own renderer, with the file's special tokens as variables).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from latts.errors import LattsError


class GGUFTokenizer:
    """The subset of a HF tokenizer latts uses (``__call__``, ``encode``, ``decode``, ``get_vocab``,
    ``convert_tokens_to_ids``, ``apply_chat_template``, ``chat_template``, ``eos_token_id``), over a llama.cpp
    model's vocabulary."""

    def __init__(self, lib, model) -> None:
        self.lib = lib
        self.vocab = lib.llama_model_get_vocab(model)
        self._model = model
        n = lib.llama_vocab_n_tokens(self.vocab)
        self._texts = [lib.llama_vocab_get_text(self.vocab, i).decode("utf-8", errors="replace") for i in range(n)]
        self._ids = {t: i for i, t in enumerate(self._texts)}
        template = lib.llama_model_chat_template(model, None)
        self.chat_template: str | None = template.decode() if template else None
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.bos_token_id = _id_or_none(lib.llama_vocab_bos(self.vocab))
        self.eos_token_id = _id_or_none(lib.llama_vocab_eos(self.vocab))
        eot = _id_or_none(lib.llama_vocab_eot(self.vocab))
        self.eos_token_ids = tuple(sorted({i for i in (self.eos_token_id, eot) if i is not None}))
        self.bos_token = self._texts[self.bos_token_id] if self.bos_token_id is not None else None
        self.eos_token = self._texts[self.eos_token_id] if self.eos_token_id is not None else None

    def __len__(self) -> int:
        return len(self._texts)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """``{"input_ids": ids}`` of ``text``, as a HF tokenizer's call returns them."""
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in it are parsed; BOS added when the file asks for it
        and ``add_special_tokens``."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special_tokens, True)
        if n < 0:  # the buffer was too small: -n tokens
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special_tokens, True)
        if n < 0:
            raise LattsError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return list(buf[:n])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; control tokens (BOS, EOS, chat markers) are left out with ``skip_special_tokens``."""
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        arr = (ctypes.c_int32 * len(ids))(*ids)
        cap = 8 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = self.lib.llama_detokenize(self.vocab, arr, len(ids), buf, cap, False, not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n + 16
        raise LattsError(f"llama.cpp could not detokenize {len(ids)} tokens")

    def get_vocab(self) -> dict[str, int]:
        """Token text -> id, over the whole vocabulary (what two tokenizers are compared on)."""
        return dict(self._ids)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        """The id of a token text (None when the vocabulary has no such token), or of each of a list."""
        if isinstance(tokens, str):
            return self._ids.get(tokens)
        return [self._ids.get(t) for t in tokens]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = True,
                            **kwargs) -> str | list[int]:
        """Render ``messages`` with the GGUF's chat template (as transformers renders templates); token ids
        (special tokens in the text parsed, none added) when ``tokenize``."""
        if not self.chat_template:
            raise LattsError("this GGUF has no chat template (tokenizer.chat_template): give a plain prompt")
        from transformers.utils.chat_template_utils import render_jinja_template

        special = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token)) if v}
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **special, **kwargs)
        text = rendered[0]
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _id_or_none(token: int) -> int | None:
    return None if token < 0 else int(token)
