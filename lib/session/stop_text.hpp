// Sampled tokens to streamed text: bytes of an incomplete UTF-8 character are held until it is
// complete, and text that may be the start of a stop string is held until it is known not to be
// one. Stop strings match across token boundaries and are never emitted.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "qllm/tokenizer.hpp"

namespace qllm::detail {

class stop_text {
 public:
  // tk: null for a model without a vocabulary (tokens then have no text).
  stop_text(const tokenizer* tk, const std::vector<std::string>& stop) : stop_(&stop) {
    if (tk) dec_.emplace(*tk, false);
  }
  // Adds a sampled token. `out` receives the text that became safe to emit; returns true when a
  // stop string was found (out then holds the text before it; generation should end).
  bool push(int32_t id, std::string& out) {
    if (dec_) held_ += dec_->push(id);
    const std::size_t cut = first_stop();
    if (cut != std::string::npos) {
      out.assign(held_, 0, cut);
      held_.clear();
      return true;
    }
    std::size_t keep = 0;  // longest suffix of held that is a proper prefix of a stop string
    for (const auto& s : *stop_) {
      for (std::size_t k = std::min(held_.size(), s.size() - 1); k > keep; --k) {
        if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
          keep = k;
          break;
        }
      }
    }
    out.assign(held_, 0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return false;
  }
  // At the end of generation (not after a stop string): what was held back, incomplete bytes as
  // U+FFFD; `hit` is set when a stop string appears in it (the text is then cut before it).
  std::string finish(bool& hit) {
    if (dec_) held_ += dec_->flush();  // may add U+FFFD, which a stop string could contain
    hit = false;
    if (const std::size_t cut = first_stop(); cut != std::string::npos) {
      held_.resize(cut);
      hit = true;
    }
    std::string out;
    out.swap(held_);
    return out;
  }

 private:
  std::size_t first_stop() const {  // where the earliest stop string starts in held, or npos
    std::size_t cut = std::string::npos;
    for (const auto& s : *stop_) cut = std::min(cut, held_.find(s));
    return cut;
  }
  const std::vector<std::string>* stop_;
  std::optional<stream_decoder> dec_;
  std::string held_;
};

}  // namespace qllm::detail
