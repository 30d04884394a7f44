// The retrieval database: documents, chunks and an FTS5 index in one SQLite file.
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/rag.hpp"
#include "qllm/version.hpp"

namespace qllm::rag {
namespace fs = std::filesystem;

namespace {

constexpr int kFormat = 1;
constexpr int64_t kMaxFileBytes = int64_t(32) << 20;  // larger files are skipped, with the reason

const char* kSchema = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents(
  id INTEGER PRIMARY KEY,
  path TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL,          -- content hash and size
  settings TEXT NOT NULL,      -- chunk size, overlap and vocabulary the chunks were cut with
  n_chunks INTEGER NOT NULL,
  indexed_at INTEGER NOT NULL);
CREATE TABLE chunks(
  id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids in reports stay meaningful
  doc_id INTEGER NOT NULL REFERENCES documents(id),
  seq INTEGER NOT NULL,
  text TEXT NOT NULL,
  n_tokens INTEGER NOT NULL,
  begin_byte INTEGER NOT NULL,
  end_byte INTEGER NOT NULL);
CREATE INDEX chunks_by_doc ON chunks(doc_id, seq);
-- the full-text index of chunks.text; written beside every insert and delete of chunks (no
-- triggers: with an untrusted schema SQLite refuses virtual tables in triggers)
CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='porter unicode61');
)sql";

uint64_t fnv1a(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
  return b;
}

// Two independent 64-bit hashes and the size: a changed file is never taken for unchanged.
std::string content_hash(std::string_view s) {
  return hex(fnv1a(s)) + hex(fnv1a(s, 0x84222325cbf29ce4ull ^ s.size())) + "-" + std::to_string(s.size());
}

std::string vocab_fingerprint(const tokenizer& tok) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& p : tok.vocab().pieces) h = fnv1a(p, fnv1a("\x1f", h));
  return hex(h);
}

// One prepared statement; finalized on scope exit.
class stmt {
 public:
  stmt(sqlite3* db, const std::string& path, const char* sql) : db_(db), path_(&path) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) fail("prepare");
  }
  ~stmt() { sqlite3_finalize(s_); }
  stmt(const stmt&) = delete;
  stmt& operator=(const stmt&) = delete;
  stmt& bind(int i, int64_t v) {
    if (sqlite3_bind_int64(s_, i, v) != SQLITE_OK) fail("bind");
    return *this;
  }
  stmt& bind(int i, std::string_view v) {
    if (sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT) != SQLITE_OK) fail("bind");
    return *this;
  }
  bool step() {  // true: a row
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("step");
  }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  void run() {
    while (step()) {
    }
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  double f64(int c) const { return sqlite3_column_double(s_, c); }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string(p, std::size_t(sqlite3_column_bytes(s_, c))) : std::string();
  }

 private:
  [[noreturn]] void fail(const char* what) const;
  sqlite3* db_;
  const std::string* path_;
  sqlite3_stmt* s_ = nullptr;
};

errc code_of(int rc) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_FORMAT:
    case SQLITE_SCHEMA:
      return errc::bad_format;
    case SQLITE_NOMEM:
      return errc::out_of_memory;
    default:
      return errc::io;
  }
}

[[noreturn]] void fail_db(sqlite3* db, const std::string& path, const std::string& what) {
  const int rc = sqlite3_extended_errcode(db);
  throw error(code_of(rc), "retrieval database '" + path + "': " + what + ": " + sqlite3_errmsg(db));
}

void stmt::fail(const char* what) const { fail_db(db_, *path_, what); }

void exec(sqlite3* db, const std::string& path, const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    const std::string m = msg ? msg : "unknown error";
    sqlite3_free(msg);
    const int rc = sqlite3_extended_errcode(db);
    throw error(code_of(rc), "retrieval database '" + path + "': " + m);
  }
}

// Rolls back unless committed (an exception mid-file leaves the previous state of that file).
class transaction {
 public:
  transaction(sqlite3* db, const std::string& path) : db_(db), path_(path) { exec(db, path, "BEGIN IMMEDIATE"); }
  void commit() {
    exec(db_, path_, "COMMIT");
    done_ = true;
  }
  ~transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }

 private:
  sqlite3* db_;
  const std::string& path_;
  bool done_ = false;
};

