//! Word-matching ranking: the tokenizer and stemmer, [`Bm25f`] (the lexical half of
//! sandgate's ranking), and [`SearchIndex`], plain BM25 over a name and a body, kept
//! as the baseline the evaluation measures against.
//!
//! [`SearchIndex`]: each document has two fields, a name (e.g. `everything.get_tiny_image`)
//! and a body (the description plus property names and descriptions). Terms in the name
//! count [`NAME_WEIGHT`] times, with one shared length normalisation. Scoring is Okapi BM25
//! with `k1 = 1.2`, `b = 0.75` and the non-negative IDF `ln(1 + (N - df + 0.5) / (df + 0.5))`.
//!
//! See [`tokenize`] for how text becomes terms.

use std::collections::HashMap;

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 document-length normalisation.
const B: f32 = 0.75;
/// How many times a term in the name field counts, relative to one in the body.
pub const NAME_WEIGHT: f32 = 3.0;

/// Very common English words that carry no meaning for search.
const STOP_WORDS: &[&str] = &[
    "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "of", "on", "or", "the", "this",
    "that", "to", "with",
];

/// A ranked text index over a fixed set of documents.
#[derive(Debug, Clone, Default)]
pub struct SearchIndex {
    /// Term → index into `postings`.
    terms: HashMap<String, usize>,
    /// Per term: the documents containing it, in ascending order, with the weighted term frequency.
    postings: Vec<Vec<(usize, f32)>>,
    /// Weighted length (in terms) of each document.
    doc_lens: Vec<f32>,
    /// Mean of `doc_lens`.
    avg_len: f32,
}

impl SearchIndex {
    /// Indexes `docs`, where `docs[i]` is the (name text, body text) of document `i`; the name
    /// (e.g. `everything.get_tiny_image`) weighs more than the body.
    #[must_use]
    pub fn new(docs: &[(String, String)]) -> Self {
        let mut index = Self::default();
        for (doc, (name, body)) in docs.iter().enumerate() {
            let mut freqs: HashMap<String, f32> = HashMap::new();
            let weighted = tokenize(name)
                .into_iter()
                .map(|term| (term, NAME_WEIGHT))
                .chain(tokenize(body).into_iter().map(|term| (term, 1.0)));
            let mut len = 0.0;
            for (term, weight) in weighted {
                *freqs.entry(term).or_default() += weight;
                len += weight;
            }
            index.doc_lens.push(len);
            for (term, freq) in freqs {
                posting_list(&mut index.terms, &mut index.postings, term).push((doc, freq));
            }
        }
        if !index.doc_lens.is_empty() {
            index.avg_len = index.doc_lens.iter().sum::<f32>() / index.doc_lens.len() as f32;
        }
        index
    }

    /// Number of indexed documents.
    #[must_use]
    pub fn len(&self) -> usize {
        self.doc_lens.len()
    }

    /// Whether the index has no documents.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.doc_lens.is_empty()
    }

    /// The best `limit` matches for `query`, best first, as (document index, score); only
    /// documents scoring above zero are returned, and equal scores are ordered by index. Repeated
    /// query terms count once. A query without any terms matches nothing.
    #[must_use]
    pub fn search(&self, query: &str, limit: usize) -> Vec<(usize, f32)> {
        let mut terms = tokenize(query);
        terms.sort_unstable();
        terms.dedup();
        if terms.is_empty() || limit == 0 || self.is_empty() {
            return Vec::new();
        }
        let docs = self.doc_lens.len() as f32;
        let avg_len = if self.avg_len > 0.0 { self.avg_len } else { 1.0 };
        let mut scores = vec![0.0_f32; self.doc_lens.len()];
        let postings = terms.iter().filter_map(|term| self.terms.get(term)).filter_map(|&id| self.postings.get(id));
        for list in postings {
            let df = list.len() as f32;
            let idf = (1.0 + (docs - df + 0.5) / (df + 0.5)).ln();
            for &(doc, freq) in list {
                let (Some(score), Some(&len)) = (scores.get_mut(doc), self.doc_lens.get(doc)) else {
                    continue;
                };
                let norm = K1 * (1.0 - B + B * len / avg_len);
                *score += idf * freq * (K1 + 1.0) / (freq + norm);
            }
        }
        let mut hits: Vec<(usize, f32)> = scores.into_iter().enumerate().filter(|&(_, s)| s > 0.0).collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(limit);
        hits
    }
}

