// qllm serve: /v1/completions and /v1/chat/completions.
//
// A completion is submitted to the engine, whose thread pushes the generated text into the
// request's channel; the HTTP thread waits on that channel (non-streamed) or writes it out as
// server-sent events (streamed), and cancels the engine request when the client goes away or the
// request's time is up.
#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qllm/error.hpp"
#include "qllm/session.hpp"
#include "serve/server_impl.hpp"

namespace qllm::serve::detail {

// One completion from its submission to its end: shared by the engine's callbacks, the HTTP
// thread and the stream writer.
struct completion_call {
  std::shared_ptr<channel> ch = std::make_shared<channel>();
  engine* eng = nullptr;
  uint64_t id = 0;
  bool chat = false;
  std::string rid;
  std::time_t created = 0;
  std::string model_name;
  json qllm_ext;  // what the context policy did to the prompt
  int64_t n_prompt = 0;
  bool speculating = false;
  bool include_usage = false;
  clock::time_point t_start, deadline;
  int sock = -1;

  json usage(const engine_result& r) const {
    const int64_t c = int64_t(r.gen.tokens.size());
    json u{{"prompt_tokens", n_prompt}, {"completion_tokens", c}, {"total_tokens", n_prompt + c}};
    if (speculating)  // OpenAI's fields for predicted tokens: the drafts kept and rejected
      u["completion_tokens_details"] = {{"accepted_prediction_tokens", r.gen.spec.accepted},
                                        {"rejected_prediction_tokens", r.gen.spec.drafted - r.gen.spec.accepted}};
    return u;
  }

  // one server-sent event's object: text (or the role, first), or the finish reason
  json chunk(const std::string& text, const json& finish) const {
    json choice = {{"index", 0}, {"finish_reason", finish}};
    if (chat) {
      choice["delta"] = text.empty() && finish.is_null() ? json{{"role", "assistant"}, {"content", ""}}
                                                          : (finish.is_null() ? json{{"content", text}} : json::object());
    } else {
      choice["text"] = text;
      choice["logprobs"] = nullptr;
    }
    return json{{"id", rid},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model_name},
                {"choices", json::array({choice})}};
  }
};

void server::finished(const engine_result& r, clock::time_point t_start) {
  prompt_tokens_ += uint64_t(std::max<int64_t>(0, r.gen.timings.n_prompt));
  generated_tokens_ += uint64_t(r.gen.tokens.size());
  if (r.first_token_seconds > 0) met_.ttft.observe(r.first_token_seconds);
  met_.duration.observe(std::chrono::duration<double>(clock::now() - t_start).count());
}

// a stream whose client left before its end: its tokens count, and it counts as 499
void server::abandoned(const engine_result& r, clock::time_point t_start) {
  finished(r, t_start);
  met_.count(499);
}

std::vector<int32_t> server::chat_prompt(const json& body, gen_settings& g) {
  check_fields(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                      "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty", "penalty_last_n", "seed",
                      "stop", "logit_bias", "n", "stream", "context_policy", "n_keep", "speculation", "draft_tokens",
                      "response_format", "grammar"});
  parse_common(body, *model_, g, -1, o_.draft_tokens);
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty())
    bad_request("'messages' must be a non-empty array", "messages");
  std::vector<chat_message> dialog;
  for (const auto& msg : *it) {
    if (!msg.is_object()) bad_request("each message must be an object with 'role' and 'content'", "messages");
    const auto role = msg.find("role");
    const auto content = msg.find("content");
    if (role == msg.end() || !role->is_string()) bad_request("a message has no 'role' string", "messages");
    if (content == msg.end()) bad_request("a message has no 'content'", "messages");
    std::string text;
    if (content->is_string()) {
      text = content->get<std::string>();
    } else if (content->is_array()) {  // content parts: text only
      for (const auto& part : *content) {
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string() || part["type"] != "text" ||
            !part.contains("text") || !part["text"].is_string())
          bad_request("only text content parts are supported", "messages");
        text += part["text"].get<std::string>();
      }
    } else {
      bad_request("'content' must be a string", "messages");
    }
    dialog.push_back({role->get<std::string>(), std::move(text)});
  }
  if (!dialog.empty() && dialog.front().role == "system") g.req.n_keep = std::max<int64_t>(g.req.n_keep, 1);
  try {
    auto prompt = chat_tokens(*tok_, dialog);
    if (!dialog.empty() && dialog.front().role == "system" && !body.contains("n_keep"))
      g.req.n_keep = chat_system_tokens(*tok_, dialog.front().content);
    return prompt;
  } catch (const error& e) {
    bad_request(e.what(), "messages");
  }
}

