//! Stage 2: raw policies validated into the compiled types decisions use.
//!
//! Validation keeps going after a problem so one load reports every bad value in a
//! file; a file whose TOML does not even deserialize reports that one error.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use std::sync::Arc;

use super::condition::Condition;
use super::glob::Glob;
use super::raw::{RawFile, RawLimits, RawPolicy, RawRule};
use super::{BudgetScope, Diagnostic, LoadContext, RuleRef};
use crate::auth::{Principal, Role};
use crate::limits::PartialLimits;

/// The guest cannot start with less linear memory than this.
const MIN_MEMORY_BYTES: u64 = 8 << 20;

/// One file's text, to turn byte offsets into the `line:column` operators see.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    pub fn position(&self, offset: usize) -> (u32, u32) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (to_u32(line), to_u32(column))
    }

    pub fn line(&self, span: &Range<usize>) -> u32 {
        self.position(span.start).0
    }

    pub fn error(&self, span: &Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(span.start);
        Diagnostic { file: self.path.to_path_buf(), line, column, message: message.into() }
    }

    /// Stage 1: the TOML as written, or the one error that stopped deserialization.
    pub fn deserialize(&self) -> Result<RawFile, Diagnostic> {
        toml::from_str(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().trim_end().to_owned();
            // `[policy]` (one table) instead of `[[policy]]` (a list of them) is the
            // likeliest first mistake; serde alone only says "expected a sequence".
            if self.text.get(span.clone()).is_some_and(|text| text.starts_with("[policy]")) {
                message.push_str("; write [[policy]] (double brackets): a file holds a list of policies");
            }
            self.error(&span, message)
        })
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A value and the line it was written on, for [`RuleRef`]s.
#[derive(Clone, Debug)]
pub(super) struct At<T> {
    pub value: T,
    pub line: u32,
}

/// Who a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Selector {
    Everyone,
    /// The single user of local mode (a server started without keys).
    Local,
    User(String),
    Team(String),
    Key(String),
    Role(Role),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Everyone);
        }
        if text == "local" {
            return Ok(Self::Local);
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!(
                "principal selector {text:?} has no kind: write \"*\", \"local\", \"user:NAME\", \"team:NAME\", \"key:NAME\" or \"role:admin\"/\"role:member\""
            ));
        };
        if name.is_empty() {
            return Err(format!("principal selector {text:?} has an empty name after `{kind}:`"));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("principal selector {text:?} contains whitespace"));
        }
        match kind {
            "user" => Ok(Self::User(name.into())),
            "team" => Ok(Self::Team(name.into())),
            "key" => Ok(Self::Key(name.into())),
            "role" => match name {
                "admin" => Ok(Self::Role(Role::Admin)),
                "member" => Ok(Self::Role(Role::Member)),
                _ => Err(format!(
                    "principal selector {text:?}: unknown role `{name}`; roles are `admin` and `member`"
                )),
            },
            _ => Err(format!(
                "principal selector {text:?}: unknown kind `{kind}`; kinds are `user`, `team`, `key` and `role` (or \"*\" for everyone)"
            )),
        }
    }

    pub fn matches(&self, principal: &Principal) -> bool {
        match self {
            Self::Everyone => true,
            Self::Local => principal.local,
            Self::User(name) => principal.user == *name,
            Self::Team(name) => principal.team == *name || principal.teams.iter().any(|t| t == name),
            Self::Key(name) => principal.key == *name,
            Self::Role(role) => principal.role == *role,
        }
    }
}

/// One validated `[[policy]]`.
#[derive(Debug)]
pub(super) struct Policy {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    /// The line of its `[[policy]]` header.
    pub line: u32,
    pub principals: Vec<Selector>,
    /// Principals excluded even when `principals` matches them.
    pub except: Vec<Selector>,
    /// `Some` iff the policy has a `[policy.limits]` table: it lets its principals
    /// execute code.
    pub limits: Option<At<PartialLimits>>,
    pub allow: Vec<At<Glob>>,
    pub deny: Vec<At<Glob>>,
    pub tiers: Vec<At<String>>,
    pub models: Vec<At<String>>,
    /// Client headers its principals' model calls do not pass on (lowercase).
    pub strip_headers: Vec<String>,
    pub scope: BudgetScope,
    pub usd_per_day: Option<At<f64>>,
    pub usd_per_month: Option<At<f64>>,
    pub tokens_per_day: Option<At<u64>>,
    pub tokens_per_month: Option<At<u64>>,
    pub executions_per_minute: Option<u32>,
    pub model_calls_per_minute: Option<u32>,
    /// `Some` iff the policy has a `[policy.sessions]` table: its principals may open
    /// sessions, within these caps.
    pub sessions: Option<At<super::SessionGrant>>,
    /// `Some` iff the policy has a `[policy.files]` table.
    pub files: Option<At<super::FilesGrant>>,
    /// `Some` iff the policy has a `[policy.keys]` table: its principals, signed in
    /// with SSO, may issue themselves personal keys.
    pub keys: Option<At<super::KeyGrant>>,
    /// `[[policy.rules]]`, in file order.
    pub rules: Vec<Rule>,
}

