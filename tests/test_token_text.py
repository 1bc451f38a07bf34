"""core.model.tokens.token_text: one token id as text. A byte-level BPE token that holds only part of a UTF-8
character decodes to "\ufffd" whatever its bytes; token_text shows the bytes instead, so two different tokens
never read the same in the prediction, logit-attribution and Compare tables."""

from __future__ import annotations

from core.model.tokens import bytes_text, token_text
from core.present.tables import readable_token


def test_bytes_text_keeps_whole_characters_and_names_partial_bytes():
    assert bytes_text(b"the") == "the"
    assert bytes_text("é".encode()) == "é"
    assert bytes_text(b"\xe2\x80") == "<0xE2><0x80>"  # the start of "—" / "’" without its last byte
    assert bytes_text(b" \xc3") == " <0xC3>"
    assert bytes_text(b"\x80" + "é".encode()) == "<0x80>é"  # a stray continuation byte, then a whole character


def test_partial_byte_tokens_of_a_byte_level_tokenizer_differ(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    e2, c3 = tok.convert_tokens_to_ids("â"), tok.convert_tokens_to_ids("Ã")  # bytes 0xE2 and 0xC3 on their own
    assert tok.decode([e2]) == tok.decode([c3]) == "\ufffd"  # the tokenizer's own decoding: identical
    assert token_text(tok, e2) == "<0xE2>" and token_text(tok, c3) == "<0xC3>"
    assert readable_token(token_text(tok, e2)) != readable_token(token_text(tok, c3))


def test_whole_and_whitespace_tokens_decode_as_text(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    space, newline = tok.convert_tokens_to_ids("Ġ"), tok.convert_tokens_to_ids("Ċ")
    assert token_text(tok, space) == " " and token_text(tok, newline) == "\n"
    assert readable_token(token_text(tok, space)) == "␣" and readable_token(token_text(tok, newline)) == "↵"
    ids = tok("The cat", add_special_tokens=False)["input_ids"]
    assert "".join(token_text(tok, i) for i in ids) == "The cat"
