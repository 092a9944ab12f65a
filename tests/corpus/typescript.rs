//! Pathological TypeScript for the type stripper: inputs on which a parser's work can
//! grow faster than their length (speculative parsing of `<`, `(`, `?:` and arrows,
//! deep nesting, unterminated literals). Each is built to just under the default
//! 256 KiB `code_bytes` limit. Shared by the integration tests (outcome) and
//! `cargo bench --bench typescript` (time and peak memory).

/// Just under the default `code_bytes` limit (256 KiB).
pub const SIZE: usize = 256 * 1024 - 64;

/// `unit` repeated up to [`SIZE`] bytes, between `head` and `tail`.
fn build(head: &str, unit: &str, tail: &str) -> String {
    let room = SIZE - head.len() - tail.len();
    let mut code = String::with_capacity(SIZE);
    code.push_str(head);
    code.push_str(&unit.repeat(room / unit.len()));
    code.push_str(tail);
    code
}

/// `(name, code)` for every input of the corpus.
pub fn corpus() -> Vec<(&'static str, String)> {
    vec![
        ("type arguments a<a<a<…", build("", "a<", "")),
        ("type arguments in a call a<a<…>(x)", build("f(", "a<", "x")),
        ("type arguments over a long list a<…a<b, b, b, …", build(&"a<".repeat(200), "b,", "")),
        ("calls with type arguments over a long list f(a<…b, b, …", build(&"f(a<".repeat(200), "b,", "")),
        ("parenthesised type arguments a<(a<(…", build("", "a<(", "")),
        ("nested parentheses ((((…", build("", "(", "")),
        ("arrow parameter ambiguity (a, (a, (a, …", build("", "(a, ", "")),
        ("typed arrow parameters (a: T, (a: T, …", build("", "(a: T, ", "")),
        ("conditional or arrow a ? (b) : c ? (b) : …", build("", "a ? (b) : ", "c")),
        ("arrow return type in conditional a ? (b): c => …", build("", "a ? (b): c => ", "d")),
        ("generic arrows <T>(x: T) => <T>(x: T) => …", build("", "<T>(x: T) => ", "x")),
        ("async arrow ambiguity async (a, async (a, …", build("", "async (a, ", "")),
        ("type assertions <T><T><T>…x", build("", "<T>", "x")),
        ("nested object types let a: { a: { a: …", build("let a: ", "{ a: ", "")),
        ("nested tuple types let a: [[[…", build("let a: ", "[", "")),
        ("nested generic types let a: A<A<A<…", build("let a: ", "A<", "")),
        ("nested function types let a: (a: (a: …", build("let a: ", "(a: ", "")),
        ("comparison chain a < b > c < d > …", build("", "a < b > c < d > ", "e")),
        ("unterminated templates `${`${`${…", build("", "`${", "")),
        ("unterminated regular expressions /(/(/(…", build("x = ", "/(", "")),
        ("division or regex a / b / (c < d) / …", build("", "a / b / (c < d) / ", "e")),
        ("deep closed nesting ((((x as T))))", {
            let depth = (SIZE - 8) / 2;
            format!("{}x as T{}", "(".repeat(depth), ")".repeat(depth))
        }),
    ]
}