/// A compiled `[[policy.rules]]` entry.
#[derive(Debug)]
pub(super) struct Rule {
    pub line: u32,
    /// Its 1-based place among its policy's rules, for [`RuleRef`]s.
    pub index: usize,
    pub tools: Vec<Glob>,
    pub models: Vec<Glob>,
    pub when: Option<Condition>,
    pub effect: Effect,
    pub reason: Option<String>,
}

/// What a rule decides when it applies.
#[derive(Debug)]
pub(super) enum Effect {
    Allow,
    Deny,
    Approve(Arc<super::ApprovalRule>),
}

impl Effect {
    pub fn as_str(&self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Approve(_) => "approve",
        }
    }
}

impl Rule {
    /// `rules[2] approve when "args.base == 'main'"`.
    pub fn detail(&self) -> String {
        match &self.when {
            Some(when) => format!("rules[{}] {} when {:?}", self.index, self.effect.as_str(), when.text),
            None => format!("rules[{}] {}", self.index, self.effect.as_str()),
        }
    }
}

impl Policy {
    pub fn matches(&self, principal: &Principal) -> bool {
        self.principals.iter().any(|s| s.matches(principal)) && !self.except.iter().any(|s| s.matches(principal))
    }

    pub fn rule(&self, line: u32, detail: String) -> RuleRef {
        RuleRef { file: self.file.clone(), line, policy: self.name.clone(), detail }
    }
}

/// A compiled policy and where its name was written, for duplicate-name errors.
pub(super) struct Compiled {
    pub policy: Policy,
    pub name_span: Range<usize>,
    pub name_line: u32,
}

