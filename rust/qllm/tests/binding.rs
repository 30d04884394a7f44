//! The crate against a generated model: QLLM_TEST_MODEL, and QLLM_TEST_EXPECTED with the
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
fn parse_special_end_tokens_and_chat_formats() {
    // Llama-2 (sentencepiece): "</s>" is EOS only on request; the model's format is [INST]
    let m = model();
    let info = m.info().unwrap();
    assert_eq!(info.tokenizer, "sentencepiece");
    assert_eq!(info.chat_format, "llama2");
    assert!(!m.tokenize("a</s>b", false).unwrap().contains(&2));
    assert_eq!(m.tokenize_special("a</s>b", false).unwrap().iter().filter(|&&t| t == 2).count(), 1);
    assert_eq!(m.end_tokens().unwrap(), vec![2]);
    let dialog = [("user", "Hi")];
    assert_eq!(m.chat_format(&dialog).unwrap(), qllm::chat_format(&dialog).unwrap());
    // Llama-3 (byte-level BPE)
    let l3 = qllm::Model::load(&std::env::var("QLLM_TEST_L3_MODEL").expect("QLLM_TEST_L3_MODEL")).unwrap();
    let info = l3.info().unwrap();
    assert_eq!(info.tokenizer, "llama3-bpe");
    assert_eq!(info.chat_format, "llama3");
    let ends = l3.end_tokens().unwrap();
    let mut pieces: Vec<String> = ends.iter().map(|&t| l3.token_piece(t).unwrap()).collect();
    pieces.sort();
    assert_eq!(pieces, ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]);
    let eot = *ends.iter().find(|&&t| l3.token_piece(t).unwrap() == "<|eot_id|>").unwrap();
    assert!(!l3.tokenize("hi<|eot_id|>", false).unwrap().contains(&eot));
    assert_eq!(l3.tokenize_special("hi<|eot_id|>", false).unwrap().last(), Some(&eot));
    let dialog = [("system", "Be brief."), ("user", "hi")];
    let text = l3.chat_format(&dialog).unwrap();
    assert_eq!(text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                      <|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
                      <|start_header_id|>assistant<|end_header_id|>\n\n");
    assert_eq!(l3.tokenize_special(&text, false).unwrap(), l3.chat_tokens(&dialog).unwrap());
}

#[test]
fn errors_carry_status_and_message() {
    let e = qllm::Model::load("/nonexistent/model.gguf").err().unwrap();
    assert_eq!(e.name, "QLLM_ERR_IO");
    assert_eq!(e.kind(), qllm::ErrorKind::Io);
    assert!(e.to_string().starts_with("QLLM_ERR_IO: "), "{}", e);
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
fn speculation_gives_the_same_text() {
    let m = model();
    let prompt = "A cat sat on a mat. A cat sat on a mat. A cat";
    let want = m.session(&greedy()).unwrap().generate(prompt, &opts(MAX_TOKENS), |_| true).unwrap().text;
    let mut s = m.session(&greedy()).unwrap();
    let lookup = qllm::GenerateOptions { speculation: qllm::Speculation::Lookup(4), ..opts(MAX_TOKENS) };
    let g = s.generate(prompt, &lookup, |_| true).unwrap();
    assert_eq!(g.text, want);
    assert!(g.raw.n_drafted > 0);
    // the model drafting for itself keeps every draft
    let draft = qllm::GenerateOptions { speculation: qllm::Speculation::DraftModel(6), ..opts(MAX_TOKENS) };
    assert_eq!(s.generate(prompt, &draft, |_| true).unwrap_err().name, "QLLM_ERR_INVALID_ARGUMENT");
    s.set_draft(Some(&model())).unwrap();
    s.reset().unwrap();
    let g = s.generate(prompt, &draft, |_| true).unwrap();
    assert_eq!(g.text, want);
    assert!(g.raw.n_drafted > 0);
    assert_eq!(g.raw.n_draft_accepted, g.raw.n_drafted);
    s.set_draft(None).unwrap();
    assert!(s.generate(prompt, &draft, |_| true).is_err());
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
    // one call per token, then one with what was held back
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
    let mut seen = String::new();
    let g = s.generate(PROMPT, &opts(100), |p| {
        seen.push_str(p);
        n += 1;
        n < 3
    }).unwrap();
    assert_eq!(g.finish, qllm::Finish::Cancelled);
    assert_eq!(n, 3);
    assert_eq!(g.raw.n_generated, 3);
    assert!(expected().starts_with(&seen), "{:?}", seen);
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

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qllm-rs-{}-{}", std::process::id(), name));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn handles_are_send_and_sync_as_documented() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<qllm::Model>();
    send_sync::<qllm::Rag>();
    send::<qllm::Session>();
}

#[test]
fn stream_yields_the_same_text_and_finishes() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let mut stream = s.stream(PROMPT, &opts(MAX_TOKENS));
    let mut text = String::new();
    let mut n = 0;
    for p in &mut stream {
        let p = p.unwrap();
        assert!(!p.is_empty());
        text.push_str(&p);
        n += 1;
    }
    let g = stream.finish().unwrap();
    assert_eq!(text, expected());
    assert_eq!(g.text, text);
    assert_eq!(g.finish, qllm::Finish::MaxTokens);
    assert_eq!(g.raw.n_generated, MAX_TOKENS);
    assert!(n >= 2 && n <= MAX_TOKENS + 1, "{} pieces", n);
    // the session has its handle back
    assert_eq!(s.output().unwrap(), expected());
    let ids = m.tokenize(PROMPT, true).unwrap();
    let mut st = s.stream_tokens(&ids, &opts(MAX_TOKENS));
    let joined: String = (&mut st).map(|p| p.unwrap()).collect();
    assert_eq!(joined, expected());
    let r = st.finish().unwrap().raw;
    assert_eq!((r.n_prompt_tokens + r.n_reused_tokens) as usize, ids.len());
}

