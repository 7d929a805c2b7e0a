"""Hugging Face model directories: write a llmos model as a `LlamaForCausalLM`, and read one back.

    write_hf_dir("out/my-model", model, tok, chat_template, dtype="f32")
    model, tok, chat_template, provenance = read_hf_dir("out/my-model")

    # the written directory loads offline with transformers:
    AutoModelForCausalLM.from_pretrained("out/my-model"); AutoTokenizer.from_pretrained("out/my-model")

A directory holds config.json, generation_config.json, model.safetensors (dtype f32, f16 or bf16)
and a fast tokenizer (tokenizer.json, tokenizer_config.json with bos/eos and the chat template,
special_tokens_map.json). llmos and HF Llama share the rotate-half RoPE layout, so weights are only
renamed (see layout.py). Tied embeddings are stored once, as HF does. Every file is written
atomically and config.json last (an old one is removed first), so an export cut short never looks
like a complete directory. Reading takes a Llama-family directory (config.json + model.safetensors
or sharded safetensors + tokenizer.json); the config is checked against the weights' shapes in the
safetensors headers before any weight is read.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from llmos.common import LlmosError, atomic_write, os_error_message, read_json, write_json
from llmos.interop.layout import hf_name, llmos_name_from_hf, load_weights, require_llama_compatible
from llmos.model import ModelConfig, Transformer, check_weight_shapes
from llmos.params import parse_tokenizer
from llmos.tokenizer import Tokenizer

HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
_TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# ----- writing -----

def _token(tok: Tokenizer, i: int | None) -> str | None:
    return None if i is None else tok.hf.id_to_token(i)


def write_hf_dir(out: str | Path, model: Transformer, tok: Tokenizer, chat_template: str = "",
                 dtype: str = "f32") -> Path:
    if dtype not in HF_DTYPES:
        raise LlmosError(f"unknown Hugging Face dtype {dtype!r}: choose one of {', '.join(HF_DTYPES)}")
    cfg = model.cfg
    require_llama_compatible(cfg, "Hugging Face transformers")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LlmosError(f"{out} exists and is not a directory: --format hf writes a directory")
    try:  # config.json goes first and comes back last: a directory cut short never looks complete
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").unlink(missing_ok=True)
    except OSError as e:
        raise LlmosError(f"could not write {os_error_message(e, out)}") from None
    torch_dtype = HF_DTYPES[dtype]
    eos_id = tok.eos_id if tok.eos_id is not None else tok.bos_id
    state = {hf_name(k): v.detach().to("cpu", torch_dtype).contiguous() for k, v in model.state_dict().items()
             if not (cfg.tie_embeddings and k == "lm_head.weight")}
    with atomic_write(out / "model.safetensors") as f:
        f.write(save(state, metadata={"format": "pt"}))
    write_json(out / "generation_config.json", {"bos_token_id": tok.bos_id, "eos_token_id": eos_id})

    hf = HFTokenizer.from_str(tok.to_json())
    if tok.add_bos and tok.bos_id is not None:  # AutoTokenizer then adds bos exactly as llmos prompts do
        bos = _token(tok, tok.bos_id)
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tok.bos_id)])
    else:
        hf.post_processor = None
    with atomic_write(out / "tokenizer.json", "w") as f:
        f.write(hf.to_str())
    special = {"bos_token": _token(tok, tok.bos_id), "eos_token": _token(tok, eos_id)}
    special = {k: v for k, v in special.items() if v is not None}
    write_json(out / "special_tokens_map.json", special)
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": tok.add_bos,
                  "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": cfg.max_seq_len}
    if chat_template:
        tok_config["chat_template"] = chat_template
    write_json(out / "tokenizer_config.json", tok_config)
    write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
        # transformers 4 reads rope_theta, transformers 5 rope_parameters
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": tok.bos_id, "eos_token_id": eos_id,
        "torch_dtype": _TORCH_DTYPE_NAMES[torch_dtype], "initializer_range": 0.02, "use_cache": True,
    })
    return out


# ----- reading -----

def _read_object(path: Path) -> dict:
    """A JSON object file of a Hugging Face directory, or a clear error."""
    if not path.is_file():
        raise LlmosError(f"{path.parent} has no {path.name}: not a Hugging Face model directory")
    value = read_json(path, what="Hugging Face file")
    if not isinstance(value, dict):
        raise LlmosError(f"{path} is a JSON {type(value).__name__}, not an object: the directory is corrupt")
    return value


def _safetensors_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise LlmosError(f"{index} has no weight_map of tensor names to files: the directory is corrupt")
        return [src / name for name in sorted(set(weight_map.values()))]
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    raise LlmosError(f"{src} has no model.safetensors (or sharded index): llmos imports safetensors weights only")


def _config_from_hf(hc: dict, src: Path) -> ModelConfig:
    archs = hc.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise LlmosError(f"{src}/config.json: architectures is not a list of names: the directory is corrupt")
    if hc.get("model_type") != "llama" or (archs and archs[0] != "LlamaForCausalLM"):
        raise LlmosError(f"{src} holds a {hc.get('model_type')!r} model ({', '.join(archs) or 'no architecture'}); "
                         "llmos imports Llama-family models (model_type 'llama', LlamaForCausalLM) only")
    rope = hc.get("rope_parameters") or hc.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise LlmosError(f"{src}/config.json: rope_parameters is not an object: the directory is corrupt")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise LlmosError(f"{src} uses RoPE scaling {rope.get('rope_type', rope.get('type'))!r}, "
                         "which llmos's model does not implement")
    if hc.get("attention_bias") or hc.get("mlp_bias"):
        raise LlmosError(f"{src} has attention or MLP biases, which llmos's model does not have")
    if hc.get("hidden_act", "silu") != "silu":
        raise LlmosError(f"{src} uses the {hc['hidden_act']!r} activation; llmos's MLP is SwiGLU (silu)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in hc]
    if missing:
        raise LlmosError(f"{src}/config.json lacks {', '.join(missing)}: it is not a complete Llama config")
    n_heads = hc["num_attention_heads"]
    # The sizes go to ModelConfig as found: it refuses wrong types and values, naming the file.
    return ModelConfig.from_dict(dict(
        vocab_size=hc["vocab_size"], d_model=hc["hidden_size"], n_layers=hc["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hc.get("num_key_value_heads") or n_heads, head_dim=hc.get("head_dim") or 0,
        d_ff=hc["intermediate_size"], max_seq_len=hc.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", hc.get("rope_theta", 10000.0)), norm_eps=hc.get("rms_norm_eps", 1e-6),
        tie_embeddings=hc.get("tie_word_embeddings", False)), source=f"{src}/config.json")


def _special(value) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def _weight_index(src: Path) -> dict[str, tuple[Path, str, list[int]]]:
    """llmos weight name -> (file, its Hugging Face name, shape), from the safetensors headers alone."""
    index = {}
    for file in _safetensors_files(src):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    key = llmos_name_from_hf(name)
                    if key is None:
                        if "rotary_emb" in name:  # old checkpoints store RoPE tables; llmos computes them
                            continue
                        raise LlmosError(f"{file} has a weight llmos's Llama model has no place for: {name}")
                    index[key] = (file, name, f.get_slice(name).get_shape())
        except (SafetensorError, OSError) as e:
            raise LlmosError(f"{file} is not a readable safetensors file, or it is truncated ({e})") from None
    return index


def _read_weights(index: dict[str, tuple[Path, str, list[int]]]) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted({file for file, _, _ in index.values()}):
        try:
            with safe_open(str(file), framework="pt") as f:
                state.update({key: f.get_tensor(name).float() for key, (in_file, name, _) in index.items()
                              if in_file == file})
        except (SafetensorError, OSError) as e:
            raise LlmosError(f"{file} is not a readable safetensors file, or it is truncated ({e})") from None
    return state


def _hf_tokenizer(src: Path, tc: dict) -> tuple[Tokenizer, dict]:
    """The directory's fast tokenizer with the bos/eos roles its tokenizer_config.json gives."""
    tokenizer_json = src / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise LlmosError(f"{src} has no tokenizer.json (a fast tokenizer): llmos needs it to import the model")
    try:
        text = tokenizer_json.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise LlmosError(f"could not read {tokenizer_json} ({e})") from None
    hf = parse_tokenizer(text, str(tokenizer_json)).hf
    bos, eos = _special(tc.get("bos_token")), _special(tc.get("eos_token"))
    post_bos = Tokenizer(hf).add_bos  # whether the tokenizer.json's own post-processor adds a bos
    roles = {"bos_token": bos if bos in hf.get_vocab() else None, "eos_token": eos if eos in hf.get_vocab() else None,
             "add_bos": bool(tc.get("add_bos_token", post_bos)) and bos is not None}
    return Tokenizer(hf, **roles), roles