std::vector<int32_t> server::text_prompt(const json& body, gen_settings& g) {
  check_fields(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                      "frequency_penalty", "repeat_penalty", "penalty_last_n", "seed", "stop", "logit_bias", "n",
                      "stream", "context_policy", "n_keep", "speculation", "draft_tokens", "response_format",
                      "grammar"});
  parse_common(body, *model_, g, 16, o_.draft_tokens);
  auto it = body.find("prompt");
  if (it == body.end()) bad_request("'prompt' is required", "prompt");
  std::vector<int32_t> prompt;
  std::string text;
  if (it->is_string()) {
    text = it->get<std::string>();
  } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    text = (*it)[0].get<std::string>();
  } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
    for (const auto& x : *it) {  // token ids
      if (!x.is_number_integer()) bad_request("'prompt' token arrays must hold integers only", "prompt");
      const int64_t id = x.get<int64_t>();
      if (id < 0 || id >= model_->config().n_vocab)
        bad_request("'prompt' token " + std::to_string(id) + " is outside the vocabulary", "prompt");
      prompt.push_back(int32_t(id));
    }
    return prompt;
  } else {
    bad_request("'prompt' must be a string (or an array of one string, or of token ids)", "prompt");
  }
  try {
    return tok_->encode(text, tok_->add_bos());
  } catch (const error& e) {
    bad_request(e.what(), "prompt");
  }
}

