// GGUF reader and writer: round trips, every malformed-header class, >4 GiB offsets, fuzzing.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qllm/gguf.hpp"

using namespace qllm;
using gguf::value;
using gguf::value_type;

namespace {

// Hand-assembles GGUF bytes, so tests can write what the writer refuses to.
struct builder {
  std::vector<uint8_t> b;

  builder& u8(uint8_t v) { return b.push_back(v), *this; }
  builder& u32(uint32_t v) {
    for (int k = 0; k < 4; ++k) b.push_back(uint8_t(v >> (8 * k)));
    return *this;
  }
  builder& u64(uint64_t v) {
    for (int k = 0; k < 8; ++k) b.push_back(uint8_t(v >> (8 * k)));
    return *this;
  }
  builder& str(std::string_view s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  builder& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    return u32(0x46554747).u32(version).u64(n_tensors).u64(n_kv);
  }
  builder& kv(std::string_view key, value_type t) { return str(key).u32(uint32_t(t)); }
  builder& kv_u32(std::string_view key, uint32_t v) { return kv(key, value_type::u32).u32(v); }
  builder& tensor(std::string_view name, std::vector<uint64_t> ne, ggml_type t, uint64_t off) {
    str(name).u32(uint32_t(ne.size()));
    for (uint64_t n : ne) u64(n);
    return u32(uint32_t(t)).u64(off);
  }
  builder& pad(std::size_t a) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
  builder& zeros(std::size_t n) { return b.resize(b.size() + n, 0), *this; }
};

// An exact-size heap copy, so AddressSanitizer sees any read past the end, and the file over it.
struct parsed {
  std::unique_ptr<uint8_t[]> mem;
  gguf::file f;
};

parsed parse(const std::vector<uint8_t>& bytes) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes.size()]);
  if (!bytes.empty()) std::memcpy(copy.get(), bytes.data(), bytes.size());
  auto f = gguf::file::from_memory(copy.get(), bytes.size());
  return {std::move(copy), std::move(f)};
}

// The bad_format message for `bytes`, or "(parsed)" if it is accepted.
std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    parse(bytes);
  } catch (const qllm::error& e) {
    CHECK(e.code() == errc::bad_format);
    return e.what();
  }
  return "(parsed)";
}

void check_rejected(const std::vector<uint8_t>& bytes, std::initializer_list<const char*> words) {
  CHECK_THROWS_AS(parse(bytes), qllm::error);
  const std::string msg = error_of(bytes);
  CAPTURE(msg);
  CHECK(msg.rfind("gguf: ", 0) == 0);
  for (const char* w : words)
    CHECK_MESSAGE(msg.find(w) != std::string::npos, "missing: " << std::string(w));
}

std::vector<uint8_t> random_bytes(std::size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = uint8_t(rng());
  return v;
}

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() /
          ("qllm_test_gguf_" + std::to_string(getpid()) + "_" + name))
      .string();
}

value scalar_u(value_type t, uint64_t u) {
  value v = value::scalar(t);
  v.u = u;
  return v;
}
value scalar_i(value_type t, int64_t i) {
  value v = value::scalar(t);
  v.i = i;
  return v;
}
value array_of(value_type elem) { return value::array(elem); }

struct tensor_spec {
  std::string name;
  ggml_type type;
  std::vector<int64_t> ne;
  std::vector<uint8_t> data;
};

std::vector<tensor_spec> sample_tensors() {
  std::vector<tensor_spec> ts = {
      {"f32.vec", ggml_type::f32, {7}, {}},          {"f32.mat", ggml_type::f32, {5, 3}, {}},
      {"f16.mat", ggml_type::f16, {16, 4}, {}},      {"bf16.vec", ggml_type::bf16, {33}, {}},
      {"q8_0.mat", ggml_type::q8_0, {64, 3}, {}},    {"q4_0.vec", ggml_type::q4_0, {32}, {}},
      {"q4_0.3d", ggml_type::q4_0, {128, 2, 2}, {}}, {"q6_k.mat", ggml_type::q6_k, {256, 2}, {}},
  };
  uint32_t seed = 1;
  for (auto& t : ts) t.data = random_bytes(gguf::tensor_bytes(t.type, t.ne), seed++);
  return ts;
}

