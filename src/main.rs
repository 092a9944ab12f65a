use clap::Parser;

fn main() -> std::process::ExitCode {
    sandgate::cli::run(sandgate::cli::Cli::parse())
}
