//! cargo run --bin rag -- MODEL DB QUESTION [DOCS...]
//!
//! Indexes DOCS (files or directories of .txt/.md) into the SQLite database DB, answers
//! QUESTION from the best chunks that fit the window (greedy, streamed), then prints which chunks
//! the model was given and which were left out, from the library's report.
use std::io::Write;

fn run(args: &[String]) -> Result<(), qllm::Error> {
    let model = qllm::Model::load(&args[1])?;
    let rag = qllm::Rag::open(&args[2], true)?;
    if args.len() > 4 {
        let r = rag.index(&model, &args[4..], &Default::default())?;
        eprintln!(
            "indexed: {} added, {} changed, {} unchanged, {} skipped ({} chunks added)",
            r.files_added, r.files_changed, r.files_unchanged, r.files_skipped, r.chunks_added
        );
    }
    let mut session = model.session(&qllm::SessionParams { temperature: 0.0, n_ctx: 2048, ..Default::default() })?;
    let opts = qllm::GenerateOptions { max_tokens: 128, ..Default::default() };
    let mut out = std::io::stdout();
    // a closed stdout stops the generation (the callback returns false)
    rag.ask(&mut session, &args[3], &Default::default(), &opts, |piece| {
        out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    let _ = writeln!(out);
    eprintln!("report: {}", session.rag_report()?);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: rag MODEL DB QUESTION [DOCS...]");
        std::process::exit(2);
    }
    if let Err(e) = run(&args) {
        eprintln!("rag: {}", e);
        std::process::exit(1);
    }
}