// Every metadata value type, keyed by what it is, in insertion order.
std::vector<std::pair<std::string, value>> sample_metadata() {
  std::vector<std::pair<std::string, value>> m;
  m.emplace_back("t.u8", scalar_u(value_type::u8, 200));
  m.emplace_back("t.i8", scalar_i(value_type::i8, -100));
  m.emplace_back("t.u16", scalar_u(value_type::u16, 65535));
  m.emplace_back("t.i16", scalar_i(value_type::i16, -32768));
  m.emplace_back("t.u32", scalar_u(value_type::u32, 4000000000u));
  m.emplace_back("t.i32", scalar_i(value_type::i32, -2000000000));
  value f32;
  f32.type = value_type::f32;
  f32.f = 1e-5f;
  m.emplace_back("t.f32", f32);
  m.emplace_back("t.bool", scalar_u(value_type::boolean, 1));
  value s;
  s.type = value_type::string;
  s.s = std::string("llama \xe2\x96\x81 with a \0 NUL", 22);
  m.emplace_back("t.string", s);
  m.emplace_back("t.u64", scalar_u(value_type::u64, 0xfedcba9876543210ull));
  m.emplace_back("t.i64", scalar_i(value_type::i64, INT64_MIN));
  value f64;
  f64.type = value_type::f64;
  f64.f = 3.141592653589793;
  m.emplace_back("t.f64", f64);
  value tokens = array_of(value_type::string);
  for (int k = 0; k < 3000; ++k) tokens.strings.push_back(k % 97 ? "tok" + std::to_string(k) : "");
  m.emplace_back("t.arr.string", tokens);
  value scores = array_of(value_type::f32);
  for (int k = 0; k < 3000; ++k) scores.floats.push_back(float(-k) * 0.25f);
  m.emplace_back("t.arr.f32", scores);
  value types = array_of(value_type::i32);
  for (int k = 0; k < 500; ++k) types.ints.push_back(k % 6 - 3);
  m.emplace_back("t.arr.i32", types);
  value bools = array_of(value_type::boolean);
  bools.uints = {1, 0, 0, 1};
  m.emplace_back("t.arr.bool", bools);
  value u8s = array_of(value_type::u8);
  u8s.uints = {0, 1, 255};
  m.emplace_back("t.arr.u8", u8s);
  value f64s = array_of(value_type::f64);
  f64s.floats = {0.1, -1e300};
  m.emplace_back("t.arr.f64", f64s);
  value nested = array_of(value_type::array);
  for (int k = 0; k < 3; ++k) {
    value inner = array_of(value_type::i64);
    for (int j = 0; j <= k; ++j) inner.ints.push_back(j * 1000000000000ll);
    nested.arrays.push_back(inner);
  }
  m.emplace_back("t.arr.arr", nested);
  m.emplace_back("t.arr.empty", array_of(value_type::string));
  return m;
}

gguf::writer sample_writer(uint32_t alignment) {
  gguf::writer w;
  w.set_string("general.architecture", "llama");
  w.set_alignment(alignment);
  for (auto& [k, v] : sample_metadata()) w.set(k, v);
  const auto ts = sample_tensors();
  for (std::size_t k = 0; k < ts.size(); ++k) {
    const auto& t = ts[k];
    if (k % 2 == 0)  // half copied, half filled at write time
      w.add_tensor(t.name, t.type, t.ne, t.data.data(), t.data.size());
    else
      w.add_tensor_fn(t.name, t.type, t.ne, [d = t.data](uint8_t* dst, std::size_t n) {
        REQUIRE(n == d.size());
        std::memcpy(dst, d.data(), n);
      });
  }
  return w;
}

void check_sample(const gguf::file& f, uint32_t alignment) {
  CHECK(f.version() == 3);
  CHECK(f.alignment() == alignment);
  const auto meta = sample_metadata();
  REQUIRE(f.metadata().size() == meta.size() + 2);
  CHECK(f.metadata()[0].first == "general.architecture");
  CHECK(f.metadata()[1].first == "general.alignment");
  for (std::size_t k = 0; k < meta.size(); ++k) {
    CAPTURE(meta[k].first);
    CHECK(f.metadata()[k + 2].first == meta[k].first);
    CHECK(f.metadata()[k + 2].second == meta[k].second);
    REQUIRE(f.find(meta[k].first) != nullptr);
    CHECK(*f.find(meta[k].first) == meta[k].second);
  }
  CHECK(f.get_string("general.architecture") == "llama");
  CHECK(f.get_uint("general.alignment") == alignment);
  CHECK(f.get_array_string("t.arr.string").size() == 3000);
  CHECK(f.get_array_string("t.arr.string")[1234] == "tok1234");
  CHECK(f.get_array_float("t.arr.f32")[4] == -1.0);
  CHECK(f.get_array_int("t.arr.i32")[0] == -3);
  CHECK(f.get_array_int("t.arr.u8")[2] == 255);

  const auto ts = sample_tensors();
  REQUIRE(f.tensors().size() == ts.size());
  for (std::size_t k = 0; k < ts.size(); ++k) {
    const auto& t = f.tensors()[k];
    CAPTURE(ts[k].name);
    CHECK(t.name == ts[k].name);
    CHECK(t.type == ts[k].type);
    CHECK(t.ne == ts[k].ne);
    CHECK(t.bytes == ts[k].data.size());
    CHECK(t.offset % alignment == 0);
    CHECK(f.find_tensor(ts[k].name) == &t);
    CHECK(f.tensor_data(t) == f.data_section() + t.offset);
    CHECK(std::memcmp(f.tensor_data(t), ts[k].data.data(), ts[k].data.size()) == 0);
  }
  CHECK(f.find_tensor("absent") == nullptr);
}

}  // namespace

