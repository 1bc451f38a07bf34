"""Tiny random-weight GPT-2 / BERT / Llama models with tokenizers trained on the spot (no download).

`build_tiny(kind, folder)` writes a complete model folder (safetensors + tokenizer) that `core.load_model` loads
like any local folder. Everything is seeded.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The cat sat on the mat.", "The dog sat on the log.", "A bird flew over the house.",
    "Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.",
    "Transformers process tokens in layers.", "Attention heads look at previous tokens.",
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
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    from tokenizers import decoders
    tok.decoder = decoders.WordPiece()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _bpe_tokenizer(bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if not bos else ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    from transformers import PreTrainedTokenizerFast

    if not bos:
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny(kind: str, folder: str | Path, *, chat_template: bool = True) -> Path:
    """Write a tiny random `kind` model ("gpt2", "bert", "bert-encoder", "llama") to `folder` and return it."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = Path(folder)
    if kind == "gpt2":
        tok = _bpe_tokenizer(bos=False)
        cfg = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=len(tok),
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    elif kind in ("bert", "bert-encoder"):
        tok = _wordpiece_tokenizer()
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=len(tok), max_position_embeddings=128, pad_token_id=tok.pad_token_id)
        model = BertForMaskedLM(cfg) if kind == "bert" else BertModel(cfg)
    elif kind == "llama":
        tok = _bpe_tokenizer(bos=True)
        if chat_template:
            tok.chat_template = CHAT_TEMPLATE
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=128,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
