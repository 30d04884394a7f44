//! The binding against a generated model: QLLM_TEST_MODEL, and QLLM_TEST_EXPECTED with the
//! C++ path's greedy completion (tests/bindings/run_rust.sh prepares both).
use std::sync::Arc;

const PROMPT: &str = "Once upon a time";
const MAX_TOKENS: i32 = 24;

fn model() -> qllm::Model {
    qllm::Model::load(&std::env::var("QLLM_TEST_MODEL").expect("QLLM_TEST_MODEL")).expect("load")
}

fn expected() -> String {
    std::fs::read_to_string(std::env::var("QLLM_TEST_EXPECTED").expect("QLLM_TEST_EXPECTED")).unwrap()
}

fn greedy() -> qllm::SessionParams {
    qllm::SessionParams { temperature: 0.0, n_ctx: 256, ..Default::default() }
}

fn opts(max_tokens: i32) -> qllm::GenerateOptions {
    qllm::GenerateOptions { max_tokens, stop_at_eos: false, ..Default::default() }
}

#[test]
fn version_and_info() {
    assert!(qllm::version().starts_with("0."));
    let info = model().info().unwrap();
    assert_eq!(info.n_embd, 64);
    assert_eq!(info.n_vocab, 512);
    assert!(info.has_vocabulary);
    assert_eq!(info.weight_type_name, "q4_0");
    assert!(info.weight_mix.starts_with("Q4_0: "), "{}", info.weight_mix);
    assert!(!info.isa.is_empty());
}

#[test]
fn tokenize_round_trip() {
    let m = model();
    let ids = m.tokenize("the quick brown fox", true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(m.count_tokens("the quick brown fox", true).unwrap(), ids.len());
    assert_eq!(m.detokenize(&ids).unwrap(), "the quick brown fox");
    assert_eq!(m.token_piece(2).unwrap(), "</s>");
    let long = "abc ".repeat(300);
    assert_eq!(m.detokenize(&m.tokenize(&long, true).unwrap()).unwrap(), long);
}

#[test]
fn errors_carry_status_and_message() {
    let e = qllm::Model::load("/nonexistent/model.gguf").err().unwrap();
    assert_eq!(e.name, "QLLM_ERR_IO");
    assert!(e.message.contains("/nonexistent/model.gguf"));
    let m = model();
    let e = m.detokenize(&[1, 1_000_000]).unwrap_err();
    assert_eq!(e.name, "QLLM_ERR_INVALID_ARGUMENT");
    let e = m.session(&qllm::SessionParams { top_p: Some(3.0), ..Default::default() }).err().unwrap();
    assert!(e.message.contains("top_p"));
    let e = m.chat_tokens(&[("assistant", "x")]).unwrap_err();
    assert_eq!(e.name, "QLLM_ERR_INVALID_ARGUMENT");
}

#[test]
fn greedy_text_equals_the_cpp_path_and_streams() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let mut streamed = String::new();
    let mut pieces = 0;
    let g = s.generate(PROMPT, &opts(MAX_TOKENS), |p| {
        streamed.push_str(p);
        pieces += 1;
        true
    }).unwrap();
    assert_eq!(g.text, expected());
    assert_eq!(streamed, g.text);
    assert_eq!(pieces, MAX_TOKENS + 1);
    assert_eq!(g.finish, qllm::Finish::MaxTokens);
    assert_eq!(g.raw.n_generated, MAX_TOKENS);
    assert_eq!(g.raw.n_prompt_tokens as usize, m.tokenize(PROMPT, true).unwrap().len());
}