TEST_CASE("gguf: type table") {
  using gguf::type_block_bytes;
  using gguf::type_block_elems;
  const struct {
    ggml_type t;
    int64_t e;
    std::size_t b;
    const char* name;
  } want[] = {
      {ggml_type::f32, 1, 4, "f32"},       {ggml_type::f16, 1, 2, "f16"},
      {ggml_type::bf16, 1, 2, "bf16"},     {ggml_type::q4_0, 32, 18, "q4_0"},
      {ggml_type::q4_1, 32, 20, "q4_1"},   {ggml_type::q5_0, 32, 22, "q5_0"},
      {ggml_type::q5_1, 32, 24, "q5_1"},   {ggml_type::q8_0, 32, 34, "q8_0"},
      {ggml_type::q8_1, 32, 36, "q8_1"},   {ggml_type::q2_k, 256, 84, "q2_k"},
      {ggml_type::q3_k, 256, 110, "q3_k"}, {ggml_type::q4_k, 256, 144, "q4_k"},
      {ggml_type::q5_k, 256, 176, "q5_k"}, {ggml_type::q6_k, 256, 210, "q6_k"},
      {ggml_type::q8_k, 256, 292, "q8_k"},
  };
  for (const auto& w : want) {
    CAPTURE(w.name);
    CHECK(gguf::type_known(uint32_t(w.t)));
    CHECK(type_block_elems(w.t) == w.e);
    CHECK(type_block_bytes(w.t) == w.b);
    CHECK(std::string(gguf::type_name(w.t)) == w.name);
  }
  CHECK(type_block_bytes(ggml_type::q4_0) == sizeof(block_q4_0));
  CHECK(type_block_bytes(ggml_type::q8_0) == sizeof(block_q8_0));
  CHECK_FALSE(gguf::type_known(4));  // Q4_2, removed from ggml
  CHECK_FALSE(gguf::type_known(1000));
  CHECK(type_block_elems(ggml_type(4)) == 0);
  CHECK(std::string(gguf::type_name(ggml_type(4))) == "unknown");
  CHECK(gguf::tensor_bytes(ggml_type::q6_k, std::vector<int64_t>{512, 3}) == 2 * 3 * 210);
  CHECK(gguf::tensor_bytes(ggml_type::f16, std::vector<int64_t>{5, 0}) == 0);
  CHECK_THROWS_AS(gguf::tensor_bytes(ggml_type::q4_k, std::vector<int64_t>{128}), qllm::error);
}

TEST_CASE("gguf: round trip of every value type and tensor type, in memory and on disk") {
  for (uint32_t alignment : {32u, 64u, 1u}) {
    CAPTURE(alignment);
    const auto w = sample_writer(alignment);
    const auto bytes = w.to_bytes();
    const auto p = parse(bytes);
    const auto& f = p.f;
    check_sample(f, alignment);
    CHECK(f.size() == bytes.size());
    CHECK((f.data_section() - p.mem.get()) % alignment == 0);
    const auto& last = f.tensors().back();  // no padding after the last tensor
    CHECK(f.tensor_data(last) + last.bytes == p.mem.get() + bytes.size());

    const std::string path = temp_path("roundtrip.gguf");
    w.write(path);
    {
      std::ifstream in(path, std::ios::binary);
      const std::vector<uint8_t> disk((std::istreambuf_iterator<char>(in)), {});
      CHECK(disk == bytes);
      auto g = gguf::file::open(path);
      check_sample(g, alignment);
      CHECK(g.size() == bytes.size());
      const auto& t = g.tensors()[1];
      g.release(g.tensor_data(t), t.bytes);  // pages come back from disk when touched again
      g.release(g.data_section(), g.size());
      check_sample(g, alignment);
      gguf::file moved = std::move(g);
      check_sample(moved, alignment);
    }
    std::filesystem::remove(path);
  }
}

