// capi/qllm.h included from C++ with strict warnings: it must compile clean and link.
#include "qllm.h"

int main() { return qllm_version() == QLLM_VERSION_NUMBER ? 0 : 1; }