#[test]
fn dropping_a_stream_cancels_it_and_returns_the_session() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    {
        let mut st = s.stream(PROMPT, &opts(-1));
        assert!(st.next().unwrap().is_ok());
    }
    // still usable, and reproduces the greedy text
    let g = s.generate(PROMPT, &opts(MAX_TOKENS), |_| true).unwrap();
    assert_eq!(g.text, expected());
    // finish() right away reads everything
    let g = s.stream(PROMPT, &opts(MAX_TOKENS)).finish().unwrap();
    assert_eq!(g.text, expected());
}

#[test]
fn a_failing_stream_ends_with_the_error() {
    let m = model();
    let mut s = m.session(&qllm::SessionParams { n_ctx: 32, ..greedy() }).unwrap();
    let long = "word ".repeat(100);
    let items: Vec<_> = s.stream(&long, &opts(8)).collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().kind(), qllm::ErrorKind::ContextOverflow);
    let e = s.stream(&long, &opts(8)).finish().unwrap_err();
    assert!(e.message.contains("32"), "{}", e.message);
}

#[test]
fn a_leaked_stream_leaves_a_session_that_answers_errors() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    std::mem::forget(s.stream(PROMPT, &opts(MAX_TOKENS)));
    let e = s.generate(PROMPT, &opts(4), |_| true).unwrap_err();
    assert_eq!(e.kind(), qllm::ErrorKind::InvalidArgument);
    assert!(s.history().is_err());
}

#[test]
fn chat_applies_the_template_and_outlives_the_model_handle() {
    let m = model();
    let dialog = [("system", "Be brief."), ("user", "Hi")];
    let ids = m.chat_tokens(&dialog).unwrap();
    let mut a = m.session(&greedy()).unwrap();
    let want = a.generate_tokens(&ids, &opts(6), |_| true).unwrap().text;
    let mut b = m.session(&greedy()).unwrap();
    drop(m); // the session keeps the model
    let g = b.chat(&dialog, &opts(6), |_| true).unwrap();
    assert_eq!(g.text, want);
    assert_eq!(g.raw.n_prompt_tokens as usize, ids.len());
    assert_eq!(qllm::chat_format(&[("user", "Hi")]).unwrap(), "<s>[INST] Hi [/INST]");
    let e = b.chat(&[("assistant", "x")], &opts(2), |_| true).unwrap_err();
    assert_eq!(e.kind(), qllm::ErrorKind::InvalidArgument);
}

