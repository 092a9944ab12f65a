//! Capability policies: what a [`Principal`] may do, and the rule that says so.
//!
//! Operators write `policies/*.toml`; each file holds one or more `[[policy]]`
//! tables naming principals (`"*"`, `user:NAME`, `team:NAME`, `key:NAME`,
//! `role:admin`, `role:member`) and what they are granted: sandbox limits, tool globs,
//! model tiers and models, budgets and rates. `policies/README.md` is the operator's
//! guide to the format.
//!
//! # Deny by default
//!
//! A principal no policy matches may do nothing, not even execute code. Everything a
//! principal can do is granted by a line in some file, and every [`Decision`] carries
//! a [`RuleRef`] (file, line, policy, entry) pointing at that line, or says it was
//! denied by default.
//!
//! # How matching policies combine
//!
//! Every policy whose principals match applies; grants add up, and only a tool
//! `deny` takes anything away. This keeps policies order-independent: each can be
//! read on its own, and adding one can widen access only where it says so.
//!
//! - **Execute**: allowed iff at least one matching policy has a `[policy.limits]`
//!   table. The [`Limits`] are, field by field, the largest value any matching policy
//!   sets; a field no matching policy sets takes [`Limits::default`] (its memory
//!   clamped to the sandbox's `max_memory_bytes`).
//! - **Tools** (`server.tool`): allowed iff some matching policy's `tools.allow` glob
//!   matches and no matching policy's `tools.deny` glob matches. Deny wins, across
//!   policies too: a deny in a policy for `"*"` binds everyone.
//! - **Models**: a model is allowed iff some matching policy lists it in
//!   `models.models` or lists its tier in `models.tiers`. A tier is allowed iff some
//!   matching policy lists it.
//! - **Budgets and rates**: per field, the largest value among matching policies; a
//!   budget field keeps the `scope` (per user or pooled per team) of the policy it
//!   came from. `None` means no budget or rate is configured for that field, so it
//!   does not limit anything; it is never read as zero.
//!
//! # Loading
//!
//! Two stages, like [`crate::config`]: `raw.rs` deserializes each file into structs
//! that reject unknown keys, then `compile.rs` validates them into the types decisions
//! use (globs checked, selectors parsed, tiers resolved against the configured
//! catalog, impossible limits rejected). Every problem is a [`Diagnostic`] reading
//! `FILE:LINE:COLUMN: message`; a load reports every problem it can find, across all
//! files, in one [`PolicyError::Invalid`].

mod compile;
pub mod condition;
mod glob;
mod raw;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::limits::{Limits, PartialLimits};
use compile::{Compiled, Policy, Source};

/// What validation needs from the rest of the configuration.
#[derive(Clone, Debug)]
pub struct LoadContext {
    /// The cost tiers the model router knows; `models.tiers` may name only these.
    pub known_tiers: Vec<String>,
    /// The sandbox's memory ceiling; no policy may grant more.
    pub max_memory_bytes: u64,
}

/// One problem at one place in one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Policies that cannot be loaded. The server refuses to start on any of these:
/// running with half a policy set would silently deny (or allow) the wrong things.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy directory is missing or unreadable.
    #[error("{}: cannot read policy directory: {source}", dir.display())]
    ReadDir { dir: PathBuf, source: std::io::Error },
    /// A policy file in it is unreadable (or not UTF-8).
    #[error("{}: cannot read policy file: {source}", path.display())]
    ReadFile { path: PathBuf, source: std::io::Error },
    /// One or more files are invalid; one `FILE:LINE:COLUMN: message` per line.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl PolicyError {
    /// Every located problem (empty for read errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid(diagnostics) => diagnostics,
            _ => &[],
        }
    }
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(Diagnostic::to_string).collect::<Vec<_>>().join("\n")
}

/// Whose money a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetScope {
    /// Each user has their own allowance.
    User,
    /// One allowance pooled by everyone on the team.
    Team,
}

/// Where a decision or a value came from: `FILE:LINE policy "NAME": DETAIL`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub file: PathBuf,
    /// 1-based line of the entry (glob, tier, model, value) or of the table.
    pub line: u32,
    /// The policy's name.
    pub policy: String,
    /// The entry, e.g. `tools.deny "github.delete_*"` or `limits`.
    pub detail: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} policy {:?}: {}", self.file.display(), self.line, self.policy, self.detail)
    }
}

