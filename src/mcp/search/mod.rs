//! Tool search: what Code Mode's `search` tool ranks tools with.
//!
//! An agent describes what it wants in its own words ("make a new folder", "forget
//! what you know about Bob"); the tool it needs may say neither (`create_directory`,
//! `delete_entities`). Ranking is a hybrid of two signals:
//!
//! - **Words** ([`lexical::Bm25f`]): BM25F over six fields of each tool, each with its
//!   own weight ([`FIELD_WEIGHTS`]): its name (and title), its server's name and
//!   description, its description, its parameters' names, their descriptions, and
//!   their enum values (`merge_method: "squash"` finds the merge tool for "squash
//!   and land"). Exact words and their forms (stemmed) are precise when they match.
//! - **Meaning** ([`embed::Table`]): a static embedding of the query and of each tool
//!   (its name words, description and parameter descriptions), compared by cosine.
//!   The table holds one vector per WordPiece token, distilled from the sentence
//!   model all-MiniLM-L6-v2 and then trained so that the sum of a sentence's token
//!   vectors matches the full model's embedding of that sentence, over 227,000
//!   definitions and examples from WordNet (see `embeddings/README.md`). It knows
//!   that a folder is a directory and a picture an image without any word in common,
//!   and costs a few table lookups per query: no model runs at query time.
//!
//! The score is the word score divided by the best word score for the query, plus
//! [`DENSE_WEIGHT`] times the cosine. Both parts are deterministic. Common developer
//! abbreviations in the query ("PR", "repo", "db", "dir") are spelled out first.
//!
//! # Why this method, in figures
//!
//! Measured on the evaluation set in `tests/search` (real servers' tools, agent-style
//! requests; `cargo bench --bench search`), tuning split, recall at 5 (the choices
//! below were made on this split only):
//!
//! | method | recall@5 |
//! |---|---:|
//! | BM25, name and body (the previous ranking) | 41% |
//! | BM25F over six fields | 41–44% |
//! | static embeddings alone, distilled only (128 dimensions) | 46% |
//! | static embeddings alone, distilled then trained (256 dimensions) | 61% |
//! | the hybrid, 128-dimension distilled table | 53% |
//! | the hybrid, 256-dimension trained table | 63% |
//! | the same, abbreviations spelled out | 66% |
//! | a 384-dimension trained table instead | 68% (lower MRR: 0.527 against 0.532) |
//! | 256 dimensions, abbreviations and `SYNONYMS` (operations, nouns) spelled out | 71% (MRR 0.576) |
//! | the same, servers first and parameters counting 0.15 in the meaning (below) | 83% (MRR 0.568) |
//! | the same, tokens' forms read and reading or changing weighed (below) | 89% (MRR 0.670) |
//! | the same, with more everyday names in `SYNONYMS` | 90% (MRR 0.682) |
//! | the same, a server named by its product's name weighing heavily (below) | 91% (MRR 0.704) |
//! | all-MiniLM-L6-v2 itself, run in full (too slow for the 2 ms budget) | 62% |
//! | all-mpnet-base-v2, run in full | 62% |
//!
//! On the held-out split the hybrid reaches 70% at 5 and 37.5% at 1 (plain BM25: 50%
//! and 21%; before the synonyms, 66% and 36%; the two models run in full, 64–66% and
//! 35–44%: `tests/search/models.py`), and a query over 1,000 tools takes 0.2–0.3 ms. WordNet synonyms as query expansion added 1–2 points and much noise
//! (a folder is a "booklet" there, and forget is "bury"), so they are not used; the
//! short table of API operations and developer nouns is what helped ("new" is not in
//! it: it is as often a name, New York, as a request to create). The weight of
//! the meaning, tried again with the synonyms (3 to 10), moved the tuning split by a
//! request or two either way, so it stays at 6.
//!
//! # Servers first, then tools
//!
//! In a catalog of many servers, one word shared with an unrelated server can pull
//! that server's tool to the top ("notes" in a request about the agent's memory finds a
//! spreadsheet's cell-note tool). So each tool's score also gets its server's score
//! ([`Tuning`]), which says how much the request is about that server as a whole:
//!
//! - **words** over the server's name, its description (the operator's; see
//!   `[[mcp.servers]] description`), its tools' names and the first sentences of their
//!   descriptions, with the name and description weighted most
//!   ([`SERVER_FIELD_WEIGHTS`]): a request that names the server or its domain ("in
//!   the tracker", "in this checkout") weighs that server heavily;
//! - **meaning**: the cosine of the request with the server's summary (name and
//!   description, or its tools' names when it has none) and with the mean of its
//!   tools' vectors.
//!
//! - **names**: a request that names a server's product ("in Linear", "the Jira
//!   ticket") adds [`NAMED_WEIGHT`] to that server's tools. Its names are its own and
//!   the capitalised words of its description, less acronyms and those two servers
//!   share; one that is an everyday word ("Linear", "Notion") counts only written as
//!   a name, capitalised and not opening the request.
//!
//! A server that matches only through one stray word scores low on all of them, so its
//! tool drops below the tools of the server the request is about. And a prefix all of
//! a server's tools share (`linear_`, `browser_`) is left out of their names' words,
//! which then say only what sets each tool apart.
//!
//! On the organisation-sized set in `tests/search/large` (29 servers, 696 tools),
//! servers first take held-out recall at 5 from 59.3% to 66.0% and the right server
//! among the first three from 81.3% to 86.0%; on the reference set, held-out recall
//! at 5 goes from 75% to 77.5%. In the same change a tool's parameter descriptions
//! came to count less in its meaning ([`PARAMS_IN_MEANING`]): they had drowned short
//! descriptions, and that gained 3–4 points at 5 on both tuning splits.
//!
//! # What a token is, and what a request asks
//!
//! Two readings of the request itself, before any tool is scored:
//!
//! - **A token's form** says what it refers to (`kind_of`): `#deploys` is a chat
//!   channel, `@dana` a user, `jane@acme.com` an email address, a URL a web page,
//!   `Q3_budget.xlsx` a spreadsheet, `*.test.ts` files matching a pattern, `src/` a
//!   directory, `ENG-431` an issue, `B2:D10` a range of cells. The query is given the
//!   words tools use for each, as it is given an abbreviation's long form. A noun's
//!   verb followed by an article ("file a ticket", "open a PR") asks to create one.
//! - **Reading or changing** ([`OPERATION_WEIGHT`]): a request that opens with a
//!   question or a verb of looking asks to read; one that opens with, or holds, a
//!   verb of changing asks to change. A tool reads when its server marks it
//!   `readOnlyHint`, else by the first verb of its name. Among a server's tools that
//!   share their nouns (`create_property`, `list_properties`), this is often all
//!   that tells them apart.
//!
//! On the organisation's held-out split the two took recall at 5 from 66.0% to
//! 70.7% and at 1 from 42.0% to 46.0%, and more `SYNONYMS` then to 75.3% and 47.3%;
//! on the reference set's, from 77.5% to 85.0% at 5 in all. Naming servers then
//! took the organisation's to 76.7% at 5.
//!
//! # When nothing fits
//!
//! [`SearchIndex::search`] also says whether the best hit is a [`Match::Weak`] one:
//! the meaning of the query is far from every tool ([`WEAK_COSINE`]). `search` then
//! says so and lists the caller's servers with a line on each and their tools' names,
//! so the agent can ask again in the catalog's terms (the closest tools still follow).

