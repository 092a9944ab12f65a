//! TypeScript declarations for MCP tools.
//!
//! Every upstream tool is exposed to scripts as `tools.<server>.<tool>(args)`, returning a `Promise`.
//! Models learn the call shapes from TypeScript declarations generated here from each tool's MCP
//! `inputSchema` and optional `outputSchema` (JSON Schema, draft 2020-12 or draft-07 style):
//!
//! ```text
//! /** Echo server */
//! declare namespace tools.everything {
//!   interface EchoArgs {
//!     /** Message to echo */
//!     message: string;
//!   }
//!   /** Echoes back the input */
//!   function echo(args: EchoArgs): Promise<unknown>;
//! }
//! ```
//!
//! The output of [`namespace`] for any number of servers can be concatenated into one `.d.ts`
//! file that compiles with `tsc --noEmit --strict`, provided server names, tool names and the
//! Pascal-cased tool names ([`pascal`]) are distinct within their scope.
//!
//! The mapping from JSON Schema to TypeScript is deliberately lossy: whatever has no TypeScript
//! form (numeric bounds, patterns, `not`, `if`/`then`/`else`, remote `$ref`s, ...) becomes
//! `unknown` or is left out, and the output is kept compact because models pay for every token
//! of it. Properties appear in the order of `serde_json`'s map (alphabetical without its
//! `preserve_order` feature).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Maximum number of `$ref` expansions along one path through a schema; deeper references
/// become `unknown`.
const MAX_REF_DEPTH: usize = 8;
/// How often the same `$ref` may be expanded along one path. With 2, a recursive definition is
/// shown with one level of unfolding before it is cut off with `unknown`; this keeps recursive
/// (and especially branching recursive) definitions from blowing up the output.
const MAX_REF_REPEAT: usize = 2;
/// Maximum nesting of sub-schemas rendered, whatever their kind; guards the recursion against
/// pathologically deep documents.
const MAX_NESTING: usize = 32;
/// `default` values whose JSON text is longer than this are left out of the JSDoc.
const MAX_DEFAULT_LEN: usize = 60;
/// Object types without documentation are written on one line if that line is at most this long.
const MAX_INLINE_LEN: usize = 100;
/// One level of indentation.
const INDENT: &str = "  ";

/// One tool to declare.
#[derive(Debug, Clone, Copy)]
pub struct ToolDecl<'a> {
    /// JavaScript identifier (already sanitised) used as the function name.
    pub name: &'a str,
    /// The base of the interface names (`<type_name>Args`, `<type_name>Result`):
    /// usually [`pascal`]`(name)`, made unique within the server by the caller.
    pub type_name: &'a str,
    /// The tool's description, shown as the function's JSDoc.
    pub description: Option<&'a str>,
    /// The MCP `inputSchema`.
    pub input_schema: &'a Value,
    /// The MCP `outputSchema`, if the tool declares one.
    pub output_schema: Option<&'a Value>,
}

/// Declarations for one tool, as they appear inside its server's namespace (unindented).
///
/// The output is an `interface <Pascal>Args {...}` (or `type <Pascal>Args = ...;` when the input
/// schema is not a plain object schema), then, when an output schema exists, an
/// `interface <Pascal>Result {...}` or `type <Pascal>Result = ...;`, and finally the JSDoc'd
/// `function <name>(args: <Pascal>Args): Promise<<Pascal>Result>;` (`Promise<unknown>` without an
/// output schema). When the input schema has neither properties nor required names, the
/// parameter is optional: `args?: <Pascal>Args`.
#[must_use]
pub fn tool(decl: &ToolDecl) -> String {
    let base = decl.type_name;
    let args_name = format!("{base}Args");
    let mut out = declare(&args_name, decl.input_schema, true);
    let result = match decl.output_schema {
        Some(schema) => {
            let result_name = format!("{base}Result");
            out.push_str(&declare(&result_name, schema, false));
            result_name
        }
        None => "unknown".to_owned(),
    };
    if let Some(description) = decl.description {
        out.push_str(&jsdoc(description, ""));
    }
    let optional = if takes_no_args(decl.input_schema) { "?" } else { "" };
    out.push_str(&format!("function {}(args{optional}: {args_name}): Promise<{result}>;\n", decl.name));
    out
}