/// A budget value, with whose money it counts and the rule that set it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bounded<T> {
    pub value: T,
    pub scope: BudgetScope,
    pub rule: RuleRef,
}

/// Spending limits. Each field is the largest any matching policy grants; `None`
/// means no policy configures it, so that field limits nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Budget {
    pub usd_per_day: Option<Bounded<f64>>,
    pub usd_per_month: Option<Bounded<f64>>,
    pub tokens_per_day: Option<Bounded<u64>>,
    pub tokens_per_month: Option<Bounded<u64>>,
}

/// Per-principal rates. Each field is the largest any matching policy grants; `None`
/// means no policy configures it, so that field limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rate {
    pub executions_per_minute: Option<u32>,
    pub model_calls_per_minute: Option<u32>,
}

/// What a principal may keep in sessions. A `[policy.sessions]` table grants them;
/// without one no session can be opened. Each field is the largest any matching policy
/// grants; a field the table leaves out takes the default below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SessionGrant {
    /// Live sessions at once (default 10).
    pub max: u32,
    /// Bytes of memory images over all of them (default 256 MiB).
    pub max_bytes: u64,
    /// How long a session lives unused, in seconds, and the most a request may ask
    /// for (default 3,600).
    pub idle_ttl_s: u64,
}

impl Default for SessionGrant {
    fn default() -> Self {
        Self { max: 10, max_bytes: 256 << 20, idle_ttl_s: 3_600 }
    }
}

/// Personal keys a person signed in with SSO may issue themselves (`[policy.keys]`);
/// without the table, none. Each field is the largest any matching policy grants; a
/// field the table leaves out takes the default below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeyGrant {
    /// Live personal keys one person may hold at once (default 5).
    pub max: u32,
    /// The longest a personal key may live, in days, and what one is given when its
    /// request names no lifetime (default 30).
    pub max_lifetime_days: u32,
}

impl Default for KeyGrant {
    fn default() -> Self {
        Self { max: 5, max_lifetime_days: 30 }
    }
}

/// What a principal's code may do with files (`[policy.files]`): the quotas of each
/// session's workspace, and host directories mounted into the code's view. Quotas are
/// the largest any matching policy sets (the defaults below without one); mounts are
/// the union, the first policy in load order winning a name two of them use. Without
/// a mount there is no file access outside a session's own workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FilesGrant {
    /// Bytes of files in one session's workspace, and bytes one execution may write to
    /// writable mounts (default 64 MiB).
    pub max_bytes: u64,
    /// Files and directories in one session's workspace (default 1,000).
    pub max_files: u64,
    pub mounts: Vec<MountGrant>,
}

impl Default for FilesGrant {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_files: 1_000, mounts: Vec::new() }
    }
}

/// A host directory the code sees as the top-level directory `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountGrant {
    pub path: std::path::PathBuf,
    pub name: String,
    /// `mode = "rw"`; read-only otherwise.
    pub writable: bool,
    /// Bytes each principal may write to it per UTC day, over all its executions and
    /// on every replica (`max_bytes_per_day`; default the policy's `files.max_bytes`).
    pub max_bytes_per_day: u64,
}

/// Checks a mount's `as` name: one plain path component.
pub fn mount_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if name == "." || name == ".." {
        return Err("must not be `.` or `..`");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err("may hold only letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// Something a principal may try to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Run code at all.
    Execute,
    /// Call a tool, named `server.tool`.
    Tool(String),
    /// Call a model; `tier` is the cost tier the catalog puts it in, if known.
    Model { name: String, tier: Option<String> },
    /// Ask the router for any model of a tier.
    Tier(String),
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Execute => f.write_str("code execution"),
            Query::Tool(tool) => write!(f, "tool {tool}"),
            Query::Model { name, tier: Some(tier) } => write!(f, "model {name} (tier {tier})"),
            Query::Model { name, tier: None } => write!(f, "model {name}"),
            Query::Tier(tier) => write!(f, "tier {tier}"),
        }
    }
}