pub mod embed;
pub mod lexical;

pub use lexical::{stem, tokenize};

use lexical::{Bm25f, Fields, FIELDS};

/// Field weights of the word score, in the order of [`Document`]'s fields.
pub const FIELD_WEIGHTS: [f32; FIELDS] = [3.0, 0.5, 2.0, 0.3, 0.3, 0.5];
/// Length normalisation of each field.
const FIELD_B: [f32; FIELDS] = [0.75; FIELDS];
/// How much a tool's parameters' descriptions count in its meaning, against its name
/// and description.
pub const PARAMS_IN_MEANING: f32 = 0.15;
/// How much the meaning counts against the (normalised) word score.
pub const DENSE_WEIGHT: f32 = 6.0;
/// Below this best cosine, nothing fits the query: on the tuning split, a quarter of
/// real requests score under 0.30 and a tenth under 0.24, while requests no tool
/// serves ("bake a cake", "book a flight") mostly score 0.14–0.25. Words are no
/// guide here: vague requests match common words ("data", "make") as often as not.
pub const WEAK_COSINE: f32 = 0.25;

/// Abbreviations developers write for what tools spell out, and their long forms.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("pr", "pull request"),
    ("prs", "pull requests"),
    ("mr", "merge request"),
    ("mrs", "merge requests"),
    ("repo", "repository"),
    ("repos", "repositories"),
    ("db", "database"),
    ("dbs", "databases"),
    ("dir", "directory"),
    ("dirs", "directories"),
    ("js", "javascript"),
    ("ts", "typescript"),
    ("py", "python"),
    ("env", "environment"),
    ("config", "configuration"),
    ("cfg", "configuration"),
    ("msg", "message"),
    ("msgs", "messages"),
    ("info", "information"),
    ("doc", "document"),
    ("docs", "documents documentation"),
    ("img", "image"),
    ("imgs", "images"),
    ("pic", "picture"),
    ("pics", "pictures"),
    ("auth", "authentication"),
    ("ci", "continuous integration"),
    ("id", "identifier"),
    ("ids", "identifiers"),
    ("tz", "timezone"),
    ("addr", "address"),
    ("dm", "direct message"),
    ("gh", "github"),
    ("k8s", "kubernetes"),
];

