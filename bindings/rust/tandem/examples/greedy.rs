//! Prints the greedy continuation ids of a prompt.  Usage: greedy MODEL_PATH PROMPT MAX_NEW_TOKENS
use std::process::ExitCode;

fn run(args: &[String]) -> tandem::Result<Vec<i32>> {
    let max_new_tokens: usize = args[3].parse().map_err(|_| tandem::Error {
        kind: tandem::ErrorKind::InvalidArgument,
        message: format!("MAX_NEW_TOKENS '{}' is not a number", args[3]),
    })?;
    let model = tandem::Model::load(&args[1], &tandem::LoadOptions { threads: 1, ..Default::default() })?;
    let mut session = model.session()?;
    let prompt = model.tokenize(&args[2], true)?;
    let options = tandem::GenerateOptions { max_new_tokens, stop_at_eos: false, ..Default::default() };
    session.generate(&prompt, &options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: greedy MODEL_PATH PROMPT MAX_NEW_TOKENS");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(ids) => {
            println!("{}", ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(" "));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
