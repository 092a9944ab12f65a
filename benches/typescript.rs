//! TypeScript stripping on hostile input: time and peak memory for every input of the
//! pathological corpus (`tests/corpus/typescript.rs`, each just under 256 KiB), and
//! for a large realistic program, stripped inside the sandbox as an execution would be.
//!
//! ```text
//! cargo bench --bench typescript
//! ```
//!
//! Per input: the outcome kind; the time, fuel and guest memory stripping took (the
//! `usage.strip` of the response; for input refused as past a bound, the whole run);
//! the whole execution's time (median of 3); and, over the whole run, the growth of
//! the process's peak resident set (`VmHWM`).

#[path = "../tests/corpus/typescript.rs"]
mod corpus;

use std::time::{Duration, Instant};

use sandgate::limits::Limits;
use sandgate::request::Language;
use sandgate::sandbox::{Compiler, Job, Sandbox, SandboxConfig};

fn job(code: &str) -> Job {
    Job::new(code, Language::Typescript, Limits { wall_ms: 60_000, ..Limits::default() })
}

/// The process's peak resident set so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Real TypeScript of about 200 KiB: interfaces, generics, classes, arrows, casts.
fn realistic() -> String {
    let unit = r#"{
interface Issue<T extends object = {}> { id: number; title: string; labels?: readonly string[]; meta: T }
type Page<T> = { items: T[]; next?: string | null };
async function fetchAll<T>(get: (cursor?: string) => Promise<Page<T>>): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | undefined = undefined;
  do {
    const page: Page<T> = await get(cursor);
    out.push(...page.items);
    cursor = page.next ?? undefined;
  } while (cursor);
  return out;
}
class Cache<K, V> {
  private readonly map = new Map<K, V>();
  get(key: K): V | undefined { return this.map.get(key) as V | undefined; }
  set(key: K, value: V): this { this.map.set(key, value); return this; }
}
const byLabel = (issues: Issue[]): Record<string, number> =>
  issues.reduce<Record<string, number>>((acc, issue) => {
    for (const label of issue.labels ?? []) acc[label] = (acc[label] ?? 0) + 1;
    return acc;
  }, {});
const cache = new Cache<string, Issue[]>();
const total = <T,>(xs: T[], f: (x: T) => number): number => xs.map(f).reduce((a, b) => a + b, 0);
}
"#;
    let mut code = String::new();
    while code.len() + unit.len() < 200 * 1024 {
        code.push_str(unit);
    }
    code.push_str("\nreturn [1, 2, 3].map((x: number): number => x * 2) as number[];\n");
    code
}

/// Type declarations only, about 200 KiB: stripping is the whole of the work (the
/// JavaScript left is blank).
fn declarations() -> String {
    let mut code = String::new();
    let mut i = 0;
    while code.len() < 200 * 1024 {
        code.push_str(&format!(
            "interface Issue{i}<T extends object = {{}}> {{ id: number; title: string; labels?: readonly string[]; meta: T; \
             next(cursor?: string): Promise<{{ items: Issue{i}<T>[]; next?: string | null }}> }}\n\
             type Page{i}<T> = {{ [K in keyof T]: T[K] extends Function ? never : T[K] }} & {{ total: number }};\n"
        ));
        i += 1;
    }
    code.push('1');
    code
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cache = format!("{}/../bench-cache", env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let config = SandboxConfig { cache_dir: Some(cache.into()), compiler: Compiler::Optimizing, ..Default::default() };
    let sandbox = Sandbox::new(config).unwrap();
    let mut inputs =
        vec![("realistic TypeScript (200 KiB)", realistic()), ("type declarations only (200 KiB)", declarations())];
    inputs.extend(corpus::corpus());
    let baseline = peak_rss();
    println!(
        "{:<52} {:>9} {:>9} {:>13} {:>9} {:>10}",
        "input (each under 256 KiB)", "outcome", "strip ms", "strip fuel", "strip MiB", "total ms"
    );
    runtime.block_on(async {
        sandbox.execute(job("return 1"), None).await.unwrap();
        let (mut worst, mut worst_memory) = (Duration::ZERO, 0);
        for (name, code) in &inputs {
            // Median of three runs; a run that ends inside stripping (a bound passed)
            // spent all of its usage there.
            let mut runs = Vec::new();
            for _ in 0..3 {
                let started = Instant::now();
                let outcome = sandbox.execute(job(code), None).await.unwrap();
                let total = started.elapsed();
                let strip = outcome.usage.strip.map_or(
                    (total, outcome.usage.fuel, outcome.usage.memory_bytes),
                    |s| (Duration::from_micros(s.wall_us), s.fuel, s.memory_bytes),
                );
                runs.push((strip, total, outcome.error.as_ref().map_or("ok", |e| e.kind.as_str())));
            }
            runs.sort_by_key(|((time, _, _), _, _)| *time);
            let ((time, fuel, memory), total, kind) = runs[1];
            worst = worst.max(time);
            worst_memory = worst_memory.max(memory);
            println!(
                "{name:<52} {kind:>9} {:>9.1} {fuel:>13} {:>9.1} {:>10.1}",
                time.as_secs_f64() * 1e3,
                memory as f64 / (1 << 20) as f64,
                total.as_secs_f64() * 1e3
            );
        }
        println!(
            "worst case stripping: {:.1} ms, {:.1} MiB of guest memory; process peak resident set grew {:.1} MiB over the run",
            worst.as_secs_f64() * 1e3,
            worst_memory as f64 / (1 << 20) as f64,
            peak_rss().saturating_sub(baseline) as f64 / (1 << 20) as f64
        );
    });
}
