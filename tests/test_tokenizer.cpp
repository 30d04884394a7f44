// The tokenizer against the real Llama-2 vocabulary (32,000 pieces, tests/data/llama2-vocab.txt),
// with expected ids from an independent implementation (llama-tokenizer-js) and Meta's anchors.
// GCC 12 reports a false -Wrestrict inside libstdc++'s string assignment from a literal when it
// inlines deeply (-O3; the aarch64 cross compiler on `v.pieces[4] = "a"`): GCC bug 105329.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
#include <doctest/doctest.h>

#include <sentencepiece_processor.h>

#include <algorithm>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gpt2_bytes.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/session.hpp"
#include "qllm/random_model.hpp"
#include "qllm/tokenizer.hpp"
#include "llama2_vocab.hpp"
#include "text/bpe.hpp"
#include "text/sp_proto.hpp"

#ifndef QLLM_TEST_DATA
#error "QLLM_TEST_DATA must name tests/data"
#endif

using namespace qllm;

namespace {

struct tok_case {
  std::string text;
  std::vector<int32_t> ids;
};
const tok_case kCases[] = {
#include "llama2_tokenizer_cases.inc"
};

// The Llama-2 vocabulary as Meta's tokenizer.model has it: types by position, scores -(id - 259)
// for normal pieces, -1e9 for pieces made only of U+2581.
vocabulary llama2_vocabulary() { return test::llama2_vocabulary(QLLM_TEST_DATA); }

const tokenizer& llama2() {
  static const auto tok = test::llama2_tokenizer(QLLM_TEST_DATA);
  REQUIRE(tok);
  return *tok;
}

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (auto id : ids) s += std::to_string(id) + " ";
  return s;
}

}  // namespace

TEST_CASE("ModelProto serializer: sentencepiece reads back every piece, score, type and option") {
  vocabulary v;
  v.pieces = {"<unk>", "<s>", "</s>", "c", "\xE2\x96\x81" "a", "b", "<tag>", "old"};
  v.types = {token_type::unknown, token_type::control, token_type::control, token_type::normal,
             token_type::normal,  token_type::normal,  token_type::user_defined, token_type::unused};
  v.scores = {0.0f, 0.0f, 0.0f, 0.0f, -1.5f, -2.25f, 0.0f, -7.0f};
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  sentencepiece::SentencePieceProcessor sp;
  const auto st = sp.LoadFromSerializedProto(text::serialize_model_proto(v, false));
  INFO(st.ToString());
  REQUIRE(st.ok());
  REQUIRE(sp.GetPieceSize() == 8);
  for (int i = 0; i < 8; ++i) {
    CHECK(sp.IdToPiece(i) == v.pieces[std::size_t(i)]);
    CHECK(sp.GetScore(i) == v.scores[std::size_t(i)]);
  }
  CHECK(sp.IsUnknown(0));
  CHECK(sp.IsControl(1));
  CHECK(sp.IsControl(2));
  CHECK(sp.IsUnused(7));
  CHECK(sp.unk_id() == 0);
  CHECK(sp.bos_id() == 1);
  CHECK(sp.eos_id() == 2);
  CHECK(sp.pad_id() == -1);
  // dummy prefix on, user-defined pieces matched whole, bytes without a piece → <unk>
  std::vector<int> ids;
  REQUIRE(sp.Encode("a<tag>b", &ids).ok());
  CHECK(ids == std::vector<int>{4, 6, 5});
  REQUIRE(sp.Encode("z", &ids).ok());
  REQUIRE_FALSE(ids.empty());  // '▁' and 'z' are not pieces: <unk>
  for (int id : ids) CHECK(id == 0);
  v.add_space_prefix = false;
  REQUIRE(sp.LoadFromSerializedProto(text::serialize_model_proto(v, false)).ok());
  REQUIRE(sp.Encode("b", &ids).ok());
  CHECK(ids == std::vector<int>{5});
}

TEST_CASE("Llama-2 vocabulary: Meta's anchors") {
  const tokenizer& t = llama2();
  CHECK(t.n_vocab() == 32000);
  CHECK(t.encode("Hello world", true) == std::vector<int32_t>{1, 15043, 3186});
  CHECK(t.encode("Hello world", false) == std::vector<int32_t>{15043, 3186});
  CHECK(t.encode("", true) == std::vector<int32_t>{1});
  CHECK(t.encode("", false).empty());
  CHECK(t.count("Hello world", true) == 3);
  CHECK(t.piece(15043) == "\xE2\x96\x81Hello");
  CHECK(t.token_text(15043) == " Hello");
  CHECK(t.token_text(13) == "\n");  // <0x0A>
  CHECK(t.token_text(1).empty());   // <s>
  CHECK(t.is_control(2));
  CHECK_FALSE(t.is_control(15043));
  CHECK(t.bos() == 1);
  CHECK(t.eos() == 2);
}

