"""Writes a small tokenizer.json of Llama-3's kind (the same as tests/llama3_fixture.hpp): the 256
byte characters of GPT-2's byte map, two-letter merges of lower-case letters, then eight added
special tokens, <|eot_id|> last. Usage: llama3_mini_tokenizer.py OUT [VOCAB]"""
import json
import sys


def byte_chars():
    printable = [b for b in range(256) if ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or b >= 0xAE]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def tokenizer_json(vocab):
    v, merges, i = {}, [], 0
    for b, c in byte_chars().items():
        v[c] = i
        i += 1
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    for a in letters:
        for b in letters:
            if i >= vocab - 8:
                break
            if a + b not in v:
                v[a + b] = i
                i += 1
                merges.append(a + " " + b)
    added = []
    for sp in ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
               "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"):
        added.append({"id": i, "content": sp, "special": True})
        i += 1
    split = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    return {"version": "1.0", "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "model": {"type": "BPE", "ignore_merges": True, "byte_fallback": False, "vocab": v, "merges": merges}}


if __name__ == "__main__":
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(int(sys.argv[2]) if len(sys.argv) > 2 else 600), f)
