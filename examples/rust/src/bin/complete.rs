//! cargo run --bin complete -- MODEL PROMPT [MAX_TOKENS]
//!
//! Greedy completion of PROMPT, printed as it is generated (the stream iterator), then the
//! token count, the speed and why it ended on stderr.
use std::io::Write;

fn run(args: &[String]) -> Result<(), qllm::Error> {
    let model = qllm::Model::load(&args[1])?;
    let mut session = model.session(&qllm::SessionParams { temperature: 0.0, ..Default::default() })?;
    let opts = qllm::GenerateOptions {
        max_tokens: args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64),
        ..Default::default()
    };
    let mut stream = session.stream(&args[2], &opts);
    let mut out = std::io::stdout();
    for piece in &mut stream {
        // a closed stdout ends the loop, and dropping the stream cancels the generation
        if out.write_all(piece?.as_bytes()).and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
    }
    let g = stream.finish()?;
    println!();
    eprintln!("[{} tokens, {:.1} tok/s, {:?}]", g.raw.n_generated, g.raw.generation_tokens_per_second, g.finish);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: complete MODEL PROMPT [MAX_TOKENS]");
        std::process::exit(2);
    }
    if let Err(e) = run(&args) {
        eprintln!("complete: {}", e);
        std::process::exit(1);
    }
}