TEST_CASE("Llama-2 vocabulary: every case matches the independent implementation, and round-trips") {
  const tokenizer& t = llama2();
  CHECK(std::size(kCases) >= 45);
  for (const auto& c : kCases) {
    CAPTURE(c.text);
    const auto ids = t.encode(c.text, false);
    INFO("got: ", ids_str(ids), " want: ", ids_str(c.ids));
    CHECK(ids == c.ids);
    CHECK(t.decode(ids) == c.text);
    auto with_bos = t.encode(c.text, true);
    REQUIRE(with_bos.size() == ids.size() + 1);
    CHECK(with_bos[0] == 1);
    CHECK(t.decode(with_bos) == c.text);
  }
}

TEST_CASE("Llama-2 vocabulary: special strings in text stay text; byte fallback") {
  const tokenizer& t = llama2();
  const auto ids = t.encode("<s></s>", false);
  for (auto id : ids) {
    CHECK(id != 1);
    CHECK(id != 2);
  }
  CHECK(t.decode(ids) == "<s></s>");
  // parse_special: <s> and </s> become BOS and EOS, the text between them encoded on its own
  // (dummy prefix included, as llama.cpp does); <unk> (not a control piece) stays text
  const auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  CHECK(t.encode("<s></s>", false, true) == std::vector<int32_t>{1, 2});
  CHECK(t.encode("Hi</s>there", true, true) ==
        cat(cat(t.encode("Hi", true), {2}), t.encode("there", false)));
  CHECK(t.encode("[INST] a [/INST] b</s><s>[INST] c", false, true) ==
        cat(cat(cat(t.encode("[INST] a [/INST] b", false), {2, 1}), t.encode("[INST] c", false)), {}));
  CHECK(t.encode("x<unk>", false, true) == cat(t.encode("x", false), {0}));  // <unk> too, as llama.cpp
  CHECK(t.encode("x<unk>", false) != cat(t.encode("x", false), {0}));
  CHECK(t.encode("Hi</s>there", false) == t.encode("Hi</s>there", false, false));
  // U+1F999 (llama) has no piece: four byte tokens <0xF0> <0x9F> <0xA6> <0x99>
  CHECK(t.encode("\xF0\x9F\xA6\x99", false) == std::vector<int32_t>{29871, 243, 162, 169, 156});
}

TEST_CASE("sentencepiece parse_special: the longest piece wins, user-defined pieces included") {
  vocabulary v = random_vocabulary(600);
  const auto add = [&](const std::string& p, token_type t) {
    v.pieces.push_back(p);
    v.scores.push_back(0.0f);
    v.types.push_back(t);
    return int32_t(v.pieces.size() - 1);
  };
  const int32_t sxy = add("<s>XY", token_type::user_defined);
  const int32_t ab = add("AB", token_type::control);
  const int32_t abc = add("ABC", token_type::control);
  const auto t = tokenizer::from_vocabulary(v);
  CHECK(t->encode("<s>XY", false, true) == std::vector<int32_t>{sxy});  // not <s> then "XY"
  CHECK(t->encode("<s>X", false, true).front() == t->bos());
  CHECK(t->encode("ABCD", false, true).front() == abc);
  CHECK(t->encode("ABD", false, true).front() == ab);
  for (int32_t id : t->encode("ABCD", false)) CHECK(id != abc);  // control pieces: only on request
  // a one-character control piece would make every text holding it fail to encode: refused
  add("Q", token_type::control);
  CHECK_THROWS_WITH_AS((void)tokenizer::from_vocabulary(v), doctest::Contains("single character"), error);
}

TEST_CASE("encode rejects invalid UTF-8 with the byte offset") {
  const tokenizer& t = llama2();
  const char* bad[] = {"ab\xFF", "\xC0\xAF", "x\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\x80"};
  const std::size_t at[] = {2, 0, 1, 0, 0, 0};
  for (std::size_t i = 0; i < std::size(bad); ++i) {
    CAPTURE(i);
    try {
      (void)t.encode(bad[i], true);
      FAIL("no error");
    } catch (const error& e) {
      CHECK(e.code() == errc::invalid_argument);
      CHECK(std::string(e.what()).find("byte " + std::to_string(at[i])) != std::string::npos);
    }
  }
  CHECK_THROWS_AS((void)t.decode(std::vector<int32_t>{5, 32000}), error);
  CHECK_THROWS_AS((void)t.decode(std::vector<int32_t>{-1}), error);
}