TEST_CASE("gguf: version 2 files and typed getters") {
  builder b;
  b.header(2, 0, 9)
      .kv_u32("a.u32", 7)
      .kv("a.i32neg", value_type::i32)
      .u32(uint32_t(-5))
      .kv("a.u64big", value_type::u64)
      .u64(~0ull)
      .kv("a.i8", value_type::i8)
      .u8(0x80)
      .kv("a.f32", value_type::f32)
      .u32(std::bit_cast<uint32_t>(0.5f))
      .kv("a.bool", value_type::boolean)
      .u8(1)
      .kv("a.str", value_type::string)
      .str("hi")
      .kv("a.arr_u64", value_type::array)
      .u32(uint32_t(value_type::u64))
      .u64(2)
      .u64(1)
      .u64(~0ull)
      .kv("a.arr_str", value_type::array)
      .u32(uint32_t(value_type::string))
      .u64(1)
      .str("x");
  const auto p = parse(b.b);
  const auto& f = p.f;
  CHECK(f.version() == 2);
  CHECK(f.alignment() == 32);
  CHECK(f.tensors().empty());
  CHECK(f.data_section() == p.mem.get() + b.b.size());  // clamped: no tensors, no padding needed
  CHECK(f.get_uint("a.u32") == 7);
  CHECK(f.get_int("a.u32") == 7);
  CHECK(f.get_int("a.i32neg") == -5);
  CHECK(f.get_int("a.i8") == -128);
  CHECK(f.get_uint("a.u64big") == ~0ull);
  CHECK(f.get_float("a.f32") == 0.5);
  CHECK(f.get_float("a.u32") == 7.0);
  CHECK(f.get_bool("a.bool"));
  CHECK(f.get_string("a.str") == "hi");
  CHECK(f.get_uint("absent", 42) == 42);
  CHECK(f.get_int("absent", -1) == -1);
  CHECK(f.get_float("absent", 2.5) == 2.5);
  CHECK(f.get_bool("absent", true));
  CHECK(f.get_string("absent", "dflt") == "dflt");
  CHECK(f.get_uint("a.u32", 42) == 7);
  CHECK(f.find("absent") == nullptr);

  auto message = [&](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const qllm::error& e) {
      CHECK(e.code() == errc::bad_format);
      return e.what();
    }
    return "(no error)";
  };
  auto has = [](const std::string& m, const char* w) { return m.find(w) != std::string::npos; };
  std::string m = message([&] { f.get_uint("missing.key"); });
  CHECK(has(m, "'missing.key'"));
  CHECK(has(m, "missing"));
  m = message([&] { f.get_uint("a.i32neg"); });
  CHECK((has(m, "'a.i32neg'") && has(m, "negative")));
  m = message([&] { f.get_int("a.u64big"); });
  CHECK((has(m, "'a.u64big'") && has(m, "int64")));
  m = message([&] { f.get_uint("a.str"); });
  CHECK((has(m, "'a.str'") && has(m, "string")));
  m = message([&] { f.get_string("a.u32"); });
  CHECK((has(m, "'a.u32'") && has(m, "u32")));
  m = message([&] { f.get_bool("a.u32"); });
  CHECK(has(m, "'a.u32'"));
  m = message([&] { f.get_uint("a.str", 3); });  // a default only covers absence
  CHECK(has(m, "'a.str'"));
  m = message([&] { f.get_array_string("a.arr_u64"); });
  CHECK((has(m, "'a.arr_u64'") && has(m, "array of u64")));
  m = message([&] { f.get_array_int("a.arr_u64"); });
  CHECK((has(m, "element 1") && has(m, "int64")));
  m = message([&] { f.get_array_float("a.arr_str"); });
  CHECK(has(m, "'a.arr_str'"));
  CHECK(f.get_array_string("a.arr_str") == std::vector<std::string>{"x"});
}

