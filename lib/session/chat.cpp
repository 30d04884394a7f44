#include <string>

#include "qllm/error.hpp"
#include "qllm/session.hpp"

namespace qllm {
namespace {

constexpr std::string_view kInst = "[INST]", kEndInst = "[/INST]";
constexpr std::string_view kSys = "<<SYS>>\n", kEndSys = "\n<</SYS>>\n\n";

std::string_view strip(std::string_view s) {
  const auto ws = " \t\n\r\f\v";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
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

}  // namespace

std::vector<int32_t> chat_tokens(const tokenizer& tok, std::span<const chat_message> dialog) {
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

int64_t chat_system_tokens(const tokenizer& tok, std::string_view system) {
  // "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n": newlines are byte tokens, which never merge with
  // what follows, so these tokens are a prefix of the first turn's.
  std::string seg(kInst);
  seg.append(" ").append(kSys).append(system).append(kEndSys);
  return int64_t(tok.encode(seg, true).size());
}

}  // namespace qllm
