//! `when` conditions: CEL expressions over one call, evaluated at the moment it is
//! made, inside the sandbox, for every tool call and every `model.chat`.
//!
//! A condition sees these variables, and no others (a name outside them is a load
//! error at its `FILE:LINE:COLUMN`):
//!
//! | variable | value |
//! |---|---|
//! | `args` | the call's arguments as the code passed them (a tool's arguments; for `model.chat`, the request) |
//! | `principal` | `{user, team, teams, role, key, claims}`: `claims` holds the identity provider's token claims, `{}` for a key |
//! | `tool` | `server.tool` for a tool call, `""` for a model call |
//! | `server` | the tool's server, `""` for a model call |
//! | `model` | the model (or `tier:NAME`, `auto`) a model call asks for, `""` for a tool call |
//! | `session` | the session the code runs in, `""` outside one |
//! | `now` | the time of the call, a CEL `timestamp` (UTC) |
//!
//! Arguments come from hostile code, so conversion is total: JSON integers that fit
//! become `int`, other numbers `double`, objects maps with string keys (`__proto__`
//! is a key like any other), and nesting is bounded by the JSON parser's depth limit
//! before a condition ever sees it. A condition that fails at run time (a missing
//! key, a type mismatch) decides nothing by itself: the call is denied, with the
//! error as the reason. `has(args.base)` tests for a key without failing.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Context, Program, Value};
use serde_json::Value as Json;

use crate::auth::Principal;

/// The variables a condition may use.
pub const VARIABLES: [&str; 7] = ["args", "principal", "tool", "server", "model", "session", "now"];

/// The standard functions, built once: a condition's evaluation scope borrows it.
static ROOT: LazyLock<Context<'static, 'static>> = LazyLock::new(Context::default);

/// A compiled `when` expression.
pub struct Condition {
    program: Program,
    /// The expression as written, for explanations.
    pub text: String,
    /// The variables it reads: only those are built for each call.
    uses: Vec<&'static str>,
    /// How it reads `args`. Converting arguments is most of a condition's cost, so a
    /// condition that reads only named fields (`args.base`) converts only those.
    args: ArgsUse,
}

/// How a condition reads `args`.
#[derive(Debug, PartialEq)]
enum ArgsUse {
    Not,
    /// Only as `args.NAME` (or `has(args.NAME)`), for these names.
    Fields(Vec<String>),
    Whole,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.text).finish()
    }
}

/// A problem in a condition's text: 1-based line and column within the expression.
#[derive(Debug, PartialEq, Eq)]
pub struct CompileError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// What a condition sees of one call (besides the tool or model it names).
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub principal: &'a Principal,
    pub args: &'a Json,
    /// The session the code runs in.
    pub session: Option<&'a str>,
    /// Unix milliseconds.
    pub now_ms: i64,
}

impl<'a> Facts<'a> {
    /// Facts of a call made now.
    pub fn now(principal: &'a Principal, args: &'a Json, session: Option<&'a str>) -> Self {
        Self { principal, args, session, now_ms: crate::time::now_ms() }
    }
}

/// What a call is: a tool's `server.tool`, or the model a model call names.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Tool(&'a str),
    Model(&'a str),
}