TEST_CASE("gguf: writer rejects invalid input") {
  gguf::writer w;
  const float four[4] = {};
  auto code_of = [](auto&& fn) {
    try {
      fn();
    } catch (const qllm::error& e) {
      return e.code();
    }
    return errc{};  // no exception
  };
  CHECK(code_of([&] { w.set_alignment(0); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set_alignment(48); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set_u32("general.alignment", 3); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set_u64("general.alignment", 32); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set("k", scalar_u(value_type::u8, 256)); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set("k", scalar_i(value_type::i16, 40000)); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set("k", scalar_u(value_type(13), 0)); }) == errc::invalid_argument);
  value mixed = array_of(value_type::i32);
  mixed.uints = {1};
  CHECK(code_of([&] { w.set("k", mixed); }) == errc::invalid_argument);
  value deep = array_of(value_type::array);
  deep.arrays.push_back(array_of(value_type::array));
  deep.arrays[0].arrays.push_back(array_of(value_type::u8));
  CHECK(code_of([&] { w.set("k", deep); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.set_string(std::string(70000, 'k'), "v"); }) == errc::invalid_argument);
  CHECK(code_of([&] { w.add_tensor("t", ggml_type::f32, {3}, four, 16); }) ==
        errc::invalid_argument);
  CHECK(code_of([&] { w.add_tensor("t", ggml_type::q4_0, {4}, four, 16); }) ==
        errc::invalid_argument);
  CHECK(code_of([&] { w.add_tensor("", ggml_type::f32, {4}, four, 16); }) ==
        errc::invalid_argument);
  CHECK(code_of([&] { w.add_tensor("t", ggml_type(4), {4}, four, 16); }) == errc::invalid_argument);
  CHECK(code_of([&] {
          w.add_tensor("t", ggml_type::f32, {1, 1, 1, 1, 4}, four, 16);
        }) == errc::invalid_argument);
  w.add_tensor("t", ggml_type::f32, {4}, four, 16);
  CHECK(code_of([&] { w.add_tensor("t", ggml_type::f32, {4}, four, 16); }) ==
        errc::invalid_argument);
  w.add_tensor_fn("boom", ggml_type::f32, {4},
                  [](uint8_t*, std::size_t) { throw std::runtime_error("fill failed"); });
  CHECK(code_of([&] { w.to_bytes(); }) == errc::internal);
  const std::string path = temp_path("boom.gguf");
  CHECK(code_of([&] { w.write(path); }) == errc::internal);
  CHECK_FALSE(std::filesystem::exists(path));  // the partial file is removed
  CHECK(code_of([&] { w.write("/nonexistent-dir/x.gguf"); }) == errc::io);

  // Re-setting a key replaces it in place rather than writing a duplicate the reader would reject.
  gguf::writer r;
  r.set_u32("a", 1);
  r.set_string("b", "x");
  r.set_u32("a", 2);
  const auto p = parse(r.to_bytes());
  REQUIRE(p.f.metadata().size() == 2);
  CHECK(p.f.metadata()[0].first == "a");
  CHECK(p.f.get_uint("a") == 2);
}

TEST_CASE("gguf: open reports io errors") {
  auto code_of = [](const std::string& path) {
    try {
      gguf::file::open(path);
    } catch (const qllm::error& e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
      return e.code();
    }
    return errc{};
  };
  CHECK(code_of("/nonexistent-dir/model.gguf") == errc::io);
  CHECK(code_of(std::filesystem::temp_directory_path().string()) == errc::io);
  const std::string path = temp_path("empty.gguf");
  std::ofstream(path).close();
  CHECK(code_of(path) == errc::bad_format);  // empty: shorter than the header
  std::filesystem::remove(path);
}

