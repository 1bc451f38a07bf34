"""Tiny random-weight GPT-2 / BERT / Llama models with tokenizers trained on the spot (no download).

`build_tiny(kind, folder)` writes a complete model folder (safetensors + tokenizer) that `core.load_model` loads
like any local folder. Everything is seeded.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The cat sat on the mat.",
    "The dog sat on the log.",
    "A bird flew over the house.",
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Transformers process tokens in layers.",
    "Attention heads look at previous tokens.",
    "Hello world, this is a small test corpus for a tiny tokenizer.",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(CORPUS, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _bpe_tokenizer(bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if not bos else ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    from transformers import PreTrainedTokenizerFast

    if not bos:
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny(kind: str, folder: str | Path, *, chat_template: bool = True) -> Path:
    """Write a tiny random `kind` model ("gpt2", "bert", "bert-encoder", "llama") to `folder` and return it."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    folder = Path(folder)
    if kind == "gpt2":
        tok = _bpe_tokenizer(bos=False)
        cfg = GPT2Config(
            n_layer=2,
            n_head=4,
            n_embd=32,
            n_positions=128,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = GPT2LMHeadModel(cfg)
    elif kind in ("bert", "bert-encoder"):
        tok = _wordpiece_tokenizer()
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=len(tok),
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
        )
        model = BertForMaskedLM(cfg) if kind == "bert" else BertModel(cfg)
    elif kind == "llama":
        tok = _bpe_tokenizer(bos=True)
        if chat_template:
            tok.chat_template = CHAT_TEMPLATE
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=128,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


#: The families beyond GPT-2 / BERT / Llama that the app loads, as tiny configs (issue 16: one per-architecture map).
FAMILIES = ("gpt_neox", "qwen2", "mistral", "opt", "phi3", "gemma2", "roberta", "distilbert")


def tiny_family(kind: str):
    """(model, tokenizer) of a tiny random `kind` model (FAMILIES, or "gpt2" / "bert" / "llama"), eager attention,
    eval mode, built in memory from a config; decoders reuse the trained BPE tokenizer, encoders the WordPiece one."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    enc = kind in ("roberta", "distilbert", "bert")
    tok = _wordpiece_tokenizer() if enc else _bpe_tokenizer(bos=kind != "gpt2")
    V = len(tok)
    common = dict(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    gqa = dict(
        num_key_value_heads=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False
    )
    if kind == "gpt2":
        cfg, cls = tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=V), tf.GPT2LMHeadModel
    elif kind == "bert":
        cfg, cls = tf.BertConfig(**common, pad_token_id=tok.pad_token_id), tf.BertForMaskedLM
    elif kind == "llama":
        cfg, cls = tf.LlamaConfig(**common, **gqa), tf.LlamaForCausalLM
    elif kind == "gpt_neox":
        cfg, cls = (
            tf.GPTNeoXConfig(
                **common, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False
            ),
            tf.GPTNeoXForCausalLM,
        )
    elif kind == "qwen2":
        cfg, cls = tf.Qwen2Config(**common, **gqa), tf.Qwen2ForCausalLM
    elif kind == "mistral":
        cfg, cls = tf.MistralConfig(**common, **gqa), tf.MistralForCausalLM
    elif kind == "phi3":
        cfg, cls = tf.Phi3Config(**common, **gqa, pad_token_id=0), tf.Phi3ForCausalLM
    elif kind == "gemma2":
        # a small soft-cap (0.2): a random model's logits are ~0.1, so the capping visibly changes them
        cfg, cls = (
            tf.Gemma2Config(**common, **gqa, head_dim=8, final_logit_softcapping=0.2, pad_token_id=0),
            tf.Gemma2ForCausalLM,
        )
    elif kind == "opt":
        cfg, cls = (
            tf.OPTConfig(
                vocab_size=V,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                ffn_dim=64,
                word_embed_proj_dim=32,
                max_position_embeddings=128,
                pad_token_id=0,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            ),
            tf.OPTForCausalLM,
        )
    elif kind == "roberta":
        cfg, cls = (
            tf.RobertaConfig(**{**common, "max_position_embeddings": 130}, pad_token_id=tok.pad_token_id),
            tf.RobertaForMaskedLM,
        )
    elif kind == "distilbert":
        cfg, cls = (
            tf.DistilBertConfig(
                vocab_size=V,
                dim=32,
                n_layers=2,
                n_heads=4,
                hidden_dim=64,
                max_position_embeddings=128,
                pad_token_id=tok.pad_token_id,
            ),
            tf.DistilBertForMaskedLM,
        )
    else:
        raise ValueError(kind)
    cfg._attn_implementation = "eager"
    cfg.architectures = [cls.__name__]
    model = cls(cfg)
    model.eval()
    return model, tok


def tiny_family_loaded(kind: str):
    """A core.model.loading.LoadedModel around tiny_family(kind) (in memory, float32, CPU)."""
    from core.model.loading import LoadedModel, detect_family

    model, tok = tiny_family(kind)
    cfg = model.config
    return LoadedModel(
        model_id=f"tiny-{kind}",
        model=model,
        tokenizer=tok,
        family=detect_family(cfg),
        source="local",
        revision="test",
        local_path=None,
        dtype="float32",
        device="cpu",
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        hidden_size=cfg.hidden_size,
        architecture=cfg.architectures[0],
    )
