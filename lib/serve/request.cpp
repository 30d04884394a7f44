#include "serve/request.hpp"

#include "qllm/grammar.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <random>

#include "qllm/error.hpp"

namespace qllm::serve {

namespace {
const char* kind_name(const json& v) { return v.type_name(); }
}  // namespace

double get_number(const json& body, const char* key, double lo, double hi, double def) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return def;
  if (!it->is_number()) bad_request(std::string("'") + key + "' must be a number, not " + kind_name(*it), key);
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi))
    bad_request(std::string("'") + key + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "]", key);
  return v;
}

int64_t get_int(const json& body, const char* key, int64_t lo, int64_t hi, int64_t def) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return def;
  if (!it->is_number_integer() && !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>()))
    bad_request(std::string("'") + key + "' must be an integer, not " + kind_name(*it), key);
  const double d = it->get<double>();
  if (!(d >= double(lo) && d <= double(hi)))
    bad_request(std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", key);
  return it->is_number_integer() ? it->get<int64_t>() : int64_t(d);
}

bool get_bool(const json& body, const char* key, bool def) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return def;
  if (!it->is_boolean()) bad_request(std::string("'") + key + "' must be a boolean, not " + kind_name(*it), key);
  return it->get<bool>();
}

std::string get_string(const json& body, const char* key, const std::string& def) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return def;
  if (!it->is_string()) bad_request(std::string("'") + key + "' must be a string, not " + kind_name(*it), key);
  return it->get<std::string>();
}

void check_fields(const json& body, std::initializer_list<const char*> known) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& k = it.key();
    bool ok = false;
    for (const char* n : known) ok = ok || k == n;
    if (ok) continue;
    const json& v = it.value();
    // accepted when they ask for nothing this server would have to do
    if ((k == "user" && (v.is_string() || v.is_null())) || (k == "stream_options" && (v.is_object() || v.is_null())) ||
        (k == "logprobs" && (v.is_null() || v == false)) || (k == "top_logprobs" && (v.is_null() || v == 0)) ||
        (k == "echo" && (v.is_null() || v == false)) || (k == "suffix" && (v.is_null() || v == "")) ||
        (k == "best_of" && (v.is_null() || v == 1)))
      continue;
    if (k == "logprobs" || k == "top_logprobs" || k == "echo" || k == "suffix" || k == "best_of" || k == "tools" ||
        k == "tool_choice" || k == "functions")
      bad_request("'" + k + "' is not supported by this server", k);
    bad_request("unknown field '" + k + "'", k);
  }
}


