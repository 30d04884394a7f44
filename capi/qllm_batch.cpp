// The C ABI of multi-sequence batches (since 0.6). Every entry point catches everything.
#include "capi_internal.hpp"

struct qllm_batch {
  std::shared_ptr<const qllm::model> m;
  qllm::batch_context b;
  std::vector<qllm::batch_context::entry> entries;  // reused between evals
  qllm_batch(std::shared_ptr<const qllm::model> mp, const qllm::context_params& p, int n_seq)
      : m(mp), b(std::move(mp), p, n_seq) {}
};

namespace qllm_capi {

#define QLLM_END(T, f) (offsetof(T, f) + sizeof(T::f))
template <>
inline bool field_boundary<qllm_batch_params>(std::size_t s) {
  using T = qllm_batch_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, n_seq) || s == QLLM_END(T, n_ctx) ||
         s == QLLM_END(T, n_batch) || s == QLLM_END(T, n_threads) || s == QLLM_END(T, kv_type);
}
#undef QLLM_END

namespace {
qllm_batch_params batch_defaults() {
  const qllm::context_params d;
  qllm_batch_params p{};
  p.struct_size = sizeof p;
  p.n_seq = 4;
  p.n_ctx = 0;
  p.n_batch = int32_t(d.n_batch);
  p.n_threads = 0;
  p.kv_type = QLLM_KV_F16;
  return p;
}
}  // namespace

}  // namespace qllm_capi

using namespace qllm_capi;

extern "C" {

QLLM_EXPORT qllm_status qllm_batch_params_init(qllm_batch_params* p, size_t struct_size) {
  return guarded("qllm_batch_params_init", [&] { init_struct(p, struct_size, batch_defaults(), "qllm_batch_params"); });
}

QLLM_EXPORT qllm_status qllm_batch_create(const qllm_model* model, const qllm_batch_params* params, qllm_batch** out) {
  if (out) *out = nullptr;
  return guarded("qllm_batch_create", [&] {
    need(out, "out");
    need(model, "model");
    const qllm_batch_params p = read_struct(params, batch_defaults(), "qllm_batch_params");
    if (p.n_seq < 1 || p.n_seq > 1024)
      raise(QLLM_ERR_INVALID_ARGUMENT, "n_seq " + std::to_string(p.n_seq) + " is outside [1, 1024]");
    if (p.n_ctx < 0) raise(QLLM_ERR_INVALID_ARGUMENT, "n_ctx must be >= 0");
    if (p.n_batch < 1) raise(QLLM_ERR_INVALID_ARGUMENT, "n_batch must be >= 1");
    check_threads(p.n_threads);
    if (p.kv_type != QLLM_KV_F16 && p.kv_type != QLLM_KV_F32)
      raise(QLLM_ERR_INVALID_ARGUMENT, "kv_type " + std::to_string(p.kv_type) + " is not QLLM_KV_F16 or QLLM_KV_F32");
    qllm::context_params cp;
    cp.n_ctx = p.n_ctx;
    cp.n_batch = p.n_batch;
    cp.n_threads = p.n_threads;
    cp.kv = p.kv_type == QLLM_KV_F16 ? qllm::kv_type::f16 : qllm::kv_type::f32;
    *out = new qllm_batch(model->m, cp, p.n_seq);
  });
}

QLLM_EXPORT void qllm_batch_free(qllm_batch* batch) { delete batch; }

QLLM_EXPORT qllm_status qllm_batch_eval(qllm_batch* batch, const qllm_batch_entry* entries, size_t n_entries) {
  return guarded("qllm_batch_eval", [&] {
    need(batch, "batch");
    if (n_entries == 0) raise(QLLM_ERR_INVALID_ARGUMENT, "no entries");
    need(entries, "entries");
    if (n_entries > std::size_t(batch->b.n_seq()))
      raise(QLLM_ERR_INVALID_ARGUMENT, std::to_string(n_entries) + " entries for " + std::to_string(batch->b.n_seq()) +
                                           " sequences (one entry per sequence)");
    batch->entries.clear();
    for (std::size_t i = 0; i < n_entries; ++i) {
      const qllm_batch_entry& e = entries[i];
      if (e.n_tokens == 0) raise(QLLM_ERR_INVALID_ARGUMENT, "entry " + std::to_string(i) + " has no tokens");
      if (!e.tokens) raise(QLLM_ERR_INVALID_ARGUMENT, "entry " + std::to_string(i) + ": tokens is NULL");
      batch->entries.push_back({e.seq, std::span<const int32_t>(e.tokens, e.n_tokens), e.want_logits != 0});
    }
    batch->b.eval(batch->entries);
  });
}

QLLM_EXPORT qllm_status qllm_batch_logits(const qllm_batch* batch, size_t entry, const float** logits, size_t* n_vocab) {
  return guarded("qllm_batch_logits", [&] {
    need(batch, "batch");
    need(logits, "logits");
    need(n_vocab, "n_vocab");
    const auto l = batch->b.logits(entry);
    *logits = l.data();
    *n_vocab = l.size();
  });
}

QLLM_EXPORT qllm_status qllm_batch_n_past(const qllm_batch* batch, int32_t seq, int64_t* n_past) {
  return guarded("qllm_batch_n_past", [&] {
    need(batch, "batch");
    need(n_past, "n_past");
    *n_past = batch->b.n_past(seq);
  });
}

QLLM_EXPORT qllm_status qllm_batch_truncate(qllm_batch* batch, int32_t seq, int64_t n) {
  return guarded("qllm_batch_truncate", [&] {
    need(batch, "batch");
    batch->b.truncate(seq, n);
  });
}

}  // extern "C"
