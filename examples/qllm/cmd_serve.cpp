// qllm serve: the OpenAI-compatible server (lib/serve), when qllm was built with cpp-httplib.
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "qllm/error.hpp"
#ifdef QLLM_HAVE_SERVE
#include "serve/server.hpp"
#endif

namespace qllm::cli {

namespace {
[[maybe_unused]] const char* kServeHelp =
    "usage: qllm serve [-m MODEL] [options]\n"
    "An OpenAI-compatible HTTP server: POST /v1/completions, /v1/chat/completions (stream: true\n"
    "for server-sent events), /v1/embeddings; GET /v1/models, /health, /metrics (Prometheus).\n"
    "Requests share the model through continuous batching (docs/deploy.md).\n"
    "  -m, --model FILE        GGUF model (default: the shipped model)\n"
    "      --model-name NAME   id in /v1/models and responses (default: the file name)\n"
    "      --host ADDR         address to listen on (default 127.0.0.1: this machine only)\n"
    "      --port N            port (default 8080; 0: any free port, printed)\n"
    "  -np, --parallel N       slots: requests decoded together (default 4)\n"
    "  -c, --ctx-size N        window of each slot in tokens (default: the model's training context)\n"
    "  -b, --batch-size N      tokens per forward pass, all slots together (default 512)\n"
    "  -t, --threads N         threads (default: the cores this process may use)\n"
    "      --isa NAME          kernel table (default: the best for this CPU)\n"
    "      --api-key-file F    require 'Authorization: Bearer KEY' on /v1 (first line of F)\n"
    "      --max-queue N       requests waiting for a slot before 429 (default 64)\n"
    "      --prompt-chunk N    prompt tokens per step while others decode (default 64)\n"
    "      --spec lookup|off   speculative decoding by prompt lookup for requests that do not set\n"
    "                          \"speculation\" (default off); the same text, fewer passes\n"
    "      --draft-tokens N    most drafts per pass (default 8; a request's \"draft_tokens\")\n"
    "      --max-body BYTES    request body limit (default 1048576; larger: 413)\n"
    "      --max-prompt-tokens N  prompt limit (default: the window)\n"
    "      --timeout S         seconds a request may take (default 600)\n"
    "      --read-timeout S    seconds to wait on a slow client (default 30)\n"
    "      --shutdown-grace S  on SIGTERM, seconds running requests may still take (default 30)\n"
    "      --http-threads N    connection threads (default: parallel + max-queue + 8)\n";
}  // namespace

int cmd_serve(int argc, char** argv) {
#ifndef QLLM_HAVE_SERVE
  (void)argc;
  (void)argv;
  throw error(errc::unsupported, "this qllm was built without cpp-httplib (libcpp-httplib-dev): no server");
#else
  serve::options o;
  std::string model;
  bool spec = false;
  int32_t draft_tokens = 8;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (is_help(a)) return print_help(kServeHelp);
    if (a == "-m" || a == "--model") model = next_value(argc, argv, i);
    else if (a == "--model-name") o.model_name = next_value(argc, argv, i);
    else if (a == "--host") o.host = next_value(argc, argv, i);
    else if (a == "--port") o.port = int(parse_int(a, next_value(argc, argv, i), 0, 65535));
    else if (a == "-np" || a == "--parallel") o.parallel = int(parse_int(a, next_value(argc, argv, i), 1, 256));
    else if (a == "-c" || a == "--ctx-size") o.n_ctx = parse_int(a, next_value(argc, argv, i), 0, int64_t(1) << 24);
    else if (a == "-b" || a == "--batch-size") o.n_batch = parse_int(a, next_value(argc, argv, i), 1, 1 << 16);
    else if (a == "-t" || a == "--threads") o.n_threads = int(parse_int(a, next_value(argc, argv, i), 0, 4096));
    else if (a == "--isa") o.isa = next_value(argc, argv, i);
    else if (a == "--api-key-file") o.api_key_file = next_value(argc, argv, i);
    else if (a == "--max-queue") o.max_queue = parse_int(a, next_value(argc, argv, i), 0, 100000);
    else if (a == "--prompt-chunk") o.prompt_chunk = parse_int(a, next_value(argc, argv, i), 1, 1 << 16);
    else if (a == "--spec") {
      const std::string v = next_value(argc, argv, i);
      if (v != "lookup" && v != "off") throw error(errc::invalid_argument, "--spec: '" + v + "' is not lookup or off (the server has no draft model)");
      spec = v == "lookup";
    } else if (a == "--draft-tokens") draft_tokens = int32_t(parse_int(a, next_value(argc, argv, i), 1, 64));
    else if (a == "--max-body") o.max_body = parse_int(a, next_value(argc, argv, i), 1024, int64_t(1) << 30);
    else if (a == "--max-prompt-tokens") o.max_prompt_tokens = parse_int(a, next_value(argc, argv, i), 0, int64_t(1) << 24);
    else if (a == "--timeout") o.request_timeout = parse_float(a, next_value(argc, argv, i), 0.001, 1e7);
    else if (a == "--read-timeout") o.read_timeout = int(parse_int(a, next_value(argc, argv, i), 1, 3600));
    else if (a == "--shutdown-grace") o.shutdown_grace = parse_float(a, next_value(argc, argv, i), 0, 1e6);
    else if (a == "--http-threads") o.http_threads = int(parse_int(a, next_value(argc, argv, i), 1, 4096));
    else throw error(errc::invalid_argument, "unknown option '" + a + "' (try 'qllm serve --help')");
  }
  o.draft_tokens = spec ? draft_tokens : 0;
  o.model_path = model_or_default(model, "qllm serve [-m MODEL] [options]");
  return serve::run(o);
#endif
}

}  // namespace qllm::cli