def _chat_template(src: Path, tc: dict) -> str:
    chat_template = tc.get("chat_template") or ""
    if isinstance(chat_template, list):  # several named templates: llmos keeps the default one
        chat_template = next((t.get("template") for t in chat_template
                              if isinstance(t, dict) and t.get("name") == "default"), "")
    if not isinstance(chat_template, str):
        raise LlmosError(f"{src}/tokenizer_config.json: chat_template is not a Jinja template string")
    if not chat_template and (src / "chat_template.jinja").is_file():  # where transformers 5 saves it
        try:
            chat_template = (src / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise LlmosError(f"could not read {src / 'chat_template.jinja'} ({e})") from None
    return chat_template


def read_hf_dir(src: str | Path) -> tuple[Transformer, Tokenizer, str, dict]:
    """A Hugging Face Llama directory as (model, tokenizer, chat template, provenance), float32.
    The config is checked against the weights' shapes in the safetensors headers before any weight
    is read or allocated."""
    src = Path(src)
    if not src.is_dir():
        raise LlmosError(f"{src} is not a directory: give a Hugging Face model directory or a .gguf file")
    cfg = _config_from_hf(_read_object(src / "config.json"), src)
    index = _weight_index(src)
    if cfg.tie_embeddings is False and "lm_head.weight" not in index:
        cfg.tie_embeddings = True  # some configs omit tie_word_embeddings although the head is shared
    check_weight_shapes(cfg, {key: shape for key, (_, _, shape) in index.items()}, str(src))
    tc = _read_object(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    tok, roles = _hf_tokenizer(src, tc)
    if tok.vocab_size != cfg.vocab_size:
        # HF pads embeddings beyond the tokenizer; llmos needs one row per token id.
        raise LlmosError(f"{src}: the tokenizer has {tok.vocab_size} tokens but the model {cfg.vocab_size} rows")
    chat_template = _chat_template(src, tc)
    model = load_weights(cfg, _read_weights(index))
    provenance = {"source": "huggingface", "directory": src.name, "name": src.name, "tokenizer_roles": roles}
    return model, tok, chat_template, provenance