TEST_CASE("stream_decoder holds a split character until it completes") {
  const tokenizer& t = llama2();
  stream_decoder d(t, true);
  // "🦙 ok": ▁ <F0> <9F> <A6> <99> ▁ok
  const auto ids = t.encode("\xF0\x9F\xA6\x99 ok", false);
  REQUIRE(ids.size() >= 6);
  std::vector<std::string> parts;
  for (std::size_t i = 0; i < 4; ++i) parts.push_back(d.push(ids[i]));
  CHECK(parts[0].empty());  // the dummy-prefix space is stripped
  CHECK(parts[1].empty());
  CHECK(parts[2].empty());
  CHECK(parts[3].empty());
  CHECK(d.pending() == 3);
  CHECK(d.push(ids[4]) == "\xF0\x9F\xA6\x99");
  CHECK(d.pending() == 0);
  CHECK(d.push(ids[5]) == " ok");
  CHECK(d.flush().empty());
  // a lead byte followed by a non-continuation: U+FFFD, then the text goes on
  stream_decoder e(t, false);
  CHECK(e.push(243).empty());  // <0xF0>
  CHECK(e.push(263) == "\xEF\xBF\xBD a");  // "▁a"
  CHECK(e.push(243).empty());
  CHECK(e.flush() == "\xEF\xBF\xBD");  // cut short at the end
}

TEST_CASE("streaming equals whole decoding on random token sequences; output is always valid UTF-8") {
  const tokenizer& t = llama2();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> ids;
    const int n = 1 + int(rng() % 40);
    for (int i = 0; i < n; ++i) {
      // favour byte tokens so split and broken characters are common
      ids.push_back(rng() % 3 == 0 ? int32_t(3 + rng() % 256) : int32_t(rng() % 32000));
    }
    stream_decoder d(t, true);
    std::string streamed;
    for (auto id : ids) {
      const std::string piece = d.push(id);
      CHECK(utf8::first_invalid(piece) == std::string_view::npos);
      streamed += piece;
    }
    streamed += d.flush();
    CHECK(utf8::first_invalid(streamed) == std::string_view::npos);
    CHECK(streamed == t.decode(ids));
  }
}

TEST_CASE("utf8 helpers") {
  CHECK(utf8::sequence_length("a") == 1);
  CHECK(utf8::sequence_length("\xC3\xA9") == 2);
  CHECK(utf8::sequence_length("\xE2\x96\x81") == 3);
  CHECK(utf8::sequence_length("\xF0\x9F\xA6\x99") == 4);
  CHECK(utf8::sequence_length("\xF0\x9F") == 0);
  CHECK(utf8::sequence_length("\xC1\x81") == -1);   // overlong
  CHECK(utf8::sequence_length("\xE0\x80\x80") == -1);  // overlong
  CHECK(utf8::sequence_length("\xF5\x80\x80\x80") == -1);
  CHECK(utf8::sequence_length("\xC3" "a") == -1);
  std::string out;
  utf8::append_sanitized(out, "a\xFF" "b\xE2\x96");
  CHECK(out == "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_CASE("vocabularies qllm cannot represent are clear errors") {
  auto base = [] {
    vocabulary v;
    v.pieces = {"<unk>", "<s>", "</s>", "a", "b"};
    v.types = {token_type::unknown, token_type::control, token_type::control, token_type::normal, token_type::normal};
    v.scores = {0, 0, 0, -1, -2};
    return v;
  };
  CHECK_NOTHROW((void)tokenizer::from_vocabulary(base()));
  auto expect = [](vocabulary v, errc code, const char* words) {
    CAPTURE(words);
    try {
      (void)tokenizer::from_vocabulary(std::move(v));
      FAIL("no error");
    } catch (const error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(words) != std::string::npos);
    }
  };
  auto v = base();
  v.pieces[4] = "a";
  expect(v, errc::bad_format, "appears twice");
  v = base();
  v.pieces[3].clear();
  expect(v, errc::bad_format, "is empty");
  v = base();
  v.scores.pop_back();
  expect(v, errc::bad_format, "scores has 4 entries for 5 tokens");
  v = base();
  v.types[0] = token_type::normal;
  expect(v, errc::bad_format, "unknown-token id 0");
  v = base();
  v.bos_id = 9;
  expect(v, errc::bad_format, "BOS id 9 is outside");
  v = base();
  v.types[4] = token_type(9);
  expect(v, errc::unsupported, "unknown token type 9");
  v = base();
  v.types[4] = token_type::byte;
  expect(v, errc::bad_format, "not of the form <0xNN>");
  v = base();
  v.pieces[4] = "<0x41>";
  v.types[4] = token_type::byte;
  expect(v, errc::bad_format, "1 of the 256 byte tokens");
  v = base();
  v.pieces[4] = "\xFF";
  expect(v, errc::bad_format, "not valid UTF-8");
  v = base();
  v.scores[3] = std::numeric_limits<float>::quiet_NaN();
  expect(v, errc::bad_format, "non-finite score");

  // other tokenizer models and byte-level BPE without Llama-3's pre-tokenizer are refused by name
  const auto refused = [](const char* model, const char* pre, const char* want) {
    gguf::writer w;
    w.set_string("tokenizer.ggml.model", model);
    if (pre) w.set_string("tokenizer.ggml.pre", pre);
    w.set_array_string("tokenizer.ggml.tokens", {"a"});
    const auto b = w.to_bytes();
    const auto f = gguf::file::from_memory(b.data(), b.size());
    CAPTURE(model);
    try {
      (void)tokenizer::from_gguf(f);
      FAIL("loaded");
    } catch (const error& e) {
      CHECK(e.code() == errc::unsupported);
      CHECK(std::string(e.what()).find(want) != std::string::npos);
    }
  };
  refused("bert", nullptr, "'bert'");
  refused("gpt2", nullptr, "pre-tokenizer (none given)");
  refused("gpt2", "qwen2", "pre-tokenizer 'qwen2'");
  gguf::writer none;
  none.set_u32("x", 1);
  const auto bytes = none.to_bytes();
  auto g = gguf::file::from_memory(bytes.data(), bytes.size());
  CHECK(tokenizer::from_gguf(g) == nullptr);
  CHECK_THROWS_AS((void)tokenizer::from_file("/nonexistent/tokenizer.model"), error);
}