/// Words agents use for what tool catalogs name otherwise: the operations of
/// create/read/update/delete/search APIs under their everyday names ("forget" for
/// delete), and the nouns developer tools spell their own way ("folder" for
/// directory, "ticket" for issue). Each is followed in the query by the catalog's
/// word, as an abbreviation is by its long form. From general API vocabulary, not
/// from the evaluation's requests.
const SYNONYMS: &[(&str, &str)] = &[
    // create
    ("make", "create"),
    ("generate", "create"),
    ("register", "create"),
    // delete
    ("remove", "delete"),
    ("forget", "delete"),
    ("drop", "delete"),
    ("erase", "delete"),
    ("destroy", "delete"),
    ("discard", "delete"),
    ("purge", "delete"),
    ("wipe", "delete"),
    ("trash", "delete"),
    ("rid", "delete"),
    // update
    ("change", "update"),
    ("edit", "update"),
    ("modify", "update"),
    ("alter", "update"),
    ("tweak", "update"),
    ("amend", "update"),
    ("revise", "update"),
    // read
    ("fetch", "get"),
    ("retrieve", "get"),
    ("grab", "get"),
    ("obtain", "get"),
    ("enumerate", "list"),
    // search
    ("find", "search"),
    ("locate", "search"),
    ("lookup", "search"),
    ("seek", "search"),
    // remember
    ("remember", "memory"),
    ("recall", "memory"),
    ("memorize", "memory"),
    // nouns
    ("folder", "directory"),
    ("folders", "directories"),
    ("picture", "image"),
    ("pictures", "images"),
    ("photo", "image"),
    ("photos", "images"),
    ("ticket", "issue"),
    ("tickets", "issues"),
    ("bug", "issue"),
    ("bugs", "issues"),
    ("sprint", "cycle iteration"),
    ("sprints", "cycles iterations"),
    ("iteration", "cycle"),
    ("iterations", "cycles"),
    ("tag", "label"),
    ("tags", "labels"),
    ("relabel", "label"),
    ("remark", "comment"),
    ("follow", "watcher"),
    ("watch", "watcher"),
    ("owner", "assign"),
    ("assignee", "assign"),
    ("land", "merge"),
    ("xhr", "network request"),
    ("ajax", "network request"),
    ("latitude", "coordinates"),
    ("longitude", "coordinates"),
    ("know", "knowledge"),
    ("slow", "performance latency"),
    ("slowest", "performance latency"),
    ("broken", "errors"),
    ("failing", "errors"),
    ("crashing", "errors"),
    ("note", "comment observation"),
    ("notes", "comments observations"),
    ("silence", "mute"),
    ("child", "subtask"),
    ("history", "log"),
    ("plus", "sum"),
    ("save", "write"),
    ("button", "click"),
    ("approve", "review"),
    ("bulk", "batch"),
];

/// `query` with each abbreviation (a whole word, any case) followed by its long form,
/// and each of the [`SYNONYMS`] by the catalog's word, so both the words and the
/// meaning see it spelled out.
fn spell_out(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut previous = String::new();
    for (i, word) in query.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        let bare = word.trim_matches(|c: char| !c.is_alphanumeric()).to_ascii_lowercase();
        // "file a ticket", "open a PR", "log a call", "raise a request": a noun's
        // verb, followed by an article, is a request to create one.
        if matches!(bare.as_str(), "a" | "an") && MAKING.contains(&previous.as_str()) {
            out.push_str(" create");
        }
        if bare == "many" && previous == "how" {
            out.push_str(" count");
        }
        previous.clone_from(&bare);
        if let Some((_, long)) = ABBREVIATIONS.iter().chain(SYNONYMS).find(|(short, _)| *short == bare) {
            out.push(' ');
            out.push_str(long);
        }
        if let Some(kind) = kind_of(word) {
            out.push(' ');
            out.push_str(kind);
        }
    }
    out
}

/// Verbs that, followed by "a" or "an", ask to create something ("file a bug").
const MAKING: &[&str] = &["file", "open", "log", "raise", "cut", "draft", "write", "start", "kick"];

/// File extensions and what a file of each kind is, in the words tools use for it.
const EXTENSIONS: &[(&[&str], &str)] = &[
    (&["xlsx", "xlsm", "xls", "ods"], "spreadsheet workbook sheet excel file"),
    (&["csv", "tsv"], "spreadsheet table file"),
    (&["db", "sqlite", "sqlite3"], "sqlite database file"),
    (&["png", "jpg", "jpeg", "gif", "webp", "svg"], "image file"),
    (&["pdf", "docx"], "document file"),
    (
        &[
            "ts", "tsx", "js", "jsx", "mjs", "cjs", "json", "md", "txt", "yaml", "yml", "toml", "py", "rs", "go",
            "java", "rb", "c", "h", "cpp", "cs", "sh", "html", "css", "xml", "ini", "lock", "log", "env",
        ],
        "file",
    ),
];

/// What a token of a request refers to, in the words tools use for it, when its form
/// says so: `#deploys` is a chat channel, `@dana` a user, `jane@acme.com` an email
/// address, a URL a web page, `report.xlsx` a spreadsheet, `*.test.ts` files matched
/// by a pattern, `src/` a directory, `ENG-431` an issue in a tracker, `B2:D10` a
/// range of cells. Agents write these forms as they are; the tools that act on them
/// say what they are.
fn kind_of(word: &str) -> Option<&'static str> {
    let word = word.trim_matches(|c: char| matches!(c, ',' | ';' | '?' | '!' | '(' | ')' | '"' | '\'' | '`'));
    let word = word.strip_suffix(['.', ':']).unwrap_or(word);
    let is_name = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let percentile = word.strip_prefix(['p', 'P']).filter(|n| (2..=4).contains(&n.len()));
    if percentile.is_some_and(|n| n.chars().all(|c| c.is_ascii_digit() || c == '.')) {
        return Some("percentile latency metrics");
    }
    if word.contains("://") || word.starts_with("www.") {
        return Some("url web page");
    }
    if let Some(channel) = word.strip_prefix('#') {
        return (is_name(channel) && !channel.chars().all(|c| c.is_ascii_digit())).then_some("channel");
    }
    if let Some(user) = word.strip_prefix('@') {
        return is_name(user).then_some("user");
    }
    if let Some((local, domain)) = word.split_once('@') {
        return (is_name(local) && domain.contains('.') && is_name(domain)).then_some("email address");
    }
    if let Some((key, number)) = word.split_once('-') {
        let key_like = key.len() >= 2 && key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if key_like && key.starts_with(|c: char| c.is_ascii_uppercase()) && number.parse::<u32>().is_ok() {
            return Some("issue");
        }
    }
    if let Some((from, to)) = word.split_once(':') {
        let cell = |s: &str| {
            let letters = s.chars().take_while(char::is_ascii_uppercase).count();
            (1..=3).contains(&letters) && s.len() > letters && s[letters..].chars().all(|c| c.is_ascii_digit())
        };
        if cell(from) && cell(to) {
            return Some("range cells sheet");
        }
    }
    if word.len() > 1 && word.ends_with('/') && is_name(word.trim_matches('/').replace('/', "").as_str()) {
        return Some("directory");
    }
    let (stem, extension) = word.rsplit_once('.')?;
    let extension = extension.to_ascii_lowercase();
    let kind = EXTENSIONS.iter().find(|(extensions, _)| extensions.contains(&extension.as_str()))?.1;
    let pattern = stem.contains('*');
    let named = stem.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '*'));
    match (named, pattern) {
        (true, true) => Some(if kind == "file" { "files matching pattern" } else { kind }),
        (true, false) => Some(kind),
        (false, _) => None,
    }
}