void parse_common(const json& body, const model& m, gen_settings& g, int64_t default_max_tokens,
                  int32_t default_draft_tokens) {
  const int64_t n = get_int(body, "n", 1, 1 << 20, 1);
  if (n != 1) bad_request("'n' must be 1 (one choice per request)", "n");
  g.stream = get_bool(body, "stream", false);
  if (auto it = body.find("stream_options"); it != body.end() && it->is_object()) {
    auto u = it->find("include_usage");
    if (u != it->end() && !u->is_null() && !u->is_boolean())
      bad_request("'stream_options.include_usage' must be a boolean", "stream_options");
    g.include_usage = u != it->end() && u->is_boolean() && u->get<bool>();
  }
  engine_request& r = g.req;
  sampler_params& s = r.sampling;
  // OpenAI's defaults: temperature 1, top_p 1, nothing else filters
  s.temperature = float(get_number(body, "temperature", 0, 2, 1));
  s.top_p = float(get_number(body, "top_p", 0, 1, 1));
  if (s.top_p <= 0) s.top_p = 1e-6f;  // top_p 0 keeps the best token only
  s.top_k = int32_t(get_int(body, "top_k", 0, 1 << 30, 0));
  s.min_p = float(get_number(body, "min_p", 0, 0.999999, 0));
  s.presence_penalty = float(get_number(body, "presence_penalty", -2, 2, 0));
  s.frequency_penalty = float(get_number(body, "frequency_penalty", -2, 2, 0));
  s.repeat_penalty = float(get_number(body, "repeat_penalty", 0.01, 10, 1));
  s.penalty_last_n = int32_t(get_int(body, "penalty_last_n", 0, 1 << 20, 64));
  if (auto it = body.find("seed"); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer()) bad_request("'seed' must be an integer", "seed");
    s.seed = it->is_number_unsigned() ? it->get<uint64_t>() : uint64_t(it->get<int64_t>());
  } else {
    s.seed = std::random_device{}() * 0x100000001ull;
  }
  if (auto it = body.find("logit_bias"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) bad_request("'logit_bias' must be an object of token id: bias", "logit_bias");
    if (it->size() > 1024) bad_request("'logit_bias' has more than 1024 entries", "logit_bias");
    for (auto e = it->begin(); e != it->end(); ++e) {
      const std::string& key = e.key();
      // canonical decimal ids only: "+5", " 5", "05" or "5 " name no token
      const bool canonical = !key.empty() && key.size() <= 10 && (key == "0" || key[0] != '0') &&
                             std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
      const int64_t id = canonical ? std::stoll(key) : -1;
      if (!canonical || id >= m.config().n_vocab)
        bad_request("'logit_bias' key '" + key + "' is not a token id of this model (a decimal number without sign, "
                    "spaces or leading zeros)", "logit_bias");
      if (!e.value().is_number()) bad_request("'logit_bias' values must be numbers", "logit_bias");
      const double b = e.value().get<double>();
      if (!(b >= -100 && b <= 100)) bad_request("'logit_bias' values must be in [-100, 100]", "logit_bias");
      // -100 bans the token, as OpenAI documents
      s.logit_bias.emplace_back(int32_t(id), b <= -100 ? -INFINITY : float(b));
    }
  }
  const int64_t mt_default = default_max_tokens;
  r.gen.max_tokens = get_int(body, "max_tokens", 1, int64_t(1) << 30, mt_default);
  if (auto it = body.find("max_completion_tokens"); it != body.end() && !it->is_null())
    r.gen.max_tokens = get_int(body, "max_completion_tokens", 1, int64_t(1) << 30, mt_default);
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      r.gen.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      if (it->size() > 4) bad_request("'stop' has more than 4 strings", "stop");
      for (const auto& x : *it) {
        if (!x.is_string()) bad_request("'stop' must be a string or an array of strings", "stop");
        r.gen.stop.push_back(x.get<std::string>());
      }
    } else {
      bad_request("'stop' must be a string or an array of strings", "stop");
    }
    for (const auto& x : r.gen.stop) {
      if (x.empty()) bad_request("'stop' strings must not be empty", "stop");
      if (x.size() > 1024) bad_request("'stop' strings must be at most 1024 bytes", "stop");
    }
  }
  const std::string policy = get_string(body, "context_policy", "error");
  try {
    r.policy = parse_context_policy(policy);
  } catch (const error& e) {
    bad_request(e.what(), "context_policy");
  }
  r.n_keep = get_int(body, "n_keep", 0, int64_t(1) << 30, 1);
  // speculation by prompt lookup (qllm's own fields): "speculation": "lookup" | "off", and
  // "draft_tokens"; a request that names neither gets the server's setting
  // "draft_tokens" alone: N > 0 asks for lookup, 0 turns it off
  const int64_t k = get_int(body, "draft_tokens", 0, 64, -1);
  const std::string spec =
      get_string(body, "speculation", k > 0 ? "lookup" : k == 0 ? "off" : default_draft_tokens > 0 ? "lookup" : "off");
  if (spec != "lookup" && spec != "off")
    bad_request("'speculation' must be \"lookup\" or \"off\" (this server has no draft model)", "speculation");
  if (spec == "lookup" && k == 0) bad_request("'draft_tokens' must be in [1, 64] with speculation lookup", "draft_tokens");
  r.gen.draft_tokens = spec != "lookup" ? 0 : k > 0 ? int32_t(k) : default_draft_tokens > 0 ? default_draft_tokens : 8;
  // structured output: OpenAI's response_format, or qllm's "grammar" (GBNF, as llama.cpp's server)
  if (auto rf = body.find("response_format"); rf != body.end() && !rf->is_null()) {
    if (!rf->is_object() || !rf->contains("type") || !(*rf)["type"].is_string())
      bad_request("'response_format' must be an object with a string 'type'", "response_format");
    const std::string type = (*rf)["type"].get<std::string>();
    if (type == "json_object") {
      r.gen.constraint = grammar::json_object();
    } else if (type == "json_schema") {
      const auto js = rf->find("json_schema");
      if (js == rf->end() || !js->is_object() || !js->contains("schema"))
        bad_request("'response_format.json_schema.schema' is required", "response_format");
      try {
        r.gen.constraint = grammar::from_json_schema(g.schema_text.empty() ? (*js)["schema"].dump() : g.schema_text);
      } catch (const error& e) {
        bad_request(e.what(), "response_format");
      }
    } else if (type != "text") {
      bad_request("'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"", "response_format");
    }
  }
  if (auto gr = body.find("grammar"); gr != body.end() && !gr->is_null()) {
    if (r.gen.constraint) bad_request("'grammar' and a JSON 'response_format' cannot both be given", "grammar");
    if (!gr->is_string()) bad_request("'grammar' must be a string (GBNF)", "grammar");
    try {
      r.gen.constraint = grammar::from_gbnf(gr->get<std::string>());
    } catch (const error& e) {
      bad_request(e.what(), "grammar");
    }
  }
}

json fit_report(const prompt_fit& f, context_policy p) {
  return json{{"context_policy", to_string(p)},
              {"prompt_tokens_given", f.n_tokens},
              {"dropped_tokens", f.n_dropped},
              {"dropped_range", json::array({f.drop_begin, f.drop_end})}};
}

const char* finish_name(finish_reason f) {
  switch (f) {
    case finish_reason::eos:
    case finish_reason::stop_string: return "stop";
    case finish_reason::max_tokens:
    case finish_reason::context_full: return "length";
    case finish_reason::cancelled: return "cancelled";
  }
  return "stop";
}

}  // namespace qllm::serve
