#!/usr/bin/env python3
"""A second, independent Llama-3 encoder for tests/llama3_tokenizer.sh: the pre-tokenizer's regex
run by Python's own backtracking engine (re), its \\p{L} / \\p{N} written out as character classes
from unicodedata and \\s as Unicode's White_Space, then GPT-2's byte map and the classic BPE loop
(merge the best-ranked adjacent pair everywhere, repeat), with Llama-3's ignore_merges.
  llama3_reference.py TOKENIZER_JSON CORPUS_JSON OUT_JSON   (each string encoded with its
  special tokens, <|...|> pieces of added_tokens, parsed as tokens, as the npm reference does)"""
import json
import re
import sys
import unicodedata

WHITE_SPACE = [(0x9, 0xD), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
               (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]


def ranges(cats):
    out, start = [], None
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) in cats:
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def cls(rs):  # the inside of a character class
    esc = lambda cp: "\\U%08x" % cp
    return "".join(esc(a) if a == b else esc(a) + "-" + esc(b) for a, b in rs)


def pattern():
    L = cls(ranges(("Lu", "Ll", "Lt", "Lm", "Lo")))
    N = cls(ranges(("Nd", "Nl", "No")))
    S = cls(WHITE_SPACE)
    return re.compile(
        "(?:'[sS\u017f]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
        f"|[^\\r\\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{S}{L}{N}]+[\\r\\n]*|[{S}]*[\\r\\n]+|[{S}]+(?![^{S}])|[{S}]+")


def byte_map():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    tok = json.load(open(sys.argv[1], encoding="utf-8"))
    corpus = json.load(open(sys.argv[2], encoding="utf-8"))
    vocab = dict(tok["model"]["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    rank = {tuple(m.split(" ")): i for i, m in reversed(list(enumerate(merges)))}
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    special_re = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
    pre = pattern()
    bmap = byte_map()

    def bpe(word):
        if word in vocab:
            return [vocab[word]]
        parts = list(word)
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: rank.get((parts[i], parts[i + 1]), 1 << 60))
            pair = (parts[best], parts[best + 1])
            if pair not in rank:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [vocab[p] for p in parts]

    out = []
    for text in corpus:
        ids = []
        for seg in special_re.split(text) if specials else [text]:
            if seg in specials:
                ids.append(specials[seg])
                continue
            pieces = pre.findall(seg)
            assert "".join(pieces) == seg, "the pre-tokenizer pattern must cover the text"
            for p in pieces:
                ids += bpe("".join(bmap[b] for b in p.encode("utf-8")))
        out.append(ids)
    json.dump(out, open(sys.argv[3], "w"))


if __name__ == "__main__":
    main()