/// Validates every policy of one file; problems go to `errors`.
pub(super) fn compile_file(
    source: &Source<'_>,
    raw: RawFile,
    ctx: &LoadContext,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Compiled> {
    if raw.policy.is_empty() {
        errors.push(source.error(&(0..0), "no [[policy]] table: a policy file must define at least one policy"));
    }
    raw.policy
        .into_iter()
        .map(|raw| {
            let line = source.line(&raw.span());
            compile_policy(source, line, raw.into_inner(), ctx, errors)
        })
        .collect()
}

fn compile_policy(
    source: &Source<'_>,
    line: u32,
    raw: RawPolicy,
    ctx: &LoadContext,
    errors: &mut Vec<Diagnostic>,
) -> Compiled {
    let name_span = raw.name.span();
    let name = raw.name.into_inner();
    if name.trim().is_empty() {
        errors.push(source.error(&name_span, "policy name is empty"));
    }

    let principals_span = raw.principals.span();
    let raw_principals = raw.principals.into_inner();
    if raw_principals.is_empty() {
        errors.push(source.error(
            &principals_span,
            format!(
                "policy {name:?}: principals is empty, so it applies to no one; list selectors such as \"*\", \"team:platform\" or \"user:alice\""
            ),
        ));
    }
    let principals: Vec<Selector> = raw_principals
        .into_iter()
        .filter_map(|s| {
            Selector::parse(s.get_ref()).map_err(|message| errors.push(source.error(&s.span(), message))).ok()
        })
        .collect();
    let except: Vec<Selector> = raw
        .except
        .into_iter()
        .filter_map(|s| {
            Selector::parse(s.get_ref()).map_err(|message| errors.push(source.error(&s.span(), message))).ok()
        })
        .collect();

    let limits = raw.limits.map(|limits| At {
        line: source.line(&limits.span()),
        value: compile_limits(source, limits.into_inner(), ctx, errors),
    });

    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    if let Some(tools) = raw.tools {
        allow = globs(source, tools.allow, errors);
        deny = globs(source, tools.deny, errors);
    }

    let (mut tiers, mut models, mut strip_headers) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(raw_models) = raw.models {
        for header in raw_models.strip_headers {
            let name = header.get_ref().trim().to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                errors.push(source.error(&header.span(), format!("{:?} is not a header name", header.get_ref())));
            } else {
                strip_headers.push(name);
            }
        }
        for tier in raw_models.tiers {
            if ctx.known_tiers.iter().any(|known| known == tier.get_ref()) {
                tiers.push(at(source, tier));
            } else {
                let known = if ctx.known_tiers.is_empty() {
                    "no tiers are configured".to_owned()
                } else {
                    format!("known tiers: {}", ctx.known_tiers.join(", "))
                };
                errors.push(source.error(&tier.span(), format!("unknown tier {:?} ({known})", tier.get_ref())));
            }
        }
        for model in raw_models.models {
            if model.get_ref().trim().is_empty() {
                errors.push(source.error(&model.span(), "empty model name"));
            } else {
                models.push(at(source, model));
            }
        }
    }

    let mut policy = Policy {
        name,
        description: raw.description,
        file: source.path.to_path_buf(),
        line,
        principals,
        except,
        limits,
        allow,
        deny,
        tiers,
        models,
        strip_headers,
        scope: BudgetScope::User,
        usd_per_day: None,
        usd_per_month: None,
        tokens_per_day: None,
        tokens_per_month: None,
        executions_per_minute: None,
        model_calls_per_minute: None,
        sessions: None,
        files: None,
        keys: None,
        rules: Vec::new(),
    };
    for (index, rule) in raw.rules.into_iter().enumerate() {
        let line = source.line(&rule.span());
        if let Some(rule) = compile_rule(source, line, index + 1, rule.into_inner(), errors) {
            policy.rules.push(rule);
        }
    }

    if let Some(budget) = raw.budget {
        policy.scope = budget.scope;
        let mut usd =
            |value: Option<Spanned<f64>>, key: &str| {
                let value = value?;
                let usd = *value.get_ref();
                if !usd.is_finite() || usd < 0.0 {
                    errors.push(source.error(
                        &value.span(),
                        format!("budget.{key} = {usd} must be a finite amount of USD, 0 or more"),
                    ));
                    return None;
                }
                Some(at(source, value))
            };
        policy.usd_per_day = usd(budget.usd_per_day, "usd_per_day");
        policy.usd_per_month = usd(budget.usd_per_month, "usd_per_month");
        policy.tokens_per_day = budget.tokens_per_day.map(|v| at(source, v));
        policy.tokens_per_month = budget.tokens_per_month.map(|v| at(source, v));
    }
    if let Some(rate) = raw.rate {
        policy.executions_per_minute = rate.executions_per_minute.map(Spanned::into_inner);
        policy.model_calls_per_minute = rate.model_calls_per_minute.map(Spanned::into_inner);
    }
    if let Some(sessions) = raw.sessions {
        let line = source.line(&sessions.span());
        let sessions = sessions.into_inner();
        let defaults = super::SessionGrant::default();
        if let Some(ttl) = sessions.idle_ttl_s.as_ref().filter(|t| *t.get_ref() == 0) {
            errors.push(source.error(&ttl.span(), "sessions.idle_ttl_s must be at least 1"));
        }
        let grant = super::SessionGrant {
            max: sessions.max.map_or(defaults.max, Spanned::into_inner),
            max_bytes: sessions.max_bytes.map_or(defaults.max_bytes, Spanned::into_inner),
            idle_ttl_s: sessions.idle_ttl_s.map_or(defaults.idle_ttl_s, Spanned::into_inner).max(1),
        };
        policy.sessions = Some(At { line, value: grant });
    }
    if let Some(keys) = raw.keys {
        let line = source.line(&keys.span());
        let keys = keys.into_inner();
        let defaults = super::KeyGrant::default();
        for value in [&keys.max, &keys.max_lifetime_days].into_iter().flatten() {
            if *value.get_ref() == 0 {
                errors.push(source.error(&value.span(), "keys.max and keys.max_lifetime_days must be at least 1"));
            }
        }
        let grant = super::KeyGrant {
            max: keys.max.map_or(defaults.max, Spanned::into_inner),
            max_lifetime_days: keys.max_lifetime_days.map_or(defaults.max_lifetime_days, Spanned::into_inner),
        };
        policy.keys = Some(At { line, value: grant });
    }
    if let Some(files) = raw.files {
        let line = source.line(&files.span());
        let files = files.into_inner();
        let defaults = super::FilesGrant::default();
        let mut grant = super::FilesGrant {
            max_bytes: files.max_bytes.map_or(defaults.max_bytes, Spanned::into_inner),
            max_files: files.max_files.map_or(defaults.max_files, Spanned::into_inner),
            mounts: Vec::new(),
        };
        for mount in files.mounts {
            let span = mount.span();
            let mount = mount.into_inner();
            let writable = match mount.mode.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("ro") => false,
                Some("rw") => true,
                Some(other) => {
                    let span = mount.mode.as_ref().map_or(span.clone(), Spanned::span);
                    errors.push(source.error(&span, format!("mount mode `{other}` is not `ro` or `rw`")));
                    continue;
                }
            };
            let path = std::path::PathBuf::from(mount.path.get_ref());
            if !path.is_absolute() {
                errors.push(
                    source.error(&mount.path.span(), format!("mount path `{}` must be absolute", mount.path.get_ref())),
                );
                continue;
            }
            let name = mount.name.get_ref();
            if let Err(why) = super::mount_name(name) {
                errors.push(source.error(&mount.name.span(), format!("mount name `{name}` {why}")));
                continue;
            }
            if grant.mounts.iter().any(|m| &m.name == name) {
                errors.push(source.error(&mount.name.span(), format!("mount name `{name}` is used twice")));
                continue;
            }
            let max_bytes_per_day = match mount.max_bytes_per_day {
                Some(quota) if !writable => {
                    errors.push(source.error(
                        &quota.span(),
                        format!("mount `{name}` is read-only: max_bytes_per_day applies to `mode = \"rw\"` only"),
                    ));
                    continue;
                }
                Some(quota) => quota.into_inner(),
                None => grant.max_bytes,
            };
            grant.mounts.push(super::MountGrant { path, name: name.clone(), writable, max_bytes_per_day });
        }
        policy.files = Some(At { line, value: grant });
    }

    Compiled { policy, name_line: source.line(&name_span), name_span }
}