/// A whole server: `declare namespace tools.<server> {\n  ...\n}\n`, preceded by the server's
/// description as JSDoc when there is one.
///
/// `server` must be a JavaScript identifier; `tools` are already rendered [`tool`] strings, which
/// are indented by one level.
#[must_use]
pub fn namespace(server: &str, description: Option<&str>, tools: &[String]) -> String {
    let mut out = description.map(|d| jsdoc(d, "")).unwrap_or_default();
    out.push_str(&format!("declare namespace tools.{server} {{\n"));
    for line in tools.iter().flat_map(|t| t.lines()) {
        if !line.is_empty() {
            out.push_str(INDENT);
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

/// Pascal-case helper: `echo_tool` → `EchoTool`, `getTinyImage` → `GetTinyImage`.
///
/// Every character other than a letter, a digit or `$` (so `_`, `-`, `.`, ...) separates words;
/// the first letter of each word is upper-cased and the rest is kept as is. An empty result
/// becomes `Tool`, and one starting with a digit is prefixed `T`, so that identifiers map to
/// identifiers. Distinct names can map to the same result (`get_x`, `getX`), which the caller
/// must avoid within one namespace.
#[must_use]
pub fn pascal(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut word_start = true;
    for c in name.chars() {
        if c.is_alphanumeric() || c == '$' {
            if word_start {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            word_start = false;
        } else {
            word_start = true;
        }
    }
    match out.chars().next() {
        None => "Tool".to_owned(),
        Some(c) if c.is_numeric() => format!("T{out}"),
        Some(_) => out,
    }
}

/// Declares `name` as the TypeScript form of `schema`: an interface for plain object schemas,
/// a type alias otherwise. For `args`, an object schema without properties declares an empty
/// interface (nothing to pass) unless it explicitly admits extra keys.
fn declare(name: &str, schema: &Value, args: bool) -> String {
    let mut renderer = Renderer::new(schema);
    let target = renderer.follow_refs(schema);
    if let Some(obj) = target.as_object().filter(|obj| is_object_schema(obj)) {
        let members = renderer.members(obj, 0, args);
        let body = render_object(&members, 0, true);
        let extra = renderer.combinators(obj, 0);
        if extra.is("unknown") {
            return format!("interface {name} {body}\n");
        }
        let ty = intersection(vec![Ty::atom(body), extra]);
        return format!("type {name} = {};\n", ty.text);
    }
    format!("type {name} = {};\n", renderer.ty(target, 0).text)
}

/// Whether a tool's input schema declares no properties and no required names, so that its
/// `args` parameter can be omitted.
fn takes_no_args(schema: &Value) -> bool {
    let target = Renderer::new(schema).follow_refs(schema);
    let is_empty = |key: &str| match target.get(key) {
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Array(list)) => list.is_empty(),
        _ => true,
    };
    is_empty("properties") && is_empty("required")
}

/// Whether `obj` describes a plain object (an `interface` candidate): typed `object` (or untyped
/// with properties) and not narrowed to literals or made nullable.
fn is_object_schema(obj: &Map<String, Value>) -> bool {
    let object_typed = match obj.get("type") {
        Some(Value::String(ty)) => ty == "object",
        None => obj.contains_key("properties"),
        Some(_) => false,
    };
    object_typed
        && !["const", "enum", "$ref"].iter().any(|key| obj.contains_key(*key))
        && obj.get("nullable").and_then(Value::as_bool) != Some(true)
}

/// How tightly a rendered type binds, loosest first; used to decide where parentheses go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    /// `A | B`
    Union,
    /// `A & B`
    Intersection,
    /// Anything that needs no parentheses: keywords, literals, `T[]`, `{...}`, `[...]`.
    Atom,
}

/// A rendered TypeScript type.
#[derive(Debug, Clone)]
struct Ty {
    text: String,
    prec: Prec,
}

impl Ty {
    fn atom(text: impl Into<String>) -> Self {
        Self { text: text.into(), prec: Prec::Atom }
    }

    fn unknown() -> Self {
        Self::atom("unknown")
    }

    fn never() -> Self {
        Self::atom("never")
    }

    fn is(&self, text: &str) -> bool {
        self.text == text
    }

    /// The text, parenthesised if it binds more loosely than `context` requires.
    fn wrap(&self, context: Prec) -> String {
        if self.prec < context {
            format!("({})", self.text)
        } else {
            self.text.clone()
        }
    }
}

/// `A | B | ...`: duplicates and `never` are dropped, and any `unknown` member absorbs the rest.
fn union(members: Vec<Ty>) -> Ty {
    let mut parts: Vec<Ty> = Vec::new();
    for member in members {
        if member.is("unknown") {
            return Ty::unknown();
        }
        if !member.is("never") && !parts.iter().any(|p| p.text == member.text) {
            parts.push(member);
        }
    }
    match parts.len() {
        0 => Ty::never(),
        1 => parts.swap_remove(0),
        _ => Ty { text: parts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join(" | "), prec: Prec::Union },
    }
}

/// `A & B & ...`: duplicates and `unknown` are dropped, and any `never` member absorbs the rest.
fn intersection(members: Vec<Ty>) -> Ty {
    let mut parts: Vec<Ty> = Vec::new();
    for member in members {
        if member.is("never") {
            return Ty::never();
        }
        if !member.is("unknown") && !parts.iter().any(|p| p.text == member.text) {
            parts.push(member);
        }
    }
    match parts.len() {
        0 => Ty::unknown(),
        1 => parts.swap_remove(0),
        _ => Ty {
            text: parts.iter().map(|p| p.wrap(Prec::Intersection)).collect::<Vec<_>>().join(" & "),
            prec: Prec::Intersection,
        },
    }
}

/// The TypeScript type of a JSON value used as `const` or `enum` member: a literal type for
/// scalars, a tuple or object type for arrays and objects.
fn literal(value: &Value, nesting: usize) -> Ty {
    if nesting >= MAX_NESTING {
        return Ty::unknown();
    }
    match value {
        Value::Array(items) => Ty::atom(format!(
            "[{}]",
            items.iter().map(|item| literal(item, nesting + 1).text).collect::<Vec<_>>().join(", ")
        )),
        Value::Object(map) if map.is_empty() => Ty::atom("Record<string, never>"),
        Value::Object(map) => Ty::atom(format!(
            "{{ {} }}",
            map.iter()
                .map(|(key, item)| format!("{}: {}", property_key(key), literal(item, nesting + 1).text))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        // Strings, numbers, booleans and null: their JSON text is valid TypeScript literal syntax.
        scalar => Ty::atom(scalar.to_string()),
    }
}

/// A property name as written in an object type: bare if it is an identifier, JSON-quoted otherwise.
fn property_key(name: &str) -> String {
    let mut chars = name.chars();
    let is_identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if is_identifier {
        name.to_owned()
    } else {
        Value::String(name.to_owned()).to_string()
    }
}

/// A JSDoc comment for `text` at the given indentation, ending in a newline; empty if `text` is
/// blank. `*/` in the text is escaped as `*\/` so the comment cannot be closed early.
fn jsdoc(text: &str, indent: &str) -> String {
    let text = text.replace("*/", "*\\/");
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let Some(first) = lines.iter().position(|line| !line.trim().is_empty()) else {
        return String::new();
    };
    let last = lines.iter().rposition(|line| !line.trim().is_empty()).unwrap_or(first);
    let lines = lines.get(first..=last).unwrap_or_default();
    if let [line] = lines {
        return format!("{indent}/** {} */\n", line.trim());
    }
    let mut out = format!("{indent}/**\n");
    for line in lines {
        if line.is_empty() {
            out.push_str(&format!("{indent} *\n"));
        } else {
            out.push_str(&format!("{indent} * {line}\n"));
        }
    }
    out.push_str(&format!("{indent} */\n"));
    out
}

/// One member of an object type: a property or an index signature.
#[derive(Debug)]
struct Member {
    /// JSDoc text (not yet formatted as a comment).
    doc: Option<String>,
    /// Property key as written, or `[key: string]` for an index signature.
    key: String,
    optional: bool,
    ty: Ty,
}

impl Member {
    fn signature(&self) -> String {
        let optional = if self.optional { "?" } else { "" };
        format!("{}{optional}: {}", self.key, self.ty.text)
    }
}

/// An object type (`{ a: string; b?: number }`) from its members. It is written on one line
/// unless `multiline` is set, a member is documented or multi-line itself, or the line would be
/// long; multi-line bodies are indented one level deeper than `indent`, the level of the line
/// the type starts on.
fn render_object(members: &[Member], indent: usize, multiline: bool) -> String {
    if members.is_empty() {
        return "{}".to_owned();
    }
    let multiline = multiline || members.iter().any(|m| m.doc.is_some() || m.ty.text.contains('\n'));
    if !multiline {
        let inline = format!("{{ {} }}", members.iter().map(Member::signature).collect::<Vec<_>>().join("; "));
        if inline.len() <= MAX_INLINE_LEN {
            return inline;
        }
    }
    let inner = INDENT.repeat(indent + 1);
    let mut out = "{\n".to_owned();
    for member in members {
        if let Some(doc) = &member.doc {
            out.push_str(&jsdoc(doc, &inner));
        }
        out.push_str(&inner);
        out.push_str(&member.signature());
        out.push_str(";\n");
    }
    out.push_str(&INDENT.repeat(indent));
    out.push('}');
    out
}

/// The array stored under `key`, if it is a non-empty array.
fn non_empty_array<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Vec<Value>> {
    obj.get(key).and_then(Value::as_array).filter(|list| !list.is_empty())
}

/// Renders schemas of one document, resolving local `$ref`s against its root.
struct Renderer<'a> {
    root: &'a Value,
    /// `$ref`s being expanded on the current path, outermost first.
    refs: Vec<&'a str>,
    /// Sub-schemas being rendered on the current path.
    nesting: usize,
}

impl<'a> Renderer<'a> {
    fn new(root: &'a Value) -> Self {
        Self { root, refs: Vec::new(), nesting: 0 }
    }

    /// Resolves a local reference (`#`, `#/$defs/X`, `#/definitions/X` or any other JSON pointer
    /// into the root). Remote references resolve to nothing.
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            Some(self.root)
        } else {
            self.root.pointer(pointer)
        }
    }

    /// Whether `reference` may be expanded once more on the current path.
    fn may_expand(&self, reference: &str) -> bool {
        self.refs.len() < MAX_REF_DEPTH && self.refs.iter().filter(|r| **r == reference).count() < MAX_REF_REPEAT
    }

    /// Follows a chain of top-level `$ref`s as far as the limits allow, recording them as being
    /// expanded; returns the schema reached.
    fn follow_refs(&mut self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            match self.resolve(reference) {
                Some(target) if self.may_expand(reference) => {
                    self.refs.push(reference);
                    schema = target;
                }
                _ => break,
            }
        }
        schema
    }

    /// The TypeScript type of `schema`, laid out for a line at indentation level `indent`.
    fn ty(&mut self, schema: &'a Value, indent: usize) -> Ty {
        if self.nesting >= MAX_NESTING {
            return Ty::unknown();
        }
        self.nesting += 1;
        let ty = self.ty_unguarded(schema, indent);
        self.nesting -= 1;
        ty
    }

    fn ty_unguarded(&mut self, schema: &'a Value, indent: usize) -> Ty {
        let obj = match schema {
            Value::Bool(false) => return Ty::never(),
            Value::Object(obj) => obj,
            // `true`, and anything that is not a schema at all.
            _ => return Ty::unknown(),
        };
        if let Some(reference) = obj.get("$ref") {
            return self.reference(reference, indent);
        }
        let base = self.base(obj, indent);
        let combined = self.combinators(obj, indent);
        let ty = intersection(vec![base, combined]);
        if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
            union(vec![ty, Ty::atom("null")])
        } else {
            ty
        }
    }

    /// Expands a `$ref`, or `unknown` if it is not local, does not resolve or exceeds the limits.
    fn reference(&mut self, reference: &'a Value, indent: usize) -> Ty {
        let Some(reference) = reference.as_str() else {
            return Ty::unknown();
        };
        let Some(target) = self.resolve(reference).filter(|_| self.may_expand(reference)) else {
            return Ty::unknown();
        };
        self.refs.push(reference);
        let ty = self.ty(target, indent);
        self.refs.pop();
        ty
    }

    /// The type described by `const`, `enum` or `type` (or implied by object/array keywords).
    fn base(&mut self, obj: &'a Map<String, Value>, indent: usize) -> Ty {
        if let Some(value) = obj.get("const") {
            return literal(value, self.nesting);
        }
        if let Some(values) = obj.get("enum").and_then(Value::as_array) {
            return union(values.iter().map(|value| literal(value, self.nesting)).collect());
        }
        match obj.get("type") {
            Some(Value::String(name)) => self.named(name, obj, indent),
            Some(Value::Array(names)) if !names.is_empty() => {
                let members = names
                    .iter()
                    .map(|name| match name.as_str() {
                        Some(name) => self.named(name, obj, indent),
                        None => Ty::unknown(),
                    })
                    .collect();
                union(members)
            }
            _ if ["properties", "additionalProperties", "patternProperties"]
                .iter()
                .any(|key| obj.contains_key(*key)) =>
            {
                self.object(obj, indent)
            }
            _ if obj.contains_key("items") || obj.contains_key("prefixItems") => self.array(obj, indent),
            _ => Ty::unknown(),
        }
    }

    /// `allOf` as an intersection, `anyOf` and `oneOf` as unions; `unknown` if there are none.
    fn combinators(&mut self, obj: &'a Map<String, Value>, indent: usize) -> Ty {
        let mut parts = Vec::new();
        if let Some(all) = non_empty_array(obj, "allOf") {
            parts.extend(all.iter().map(|schema| self.ty(schema, indent)));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alternatives) = non_empty_array(obj, key) {
                let members = alternatives.iter().map(|schema| self.ty(schema, indent)).collect();
                parts.push(union(members));
            }
        }
        intersection(parts)
    }

    /// One JSON Schema type name for the schema `obj`.
    fn named(&mut self, name: &str, obj: &'a Map<String, Value>, indent: usize) -> Ty {
        match name {
            "string" => Ty::atom("string"),
            "number" | "integer" => Ty::atom("number"),
            "boolean" => Ty::atom("boolean"),
            "null" => Ty::atom("null"),
            "array" => self.array(obj, indent),
            "object" => self.object(obj, indent),
            _ => Ty::unknown(),
        }
    }

    /// `T[]` from `items`, or a tuple from `prefixItems` (draft 2020-12) or an `items` array
    /// (draft-07), with a rest element when further items are allowed by a schema.
    fn array(&mut self, obj: &'a Map<String, Value>, indent: usize) -> Ty {
        let (prefix, rest) = match (obj.get("prefixItems"), obj.get("items")) {
            (Some(Value::Array(prefix)), rest) => (Some(prefix), rest),
            (_, Some(Value::Array(prefix))) => (Some(prefix), obj.get("additionalItems")),
            (_, items) => (None, items),
        };
        let Some(prefix) = prefix else {
            let item = rest.map_or_else(Ty::unknown, |schema| self.ty(schema, indent));
            return Ty::atom(format!("{}[]", item.wrap(Prec::Atom)));
        };
        let mut elements: Vec<String> = prefix.iter().map(|schema| self.ty(schema, indent).text).collect();
        if let Some(schema) = rest.filter(|schema| **schema != Value::Bool(false)) {
            let item = self.ty(schema, indent);
            elements.push(format!("...{}[]", item.wrap(Prec::Atom)));
        }
        Ty::atom(format!("[{}]", elements.join(", ")))
    }

    /// An object type from `properties`, `required`, `additionalProperties` and
    /// `patternProperties`.
    fn object(&mut self, obj: &'a Map<String, Value>, indent: usize) -> Ty {
        let members = self.members(obj, indent, false);
        Ty::atom(render_object(&members, indent, false))
    }

    /// The members of an object type. Names that are required but not among the properties are
    /// declared `unknown`. Extra keys get an index signature when the schema admits them (its
    /// type is `unknown` next to named properties, which keeps it compatible with them); an
    /// object schema that says nothing about its keys admits any. With `args` (the top level of
    /// an input schema), an object without properties gets no members unless extra keys are
    /// explicitly allowed.
    fn members(&mut self, obj: &'a Map<String, Value>, indent: usize, args: bool) -> Vec<Member> {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let properties = obj.get("properties").and_then(Value::as_object);
        let mut members = Vec::new();
        for (name, schema) in properties.into_iter().flatten() {
            members.push(Member {
                doc: self.doc(schema),
                key: property_key(name),
                optional: !required.contains(&name.as_str()),
                ty: self.ty(schema, indent + 1),
            });
        }
        let mut undeclared = BTreeSet::new();
        for name in required {
            if !properties.is_some_and(|p| p.contains_key(name)) && undeclared.insert(name) {
                members.push(Member { doc: None, key: property_key(name), optional: false, ty: Ty::unknown() });
            }
        }

        let mut extra_types = Vec::new();
        if let Some(patterns) = obj.get("patternProperties").and_then(Value::as_object) {
            extra_types.extend(patterns.values().map(|schema| self.ty(schema, indent + 1)));
        }
        match obj.get("additionalProperties") {
            Some(Value::Bool(false)) => {}
            Some(schema) => extra_types.push(self.ty(schema, indent + 1)),
            None if extra_types.is_empty() && members.is_empty() && !args => extra_types.push(Ty::unknown()),
            None => {}
        }
        let index = if !extra_types.is_empty() {
            Some(if members.is_empty() { union(extra_types) } else { Ty::unknown() })
        } else if members.is_empty() && !args {
            // No properties and no extra keys: only the empty object.
            Some(Ty::never())
        } else {
            None
        };
        if let Some(ty) = index {
            members.push(Member { doc: None, key: "[key: string]".to_owned(), optional: false, ty });
        }
        members
    }

    /// JSDoc text for a property: its description (or that of the definition it references and
    /// is expanded),
    /// with short `@default`, `@format` and `@deprecated` hints.
    fn doc(&self, schema: &Value) -> Option<String> {
        let obj = schema.as_object()?;
        let description = obj.get("description").and_then(Value::as_str).or_else(|| {
            // Only where the reference is expanded: a cut-off `unknown` needs no description.
            let reference = obj.get("$ref")?.as_str()?;
            let target = self.resolve(reference).filter(|_| self.may_expand(reference))?;
            target.get("description")?.as_str()
        });
        let mut tags = Vec::new();
        if let Some(default) = obj.get("default").filter(|d| !d.is_null()) {
            let text = default.to_string();
            if text.len() <= MAX_DEFAULT_LEN {
                tags.push(format!("@default {text}"));
            }
        }
        if let Some(format) = obj.get("format").and_then(Value::as_str) {
            tags.push(format!("@format {format}"));
        }
        if obj.get("deprecated").and_then(Value::as_bool) == Some(true) {
            tags.push("@deprecated".to_owned());
        }
        let description = description.map(str::trim).filter(|d| !d.is_empty());
        let tags = tags.join(" ");
        match (description, tags.is_empty()) {
            (None, true) => None,
            (None, false) => Some(tags),
            (Some(description), true) => Some(description.to_owned()),
            (Some(description), false) if description.contains('\n') => Some(format!("{description}\n{tags}")),
            (Some(description), false) => Some(format!("{description} {tags}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The type of `schema`, rendered as a top-level type.
    fn ty(schema: Value) -> String {
        Renderer::new(&schema).ty(&schema, 0).text
    }

    fn render(name: &str, description: Option<&str>, input: Value, output: Option<Value>) -> String {
        tool(&ToolDecl {
            name,
            type_name: &pascal(name),
            description,
            input_schema: &input,
            output_schema: output.as_ref(),
        })
    }

    fn echo_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"message": {"type": "string", "description": "Message to echo"}},
            "required": ["message"]
        })
    }

    #[test]
    fn echo_tool() {
        let out = render("echo", Some("Echoes back the input"), echo_schema(), None);
        assert_eq!(
            out,
            "interface EchoArgs {
  /** Message to echo */
  message: string;
}
/** Echoes back the input */
function echo(args: EchoArgs): Promise<unknown>;
"
        );
    }

    #[test]
    fn namespace_indents_tools() {
        let echo = render("echo", None, echo_schema(), None);
        let ping = render("ping", Some("Line one\nLine two"), json!({"type": "object"}), None);
        assert_eq!(
            namespace("everything", Some("Test server"), &[echo, ping]),
            "/** Test server */
declare namespace tools.everything {
  interface EchoArgs {
    /** Message to echo */
    message: string;
  }
  function echo(args: EchoArgs): Promise<unknown>;
  interface PingArgs {}
  /**
   * Line one
   * Line two
   */
  function ping(args?: PingArgs): Promise<unknown>;
}
"
        );
        assert_eq!(namespace("empty", None, &[]), "declare namespace tools.empty {\n}\n");
    }

    #[test]
    fn no_arg_tools_take_optional_args() {
        for schema in [
            json!({"type": "object"}),
            json!({"type": "object", "properties": {}}),
            json!({"type": "object", "properties": {}, "required": []}),
        ] {
            let out = render("get_tiny_image", None, schema, None);
            assert_eq!(
                out,
                "interface GetTinyImageArgs {}\nfunction get_tiny_image(args?: GetTinyImageArgs): Promise<unknown>;\n"
            );
        }
        // Explicitly open: keys are allowed, still nothing is required.
        let out = render("call", None, json!({"type": "object", "additionalProperties": true}), None);
        assert_eq!(
            out,
            "interface CallArgs {\n  [key: string]: unknown;\n}\nfunction call(args?: CallArgs): Promise<unknown>;\n"
        );
        // A required name without properties makes the argument mandatory.
        let out = render("call", None, json!({"type": "object", "required": ["id"]}), None);
        assert_eq!(out, "interface CallArgs {\n  id: unknown;\n}\nfunction call(args: CallArgs): Promise<unknown>;\n");
    }

    #[test]
    fn output_schema() {
        let output = json!({
            "type": "object",
            "properties": {
                "sum": {"type": "number", "description": "The sum"},
                "terms": {"type": "array", "items": {"type": "number"}}
            },
            "required": ["sum"]
        });
        let input = json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"]
        });
        assert_eq!(
            render("add", Some("Adds two numbers"), input.clone(), Some(output)),
            "interface AddArgs {
  a: number;
  b: number;
}
interface AddResult {
  /** The sum */
  sum: number;
  terms?: number[];
}
/** Adds two numbers */
function add(args: AddArgs): Promise<AddResult>;
"
        );
        assert_eq!(
            render("add", None, input, Some(json!({"type": ["string", "null"]}))),
            "interface AddArgs {
  a: number;
  b: number;
}
type AddResult = string | null;
function add(args: AddArgs): Promise<AddResult>;
"
        );
        // An output object without properties is some object, not an empty one.
        assert_eq!(
            render("env", None, json!({"type": "object"}), Some(json!({"type": "object"}))),
            "interface EnvArgs {}
interface EnvResult {
  [key: string]: unknown;
}
function env(args?: EnvArgs): Promise<EnvResult>;
"
        );
    }

    #[test]
    fn primitive_types() {
        assert_eq!(ty(json!({"type": "string"})), "string");
        assert_eq!(ty(json!({"type": "integer"})), "number");
        assert_eq!(ty(json!({"type": "number"})), "number");
        assert_eq!(ty(json!({"type": "boolean"})), "boolean");
        assert_eq!(ty(json!({"type": "null"})), "null");
        assert_eq!(ty(json!({"type": ["string", "null"]})), "string | null");
        assert_eq!(ty(json!({"type": ["integer", "number"]})), "number");
        assert_eq!(ty(json!({"type": "whatever"})), "unknown");
        assert_eq!(ty(json!({"type": "string", "nullable": true})), "string | null");
    }

    #[test]
    fn boolean_and_empty_schemas() {
        assert_eq!(ty(json!(true)), "unknown");
        assert_eq!(ty(json!({})), "unknown");
        assert_eq!(ty(json!(false)), "never");
        assert_eq!(ty(json!(42)), "unknown");
        assert_eq!(ty(json!({"description": "anything"})), "unknown");
    }

    #[test]
    fn enums_and_consts() {
        assert_eq!(ty(json!({"type": "string", "enum": ["asc", "desc"]})), r#""asc" | "desc""#);
        assert_eq!(
            ty(json!({"enum": ["a\"b", "line\nbreak", 1, -2.5, true, null]})),
            r#""a\"b" | "line\nbreak" | 1 | -2.5 | true | null"#
        );
        assert_eq!(ty(json!({"const": "fixed"})), r#""fixed""#);
        assert_eq!(ty(json!({"enum": []})), "never");
        assert_eq!(
            ty(json!({"enum": [[1, "x"], {"k": 1, "a-b": null}, {}]})),
            r#"[1, "x"] | { "a-b": null; k: 1 } | Record<string, never>"#
        );
    }

    #[test]
    fn arrays_and_tuples() {
        assert_eq!(ty(json!({"type": "array", "items": {"type": "string"}})), "string[]");
        assert_eq!(ty(json!({"type": "array"})), "unknown[]");
        assert_eq!(ty(json!({"type": "array", "items": true})), "unknown[]");
        assert_eq!(ty(json!({"type": "array", "items": {"type": ["string", "number"]}})), "(string | number)[]");
        assert_eq!(
            ty(json!({"type": "array", "items": {"type": "array", "items": {"type": "integer"}}})),
            "number[][]"
        );
        assert_eq!(
            ty(json!({"type": "array", "items": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["id"]
            }})),
            "{ id: string; n?: number }[]"
        );
        let pair = json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]});
        assert_eq!(ty(pair), "[string, number]");
        assert_eq!(
            ty(json!({"prefixItems": [{"type": "string"}], "items": {"type": "boolean"}})),
            "[string, ...boolean[]]"
        );
        assert_eq!(ty(json!({"type": "array", "items": [{"type": "string"}], "additionalItems": false})), "[string]");
    }

    #[test]
    fn objects() {
        assert_eq!(ty(json!({"type": "object"})), "{ [key: string]: unknown }");
        assert_eq!(ty(json!({"type": "object", "additionalProperties": true})), "{ [key: string]: unknown }");
        assert_eq!(
            ty(json!({"type": "object", "additionalProperties": {"type": "integer"}})),
            "{ [key: string]: number }"
        );
        assert_eq!(ty(json!({"type": "object", "additionalProperties": false})), "{ [key: string]: never }");
        // Properties without type keyword, and an index signature compatible with them.
        assert_eq!(
            ty(json!({"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "number"}})),
            "{ a?: string; [key: string]: unknown }"
        );
        assert_eq!(
            ty(json!({"type": "object", "patternProperties": {"^x-": {"type": "string"}}})),
            "{ [key: string]: string }"
        );
        assert_eq!(
            ty(json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false})),
            "{ a?: string }"
        );
    }

    #[test]
    fn long_undocumented_objects_break_lines() {
        let properties: Map<String, Value> =
            (0..8).map(|i| (format!("property_{i}"), json!({"type": "string"}))).collect();
        let out = ty(json!({"type": "object", "properties": properties}));
        assert!(out.starts_with("{\n  property_0?: string;\n"), "{out}");
        assert!(out.ends_with("  property_7?: string;\n}"), "{out}");
    }

    #[test]
    fn nested_objects_with_docs() {
        let input = json!({
            "type": "object",
            "properties": {
                "filter": {
                    "type": "object",
                    "description": "Which rows",
                    "properties": {
                        "since": {"type": "string", "format": "date-time", "description": "Lower bound"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "range": {
                            "type": "object",
                            "properties": {"min": {"type": "number", "description": "Inclusive"}}
                        }
                    },
                    "required": ["since"]
                },
                "limit": {"type": "integer", "default": 10},
                "old": {"type": "boolean", "deprecated": true}
            }
        });
        assert_eq!(
            render("query", None, input, None),
            "interface QueryArgs {
  /** Which rows */
  filter?: {
    range?: {
      /** Inclusive */
      min?: number;
    };
    /** Lower bound @format date-time */
    since: string;
    tags?: string[];
  };
  /** @default 10 */
  limit?: number;
  /** @deprecated */
  old?: boolean;
}
function query(args: QueryArgs): Promise<unknown>;
"
        );
    }

    #[test]
    fn combinators() {
        assert_eq!(ty(json!({"anyOf": [{"type": "string"}, {"type": "null"}]})), "string | null");
        assert_eq!(
            ty(json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]})),
            "string | number"
        );
        assert_eq!(ty(json!({"anyOf": [{"type": "string"}, {}]})), "unknown");
        assert_eq!(
            ty(json!({"allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"type": "number"}}}
            ]})),
            "{ a: string } & { b?: number }"
        );
        assert_eq!(
            ty(json!({
                "allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}],
                "anyOf": [{"type": "object", "properties": {"b": {"const": 1}}}, {"type": "null"}]
            })),
            "{ a?: string } & ({ b?: 1 } | null)"
        );
        // Branches that only add constraints leave the base type alone.
        assert_eq!(
            ty(json!({
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "oneOf": [{"required": ["a"]}, {"required": ["b"]}]
            })),
            "{ a?: string; b?: string }"
        );
        assert_eq!(
            ty(json!({"type": "array", "items": {"allOf": [{"type": "string"}, {"enum": ["x"]}]}})),
            r#"(string & "x")[]"#
        );
    }

    #[test]
    fn references() {
        let schema = json!({
            "type": "object",
            "properties": {
                "point": {"$ref": "#/$defs/Point"},
                "old": {"$ref": "#/definitions/Old", "description": "Own description wins"},
                "remote": {"$ref": "https://example.com/schema.json"},
                "dangling": {"$ref": "#/$defs/Missing"}
            },
            "required": ["point"],
            "$defs": {
                "Point": {
                    "type": "object",
                    "description": "A point",
                    "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                    "required": ["x", "y"]
                }
            },
            "definitions": {"Old": {"type": "string", "description": "Ignored"}}
        });
        assert_eq!(
            render("draw", None, schema, None),
            "interface DrawArgs {
  dangling?: unknown;
  /** Own description wins */
  old?: string;
  /** A point */
  point: { x: number; y: number };
  remote?: unknown;
}
function draw(args: DrawArgs): Promise<unknown>;
"
        );
    }

    #[test]
    fn recursive_reference_is_cut_off() {
        let schema = json!({
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}},
            "required": ["root"],
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                    },
                    "required": ["value"]
                }
            }
        });
        assert_eq!(
            render("tree", None, schema, None),
            "interface TreeArgs {
  root: { children?: { children?: unknown[]; value: string }[]; value: string };
}
function tree(args: TreeArgs): Promise<unknown>;
"
        );
        // A schema that refers to itself as a whole.
        let list = json!({"type": "object", "properties": {"next": {"$ref": "#"}}});
        assert_eq!(ty(list), "{ next?: { next?: { next?: unknown } } }");
    }

    #[test]
    fn reference_chain_hits_depth_limit() {
        // D0 -> D1 -> ... -> D11: distinct definitions, so only the depth limit applies.
        let mut defs = Map::new();
        for i in 0..12 {
            defs.insert(
                format!("D{i}"),
                json!({"type": "object", "properties": {"n": {"$ref": format!("#/$defs/D{}", i + 1)}}}),
            );
        }
        defs.insert("D12".to_owned(), json!({"type": "string"}));
        let schema = json!({"$ref": "#/$defs/D0", "$defs": defs});
        let expected = format!("{}unknown{}", "{ n?: ".repeat(MAX_REF_DEPTH), " }".repeat(MAX_REF_DEPTH));
        assert_eq!(ty(schema), expected);
    }

    #[test]
    fn top_level_reference_and_non_object_schemas() {
        let schema = json!({
            "$ref": "#/$defs/Args",
            "$defs": {"Args": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
        });
        assert_eq!(
            render("find", None, schema, None),
            "interface FindArgs {\n  q: string;\n}\nfunction find(args: FindArgs): Promise<unknown>;\n"
        );
        assert_eq!(
            render("odd", None, json!({"type": "string"}), None),
            "type OddArgs = string;\nfunction odd(args?: OddArgs): Promise<unknown>;\n"
        );
        let either = json!({
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "anyOf": [
                {"properties": {"name": {"type": "string"}}, "required": ["name"]},
                {"properties": {"uid": {"type": "integer"}}, "required": ["uid"]}
            ]
        });
        assert_eq!(
            render("get", None, either, None),
            "type GetArgs = {\n  id?: string;\n} & ({ name: string } | { uid: number });
function get(args: GetArgs): Promise<unknown>;\n"
        );
        // Alternatives that only constrain `required` keep the interface.
        let constrained = json!({
            "type": "object",
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
            "anyOf": [{"required": ["id"]}, {"required": ["name"]}]
        });
        assert_eq!(
            render("get", None, constrained, None),
            "interface GetArgs {\n  id?: string;\n  name?: string;\n}\nfunction get(args: GetArgs): Promise<unknown>;\n"
        );
    }

    #[test]
    fn property_names() {
        assert_eq!(property_key("plain_name$1"), "plain_name$1");
        assert_eq!(property_key("foo-bar"), r#""foo-bar""#);
        assert_eq!(property_key("1st"), r#""1st""#);
        assert_eq!(property_key(""), r#""""#);
        assert_eq!(property_key("with \"quote\""), r#""with \"quote\"""#);
        assert_eq!(property_key("ünïcode"), r#""ünïcode""#);
        assert_eq!(
            ty(
                json!({"type": "object", "properties": {"foo-bar": {"type": "string"}, "x.y": {"type": "number"}}, "required": ["x.y"]})
            ),
            r#"{ "foo-bar"?: string; "x.y": number }"#
        );
    }

    #[test]
    fn jsdoc_escaping_and_layout() {
        assert_eq!(jsdoc("Ends here */ not really", ""), "/** Ends here *\\/ not really */\n");
        assert_eq!(jsdoc("  \n\n ", "  "), "");
        assert_eq!(
            jsdoc("\nFirst\n\n  - item */\nLast  \n\n", "  "),
            "  /**\n   * First\n   *\n   *   - item *\\/\n   * Last\n   */\n"
        );
        let out = render(
            "danger",
            Some("Closes */ early"),
            json!({"type": "object", "properties": {"p": {"type": "string", "description": "a*/b", "default": "*/"}}}),
            None,
        );
        assert_eq!(
            out,
            "interface DangerArgs {
  /** a*\\/b @default \"*\\/\" */
  p?: string;
}
/** Closes *\\/ early */
function danger(args: DangerArgs): Promise<unknown>;
"
        );
    }

    #[test]
    fn long_defaults_are_left_out() {
        let long = "x".repeat(MAX_DEFAULT_LEN + 1);
        let schema = json!({"type": "object", "properties": {"p": {"type": "string", "default": long}}});
        assert_eq!(
            render("t", None, schema, None),
            "interface TArgs {\n  p?: string;\n}\nfunction t(args: TArgs): Promise<unknown>;\n"
        );
    }

    #[test]
    fn pascal_case() {
        assert_eq!(pascal("echo_tool"), "EchoTool");
        assert_eq!(pascal("getTinyImage"), "GetTinyImage");
        assert_eq!(pascal("get-tiny.image"), "GetTinyImage");
        assert_eq!(pascal("__private"), "Private");
        assert_eq!(pascal("_2fa_check"), "T2faCheck");
        assert_eq!(pascal("___"), "Tool");
        assert_eq!(pascal(""), "Tool");
        assert_eq!(pascal("$ref"), "$ref");
    }

    #[test]
    fn deeply_nested_input_does_not_overflow() {
        let mut schema = json!({"type": "string"});
        for _ in 0..500 {
            schema = json!({"type": "array", "items": schema});
        }
        let out = ty(schema);
        assert_eq!(out, format!("unknown{}", "[]".repeat(MAX_NESTING)));
        // Deep enough to drop the innermost value types.
        let mut value = json!(1);
        for _ in 0..500 {
            value = json!([value]);
        }
        assert!(ty(json!({"const": value})).contains("unknown"));
    }

    /// Tools with awkward schemas, for the TypeScript compiler check.
    fn corpus() -> Vec<(&'static str, Option<&'static str>, Value, Option<Value>)> {
        let defs = json!({
            "Node": {
                "type": "object",
                "description": "A */ node",
                "properties": {
                    "value": {"type": "string"},
                    "left": {"$ref": "#/$defs/Node"},
                    "right": {"$ref": "#/$defs/Node"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                },
                "required": ["value"]
            },
            "Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
        });
        vec![
            ("echo", Some("Echoes back the input"), echo_schema(), None),
            ("get_tiny_image", Some("Returns a tiny image"), json!({"type": "object", "properties": {}}), None),
            ("get_env", None, json!({"type": "object"}), Some(json!({"type": "object"}))),
            (
                "kitchen_sink",
                Some("Everything at once.\n\n* bullet */\n"),
                json!({
                    "type": "object",
                    "properties": {
                        "q": {"type": "string", "description": "Query\nover lines */"},
                        "sort": {"enum": ["asc", "desc", null, 3, -1.5, true, "q\"uote", [1], {"a": 1}, {}]},
                        "mode": {"const": "fast"},
                        "tree": {"$ref": "#/$defs/Node"},
                        "pt": {"allOf": [{"$ref": "#/$defs/Point"}, {"properties": {"y": {"type": "number"}}}]},
                        "either": {"oneOf": [{"$ref": "#/$defs/Point"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
                        "mixed": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}, "required": ["x"], "additionalProperties": {"type": "number"}},
                        "pattern": {"type": "object", "properties": {"x": {"type": "string"}}, "patternProperties": {"^n": {"type": "number"}}},
                        "closed": {"type": "object", "additionalProperties": false},
                        "tuple": {"prefixItems": [{"type": "string"}, {"anyOf": [{"type": "number"}, {"type": "null"}]}], "items": {"type": "boolean"}},
                        "old_tuple": {"type": "array", "items": [{"type": "string"}], "additionalItems": false},
                        "grid": {"type": "array", "items": {"type": "array", "items": {"type": ["number", "null"]}}},
                        "objs": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string", "description": "Id"}}, "required": ["id"]}},
                        "nullable_obj": {"type": ["object", "null"], "properties": {"a": {"type": "string", "description": "doc"}}},
                        "foo-bar": {"type": "string"},
                        "class": {"type": "string"},
                        "": {"type": "boolean"},
                        "never": false,
                        "any": true,
                        "remote": {"$ref": "other.json#/x"},
                        "oapi": {"type": "string", "nullable": true}
                    },
                    "required": ["q", "tree", "not_declared"],
                    "$defs": defs
                }),
                Some(json!({
                    "type": "object",
                    "properties": {"hits": {"type": "array", "items": {"$ref": "#/$defs/Hit"}}, "total": {"type": "integer"}},
                    "required": ["total"],
                    "$defs": {"Hit": {"type": "object", "properties": {"id": {"type": "string"}, "score": {"type": "number"}}}}
                })),
            ),
            (
                "scalar_out",
                None,
                json!({"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}),
                Some(json!({"type": ["string", "null"]})),
            ),
            ("odd_input", None, json!({"type": "string"}), Some(json!(true))),
            ("any_input", None, json!({}), Some(json!(false))),
            (
                "choice",
                None,
                json!({
                    "type": "object",
                    "properties": {"id": {"type": "string"}},
                    "anyOf": [{"properties": {"name": {"type": "string"}}, "required": ["name"]}, {"required": ["id"]}],
                    "oneOf": [{"properties": {"k": {"const": 1}}}, {"properties": {"k": {"const": 2}}}]
                }),
                None,
            ),
        ]
    }

    /// Compiles the declarations of [`corpus`] (as two namespaces) together with code calling
    /// them, using `tsc --noEmit --strict` from `tests/mcp` (installed by `tests/run`).
    #[test]
    fn declarations_compile_with_tsc() {
        let rendered: Vec<String> = corpus()
            .iter()
            .map(|(name, description, input, output)| {
                tool(&ToolDecl {
                    name,
                    type_name: &pascal(name),
                    description: *description,
                    input_schema: input,
                    output_schema: output.as_ref(),
                })
            })
            .collect();
        let mut dts = namespace("everything", Some("Reference server */"), &rendered);
        dts.push_str(&namespace("other", None, &rendered[..2]));
        let usage = r#"
async function main(): Promise<unknown[]> {
  const echoed: unknown = await tools.everything.echo({ message: "hi" });
  // @ts-expect-error `message` is required
  await tools.everything.echo({});
  await tools.everything.get_tiny_image();
  await tools.other.get_tiny_image({});
  const sink = await tools.everything.kitchen_sink({
    q: "x",
    tree: { value: "root", left: { value: "l" }, kids: [{ value: "k" }] },
    not_declared: 1,
    sort: "asc",
    mode: "fast",
    pt: { x: 1, y: 2 },
    either: null,
    mixed: { x: "a", y: 1 },
    tuple: ["a", null, true, false],
    grid: [[1, null]],
    objs: [{ id: "1" }],
    "foo-bar": "b",
    "": true,
  });
  const total: number = sink.total;
  const scalar: string | null = await tools.everything.scalar_out({ x: 1 });
  await tools.everything.odd_input("text");
  const nothing: never = await tools.everything.any_input();
  await tools.everything.choice({ id: "i", k: 1 });
  // @ts-expect-error `k` is 1 or 2
  await tools.everything.choice({ k: 3 });
  const env: { [key: string]: unknown } = await tools.everything.get_env();
  return [echoed, total, scalar, nothing, env];
}
main();
"#;
        let dir = std::env::temp_dir().join(format!("sandgate-tsc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let dts_path = dir.join("tools.d.ts");
        let usage_path = dir.join("usage.ts");
        std::fs::write(&dts_path, &dts).expect("write .d.ts");
        std::fs::write(&usage_path, usage).expect("write usage");
        let tsc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/node_modules/.bin/tsc");
        assert!(tsc.exists(), "{} is missing; run: npm ci --prefix tests/mcp (tests/run does)", tsc.display());
        let output = std::process::Command::new(tsc)
            .args(["--noEmit", "--strict", "--target", "es2020"])
            .arg(&dts_path)
            .arg(&usage_path)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run tsc");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            output.status.success(),
            "tsc failed:\n{}{}\n--- tools.d.ts ---\n{dts}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