/// The answer to a [`Query`], with the rule that made it.
///
/// Displays as `allow: FILE:LINE policy "NAME": DETAIL`, `deny: FILE:LINE policy
/// "NAME": DETAIL` (denied by a rule), or `deny: REASON` (denied by default).
/// A call that needs approval is not `allowed`, and carries the [`ApprovalRule`]
/// (`approve: FILE:LINE policy "NAME": DETAIL`): a surface that cannot pause treats
/// it as a denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The entry that allowed or denied; `None` when denied by default.
    pub rule: Option<RuleRef>,
    /// A sentence for logs and error messages.
    pub reason: String,
    /// Set when the call may go ahead only once an approver says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Arc<ApprovalRule>>,
}

impl Decision {
    fn allow(rule: RuleRef, reason: String) -> Self {
        Self { allowed: true, rule: Some(rule), reason, approval: None }
    }

    fn deny(rule: Option<RuleRef>, reason: String) -> Self {
        Self { allowed: false, rule, reason, approval: None }
    }

    /// What the code is told when the call is refused: the decision, and for a rule
    /// with a condition, why (the condition's error, or the rule's reason).
    pub fn denial(&self) -> String {
        match &self.rule {
            Some(rule) if rule.detail.starts_with("rules[") => format!("{self}: {}", self.reason),
            _ => self.to_string(),
        }
    }

    /// `allow`, `deny` or `approve`.
    pub fn verdict(&self) -> &'static str {
        match (self.allowed, &self.approval) {
            (true, _) => "allow",
            (false, Some(_)) => "approve",
            (false, None) => "deny",
        }
    }
}

/// What a rule with `decision = "approve"` asks for: who may approve, and how long
/// the call may wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApprovalRule {
    /// The selectors as written (`team:leads`, `user:alice`, `role:admin`).
    pub approvers: Vec<String>,
    #[serde(skip)]
    selectors: Vec<compile::Selector>,
    /// How long the call waits before it is denied as expired.
    pub expires_after_s: u64,
    /// Whether the caller may approve their own call (never, unless the rule says so).
    pub self_approval: bool,
    /// The rule's `reason`, shown to approvers.
    pub reason: Option<String>,
}

/// Whether any of `approvers` (selectors as a rule writes them: `team:leads`,
/// `user:alice`, `role:admin`) matches `principal`. A selector that does not parse
/// matches no one.
pub fn approver_matches(approvers: &[String], principal: &Principal) -> bool {
    approvers.iter().filter_map(|text| compile::Selector::parse(text).ok()).any(|s| s.matches(principal))
}

impl ApprovalRule {
    /// Whether `principal` is among the approvers.
    pub fn approver(&self, principal: &Principal) -> bool {
        self.selectors.iter().any(|s| s.matches(principal))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = self.verdict();
        match &self.rule {
            Some(rule) => write!(f, "{verdict}: {rule}"),
            None => write!(f, "{verdict}: {}", self.reason),
        }
    }
}

/// One loaded policy, for listings such as `sandgate policy check`.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInfo<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub file: &'a Path,
    /// The line of its `[[policy]]` header.
    pub line: u32,
}

/// Every loaded policy, validated. Cheap to clone; share it behind an `Arc` to swap
/// it on reload.
#[derive(Clone, Debug)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    files: usize,
    /// What an execution gets for limits no matching policy sets.
    default_limits: Limits,
}

impl Default for PolicySet {
    /// No policies: everything is denied.
    fn default() -> Self {
        Self { policies: Vec::new(), files: 0, default_limits: Limits::default() }
    }
}