bool indexable(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".txt" || ext == ".md" || ext == ".markdown";
}

// The file's text, or why it is not indexed.
std::string read_text(const std::string& f, std::string& content) {
  std::error_code ec;
  if (!fs::is_regular_file(f, ec)) return "not a regular file";
  std::ifstream in(f, std::ios::binary);
  if (!in) return "cannot open";
  // at most one byte more than the limit, whatever the size said a moment ago
  content.assign(std::size_t(std::min<uintmax_t>(fs::file_size(f, ec), uintmax_t(kMaxFileBytes) + 1)), '\0');
  if (ec) return "cannot read: " + ec.message();
  in.read(content.data(), std::streamsize(content.size()));
  content.resize(std::size_t(in.gcount()));
  if (in.bad()) return "read error";
  if (int64_t(content.size()) > kMaxFileBytes) return "larger than " + std::to_string(kMaxFileBytes >> 20) + " MiB";
  if (content.find('\0') != std::string::npos) return "binary (a NUL byte)";
  if (const auto bad = utf8::first_invalid(content); bad != std::string::npos)
    return "not UTF-8 text (invalid byte at offset " + std::to_string(bad) + ")";
  return {};
}

// A file's name as stored: absolute, symbolic links resolved (a file reached twice is one document).
std::string stored_path(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(p, ec);
  if (ec) c = fs::absolute(p, ec).lexically_normal();
  return c.string();
}

}  // namespace

struct store::impl {
  std::string path;
  sqlite3* db = nullptr;
  std::mutex mu;
  ~impl() { sqlite3_close_v2(db); }
};