/// Whether a tool, or what a request asks for, reads or changes something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Read,
    Change,
    Unknown,
}

/// How much a tool gains when what it does (reads or changes) is what the request
/// asks for, and loses when it is the other.
pub const OPERATION_WEIGHT: f32 = 0.3;

/// The verbs tool names start with when they read.
const READ_VERBS: &[&str] = &[
    "get", "list", "search", "read", "find", "query", "describe", "fetch", "retrieve", "count", "show", "explain",
    "inspect", "view", "lookup", "browse", "analyze", "analyse", "download", "export", "check", "status", "diff",
    "log", "logs", "info", "stats",
];

/// The verbs tool names start with when they change something.
const CHANGE_VERBS: &[&str] = &[
    "create",
    "add",
    "update",
    "delete",
    "remove",
    "set",
    "patch",
    "put",
    "insert",
    "write",
    "edit",
    "move",
    "rename",
    "archive",
    "unarchive",
    "assign",
    "transfer",
    "merge",
    "close",
    "upload",
    "push",
    "cancel",
    "schedule",
    "install",
    "uninstall",
    "upgrade",
    "apply",
    "scale",
    "drop",
    "complete",
    "convert",
    "fork",
    "reset",
    "commit",
    "checkout",
    "post",
    "send",
    "reply",
    "mark",
    "transition",
    "link",
    "unlink",
    "replace",
    "append",
    "clear",
    "restart",
    "run",
    "exec",
    "execute",
    "trigger",
    "start",
    "stop",
    "pause",
    "resume",
    "import",
    "batch",
    "store",
    "save",
    "invite",
    "cleanup",
    "duplicate",
    "copy",
    "format",
    "rotate",
    "revoke",
    "grant",
    "enable",
    "disable",
    "subscribe",
    "unsubscribe",
    "mute",
    "unmute",
    "pin",
    "unpin",
    "star",
    "unstar",
    "favorite",
    "lock",
    "unlock",
    "restore",
];

/// How much the tools of a server the request names gain: about what the meaning
/// spreads a server's tools over, so a named server's tools lead and still keep
/// their order (1 to 5 were tried: from 2 on, the tuning splits change no more at 5).
pub const NAMED_WEIGHT: f32 = 2.0;

/// What tool `own_words` (its name without its server's shared prefix) does: its
/// server's `readOnlyHint` when it gave one, else the first verb of its name.
fn tool_operation(read_only: Option<bool>, own_words: &str) -> Operation {
    if read_only == Some(true) {
        return Operation::Read;
    }
    for word in lexical::words(own_words).iter().take(3) {
        if READ_VERBS.contains(&word.as_str()) && read_only.is_none() {
            return Operation::Read;
        }
        if CHANGE_VERBS.contains(&word.as_str()) {
            return Operation::Change;
        }
    }
    if read_only == Some(false) {
        Operation::Change
    } else {
        Operation::Unknown
    }
}

/// Words that open a request to read: questions, and the verbs of looking.
const ASKING: &[&str] = &[
    "what",
    "whats",
    "which",
    "who",
    "whos",
    "whose",
    "where",
    "wheres",
    "when",
    "why",
    "how",
    "hows",
    "is",
    "are",
    "was",
    "were",
    "does",
    "do",
    "did",
    "has",
    "have",
    "show",
    "list",
    "find",
    "search",
    "look",
    "get",
    "fetch",
    "read",
    "count",
    "give",
    "describe",
    "explain",
    "check",
    "see",
    "view",
    "display",
    "print",
    "summarize",
    "summarise",
    "any",
    "locate",
    "retrieve",
    "grab",
];

/// Words that ask for a change wherever they stand (the query as spelled out, so
/// "forget" has brought "delete" with it).
const CHANGING: &[&str] = &[
    "create",
    "add",
    "make",
    "update",
    "delete",
    "remove",
    "set",
    "post",
    "put",
    "insert",
    "write",
    "edit",
    "move",
    "rename",
    "archive",
    "assign",
    "transfer",
    "merge",
    "close",
    "upload",
    "push",
    "cancel",
    "schedule",
    "install",
    "uninstall",
    "upgrade",
    "apply",
    "scale",
    "attach",
    "tag",
    "label",
    "relabel",
    "save",
    "send",
    "tell",
    "reply",
    "comment",
    "mark",
    "resolve",
    "start",
    "kick",
    "bump",
    "deploy",
    "invite",
    "restrict",
    "lock",
    "append",
    "submit",
    "register",
    "rotate",
    "revoke",
    "grant",
    "enable",
    "disable",
    "restart",
    "stop",
    "pause",
    "resume",
    "import",
    "link",
    "fork",
    "commit",
    "stage",
    "unstage",
    "reset",
    "clone",
    "publish",
    "change",
    "modify",
    "drop",
];

