// The sampler: edge cases exactly, distributions statistically (chi-square at a fixed seed).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/sampler.hpp"

using namespace qllm;

namespace {

sampler_params plain(float temperature = 1.0f) {
  sampler_params p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  return p;
}

// Pearson chi-square of observed counts against expected probabilities.
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int draws) {
  double x = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = p[i] * draws;
    x += (counts[i] - e) * (counts[i] - e) / e;
  }
  return x;
}

std::vector<int> histogram(sampler& s, const std::vector<float>& logits, int draws) {
  std::vector<int> c(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++c[size_t(s.sample(logits))];
  return c;
}

}  // namespace

TEST_CASE("temperature 0 and top-k 1 are greedy; ties go to the lowest id") {
  const std::vector<float> l = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
  sampler g(plain(0.0f));
  for (int i = 0; i < 10; ++i) CHECK(g.sample(l) == 1);
  CHECK(g.last_candidates().size() == 1);
  sampler_params p = plain(5.0f);
  p.top_k = 1;
  sampler k1(p);
  for (int i = 0; i < 10; ++i) CHECK(k1.sample(l) == 1);
}

TEST_CASE("temperature 1 draws from the softmax (chi-square, 2 degrees of freedom)") {
  const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  sampler s(plain());
  const int n = 20000;
  const auto c = histogram(s, l, n);
  const double x = chi_square(c, {0.5, 0.3, 0.2}, n);
  MESSAGE("counts " << c[0] << " " << c[1] << " " << c[2] << ", chi2 " << x);
  CHECK(x < 13.8);  // p = 0.001 critical value for 2 dof
  // and a wrong distribution is rejected by the same test
  CHECK(chi_square(c, {0.4, 0.35, 0.25}, n) > 13.8);
}

TEST_CASE("temperature 2 flattens: p ~ p0^(1/2)") {
  const std::vector<float> l = {std::log(0.64f), std::log(0.36f)};
  sampler s(plain(2.0f));
  const int n = 20000;
  const auto c = histogram(s, l, n);
  CHECK(chi_square(c, {0.8 / 1.4, 0.6 / 1.4}, n) < 10.8);  // 1 dof, p = 0.001
  const auto kept = s.last_candidates();
  REQUIRE(kept.size() == 2);
  CHECK(kept[0].second == doctest::Approx(0.8 / 1.4).epsilon(1e-5));
}

TEST_CASE("all logits equal: uniform over the vocabulary") {
  const std::vector<float> l(10, 3.0f);
  sampler s(plain());
  const int n = 30000;
  const auto c = histogram(s, l, n);
  CHECK(chi_square(c, std::vector<double>(10, 0.1), n) < 27.9);  // 9 dof, p = 0.001
}

TEST_CASE("top-p, min-p and top-k keep exactly the right tokens") {
  const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  sampler_params p = plain();
  p.top_p = 0.75f;  // 0.5 + 0.3 reaches 0.75
  sampler tp(p);
  tp.sample(l);
  auto kept = tp.last_candidates();
  REQUIRE(kept.size() == 2);
  CHECK(kept[0].first == 0);
  CHECK(kept[1].first == 1);
  CHECK(kept[0].second == doctest::Approx(0.625f));
  p = plain();
  p.top_p = 1.0f;  // keeps everything
  sampler all(p);
  all.sample(l);
  CHECK(all.last_candidates().size() == 4);
  p = plain();
  p.min_p = 0.25f;  // keep p >= 0.125: 0.5, 0.3, 0.15
  sampler mp(p);
  mp.sample(l);
  CHECK(mp.last_candidates().size() == 3);
  p = plain();
  p.top_k = 2;
  sampler tk(p);
  for (int i = 0; i < 200; ++i) CHECK(tk.sample(l) < 2);
}

TEST_CASE("repetition, frequency and presence penalties change the logits as documented") {
  sampler_params p = plain(0.0f);  // greedy shows which logit is highest after penalties
  p.repeat_penalty = 2.0f;
  sampler s(p);
  const std::vector<float> l = {3.0f, 2.0f, -1.0f};
  s.accept(0);  // 3 / 2 = 1.5 < 2
  CHECK(s.sample(l) == 1);
  p = plain(0.0f);
  p.frequency_penalty = 0.6f;
  sampler f(p);
  f.accept(0);
  CHECK(f.sample(l) == 0);  // 3 - 0.6 = 2.4 > 2
  f.reset();
  f.accept(0);
  f.accept(0);
  CHECK(f.sample(l) == 1);  // 3 - 1.2 = 1.8 < 2
  p = plain(0.0f);
  p.presence_penalty = 1.5f;
  sampler pr(p);
  pr.accept(0);
  pr.accept(0);
  CHECK(pr.sample(l) == 1);  // 3 - 1.5 once = 1.5
  p = plain(0.0f);
  p.repeat_penalty = 2.0f;
  p.penalty_last_n = 1;  // only the last token counts
  sampler w(p);
  w.accept(0);
  w.accept(2);
  CHECK(w.sample(l) == 0);
  // set_window: the window is the sequence's end, whatever was accepted before
  p.penalty_last_n = 3;
  sampler sw(p);
  for (int32_t t : {7, 8, 9, 10}) sw.accept(t);
  const std::vector<int32_t> seq = {0, 1, 2, 0, 4};
  sw.set_window(seq);
  CHECK(std::vector<int32_t>(sw.window().begin(), sw.window().end()) == std::vector<int32_t>{2, 0, 4});
  CHECK(sw.sample(l) == 1);  // 0 is in the window: 3 / 2 = 1.5 < 2
  sw.set_window(std::span<const int32_t>(seq.data(), 2));  // shorter than the window
  CHECK(std::vector<int32_t>(sw.window().begin(), sw.window().end()) == std::vector<int32_t>{0, 1});
  sw.set_window({});
  CHECK(sw.window().empty());
  CHECK(sw.sample(l) == 0);
}

