//! Python stubs for MCP tools: what `search` (in Python mode) and
//! `GET /v1/tools?format=python` show a model that writes Python.
//!
//! Each server is a class inside `class tools`, each tool an `async` static method
//! taking keyword arguments typed by a `TypedDict` (PEP 692 `**args: Unpack[...]`):
//!
//! ```text
//! class tools:
//!     class everything:
//!         """Echo server"""
//!
//!         class EchoArgs(TypedDict):
//!             message: str  # Message to echo
//!
//!         @staticmethod
//!         async def echo(**args: Unpack[EchoArgs]) -> Any:
//!             """Echoes back the input"""
//! ```
//!
//! Names are the catalog's (the same identifiers and collision numbering as the
//! TypeScript declarations). The JSON Schema mapping is deliberately small: `enum` and
//! `const` become `Literal`, optional keys `NotRequired`, nested objects named
//! `TypedDict`s, unions `|`; whatever has no Python form is `Any`. A module of these
//! stubs, saved as a `.pyi`, passes `mypy --strict`.

use serde_json::{Map, Value};

use super::declarations::ToolDecl;

/// Deepest nesting of sub-schemas rendered; deeper is `Any`.
const MAX_NESTING: usize = 16;
/// Most `$ref` expansions along one path.
const MAX_REF_DEPTH: usize = 8;
const INDENT: &str = "    ";

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
];

/// The first line of a stub module: what it imports.
pub const HEADER: &str = "from typing import Any, Literal, NotRequired, TypedDict, Unpack\n";

/// Whether `name` can be written as a Python attribute or parameter.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&name)
}

/// The stub of one tool, as it appears inside its server's class (unindented): its
/// argument `TypedDict`s, then the method.
#[must_use]
pub fn tool(decl: &ToolDecl) -> String {
    if !is_identifier(decl.name) {
        return format!("# `{}` is not a name Python can call as an attribute\n", decl.name);
    }
    let mut renderer = Renderer { root: decl.input_schema, classes: Vec::new(), refs: 0 };
    let args_name = format!("{}Args", decl.type_name);
    let params = match object_of(decl.input_schema, &mut renderer) {
        Some(obj) if obj.get("properties").and_then(Value::as_object).is_some_and(|p| !p.is_empty()) => {
            renderer.typed_dict(&args_name, obj, 0);
            format!("**args: Unpack[{args_name}]")
        }
        _ => "**args: Any".to_string(),
    };
    let returns = match decl.output_schema {
        Some(schema) => {
            let mut output = Renderer { root: schema, classes: std::mem::take(&mut renderer.classes), refs: 0 };
            let ty = output.ty(schema, &format!("{}Result", decl.type_name), 0);
            renderer.classes = output.classes;
            ty
        }
        None => "Any".to_string(),
    };
    let mut out = renderer.classes.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!("@staticmethod\nasync def {}({params}) -> {returns}:\n", decl.name));
    let doc = decl.description.unwrap_or("").trim();
    out.push_str(&docstring(doc, INDENT));
    if !doc.is_empty() {
        // A body of its own: the host runs the call, never this.
        out.push_str(&format!("{INDENT}...\n"));
    }
    out
}

/// One server's class inside `class tools`, holding its tools' stubs.
#[must_use]
pub fn server(server: &str, description: Option<&str>, stubs: &[String]) -> String {
    let inner = format!("{INDENT}{INDENT}");
    let mut out = format!("{INDENT}class {server}:\n");
    let doc = description.map(str::trim).unwrap_or("");
    out.push_str(&docstring(doc, &inner));
    for stub in stubs {
        out.push('\n');
        for line in stub.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("{inner}{line}\n"));
            }
        }
    }
    out
}

/// A whole module: the imports, then `class tools` with each server's class.
#[must_use]
pub fn module(servers: &[String]) -> String {
    let mut out = format!("{HEADER}\n\nclass tools:\n");
    if servers.is_empty() {
        out.push_str(&format!("{INDENT}pass\n"));
    }
    out.push_str(&servers.join("\n"));
    out
}