/// The longest an approval may wait (`expires_after_s`), and what it waits without one.
const MAX_APPROVAL_WAIT_S: u64 = 30 * 86_400;
const DEFAULT_APPROVAL_WAIT_S: u64 = 86_400;

fn compile_rule(
    source: &Source<'_>,
    line: u32,
    index: usize,
    raw: RawRule,
    errors: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    let before = errors.len();
    let tools = globs(source, raw.tools, errors).into_iter().map(|g| g.value).collect::<Vec<_>>();
    let mut models = Vec::new();
    for pattern in raw.models {
        match Glob::model(pattern.get_ref()) {
            Ok(glob) => models.push(glob),
            Err(message) => errors.push(source.error(&pattern.span(), message)),
        }
    }
    if tools.is_empty() && models.is_empty() && errors.len() == before {
        errors.push(source.error(
            &raw.decision.span(),
            "a rule names no calls: give it `tools` (globs such as \"github.merge_*\") or `models`",
        ));
    }
    let when = raw.when.and_then(|when| match Condition::compile(when.get_ref()) {
        Ok(condition) => Some(condition),
        Err(error) => {
            errors.push(condition_error(source, &when, &error));
            None
        }
    });
    let mut approvers = Vec::new();
    for approver in &raw.approvers {
        match Selector::parse(approver.get_ref()) {
            Ok(selector) => approvers.push((approver.get_ref().clone(), selector)),
            Err(message) => errors.push(source.error(&approver.span(), message)),
        }
    }
    let approval_keys = !raw.approvers.is_empty() || raw.expires_after_s.is_some() || raw.self_approval.is_some();
    let effect = match raw.decision.get_ref().as_str() {
        "allow" | "deny" if approval_keys => {
            errors.push(source.error(
                &raw.decision.span(),
                format!(
                    "`approvers`, `expires_after_s` and `self_approval` belong to `decision = \"approve\"`, not {:?}",
                    raw.decision.get_ref()
                ),
            ));
            return None;
        }
        "allow" if !models.is_empty() => {
            errors.push(source.error(
                &raw.decision.span(),
                "a rule may deny a model call or ask approval for it, not allow it: models are granted by [policy.models]",
            ));
            return None;
        }
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        "approve" => {
            if approvers.is_empty() && raw.approvers.is_empty() {
                errors.push(source.error(
                    &raw.decision.span(),
                    "`decision = \"approve\"` needs `approvers`: selectors such as \"team:leads\", \"user:alice\" or \"role:admin\"",
                ));
            }
            let wait = raw.expires_after_s.as_ref().map_or(DEFAULT_APPROVAL_WAIT_S, |s| *s.get_ref());
            if let Some(expiry) =
                raw.expires_after_s.as_ref().filter(|s| !(1..=MAX_APPROVAL_WAIT_S).contains(s.get_ref()))
            {
                errors.push(source.error(
                    &expiry.span(),
                    format!("expires_after_s must be from 1 to {MAX_APPROVAL_WAIT_S} (30 days)"),
                ));
            }
            Effect::Approve(Arc::new(super::ApprovalRule {
                approvers: approvers.iter().map(|(text, _)| text.clone()).collect(),
                selectors: approvers.into_iter().map(|(_, selector)| selector).collect(),
                expires_after_s: wait,
                self_approval: raw.self_approval.unwrap_or(false),
                reason: raw.reason.clone(),
            }))
        }
        other => {
            errors.push(
                source.error(
                    &raw.decision.span(),
                    format!("decision {other:?} is not \"allow\", \"deny\" or \"approve\""),
                ),
            );
            return None;
        }
    };
    (errors.len() == before).then_some(Rule { line, index, tools, models, when, effect, reason: raw.reason })
}