void server::completion(const std::string& req_body, httplib::Response& res, bool chat) {
  const auto t_start = clock::now();
  auto flight = std::make_shared<in_flight_guard>(in_flight_);
  if (draining_) throw http_error{503, "the server is shutting down", "server_error", "shutting_down", ""};
  // nlohmann's parser stops at a NUL byte: what follows one would be ignored, not refused
  json body = req_body.find('\0') == std::string::npos ? json::parse(req_body, nullptr, false) : json(json::value_t::discarded);
  if (body.is_discarded()) bad_request("the body is not valid JSON");
  if (!body.is_object()) bad_request("the body must be a JSON object");
  gen_settings g;
  if (const auto rf = body.find("response_format"); rf != body.end() && rf->is_object() && rf->contains("json_schema")) {
    const auto ordered = nlohmann::ordered_json::parse(req_body, nullptr, false);
    const auto& js = ordered["response_format"]["json_schema"];
    if (js.is_object() && js.contains("schema")) g.schema_text = js["schema"].dump();
  }
  std::vector<int32_t> prompt = chat ? chat_prompt(body, g) : text_prompt(body, g);
  if (auto it = body.find("model"); it != body.end() && !it->is_null() && !it->is_string())
    bad_request("'model' must be a string", "model");
  // an operator's limit (--max-prompt-tokens); the window itself is the engine's fit, whose
  // message is qllm run's
  const int64_t limit = o_.max_prompt_tokens;
  if (limit > 0 && int64_t(prompt.size()) > limit)
    throw http_error{400,
                     "the prompt has " + std::to_string(prompt.size()) + " tokens, " +
                         std::to_string(int64_t(prompt.size()) - limit) + " too many for this server's limit of " +
                         std::to_string(limit),
                     "invalid_request_error", "context_length_exceeded", chat ? "messages" : "prompt"};
  if (g.req.gen.max_tokens >= engine_->n_ctx())
    bad_request("'max_tokens' " + std::to_string(g.req.gen.max_tokens) + " leaves no room for a prompt in the window of " +
                    std::to_string(engine_->n_ctx()) + " tokens",
                "max_tokens");

  auto call = std::make_shared<completion_call>();
  call->eng = engine_.get();
  call->chat = chat;
  call->model_name = name_;
  call->speculating = g.req.gen.draft_tokens > 0;
  call->include_usage = g.include_usage;
  call->t_start = t_start;
  call->deadline =
      t_start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o_.request_timeout));
  call->sock = current_conn() ? current_conn()->socket() : -1;

  auto ch = call->ch;
  const bool strip_space = chat;  // the answer's first piece carries the template's space
  auto first_piece = std::make_shared<bool>(true);
  metrics* met = &met_;
  g.req.on_token = [ch, strip_space, first_piece, met](std::string_view text, int32_t tok) {
    const auto now = clock::now();
    std::string piece(text);
    if (strip_space && *first_piece && !piece.empty()) {
      if (piece[0] == ' ') piece.erase(0, 1);
      *first_piece = false;
    }
    std::lock_guard<std::mutex> lk(ch->mu);
    if (tok >= 0) {
      if (ch->any_token) met->itl.observe(std::chrono::duration<double>(now - ch->last_token).count());
      ch->any_token = true;
      ch->last_token = now;
    }
    if (!piece.empty()) ch->pieces.push_back(std::move(piece));
    ch->cv.notify_all();
    return true;
  };
  // the server outlives the engine, whose thread calls this
  g.req.on_done = [this, ch, t_start](const engine_result& r) {
    bool account = false;
    {
      std::lock_guard<std::mutex> lk(ch->mu);
      ch->result = r;
      ch->done = true;
      account = ch->abandoned && !ch->accounted;
      if (account) ch->accounted = true;
      ch->cv.notify_all();
    }
    if (account) abandoned(r, t_start);
  };
  const context_policy policy = g.req.policy;
  const int64_t n_prompt_given = int64_t(prompt.size());
  g.req.prompt = std::move(prompt);
  engine::submitted sub;
  try {
    sub = engine_->submit(std::move(g.req));
  } catch (const error& e) {
    switch (e.code()) {
      case errc::context_overflow:
        throw http_error{400, e.what(), "invalid_request_error", "context_length_exceeded", chat ? "messages" : "prompt"};
      case errc::busy:
        if (draining_) throw http_error{503, e.what(), "server_error", "shutting_down", ""};
        throw http_error{429, std::string(e.what()) + "; retry later", "rate_limit_error", "overloaded", ""};
      case errc::invalid_argument:
      case errc::unsupported: bad_request(e.what());
      default: throw;
    }
  }
  call->n_prompt = n_prompt_given - sub.fit.n_dropped;
  call->id = sub.id;
  call->rid = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  call->created = std::time(nullptr);
  call->qllm_ext = fit_report(sub.fit, policy);
  if (g.stream)
    reply_stream(call, std::move(flight), res);
  else
    reply_whole(call, res);
}