impl PolicySet {
    /// Loads every `*.toml` file directly in `dir`, in file-name order (which is the
    /// order of [`RuleRef`]s when several rules could answer). Subdirectories and
    /// hidden files (editor lock and swap files) are ignored. A directory without
    /// policy files loads as an empty set, which denies everything.
    pub fn load_dir(dir: &Path, ctx: &LoadContext) -> Result<Self, PolicyError> {
        let read_dir = |source| PolicyError::ReadDir { dir: dir.to_path_buf(), source };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                continue;
            }
            paths.push(path);
        }
        paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let files = paths
            .into_iter()
            .map(|path| match std::fs::read_to_string(&path) {
                Ok(text) => Ok((path, text)),
                Err(source) => Err(PolicyError::ReadFile { path, source }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(files, ctx)
    }

    /// Parses one file's text; `path` names it in errors and rules.
    pub fn parse_str(text: &str, path: &Path, ctx: &LoadContext) -> Result<Self, PolicyError> {
        Self::from_files(vec![(path.to_path_buf(), text.to_owned())], ctx)
    }

    /// Parses and combines several files, in the order given. Policy names must be
    /// unique across all of them, so every [`RuleRef`] names one policy.
    pub fn from_files(files: Vec<(PathBuf, String)>, ctx: &LoadContext) -> Result<Self, PolicyError> {
        let mut errors = Vec::new();
        let mut compiled: Vec<Compiled> = Vec::new();
        for (path, text) in &files {
            let source = Source { path, text };
            let mut file_errors = Vec::new();
            match source.deserialize() {
                Ok(raw) => {
                    for policy in compile::compile_file(&source, raw, ctx, &mut file_errors) {
                        if let Some(first) = compiled.iter().find(|c| c.policy.name == policy.policy.name) {
                            file_errors.push(source.error(
                                &policy.name_span,
                                format!(
                                    "duplicate policy name {:?}: already defined at {}:{}",
                                    policy.policy.name,
                                    first.policy.file.display(),
                                    first.name_line
                                ),
                            ));
                        }
                        compiled.push(policy);
                    }
                }
                Err(diagnostic) => file_errors.push(diagnostic),
            }
            // Validation goes section by section; operators read files top to bottom.
            file_errors.sort_by_key(|d| (d.line, d.column));
            errors.append(&mut file_errors);
        }
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
        let default_limits = Limits::default();
        Ok(Self {
            policies: compiled.into_iter().map(|c| Arc::new(c.policy)).collect(),
            files: files.len(),
            default_limits: Limits {
                memory_bytes: default_limits.memory_bytes.min(ctx.max_memory_bytes),
                ..default_limits
            },
        })
    }

    /// The number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The number of files the policies came from.
    pub fn files(&self) -> usize {
        self.files
    }

    /// The policies, in load order.
    pub fn iter(&self) -> impl Iterator<Item = PolicyInfo<'_>> {
        self.policies.iter().map(|p| PolicyInfo {
            name: &p.name,
            description: p.description.as_deref(),
            file: &p.file,
            line: p.line,
        })
    }

    /// Everything `principal` is granted, merged over every matching policy.
    pub fn capabilities(&self, principal: &Principal) -> Capabilities {
        let policies: Vec<Arc<Policy>> = self.policies.iter().filter(|p| p.matches(principal)).cloned().collect();

        let mut limits: Option<PartialLimits> = None;
        let mut limits_rule = None;
        let mut budget = Budget::default();
        let mut rate = Rate::default();
        let mut sessions: Option<SessionGrant> = None;
        let mut keys: Option<KeyGrant> = None;
        let mut files: Option<FilesGrant> = None;
        for policy in &policies {
            if let Some(grant) = &policy.files {
                let merged = files.get_or_insert_with(|| FilesGrant { mounts: Vec::new(), ..grant.value.clone() });
                merged.max_bytes = merged.max_bytes.max(grant.value.max_bytes);
                merged.max_files = merged.max_files.max(grant.value.max_files);
                for mount in &grant.value.mounts {
                    if !merged.mounts.iter().any(|m| m.name == mount.name) {
                        merged.mounts.push(mount.clone());
                    }
                }
            }
            if let Some(grant) = &policy.sessions {
                let merged = sessions.get_or_insert(grant.value);
                merged.max = merged.max.max(grant.value.max);
                merged.max_bytes = merged.max_bytes.max(grant.value.max_bytes);
                merged.idle_ttl_s = merged.idle_ttl_s.max(grant.value.idle_ttl_s);
            }
            if let Some(grant) = &policy.keys {
                let merged = keys.get_or_insert(grant.value);
                merged.max = merged.max.max(grant.value.max);
                merged.max_lifetime_days = merged.max_lifetime_days.max(grant.value.max_lifetime_days);
            }
            if let Some(grant) = &policy.limits {
                limits.get_or_insert_with(PartialLimits::default).raise(&grant.value);
                limits_rule.get_or_insert_with(|| policy.rule(grant.line, "limits".into()));
            }
            raise_budget(&mut budget.usd_per_day, policy, &policy.usd_per_day, "usd_per_day");
            raise_budget(&mut budget.usd_per_month, policy, &policy.usd_per_month, "usd_per_month");
            raise_budget(&mut budget.tokens_per_day, policy, &policy.tokens_per_day, "tokens_per_day");
            raise_budget(&mut budget.tokens_per_month, policy, &policy.tokens_per_month, "tokens_per_month");
            rate.executions_per_minute = rate.executions_per_minute.max(policy.executions_per_minute);
            rate.model_calls_per_minute = rate.model_calls_per_minute.max(policy.model_calls_per_minute);
        }

        Capabilities {
            limits: limits.map(|l| l.or(self.default_limits)),
            budget,
            rate,
            sessions,
            keys,
            files: files.unwrap_or_default(),
            matched: policies.iter().map(|p| p.name.clone()).collect(),
            who: describe(principal),
            limits_rule,
            policies,
            everything: None,
        }
    }

    /// The decision on `query` for `principal`, with the rule that made it.
    pub fn explain(&self, principal: &Principal, query: &Query) -> Decision {
        self.capabilities(principal).decide(query)
    }
}

