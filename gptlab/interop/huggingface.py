"""gptlab models as Hugging Face transformers models (GPT-2, Llama, Qwen3), GPT-2-layout models
into gptlab, with their tokenizers (`pip install gptlab[hf]`).

A model becomes the transformers architecture that computes the same thing (architecture()):
learned positions are GPT-2 (GPT2LMHeadModel); rotary positions with LayerNorm and the plain MLP
are GPT-NeoX (GPTNeoXForCausalLM, its residuals in sequence); rotary positions with RMSNorm and a
SwiGLU MLP are Llama (LlamaForCausalLM), and Qwen3 (Qwen3ForCausalLM) with QK-norm, whose RMSNorm
of each head's q and k, before the rotation, is gptlab's. A switch none of them has (soft-capped
logits, say) is refused in one line naming it.

gptlab's GPT has GPT-2's parameter names; what differs is the layout of four matrices per block
(transformers keeps c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj as Conv1D, (in, out): each the
transpose of an nn.Linear weight) and what GPT-2 always has that a gptlab model may leave out. A
layer gptlab leaves out becomes one that changes nothing: no bias, zero biases; attn_proj=false,
an identity projection; mlp=single (one layer and its activation), an inner size of n_embd and
an identity c_proj; mlp=none, zero weights. Llama and Qwen3 take c_attn's rows as q_proj, k_proj
and v_proj, and c_fc's (the gate's, then the up projection's) as gate_proj and up_proj. The
lecture's `heads` attention is the batched one with its heads' weights side by side. A model no
architecture computes (no residual, no norm, an encoder, the bigram model) is refused. A muP
model's multipliers are folded into its weights: its logits' 1/m into an untied lm_head, its
attention scale into the query weights (under QK-norm, the query norm's gain).

Tokenizers: a BPE is a `tokenizers` object already, saved as it is. A character vocabulary
becomes one too: each character of the vocabulary (newlines included) its own token, in the
vocabulary's order, with no normalizer, a split before every character and a decoder that joins
them without spaces; a character outside the vocabulary makes it raise (tokenizers' "Missing
[UNK] token"), as gptlab's own character tokenizer refuses it. gptlab models have no special
tokens: config.json names token 0 as bos and eos (transformers wants ids inside the vocabulary),
and generation_config.json names none, so generation runs max_new_tokens, as gptlab.sample does.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from gptlab.checkpoint import gptlab_checkpoint
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from gptlab.faults import SettingError
from gptlab.model import GPT, RMS_NORM_EPS, GPTConfig, LanguageModel

if TYPE_CHECKING:
    import transformers

# gptlab's activation -> transformers' name for the same function, and back
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "relu2": "relu2"}
IMPORTED_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, which gptlab's LayerNorms use
# the per-block matrices transformers keeps as Conv1D, (in, out)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# what a GPT-2 config may say that gptlab's GPT does not compute, and the value it must have
UNSUPPORTED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "converting to or from Hugging Face needs transformers and safetensors: pip install 'gptlab[hf]'"
        ) from None
    transformers.utils.logging.disable_progress_bar()  # one line of output, as every entry point
    return transformers


def architecture(config: GPTConfig) -> str:
    """The transformers class that computes what this model computes; what none does is refused
    before anything is written, in one line naming the switch."""
    cannot = {
        "arch": ("gpt", "the bigram model has no transformer"),
        "residual": (True, "their blocks add to the residual stream"),
        "causal": (True, "they are decoders: each token sees the ones before it"),
        "logit_softcap": (None, "none of GPT-2, Llama and Qwen3 caps its logits"),
    }
    for key, (needed, why) in cannot.items():
        if getattr(config, key) != needed:
            raise SettingError(f"model.{key}={getattr(config, key)} has no transformers equivalent ({why})")
    if config.position == "learned":
        gpt2 = {
            "norm": (("layernorm",), "LayerNorms"),
            "qk_norm": ((False,), "no QK-norm"),
            "mlp": (("gpt", "single", "none"), "an MLP that is not gated"),
        }
        for key, (allowed, what) in gpt2.items():
            if (value := getattr(config, key)) not in allowed:
                raise SettingError(
                    f"model.{key}={value} with learned positions has no transformers equivalent: GPT-2, "
                    f"which learns its positions, has {what} (model.{key}={allowed[0]})"
                )
        return "GPT2LMHeadModel"
    if config.norm == "layernorm":  # rotary positions, LayerNorm and a plain MLP: GPT-NeoX
        if config.mlp != "gpt" or config.qk_norm:
            key, value = ("mlp", config.mlp) if config.mlp != "gpt" else ("qk_norm", True)
            raise SettingError(
                f"model.{key}={value} with model.position=rope and model.norm=layernorm has no transformers "
                "equivalent: GPT-NeoX, which rotates positions and has LayerNorms, has a plain MLP "
                "(model.mlp=gpt) and no QK-norm"
            )
        return "GPTNeoXForCausalLM"
    rotary = {  # what Llama and Qwen3 have
        "norm": ("rmsnorm", "RMSNorm"),
        "mlp": ("swiglu", "a SwiGLU MLP"),
        "attn_proj": (True, "an output projection"),
    }
    for key, (needed, what) in rotary.items():
        if getattr(config, key) != needed:
            raise SettingError(
                f"model.{key}={getattr(config, key)} with model.position=rope has no transformers "
                f"equivalent: Llama and Qwen3, which rotate positions, have {what} (model.{key}={needed})"
            )
    if not config.qk_norm:
        return "LlamaForCausalLM"
    if config.bias:
        raise SettingError(
            "model.qk_norm=True with model.bias=True has no transformers equivalent: Qwen3's MLP has no "
            "biases (model.bias=False)"
        )
    if config.attention == "heads":
        raise SettingError(
            "model.qk_norm=True with model.attention=heads has no transformers equivalent: the lecture's "
            "heads each have their own q and k norms, Qwen3's heads share one (model.attention=sdpa)"
        )
    return "Qwen3ForCausalLM"


def mlp_inner_size(config: GPTConfig) -> int:
    """GPT-2's n_inner: the MLP's width, and 1 for no MLP (zero weights, which add nothing)."""
    return 1 if config.mlp == "none" else config.mlp_width


def hf_config(config: GPTConfig) -> Any:
    """The transformers config of the model's architecture."""
    kind = architecture(config)
    if kind == "GPT2LMHeadModel":
        return gpt2_config(config)
    transformers = transformers_module()
    settings = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_width,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": config.rope_base,
        "attention_bias": config.bias,
        "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_weights and config.width_multiplier == 1,  # muP: lm_head / m
        "bos_token_id": 0,
        "eos_token_id": 0,
        "architectures": [kind],
    }
    if kind == "LlamaForCausalLM":
        return transformers.LlamaConfig(**settings, mlp_bias=config.bias)
    if kind == "Qwen3ForCausalLM":
        return transformers.Qwen3Config(**settings)
    return transformers.GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_width,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        hidden_act=ACTIVATIONS[config.activation],
        max_position_embeddings=config.block_size,
        rotary_pct=1.0,  # every channel of a head (gptlab rotates them all)
        rotary_emb_base=config.rope_base,
        use_parallel_residual=False,  # attention, then the MLP on its result: gptlab's order
        layer_norm_eps=LAYER_NORM_EPS,
        attention_bias=config.bias,
        attention_dropout=config.dropout,
        hidden_dropout=config.dropout,
        tie_word_embeddings=settings["tie_word_embeddings"],
        bos_token_id=0,
        eos_token_id=0,
        architectures=[kind],
    )