TEST_CASE("gguf: malformed headers are rejected with a message naming the field") {
  using vt = value_type;
  const auto f32 = ggml_type::f32;
  const uint64_t huge = 1ull << 60;
  auto one_tensor = [](builder b, std::vector<uint64_t> ne, ggml_type t, uint64_t off) {
    b.tensor("w", std::move(ne), t, off).pad(32).zeros(256);
    return b.b;
  };
  builder h1;  // header for one tensor, no kvs
  h1.header(3, 1, 0);

  SUBCASE("short files and bad magic") {
    check_rejected({}, {"shorter than the 24-byte header"});
    check_rejected(std::vector<uint8_t>(23, 'G'), {"23 bytes"});
    builder b;
    b.header(3, 0, 0);
    b.b[3] = 'G';
    check_rejected(b.b, {"bad magic 0x47475547"});
  }
  SUBCASE("versions") {
    check_rejected(builder().header(1, 0, 0).zeros(8).b, {"version 1", "32-bit"});
    check_rejected(builder().header(4, 0, 0).b, {"version 4"});
    check_rejected(builder().header(0, 0, 0).b, {"version 0"});
    check_rejected(builder().header(0x03000000, 0, 0).b, {"big-endian"});
  }
  SUBCASE("counts larger than the file could hold") {
    check_rejected(builder().header(3, huge, 0).zeros(100).b, {"tensor_count 1152921504606846976"});
    check_rejected(builder().header(3, 0, huge).zeros(100).b, {"metadata_kv_count"});
    check_rejected(builder().header(3, 0, 2).kv_u32("a", 1).b, {"metadata_kv_count 2"});
    check_rejected(builder().header(3, 2, 1).kv_u32("a", 1).tensor("w", {32}, f32, 0).b,
                   {"tensor_count"});
    check_rejected(builder().header(3, 0, 1).u64(huge).zeros(20).b, {"kv #0", "key length"});
    check_rejected(builder().header(3, 0, 1).kv("s", vt::string).u64(huge).zeros(8).b,
                   {"key 's'", "string length 1152921504606846976"});
    check_rejected(
        builder().header(3, 0, 1).kv("a", vt::array).u32(uint32_t(vt::u32)).u64(huge).zeros(8).b,
        {"key 'a'", "array length"});
    check_rejected(builder()
                       .header(3, 0, 1)
                       .kv("a", vt::array)
                       .u32(uint32_t(vt::string))
                       .u64(4)
                       .str("x")
                       .str("y")
                       .b,
                   {"key 'a'", "array length 4"});
    check_rejected(builder().header(3, 1, 0).u64(huge).zeros(40).b, {"tensor #0", "name length"});
  }
  SUBCASE("keys and values") {
    const std::string long_key(70000, 'k');
    check_rejected(builder().header(3, 0, 1).kv_u32(long_key, 1).b, {"65536-byte limit"});
    check_rejected(builder().header(3, 0, 1).kv("x", vt(13)).u32(0).b,
                   {"key 'x'", "unknown value type 13"});
    check_rejected(builder().header(3, 0, 1).kv("x", vt::array).u32(77).u64(1).u32(0).b,
                   {"key 'x'", "unknown array element type 77"});
    check_rejected(builder().header(3, 0, 2).kv_u32("dup", 1).kv_u32("dup", 2).b,
                   {"key 'dup'", "duplicate key"});
    check_rejected(builder().header(3, 0, 1).kv("b", vt::boolean).u8(2).zeros(12).b,
                   {"key 'b'", "bool value 2"});
    builder deep;  // array of array of array
    deep.header(3, 0, 1).kv("n", vt::array).u32(uint32_t(vt::array)).u64(1);
    deep.u32(uint32_t(vt::array)).u64(1).u32(uint32_t(vt::u8)).u64(1).u8(0).zeros(16);
    check_rejected(deep.b, {"key 'n'", "nested deeper than 2"});
    check_rejected(builder().header(3, 0, 2).kv_u32("bad\x01key", 1).kv_u32("bad\x01key", 2).b,
                   {"key 'bad\\x01key'", "duplicate key"});  // control bytes escaped in messages
  }
  SUBCASE("alignment") {
    auto with_align = [&](builder kvb) { return one_tensor(kvb, {32}, f32, 0); };
    check_rejected(with_align(builder().header(3, 1, 1).kv_u32("general.alignment", 0)),
                   {"general.alignment", "power of two"});
    check_rejected(with_align(builder().header(3, 1, 1).kv_u32("general.alignment", 3)),
                   {"general.alignment", "= 3", "power of two"});
    check_rejected(with_align(builder().header(3, 1, 1).kv("general.alignment", vt::u64).u64(32)),
                   {"general.alignment", "type u64, expected u32"});
    check_rejected(one_tensor(h1, {32}, f32, 8), {"tensor 'w'", "offset 8", "alignment 32"});
  }
  SUBCASE("tensor infos") {
    check_rejected(one_tensor(h1, {32}, ggml_type(99), 0), {"tensor 'w'", "unknown ggml type 99"});
    check_rejected(one_tensor(h1, {}, f32, 0), {"tensor 'w'", "n_dims 0"});
    check_rejected(one_tensor(h1, {1, 1, 1, 1, 32}, f32, 0), {"tensor 'w'", "n_dims 5"});
    check_rejected(one_tensor(h1, {1ull << 40, 1ull << 40}, f32, 0),
                   {"tensor 'w'", "overflows int64"});
    check_rejected(one_tensor(h1, {~0ull}, f32, 0), {"tensor 'w'", "ne[0] = -1", "negative"});
    check_rejected(one_tensor(h1, {48}, ggml_type::q4_0, 0),
                   {"tensor 'w'", "ne[0] = 48", "q4_0 block size 32"});
    check_rejected(one_tensor(h1, {1ull << 62}, f32, 0),
                   {"tensor 'w'", "byte size", "overflows uint64"});
    builder e;
    e.header(3, 1, 0).str("").u32(1).u64(32).u32(0).u64(0).pad(32).zeros(128);
    check_rejected(e.b, {"tensor #0", "empty tensor name"});
    builder d;
    d.header(3, 2, 0).tensor("w", {8}, f32, 0).tensor("w", {8}, f32, 32).pad(32).zeros(64);
    check_rejected(d.b, {"tensor 'w'", "duplicate tensor name"});
  }
  SUBCASE("tensor data ranges") {
    check_rejected(one_tensor(h1, {32}, f32, 256),
                   {"tensor 'w'", "[offset 256, 128 bytes]", "past end of file"});
    check_rejected(one_tensor(h1, {32}, f32, ~0ull - 31), {"tensor 'w'", "past end of file"});
    check_rejected(one_tensor(h1, {32}, f32, 5ull << 32),
                   {"tensor 'w'", "offset 21474836480", "past end of file"});
    builder b;  // a zero-byte tensor still needs the data section to start inside the file
    b.header(3, 1, 0).tensor("w", {0}, f32, 0);
    check_rejected(b.b, {"data section starts at 64", "past end of file"});
    auto exact = one_tensor(h1, {32}, f32, 0);  // data ends exactly at the end of the file
    exact.resize(exact.size() - 128);
    REQUIRE_NOTHROW(parse(exact));
    exact.pop_back();
    check_rejected(exact, {"tensor 'w'", "[offset 0, 128 bytes]", "past end of file"});
  }
  SUBCASE("tensor layout: in order, each at the padded end of the previous one") {
    auto two = [&](uint64_t n_a, ggml_type ta, uint64_t off_b) {
      builder b;
      b.header(3, 2, 0).tensor("a", {n_a}, ta, 0).tensor("b", {8}, f32, off_b).pad(32).zeros(1024);
      return b.b;
    };
    REQUIRE_NOTHROW(parse(two(8, f32, 32)));    // 32 bytes, next at 32
    REQUIRE_NOTHROW(parse(two(10, f32, 64)));   // 40 bytes padded to 64
    check_rejected(two(64, f32, 128), {"tensor 'b'", "overlaps tensor 'a'", "256 bytes as f32"});
    check_rejected(two(10, f32, 32), {"tensor 'b'", "overlaps tensor 'a'"});  // 40 > 32
    check_rejected(two(8, f32, 96), {"tensor 'b'", "leaves a gap after tensor 'a'", "ends at 32"});
    // a type whose blocks make the first tensor larger than the table says
    check_rejected(two(64, ggml_type::q8_0, 32), {"tensor 'b'", "overlaps", "as q8_0"});
    builder late;  // the first tensor does not start the data section
    late.header(3, 1, 0).tensor("a", {8}, f32, 64).pad(32).zeros(256);
    check_rejected(late.b, {"tensor 'a'", "first tensor must start at 0"});
    builder swapped;  // infos out of order
    swapped.header(3, 2, 0).tensor("b", {8}, f32, 32).tensor("a", {8}, f32, 0).pad(32).zeros(256);
    check_rejected(swapped.b, {"tensor 'b'", "first tensor must start at 0"});
    builder same;  // two tensors on the same bytes
    same.header(3, 2, 0).tensor("a", {8}, f32, 0).tensor("b", {8}, f32, 0).pad(32).zeros(256);
    check_rejected(same.b, {"tensor 'b'", "overlaps tensor 'a'"});
  }
}

