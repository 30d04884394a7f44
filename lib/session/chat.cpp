#include <algorithm>
#include <string>

#include "qllm/error.hpp"
#include "qllm/session.hpp"

namespace qllm {
namespace {

constexpr std::string_view kInst = "[INST]", kEndInst = "[/INST]";
constexpr std::string_view kSys = "<<SYS>>\n", kEndSys = "\n<</SYS>>\n\n";

// The white space Python's str.strip() and Jinja's trim remove (what Meta's reference code and
// the templates strip): ASCII white space, U+001C..U+001F, U+0085, and Unicode's spaces.
std::size_t space_at(std::string_view s, std::size_t i) {  // its length in bytes at i, or 0
  const auto c = uint8_t(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
  const auto starts = [&](std::string_view p) { return s.compare(i, p.size(), p) == 0; };
  if (starts("\xC2\x85") || starts("\xC2\xA0")) return 2;
  if (starts("\xE1\x9A\x80") || starts("\xE2\x80\xA8") || starts("\xE2\x80\xA9") || starts("\xE2\x80\xAF") ||
      starts("\xE2\x81\x9F") || starts("\xE3\x80\x80"))
    return 3;  // U+1680, U+2028, U+2029, U+202F, U+205F, U+3000
  if (i + 2 < s.size() && c == 0xE2 && uint8_t(s[i + 1]) == 0x80 && uint8_t(s[i + 2]) >= 0x80 && uint8_t(s[i + 2]) <= 0x8A)
    return 3;  // U+2000..U+200A
  return 0;
}

std::string_view strip(std::string_view s) {
  std::size_t b = 0;
  while (b < s.size()) {
    const std::size_t n = space_at(s, b);
    if (!n) break;
    b += n;
  }
  std::size_t e = s.size();
  while (e > b) {  // the last character: step back over continuation bytes
    std::size_t k = e - 1;
    while (k > b && (uint8_t(s[k]) & 0xC0) == 0x80) --k;
    if (space_at(s, k) != e - k) break;
    e = k;
  }
  return s.substr(b, e - b);
}

// The dialog as (user, answer) turns, the system message folded into the first user message.
struct turn {
  std::string user;
  const std::string* answer = nullptr;  // null for the last, open turn
};

std::vector<turn> turns(std::span<const chat_message> d) {
  std::size_t i = 0;
  std::string system;
  bool has_system = false;
  if (!d.empty() && d[0].role == "system") {
    system = d[0].content;
    has_system = true;
    i = 1;
  }
  if (i >= d.size()) throw error(errc::invalid_argument, "chat: the dialog needs a user message");
  std::vector<turn> t;
  for (std::size_t k = 0; i < d.size(); ++i, ++k) {
    const std::string& want = k % 2 == 0 ? "user" : "assistant";
    if (d[i].role != want)
      throw error(errc::invalid_argument, "chat: message " + std::to_string(i) + " has role '" + d[i].role +
                                              "', expected '" + want +
                                              "' (an optional system message, then user and assistant alternating)");
    if (k % 2 == 0) {
      std::string u;
      if (has_system && k == 0) u.append(kSys).append(system).append(kEndSys);
      u.append(d[i].content);
      t.push_back({std::move(u), nullptr});
    } else {
      t.back().answer = &d[i].content;
    }
  }
  if (t.back().answer) throw error(errc::invalid_argument, "chat: the dialog must end with a user message");
  return t;
}

// Llama-3's roles are checked as Llama-2's are (the same dialogs are valid in both formats).
void check_roles(std::span<const chat_message> d) { (void)turns(d); }

int32_t special(const tokenizer& tok, std::string_view piece) {
  const auto ids = tok.encode(piece, false, true);
  if (ids.size() != 1 || !tok.is_control(ids[0]))
    throw error(errc::unsupported, "chat: the vocabulary has no " + std::string(piece) + " token (Llama-3's chat format needs it)");
  return ids[0];
}

// <|begin_of_text|>, then per message <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>,
// then <|start_header_id|>assistant<|end_header_id|>\n\n; the contents (stripped) are plain text,
// so a "<|eot_id|>" typed by a user stays text.
std::vector<int32_t> llama3_tokens(const tokenizer& tok, std::span<const chat_message> dialog) {
  check_roles(dialog);
  const int32_t sh = special(tok, "<|start_header_id|>"), eh = special(tok, "<|end_header_id|>"),
                eot = special(tok, "<|eot_id|>");
  std::vector<int32_t> out{tok.bos()};
  const auto add = [&](std::string_view text) {
    const auto ids = tok.encode(text, false);
    out.insert(out.end(), ids.begin(), ids.end());
  };
  const auto header = [&](std::string_view role) {
    out.push_back(sh);
    add(role);
    out.push_back(eh);
  };
  for (const chat_message& m : dialog) {
    header(m.role);
    add("\n\n" + std::string(strip(m.content)));
    out.push_back(eot);
  }
  header("assistant");
  add("\n\n");
  return out;
}

}  // namespace

chat_format chat_format_of(const tokenizer& tok) {
  const std::string& t = tok.vocab().chat_template;
  if (t.empty()) return tok.kind() == tokenizer_kind::llama3_bpe ? chat_format::llama3 : chat_format::llama2;
  // each format goes with its own kind of vocabulary: Llama-3's headers are byte-level BPE
  // pieces, Llama-2's <s> [INST] layout is sentencepiece's (a mix would format a dialog the
  // model never saw, and end its turns with pieces it does not stop at)
  const bool bpe = tok.kind() == tokenizer_kind::llama3_bpe;
  if (t.find("<|start_header_id|>") != std::string::npos && t.find("<|eot_id|>") != std::string::npos) {
    if (!bpe)
      throw error(errc::unsupported, "chat: the model's chat template is Llama-3's, but its vocabulary is "
                                     "sentencepiece, not Llama-3's byte-level BPE: not supported");
    return chat_format::llama3;
  }
  if (t.find("[INST]") != std::string::npos && t.find("[/INST]") != std::string::npos) {
    if (bpe)
      throw error(errc::unsupported, "chat: the model's chat template is Llama-2's ([INST]), but its vocabulary is "
                                     "Llama-3's byte-level BPE: not supported");
    return chat_format::llama2;
  }
  std::string head = t.substr(0, 80);
  for (char& c : head)
    if (c == '\n' || c == '\r') c = ' ';
  throw error(errc::unsupported, "chat: the model's chat template (tokenizer.chat_template, beginning '" + head +
                                     (t.size() > 80 ? "...'" : "'") +
                                     ") is not one qllm knows: Llama-2 ([INST]) and Llama-3 (<|start_header_id|>)");
}

std::vector<int32_t> chat_tokens(const tokenizer& tok, std::span<const chat_message> dialog) {
  if (chat_format_of(tok) == chat_format::llama3) return llama3_tokens(tok, dialog);
  std::vector<int32_t> out;
  for (const turn& t : turns(dialog)) {
    std::string seg(kInst);
    seg.append(" ").append(strip(t.user)).append(" ").append(kEndInst);
    if (t.answer) seg.append(" ").append(strip(*t.answer)).append(" ");
    const auto ids = tok.encode(seg, true);
    out.insert(out.end(), ids.begin(), ids.end());
    if (t.answer) out.push_back(tok.eos());
  }
  return out;
}

std::string chat_text(std::span<const chat_message> dialog) {
  std::string out;
  for (const turn& t : turns(dialog)) {
    out.append("<s>").append(kInst).append(" ").append(strip(t.user)).append(" ").append(kEndInst);
    if (t.answer) out.append(" ").append(strip(*t.answer)).append(" </s>");
  }
  return out;
}

std::string chat_text(const tokenizer& tok, std::span<const chat_message> dialog) {
  if (chat_format_of(tok) != chat_format::llama3) return chat_text(dialog);
  check_roles(dialog);
  std::string out = "<|begin_of_text|>";
  for (const chat_message& m : dialog)
    out.append("<|start_header_id|>").append(m.role).append("<|end_header_id|>\n\n").append(strip(m.content)).append("<|eot_id|>");
  return out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
}

int64_t chat_system_tokens(const tokenizer& tok, std::string_view system) {
  if (chat_format_of(tok) == chat_format::llama3) {
    // the system message is a whole block of its own: its tokens are a prefix of the dialog's
    const chat_message d[2] = {{"system", std::string(system)}, {"user", ""}};
    const auto all = llama3_tokens(tok, d);
    const auto it = std::find(all.begin() + 1, all.end(), special(tok, "<|eot_id|>"));
    return int64_t(it - all.begin()) + 1;
  }
  // "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n": newlines are byte tokens, which never merge with
  // what follows, so these tokens are a prefix of the first turn's.
  std::string seg(kInst);
  seg.append(" ").append(kSys).append(system).append(kEndSys);
  return int64_t(tok.encode(seg, true).size());
}

}  // namespace qllm