/// Words before the verb that say nothing of what is asked: "please", "can you".
const POLITE: &[&str] = &[
    "please", "can", "could", "would", "will", "you", "i", "we", "let", "lets", "us", "want", "to", "need", "now",
    "then", "also", "just", "go", "ahead", "and",
];

/// What `query` (spelled out) asks for: a change when it opens with, or holds, a verb
/// of changing; a read when it opens with a question or a verb of looking; else
/// [`Operation::Unknown`].
fn query_operation(query: &str) -> Operation {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| w.chars().filter(char::is_ascii_alphabetic).collect::<String>().to_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let first = words.iter().find(|w| !POLITE.contains(&w.as_str()));
    let Some(first) = first else { return Operation::Unknown };
    if CHANGING.contains(&first.as_str()) {
        return Operation::Change;
    }
    // "how do I create…", "can I delete…": the question is about a change.
    let asks_how = matches!(first.as_str(), "how" | "where" | "can");
    if asks_how && words.iter().skip(1).take(4).any(|w| CHANGING.contains(&w.as_str())) {
        return Operation::Change;
    }
    if ASKING.contains(&first.as_str()) {
        return Operation::Read;
    }
    if words.iter().any(|w| CHANGING.contains(&w.as_str())) {
        Operation::Change
    } else {
        Operation::Unknown
    }
}

/// How a search ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// BM25 over a name and a body: the ranking before this module, kept as the
    /// evaluation's baseline.
    Bm25,
    /// Words and meaning together (see the module docs): what `search` uses.
    Hybrid,
}

/// A tool as the index sees it.
#[derive(Clone, Debug, Default)]
pub struct Document {
    /// `server.tool`, its upstream name and title.
    pub name: String,
    pub description: String,
    pub param_names: String,
    pub param_descriptions: String,
    /// Enum and const values of its parameters.
    pub enum_values: String,
    /// The tool's own name in words (`create_directory` → `create directory`), for the
    /// embedding.
    pub tool_words: String,
    /// Its server's name: tools are grouped by it (see [`Tuning`]), and found by it
    /// and the server's description.
    pub server_name: String,
    /// Its server's description, when the operator gave one.
    pub server_description: String,
    /// Whether the tool only reads (its server's `readOnlyHint`), when the server says.
    pub read_only: Option<bool>,
}

/// How well the best hit matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The meaning of the query is close to some tool's.
    Good,
    /// Nothing scores well: better to show the agent what exists.
    Weak,
}

/// How much a tool's server counts in its score (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Weight of the server's score, added to each of its tools' scores.
    pub server: f32,
    /// Within the server's score: its words (BM25F over its name, description and
    /// tools), normalised by the best server's.
    pub server_words: f32,
    /// Within the server's score: the cosine of the query with its summary (name and
    /// description, or its tools' names when it has no description).
    pub server_meaning: f32,
    /// Within the server's score: the cosine of the query with the mean of its tools'
    /// vectors.
    pub server_centroid: f32,
}

impl Tuning {
    /// Tools ranked on their own, whatever their server: the ranking before servers
    /// counted.
    pub const FLAT: Tuning = Tuning { server: 0.0, server_words: 0.0, server_meaning: 0.0, server_centroid: 0.0 };
    /// What `search` uses: the best of a grid on the tuning splits of both evaluation
    /// sets (`cargo bench --bench search -- --tune`). A fourth part, the server's best
    /// tool score, was tried and is left out: at every weight it did no better.
    pub const DEFAULT: Tuning = Tuning { server: 0.5, server_words: 0.5, server_meaning: 4.0, server_centroid: 4.0 };
}

/// Field weights of a server's word score: its name, its description, its tools'
/// names, their descriptions, their parameters' names (the sixth field is unused).
pub const SERVER_FIELD_WEIGHTS: [f32; FIELDS] = [4.0, 2.0, 1.0, 0.3, 0.1, 0.0];

/// One server as the index sees it.
#[derive(Debug, Clone)]
struct Group {
    summary: embed::Vector,
    centroid: embed::Vector,
}

/// The index over one catalog's tools.
#[derive(Debug, Clone, Default)]
pub struct SearchIndex {
    baseline: lexical::SearchIndex,
    words: Bm25f,
    vectors: Vec<embed::Vector>,
    /// Each tool's server, an index into `groups`.
    group_of: Vec<usize>,
    groups: Vec<Group>,
    server_words: Bm25f,
    /// What each tool does: reads or changes.
    operations: Vec<Operation>,
    /// The product names each server goes by (lower-case), and the server.
    named: Vec<(String, usize)>,
}