/// The fields of a document for [`Bm25f`], in this order.
pub const FIELDS: usize = 6;

/// A document for [`Bm25f`]: the text of each field.
pub type Fields = [String; FIELDS];

/// A BM25F index: each field has its own weight and its own length normalisation,
/// and a term's weighted frequencies over all fields saturate together (Robertson,
/// Zaragoza and Taylor, "Simple BM25 extension to multiple weighted fields").
#[derive(Debug, Clone, Default)]
pub struct Bm25f {
    terms: HashMap<String, usize>,
    /// Per term: the documents containing it, ascending, with the term's frequency in
    /// each field.
    postings: Vec<Vec<(usize, [f32; FIELDS])>>,
    lens: Vec<[f32; FIELDS]>,
    avg_lens: [f32; FIELDS],
    weights: [f32; FIELDS],
    b: [f32; FIELDS],
}

impl Bm25f {
    /// Indexes `docs` with these field `weights` and length normalisations `b`.
    #[must_use]
    pub fn new(docs: &[Fields], weights: [f32; FIELDS], b: [f32; FIELDS]) -> Self {
        let mut index = Self { weights, b, ..Self::default() };
        for (doc, fields) in docs.iter().enumerate() {
            let mut freqs: HashMap<String, [f32; FIELDS]> = HashMap::new();
            let mut lens = [0.0; FIELDS];
            for (field, text) in fields.iter().enumerate() {
                for term in tokenize(text) {
                    freqs.entry(term).or_default()[field] += 1.0;
                    lens[field] += 1.0;
                }
            }
            index.lens.push(lens);
            for (term, freq) in freqs {
                posting_list(&mut index.terms, &mut index.postings, term).push((doc, freq));
            }
        }
        let n = index.lens.len().max(1) as f32;
        for field in 0..FIELDS {
            index.avg_lens[field] = (index.lens.iter().map(|l| l[field]).sum::<f32>() / n).max(f32::MIN_POSITIVE);
        }
        index
    }

    /// The score of every document for `query` (0 for documents that share no term).
    #[must_use]
    pub fn scores(&self, query: &str) -> Vec<f32> {
        let mut terms = tokenize(query);
        terms.sort_unstable();
        terms.dedup();
        let docs = self.lens.len() as f32;
        let mut scores = vec![0.0_f32; self.lens.len()];
        for list in terms.iter().filter_map(|term| self.terms.get(term)).map(|&id| &self.postings[id]) {
            let df = list.len() as f32;
            let idf = (1.0 + (docs - df + 0.5) / (df + 0.5)).ln();
            for (doc, freqs) in list {
                let lens = &self.lens[*doc];
                let weighted: f32 = (0..FIELDS)
                    .filter(|&f| freqs[f] > 0.0)
                    .map(|f| self.weights[f] * freqs[f] / (1.0 - self.b[f] + self.b[f] * lens[f] / self.avg_lens[f]))
                    .sum();
                scores[*doc] += idf * weighted * (K1 + 1.0) / (weighted + K1);
            }
        }
        scores
    }
}

/// The postings of `term`, added (empty) if the index has not seen it yet.
fn posting_list<'a, P>(
    terms: &mut HashMap<String, usize>,
    postings: &'a mut Vec<Vec<P>>,
    term: String,
) -> &'a mut Vec<P> {
    let id = *terms.entry(term).or_insert_with(|| {
        postings.push(Vec::new());
        postings.len() - 1
    });
    &mut postings[id]
}

/// Splits text into search terms.
///
/// Text is split into words on every non-alphanumeric character (so snake_case, kebab-case and
/// dotted names come apart), at camelCase/PascalCase boundaries (`getTinyImage` → `get`, `tiny`,
/// `image`; `HTMLParser` → `html`, `parser`) and between letters and digits (`base64` → `base`,
/// `64`). Words are lower-cased; one-letter words and a few stop words (`the`, `and`, `of`, ...)
/// are dropped (numbers are kept), and the rest are lightly stemmed (see [`stem`]).
#[must_use]
pub fn tokenize(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    for word in words(text) {
        push_term(&mut terms, &word);
    }
    terms
}