/// `user NAME (team TEAM, key KEY, role ROLE)`, for deny-by-default reasons.
fn describe(principal: &Principal) -> String {
    let key = if principal.key.is_empty() { String::new() } else { format!(", key {}", principal.key) };
    format!("user {} (team {}{key}, role {})", principal.user, principal.team, principal.role.as_str())
}

/// Replaces `current` if `policy` grants strictly more, so among equal values the
/// first policy in load order is the one named.
fn raise_budget<T: PartialOrd + Copy + fmt::Display>(
    current: &mut Option<Bounded<T>>,
    policy: &Policy,
    grant: &Option<compile::At<T>>,
    key: &str,
) {
    let Some(grant) = grant else { return };
    if current.as_ref().is_some_and(|c| c.value >= grant.value) {
        return;
    }
    *current = Some(Bounded {
        value: grant.value,
        scope: policy.scope,
        rule: policy.rule(grant.line, format!("budget.{key} = {}", grant.value)),
    });
}

/// What one principal may do: the merge of every policy that matches it.
///
/// Limits, budget and rate are resolved up front; tools, models and tiers are asked
/// with [`Capabilities::tool`], [`Capabilities::model`] and [`Capabilities::tier`],
/// each answering with the rule that decided.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// `None`: no matching policy has a `[policy.limits]` table, so this principal
    /// may not execute code.
    pub limits: Option<Limits>,
    pub budget: Budget,
    pub rate: Rate,
    /// `None`: no matching policy has a `[policy.sessions]` table.
    pub sessions: Option<SessionGrant>,
    /// `None`: no matching policy has a `[policy.keys]` table.
    pub keys: Option<KeyGrant>,
    pub files: FilesGrant,
    /// Names of the matching policies, in load order.
    pub matched: Vec<String>,
    /// Who these are for, in deny-by-default reasons.
    who: String,
    limits_rule: Option<RuleRef>,
    policies: Vec<Arc<Policy>>,
    /// Set only by [`Capabilities::allow_all_for_tests`]: allows every tool, model
    /// and tier by this rule.
    everything: Option<RuleRef>,
}

impl Capabilities {
    /// Whether a matching policy keeps the client header `name` (lowercase) from the
    /// providers (`[policy.models] strip_headers`).
    pub fn strips_header(&self, name: &str) -> bool {
        self.policies.iter().any(|policy| policy.strip_headers.iter().any(|stripped| stripped == name))
    }

    /// Nothing allowed: not even executing code.
    pub fn none() -> Self {
        Self {
            limits: None,
            budget: Budget::default(),
            rate: Rate::default(),
            sessions: None,
            keys: None,
            files: FilesGrant::default(),
            matched: Vec::new(),
            who: "this principal".into(),
            limits_rule: None,
            policies: Vec::new(),
            everything: None,
        }
    }