impl SearchIndex {
    #[must_use]
    pub fn new(docs: &[Document]) -> Self {
        let baseline: Vec<(String, String)> = docs
            .iter()
            .map(|d| {
                let body = format!("{} {} {}", d.description, d.param_names, d.param_descriptions);
                (d.name.clone(), body)
            })
            .collect();
        let mut names: Vec<&str> = Vec::new();
        let group_of: Vec<usize> = docs
            .iter()
            .map(|d| match names.iter().position(|n| *n == d.server_name) {
                Some(group) => group,
                None => {
                    names.push(&d.server_name);
                    names.len() - 1
                }
            })
            .collect();
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        for (doc, &group) in group_of.iter().enumerate() {
            members[group].push(doc);
        }
        // A prefix every tool of a server shares (`linear_`, `browser_`) says nothing
        // about which of its tools is meant: each tool's own words are the rest.
        let prefixes: Vec<&str> = members
            .iter()
            .map(|tools| shared_prefix(&tools.iter().map(|&d| docs[d].tool_words.as_str()).collect::<Vec<_>>()))
            .collect();
        let own_words = |d: usize| {
            let prefix = prefixes[group_of[d]];
            docs[d].tool_words.strip_prefix(prefix).unwrap_or(&docs[d].tool_words)
        };
        let fields: Vec<Fields> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let prefix = prefixes[group_of[i]];
                let name = if prefix.is_empty() { d.name.clone() } else { d.name.replace(prefix, "") };
                [
                    name,
                    format!("{} {}", d.server_name, d.server_description),
                    d.description.clone(),
                    d.param_names.clone(),
                    d.param_descriptions.clone(),
                    d.enum_values.clone(),
                ]
            })
            .collect();
        let table = embed::Table::get();
        let vectors: Vec<embed::Vector> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let own = table.embed(&format!("{} {}", own_words(i), d.description));
                let params = table.embed(&d.param_descriptions);
                let mut meaning: Vec<f32> = own.iter().zip(&params).map(|(a, b)| a + PARAMS_IN_MEANING * b).collect();
                embed::normalize(&mut meaning);
                meaning
            })
            .collect();
        let mut server_fields: Vec<Fields> = vec![Default::default(); names.len()];
        let mut groups: Vec<Group> = Vec::with_capacity(names.len());
        for (group, (name, members)) in names.iter().zip(&members).enumerate() {
            let first = &docs[members[0]];
            let tool_words: Vec<&str> = members.iter().map(|&d| docs[d].tool_words.as_str()).collect();
            let first_sentences: Vec<&str> = members.iter().map(|&d| first_sentence(&docs[d].description)).collect();
            let param_names: Vec<&str> = members.iter().map(|&d| docs[d].param_names.as_str()).collect();
            server_fields[group] = [
                name.to_string(),
                first.server_description.clone(),
                tool_words.join(" "),
                first_sentences.join(" "),
                param_names.join(" "),
                String::new(),
            ];
            let summary = if first.server_description.is_empty() {
                table.embed(&format!("{name} {}", tool_words.join(" ")))
            } else {
                table.embed(&format!("{name} {}", first.server_description))
            };
            let mut centroid = vec![0.0_f32; table.dims()];
            for &d in members {
                centroid.iter_mut().zip(&vectors[d]).for_each(|(c, v)| *c += v);
            }
            embed::normalize(&mut centroid);
            groups.push(Group { summary, centroid });
        }
        let operations = docs.iter().enumerate().map(|(i, d)| tool_operation(d.read_only, own_words(i))).collect();
        let products: Vec<Vec<String>> = names
            .iter()
            .zip(&members)
            .map(|(name, members)| proper_names(name, &docs[members[0]].server_description))
            .collect();
        // A name two servers share tells neither apart.
        let shared = |word: &String, group: usize| {
            products.iter().enumerate().any(|(other, words)| other != group && words.contains(word))
        };
        let named = products
            .iter()
            .enumerate()
            .flat_map(|(group, words)| words.iter().map(move |word| (word, group)))
            .filter(|&(word, group)| !shared(word, group))
            .map(|(word, group)| (word.clone(), group))
            .collect();
        Self {
            baseline: lexical::SearchIndex::new(&baseline),
            words: Bm25f::new(&fields, FIELD_WEIGHTS, FIELD_B),
            vectors,
            group_of,
            groups,
            server_words: Bm25f::new(&server_fields, SERVER_FIELD_WEIGHTS, FIELD_B),
            operations,
            named,
        }
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Every document ranked for `query` by `method`, best first, as (index, score),
    /// with how good the best one is. Equal scores keep index order.
    #[must_use]
    pub fn search(&self, method: Method, query: &str) -> (Vec<(usize, f32)>, Match) {
        match method {
            Method::Bm25 => {
                let hits = self.baseline.search(query, self.len());
                let quality = if hits.is_empty() { Match::Weak } else { Match::Good };
                (hits, quality)
            }
            Method::Hybrid => self.hybrid(query, &Tuning::DEFAULT),
        }
    }

    /// Every document ranked for `query` by the hybrid with these constants: what the
    /// evaluation tunes [`Tuning::DEFAULT`] with.
    #[must_use]
    pub fn search_tuned(&self, query: &str, tuning: &Tuning) -> (Vec<(usize, f32)>, Match) {
        self.hybrid(query, tuning)
    }

    fn hybrid(&self, query: &str, tuning: &Tuning) -> (Vec<(usize, f32)>, Match) {
        let original = query;
        let query = &spell_out(query);
        let words = self.words.scores(query);
        let best_words = words.iter().copied().fold(0.0_f32, f32::max);
        let query_vector = embed::Table::get().embed(query);
        let mut best_cosine = 0.0_f32;
        let mut hits: Vec<(usize, f32)> = self
            .vectors
            .iter()
            .zip(&words)
            .enumerate()
            .map(|(doc, (vector, &word))| {
                let cosine = embed::cosine(&query_vector, vector);
                best_cosine = best_cosine.max(cosine);
                let word = if best_words > 0.0 { word / best_words } else { 0.0 };
                (doc, word + DENSE_WEIGHT * cosine)
            })
            .collect();
        if tuning.server > 0.0 {
            let servers = self.server_scores(query, &query_vector, tuning);
            // Named as the request wrote it: what spelling out adds ("url" for a URL)
            // names nothing.
            let named = self.named_in(original);
            for (doc, score) in &mut hits {
                let group = self.group_of[*doc];
                *score += tuning.server * servers[group];
                if named.contains(&group) {
                    *score += NAMED_WEIGHT;
                }
            }
        }
        let asked = query_operation(query);
        if asked != Operation::Unknown {
            for (doc, score) in &mut hits {
                match self.operations[*doc] {
                    Operation::Unknown => {}
                    done if done == asked => *score += OPERATION_WEIGHT,
                    _ => *score -= OPERATION_WEIGHT,
                }
            }
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let quality = if best_cosine >= WEAK_COSINE { Match::Good } else { Match::Weak };
        (hits, quality)
    }

    /// The servers `query` names: by a product name of theirs that is no everyday
    /// word (`Jira`, `GitHub`, `HubSpot`, in any case), or that is one and is written
    /// as a name (`Linear`, `Notion`, `Slack`: capitalised, not opening the request).
    fn named_in(&self, query: &str) -> Vec<usize> {
        let table = embed::Table::get();
        let mut groups = Vec::new();
        for (i, token) in query.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).enumerate() {
            let lower = token.to_lowercase();
            for (word, group) in &self.named {
                if *word != lower || groups.contains(group) {
                    continue;
                }
                let written_as_name = i > 0 && token.starts_with(char::is_uppercase);
                if written_as_name || !table.knows(word) {
                    groups.push(*group);
                }
            }
        }
        groups
    }

    /// How much `query` is about each server (see [`Tuning`]).
    fn server_scores(&self, query: &str, query_vector: &[f32], tuning: &Tuning) -> Vec<f32> {
        let words = self.server_words.scores(query);
        let best_words = words.iter().copied().fold(0.0_f32, f32::max);
        self.groups
            .iter()
            .zip(&words)
            .map(|(group, &word)| {
                let word = if best_words > 0.0 { word / best_words } else { 0.0 };
                tuning.server_words * word
                    + tuning.server_meaning * embed::cosine(query_vector, &group.summary)
                    + tuning.server_centroid * embed::cosine(query_vector, &group.centroid)
            })
            .collect()
    }
}