#[test]
fn retrieval_indexes_asks_and_reports() {
    let m = model();
    let dir = scratch("rag");
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("a.txt"), "The ark was made of gopher wood. It had three decks.\n".repeat(20)).unwrap();
    std::fs::write(docs.join("b.md"), "# Leave\nStaff get twenty days of leave each year.\n".repeat(20)).unwrap();
    std::fs::write(docs.join("c.bin"), [0u8, 159, 146, 150]).unwrap();
    let rag = qllm::Rag::open(dir.join("db.sqlite"), true).unwrap();
    let small = qllm::IndexParams { chunk_tokens: Some(48), overlap_tokens: Some(8) };
    let r = rag.index(&m, &[&docs], &small).unwrap();
    assert_eq!(r.files_added, 2, "{:?}", r);
    assert!(r.chunks_added >= 4, "{:?}", r);
    let again = rag.index(&m, &[&docs], &small).unwrap();
    assert_eq!(again.files_unchanged, 2, "{:?}", again);
    assert_eq!(again.chunks_added, 0);
    let e = rag.index(&m, &[dir.join("missing")], &small).unwrap_err();
    assert_eq!(e.kind(), qllm::ErrorKind::InvalidArgument);
    let mut s = m.session(&qllm::SessionParams { n_ctx: 1024, ..greedy() }).unwrap();
    let mut streamed = String::new();
    let g = rag
        .ask(&mut s, "How many days of leave?", &qllm::AskParams { top_k: Some(3), ..Default::default() }, &opts(8), |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(g.text, streamed);
    assert_eq!(g.raw.n_generated, 8);
    let report = s.rag_report().unwrap();
    assert!(report.contains("\"used\"") && report.contains("\"dropped\""), "{}", report);
    assert!(report.contains("b.md"), "{}", report);
    let e = qllm::Rag::open(dir.join("none.sqlite"), false).unwrap_err();
    assert_eq!(e.kind(), qllm::ErrorKind::Io);
    std::fs::write(dir.join("junk.sqlite"), b"not a database at all, but long enough to look like one...").unwrap();
    assert_eq!(qllm::Rag::open(dir.join("junk.sqlite"), false).unwrap_err().kind(), qllm::ErrorKind::BadFormat);
    drop(rag);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn models_and_rag_handles_cross_threads() {
    let m = model();
    let dir = scratch("threads");
    std::fs::write(dir.join("a.txt"), "Noah built an ark of gopher wood.\n".repeat(10)).unwrap();
    let rag = Arc::new(qllm::Rag::open(dir.join("db.sqlite"), true).unwrap());
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let (m, rag, p) = (m.clone(), Arc::clone(&rag), dir.join("a.txt"));
            std::thread::spawn(move || rag.index(&m, &[p], &Default::default()).unwrap())
        })
        .collect();
    let rs: Vec<qllm::IndexResult> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(rs.iter().map(|r| r.files_added).sum::<i32>(), 1, "{:?}", rs);
    // a session moved to another thread
    let mut s = m.session(&greedy()).unwrap();
    let text = std::thread::spawn(move || s.generate(PROMPT, &opts(MAX_TOKENS), |_| true).unwrap().text).join().unwrap();
    assert_eq!(text, expected());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn no_vocab_model() -> qllm::Model {
    qllm::Model::load(&std::env::var("QLLM_TEST_NOVOCAB_MODEL").expect("QLLM_TEST_NOVOCAB_MODEL")).expect("load")
}

/// Runs f on a thread and fails (instead of hanging) when it takes more than a minute.
fn within_a_minute(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|_| panic!("{} did not end", what));
}

#[test]
fn a_model_without_vocabulary_streams_ids_and_stops_when_told() {
    let m = no_vocab_model();
    assert!(!m.info().unwrap().has_vocabulary);
    let mut s = m.session(&greedy()).unwrap();
    let mut n = 0;
    let g = s.generate_tokens(&[1, 5, 6], &opts(100), |p| {
        assert!(p.is_empty());
        n += 1;
        n < 3
    }).unwrap();
    assert_eq!(g.finish, qllm::Finish::Cancelled);
    assert_eq!(g.raw.n_generated, 3);
    // a stream that yields nothing still stops when dropped, at once or later, every time
    within_a_minute("dropping no-vocabulary streams", move || {
        for i in 0..20 {
            let st = s.stream_tokens(&[1, 5, 6], &opts(-1));
            if i % 2 == 1 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(st);
        }
        assert!(s.history().is_ok());
    });
}

#[test]
fn a_dropped_stream_stops_a_long_prompt() {
    within_a_minute("dropping a stream during its prompt", || {
        let m = model();
        let mut s = m.session(&qllm::SessionParams { n_batch: Some(8), ..greedy() }).unwrap();
        let long = "once upon a time ".repeat(40);
        for _ in 0..10 {
            drop(s.stream(&long, &opts(-1)));
        }
        s.generate(PROMPT, &opts(4), |_| true).unwrap();
    });
}

#[test]
fn a_canceller_stops_a_generation_from_another_thread() {
    let m = model();
    let mut s = m.session(&greedy()).unwrap();
    let c = s.canceller();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        rx.recv().unwrap();
        c.cancel();
    });
    let mut first = Some(tx);
    let mut calls = 0;
    // unbounded: only the cancel ends it (the window shifts when full)
    let g = s.generate(PROMPT, &opts(-1), |_| {
        calls += 1;
        if let Some(tx) = first.take() {
            tx.send(()).unwrap();
        }
        true
    }).unwrap();
    t.join().unwrap();
    assert_eq!(g.finish, qllm::Finish::Cancelled);
    assert!(g.raw.n_generated >= 1 && calls >= 1);
    // the canceller outlives the session safely; a cancel with nothing running does nothing
    let c = s.canceller();
    drop(s);
    c.cancel();
}