store::store(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
store::~store() = default;
const std::string& store::path() const noexcept { return impl_->path; }

std::unique_ptr<store> store::open(const std::string& path, bool create) {
  if (path.empty()) throw error(errc::invalid_argument, "retrieval database: empty path");
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (!exists && !create)
    throw error(errc::io, "retrieval database '" + path + "' does not exist (qllm rag index creates it)");
  if (exists && !S_ISREG(st.st_mode)) throw error(errc::io, "retrieval database '" + path + "' is not a regular file");
  auto p = std::make_unique<impl>();
  p->path = path;
  const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path.c_str(), &p->db, flags, nullptr);
  if (rc != SQLITE_OK && !create) {  // a file we may only read
    sqlite3_close_v2(p->db);
    p->db = nullptr;
    rc = sqlite3_open_v2(path.c_str(), &p->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  }
  if (rc != SQLITE_OK) {
    const std::string msg = p->db ? sqlite3_errmsg(p->db) : "out of memory";
    throw error(errc::io, "retrieval database '" + path + "': cannot open: " + msg);
  }
  sqlite3_extended_result_codes(p->db, 1);
  // another indexer holds the write lock while it chunks and stores one file: seconds on a slow or
  // emulated CPU, so wait long before answering "database is locked"
  sqlite3_busy_timeout(p->db, 60000);
  sqlite3* db = p->db;
  // A database file may come from anywhere: no schema-defined functions or views run with
  // privileges, and no direct writes to the file's internal structures.
  sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, nullptr);
  sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, nullptr);
  auto table_count = [&](const char* sql) {
    stmt q(db, path, sql);
    return q.step() ? q.i64(0) : 0;
  };
  // Two processes creating one database race for the switch to WAL, which SQLite answers "database
  // is locked" at once rather than through the busy handler (a lock upgrade that could deadlock):
  // the creation is retried for up to the busy timeout.
  for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);;) {
    try {
      // A file that is not SQLite fails here with "file is not a database".
      if (table_count("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'") == 0) {
        if (!create) throw error(errc::bad_format, "'" + path + "' is a SQLite database but not a qllm retrieval database");
        exec(db, path, "PRAGMA journal_mode=WAL");
        // another process may be creating it too: decide under the write lock
        transaction t(db, path);
        if (table_count("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'") == 0) {
          if (table_count("SELECT count(*) FROM sqlite_master") > 0)
            throw error(errc::bad_format, "'" + path + "' is a SQLite database but not a qllm retrieval database");
          exec(db, path, kSchema);
          stmt(db, path, "INSERT INTO meta(key, value) VALUES ('format', ?1)").bind(1, std::to_string(kFormat)).run();
          stmt(db, path, "INSERT INTO meta(key, value) VALUES ('created_by', ?1)").bind(1, std::string("qllm ") + version_string).run();
        }
        t.commit();
      }
      break;
    } catch (const error& e) {
      if (std::string_view(e.what()).find("database is locked") == std::string_view::npos ||
          std::chrono::steady_clock::now() > until)
        throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  std::string format;
  {
    stmt q(db, path, "SELECT value FROM meta WHERE key='format'");
    if (q.step()) format = q.text(0);
  }
  if (format != std::to_string(kFormat))
    throw error(errc::bad_format, "retrieval database '" + path + "' has store format '" + format +
                                      "'; this qllm reads format " + std::to_string(kFormat));
  // every table and index of the schema must be there
  for (const char* name : {"documents", "chunks", "chunks_fts", "chunks_by_doc"}) {
    stmt q(db, path, "SELECT count(*) FROM sqlite_master WHERE name = ?1");
    q.bind(1, std::string_view(name));
    if (!q.step() || q.i64(0) == 0)
      throw error(errc::bad_format, "retrieval database '" + path + "' is damaged: '" + name + "' is missing");
  }
  stmt(db, path, "SELECT id, path, hash, settings, n_chunks FROM documents LIMIT 0").run();
  stmt(db, path, "SELECT id, doc_id, seq, text, n_tokens, begin_byte, end_byte FROM chunks LIMIT 0").run();
  return std::unique_ptr<store>(new store(std::move(p)));
}

index_report store::index(std::span<const std::string> paths, const tokenizer& tok, const chunk_params& cp,
                          const index_progress& progress) {
  // validate the settings before any change
  (void)split(tok, "", cp);
  std::vector<std::string> files;
  index_report r;
  for (const std::string& a : paths) {
    std::error_code ec;
    const auto st = fs::status(a, ec);
    if (ec || !fs::exists(st)) throw error(errc::invalid_argument, "'" + a + "' does not exist");
    if (!fs::is_directory(st)) {
      files.push_back(stored_path(a));
      continue;
    }
    // a folder that changes while it is listed: what could be listed is indexed, the rest reported
    auto it = fs::recursive_directory_iterator(a, fs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code e2;
      if (it->is_regular_file(e2) && indexable(it->path())) files.push_back(stored_path(it->path()));
    }
    if (ec) r.skipped.push_back(a + ": could not list all of it (" + ec.message() + ")");
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());

  const std::string settings = "chunk_tokens=" + std::to_string(cp.max_tokens) + " overlap=" +
                               std::to_string(cp.overlap_tokens) + " vocab=" + vocab_fingerprint(tok);
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3* db = impl_->db;
  const std::string& dbp = impl_->path;
  struct old_doc {
    int64_t id = -1, n_chunks = 0;
    std::string hash, settings;
  };
  auto lookup = [&](const std::string& f) {
    old_doc d;
    stmt q(db, dbp, "SELECT id, hash, settings, n_chunks FROM documents WHERE path = ?1");
    q.bind(1, f);
    if (q.step()) d = {q.i64(0), q.i64(3), q.text(1), q.text(2)};
    return d;
  };
  auto remove_doc = [&](int64_t id) {
    stmt(db, dbp, "INSERT INTO chunks_fts(chunks_fts, rowid, text) SELECT 'delete', id, text FROM chunks WHERE doc_id = ?1")
        .bind(1, id)
        .run();
    stmt(db, dbp, "DELETE FROM chunks WHERE doc_id = ?1").bind(1, id).run();
    stmt(db, dbp, "DELETE FROM documents WHERE id = ?1").bind(1, id).run();
  };
  std::size_t done = 0;
  for (const std::string& f : files) {
    std::string content;
    if (std::string why = read_text(f, content); !why.empty()) {
      r.skipped.push_back(f + ": " + why);
      ++r.files_skipped;
      // what the store holds of it is no longer its content: never answer from a stale version
      if (lookup(f).id >= 0) {
        transaction t(db, dbp);
        const old_doc d = lookup(f);
        if (d.id >= 0) {
          remove_doc(d.id);
          t.commit();
          ++r.files_removed;
          r.chunks_removed += d.n_chunks;
          r.removed.push_back(f + " (now skipped: " + why + ")");
        }
      }
      if (progress) progress(++done, files.size(), f);
      continue;
    }
    const std::string hash = content_hash(content);
    const old_doc before = lookup(f);
    if (before.id >= 0 && before.hash == hash && before.settings == settings) {
      ++r.files_unchanged;
    } else {
      const std::vector<chunk> chunks = split(tok, content, cp);  // before the write transaction
      transaction t(db, dbp);
      // another process may have indexed it meanwhile: decide again under the write lock
      const old_doc d = lookup(f);
      if (d.id >= 0 && d.hash == hash && d.settings == settings) {
        ++r.files_unchanged;
        if (progress) progress(++done, files.size(), f);
        continue;  // rolls back the empty transaction
      }
      if (d.id >= 0) remove_doc(d.id);
      stmt ins_doc(db, dbp, "INSERT INTO documents(path, hash, settings, n_chunks, indexed_at) VALUES (?1, ?2, ?3, ?4, ?5)");
      ins_doc.bind(1, f).bind(2, hash).bind(3, settings).bind(4, int64_t(chunks.size())).bind(5, int64_t(std::time(nullptr)));
      ins_doc.run();
      const int64_t doc_id = sqlite3_last_insert_rowid(db);
      stmt ins(db, dbp, "INSERT INTO chunks(doc_id, seq, text, n_tokens, begin_byte, end_byte) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
      stmt fts(db, dbp, "INSERT INTO chunks_fts(rowid, text) VALUES (?1, ?2)");
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        const chunk& c = chunks[i];
        ins.reset();
        ins.bind(1, doc_id).bind(2, int64_t(i)).bind(3, c.text).bind(4, c.n_tokens).bind(5, c.begin).bind(6, c.end);
        ins.run();
        fts.reset();
        fts.bind(1, sqlite3_last_insert_rowid(db)).bind(2, c.text);
        fts.run();
      }
      t.commit();
      if (d.id >= 0) {
        ++r.files_changed;
        r.chunks_removed += d.n_chunks;
      } else {
        ++r.files_added;
      }
      r.chunks_added += int64_t(chunks.size());
    }
    if (progress) progress(++done, files.size(), f);
  }

  // documents whose file is gone
  std::vector<std::pair<int64_t, std::string>> docs;
  {
    stmt q(db, dbp, "SELECT id, path, n_chunks FROM documents ORDER BY path");
    while (q.step()) {
      std::error_code ec;
      const std::string p = q.text(1);
      if (!fs::exists(p, ec) && !ec) {
        docs.emplace_back(q.i64(0), p);
        r.chunks_removed += q.i64(2);
      }
    }
  }
  for (const auto& [id, p] : docs) {
    transaction t(db, dbp);
    remove_doc(id);
    t.commit();
    ++r.files_removed;
    r.removed.push_back(p);
  }
  return r;
}

std::vector<hit> store::search(std::string_view query, int64_t k) {
  if (k <= 0 || k > 10000) throw error(errc::invalid_argument, "search: k = " + std::to_string(k) + " (1 to 10000)");
  const std::string q = fts_query(query);
  std::vector<hit> out;
  if (q.empty()) return out;
  std::lock_guard<std::mutex> lock(impl_->mu);
  stmt s(impl_->db, impl_->path,
         "SELECT c.id, d.path, c.seq, c.text, c.n_tokens, bm25(chunks_fts) AS score "
         "FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.doc_id "
         "WHERE chunks_fts MATCH ?1 ORDER BY score, c.id LIMIT ?2");
  s.bind(1, q).bind(2, k);
  while (s.step()) out.push_back({s.i64(0), s.text(1), s.i64(2), s.text(3), s.i64(4), -s.f64(5)});
  return out;
}

int64_t store::n_documents() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  stmt q(impl_->db, impl_->path, "SELECT count(*) FROM documents");
  return q.step() ? q.i64(0) : 0;
}

int64_t store::n_chunks() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  stmt q(impl_->db, impl_->path, "SELECT count(*) FROM chunks");
  return q.step() ? q.i64(0) : 0;
}

}  // namespace qllm::rag