    /// Every tool, model and tier allowed under `limits`, with no budgets or rates.
    /// For tests and the policy-less embedded default; never built from a file.
    pub fn allow_all_for_tests(limits: Limits) -> Self {
        let rule = RuleRef {
            file: PathBuf::from("<allow_all_for_tests>"),
            line: 0,
            policy: "allow_all_for_tests".into(),
            detail: "*".into(),
        };
        Self {
            limits: Some(limits),
            matched: vec![rule.policy.clone()],
            limits_rule: Some(RuleRef { detail: "limits".into(), ..rule.clone() }),
            everything: Some(rule),
            ..Self::none()
        }
    }

    /// Answers any [`Query`].
    pub fn decide(&self, query: &Query) -> Decision {
        match query {
            Query::Execute => self.execute(),
            Query::Tool(tool) => self.tool(tool),
            Query::Model { name, tier } => self.model(name, tier.as_deref()),
            Query::Tier(tier) => self.tier(tier),
        }
    }

    /// Whether this principal may execute code at all.
    pub fn execute(&self) -> Decision {
        match (&self.limits, &self.limits_rule) {
            (Some(_), Some(rule)) => Decision::allow(rule.clone(), "a matching policy grants limits".into()),
            _ => self.deny_by_default("code execution", "code execution: none has a [policy.limits] table"),
        }
    }

    /// Whether `tool` (`server.tool`) may be called. Deny globs are checked in every
    /// matching policy before any allow counts.
    pub fn tool(&self, tool: &str) -> Decision {
        if let Some(rule) = &self.everything {
            return Decision::allow(rule.clone(), format!("tool {tool} is allowed"));
        }
        if let Some(denied) = self.denied_tool(tool) {
            return denied;
        }
        let allowed = self.allowed_tool(tool);
        if allowed.allowed {
            return allowed;
        }
        // Without its arguments, a tool some rule may allow or send for approval is
        // one the principal may call: each call is decided by `call`.
        for policy in &self.policies {
            let granting = |r: &&compile::Rule| !matches!(r.effect, compile::Effect::Deny);
            if let Some(rule) = policy.rules.iter().filter(granting).find(|r| r.tools.iter().any(|g| g.matches(tool))) {
                return Decision::allow(
                    policy.rule(rule.line, rule.detail()),
                    format!("tool {tool} may be called, as its rules decide for each call"),
                );
            }
        }
        allowed
    }