TEST_CASE("gguf: metadata that would take more memory than metadata_memory_limit is rejected") {
  using vt = value_type;
  // (the limit is charged before each allocation, so a rejected file never allocates past it)
  // 1.5 M empty nested arrays: 18 MB on disk, about 300 MB as parsed values
  builder b;
  const uint64_t n = 1500000;
  b.header(3, 0, 1).kv("bomb", vt::array).u32(uint32_t(vt::array)).u64(n);
  for (uint64_t k = 0; k < n; ++k) b.u32(uint32_t(vt::u8)).u64(0);
  check_rejected(b.b, {"key 'bomb'", "256 MiB"});
  // 20 M empty strings in many keys: 160 MB on disk, 640 MB as std::string
  builder s;
  const int keys = 40;
  const uint64_t per = 500000;
  s.header(3, 0, keys);
  for (int k = 0; k < keys; ++k) {
    std::string key = std::to_string(k);  // (no "k" + to_string: GCC 12 warns -Wrestrict)
    key.insert(key.begin(), 'k');
    s.kv(key, vt::array).u32(uint32_t(vt::string)).u64(per);
    s.zeros(8 * per);
  }
  check_rejected(s.b, {"256 MiB"});
  // a large real vocabulary stays far below the limit
  builder v;
  v.header(3, 0, 1).kv("tokenizer.ggml.tokens", vt::array).u32(uint32_t(vt::string)).u64(128000);
  for (int k = 0; k < 128000; ++k) v.str(std::to_string(k).append("piece"));
  CHECK_NOTHROW(parse(v.b));
}