/// The product names a server goes by, lower-case: its own name when it is one word,
/// and the capitalised words of its description of two letters or more, acronyms
/// aside (the first, which any sentence capitalises, only when it is the server's
/// name, is written like a product, `GitHub`, or is no everyday word, `Jira`).
fn proper_names(server: &str, description: &str) -> Vec<String> {
    let mut names = Vec::new();
    if !server.contains('_') {
        names.push(server.to_lowercase());
    }
    for (i, word) in description.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).enumerate() {
        let lower = word.to_lowercase();
        let capitalised = word.starts_with(char::is_uppercase);
        // An acronym (`API`, `URL`, `CRM`) is a kind of thing more often than a
        // product: "the payments API" names no search engine's server.
        if word.chars().all(|c| c.is_uppercase() || c.is_ascii_digit()) {
            continue;
        }
        let product_like = word.chars().skip(1).any(char::is_uppercase);
        let first_a_name = lower == server || product_like || !embed::Table::get().knows(&lower);
        if capitalised && word.len() >= 2 && (i > 0 || first_a_name) && !names.contains(&lower) {
            names.push(lower);
        }
    }
    names
}

/// The longest prefix ending in `_` that all of `names` share, when there are at
/// least three of them ("" otherwise).
fn shared_prefix<'a>(names: &[&'a str]) -> &'a str {
    let Some(first) = names.first() else { return "" };
    if names.len() < 3 {
        return "";
    }
    let mut end = 0;
    for (at, _) in first.match_indices('_') {
        let prefix = &first[..=at];
        if names.iter().all(|n| n.starts_with(prefix) && n.len() > prefix.len()) {
            end = at + 1;
        } else {
            break;
        }
    }
    &first[..end]
}