    /// The decision on one call, with its arguments: `tools.deny` first, then every
    /// `[[policy.rules]]` entry naming the call whose condition holds (a deny wins,
    /// then an approval, then an allow), then the name-only grants ([`Self::tool`],
    /// [`Self::model`]). A condition that cannot be decided denies the call.
    /// `tier` is a model's cost tier, when the catalog knows it.
    pub fn call(&self, target: condition::Target<'_>, tier: Option<&str>, facts: &condition::Facts<'_>) -> Decision {
        use compile::Effect;
        use condition::Target;
        if let Some(rule) = &self.everything {
            return Decision::allow(rule.clone(), "every call is allowed".into());
        }
        let what = match target {
            Target::Tool(tool) => {
                if let Some(denied) = self.denied_tool(tool) {
                    return denied;
                }
                format!("tool {tool}")
            }
            Target::Model(model) => format!("model {model}"),
        };
        let tier_name = tier.map(|t| format!("tier:{t}"));
        let (mut approve, mut allow) = (None, None);
        for policy in &self.policies {
            for rule in &policy.rules {
                let names = match target {
                    Target::Tool(tool) => rule.tools.iter().any(|g| g.matches(tool)),
                    Target::Model(model) => rule
                        .models
                        .iter()
                        .any(|g| g.matches(model) || tier_name.as_deref().is_some_and(|tier| g.matches(tier))),
                };
                if !names {
                    continue;
                }
                let reference = || policy.rule(rule.line, rule.detail());
                if let Some(when) = &rule.when {
                    match when.holds(target, facts) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(why) => {
                            return Decision::deny(
                                Some(reference()),
                                format!("{what} is denied: its condition {:?} could not be decided: {why}", when.text),
                            )
                        }
                    }
                }
                let because = rule.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                match &rule.effect {
                    Effect::Deny => {
                        return Decision::deny(Some(reference()), format!("{what} is denied by a rule{because}"))
                    }
                    Effect::Approve(approval) => {
                        approve.get_or_insert_with(|| Decision {
                            allowed: false,
                            rule: Some(reference()),
                            reason: format!("{what} needs approval from {}{because}", approval.approvers.join(", ")),
                            approval: Some(approval.clone()),
                        });
                    }
                    Effect::Allow => {
                        allow.get_or_insert_with(|| {
                            Decision::allow(reference(), format!("{what} is allowed by a rule"))
                        });
                    }
                }
            }
        }
        if let Some(decision) = approve.or(allow) {
            return decision;
        }
        match target {
            Target::Tool(tool) => self.allowed_tool(tool),
            Target::Model(model) => self.model(model, tier),
        }
    }

    /// The `tools.deny` entry that denies `tool`, if one does.
    fn denied_tool(&self, tool: &str) -> Option<Decision> {
        self.policies.iter().find_map(|policy| {
            let glob = policy.deny.iter().find(|g| g.value.matches(tool))?;
            Some(Decision::deny(
                Some(policy.rule(glob.line, format!("tools.deny {:?}", glob.value.as_str()))),
                format!("tool {tool} is denied by tools.deny {:?} in policy {:?}", glob.value.as_str(), policy.name),
            ))
        })
    }

    /// `tools.allow`, or deny by default.
    fn allowed_tool(&self, tool: &str) -> Decision {
        for policy in &self.policies {
            if let Some(glob) = policy.allow.iter().find(|g| g.value.matches(tool)) {
                return Decision::allow(
                    policy.rule(glob.line, format!("tools.allow {:?}", glob.value.as_str())),
                    format!("tool {tool} is allowed"),
                );
            }
        }
        let what = format!("tool {tool}");
        self.deny_by_default(&what, &what)
    }

    /// Whether model `name` may be called; `tier` is its cost tier if the catalog
    /// knows it. Listing the model by name is checked first, then its tier.
    pub fn model(&self, name: &str, tier: Option<&str>) -> Decision {
        if let Some(rule) = &self.everything {
            return Decision::allow(rule.clone(), format!("model {name} is allowed"));
        }
        for policy in &self.policies {
            if let Some(model) = policy.models.iter().find(|m| m.value == name) {
                return Decision::allow(
                    policy.rule(model.line, format!("models.models {:?}", model.value)),
                    format!("model {name} is allowed by name"),
                );
            }
        }
        if let Some(tier) = tier {
            if let Some(decision) = self.tier_rule(tier) {
                return Decision::allow(decision, format!("model {name} is allowed by its tier {tier}"));
            }
            return self.deny_by_default(&format!("model {name}"), &format!("model {name} or its tier {tier}"));
        }
        self.deny_by_default(&format!("model {name}"), &format!("model {name} (its tier is not known)"))
    }

    /// Whether any model of `tier` may be called.
    pub fn tier(&self, tier: &str) -> Decision {
        if let Some(rule) = &self.everything {
            return Decision::allow(rule.clone(), format!("tier {tier} is allowed"));
        }
        match self.tier_rule(tier) {
            Some(rule) => Decision::allow(rule, format!("tier {tier} is allowed")),
            None => {
                let what = format!("tier {tier}");
                self.deny_by_default(&what, &what)
            }
        }
    }

    fn tier_rule(&self, tier: &str) -> Option<RuleRef> {
        self.policies.iter().find_map(|policy| {
            let entry = policy.tiers.iter().find(|t| t.value == tier)?;
            Some(policy.rule(entry.line, format!("models.tiers {:?}", entry.value)))
        })
    }

    /// `what` is denied (`deny: no policy matches …, so WHAT is denied`); if some
    /// policy matched, none grants `granted` (`deny: no matching policy grants …`).
    fn deny_by_default(&self, what: &str, granted: &str) -> Decision {
        let reason = if self.policies.is_empty() && self.everything.is_none() {
            format!("no policy matches {}, so {what} is denied (deny by default)", self.who)
        } else {
            format!("no matching policy grants {granted} (deny by default)")
        };
        Decision::deny(None, reason)
    }
}