// the shipped model: real text, so grammars have words to choose from
fn shipped() -> qllm::Model {
    qllm::Model::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-kjv.q8_0.gguf")).unwrap()
}

const WORDS: &str = "root ::= \"The \" word (\", \" word){2,5} \".\"\nword ::= [a-z]{2,8}\n";

// "The " word (", " word){2,5} "." by hand, without the library
fn is_words(text: &str) -> bool {
    let Some(body) = text.strip_prefix("The ").and_then(|t| t.strip_suffix('.')) else { return false };
    let words: Vec<&str> = body.split(", ").collect();
    (3..=6).contains(&words.len())
        && words.iter().all(|w| (2..=8).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()))
}

#[test]
fn grammar_generation_streams_and_equals_a_matcher_by_hand() {
    let m = shipped();
    let g = qllm::Grammar::from_gbnf(WORDS).unwrap();
    let o = qllm::GenerateOptions { max_tokens: 60, grammar: Some(g.clone()), ..Default::default() };
    let sp = qllm::SessionParams { temperature: 0.7, seed: Some(11), n_ctx: 256, ..Default::default() };
    let prompt = m.tokenize("And the LORD said", true).unwrap();
    let mut s = m.session(&sp).unwrap();
    let r = s.generate_tokens(&prompt, &o, |_| true).unwrap();
    assert_eq!(r.finish, qllm::Finish::Eos);
    assert!(is_words(&r.text), "{:?}", r.text);
    s.reset().unwrap();
    let streamed: String = s.stream_tokens(&prompt, &o).collect::<Result<Vec<_>, _>>().unwrap().concat();
    assert_eq!(streamed, r.text);
    // unconstrained, the same sampler writes something else
    s.reset().unwrap();
    let free = s.generate_tokens(&prompt, &opts(60), |_| true).unwrap();
    assert!(!is_words(&free.text));

    // by hand: eval, mask, sample, accept
    let mut mt = qllm::Matcher::new(&g, &m).unwrap();
    drop(g); // the matcher keeps what it needs
    let eos = m.info().unwrap().eos_token;
    let mut s = m.session(&sp).unwrap();
    s.eval(&prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..60 {
        mt.mask_session(&mut s).unwrap();
        let t = s.sample().unwrap();
        if t == eos {
            assert!(mt.can_end() && mt.must_end());
            mt.accept(t).unwrap();
            break;
        }
        mt.accept(t).unwrap();
        out.push(t);
        s.eval(&[t]).unwrap();
    }
    assert_eq!(m.detokenize(&out).unwrap(), r.text);
    mt.reset().unwrap();
    assert!(mt.accept_text("Amen").is_err());
    mt.accept_text("The ab, cd, ef.").unwrap();
    let mut logits = vec![0.0f32; m.info().unwrap().n_vocab as usize];
    mt.mask(&mut logits).unwrap();
    let open: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    assert_eq!(open, vec![eos as usize]);
    assert_eq!(mt.mask(&mut logits[..3]).unwrap_err().kind(), qllm::ErrorKind::InvalidArgument);
}

#[test]
fn json_schema_grammars_and_their_errors() {
    let schema = r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 9}},
                     "required": ["n"], "additionalProperties": false}"#;
    let g = qllm::Grammar::from_json_schema(schema).unwrap();
    let m = shipped();
    let mut s = m.session(&greedy()).unwrap();
    let o = qllm::GenerateOptions { max_tokens: 40, grammar: Some(g), ..Default::default() };
    let r = s.generate("In the beginning", &o, |_| true).unwrap();
    assert_eq!(r.finish, qllm::Finish::Eos, "{:?}", r.text);
    let digits: String = r.text.chars().filter(|c| c.is_ascii_digit()).collect();
    let n: i64 = digits.parse().unwrap();
    assert!((3..=9).contains(&n), "{:?}", r.text);
    assert!(r.text.trim_start().starts_with('{') && r.text.trim_end().ends_with('}') && r.text.contains("\"n\""));
    assert!(qllm::gbnf_from_json_schema(schema).unwrap().contains("root"));

    let e = qllm::Grammar::from_gbnf("root ::= (\"a\"").unwrap_err();
    assert_eq!(e.kind(), qllm::ErrorKind::InvalidArgument);
    assert!(e.message.contains("line 1"), "{}", e.message);
    let e = qllm::Grammar::from_json_schema(r#"{"type": "string", "pattern": "a+"}"#).unwrap_err();
    assert_eq!(e.kind(), qllm::ErrorKind::Unsupported);
    assert!(e.message.contains("pattern"), "{}", e.message);
    assert!(qllm::Grammar::json_object().is_ok());
}
