//! The release binary served for a benchmark, on SQLite in a directory of its own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `sandgate serve` on an ephemeral loopback port with `policy` as its one
/// policy file and `config` as its configuration (which names `policies` and the
/// ledger), both written into `dir`; returns the process and its base URL.
pub fn serve(dir: &Path, policy: &str, config: &str) -> (Child, String) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/bench.toml"), policy).unwrap();
    std::fs::write(dir.join("sandgate.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("sandgate.toml"))
        .env_remove("SANDGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sandgate starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("sandgate listening on ").expect("ready line").to_string();
    (child, base)
}
