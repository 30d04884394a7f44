// Reading OpenAI request bodies for qllm serve: typed fields with their ranges, the fields this
// server refuses, sampling and generation settings, and the names it answers with.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "qllm/engine.hpp"
#include "qllm/model.hpp"
#include "qllm/session.hpp"
#include "serve/http_util.hpp"

namespace qllm::serve {

// A field's value, or def when absent or null; a wrong type or a value out of [lo, hi] is a 400.
double get_number(const json& body, const char* key, double lo, double hi, double def);
int64_t get_int(const json& body, const char* key, int64_t lo, int64_t hi, int64_t def);
bool get_bool(const json& body, const char* key, bool def);
std::string get_string(const json& body, const char* key, const std::string& def);
// 400 for a field not in `known`, unless it is one of OpenAI's that asks for nothing here.
void check_fields(const json& body, std::initializer_list<const char*> known);

struct gen_settings {
  engine_request req;
  bool stream = false;
  bool include_usage = false;
  // response_format.json_schema.schema as the request wrote it, its keys in their order (json
  // sorts them; a schema's properties are generated in the schema's order)
  std::string schema_text;
};

// Sampling, limits, stop strings, logit bias and the context policy, from either endpoint.
// default_draft_tokens: the server's speculation by prompt lookup for requests that do not say.
void parse_common(const json& body, const model& m, gen_settings& g, int64_t default_max_tokens,
                  int32_t default_draft_tokens = 0);
// The response's "qllm" object: what the context policy did to the prompt.
json fit_report(const prompt_fit& f, context_policy p);
// OpenAI's finish_reason for ours.
const char* finish_name(finish_reason f);

}  // namespace qllm::serve
