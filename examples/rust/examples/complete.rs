//! cargo run --example complete -- MODEL PROMPT [MAX_TOKENS]
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: complete MODEL PROMPT [MAX_TOKENS]");
        std::process::exit(2);
    }
    let model = match qllm::Model::load(&args[1]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("complete: {}", e);
            std::process::exit(1);
        }
    };
    let mut session = model.session(&qllm::SessionParams { temperature: 0.0, ..Default::default() }).unwrap();
    let opts = qllm::GenerateOptions {
        max_tokens: args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64),
        ..Default::default()
    };
    let g = session
        .generate(&args[2], &opts, |piece| {
            print!("{}", piece);
            std::io::stdout().flush().is_ok()
        })
        .unwrap();
    println!();
    eprintln!("[{} tokens, {:.1} tok/s, {:?}]", g.raw.n_generated, g.raw.generation_tokens_per_second, g.finish);
}