TEST_CASE("tokenizer.model files load through sentencepiece and agree with the GGUF route") {
  const vocabulary v = llama2_vocabulary();
  const std::string path = "/tmp/qllm-test-tokenizer.model";
  {
    std::ofstream out(path, std::ios::binary);
    out << text::serialize_model_proto(v, true);
  }
  const auto t = tokenizer::from_file(path);
  for (const auto& c : kCases) CHECK(t->encode(c.text, true) == llama2().encode(c.text, true));
  std::remove(path.c_str());
  {
    std::ofstream out(path, std::ios::binary);
    out << "not a model";
  }
  CHECK_THROWS_WITH_AS((void)tokenizer::from_file(path), doctest::Contains("not a sentencepiece model"), error);
  std::remove(path.c_str());
}

// Llama-2-chat ids written out by hand: "[INST]" is ▁[ INST ] = 518 25580 29962, "[/INST]" is
// 518 29914 25580 29962, "<<SYS>>" is ▁<< SY S >> = 3532 14816 29903 6778, newlines <0x0A> = 13.
TEST_CASE("Llama-2-chat template: Meta's layout, BOS/EOS per turn") {
  const tokenizer& t = llama2();
  const std::vector<int32_t> inst{518, 25580, 29962}, end_inst{518, 29914, 25580, 29962};
  auto cat = [](std::initializer_list<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  std::vector<chat_message> one{{"user", "Hi"}};
  CHECK(chat_tokens(t, one) == cat({{1}, inst, {6324}, end_inst}));  // ▁Hi = 6324
  CHECK(chat_text(one) == "<s>[INST] Hi [/INST]");

  std::vector<chat_message> d{{"system", "Be brief."}, {"user", "What is 2+2? "}, {"assistant", " 4\n"}, {"user", "  And 3+3?\n"}};
  const std::vector<int32_t> sys_block{3532, 14816, 29903, 6778, 13, 3629, 11473, 29889, 13, 29966, 829, 14816, 29903, 6778, 13, 13};
  const auto want = cat({{1}, inst, sys_block,
                         {5618, 338, 29871, 29906, 29974, 29906, 29973},  // What is 2+2?
                         end_inst, {29871, 29946, 29871, 2},              // " 4 " then EOS
                         {1}, inst, {1126, 29871, 29941, 29974, 29941, 29973}, end_inst});
  CHECK(chat_tokens(t, d) == want);
  CHECK(chat_text(d) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4 </s><s>[INST] And 3+3? [/INST]");
  CHECK(chat_system_tokens(t, "Be brief.") == int64_t(1 + inst.size() + sys_block.size()));

  std::vector<chat_message> bad1{{"assistant", "x"}};
  CHECK_THROWS_WITH_AS((void)chat_tokens(t, bad1), doctest::Contains("expected 'user'"), error);
  std::vector<chat_message> bad2{{"user", "x"}, {"assistant", "y"}};
  CHECK_THROWS_WITH_AS((void)chat_tokens(t, bad2), doctest::Contains("end with a user message"), error);
  std::vector<chat_message> bad3{{"system", "x"}};
  CHECK_THROWS_AS((void)chat_tokens(t, bad3), error);
  std::vector<chat_message> bad4{{"user", "x"}, {"user", "y"}};
  CHECK_THROWS_AS((void)chat_tokens(t, bad4), error);
}

TEST_CASE("decoding drops the dummy-prefix space from a first normal piece only") {
  const tokenizer& t = llama2();
  CHECK(t.decode(std::vector<int32_t>{0}) == " \xE2\x81\x87 ");  // <unk> keeps its spaces
  CHECK(t.decode(std::vector<int32_t>{3 + 0x20, 263}) == "  a");  // <0x20> is a byte, not a prefix
  CHECK(t.decode(std::vector<int32_t>{1, 263}) == "a");          // BOS, then "▁a"
}

TEST_CASE("a tokenizer.model without the dummy prefix keeps its own normalizer") {
  vocabulary v = llama2_vocabulary();
  v.add_space_prefix = false;
  const std::string path = "/tmp/qllm-test-tokenizer-noprefix.model";
  {
    std::ofstream out(path, std::ios::binary);
    out << text::serialize_model_proto(v, true);
  }
  const auto from_file = tokenizer::from_file(path);
  std::remove(path.c_str());
  CHECK_FALSE(from_file->vocab().add_space_prefix);
  const auto built = tokenizer::from_vocabulary(v);
  const auto ids = from_file->encode("Hello world", false);
  CHECK(ids == built->encode("Hello world", false));
  CHECK(ids != llama2().encode("Hello world", false));  // no "▁Hello"
  CHECK(from_file->decode(ids) == "Hello world");
}

// ---- Llama-3 byte-level BPE ----

namespace {

// GPT-2's byte map as the tests write it (tests/gpt2_bytes.hpp), independent of lib/text/bpe.cpp's
std::string byte_char(uint8_t b) { return fixture::gpt2_byte_char(b); }
std::string mapped(std::string_view bytes) {
  std::string s;
  for (char c : bytes) s += byte_char(uint8_t(c));
  return s;
}

// 256 byte tokens, then merged pieces, then the specials; merges given as byte strings
vocabulary small_bpe(const std::vector<std::pair<std::string, std::string>>& merges,
                     const std::vector<std::string>& extra_words = {}) {
  vocabulary v;
  v.kind = tokenizer_kind::llama3_bpe;
  v.add_space_prefix = false;
  v.unk_id = -1;
  for (int b = 0; b < 256; ++b) v.pieces.push_back(byte_char(uint8_t(b)));
  for (const auto& [a, b] : merges) {
    v.merges.push_back(mapped(a) + " " + mapped(b));
    v.pieces.push_back(mapped(a + b));
  }
  for (const auto& w : extra_words) v.pieces.push_back(mapped(w));
  v.types.assign(v.pieces.size(), token_type::normal);
  for (const char* s : {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                        "<|end_header_id|>", "<|x|>", "<|x|>y"}) {
    v.pieces.push_back(s);
    v.types.push_back(token_type::control);
  }
  const auto n = int32_t(v.pieces.size());
  v.bos_id = n - 7, v.eos_id = n - 6, v.eot_id = n - 5;
  return v;
}

int32_t id_of(const tokenizer& t, std::string_view bytes) {
  const std::string p = mapped(bytes);
  for (int32_t i = 0; i < t.n_vocab(); ++i)
    if (t.piece(i) == p) return i;
  FAIL("no token for " << std::string(bytes));
  return -1;
}

}  // namespace

TEST_CASE("llama3 pre-tokenizer: the regex's alternatives, greedy with backtracking") {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"Hello world!", {"Hello", " world", "!"}},
      {"I'm 12345 ok", {"I", "'m", " ", "123", "45", " ok"}},
      {"don'T WE'LL they'Re", {"don", "'T", " WE", "'LL", " they", "'Re"}},
      {"'hello 'x", {"'hello", " '", "x"}},
      {"a  b", {"a", " ", " b"}},
      {"a\n\n  b", {"a", "\n\n", " ", " b"}},
      {"a \n\n b", {"a", " \n\n", " b"}},
      {"x   ", {"x", "   "}},
      {"\t\tx", {"\t", "\tx"}},
      {"!!!\n\nx", {"!!!\n\n", "x"}},
      {" !? x", {" !?", " x"}},
      {"ab12cd", {"ab", "12", "cd"}},
      {"e\xCC\x81", {"e", "\xCC\x81"}},                                                   // e + combining acute
      {"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96", {"\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x8C\xE4\xB8\x96"}},  // 你好，世: the comma leads the letters
      {"a\r\n", {"a", "\r\n"}},
      {"1\xC2\xB2\xC2\xB3 4", {"1\xC2\xB2\xC2\xB3", " ", "4"}},                           // ² ³ are numbers
      {"x\xC2\xA0y", {"x", "\xC2\xA0y"}},                                                 // no-break space
      {"'\xC5\xBFx", {"'\xC5\xBF", "x"}},                                                 // (?i)'s folds the long s
      {"  ", {"  "}},
      {"", {}},
  };
  for (const auto& [text, want] : cases) {
    CAPTURE(text);
    const auto got = text::llama3_pretokenize(text);
    CHECK(std::vector<std::string>(got.begin(), got.end()) == want);
  }
  CHECK(text::is_letter(U'\u00E9'));
  CHECK(text::is_number(U'\u0663'));  // Arabic-Indic three
  CHECK_FALSE(text::is_letter(U'\u0301'));
  CHECK(text::is_space(0x3000));
  CHECK_FALSE(text::is_space(0xFEFF));
}