/// A docstring (or `...` without text) at `indent`.
fn docstring(text: &str, indent: &str) -> String {
    if text.is_empty() {
        return format!("{indent}...\n");
    }
    let text = text.replace('\\', "\\\\").replace("\"\"\"", "\\\"\\\"\\\"");
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        return format!("{indent}\"\"\"{first}\"\"\"\n");
    }
    let mut out = format!("{indent}\"\"\"{first}\n");
    for line in rest {
        out.push_str(&if line.trim().is_empty() { "\n".to_string() } else { format!("{indent}{}\n", line.trim_end()) });
    }
    out.push_str(&format!("{indent}\"\"\"\n"));
    out
}

/// The object a schema describes, through local `$ref`s.
fn object_of<'a>(schema: &'a Value, renderer: &mut Renderer<'a>) -> Option<&'a Map<String, Value>> {
    let target = renderer.follow(schema, 0)?;
    let obj = target.as_object()?;
    let typed = match obj.get("type") {
        Some(Value::String(t)) => t == "object",
        None => obj.contains_key("properties"),
        _ => false,
    };
    typed.then_some(obj)
}

/// A JSON value as a Python literal, for `Literal[...]`; `None` when it has no form there.
fn literal(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(serde_json::to_string(s).ok()?),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Bool(true) => Some("True".into()),
        Value::Bool(false) => Some("False".into()),
        Value::Null => Some("None".into()),
        _ => None,
    }
}

fn union(mut members: Vec<String>) -> String {
    let mut seen = Vec::new();
    members.retain(|m| {
        !seen.contains(m) && {
            seen.push(m.clone());
            true
        }
    });
    if members.iter().any(|m| m == "Any") || members.is_empty() {
        return "Any".into();
    }
    members.join(" | ")
}

/// Renders types, collecting the `TypedDict` classes they need (inner ones first).
struct Renderer<'a> {
    root: &'a Value,
    classes: Vec<String>,
    refs: usize,
}

impl<'a> Renderer<'a> {
    /// `schema` with local `$ref`s followed; `None` past the expansion bound or for a
    /// reference that does not resolve.
    fn follow(&mut self, mut schema: &'a Value, nesting: usize) -> Option<&'a Value> {
        let mut hops = 0;
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            hops += 1;
            if hops > MAX_REF_DEPTH || self.refs + nesting > MAX_REF_DEPTH * 4 {
                return None;
            }
            self.refs += 1;
            let pointer = reference.strip_prefix('#')?;
            schema = self.root.pointer(pointer)?;
        }
        Some(schema)
    }