/// The first sentence of a description: what a server's summary takes of each tool.
fn first_sentence(text: &str) -> &str {
    let line = text.trim_start().lines().next().unwrap_or_default();
    match line.find(". ") {
        Some(at) => &line[..at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_shared_only_when_every_tool_has_more_after_it() {
        assert_eq!(shared_prefix(&["linear_getIssues", "linear_createIssue", "linear_getTeams"]), "linear_");
        assert_eq!(shared_prefix(&["API_post_page", "API_post_search", "API_get_user"]), "API_");
        assert_eq!(shared_prefix(&["API_post_page", "API_post_search", "API_post_x"]), "API_post_");
        // Two tools are too few to say what a prefix means; a name is never emptied.
        assert_eq!(shared_prefix(&["git_add", "git_commit"]), "");
        assert_eq!(shared_prefix(&["git_", "git_add", "git_log"]), "");
        assert_eq!(shared_prefix(&["read_file", "write_file", "list_directory"]), "");
        assert_eq!(shared_prefix(&[]), "");
    }

    #[test]
    fn what_a_token_refers_to_is_spelled_out_from_its_form() {
        let cases = [
            ("#deploys", Some("channel")),
            ("#42", None),
            ("@dana", Some("user")),
            ("jane@acme.com,", Some("email address")),
            ("https://example.com/changelog", Some("url web page")),
            ("Q3_budget.xlsx?", Some("spreadsheet workbook sheet excel file")),
            ("report.csv", Some("spreadsheet table file")),
            ("app.db", Some("sqlite database file")),
            ("docker-compose.yml", Some("file")),
            ("*.test.ts", Some("files matching pattern")),
            ("packages/", Some("directory")),
            ("ENG-431", Some("issue")),
            ("PROJ-5.", Some("issue")),
            ("B2:D10", Some("range cells sheet")),
            // Ordinary words, numbers and sentences' ends are nothing in particular.
            ("e.g.", None),
            ("end.", None),
            ("v2.4", None),
            ("two-week", None),
            ("Co-op-1", None),
            ("12:30", None),
            ("/", None),
        ];
        for (word, kind) in cases {
            assert_eq!(kind_of(word), kind, "{word}");
        }
        assert_eq!(spell_out("tell #deploys"), "tell #deploys channel");
        // A noun's verb with an article asks to create; the same verb alone does not.
        assert_eq!(spell_out("file a ticket"), "file a create ticket issue");
        assert_eq!(spell_out("open https://x.dev"), "open https://x.dev url web page");
    }

    #[test]
    fn a_request_reads_or_changes_by_its_first_verb_or_any_verb_of_changing() {
        let cases = [
            ("what tabs are in Q3_budget.xlsx?", Operation::Read),
            ("show me the open PRs", Operation::Read),
            ("Please list the teams", Operation::Read),
            ("can you find the doc", Operation::Read),
            ("start a new sprint on the board", Operation::Change),
            ("could you add a row", Operation::Change),
            ("how do I create a webhook", Operation::Change),
            ("the header row, make it bold", Operation::Change),
            ("latest news on Rust", Operation::Unknown),
            ("", Operation::Unknown),
        ];
        for (query, operation) in cases {
            assert_eq!(query_operation(&spell_out(query)), operation, "{query}");
        }
    }

    #[test]
    fn a_tool_reads_or_changes_by_its_hint_or_its_name() {
        assert_eq!(tool_operation(Some(true), "create_issue"), Operation::Read, "the server's hint wins");
        assert_eq!(tool_operation(Some(false), "get_thing"), Operation::Change, "not read-only: it changes");
        assert_eq!(tool_operation(Some(false), "click"), Operation::Change);
        assert_eq!(tool_operation(None, "getIssues"), Operation::Read);
        assert_eq!(tool_operation(None, "jira_add_watcher"), Operation::Change);
        assert_eq!(tool_operation(None, "atlas_list_clusters"), Operation::Read);
        assert_eq!(tool_operation(None, "sequentialthinking"), Operation::Unknown);
    }

    #[test]
    fn a_server_is_named_by_a_product_name_written_as_one() {
        assert_eq!(proper_names("linear", "Linear issue tracker: issues, projects"), ["linear"]);
        assert_eq!(
            proper_names("atlassian", "Jira issue tracker (issues, sprints) and Confluence wiki"),
            ["atlassian", "jira", "confluence"]
        );
        // A description's first word is a name only when it is the server's or looks
        // like a product's; an underscored server name is no word of a request.
        assert_eq!(proper_names("filesystem", "Read, write and search files"), ["filesystem"]);
        assert_eq!(proper_names("chrome_devtools", "Chrome DevTools: drive a browser"), ["devtools"]);
        assert_eq!(proper_names("hubspot", "HubSpot CRM: contacts"), ["hubspot"]);
        assert_eq!(proper_names("brave_search", "Web search through the Brave Search API"), ["brave", "search"]);

        let doc = |server: &str, description: &str| Document {
            name: format!("{server}.list"),
            tool_words: "list".into(),
            server_name: server.into(),
            server_description: description.into(),
            ..Document::default()
        };
        let index = SearchIndex::new(&[
            doc("linear", "Linear issue tracker"),
            doc("atlassian", "Jira issue tracker and Confluence wiki"),
            doc("hubspot", "HubSpot CRM"),
            doc("brave_search", "Web search through the Brave Search API"),
            doc("sqlite", "SQLite database"),
            doc("mongodb", "MongoDB databases; MongoDB Atlas clusters"),
        ]);
        let named = |query: &str| index.named_in(query);
        // A name that is no everyday word counts in any case.
        assert_eq!(named("move the jira ticket"), [1]);
        assert_eq!(named("log the call in hubspot"), [2]);
        // An acronym names nothing, nor does what spelling out adds.
        assert!(named("call the payments API and the CRM").is_empty());
        // One that is an everyday word counts only written as a name.
        assert_eq!(named("in Linear, hand ENG-1 over"), [0]);
        assert_eq!(named("a linear scan"), Vec::<usize>::new());
        assert_eq!(named("Linear regression, fitted"), Vec::<usize>::new());
        // A name two servers share names neither.
        assert!(named("the database").is_empty());
        assert_eq!(named("SQLite or MongoDB?"), [4, 5]);
    }

    #[test]
    fn what_a_request_asks_of_a_tool_orders_tools_otherwise_alike() {
        let doc = |tool: &str, description: &str, read_only: Option<bool>| Document {
            name: format!("crm.{tool}"),
            description: description.into(),
            tool_words: tool.into(),
            server_name: "crm".into(),
            read_only,
            ..Document::default()
        };
        // The two tools say the same but for their verb, which the requests do not
        // use: without the operation, the first listed would win both.
        let make = doc("create_property", "Custom properties of contacts", None);
        let list = doc("list_property", "Custom properties of contacts", Some(true));
        let other = doc("delete_contact", "Deletes a contact", Some(false));
        for (tools, made, listed) in [([make.clone(), list.clone(), other.clone()], 0, 1), ([list, make, other], 1, 0)]
        {
            let index = SearchIndex::new(&tools);
            let first = |query: &str| index.search(Method::Hybrid, query).0[0].0;
            assert_eq!(first("what custom properties do contacts have"), listed);
            assert_eq!(first("please add a custom property for contacts"), made);
        }
    }
}