/// A condition's error at its place in the file: the expression's own line and
/// column, counted from where its text starts inside the TOML string.
fn condition_error(source: &Source<'_>, when: &Spanned<String>, error: &super::condition::CompileError) -> Diagnostic {
    let span = when.span();
    let written = source.text.get(span.clone()).unwrap_or("");
    let quote = if written.starts_with("\"\"\"") || written.starts_with("'''") { 3 } else { 1 };
    let mut start = (span.start + quote).min(source.text.len());
    if quote == 3 && source.text[start..].starts_with('\n') {
        start += 1;
    }
    let (line, column) = source.position(start);
    let (line, column) =
        if error.line <= 1 { (line, column + error.column - 1) } else { (line + error.line - 1, error.column) };
    Diagnostic { file: source.path.to_path_buf(), line, column, message: error.message.clone() }
}

fn at<T>(source: &Source<'_>, value: Spanned<T>) -> At<T> {
    At { line: source.line(&value.span()), value: value.into_inner() }
}

fn globs(source: &Source<'_>, raw: Vec<Spanned<String>>, errors: &mut Vec<Diagnostic>) -> Vec<At<Glob>> {
    raw.into_iter()
        .filter_map(|pattern| match Glob::new(pattern.get_ref()) {
            Ok(glob) => Some(At { line: source.line(&pattern.span()), value: glob }),
            Err(message) => {
                errors.push(source.error(&pattern.span(), message));
                None
            }
        })
        .collect()
}

/// Rejects limits no execution could run under.
fn compile_limits(
    source: &Source<'_>,
    raw: RawLimits,
    ctx: &LoadContext,
    errors: &mut Vec<Diagnostic>,
) -> PartialLimits {
    let mut at_least_one = |value: Option<Spanned<u64>>, key: &str| {
        let value = value?;
        if *value.get_ref() == 0 {
            errors.push(source.error(&value.span(), format!("limits.{key} = 0: must be at least 1")));
            return None;
        }
        Some(value.into_inner())
    };
    let fuel = at_least_one(raw.fuel, "fuel");
    let wall_ms = at_least_one(raw.wall_ms, "wall_ms");
    let background_wall_ms = at_least_one(raw.background_wall_ms, "background_wall_ms");
    let code_bytes = at_least_one(raw.code_bytes, "code_bytes");
    let concurrent =
        at_least_one(raw.concurrent.map(|v| Spanned::new(v.span(), u64::from(*v.get_ref()))), "concurrent")
            .map(|n| n as u32);
    let memory_bytes = raw.memory_bytes.and_then(|value| {
        let bytes = *value.get_ref();
        let problem = if bytes < MIN_MEMORY_BYTES {
            format!(
                "limits.memory_bytes = {bytes} is below 8 MiB ({MIN_MEMORY_BYTES}): the guest needs that much to start"
            )
        } else if bytes > ctx.max_memory_bytes {
            format!("limits.memory_bytes = {bytes} is above the sandbox's max_memory_bytes ({})", ctx.max_memory_bytes)
        } else {
            return Some(bytes);
        };
        errors.push(source.error(&value.span(), problem));
        None
    });
    PartialLimits {
        fuel,
        memory_bytes,
        wall_ms,
        background_wall_ms,
        output_bytes: raw.output_bytes.map(Spanned::into_inner),
        result_bytes: raw.result_bytes.map(Spanned::into_inner),
        host_calls: raw.host_calls.map(Spanned::into_inner),
        tool_calls: raw.tool_calls.map(Spanned::into_inner),
        model_calls: raw.model_calls.map(Spanned::into_inner),
        code_bytes,
        concurrent,
    }
}