#[test]
fn cancel_and_stop_strings() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let mut n = 0;
    let g = s.generate(PROMPT, &opts(100), |_| {
        n += 1;
        n < 3
    }).unwrap();
    assert_eq!(g.finish, qllm::Finish::Cancelled);
    assert_eq!(g.raw.n_generated, 3);
    let want = expected();
    let at = (3..want.len() - 3).find(|&i| want.is_char_boundary(i) && want[i..].chars().take(3).all(|c| c.is_ascii())).unwrap();
    let stop = want[at..at + 3].to_string();
    let o = qllm::GenerateOptions { stop: vec![stop.clone()], ..opts(MAX_TOKENS) };
    let g = s.generate(PROMPT, &o, |_| true).unwrap();
    assert_eq!(g.finish, qllm::Finish::StopString);
    assert_eq!(g.text, want[..want.find(&stop).unwrap()]);
}

#[test]
fn a_panicking_callback_cancels_and_resumes_the_panic() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.generate(PROMPT, &opts(50), |_| panic!("from the callback"));
    }));
    assert!(r.is_err());
    // the session is still usable
    assert_eq!(s.generate(PROMPT, &opts(MAX_TOKENS), |_| true).unwrap().text, expected());
}

#[test]
fn set_sampling_switches_to_greedy() {
    let m = model();
    let mut s = m.session(&qllm::SessionParams { temperature: 1.5, n_ctx: 256, ..Default::default() }).unwrap();
    s.set_sampling(&greedy()).unwrap();
    assert_eq!(s.generate(PROMPT, &opts(MAX_TOKENS), |_| true).unwrap().text, expected());
    let e = s.set_sampling(&qllm::SessionParams { min_p: Some(2.0), ..greedy() }).unwrap_err();
    assert!(e.message.contains("min_p"));
}

#[test]
fn eval_logits_sample_history() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let ids = m.tokenize(PROMPT, true).unwrap();
    s.eval(&ids).unwrap();
    let logits = s.logits().unwrap().to_vec();
    assert_eq!(logits.len(), 512);
    let mut best = 0usize;
    for i in 1..logits.len() {
        if logits[i] > logits[best] {
            best = i;
        }
    }
    assert_eq!(s.sample().unwrap(), best as i32);
    s.eval(&[best as i32]).unwrap();
    let mut want = ids.clone();
    want.push(best as i32);
    assert_eq!(s.history().unwrap(), want);
}

#[test]
fn context_policy_and_chat() {
    let m = model();
    let long = "word ".repeat(200);
    let mut s = m.session(&qllm::SessionParams { n_ctx: 64, ..greedy() }).unwrap();
    let e = s.generate(&long, &opts(8), |_| true).unwrap_err();
    assert_eq!(e.name, "QLLM_ERR_CONTEXT_OVERFLOW");
    let p = qllm::SessionParams {
        n_ctx: 64,
        context_policy: qllm::ContextPolicy::KeepHeadAndTail,
        n_keep: Some(4),
        ..greedy()
    };
    let mut s = m.session(&p).unwrap();
    let g = s.generate(&long, &opts(8), |_| true).unwrap();
    assert_eq!(g.raw.n_dropped, g.raw.n_sequence_tokens - (64 - 8));
    assert_eq!(g.raw.drop_begin, 4);
    let ids = m.chat_tokens(&[("system", "Be brief."), ("user", "Hi")]).unwrap();
    assert_eq!(ids[0], 1);
    let mut s = m.session(&greedy()).unwrap();
    let g = s.generate_tokens(&ids, &opts(4), |_| true).unwrap();
    assert_eq!(g.raw.n_prompt_tokens as usize, ids.len());
}

#[test]
fn embeddings_are_unit_vectors() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let a = s.embed("the cat sat").unwrap();
    assert_eq!(a.len(), 64);
    let norm: f64 = a.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert_eq!(s.embed("the cat sat").unwrap(), a);
}

#[test]
fn one_model_many_threads() {
    let m = Arc::new(model());
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                let mut s = m.session(&qllm::SessionParams { n_threads: 1, ..greedy() }).unwrap();
                s.generate(PROMPT, &opts(MAX_TOKENS), |_| true).unwrap().text
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected());
    }
}