TEST_CASE("llama3 BPE: merges by rank, leftmost first, whole pre-tokens that are tokens, specials on request") {
  // "b c" outranks "a b": "abc" is a + bc; "a a" merges leftmost first; "xyz" has no merge path
  // but is a token itself (ignore_merges)
  const auto t = tokenizer::from_vocabulary(small_bpe({{"b", "c"}, {"a", "b"}, {"a", "a"}, {" ", "a"}}, {"xyz"}));
  REQUIRE(t->kind() == tokenizer_kind::llama3_bpe);
  const auto ids = [&](std::initializer_list<std::string_view> parts) {
    std::vector<int32_t> v;
    for (auto p : parts) v.push_back(id_of(*t, p));
    return v;
  };
  CHECK(t->encode("abc", false) == ids({"a", "bc"}));
  CHECK(t->encode("ab", false) == ids({"ab"}));
  CHECK(t->encode("aaa", false) == ids({"aa", "a"}));
  CHECK(t->encode("aaaa", false) == ids({"aa", "aa"}));
  CHECK(t->encode("xyz", false) == ids({"xyz"}));
  CHECK(t->encode("xyzw", false) == ids({"x", "y", "z", "w"}));
  CHECK(t->encode(" a", false) == ids({" a"}));
  CHECK(t->encode("a\xC3\xA9", false) == ids({"a", "\xC3", "\xA9"}));  // "aé": no merges, three bytes
  // BOS, specials only when asked, longest special first
  const int32_t bos = t->bos(), eot = t->eot();
  CHECK(t->encode("ab", true) == std::vector<int32_t>{bos, id_of(*t, "ab")});
  auto plain = t->encode("ab<|eot_id|>", false);
  CHECK(std::find(plain.begin(), plain.end(), eot) == plain.end());
  CHECK(t->encode("ab<|eot_id|>ab", false, true) == std::vector<int32_t>{id_of(*t, "ab"), eot, id_of(*t, "ab")});
  const int32_t xy = t->n_vocab() - 1;  // "<|x|>y", longer than "<|x|>"
  CHECK(t->encode("<|x|>y", false, true) == std::vector<int32_t>{xy});
  CHECK(t->ends_answer(eot));
  CHECK(t->ends_answer(t->eos()));
  CHECK_FALSE(t->ends_answer(bos));
  // decode: bytes back, control tokens silent; a character split over two tokens streams whole
  CHECK(t->decode(t->encode("ab aa\xC3\xA9 xyz", true)) == "ab aa\xC3\xA9 xyz");
  stream_decoder d(*t);
  CHECK(d.push(id_of(*t, "\xC3")).empty());
  CHECK(d.push(id_of(*t, "\xA9")) == "\xC3\xA9");
  CHECK(d.push(eot).empty());
  CHECK_THROWS_AS((void)t->encode("a\xC3", false), error);
}