def gpt2_config(config: GPTConfig) -> "transformers.GPT2Config":
    transformers = transformers_module()
    return transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=mlp_inner_size(config),
        activation_function=ACTIVATIONS[config.activation],
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS,
        tie_word_embeddings=config.tie_weights and config.width_multiplier == 1,  # muP: lm_head / m
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights in GPT2LMHeadModel's names and layout."""
    config, C = model.config, model.config.n_embd
    state = {
        "transformer.wte.weight": model.transformer.wte.weight,
        "transformer.wpe.weight": model.transformer.wpe.weight,
        "lm_head.weight": model.lm_head.weight / config.width_multiplier,  # muP's readout (sp: 1)
    }
    # muP's attention scale is GPT-2's 1/sqrt(head_size) times this, which the queries take
    query_scale = config.attention_scale * (C // config.n_head) ** 0.5
    linears = {}  # name -> (weight as nn.Linear's (out, in), bias or None)
    for i, block in enumerate(model.transformer.h):
        h = f"transformer.h.{i}"
        for norm in ("ln_1", "ln_2"):
            state[f"{h}.{norm}.weight"] = getattr(block, norm).weight
            state[f"{h}.{norm}.bias"] = bias_of(getattr(block, norm), C)
        linears[f"{h}.attn.c_attn"] = query_key_value(block, config)
        projection = block.attn.proj if config.attention == "heads" else block.attn.c_proj
        linears[f"{h}.attn.c_proj"] = linear_or_identity(projection, C)
        inner = mlp_inner_size(config)
        if block.mlp is None:  # zero weights: the MLP adds nothing to the residual stream
            linears[f"{h}.mlp.c_fc"] = (torch.zeros(inner, C), None)
            linears[f"{h}.mlp.c_proj"] = (torch.zeros(C, inner), None)
        else:
            linears[f"{h}.mlp.c_fc"] = (block.mlp.c_fc.weight, block.mlp.c_fc.bias)
            linears[f"{h}.mlp.c_proj"] = linear_or_identity(block.mlp.c_proj, C)
    for name, (weight, bias) in linears.items():
        if name.endswith("c_attn") and config.parametrization == "mup":  # q's rows come first
            weight, bias = scaled_rows(weight, C, query_scale), scaled_rows(bias, C, query_scale)
        state[f"{name}.weight"] = weight.t()  # Conv1D: (in, out)
        state[f"{name}.bias"] = bias if bias is not None else torch.zeros(weight.size(0))
    state["transformer.ln_f.weight"] = model.transformer.ln_f.weight
    state["transformer.ln_f.bias"] = bias_of(model.transformer.ln_f, C)
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def query_key_value(block: torch.nn.Module, config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A block's q, k and v rows (the batched attention's c_attn; the lecture's heads side by
    side), and their biases (None without)."""
    if config.attention != "heads":
        return block.attn.c_attn.weight, block.attn.c_attn.bias
    heads = block.attn.heads
    parts = ("query", "key", "value")
    weight = torch.cat([torch.cat([getattr(head, part).weight for head in heads]) for part in parts])
    if not config.bias:
        return weight, None
    return weight, torch.cat([torch.cat([getattr(head, part).bias for head in heads]) for part in parts])


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights in LlamaForCausalLM's (and Qwen3ForCausalLM's) names and layout."""
    config, C, H = model.config, model.config.n_embd, model.config.mlp_width
    # muP's attention scale is the usual 1/sqrt(head_size) times this, which the queries take
    query_scale = config.attention_scale * config.head_size**0.5
    state = {
        "model.embed_tokens.weight": model.transformer.wte.weight,
        "model.norm.weight": model.transformer.ln_f.weight,
        "lm_head.weight": model.lm_head.weight / config.width_multiplier,  # muP's readout (sp: 1)
    }
    for i, block in enumerate(model.transformer.h):
        layer = f"model.layers.{i}"
        attention = f"{layer}.self_attn"
        state[f"{layer}.input_layernorm.weight"] = block.ln_1.weight
        state[f"{layer}.post_attention_layernorm.weight"] = block.ln_2.weight
        weight, bias = query_key_value(block, config)
        if config.qk_norm:  # the queries are normed: the scale goes into the norm's gain
            state[f"{attention}.q_norm.weight"] = block.attn.q_norm.weight * query_scale
            state[f"{attention}.k_norm.weight"] = block.attn.k_norm.weight
        else:
            weight, bias = scaled_rows(weight, C, query_scale), scaled_rows(bias, C, query_scale)
        projection = block.attn.proj if config.attention == "heads" else block.attn.c_proj
        mlp = block.mlp  # c_fc: the gate's rows, then the up projection's
        linears = {
            f"{attention}.q_proj": (weight, bias, slice(0, C)),
            f"{attention}.k_proj": (weight, bias, slice(C, 2 * C)),
            f"{attention}.v_proj": (weight, bias, slice(2 * C, 3 * C)),
            f"{attention}.o_proj": (projection.weight, projection.bias, slice(None)),
            f"{layer}.mlp.gate_proj": (mlp.c_fc.weight, mlp.c_fc.bias, slice(0, H)),
            f"{layer}.mlp.up_proj": (mlp.c_fc.weight, mlp.c_fc.bias, slice(H, 2 * H)),
            f"{layer}.mlp.down_proj": (mlp.c_proj.weight, mlp.c_proj.bias, slice(None)),
        }
        for name, (weight, bias, rows) in linears.items():
            state[f"{name}.weight"] = weight[rows]
            if bias is not None:
                state[f"{name}.bias"] = bias[rows]
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def neox_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights in GPTNeoXForCausalLM's names and layout: query_key_value holds each
    head's q, k and v rows together (head by head), where c_attn holds all heads' q, then k, then
    v; its MLP and LayerNorms always have biases (zeros where gptlab's have none)."""
    config, C, head_size = model.config, model.config.n_embd, model.config.head_size
    query_scale = config.attention_scale * head_size**0.5  # muP's, as in llama_state_dict
    state = {
        "gpt_neox.embed_in.weight": model.transformer.wte.weight,
        "gpt_neox.final_layer_norm.weight": model.transformer.ln_f.weight,
        "gpt_neox.final_layer_norm.bias": bias_of(model.transformer.ln_f, C),
        "lm_head.weight": model.lm_head.weight / config.width_multiplier,
    }
    by_head = torch.arange(3 * C).view(3, config.n_head, head_size).transpose(0, 1).reshape(-1)
    for i, block in enumerate(model.transformer.h):
        layer = f"gpt_neox.layers.{i}"
        for norm, name in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            state[f"{layer}.{name}.weight"] = getattr(block, norm).weight
            state[f"{layer}.{name}.bias"] = bias_of(getattr(block, norm), C)
        weight, bias = query_key_value(block, config)
        weight, bias = scaled_rows(weight, C, query_scale), scaled_rows(bias, C, query_scale)
        state[f"{layer}.attention.query_key_value.weight"] = weight[by_head]
        projection = block.attn.proj if config.attention == "heads" else block.attn.c_proj
        state[f"{layer}.attention.dense.weight"], dense_bias = linear_or_identity(projection, C)
        if config.bias:
            state[f"{layer}.attention.query_key_value.bias"] = bias[by_head]
            state[f"{layer}.attention.dense.bias"] = dense_bias if dense_bias is not None else torch.zeros(C)
        state[f"{layer}.mlp.dense_h_to_4h.weight"] = block.mlp.c_fc.weight
        state[f"{layer}.mlp.dense_h_to_4h.bias"] = bias_of(block.mlp.c_fc, config.mlp_width)
        state[f"{layer}.mlp.dense_4h_to_h.weight"] = block.mlp.c_proj.weight
        state[f"{layer}.mlp.dense_4h_to_h.bias"] = bias_of(block.mlp.c_proj, C)
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def scaled_rows(tensor: torch.Tensor | None, rows: int, factor: float) -> torch.Tensor | None:
    """The tensor with its first rows multiplied by factor."""
    if tensor is None:
        return None
    return torch.cat([tensor[:rows] * factor, tensor[rows:]])


def bias_of(layer: torch.nn.Module, size: int) -> torch.Tensor:
    return layer.bias if layer.bias is not None else torch.zeros(size)


def linear_or_identity(layer: torch.nn.Module, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Linear's weight and bias; for a layer left out (nn.Identity), the identity matrix."""
    if isinstance(layer, torch.nn.Identity):
        return torch.eye(size), None
    return layer.weight, layer.bias


def char_tokenizer(tokenizer: CharTokenizer) -> HFTokenizer:
    """A `tokenizers` tokenizer with the same ids as a character vocabulary (see the docstring)."""
    converted = HFTokenizer(models.WordLevel(vocab=dict(tokenizer.stoi), unk_token="[UNK]"))
    converted.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    converted.decoder = decoders.Fuse()
    return converted


def export(model: LanguageModel, tokenizer: Tokenizer, out: Path, card: str) -> None:
    """Writes a directory transformers loads with AutoModelForCausalLM and AutoTokenizer."""
    assert isinstance(model, GPT)
    transformers = transformers_module()
    kind = architecture(model.config)
    hf_model = getattr(transformers, kind)(hf_config(model.config))
    weights = {"GPT2LMHeadModel": gpt2_state_dict, "GPTNeoXForCausalLM": neox_state_dict}
    state = weights.get(kind, llama_state_dict)(model)
    # the head's name: transformers 4 calls GPT-NeoX's embed_out
    head = next(n for n, m in hf_model.named_modules() if m is hf_model.get_output_embeddings())
    state[f"{head}.weight"] = state.pop("lm_head.weight")
    loaded = hf_model.load_state_dict(state, strict=False)
    # every weight given (some versions keep GPT-2's causal mask as a buffer, which is not one; a
    # tied lm_head is the embedding)
    assert not loaded.unexpected_keys, loaded.unexpected_keys
    assert all(k.endswith(("attn.bias", "attn.masked_bias", f"{head}.weight")) for k in loaded.missing_keys)
    hf_model.generation_config = transformers.GenerationConfig(bos_token_id=None, eos_token_id=None)
    hf_model.save_pretrained(out)
    backend = tokenizer.tokenizer if isinstance(tokenizer, BPETokenizer) else char_tokenizer(tokenizer)
    backend.save(str(out / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": model.config.block_size,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (out / "README.md").write_text(card)


def import_model(hf_dir: Path) -> dict[str, Any]:
    """A gptlab checkpoint of a GPT-2-layout model saved with save_pretrained, and its tokenizer.
    What gptlab's GPT cannot compute exactly is refused in one line."""
    transformers = transformers_module()
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a model saved with save_pretrained")
    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    config = imported_config(hf_config)
    tokenizer = import_tokenizer(hf_dir)
    if tokenizer.vocab_size != config.vocab_size:
        raise SettingError(
            f"{hf_dir}: its tokenizer has {tokenizer.vocab_size} tokens and its model {config.vocab_size}: "
            "gptlab needs one vocabulary for both"
        )
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
    model = GPT(config)
    names = model.state_dict().keys()
    state = {
        name: tensor.t() if name.endswith(CONV1D) else tensor
        for name, tensor in hf_model.state_dict().items()
        if name in names  # not the causal mask some versions keep as a buffer
    }
    model.load_state_dict(state)
    return gptlab_checkpoint(model, tokenizer)


def imported_config(hf_config: Any) -> GPTConfig:
    """gptlab's GPTConfig for a GPT2Config, or one line naming a setting gptlab does not have."""
    if hf_config.model_type != "gpt2":
        raise SettingError(
            f"model_type={hf_config.model_type}: only GPT-2's layout (model_type gpt2) imports"
        )
    for key, needed in UNSUPPORTED.items():
        if getattr(hf_config, key, needed) != needed:
            raise SettingError(f"{key}={getattr(hf_config, key)} is not something gptlab's GPT computes")
    if hf_config.activation_function not in IMPORTED_ACTIVATIONS:
        raise SettingError(
            f"activation_function={hf_config.activation_function} is not one gptlab has: "
            f"use one of {sorted(IMPORTED_ACTIVATIONS)}"
        )
    if hf_config.layer_norm_epsilon != LAYER_NORM_EPS:
        raise SettingError(
            f"layer_norm_epsilon={hf_config.layer_norm_epsilon}: gptlab's LayerNorms use {LAYER_NORM_EPS}"
        )
    if hf_config.n_inner not in (None, 4 * hf_config.n_embd):
        raise SettingError(
            f"n_inner={hf_config.n_inner}: gptlab's MLP is 4 * n_embd = {4 * hf_config.n_embd} wide"
        )
    return GPTConfig(
        block_size=hf_config.n_positions,
        vocab_size=hf_config.vocab_size,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        dropout=hf_config.resid_pdrop,
        activation=IMPORTED_ACTIVATIONS[hf_config.activation_function],
        tie_weights=hf_config.tie_word_embeddings,
    )


def import_tokenizer(hf_dir: Path) -> Tokenizer:
    """The directory's tokenizer: a character vocabulary as gptlab exports it becomes gptlab's
    character tokenizer, a BPE (GPT-2's, or gptlab's) gptlab's BPE tokenizer."""
    transformers = transformers_module()
    if not any((hf_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise SettingError(
            f"{hf_dir} has no tokenizer (tokenizer.json, or GPT-2's vocab.json and merges.txt): save it "
            "beside the model with tokenizer.save_pretrained"
        )
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(hf_dir)
    except (OSError, ValueError, TypeError) as err:
        raise SettingError(
            f"{hf_dir} has no tokenizer transformers can load ({' '.join(str(err).split())[:200]})"
        ) from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise SettingError(f"{hf_dir}: its tokenizer has no `tokenizers` form (tokenizer.json) to import")
    described = json.loads(backend.to_str())
    kind = described["model"]["type"]
    if kind == "WordLevel" and (described.get("pre_tokenizer") or {}).get("type") == "Split":
        by_id = sorted(described["model"]["vocab"].items(), key=lambda item: item[1])
        ids_in_order = [i for _, i in by_id] == list(range(len(by_id)))
        if ids_in_order and all(len(token) == 1 for token, _ in by_id):
            return CharTokenizer("".join(token for token, _ in by_id))
    if kind != "BPE":
        raise SettingError(
            f"{hf_dir}: its tokenizer is a {kind}; gptlab imports BPE tokenizers and its own characters"
        )
    return BPETokenizer(backend)


def model_card(config: GPTConfig, tokenizer: Tokenizer, summary: dict[str, Any], steps: int) -> str:
    """A short README.md: what the model is, what it was trained on, how well it did."""
    settings = {k: v for k, v in asdict(config).items() if k in ("n_layer", "n_head", "n_embd", "block_size")}
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "---",
        "",
        "# A GPT trained with gptlab",
        "",
        f"A {architecture(config).removesuffix('LMHeadModel').removesuffix('ForCausalLM')} model "
        f"({', '.join(f'{k}={v}' for k, v in settings.items())}, "
        f"{config.vocab_size} {tokenizer.to_dict()['type']} tokens), converted from a gptlab checkpoint.",
        "",
        f"- data: {summary.get('data', 'see the run directory')}",
        f"- training steps: {steps}",
    ]
    if summary.get("best_val_loss") is not None:
        lines.append(f"- best val_loss: {summary['best_val_loss']:.4f} (nats per token)")
    if summary.get("best_val_bpc") is not None:
        lines.append(f"- bits per character at it: {summary['best_val_bpc']:.4f}")
    lines += [
        "",
        f"It was trained on contexts of {config.block_size} tokens"
        + (
            ": generation sees at most that many tokens of context (its position embeddings; "
            "gptlab.sample slides its window past them, transformers does not)."
            if config.position == "learned"
            else " (rotary positions: transformers generates past that, as the model was never trained to)."
        ),
        "",
    ]
    return "\n".join(lines)
