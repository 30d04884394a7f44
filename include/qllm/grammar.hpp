// Grammar-constrained decoding: a grammar in GBNF (the syntax of llama.cpp's grammars) compiled
// once, and a matcher that follows the generated text and says which tokens of the model's
// vocabulary may come next.
//
// Exactness: a token is allowed iff some string of the grammar's language starts with the text so
// far followed by the token's bytes; EOS is allowed iff the text so far is in the language. The
// grammar works on Unicode code points; the matcher on bytes, so a token that ends inside a UTF-8
// character (a byte-fallback piece) is allowed iff some code point the grammar allows there
// starts with those bytes. Text that is not valid UTF-8 is never allowed.
//
// Compile-time checks that keep this exact and bounded: rules that derive no finite string are
// removed (a grammar whose root derives none is an error), left recursion is an error naming the
// rule, and the sizes of rules and repetitions are bounded.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qllm {

class tokenizer;

namespace grammar_detail {
struct compiled;
struct token_trie;
struct parse_state;
struct mask_cache;
}  // namespace grammar_detail

class grammar {
 public:
  // GBNF: `name ::= alternatives` rules; "literals" with \n \r \t \\ \" \xHH \uHHHH \UHHHHHHHH
  // escapes; [character classes] with ranges and ^; `.` (any character); rule names; ( groups );
  // postfix * + ? {m} {m,} {m,n}; # comments. A rule ends at the end of a line unless inside
  // parentheses or the next line starts with |. Errors (error(invalid_argument)) give the line
  // and column, or name the rule (undefined, left-recursive, deriving nothing).
  static std::shared_ptr<const grammar> from_gbnf(std::string_view text, std::string_view root = "root");
  // Any JSON value whose top level is an object (what OpenAI's "json_object" response format
  // asks for), with optional whitespace between tokens as JSON allows.
  static std::shared_ptr<const grammar> json_object();
  // A JSON Schema (the text of one) as a grammar whose every string validates against it; see
  // docs/formats.md for the keywords supported. Invalid JSON: error(invalid_argument); a keyword
  // or form the grammar could not follow exactly: error(unsupported) naming it and where it is.
  static std::shared_ptr<const grammar> from_json_schema(std::string_view schema);
  // The GBNF from_json_schema compiles.
  static std::string gbnf_from_json_schema(std::string_view schema);
  // The GBNF text json_object() compiles (for users who start their own grammar from it).
  static std::string_view json_object_gbnf();
  ~grammar();

  std::size_t n_rules() const noexcept;

 private:
  friend class grammar_matcher;
  explicit grammar(std::unique_ptr<grammar_detail::compiled> c);
  std::unique_ptr<grammar_detail::compiled> c_;
};

// Follows one generation: mask() before each sampling, accept() with the token chosen.
class grammar_matcher {
 public:
  // The tokenizer's token texts (token_text) are what the grammar sees; control, unknown and
  // unused tokens are never allowed, except EOS where the grammar may end.
  // Every call (the constructor included) may throw error(unsupported) when following the grammar
  // costs too much for one step (more than 4096 parses of the text, or 2^24 units of work: an
  // ambiguous or deeply nested grammar); accept_text's bound is per call, so give long texts in
  // pieces.
  grammar_matcher(std::shared_ptr<const grammar> g, const tokenizer& tok);
  ~grammar_matcher();
  grammar_matcher(grammar_matcher&&) noexcept;
  grammar_matcher& operator=(grammar_matcher&&) noexcept;

  // Sets every logit whose token may not come next to -inf. logits.size() must be the
  // vocabulary's (error(invalid_argument) otherwise).
  void mask(std::span<float> logits);
  // allowed[i] = whether token i may come next (the mask as booleans).
  void allowed(std::vector<bool>& allowed);
  // Advances past token id. A token the grammar does not allow: error(invalid_argument), and the
  // matcher is unchanged.
  void accept(int32_t id);
  // Advances past raw text (e.g. a prompt's prefix the answer must continue): false, and
  // unchanged, if the grammar does not allow it.
  bool accept_text(std::string_view bytes);
  // The text so far is a complete string of the language (EOS allowed).
  bool can_end() const noexcept;
  // No string of the language continues the text so far with more characters: only EOS fits.
  bool must_end() const noexcept;
  // Back to the empty text.
  void reset();

 private:
  std::shared_ptr<const grammar> g_;
  const tokenizer* tok_;
  std::shared_ptr<const grammar_detail::token_trie> trie_;
  std::unique_ptr<grammar_detail::parse_state> st_;
  std::unique_ptr<grammar_detail::mask_cache> cache_;
  std::vector<bool> mask_;
  bool ended_ = false;  // EOS accepted
};

}  // namespace qllm