TEST_CASE("llama3 BPE: a long pre-token merges in n log n, not quadratic time") {
  const auto t = tokenizer::from_vocabulary(small_bpe({{"a", "a"}, {"aa", "aa"}}));
  const std::string text(1 << 20, 'a');  // one pre-token of 2^20 letters
  const auto ids = t->encode(text, false);
  CHECK(ids.size() == std::size_t(1) << 18);
  CHECK(ids.front() == id_of(*t, "aaaa"));
  const std::string punct(1 << 20, '!');
  CHECK(t->encode(punct, false).size() == std::size_t(1) << 20);
}

TEST_CASE("llama3 BPE vocabularies: hostile or inconsistent ones are refused by name") {
  const auto expect = [](vocabulary v, errc code, const char* what) {
    CAPTURE(what);
    try {
      (void)tokenizer::from_vocabulary(std::move(v));
      FAIL("accepted");
    } catch (const error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
  };
  const auto base = [] { return small_bpe({{"a", "b"}}); };
  auto v = base();
  v.merges.push_back(mapped("q") + " " + mapped("r"));  // "qr" is not a token
  expect(v, errc::bad_format, "is not a token");
  v = base();
  v.merges.push_back("ab");
  expect(v, errc::bad_format, "not two tokens separated by one space");
  v = base();
  v.merges.clear();
  expect(v, errc::bad_format, "needs tokenizer.ggml.merges");
  v = base();
  v.pieces[0] = "\xE2\x82\xAC";  // a token that no byte string maps to
  expect(v, errc::bad_format, "not byte-level BPE text");
  v = base();
  v.types[0] = token_type::unused;  // byte 0 loses its token
  expect(v, errc::bad_format, "needs a token for every byte");
  v = base();
  v.types[5] = token_type::byte;
  expect(v, errc::bad_format, "byte token");
  v = base();
  v.bos_id = 3;  // a normal token
  expect(v, errc::bad_format, "not a control token");
  v = base();
  v.eot_id = int32_t(v.pieces.size());
  expect(v, errc::bad_format, "outside the vocabulary");
  v = base();
  v.pieces[300 % v.pieces.size()] = v.pieces[1];
  expect(v, errc::bad_format, "appears twice");
}

TEST_CASE("llama3 BPE through GGUF: gpt2 + llama-bpe keys load, and the specials are found") {
  const vocabulary src = small_bpe({{"a", "b"}, {"ab", "c"}});
  gguf::writer w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "llama-bpe");
  w.set_array_string("tokenizer.ggml.tokens", src.pieces);
  std::vector<int32_t> types;
  for (auto ty : src.types) types.push_back(int32_t(ty));
  w.set_array_i32("tokenizer.ggml.token_type", types);
  w.set_array_string("tokenizer.ggml.merges", src.merges);
  w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(src.bos_id));
  w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(src.eos_id));
  const auto bytes = w.to_bytes();
  const auto f = gguf::file::from_memory(bytes.data(), bytes.size());
  const auto t = tokenizer::from_gguf(f);
  REQUIRE(t);
  CHECK(t->kind() == tokenizer_kind::llama3_bpe);
  CHECK(t->eot() == src.eot_id);  // no eot key: found by its name
  CHECK(t->encode("abc", true) == std::vector<int32_t>{src.bos_id, id_of(*t, "abc")});
  CHECK(t->decode(t->encode(" abc\n", false)) == " abc\n");
}

