#!/usr/bin/env python3
"""Writes the Llama-3 tokenizer test corpus (a JSON array of strings) to stdout: hand-written
cases that stress the pre-tokenizer (numbers, contractions in several cases, CJK, emoji,
combining marks, white-space runs, code), then seeded random mixtures of their fragments and of
code points from many scripts. Deterministic. U+0085 and U+FEFF are left out: JavaScript's \\s
(the llama3-tokenizer-js reference) differs from Unicode's White_Space on exactly those two."""
import json
import random
import sys
import unicodedata

CASES = [
    "Hello world!", "Hello  world", " Hello", "Hello ", "  leading and trailing  ", "",
    "1", "12", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-42", "+7e-10", "0x1F",
    "abc123def", "a1b2c3", "١٢٣٤٥", "１２３４５", "²³", "Ⅻ and ⅻ", "½ cup", "v2.0.1", "2024-12-06T10:00:00Z",
    "I'm", "you're", "WE'VE", "it'S", "They'LL", "he'd", "'twas", "don't", "DON'T", "o'clock",
    "rock'n'roll", "it’s", "'s", "'", "''", "'''s", "x's'", "I'M HERE", "We'Re", "y'all'd've",
    "你好，世界", "日本語のテキストです。", "한국어 문장입니다", "中文 English 混合", "ｶﾀｶﾅ", "漢字かなカナ",
    "👍", "👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "👋🏽 hi", "I ❤️ NY", "emoji😀in😀text", "🙂🙂🙂",
    "e\u0301", "cafe\u0301", "ñ", "n\u0303", "नमस्ते दुनिया", "สวัสดีครับ", "שָׁלוֹם", "مرحبا بالعالم", "Ελληνικά", "Привет, мир",
    "a  b", "a   b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a \n\n b", "a\r\nb", "a\r\n\r\nb", "\n", "\n\n\n",
    "   ", "\t", " \t \n ", "end   ", "a\u00a0b", "a\u3000b", "a\u2003\u2003b", "x \u00a0y", "\n  indented",
    "def f(x):\n    return x * 2\n", "int main() {\n\treturn 0;\n}\n", '{"key": [1, 2, 3], "ok": true}',
    "if (a && b || !c) { x += 1; }", "<div class=\"x\">text</div>", "SELECT * FROM t WHERE id = 42;",
    "path/to/file.txt", "https://example.com/a?b=c&d=e#f", "user@example.com", "C:\\Windows\\System32",
    "!!!", "...", "?!?!", "---", "***bold***", "(nested (parens))", "$100.00", "50%", "#hashtag", "@mention",
    "a.b.c", "a,b,c", "x=y+z", "α+β=γ", "∑∫∂", "→ ← ↑ ↓", "©®™", "€£¥", "\u200b", "a\u200db", "\u2028x\u2029",
    "<|begin_of_text|>", "<|eot_id|>", "a<|eot_id|>b", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|not_a_token|>", "<|", "|>",
]

FRAGMENTS = [
    "the", " the", "The", " quick", " brown", " fox", "jumps", " over", " lazy", " dog", "'s", "'t", "'re",
    "'VE", "'m", "'LL", "'d", "'", "’", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000",
    "0", "7", "42", "123", "2024", "3.5", "1e9", "１２", "١٢", "²", "Ⅳ", ",", ".", "!", "?", ";", ":", "-", "_",
    "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "\"", "#", "$", "%", "&", "*", "+", "=", "|", "~", "`",
    "你好", "世界", "日本", "カタカナ", "ひらがな", "한국", "中", "Ελλάδα", "Москва", "عربى", "עברית", "हिन्दी",
    "ไทย", "e\u0301", "a\u0308", "\u0301", "😀", "👍🏽", "🇯🇵", "👨‍💻", "❤️", "✓", "→", "∑", "€",
    "def ", "return ", "    ", "if ", "else", "for i in range(10):", "x += 1", "std::vector<int>", "->", "::",
    "==", "!=", "<=", ">=", "&&", "||", "/*", "*/", "//", "<|eot_id|>", "<|begin_of_text|>",
]

BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
          (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F),
          (0x20A0, 0x20BF), (0x2100, 0x214F), (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF),
          (0x3000, 0x303F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF),
          (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F900, 0x1F9FF), (0x0300, 0x036F), (0x9, 0xD)]
EXCLUDED = {0x85, 0xFEFF}


def random_char(rng):
    while True:
        lo, hi = rng.choice(BLOCKS)
        cp = rng.randint(lo, hi)
        if cp in EXCLUDED or unicodedata.category(chr(cp)) in ("Cn", "Cs"):
            continue
        return chr(cp)


def main():
    rng = random.Random(20261206)
    out = list(CASES)
    for _ in range(1400):  # mixtures of fragments
        out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))))
    for _ in range(600):  # code point soup, with white space and apostrophes mixed in
        s = []
        for _ in range(rng.randint(1, 24)):
            r = rng.random()
            s.append(random_char(rng) if r < 0.7 else rng.choice([" ", "  ", "\n", "'", "'s", "1", "22"]))
        out.append("".join(s))
    assert not any(ord(c) in EXCLUDED for s in out for c in s)
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
