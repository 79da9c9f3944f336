"""A reasoning model with thinking tags for the tests: random weights, the default model's tokenizer plus
``<think>`` / ``</think>``, and a chat template that opens thinking after the assistant header (as Qwen3 and
the DeepSeek-R1 distills do). No such model ships here, so the tests build one and steer it with a logit
bias; :func:`write_gguf` exports it for llama.cpp's server (the remote backend's tests).

The tags are added as Qwen3 and R1 add them: single added tokens that are not special, so decoded texts
keep them (llama.cpp: ``USER_DEFINED`` tokens, which it renders and which prompts are split on).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

THINK, THINK_END = "<think>", "</think>"

# ChatML, as the default model's, with thinking opened where the assistant's turn begins
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)


def build_think_folder(folder: Path) -> Path:
    """Write a 2-layer random-weight Llama with the thinking-tag tokenizer into ``folder`` (an HF folder)."""
    import transformers as tf
    from tokenizers import AddedToken

    from latts.engine.loading.loader import DEFAULT_MODEL, hf_folder

    tok = tf.AutoTokenizer.from_pretrained(hf_folder(DEFAULT_MODEL))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK, THINK_END)])
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = tf.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms so that every weight matters; logits of a few units, not ~0
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.lm_head.weight.mul_(50.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout of a Q or K projection to GGML's (llama.cpp's converter does the same)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, path: Path) -> Path:
    """Export the HF folder written by :func:`build_think_folder` as an F32 GGUF for llama.cpp: the default
    model's GGUF tokenizer (tokens, merges, pre-tokenizer) with the two tags appended as user-defined tokens."""
    import gguf
    import transformers as tf

    from latts.engine.loading.loader import DEFAULT_MODEL, bundled_path

    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(folder)
    c = model.config
    base = gguf.GGUFReader(str(bundled_path(DEFAULT_MODEL)))
    tokens = [t.decode("utf-8") if isinstance(t, bytes) else t for t in base.fields["tokenizer.ggml.tokens"].contents()]
    types = list(base.fields["tokenizer.ggml.token_type"].contents())
    merges = list(base.fields["tokenizer.ggml.merges"].contents())
    for t in (THINK, THINK_END):
        assert tok.convert_tokens_to_ids(t) == len(tokens), "the tags follow the base vocabulary"
        tokens.append(t)
        types.append(gguf.TokenType.USER_DEFINED)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("latts think-tag test model")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_theta if hasattr(c, "rope_theta") else 10000.0))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(0)
    w.add_pad_token_id(tok.eos_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