TEST_CASE("llama3 chat: the template's tokens, contents as plain text, n_keep, and template detection") {
  vocabulary v = small_bpe({{"a", "b"}, {"\n", "\n"}, {"u", "s"}, {"us", "e"}, {"use", "r"}});
  const auto t = tokenizer::from_vocabulary(v);
  REQUIRE(chat_format_of(*t) == chat_format::llama3);  // no template: by the vocabulary
  const std::vector<chat_message> d = {{"system", " be brief "}, {"user", "ab"}, {"assistant", "ab ab"}, {"user", "x<|eot_id|>"}};
  const auto ids = chat_tokens(*t, d);
  // what Hugging Face's template renders, tokenized with its special pieces parsed ...
  const std::string text = chat_text(*t, d);
  CHECK(text ==
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nab<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "ab ab<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|><|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  auto want = t->encode(text, false, true);
  // ... except that the user's typed "<|eot_id|>" stays text: one eot fewer, its pieces instead
  const auto eots = [&](const std::vector<int32_t>& x) { return std::count(x.begin(), x.end(), t->eot()); };
  CHECK(eots(ids) == 4);
  CHECK(eots(want) == 5);
  const auto typed = t->encode("\n\nx<|eot_id|>", false);
  const auto pos = std::search(ids.begin(), ids.end(), typed.begin(), typed.end());
  CHECK(pos != ids.end());
  // the same as the parsed rendering outside the last user message
  CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + 30) == std::vector<int32_t>(want.begin(), want.begin() + 30));
  CHECK(ids.front() == t->bos());
  // n_keep: the system block, a prefix of the dialog's tokens ending at its <|eot_id|>
  const int64_t keep = chat_system_tokens(*t, " be brief ");
  REQUIRE(keep > 3);
  CHECK(ids[std::size_t(keep - 1)] == t->eot());
  CHECK(std::find(ids.begin(), ids.begin() + keep - 1, t->eot()) == ids.begin() + keep - 1);

  // tokenizer.chat_template chooses; an unknown one is refused naming its start
  // a format of the other kind of vocabulary is refused: Llama-2's [INST] over byte-level BPE
  // (its <s> is not a piece there), Llama-3's headers over sentencepiece (no dummy-prefix-free
  // headers, and generation would not stop at <|eot_id|>)
  v.chat_template = "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}";
  CHECK_THROWS_WITH_AS((void)chat_format_of(*tokenizer::from_vocabulary(v)), doctest::Contains("byte-level BPE"), error);
  {
    vocabulary sp = random_vocabulary(600);
    sp.chat_template = "{{ bos_token }}<|start_header_id|>{{ m.role }}<|end_header_id|><|eot_id|>";
    const auto st = tokenizer::from_vocabulary(sp);
    CHECK_THROWS_WITH_AS((void)chat_tokens(*st, d), doctest::Contains("sentencepiece"), error);
    CHECK_THROWS_WITH_AS((void)chat_text(*st, d), doctest::Contains("sentencepiece"), error);
    sp.chat_template = "[INST] x [/INST]";
    CHECK(chat_format_of(*tokenizer::from_vocabulary(sp)) == chat_format::llama2);
  }
  v.chat_template = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}";
  CHECK(chat_format_of(*tokenizer::from_vocabulary(v)) == chat_format::llama3);
  v.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}";
  const auto chatml = tokenizer::from_vocabulary(v);
  try {
    (void)chat_tokens(*chatml, d);
    FAIL("a ChatML template was accepted");
  } catch (const error& e) {
    CHECK(e.code() == errc::unsupported);
    CHECK(std::string(e.what()).find("<|im_start|>") != std::string::npos);
  }
  // a Llama-3 template over a vocabulary without the header tokens
  vocabulary w = small_bpe({{"a", "b"}});
  w.pieces[w.pieces.size() - 4] = "<|start_header|>";
  CHECK_THROWS_WITH_AS((void)chat_tokens(*tokenizer::from_vocabulary(w), d), doctest::Contains("<|start_header_id|>"), error);
}