impl Condition {
    /// Parses `text` and checks it uses only [`VARIABLES`].
    pub fn compile(text: &str) -> Result<Self, CompileError> {
        let program = Program::compile(text).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map_or((1, 1), |e| (e.pos.0.max(1) as u32, e.pos.1.max(1) as u32));
            let message = first.map_or_else(|| "invalid expression".to_string(), |e| e.msg.clone());
            CompileError { line, column, message: format!("invalid condition: {message}") }
        })?;
        let mut free = Vec::new();
        let mut args = ArgsUse::Not;
        free_variables(program.expression(), &mut Vec::new(), &mut free, &mut args);
        if let Some((id, name)) = free.iter().find(|(_, name)| !VARIABLES.contains(&name.as_str())) {
            let (line, column) = position(text, program.source_info().offset_for(*id).map_or(0, |(start, _)| start));
            return Err(CompileError {
                line,
                column,
                message: format!("unknown variable `{name}` in condition: it may use {}", VARIABLES.join(", ")),
            });
        }
        let uses = VARIABLES.into_iter().filter(|v| free.iter().any(|(_, name)| name == v)).collect();
        Ok(Self { uses, args, text: text.to_string(), program })
    }

    /// Whether the condition holds for `target` and `facts`; `Err` says why it could
    /// not be decided (the call is then denied).
    pub fn holds(&self, target: Target<'_>, facts: &Facts<'_>) -> Result<bool, String> {
        let mut scope = ROOT.new_inner_scope();
        let (tool, server, model) = match target {
            Target::Tool(tool) => (tool, tool.split_once('.').map_or("", |(server, _)| server), ""),
            Target::Model(model) => ("", "", model),
        };
        for &variable in &self.uses {
            let value = match variable {
                "tool" => Value::from(tool),
                "server" => Value::from(server),
                "model" => Value::from(model),
                "session" => Value::from(facts.session.unwrap_or("")),
                "now" => Value::Timestamp(
                    chrono::DateTime::from_timestamp_millis(facts.now_ms).unwrap_or_default().fixed_offset(),
                ),
                "principal" => principal_value(facts.principal),
                _ => match &self.args {
                    ArgsUse::Fields(names) => match facts.args {
                        Json::Object(fields) => {
                            let map: HashMap<Key, Value> = names
                                .iter()
                                .filter_map(|name| Some((Key::from(name.as_str()), json_to_cel(fields.get(name)?))))
                                .collect();
                            Value::Map(Map { map: Arc::new(map) })
                        }
                        other => json_to_cel(other),
                    },
                    _ => json_to_cel(facts.args),
                },
            };
            scope.add_variable_from_value(variable, value);
        }
        match self.program.execute(&scope) {
            Ok(Value::Bool(holds)) => Ok(holds),
            Ok(other) => Err(format!("the condition gave {}, not a bool", type_name(&other))),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Identifiers the expression reads that no comprehension binds, with the node each
/// first appears at; and how it reads `args`.
fn free_variables(expr: &IdedExpr, bound: &mut Vec<String>, free: &mut Vec<(u64, String)>, args: &mut ArgsUse) {
    if let Expr::Select(select) = &expr.expr {
        if matches!(&select.operand.expr, Expr::Ident(name) if name == "args") && !bound.iter().any(|b| b == "args") {
            if !free.iter().any(|(_, n)| n == "args") {
                free.push((select.operand.id, "args".into()));
            }
            match args {
                ArgsUse::Not => *args = ArgsUse::Fields(vec![select.field.clone()]),
                ArgsUse::Fields(names) if !names.contains(&select.field) => names.push(select.field.clone()),
                _ => {}
            }
            return;
        }
    }
    match &expr.expr {
        Expr::Ident(name) => {
            if name.starts_with('@') || bound.contains(name) {
                return;
            }
            if name == "args" {
                *args = ArgsUse::Whole;
            }
            if !free.iter().any(|(_, n)| n == name) {
                free.push((expr.id, name.clone()));
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, free, args);
            }
            for arg in &call.args {
                free_variables(arg, bound, free, args);
            }
        }
        Expr::Comprehension(comp) => {
            free_variables(&comp.iter_range, bound, free, args);
            free_variables(&comp.accu_init, bound, free, args);
            let depth = bound.len();
            bound.push(comp.iter_var.clone());
            bound.extend(comp.iter_var2.clone());
            bound.push(comp.accu_var.clone());
            for part in [&comp.loop_cond, &comp.loop_step, &comp.result] {
                free_variables(part, bound, free, args);
            }
            bound.truncate(depth);
        }
        Expr::List(list) => list.elements.iter().for_each(|e| free_variables(e, bound, free, args)),
        Expr::Map(map) => map.entries.iter().for_each(|entry| entry_variables(&entry.expr, bound, free, args)),
        Expr::Struct(item) => item.entries.iter().for_each(|entry| entry_variables(&entry.expr, bound, free, args)),
        Expr::Select(select) => free_variables(&select.operand, bound, free, args),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry_variables(entry: &EntryExpr, bound: &mut Vec<String>, free: &mut Vec<(u64, String)>, args: &mut ArgsUse) {
    match entry {
        EntryExpr::StructField(field) => free_variables(&field.value, bound, free, args),
        EntryExpr::MapEntry(entry) => {
            free_variables(&entry.key, bound, free, args);
            free_variables(&entry.value, bound, free, args);
        }
    }
}

/// 1-based line and column of character `offset` in `text`.
fn position(text: &str, offset: u32) -> (u32, u32) {
    let before: String = text.chars().take(offset as usize).collect();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line as u32, column as u32)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Int(_) | Value::UInt(_) => "an int",
        Value::Float(_) => "a double",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Null => "null",
        _ => "a value",
    }
}

/// A JSON value as CEL sees it: integers that fit `int` as `int`, other numbers
/// `double`; objects are maps with string keys.
pub fn json_to_cel(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(fields) => {
            let map: HashMap<Key, Value> =
                fields.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

fn principal_value(principal: &Principal) -> Value {
    let claims = principal.claims.as_ref().map_or(Json::Object(Default::default()), |c| Json::Object(c.0.clone()));
    let fields: HashMap<Key, Value> = [
        ("user", Value::String(Arc::new(principal.user.clone()))),
        ("team", Value::String(Arc::new(principal.team.clone()))),
        ("teams", Value::List(Arc::new(principal.teams.iter().map(|t| Value::String(Arc::new(t.clone()))).collect()))),
        ("role", Value::String(Arc::new(principal.role.as_str().to_string()))),
        ("key", Value::String(Arc::new(principal.key.clone()))),
        ("claims", json_to_cel(&claims)),
    ]
    .into_iter()
    .map(|(k, v)| (Key::String(Arc::new(k.to_string())), v))
    .collect();
    Value::Map(Map { map: Arc::new(fields) })
}
