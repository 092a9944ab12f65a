//! Tool globs over `server.tool`: `*` matches any run of characters (dots
//! included, so `*.read_*` covers every server), `?` exactly one character, and
//! every other character itself, case-sensitively.
//!
//! Hand-written rather than `globset`: tool names are short, the language is three
//! rules an operator can hold in their head, and there are no character classes,
//! alternations or path-separator rules to surprise anyone.

use std::fmt;

/// A validated glob. Patterns use only `[A-Za-z0-9_.*?-]`, so a typo such as a
/// stray space or a `/` is a load error, not a rule that silently matches nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Glob(String);

impl Glob {
    /// Checks `pattern`; the error says what is wrong with it.
    pub(crate) fn new(pattern: &str) -> Result<Self, String> {
        Self::checked(pattern, &[])
    }

    /// A glob over model names, which may also hold `:` (`tier:frontier`), `/` and
    /// `@` (`vendor/model@version`).
    pub(crate) fn model(pattern: &str) -> Result<Self, String> {
        Self::checked(pattern, &[':', '/', '@'])
    }

    fn checked(pattern: &str, extra: &[char]) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty glob: it would match nothing; use \"*\" to match every tool".into());
        }
        if let Some(c) = pattern.chars().find(|c| c.is_whitespace()) {
            return Err(format!("glob {pattern:?} contains whitespace ({c:?})"));
        }
        if let Some(c) = pattern.chars().find(|&c| !allowed(c) && !extra.contains(&c)) {
            let extra: String = extra.iter().map(|c| format!(", `{c}`")).collect();
            return Err(format!(
                "glob {pattern:?} contains {c:?}: only letters, digits, `_`, `.`, `-`{extra}, `*` and `?` are allowed"
            ));
        }
        Ok(Self(pattern.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the whole of `text` matches. Linear-time backtracking over the last
    /// `*`, so a hostile tool name cannot make matching slow.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let pattern = self.0.as_bytes();
        let text: Vec<char> = text.chars().collect();
        let (mut p, mut t) = (0, 0);
        // Where the last `*` was seen and how much of the text it has swallowed.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some(b'*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if c == b'?' || char::from(c) == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        p = star_p + 1;
                        t = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '?' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_glob_matching() {
        let cases = [
            ("*", "github.create_issue", true),
            ("*", "", true),
            ("github.*", "github.create_issue", true),
            ("github.*", "github", false),
            ("github.*", "gitlab.create_issue", false),
            ("*.read_*", "memory.read_file", true),
            ("*.read_*", "memory.write_file", false),
            ("*.read_*", "a.b.read_x", true),
            ("memory.read_?", "memory.read_a", true),
            ("memory.read_?", "memory.read_ab", false),
            ("memory.read_?", "memory.read_", false),
            ("?", "é", true),
            ("github.delete_*", "github.delete_repo", true),
            ("github.delete_*", "github.Delete_repo", false),
            ("*a*b*c", "xaxbxcxc", true),
            ("*a*b*c", "xaxbxcx", false),
            ("exact.name", "exact.name", true),
            ("exact.name", "exact.names", false),
            ("**", "anything", true),
        ];
        for (pattern, text, expected) in cases {
            let glob = Glob::new(pattern).unwrap();
            assert_eq!(glob.matches(text), expected, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn policy_glob_rejects_what_would_silently_match_nothing() {
        for bad in ["", " github.*", "github .x", "github/x", "github.[a]", "git\thub"] {
            assert!(Glob::new(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