TEST_CASE("gguf: every truncation of a valid file is rejected, none crashes") {
  gguf::writer w;
  w.set_string("general.architecture", "llama");
  w.set_array_string("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
  w.set_array_f32("tokenizer.ggml.scores", {0, 0, 0, -1.5f});
  w.set_bool("flag", true);
  const auto t1 = random_bytes(2 * 34, 7);
  const auto t2 = random_bytes(3 * 4, 8);
  w.add_tensor("q", ggml_type::q8_0, {32, 2}, t1.data(), t1.size());
  w.add_tensor("v", ggml_type::f32, {3}, t2.data(), t2.size());
  const auto bytes = w.to_bytes();
  REQUIRE_NOTHROW(parse(bytes));
  int rejected = 0;
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    CAPTURE(n);
    const std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + std::ptrdiff_t(n));
    CHECK_THROWS_AS(parse(prefix), qllm::error);
    rejected += error_of(prefix) != "(parsed)";
  }
  CHECK(rejected == int(bytes.size()));
}

TEST_CASE("gguf: offsets past 4 GiB (sparse file, and a small buffer)") {
  const uint64_t offset = (4ull << 30) + (1ull << 28) + 64;  // 4.25 GiB + 64, a multiple of 32
  builder b;  // a 4.25 GiB tensor (a hole in the file), then the one past 4 GiB
  b.header(3, 2, 1).kv_u32("general.alignment", 64);
  b.tensor("blk.0.ffn_up.weight", {16, offset / 64}, ggml_type::f32, 0);
  b.tensor("blk.0.attn_q.weight", {8, 2}, ggml_type::f32, offset).pad(64);
  const uint64_t data_start = b.b.size();
  check_rejected(b.b, {"tensor 'blk.0.ffn_up.weight'", "past end of file"});

  const std::string path = temp_path("sparse.gguf");
  const auto marker = random_bytes(64, 99);
  const uint64_t file_size = data_start + offset + marker.size() + 1000;
  {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, off_t(file_size)) == 0);  // holes cost no disk
    REQUIRE(::pwrite(fd, b.b.data(), b.b.size(), 0) == ssize_t(b.b.size()));
    REQUIRE(::pwrite(fd, marker.data(), marker.size(), off_t(data_start + offset)) ==
            ssize_t(marker.size()));
    ::close(fd);
  }
  {
    const auto f = gguf::file::open(path);
    CHECK(f.size() == file_size);
    CHECK(f.alignment() == 64);
    REQUIRE(f.tensors().size() == 2);
    const auto& t = f.tensors()[1];
    CHECK(t.offset == offset);
    CHECK(t.bytes == 64);
    CHECK(uint64_t(f.tensor_data(t) - f.data_section()) == offset);
    CHECK(std::memcmp(f.tensor_data(t), marker.data(), marker.size()) == 0);
    f.release(f.tensor_data(t), t.bytes);
    CHECK(std::memcmp(f.tensor_data(t), marker.data(), marker.size()) == 0);
  }
  std::filesystem::remove(path);
}

TEST_CASE("gguf: random byte flips either parse or throw qllm::error") {
  gguf::writer w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 2);
  w.set_array_string("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xe2\x96\x81the"});
  w.set_array_i32("tokenizer.ggml.token_type", {2, 3, 3, 1});
  value nested = array_of(value_type::array);
  nested.arrays.push_back(array_of(value_type::u16));
  nested.arrays[0].uints = {1, 2};
  w.set("nested", nested);
  const auto t1 = random_bytes(18 * 2, 3);
  const auto t2 = random_bytes(4 * 5, 4);
  w.add_tensor("blk.0.attn_q.weight", ggml_type::q4_0, {32, 2}, t1.data(), t1.size());
  w.add_tensor("output_norm.weight", ggml_type::f32, {5}, t2.data(), t2.size());
  const auto bytes = w.to_bytes();

  std::mt19937 rng(20240611);
  int ok = 0, rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    auto m = bytes;
    const int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      uint8_t& byte = m[rng() % m.size()];
      byte = rng() % 3 == 0 ? uint8_t(byte ^ (1u << (rng() % 8))) : uint8_t(rng());
    }
    if (rng() % 8 == 0) m.resize(rng() % m.size());
    try {
      const auto p = parse(m);
      unsigned sum = 0;  // touch every byte the reader vouched for
      for (const auto& t : p.f.tensors())
        for (uint64_t k = 0; k < t.bytes; ++k) sum += p.f.tensor_data(t)[k];
      for (const auto& kv : p.f.metadata()) sum += unsigned(kv.second.array_size());
      (void)sum;
      ++ok;
    } catch (const qllm::error&) {
      ++rejected;
    }
  }
  CHECK(ok + rejected == 4000);
  CHECK(ok > 100);  // flips in tensor data or string bytes keep the file valid
  CHECK(rejected > 1000);
}