/// The lower-cased words of `text`: split on every non-alphanumeric character, at
/// camelCase/PascalCase boundaries and between letters and digits (see [`tokenize`]).
#[must_use]
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for run in text.split(|c: char| !c.is_alphanumeric()).filter(|run| !run.is_empty()) {
        let chars: Vec<char> = run.chars().collect();
        let mut start = 0;
        for i in 1..=chars.len() {
            let boundary = match (chars.get(i - 1), chars.get(i), chars.get(i + 1)) {
                (_, None, _) => true,
                (Some(&prev), Some(&cur), next) => {
                    (prev.is_lowercase() && cur.is_uppercase())
                        || (prev.is_numeric() != cur.is_numeric())
                        || (prev.is_uppercase() && cur.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
                }
                (None, Some(_), _) => false,
            };
            if boundary {
                let word: String = chars.get(start..i).unwrap_or_default().iter().collect();
                words.push(word.to_lowercase());
                start = i;
            }
        }
    }
    words
}

/// Adds `word` (lower-case) to `terms` unless it is too short or a stop word.
fn push_term(terms: &mut Vec<String>, word: &str) {
    let is_number = word.chars().all(char::is_numeric);
    if (word.chars().count() < 2 && !is_number) || STOP_WORDS.contains(&word) {
        return;
    }
    terms.push(stem(word));
}