TEST_CASE("llama3 BPE: every end piece ends an answer, user-defined pieces always match, chat strips Unicode space") {
  vocabulary v = small_bpe({{"a", "b"}});
  v.eos_id = v.eot_id;  // an instruct model: EOS is <|eot_id|>
  v.eot_id = -1;
  v.pieces.push_back("<user>");
  v.types.push_back(token_type::user_defined);
  v.pieces.push_back("<|eom_id|>");
  v.types.push_back(token_type::control);
  const auto t = tokenizer::from_vocabulary(v);
  const auto id = [&](std::string_view piece) {
    for (int32_t i = 0; i < t->n_vocab(); ++i)
      if (t->piece(i) == piece) return i;
    return -1;
  };
  CHECK(t->ends_answer(id("<|eot_id|>")));
  CHECK(t->ends_answer(id("<|end_of_text|>")));  // still ends the answer
  CHECK(t->ends_answer(id("<|eom_id|>")));
  CHECK_FALSE(t->ends_answer(id("<|begin_of_text|>")));
  CHECK(t->end_tokens().size() == 3);
  // an added piece that is not special is matched in plain text; control pieces only on request
  const auto ids = t->encode("ab<user>ab<|eom_id|>", false);
  CHECK(std::count(ids.begin(), ids.end(), id("<user>")) == 1);
  CHECK(std::count(ids.begin(), ids.end(), id("<|eom_id|>")) == 0);
  CHECK(t->encode("ab<user>ab<|eom_id|>", false, true) ==
        std::vector<int32_t>{id_of(*t, "ab"), id("<user>"), id_of(*t, "ab"), id("<|eom_id|>")});
  CHECK(t->decode(ids) == "ab<user>ab<|eom_id|>");
  // contents lose the white space Python's strip() removes, Unicode's included
  const std::vector<chat_message> d = {{"user", "\xE3\x80\x80" "ab\xC2\xA0\x1C \xE2\x80\x83"}};
  const std::vector<chat_message> plain = {{"user", "ab"}};
  CHECK(chat_tokens(*t, d) == chat_tokens(*t, plain));
  CHECK(chat_text(*t, d) == chat_text(*t, plain));
  const std::vector<chat_message> inner = {{"user", "a\xE3\x80\x80" "b"}};  // inner space stays
  CHECK(chat_tokens(*t, inner) != chat_tokens(*t, plain));
}