TEST_CASE("the same seed gives the same tokens, another seed other tokens") {
  std::vector<float> l(50);
  for (size_t i = 0; i < l.size(); ++i) l[i] = float(std::sin(double(i))) * 2.0f;
  sampler_params p;
  p.top_k = 0;
  p.min_p = 0.0f;
  p.top_p = 1.0f;
  sampler a(p), b(p);
  p.seed = 999;
  sampler c(p);
  int same = 0, diff = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t x = a.sample(l), y = b.sample(l), z = c.sample(l);
    same += x == y;
    diff += x != z;
  }
  CHECK(same == 200);
  CHECK(diff > 50);
  a.reset();
  b.reset();
  CHECK(a.sample(l) == b.sample(l));
}

TEST_CASE("sample_draft: the token is distributed as p whatever the draft's q (chi-square, 4 dof)") {
  // p over 5 tokens; drafts x ~ q for q equal to p, near p, disjoint from p's best tokens, and a
  // point mass (a lookup draft); every token returned must still be distributed as p
  const std::vector<double> p = {0.4, 0.25, 0.2, 0.1, 0.05};
  std::vector<float> l;
  for (double v : p) l.push_back(float(std::log(v)));
  const std::vector<std::vector<double>> qs = {
      p, {0.3, 0.3, 0.2, 0.15, 0.05}, {0.0, 0.0, 0.1, 0.3, 0.6}, {0.0, 0.0, 0.0, 1.0, 0.0}, {1.0, 0.0, 0.0, 0.0, 0.0}};
  std::mt19937_64 draft_rng(3);
  for (std::size_t qi = 0; qi < qs.size(); ++qi) {
    CAPTURE(qi);
    std::vector<std::pair<int32_t, float>> q;
    for (int32_t t = 0; t < 5; ++t)
      if (qs[qi][std::size_t(t)] > 0) q.emplace_back(t, float(qs[qi][std::size_t(t)]));
    std::discrete_distribution<int32_t> pick(qs[qi].begin(), qs[qi].end());
    sampler s(plain());
    const int n = 20000;
    std::vector<int> c(5, 0);
    int kept = 0;
    for (int i = 0; i < n; ++i) {
      const int32_t x = pick(draft_rng);
      const int32_t t = s.sample_draft(l, x, q);
      ++c[std::size_t(t)];
      kept += t == x;
    }
    const double x2 = chi_square(c, p, n);
    MESSAGE("q " << qi << ": counts " << c[0] << " " << c[1] << " " << c[2] << " " << c[3] << " " << c[4]
                 << ", drafts kept " << kept << ", chi2 " << x2);
    CHECK(x2 < 18.47);  // p = 0.001 critical value for 4 dof
    // the expected share of kept drafts: sum over t of min(p(t), q(t))
    double overlap = 0;
    for (std::size_t t = 0; t < 5; ++t) overlap += std::min(p[t], qs[qi][t]);
    CHECK(std::abs(double(kept) / n - overlap) < 0.02);
  }
  // the test's power: the naive rule (keep every draft p allows, as here where p(x) > 0 for every
  // x) returns q's distribution, which it rejects
  std::vector<int> naive(5, 0);
  std::discrete_distribution<int32_t> pick(qs[2].begin(), qs[2].end());
  for (int i = 0; i < 20000; ++i) ++naive[std::size_t(pick(draft_rng))];
  CHECK(chi_square(naive, p, 20000) > 18.47);
  // a draft its distribution does not name is rejected: the token is drawn from p - q (never 1);
  // a token outside the vocabulary is an error
  sampler e(plain());
  const std::vector<std::pair<int32_t, float>> q0 = {{1, 1.0f}};
  for (int i = 0; i < 50; ++i) CHECK(e.sample_draft(l, 0, q0) != 1);
  const std::vector<std::pair<int32_t, float>> q9 = {{9, 1.0f}};
  CHECK_THROWS_AS(e.sample_draft(l, 9, q9), error);
  // greedy: p is one token; a draft that is not it is replaced by it
  sampler g(plain(0.0f));
  CHECK(g.sample_draft(l, 3, std::vector<std::pair<int32_t, float>>{{3, 1.0f}}) == 0);
  CHECK(g.sample_draft(l, 0, std::vector<std::pair<int32_t, float>>{{0, 0.5f}, {3, 0.5f}}) == 0);
}

TEST_CASE("bad logits and bad parameters are errors") {
  sampler s(plain());
  CHECK_THROWS_AS(s.sample(std::vector<float>{}), error);
  CHECK_THROWS_AS(s.sample(std::vector<float>{1.0f, std::nanf("")}), error);
  CHECK_THROWS_AS(s.sample(std::vector<float>{1.0f, INFINITY}), error);
  CHECK_THROWS_AS(s.sample(std::vector<float>{-INFINITY, -INFINITY}), error);
  CHECK(s.sample(std::vector<float>{-INFINITY, 0.0f}) == 1);  // masked tokens are fine
  sampler_params p;
  p.top_p = 0.0f;
  CHECK_THROWS_AS(sampler{p}, error);
  p = {};
  p.min_p = 1.0f;
  CHECK_THROWS_AS(sampler{p}, error);
  p = {};
  p.repeat_penalty = 0.0f;
  CHECK_THROWS_AS(sampler{p}, error);
  p = {};
  p.temperature = std::nanf("");
  CHECK_THROWS_AS(sampler{p}, error);
  p = {};
  p.penalty_last_n = -1;
  CHECK_THROWS_AS(sampler{p}, error);
}
