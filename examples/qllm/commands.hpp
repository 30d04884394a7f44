// Subcommands of the qllm command-line tool.
#pragma once

namespace qllm::cli {

// Each returns the process exit code; argv[0] is the subcommand name.
int cmd_info(int argc, char** argv);
int cmd_gen_random(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_embed(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_quantize(int argc, char** argv);
int cmd_rag(int argc, char** argv);
int cmd_serve(int argc, char** argv);

}  // namespace qllm::cli