/// Light suffix stripping for lower-case ASCII words, so that inflected forms meet:
///
/// 1. plurals: `entries` → `entry`, `classes` → `class`, `images` → `image` (but not `class`,
///    `status`, `analysis`, or words of three letters or fewer);
/// 2. `-ing` / `-ed` when at least three letters remain, undoubling a final consonant
///    (`adding`/`added` → `add`, `stopped` → `stop`, `creating` → `creat`);
/// 3. a final silent `e` of words longer than three letters (`create` → `creat`, `image` → `imag`).
///
/// Stems need not be words; they only have to agree between documents and queries. Other words
/// (digits, non-ASCII) are returned unchanged.
#[must_use]
pub fn stem(word: &str) -> String {
    if !word.bytes().all(|b| b.is_ascii_lowercase()) {
        return word.to_owned();
    }
    let mut w = word.to_owned();
    if w.len() > 4 && w.ends_with("ies") {
        w.truncate(w.len() - 3);
        w.push('y');
    } else if w.ends_with("sses") {
        w.truncate(w.len() - 2);
    } else if w.len() > 3 && w.ends_with('s') && !["ss", "us", "is"].iter().any(|end| w.ends_with(end)) {
        w.pop();
    }
    let has_vowel = |s: &str| s.bytes().any(|b| b"aeiouy".contains(&b));
    if let Some(stem) = ["ing", "ed"].iter().find_map(|suffix| w.strip_suffix(suffix)) {
        if stem.len() >= 3 && has_vowel(stem) {
            let undouble =
                stem.len() >= 4 && matches!(stem.as_bytes(), [.., a, b] if a == b && !b"aeiouylsz".contains(b));
            let keep = if undouble { stem.len() - 1 } else { stem.len() };
            w.truncate(keep);
        }
    }
    if w.len() > 3 && w.ends_with('e') {
        w.pop();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(docs: &[(&str, &str)]) -> SearchIndex {
        let docs: Vec<(String, String)> = docs.iter().map(|(n, b)| (n.to_string(), b.to_string())).collect();
        SearchIndex::new(&docs)
    }

    fn everything() -> SearchIndex {
        build(&[
            ("everything.echo", "Echoes back the input. message: Message to echo"),
            ("everything.add", "Adds two numbers. a: First number b: Second number"),
            ("everything.get_tiny_image", "Returns the MCP_TINY_IMAGE"),
            (
                "everything.long_running_operation",
                "Demonstrates a long running operation with progress updates. duration steps",
            ),
            ("everything.sample_llm", "Samples from an LLM using MCP's sampling feature. prompt maxTokens"),
            ("filesystem.read_file", "Read the complete contents of a file from the file system. path"),
            (
                "filesystem.list_directory",
                "Get a detailed listing of all files and directories in a specified path. path",
            ),
            ("github.create_issue", "Create a new issue in a GitHub repository. owner repo title body"),
            ("github.search_repositories", "Search for GitHub repositories. query page perPage"),
        ])
    }

    fn top(index: &SearchIndex, query: &str) -> Option<usize> {
        index.search(query, 10).first().map(|&(doc, _)| doc)
    }

    #[test]
    fn tokenizer_splits_words_and_cases() {
        assert_eq!(tokenize("getTinyImage"), ["get", "tiny", "imag"]);
        assert_eq!(tokenize("everything.get_tiny_image"), ["everyth", "get", "tiny", "imag"]);
        assert_eq!(tokenize("list-directory"), ["list", "directory"]);
        assert_eq!(tokenize("HTMLParser parseJSON"), ["html", "parser", "pars", "json"]);
        assert_eq!(tokenize("base64 sha256 v2"), ["bas", "64", "sha", "256", "2"]);
        assert_eq!(tokenize("A the of x"), Vec::<String>::new());
        assert_eq!(tokenize("Größe ÜBER"), ["größe", "über"]);
        assert!(tokenize("").is_empty());
        assert!(tokenize("  --  ..").is_empty());
    }

    #[test]
    fn stemming() {
        for (word, stemmed) in [
            ("numbers", "number"),
            ("number", "number"),
            ("entries", "entry"),
            ("entry", "entry"),
            ("classes", "class"),
            ("class", "class"),
            ("status", "status"),
            ("analysis", "analysis"),
            ("files", "fil"),
            ("file", "fil"),
            ("images", "imag"),
            ("adds", "add"),
            ("adding", "add"),
            ("added", "add"),
            ("stopped", "stop"),
            ("running", "run"),
            ("calling", "call"),
            ("created", "creat"),
            ("creating", "creat"),
            ("create", "creat"),
            ("need", "need"),
            ("thing", "thing"),
            ("bus", "bus"),
            ("64", "64"),
            ("größe", "größe"),
        ] {
            assert_eq!(stem(word), stemmed, "{word}");
        }
    }

    #[test]
    fn echo_ranks_first() {
        assert_eq!(top(&everything(), "echo"), Some(0));
        assert_eq!(top(&everything(), "ECHO the message"), Some(0));
    }

    #[test]
    fn add_numbers_ranks_add_first() {
        let index = everything();
        assert_eq!(top(&index, "add numbers"), Some(1));
        assert_eq!(top(&index, "adding two number"), Some(1));
    }

    #[test]
    fn camel_case_and_plural_match() {
        let index = everything();
        assert_eq!(top(&index, "tinyImage"), Some(2));
        assert_eq!(top(&index, "tiny images"), Some(2));
        assert_eq!(top(&index, "repository search"), Some(8));
        assert_eq!(top(&index, "create issues"), Some(7));
        assert_eq!(top(&index, "read file"), Some(5));
        assert_eq!(top(&index, "directories"), Some(6));
    }

    #[test]
    fn name_outweighs_body() {
        let index =
            build(&[("docs.describe", "Mentions the word image in passing"), ("media.image", "Returns a picture")]);
        assert_eq!(index.search("image", 10).iter().map(|&(d, _)| d).collect::<Vec<_>>(), [1, 0]);
    }

    #[test]
    fn scores_are_positive_sorted_and_limited() {
        let index = everything();
        let hits = index.search("file path repositories", 10);
        assert!(hits.len() >= 3);
        assert!(hits.iter().all(|&(_, score)| score > 0.0));
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(index.search("file path repositories", 2), hits[..2]);
        assert!(index.search("file", 0).is_empty());
    }

    #[test]
    fn ties_are_broken_by_index() {
        let index = build(&[("a.one", "same words"), ("b.two", "same words"), ("c.three", "other")]);
        let hits = index.search("same", 10);
        assert_eq!(hits.iter().map(|&(d, _)| d).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(hits[0].1, hits[1].1);
    }

    #[test]
    fn no_match_or_empty_query() {
        let index = everything();
        assert!(index.search("zebra", 10).is_empty());
        assert!(index.search("", 10).is_empty());
        assert!(index.search(" .- ", 10).is_empty());
        assert!(index.search("the of", 10).is_empty());
        assert!(SearchIndex::new(&[]).search("echo", 10).is_empty());
        let blank = build(&[("", ""), ("", "")]);
        assert!(blank.search("echo", 10).is_empty());
        assert_eq!(blank.len(), 2);
    }
}