void server::reply_whole(const std::shared_ptr<completion_call>& call, httplib::Response& res) {
  channel& ch = *call->ch;
  engine_result r;
  bool timed_out = false, gone = false;
  {
    std::unique_lock<std::mutex> lk(ch.mu);
    while (!ch.done) {
      ch.cv.wait_for(lk, std::chrono::milliseconds(100));
      if (ch.done) break;
      if (!gone && !timed_out) {
        lk.unlock();
        if (client_gone(call->sock)) gone = true;
        else if (clock::now() > call->deadline) timed_out = true;
        if (gone || timed_out) call->eng->cancel(call->id);
        lk.lock();
      }
    }
    r = ch.result;
  }
  finished(r, call->t_start);
  if (gone) {
    met_.count(499);  // the client closed the connection; nothing reaches it
    res.status = 499;
    res.set_content("{}", "application/json");
    return;
  }
  if (timed_out) throw http_error{504, "the request took longer than the server's limit", "server_error", "timeout", ""};
  if (!r.error.empty()) throw http_error{500, r.error, "server_error", "", ""};
  if (r.gen.finish == finish_reason::cancelled)  // only a shutdown cancels what the caller did not
    throw http_error{503, "the server is shutting down; the request was stopped", "server_error", "shutting_down", ""};
  std::string text = r.gen.text;
  if (call->chat && !text.empty() && text[0] == ' ') text.erase(0, 1);
  json choice = {{"index", 0}, {"finish_reason", finish_name(r.gen.finish)}};
  if (call->chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  answer(res, 200,
         json{{"id", call->rid},
              {"object", call->chat ? "chat.completion" : "text_completion"},
              {"created", call->created},
              {"model", call->model_name},
              {"choices", json::array({choice})},
              {"usage", call->usage(r)},
              {"qllm", call->qllm_ext}});
}

// Server-sent events, written by httplib's thread as the engine produces them; counted when the
// stream ends (200, or 499 when the client leaves first).
void server::reply_stream(const std::shared_ptr<completion_call>& call, std::shared_ptr<in_flight_guard> flight,
                          httplib::Response& res) {
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // nginx: pass events through at once
  auto state = std::make_shared<int>(0);      // 0: nothing sent, 1: role sent, 2: finished
  auto late = std::make_shared<bool>(false);  // past --timeout: cancelled, the stream to be ended
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, call, state, late](std::size_t, httplib::DataSink& sink) {
        channel& ch = *call->ch;
        auto send = [&](const json& j) {
          const std::string ev = "data: " + dump(j) + "\n\n";
          return sink.write(ev.data(), ev.size());
        };
        if (*state == 0) {
          json first = call->chunk("", nullptr);
          first["qllm"] = call->qllm_ext;
          if (!call->chat) first["choices"][0]["text"] = "";
          *state = 1;
          if (!send(first)) {
            call->eng->cancel(call->id);
            return false;
          }
        }
        std::deque<std::string> pieces;
        bool done = false;
        engine_result r;
        {
          std::unique_lock<std::mutex> lk(ch.mu);
          if (ch.pieces.empty() && !ch.done) ch.cv.wait_for(lk, std::chrono::milliseconds(100));
          pieces.swap(ch.pieces);
          done = ch.done;
          if (done) r = ch.result;
        }
        for (const auto& p : pieces) {
          if (!send(call->chunk(p, nullptr))) {
            call->eng->cancel(call->id);
            return false;
          }
        }
        if (!done) {
          if (client_gone(call->sock)) {
            call->eng->cancel(call->id);
            return false;
          }
          if (!*late && clock::now() > call->deadline) {  // stop it, then end the stream properly
            *late = true;
            call->eng->cancel(call->id);
          }
          return true;
        }
        bool account;
        {
          std::lock_guard<std::mutex> lk(ch.mu);
          account = !ch.accounted;
          ch.accounted = true;
        }
        if (account) {
          finished(r, call->t_start);
          met_.count(200);
        }
        *state = 2;
        if (!r.error.empty() || r.gen.finish == finish_reason::cancelled) {
          const std::string msg = !r.error.empty() ? r.error
                                  : *late         ? "the request took longer than the server's limit"
                                                  : "the server is shutting down; the request was stopped";
          if (!send(json{{"error", {{"message", msg}, {"type", "server_error"}}}})) return false;
        } else {
          json last = call->chunk("", finish_name(r.gen.finish));
          if (call->chat) last["choices"][0]["delta"] = json::object();
          if (!send(last)) return false;
          if (call->include_usage) {  // as OpenAI: one last chunk with no choices, only when asked for
            json u = call->chunk("", nullptr);
            u["choices"] = json::array();
            u["usage"] = call->usage(r);
            if (!send(u)) return false;
          }
        }
        static const char kDone[] = "data: [DONE]\n\n";
        if (!sink.write(kDone, sizeof(kDone) - 1)) return false;
        sink.done();
        return true;
      },
      [this, call, flight](bool success) {
        if (success) return;
        // the client went away before the end: what was generated is counted once the engine
        // hands back the result (now, if it already has)
        channel& ch = *call->ch;
        bool account = false;
        engine_result r;
        {
          std::lock_guard<std::mutex> lk(ch.mu);
          ch.abandoned = true;
          if (ch.done && !ch.accounted) {
            ch.accounted = account = true;
            r = ch.result;
          }
        }
        if (account) abandoned(r, call->t_start);
        call->eng->cancel(call->id);
      });
}

}  // namespace qllm::serve::detail