    fn ty(&mut self, schema: &'a Value, name: &str, nesting: usize) -> String {
        if nesting > MAX_NESTING {
            return "Any".into();
        }
        let Some(schema) = self.follow(schema, nesting) else { return "Any".into() };
        let Some(obj) = schema.as_object() else { return "Any".into() };
        if let Some(value) = obj.get("const") {
            return literal(value).map_or("Any".into(), |l| format!("Literal[{l}]"));
        }
        if let Some(Value::Array(values)) = obj.get("enum") {
            let literals: Option<Vec<String>> = values.iter().map(literal).collect();
            return match literals {
                Some(literals) if !literals.is_empty() => format!("Literal[{}]", literals.join(", ")),
                _ => "Any".into(),
            };
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(members)) = obj.get(key) {
                let members = members
                    .iter()
                    .enumerate()
                    .map(|(i, member)| self.ty(member, &format!("{name}{}", i + 1), nesting + 1))
                    .collect();
                return union(members);
            }
        }
        match obj.get("type") {
            Some(Value::Array(types)) => {
                let members =
                    types.iter().filter_map(Value::as_str).map(|t| self.typed(t, obj, name, nesting)).collect();
                union(members)
            }
            Some(Value::String(t)) => self.typed(t, obj, name, nesting),
            None if obj.contains_key("properties") => self.typed("object", obj, name, nesting),
            _ => "Any".into(),
        }
    }

    fn typed(&mut self, ty: &str, obj: &'a Map<String, Value>, name: &str, nesting: usize) -> String {
        match ty {
            "string" => "str".into(),
            "integer" => "int".into(),
            "number" => "float".into(),
            "boolean" => "bool".into(),
            "null" => "None".into(),
            "array" => match obj.get("items") {
                Some(items) if items.is_object() => {
                    format!("list[{}]", self.ty(items, &format!("{name}Item"), nesting + 1))
                }
                _ => "list[Any]".into(),
            },
            "object" => match obj.get("properties").and_then(Value::as_object) {
                Some(properties) if !properties.is_empty() => {
                    self.typed_dict(name, obj, nesting + 1);
                    name.to_string()
                }
                _ => match obj.get("additionalProperties") {
                    Some(extra) if extra.is_object() => {
                        format!("dict[str, {}]", self.ty(extra, &format!("{name}Value"), nesting + 1))
                    }
                    _ => "dict[str, Any]".into(),
                },
            },
            _ => "Any".into(),
        }
    }

    /// Declares `name` as the `TypedDict` of object schema `obj`.
    fn typed_dict(&mut self, name: &str, obj: &'a Map<String, Value>, nesting: usize) {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = Vec::new();
        for (key, schema) in obj.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let mut ty = self.ty(schema, &format!("{name}{}", super::declarations::pascal(key)), nesting + 1);
            if !required.contains(&key.as_str()) {
                ty = format!("NotRequired[{ty}]");
            }
            let doc = schema
                .get("description")
                .and_then(Value::as_str)
                .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "));
            fields.push((key, ty, doc));
        }
        let class = if fields.iter().all(|(key, _, _)| is_identifier(key)) {
            let mut class = format!("class {name}(TypedDict):\n");
            for (key, ty, doc) in &fields {
                match doc {
                    Some(doc) if !doc.is_empty() => class.push_str(&format!("{INDENT}{key}: {ty}  # {doc}\n")),
                    _ => class.push_str(&format!("{INDENT}{key}: {ty}\n")),
                }
            }
            class
        } else {
            // Keys Python cannot spell as names: the functional form.
            let items: Vec<String> = fields
                .iter()
                .map(|(key, ty, _)| format!("{}: {ty}", serde_json::to_string(key).unwrap_or_default()))
                .collect();
            format!("{name} = TypedDict(\"{name}\", {{{}}})\n", items.join(", "))
        };
        self.classes.push(class);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stub(input: Value, output: Option<Value>) -> String {
        tool(&ToolDecl {
            name: "create_issue",
            type_name: "CreateIssue",
            description: Some("Opens an issue"),
            input_schema: &input,
            output_schema: output.as_ref(),
        })
    }

    #[test]
    fn objects_become_typed_dicts_and_enums_literals() {
        let out = stub(
            json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "description": "The title"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "state": {"enum": ["open", "closed"]},
                    "meta": {"type": "object", "properties": {"weight": {"type": ["integer", "null"]}}},
                },
                "required": ["title"]
            }),
            None,
        );
        assert!(out.contains("class CreateIssueArgsMeta(TypedDict):\n    weight: NotRequired[int | None]\n"), "{out}");
        assert!(out.contains("    title: str  # The title\n"), "{out}");
        assert!(out.contains("    labels: NotRequired[list[str]]\n"), "{out}");
        assert!(out.contains("    state: NotRequired[Literal[\"open\", \"closed\"]]\n"), "{out}");
        assert!(out.contains("@staticmethod\nasync def create_issue(**args: Unpack[CreateIssueArgs]) -> Any:\n    \"\"\"Opens an issue\"\"\"\n    ...\n"), "{out}");
    }

    #[test]
    fn odd_keys_refs_and_outputs() {
        let out = stub(
            json!({
                "type": "object",
                "properties": {"from": {"$ref": "#/$defs/when"}, "x-y": {"type": "number"}},
                "$defs": {"when": {"type": "string"}}
            }),
            Some(json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]})),
        );
        assert!(out.contains(r#"CreateIssueArgs = TypedDict("CreateIssueArgs", {"from": NotRequired[str], "x-y": NotRequired[float]})"#), "{out}");
        assert!(out.contains("class CreateIssueResult(TypedDict):\n    id: int\n"), "{out}");
        assert!(out.contains("-> CreateIssueResult:"), "{out}");
        let none = stub(json!({"type": "object"}), None);
        assert!(none.contains("async def create_issue(**args: Any) -> Any:"), "{none}");
        assert!(!is_identifier("class") && !is_identifier("a-b") && is_identifier("get_sum"));
    }
}
