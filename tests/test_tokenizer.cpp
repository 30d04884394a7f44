// The tokenizer against the real Llama-2 vocabulary (32,000 pieces, tests/data/llama2-vocab.txt),
// with expected ids from an independent implementation (llama-tokenizer-js) and Meta's anchors.
#include <doctest/doctest.h>

#include <sentencepiece_processor.h>

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"
#include "llama2_vocab.hpp"
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
  // U+1F999 (llama) has no piece: four byte tokens <0xF0> <0x9F> <0xA6> <0x99>
  CHECK(t.encode("\xF0\x9F\xA6\x99", false) == std::vector<int32_t>{29871, 243, 162, 169, 156});
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

  gguf::writer w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_array_string("tokenizer.ggml.tokens", {"a"});
  auto bytes = w.to_bytes();
  auto f = gguf::file::from_memory(bytes.data(), bytes.size());
  CHECK_THROWS_WITH_AS((void)tokenizer::from_gguf(f), doctest::Contains("'gpt2'"), error);

  gguf::writer none;
  none.set_u32("x", 1);
  bytes = none.to_bytes();
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
