//! Turning submitted TypeScript into JavaScript by *blanking* its types.
//!
//! Submitted code runs as the body of an async JavaScript function, so it may use top-level
//! `return` and top-level `await`, and it may be a bare expression such as `1 + 1`. Agents often
//! write TypeScript anyway (`const x: number = 1`, `tools.a.b(args) as Foo`), so [`strip_types`]
//! removes the type syntax before the code reaches the JavaScript engine.
//!
//! # The blank-space approach
//!
//! Like the `ts-blank-space` library and Node's `--experimental-strip-types`, this module does not
//! re-print the program. It parses the code with `oxc_parser` as TypeScript, walks the AST to
//! collect the source ranges that hold type-only syntax, and overwrites those ranges with spaces,
//! keeping every line terminator (`\n`, `\r`, U+2028, U+2029) where it was. Everything else is
//! copied through untouched, comments and formatting included.
//!
//! Because nothing moves, the output has exactly the lines of the input and every JavaScript
//! token keeps its line and column. Errors that the engine reports at run time (syntax errors,
//! stack traces) therefore point at the code as it was submitted, without a source map.
//!
//! Columns are kept in *characters*: each blanked character, however many UTF-8 bytes it has,
//! becomes exactly one space. (Blanked type syntax is nearly always ASCII, so byte columns are
//! kept as well in practice.) The line and column in a [`TypeScriptError`] are counted the same
//! way: 1-based, with `\n`, `\r\n` and a lone `\r` ending a line.
//!
//! A few characters are written instead of spaces where plain blanking would change how the
//! JavaScript parses:
//!
//! * A statement that is blanked entirely (`interface`, `type`, `declare …`, function overload
//!   signatures, `import type`, …) and a class member that is blanked entirely (abstract members,
//!   `declare` fields, index signatures, method overloads) start with `;`, so automatic
//!   semicolon insertion cannot join the code on either side of it.
//! * A class member whose first token is a blanked modifier (`private`, `readonly`, …) starts
//!   with `;`, so that `x = 1` followed by `private [key] = 2` cannot become `x = 1[key] = 2`.
//! * A statement that ends in blanked syntax (`foo() as Bar`) and is followed by a line starting
//!   with `(`, `[` or a template literal gets `;` in place of its last blanked character, for
//!   the same reason.
//! * An arrow function whose return type spans lines (`(a):\n T => a`) would leave a line break
//!   between `)` and `=>`, which JavaScript forbids; the `)` is moved to the last character of
//!   the return type instead (`(a \n   ) => a`).
//!
//! # What is rejected
//!
//! Constructs that produce JavaScript at run time cannot be blanked, so they are reported as a
//! [`TypeScriptError`] with a JavaScript alternative: `enum`, `namespace`/`module` blocks that
//! contain values, constructor parameter properties, `import x = …` and `export = …`. A few
//! positions where blanking would change the meaning through a line break are rejected too
//! (see [`strip_types`]).
//!
//! # Sessions
//!
//! In a session the code runs as a global script instead, where a top-level `return` is a syntax
//! error; [`session_script`] rewrites such code so that it still ends with the returned value.

mod session;

pub use session::session_script;

use std::collections::BTreeMap;
use std::fmt;

use oxc_allocator::Allocator;
use oxc_ast::ast::{
    AccessorProperty, AccessorPropertyType, ArrowFunctionExpression, Class, ClassElement, Comment, Declaration,
    Decorator, ExportDefaultDeclarationKind, ExportSpecifier, FormalParameter, ImportSpecifier, MethodDefinition,
    MethodDefinitionType, PropertyDefinition, PropertyDefinitionType, PropertyKey, ReturnStatement, Statement,
    TSAsExpression, TSClassImplements, TSEnumDeclaration, TSExportAssignment, TSImportEqualsDeclaration,
    TSNamespaceDeclaration, TSNamespaceDeclarationBody, TSNonNullExpression, TSSatisfiesExpression, TSThisParameter,
    TSTypeAnnotation, TSTypeAssertion, TSTypeParameterDeclaration, TSTypeParameterInstantiation, ThrowStatement,
    VariableDeclarator, YieldExpression,
};
use oxc_ast_visit::{walk, Visit};
use oxc_parser::{ParseOptions, Parser};
use oxc_span::{GetSpan, SourceType, Span};

/// Where and why TypeScript could not be turned into JavaScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeScriptError {
    /// What went wrong, and for unsupported constructs what to write instead.
    pub message: String,
    /// 1-based line in the code as submitted.
    pub line: u32,
    /// 1-based column in the code as submitted, counted in characters.
    pub column: u32,
}

impl fmt::Display for TypeScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for TypeScriptError {}

/// Strips TypeScript type syntax from `source`, returning JavaScript with the same lines and
/// every token at the same line and column.
///
/// `source` is parsed as the body of an async function: top-level `return` and `await` are
/// allowed, and a bare expression is a valid body. Plain JavaScript comes back byte-identical.
///
/// The parser is recursive and, on some ambiguous input (`a<a<a<…`), does work that grows
/// faster than the input. This function does not bound either: it runs inside sandgate's guest,
/// where the caller's fuel, memory and wasm stack limits do, and the host reports passing them
/// as a `syntax` error. Native callers (tests) should give it a large stack.
///
/// # Errors
///
/// Returns a [`TypeScriptError`] for a syntax error (the parser's first error and where it is),
/// for TypeScript constructs that generate runtime code (`enum`, `namespace` with values,
/// constructor parameter properties, `import x = …`, `export = …`), and for the few places where
/// blanking a type would let a line break change the meaning of the code: a multi-line type
/// assertion or generic arrow function right after `return`/`throw`/`yield`, and a multi-line
/// type parameter list of an `async` arrow function.
pub fn strip_types(source: &str) -> Result<String, TypeScriptError> {
    if u32::try_from(source.len()).is_err() {
        return Err(error_at(source, 0, "the code is too large (4 GiB or more)".to_string()));
    }
    let allocator = Allocator::default();
    // Module code allows top-level `await`, like the body of an async function; `return` is
    // allowed by the option. (Module code is also strict, which an async function body need
    // not be, but the parser leaves nearly all strict-mode checks to semantic analysis.)
    let options = ParseOptions { allow_return_outside_function: true, ..ParseOptions::default() };
    let parsed = Parser::new(&allocator, source, SourceType::ts()).with_options(options).parse();

    if let Some(diagnostic) = parsed.diagnostics.errors().next() {
        let offset = diagnostic.labels.first().map_or(0, |label| label.span().start);
        return Err(error_at(source, offset, diagnostic.message.to_string()));
    }
    if parsed.panicked {
        return Err(error_at(source, 0, "the code could not be parsed".to_string()));
    }

    let mut stripper = Stripper::new(source, &parsed.program.comments);
    stripper.visit_program(&parsed.program);
    stripper.finish()
}

/// Collects what to blank while walking the AST, then renders the JavaScript.
struct Stripper<'s> {
    source: &'s str,
    /// All comments, in source order; skipped when looking for syntax that has no AST node of
    /// its own (modifiers, `?` and `!` markers, commas, the `implements` keyword).
    comments: &'s [Comment],
    /// Byte ranges to overwrite with spaces.
    blanks: Vec<Span>,
    /// Characters to write instead of a space at a blanked position (keyed by byte offset).
    replacements: BTreeMap<u32, char>,
    /// Positions that become `;` if, once everything is collected, they turn out to be blanked.
    semicolons_if_blanked: Vec<u32>,
    /// `(keyword, keyword end, argument start)` of `return`/`throw`/`yield` with an argument,
    /// checked after blanking so that no line break ends up between the keyword and its argument.
    restricted: Vec<(&'static str, u32, u32)>,
    /// The first unsupported construct found.
    error: Option<TypeScriptError>,
}

impl<'s> Stripper<'s> {
    fn new(source: &'s str, comments: &'s [Comment]) -> Self {
        Self {
            source,
            comments,
            blanks: Vec::new(),
            replacements: BTreeMap::new(),
            semicolons_if_blanked: Vec::new(),
            restricted: Vec::new(),
            error: None,
        }
    }

    // ----- recording ---------------------------------------------------------------------------

    fn blank(&mut self, span: Span) {
        if span.start < span.end {
            self.blanks.push(span);
        }
    }

    /// Blanks a whole statement or class member, writing `;` as its first character.
    fn blank_with_semicolon(&mut self, span: Span) {
        if span.start < span.end {
            self.blank(span);
            self.replacements.entry(span.start).or_insert(';');
        }
    }

    fn reject(&mut self, offset: u32, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(error_at(self.source, offset, message.into()));
        }
    }

    // ----- reading the source around AST nodes -------------------------------------------------

    fn char_at(&self, pos: u32) -> Option<char> {
        self.source.get(pos as usize..)?.chars().next()
    }

    /// The position of the first character at or after `pos` that is not whitespace, a line
    /// terminator or part of a comment.
    fn skip_trivia(&self, mut pos: u32) -> u32 {
        while let Some(ch) = self.char_at(pos) {
            if ch.is_whitespace() || ch == '\u{FEFF}' {
                pos += ch.len_utf8() as u32;
            } else if let Some(comment) = self.comment_starting_at(pos) {
                pos = comment.span.end.max(pos + 1);
            } else {
                break;
            }
        }
        pos
    }

    fn comment_starting_at(&self, pos: u32) -> Option<&'s Comment> {
        let comments = self.comments;
        let index = comments.binary_search_by_key(&pos, |comment| comment.span.start).ok()?;
        comments.get(index)
    }

    /// The first significant character at or after `pos`, with its position.
    fn next_significant(&self, pos: u32) -> Option<(u32, char)> {
        let pos = self.skip_trivia(pos);
        self.char_at(pos).map(|ch| (pos, ch))
    }

    /// Blanks the character `expected` if it is the next significant one after `pos`
    /// (e.g. the `?` after a parameter name, or the `,` after a `this` parameter).
    fn blank_char_after(&mut self, pos: u32, expected: char) {
        if let Some((found, _)) = self.next_significant(pos).filter(|&(_, ch)| ch == expected) {
            self.blank(Span::new(found, found + expected.len_utf8() as u32));
        }
    }

    /// The words (keywords and identifiers) between `start` and `end`, with their spans, skipping
    /// comments and punctuation. Only used on stretches that hold modifiers and keywords.
    fn words(&self, start: u32, end: u32) -> Vec<(Span, &'s str)> {
        let source = self.source;
        let mut words = Vec::new();
        let mut pos = self.skip_trivia(start);
        while pos < end {
            let Some(rest) = source.get(pos as usize..end as usize) else {
                break;
            };
            let length =
                rest.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '$')).unwrap_or(rest.len());
            if length == 0 {
                // Punctuation such as `*`, `[` or `#`: step over it.
                pos += rest.chars().next().map_or(1, char::len_utf8) as u32;
            } else {
                let word_end = pos + length as u32;
                words.push((Span::new(pos, word_end), &rest[..length]));
                pos = word_end;
            }
            pos = self.skip_trivia(pos);
        }
        words
    }

    /// Whether `start..end` holds a JavaScript line terminator: `\n`, `\r`, U+2028 or U+2029
    /// (checked byte by byte, so the range need not fall on character boundaries).
    fn has_line_terminator(&self, start: u32, end: u32) -> bool {
        const LINE_SEPARATOR: &[u8] = "\u{2028}".as_bytes();
        const PARAGRAPH_SEPARATOR: &[u8] = "\u{2029}".as_bytes();
        let Some(bytes) = self.source.as_bytes().get(start as usize..end as usize) else {
            return false;
        };
        (0..bytes.len()).any(|i| {
            let rest = bytes.get(i..).unwrap_or_default();
            rest.starts_with(b"\n")
                || rest.starts_with(b"\r")
                || rest.starts_with(LINE_SEPARATOR)
                || rest.starts_with(PARAGRAPH_SEPARATOR)
        })
    }

    /// The byte offset where the character that ends at `end` starts.
    fn last_char_start(&self, end: u32) -> Option<u32> {
        let last = self.source.get(..end as usize)?.chars().next_back()?;
        Some(end - last.len_utf8() as u32)
    }

    // ----- helpers for particular constructs ---------------------------------------------------

    /// Blanks the TypeScript modifiers (`public`, `private`, `protected`, `readonly`,
    /// `override`) of a class member, which sit between its decorators and its key.
    fn blank_member_modifiers(&mut self, member: Span, decorators: &[Decorator<'_>], key: &PropertyKey<'_>) {
        let start = decorators.iter().map(|decorator| decorator.span.end).fold(member.start, u32::max);
        let first = self.skip_trivia(start);
        for (span, word) in self.words(start, key.span().start) {
            if matches!(word, "public" | "private" | "protected" | "readonly" | "override") {
                // `;` keeps `x = 1` + `private [k] = 2` from reading as `x = 1[k] = 2`.
                if span.start == first && decorators.is_empty() {
                    self.blank_with_semicolon(span);
                } else {
                    self.blank(span);
                }
            }
        }
    }

    /// Blanks a `?` or `!` written right after a class member's key (`x?: T`, `x!: T`, `m?()`).
    fn blank_member_marker(&mut self, key: &PropertyKey<'_>, computed: bool, marker: char) {
        let mut pos = key.span().end;
        if computed {
            if let Some((bracket, _)) = self.next_significant(pos).filter(|&(_, ch)| ch == ']') {
                pos = bracket + 1;
            }
        }
        self.blank_char_after(pos, marker);
    }

    /// Blanks the specifier `type X` of an import or export list, with the comma after it.
    fn blank_type_specifier(&mut self, span: Span) {
        self.blank(span);
        self.blank_char_after(span.end, ',');
    }

    /// For a statement or class member that ends at `end`: if it ends in blanked syntax
    /// (`x as T`) and the next line starts with `(`, `[` or a template, JavaScript would carry
    /// on with it (`x(...)`) where TypeScript ended it, so its last character becomes `;`.
    fn guard_end(&mut self, end: u32) {
        if matches!(self.next_significant(end), Some((_, '(' | '[' | '`'))) {
            if let Some(last) = self.last_char_start(end) {
                self.semicolons_if_blanked.push(last);
            }
        }
    }

    /// Records a `return`/`throw`/`yield` whose argument must start on the keyword's line.
    fn note_restricted(&mut self, keyword_start: u32, keyword: &'static str, argument_start: u32) {
        self.restricted.push((keyword, keyword_start + keyword.len() as u32, argument_start));
    }

    /// For an arrow function's return type: if a line break separates `)` from `=>`, blank the
    /// `)` and write it as the last character of the return type, which is on the line of `=>`.
    fn move_paren_before_arrow(&mut self, params: Span, return_type: Span) {
        let Some(paren) = params.end.checked_sub(1).filter(|&paren| self.char_at(paren) == Some(')')) else {
            return;
        };
        let Some((arrow, _)) = self.next_significant(return_type.end).filter(|&(_, ch)| ch == '=') else {
            return;
        };
        if !self.has_line_terminator(paren, arrow) {
            return;
        }
        match self.last_char_start(return_type.end) {
            Some(last) if !self.has_line_terminator(return_type.end, arrow) => {
                self.blank(Span::new(paren, paren + 1));
                self.replacements.insert(last, ')');
            }
            _ => self.reject(
                return_type.end,
                "a line break before `=>` is not valid; put the return type and `=>` on one line",
            ),
        }
    }
}

// ----- the walk ----------------------------------------------------------------------------------

impl<'a> Visit<'a> for Stripper<'_> {
    fn visit_statement(&mut self, it: &Statement<'a>) {
        if is_type_only_statement(it) {
            self.blank_with_semicolon(it.span());
            return;
        }
        walk::walk_statement(self, it);
        self.guard_end(it.span().end);
    }

    // --- annotations, type parameters and type arguments: blanked whole, never entered ---

    fn visit_ts_type_annotation(&mut self, it: &TSTypeAnnotation<'a>) {
        self.blank(it.span);
    }

    fn visit_ts_type_parameter_declaration(&mut self, it: &TSTypeParameterDeclaration<'a>) {
        self.blank(it.span);
    }

    fn visit_ts_type_parameter_instantiation(&mut self, it: &TSTypeParameterInstantiation<'a>) {
        self.blank(it.span);
    }

    // --- expressions ---

    fn visit_ts_as_expression(&mut self, it: &TSAsExpression<'a>) {
        self.blank(Span::new(it.expression.span().end, it.span.end));
        self.visit_expression(&it.expression);
    }

    fn visit_ts_satisfies_expression(&mut self, it: &TSSatisfiesExpression<'a>) {
        self.blank(Span::new(it.expression.span().end, it.span.end));
        self.visit_expression(&it.expression);
    }

    fn visit_ts_non_null_expression(&mut self, it: &TSNonNullExpression<'a>) {
        self.blank_char_after(it.expression.span().end, '!');
        self.visit_expression(&it.expression);
    }

    fn visit_ts_type_assertion(&mut self, it: &TSTypeAssertion<'a>) {
        self.blank(Span::new(it.span.start, it.expression.span().start));
        self.visit_expression(&it.expression);
    }

    fn visit_return_statement(&mut self, it: &ReturnStatement<'a>) {
        if let Some(argument) = &it.argument {
            self.note_restricted(it.span.start, "return", argument.span().start);
        }
        walk::walk_return_statement(self, it);
    }

    fn visit_throw_statement(&mut self, it: &ThrowStatement<'a>) {
        self.note_restricted(it.span.start, "throw", it.argument.span().start);
        walk::walk_throw_statement(self, it);
    }

    fn visit_yield_expression(&mut self, it: &YieldExpression<'a>) {
        if let (false, Some(argument)) = (it.delegate, &it.argument) {
            self.note_restricted(it.span.start, "yield", argument.span().start);
        }
        walk::walk_yield_expression(self, it);
    }

    // --- functions and parameters ---

    fn visit_ts_this_parameter(&mut self, it: &TSThisParameter<'a>) {
        self.blank(it.span);
        self.blank_char_after(it.span.end, ',');
    }

    fn visit_formal_parameter(&mut self, it: &FormalParameter<'a>) {
        if it.accessibility.is_some() || it.readonly || it.r#override {
            self.reject(
                it.span.start,
                "TypeScript parameter properties (`constructor(private x: number)`) are not supported because \
                 they generate code; declare the field and assign it in the constructor instead: \
                 `x; constructor(x) { this.x = x; }`",
            );
        }
        if it.optional {
            self.blank_char_after(it.pattern.span().end, '?');
        }
        walk::walk_formal_parameter(self, it);
    }

    fn visit_arrow_function_expression(&mut self, it: &ArrowFunctionExpression<'a>) {
        if let (true, Some(type_parameters)) = (it.r#async, &it.type_parameters) {
            if self.has_line_terminator(type_parameters.span.start, it.params.span.start) {
                self.reject(
                    type_parameters.span.start,
                    "keep `async <T>(` of an arrow function on one line: once the type parameters are removed, \
                     a line break between `async` and `(` is not valid JavaScript",
                );
            }
        }
        if let Some(return_type) = &it.return_type {
            self.move_paren_before_arrow(it.params.span, return_type.span);
        }
        walk::walk_arrow_function_expression(self, it);
    }

    // --- classes ---

    fn visit_class(&mut self, it: &Class<'a>) {
        let after_decorators = it.decorators.iter().map(|decorator| decorator.span.end).fold(it.span.start, u32::max);
        if it.r#abstract {
            let end = it.id.as_ref().map_or(it.body.span.start, |id| id.span.start);
            if let Some((span, _)) = self.words(after_decorators, end).into_iter().find(|&(_, word)| word == "abstract")
            {
                self.blank(span);
            }
        }
        if let (Some(first), Some(last)) = (it.implements.first(), it.implements.last()) {
            // The `implements` keyword follows whatever comes last before it.
            let before = [
                it.id.as_ref().map(|id| id.span.end),
                it.type_parameters.as_ref().map(|parameters| parameters.span.end),
                it.heritage.as_ref().map(|heritage| heritage.expression.span().end),
                it.heritage
                    .as_ref()
                    .and_then(|heritage| heritage.type_arguments.as_ref())
                    .map(|arguments| arguments.span.end),
            ];
            let search_from = before.into_iter().flatten().fold(after_decorators, u32::max);
            let start = self
                .words(search_from, first.span.start)
                .into_iter()
                .find(|&(_, word)| word == "implements")
                .map_or(first.span.start, |(span, _)| span.start);
            self.blank(Span::new(start, last.span.end));
        }
        walk::walk_class(self, it);
    }

    fn visit_ts_class_implements(&mut self, _it: &TSClassImplements<'a>) {
        // Blanked together with the `implements` keyword in `visit_class`.
    }

    fn visit_class_element(&mut self, it: &ClassElement<'a>) {
        if is_type_only_class_element(it) {
            self.blank_with_semicolon(it.span());
            return;
        }
        walk::walk_class_element(self, it);
        self.guard_end(it.span().end);
    }

    fn visit_method_definition(&mut self, it: &MethodDefinition<'a>) {
        self.blank_member_modifiers(it.span, &it.decorators, &it.key);
        if it.optional {
            self.blank_member_marker(&it.key, it.computed, '?');
        }
        walk::walk_method_definition(self, it);
    }

    fn visit_property_definition(&mut self, it: &PropertyDefinition<'a>) {
        self.blank_member_modifiers(it.span, &it.decorators, &it.key);
        if it.optional {
            self.blank_member_marker(&it.key, it.computed, '?');
        }
        if it.definite {
            self.blank_member_marker(&it.key, it.computed, '!');
        }
        walk::walk_property_definition(self, it);
    }

    fn visit_accessor_property(&mut self, it: &AccessorProperty<'a>) {
        self.blank_member_modifiers(it.span, &it.decorators, &it.key);
        if it.definite {
            self.blank_member_marker(&it.key, it.computed, '!');
        }
        walk::walk_accessor_property(self, it);
    }

    // --- declarations ---

    fn visit_variable_declarator(&mut self, it: &VariableDeclarator<'a>) {
        if it.definite {
            self.blank_char_after(it.id.span().end, '!');
        }
        walk::walk_variable_declarator(self, it);
    }

    fn visit_import_specifier(&mut self, it: &ImportSpecifier<'a>) {
        if it.import_kind.is_type() {
            self.blank_type_specifier(it.span);
        }
    }

    fn visit_export_specifier(&mut self, it: &ExportSpecifier<'a>) {
        if it.export_kind.is_type() {
            self.blank_type_specifier(it.span);
        }
    }

    // --- constructs that generate code (type-only forms are blanked before they get here) ---

    fn visit_ts_enum_declaration(&mut self, it: &TSEnumDeclaration<'a>) {
        self.reject(
            it.span.start,
            "TypeScript `enum` is not supported because it generates code; use a plain object instead, \
             e.g. `const Color = { Red: 0, Green: 1 } as const;`",
        );
    }

    fn visit_ts_namespace_declaration(&mut self, it: &TSNamespaceDeclaration<'a>) {
        self.reject(
            it.span.start,
            "TypeScript `namespace`/`module` blocks that contain values are not supported because they \
             generate code; use a plain object instead, e.g. `const Utils = { helper() {} };`",
        );
    }

    fn visit_ts_import_equals_declaration(&mut self, it: &TSImportEqualsDeclaration<'a>) {
        self.reject(
            it.span.start,
            "TypeScript `import x = ...` is not supported because it generates code; use `const x = ...` instead",
        );
    }

    fn visit_ts_export_assignment(&mut self, it: &TSExportAssignment<'a>) {
        self.reject(
            it.span.start,
            "TypeScript `export = ...` is not supported; the code runs as the body of a function, so use \
             `return ...` to hand back a value",
        );
    }
}

impl Stripper<'_> {
    /// Checks and renders the JavaScript once the walk has collected everything.
    fn finish(mut self) -> Result<String, TypeScriptError> {
        let len = self.source.len();
        let mut blanked = vec![false; len];
        for span in &self.blanks {
            let range = (span.start as usize).min(len)..(span.end as usize).min(len);
            if let Some(bytes) = blanked.get_mut(range) {
                bytes.fill(true);
            }
        }
        let is_blanked = |pos: u32| blanked.get(pos as usize).copied().unwrap_or(false);

        for &pos in &self.semicolons_if_blanked {
            if is_blanked(pos) {
                self.replacements.entry(pos).or_insert(';');
            }
        }

        // A line break that blanking leaves between `return`/`throw`/`yield` and what remains of
        // its argument would end the statement early.
        for (keyword, keyword_end, argument_start) in std::mem::take(&mut self.restricted) {
            let mut first_kept = argument_start;
            while (first_kept as usize) < len {
                if is_blanked(first_kept) {
                    first_kept += 1;
                } else {
                    let next = self.skip_trivia(first_kept);
                    if next == first_kept {
                        break;
                    }
                    first_kept = next;
                }
            }
            if first_kept > argument_start && self.has_line_terminator(keyword_end, first_kept) {
                self.reject(
                    argument_start,
                    format!(
                        "once the types are removed, the line break in this type assertion or type parameter \
                         list would end the `{keyword}` early; keep it on the line of `{keyword}`, or write \
                         `value as Type`"
                    ),
                );
            }
        }
        if let Some(error) = self.error {
            return Err(error);
        }

        let mut out = String::with_capacity(len);
        for (pos, ch) in self.source.char_indices() {
            let replacement = u32::try_from(pos).ok().and_then(|pos| self.replacements.get(&pos));
            if let Some(&replacement) = replacement {
                out.push(replacement);
            } else if blanked.get(pos).copied().unwrap_or(false) && !is_line_terminator(ch) {
                out.push(' ');
            } else {
                out.push(ch);
            }
        }
        Ok(out)
    }
}

// ----- what is type-only -------------------------------------------------------------------------

/// Whether a statement produces no JavaScript at all.
fn is_type_only_statement(statement: &Statement<'_>) -> bool {
    match statement {
        Statement::ImportDeclaration(import) => import.import_kind.is_type(),
        Statement::ExportNamedDeclaration(export) => export.export_kind.is_type(),
        Statement::ExportFromDeclaration(export) => export.export_kind.is_type(),
        Statement::ExportAllDeclaration(export) => export.export_kind.is_type(),
        Statement::ExportDeclaration(export) => is_type_only_declaration(&export.declaration),
        Statement::ExportDefaultDeclaration(export) => match &export.declaration {
            ExportDefaultDeclarationKind::TSInterfaceDeclaration(_) => true,
            ExportDefaultDeclarationKind::FunctionDeclaration(function) => function.declare || function.body.is_none(),
            _ => false,
        },
        Statement::TSNamespaceExportDeclaration(_) => true,
        _ => statement.as_declaration().is_some_and(is_type_only_declaration),
    }
}

/// Whether a declaration produces no JavaScript at all.
fn is_type_only_declaration(declaration: &Declaration<'_>) -> bool {
    match declaration {
        Declaration::VariableDeclaration(variable) => variable.declare,
        // A function without a body is an overload signature or a `declare function`.
        Declaration::FunctionDeclaration(function) => function.declare || function.body.is_none(),
        Declaration::ClassDeclaration(class) => class.declare,
        Declaration::TSTypeAliasDeclaration(_)
        | Declaration::TSInterfaceDeclaration(_)
        | Declaration::TSExternalModuleDeclaration(_)
        | Declaration::TSGlobalDeclaration(_) => true,
        Declaration::TSEnumDeclaration(declaration) => declaration.declare,
        Declaration::TSNamespaceDeclaration(namespace) => {
            namespace.declare || is_type_only_namespace_body(&namespace.body)
        }
        Declaration::TSImportEqualsDeclaration(import) => import.import_kind.is_type(),
    }
}

/// Whether a `namespace` body holds only types (TypeScript emits nothing for such a namespace).
fn is_type_only_namespace_body(body: &TSNamespaceDeclarationBody<'_>) -> bool {
    match body {
        TSNamespaceDeclarationBody::TSNamespaceDeclaration(inner) => is_type_only_namespace_body(&inner.body),
        TSNamespaceDeclarationBody::TSModuleBlock(block) => block.body.iter().all(is_type_only_statement),
    }
}

/// Whether a class member produces no JavaScript at all.
fn is_type_only_class_element(element: &ClassElement<'_>) -> bool {
    match element {
        ClassElement::TSIndexSignature(_) => true,
        ClassElement::MethodDefinition(method) => {
            method.r#type == MethodDefinitionType::TSAbstractMethodDefinition || method.value.body.is_none()
        }
        ClassElement::PropertyDefinition(property) => {
            property.declare || property.r#type == PropertyDefinitionType::TSAbstractPropertyDefinition
        }
        ClassElement::AccessorProperty(accessor) => accessor.r#type == AccessorPropertyType::TSAbstractAccessorProperty,
        ClassElement::StaticBlock(_) => false,
    }
}

// ----- positions ---------------------------------------------------------------------------------

fn is_line_terminator(ch: char) -> bool {
    matches!(ch, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// Builds an error at byte `offset` of `source`, with a 1-based line and character column.
fn error_at(source: &str, offset: u32, message: String) -> TypeScriptError {
    let (line, column) = line_and_column(source, offset);
    TypeScriptError { message, line, column }
}

/// The 1-based line and character column of byte `offset`; `\n`, `\r\n` and a lone `\r` end a line.
fn line_and_column(source: &str, offset: u32) -> (u32, u32) {
    let mut line: u32 = 1;
    let mut column: u32 = 1;
    let mut chars = source.char_indices().peekable();
    while let Some((pos, ch)) = chars.next() {
        if pos >= offset as usize {
            break;
        }
        match ch {
            '\r' if chars.peek().is_some_and(|&(_, next)| next == '\n') => {}
            '\n' | '\r' => {
                line = line.saturating_add(1);
                column = 1;
            }
            _ => column = column.saturating_add(1),
        }
    }
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::strip_types`] on a thread with a large stack: natively nothing bounds the
    /// parser's recursion (in the guest the wasm stack limit does).
    fn strip_types(source: &str) -> Result<String, TypeScriptError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(1 << 30)
                .spawn_scoped(scope, || super::strip_types(source))
                .expect("a test thread starts")
                .join()
                .expect("stripping does not panic")
        })
    }

    /// Strips `source`, panicking with the error if it is rejected, and checks the invariants
    /// every output must meet (see [`assert_valid_javascript_at_same_positions`]).
    fn strip(source: &str) -> String {
        let output = strip_types(source).unwrap_or_else(|error| panic!("{error}\n--- source ---\n{source}"));
        assert_valid_javascript_at_same_positions(source, &output);
        output
    }

    /// The output has the input's characters, line terminators and kept tokens at the same
    /// positions (only spaces, `;` and a moved `)` differ), and it parses as plain JavaScript,
    /// so no type syntax is left. If `node` is installed, it must also accept the output as the
    /// body of an async function, like the engine that runs it.
    fn assert_valid_javascript_at_same_positions(source: &str, output: &str) {
        assert_eq!(source.lines().count(), output.lines().count(), "line count changed:\n{output}");
        assert_eq!(source.chars().count(), output.chars().count(), "character count changed:\n{output}");
        for (index, (before, after)) in source.chars().zip(output.chars()).enumerate() {
            assert!(
                before == after || matches!(after, ' ' | ';' | ')') && !is_line_terminator(before),
                "character {index} changed from {before:?} to {after:?}:\n{output}"
            );
        }

        let allocator = Allocator::default();
        let options = ParseOptions { allow_return_outside_function: true, ..ParseOptions::default() };
        let parsed = Parser::new(&allocator, output, SourceType::mjs()).with_options(options).parse();
        let errors: Vec<String> = parsed.diagnostics.errors().map(|error| error.message.to_string()).collect();
        assert!(errors.is_empty(), "output is not JavaScript: {errors:?}\n--- output ---\n{output}");

        if let Some(node_error) = node_rejects_as_async_function_body(output) {
            panic!("node rejects the output: {node_error}\n--- output ---\n{output}");
        }
    }

    /// `Some(error)` if `node` is installed and cannot compile `code` as an async function body;
    /// `None` if it can, if node is missing, or if the code uses `import`/`export`/decorators,
    /// which the runtime would reject whatever the types.
    fn node_rejects_as_async_function_body(code: &str) -> Option<String> {
        use std::io::Write;
        use std::process::{Command, Stdio};

        if code.contains("import") || code.contains("export") || code.contains('@') || code.contains("accessor") {
            return None;
        }
        let script = "const AsyncFunction = (async () => {}).constructor;\
                      try { new AsyncFunction(require('fs').readFileSync(0, 'utf8')); }\
                      catch (error) { console.log(error.message); process.exit(1); }";
        let mut child = Command::new("node")
            .args(["-e", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(code.as_bytes()).ok()?;
        let output = child.wait_with_output().ok()?;
        (!output.status.success()).then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    #[test]
    fn node_check_catches_leftover_types_when_node_is_installed() {
        let node_installed =
            std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
        if node_installed {
            assert!(node_rejects_as_async_function_body("let x: number = 1").is_some());
            assert!(node_rejects_as_async_function_body("return await 1").is_none());
        }
    }

    fn rejection(source: &str) -> TypeScriptError {
        match strip_types(source) {
            Ok(output) => panic!("expected an error, got:\n{output}"),
            Err(error) => error,
        }
    }

    // ----- plain JavaScript --------------------------------------------------------------------

    #[test]
    fn javascript_is_returned_byte_identical() {
        let sources = [
            "",
            "1 + 1",
            "return 42",
            "const r = await tools.search({ q: 'x' });\nreturn r.items.map((i) => i.name);\n",
            "// comment\r\nlet a = 1;\r\n/* multi\r\n line */ return a < 2 ? a > 0 : a;\r\n",
            concat!(
                "class Counter {\n  #count = 0;\n  static create() { return new Counter(); }\n",
                "  get value() { return this.#count; }\n  *[Symbol.iterator]() { yield this.#count; }\n}\n",
                "const re = /<[a-z]+>/gu, t = `${`${1 + 2}`}<b>${re.source}</b>`;\n",
                "label: for (const x of [1, 2]) { if (x > 1) break label; }\n",
                "const s = 'été — 日本 😀'; const o = { a: 1, ...{ b: 2 } }; o?.a ?? s;\n",
                "async function* gen() { for await (const x of []) yield x; }\n",
                "return a !== b ? [1, 2, 3].filter((x) => x !== 2) : void 0;\n",
            ),
        ];
        for source in sources {
            assert_eq!(strip(source), source);
        }
    }

    #[test]
    fn expressions_and_top_level_return_and_await() {
        assert_eq!(strip("1 + 1"), "1 + 1");
        assert_eq!(strip("tools.x.y({a: 1}) as Foo"), "tools.x.y({a: 1})       ");
        assert_eq!(
            strip("const r = await tools.get<Item>(id);\nreturn r!;"),
            "const r = await tools.get      (id);\nreturn r ;"
        );
        assert_eq!(strip("await x; return;"), "await x; return;");
    }

    // ----- annotations, generics, assertions ---------------------------------------------------

    #[test]
    fn annotations_on_variables_parameters_and_returns() {
        assert_eq!(strip("let x: number = 1;"), "let x         = 1;");
        assert_eq!(strip("let y!: string;"), "let y         ;");
        assert_eq!(
            strip("function f<T>(a: T, b?: number): T { return a; }"),
            "function f   (a   , b         )    { return a; }"
        );
        assert_eq!(strip("const g = <T,>(a: T): T => a;"), "const g =     (a   )    => a;");
        assert_eq!(
            strip("const h = async (x?: number): Promise<void> => {};"),
            "const h = async (x         )                => {};"
        );
        assert_eq!(strip("function r(...rest: string[]) {}"), "function r(...rest          ) {}");
        assert_eq!(strip("try {} catch (e: unknown) {}"), "try {} catch (e         ) {}");
        assert_eq!(strip("const { a }: { a: number } = o;"), "const { a }                = o;");
        strip("function isX(a: unknown): a is X { return true }\nfunction check(a): asserts a {}");
    }

    #[test]
    fn this_parameters() {
        assert_eq!(strip("function f(this: Foo, a) {}"), "function f(           a) {}");
        assert_eq!(strip("function f(this: Foo) {}"), "function f(         ) {}");
        assert_eq!(strip("function f(this: Foo,) {}"), "function f(          ) {}");
        assert_eq!(strip("const o = { m(this: O, x) {} };"), "const o = { m(         x) {} };");
    }

    #[test]
    fn assertions_and_type_arguments() {
        assert_eq!(strip("const o = { a: 1 } as const;"), "const o = { a: 1 }         ;");
        assert_eq!(strip("const c = conf satisfies Conf;"), "const c = conf               ;");
        assert_eq!(strip("const v = <string>foo;"), "const v =         foo;");
        assert_eq!(strip("const n = a!.b!.c;"), "const n = a .b .c;");
        assert_eq!(strip("const t = tag<string>`hi`;"), "const t = tag        `hi`;");
        assert_eq!(strip("const m = new Map<string, number>();"), "const m = new Map                ();");
        assert_eq!(strip("const i = f<number>;"), "const i = f        ;");
        assert_eq!(strip("(x as any).y = 1; x! = 2;"), "(x       ).y = 1; x  = 2;");
        strip("const u = x as unknown as string;\nfor (const k of Object.keys(o) as string[]) {}");
    }

    #[test]
    fn characters_are_blanked_one_space_each() {
        // Columns count characters, so a multi-byte character becomes a single space.
        assert_eq!(strip("let s: \"日本\" = \"日本\";"), "let s       = \"日本\";");
        assert_eq!(strip("let x: A /* é */ | B = 1;"), "let x                = 1;");
    }

    // ----- declarations --------------------------------------------------------------------------

    #[test]
    fn interface_is_blanked_keeping_its_lines() {
        let source = "interface Foo {\n  a: number;\r\n  b: string;\n}\nreturn 1;";
        assert_eq!(strip(source), ";              \n            \r\n            \n \nreturn 1;");
    }

    #[test]
    fn type_only_statements_start_with_a_semicolon() {
        assert_eq!(strip("let a = 1\ntype X = { a: 1 }\n(f)()"), "let a = 1\n;                \n(f)()");
        let source = concat!(
            "declare const z: number;\n",
            "declare let w: string, v: number;\n",
            "declare function q(a: string): void;\n",
            "declare class C { m(): void }\n",
            "declare module \"m\" { export const a: number }\n",
            "declare module M { const a: 1 }\n",
            "declare global { interface Window { x: 1 } }\n",
            "declare namespace N { const a: 1 }\n",
            "declare enum E { A }\n",
            "declare const enum F { A }\n",
            "namespace Types { export type T = 1; export namespace Inner { export interface I {} } }\n",
            "function over(a: string): string;\n",
            "function over(a: number): number;\n",
            "function over(a: any) { return a }\n",
            "if (a) { type Z = 1 }\n",
            "return over(1);",
        );
        let output = strip(source);
        for line in output.lines().take(13) {
            assert!(line.starts_with(';') && line[1..].trim().is_empty(), "not blanked: {line:?}");
        }
        assert!(output.contains("function over(a     ) { return a }"));
        assert!(output.contains("if (a) { ;          }"));
    }

    #[test]
    fn imports_and_exports_of_types() {
        assert_eq!(strip("import type { A } from \"a\";"), ";                          ");
        assert_eq!(strip("import type A from \"a\";"), ";                      ");
        assert_eq!(strip("import { type A, b, type C } from \"x\";"), "import {         b,        } from \"x\";");
        assert_eq!(strip("import { b, type C } from \"x\";"), "import { b,        } from \"x\";");
        assert_eq!(strip("import d, { type C } from \"x\";"), "import d, {        } from \"x\";");
        assert_eq!(strip("export { type A as B, c };"), "export {              c };");
        assert_eq!(strip("export type { A };"), ";                 ");
        assert_eq!(strip("export type * from \"a\";"), ";                      ");
        assert_eq!(strip("export interface I {}"), ";                    ");
        assert_eq!(strip("export declare const x: 1;"), ";                         ");
        assert_eq!(strip("export default interface I {}"), ";                            ");
        assert_eq!(strip("import type A = require(\"a\");"), ";                            ");
        assert_eq!(strip("export as namespace Lib;"), ";                       ");
    }

    // ----- classes -------------------------------------------------------------------------------

    #[test]
    fn class_members() {
        let source = concat!(
            "class A<T> extends B<T> implements I, J<T> {\n",
            "  public x: number = 1;\n",
            "  private readonly y?: string;\n",
            "  protected z!: number;\n",
            "  declare w: string;\n",
            "  static override v = 2;\n",
            "  [key: string]: any;\n",
            "  opt?(): void;\n",
            "  opt2?() { return 1 }\n",
            "  constructor(a: number);\n",
            "  constructor(a: any) { super(); }\n",
            "  public get g(): number { return 1 }\n",
            "  m<U>(this: A<T>, u: U): U { return u }\n",
            "  [k]?: number;\n",
            "}",
        );
        let expected = concat!(
            "class A    extends B                       {\n",
            "  ;      x         = 1;\n",
            "  ;                y         ;\n",
            "  ;         z         ;\n",
            "  ;                 \n",
            "  static          v = 2;\n",
            "  ;                  \n",
            "  ;            \n",
            "  opt2 () { return 1 }\n",
            "  ;                      \n",
            "  constructor(a     ) { super(); }\n",
            "  ;      get g()         { return 1 }\n",
            "  m   (            u   )    { return u }\n",
            "  [k]         ;\n",
            "}",
        );
        assert_eq!(strip(source), expected);
    }

    #[test]
    fn abstract_classes_and_members() {
        assert_eq!(
            strip("abstract class B { abstract x: number; abstract m(): void; n() {} }"),
            "         class B { ;                   ;                   n() {} }"
        );
        assert_eq!(strip("export abstract class C {}"), "export          class C {}");
        assert_eq!(strip("const D = class implements I {};"), "const D = class              {};");
        assert_eq!(
            strip("class E extends (F)/* c */implements G<H> {}"),
            "class E extends (F)/* c */                {}"
        );
    }

    #[test]
    fn a_modifier_before_a_computed_key_cannot_join_the_previous_field() {
        assert_eq!(strip("class A {\n  x = 1\n  private [k] = 2\n}"), "class A {\n  x = 1\n  ;       [k] = 2\n}");
        // Not first in the member (after `static` or a decorator): just spaces.
        assert_eq!(strip("class A { static readonly w = 4 }"), "class A { static          w = 4 }");
        assert_eq!(strip("class A { @dec private z = 3 }"), "class A { @dec         z = 3 }");
        // Members named like modifiers are kept.
        assert_eq!(
            strip("class A { readonly = 1; public readonly() {} }"),
            "class A { readonly = 1; ;      readonly() {} }"
        );
    }

    // ----- automatic semicolon insertion and line breaks -------------------------------------------

    #[test]
    fn a_blanked_ending_does_not_join_the_next_line() {
        assert_eq!(strip("let y = x as Foo\n(bar)()"), "let y = x      ;\n(bar)()");
        assert_eq!(strip("y = x satisfies Foo\n[1].map(f)"), "y = x             ;\n[1].map(f)");
        assert_eq!(strip("f(x as T)\n`t`"), "f(x     )\n`t`");
        assert_eq!(strip("class A {\n  x = y as T\n  [k] = 1\n}"), "class A {\n  x = y    ;\n  [k] = 1\n}");
        // Nothing follows, so an expression stays an expression.
        assert_eq!(strip("f() as T\n"), "f()     \n");
        // `x!` followed by `[` on the next line is a member access in TypeScript too.
        assert_eq!(strip("let z = x!\n[1]"), "let z = x \n[1]");
    }

    #[test]
    fn arrow_return_type_across_lines_moves_the_paren() {
        assert_eq!(
            strip("const f = (a: number):\n  Promise<number> => a;"),
            "const f = (a          \n                ) => a;"
        );
        assert_eq!(strip("const g = async (a):\n  Foo => a;"), "const g = async (a  \n    ) => a;");
    }

    #[test]
    fn line_breaks_that_would_end_a_statement_are_rejected() {
        let error = rejection("function h() {\n  return <Foo>\n    bar;\n}");
        assert_eq!((error.line, error.column), (2, 10));
        assert!(error.message.contains("`return`"), "{error}");
        assert!(rejection("function* g() { yield <A,\n>(x) => x }").message.contains("`yield`"));
        assert!(rejection("throw <Error>/*\n*/e;").message.contains("`throw`"));
        assert!(rejection("const f = async <T,\n>(a: T) => a;").message.contains("async"));
        // The same assertion is fine where a line break is harmless, or on one line.
        assert_eq!(strip("const x = <Foo>\n  bar;"), "const x =      \n  bar;");
        assert_eq!(strip("return <Foo>bar;"), "return      bar;");
    }

    // ----- rejected constructs -------------------------------------------------------------------

    #[test]
    fn constructs_that_generate_code_are_rejected() {
        let error = rejection("const a = 1;\nenum Color { Red, Green }");
        assert_eq!((error.line, error.column), (2, 1));
        assert!(error.message.contains("`enum`") && error.message.contains("as const"), "{error}");

        assert!(rejection("const enum E { A }").message.contains("`enum`"));
        assert!(rejection("function f() {\n  enum E { A }\n}").line == 2);

        let error = rejection("namespace N {\n  export const a = 1;\n}");
        assert!(error.message.contains("namespace") && error.message.contains("plain object"), "{error}");
        assert!(rejection("module M { export function f() {} }").message.contains("namespace"));

        let error = rejection("class P {\n  constructor(private x: number, readonly y) {}\n}");
        assert_eq!((error.line, error.column), (2, 15));
        assert!(error.message.contains("parameter properties") && error.message.contains("this.x = x"), "{error}");

        assert!(rejection("import fs = require(\"fs\");").message.contains("import x ="));
        assert!(rejection("import A = B.C;").message.contains("const x"));
        assert!(rejection("export = 1;").message.contains("export ="));
    }

    // ----- syntax errors and positions -------------------------------------------------------------

    #[test]
    fn syntax_errors_report_the_first_diagnostic_and_its_position() {
        let error = rejection("const a = 1;\nconst b = 2;\n    );\n");
        assert_eq!((error.line, error.column), (3, 5));
        assert_eq!(error.to_string(), format!("line 3, column 5: {}", error.message));
        let error = rejection("let a = 1;\nlet b = 2;\nlet c = ;\n");
        assert_eq!((error.line, error.column), (3, 9));
        let error = rejection("const a = 1;\nconst b = 2;\nif (a) {\n    b = = 3;\n}");
        assert_eq!((error.line, error.column), (4, 9));
        assert!(!error.message.is_empty());
        let error = rejection("foo(\n  a,\n\n    )) ;");
        assert_eq!((error.line, error.column), (4, 6));
        assert_eq!(error.to_string(), format!("line 4, column 6: {}", error.message));
    }

    #[test]
    fn positions_count_characters_and_all_line_endings() {
        assert_eq!(line_and_column("ab", 0), (1, 1));
        assert_eq!(line_and_column("日本x", 6), (1, 3));
        assert_eq!(line_and_column("a\r\nb\rc\nd", 7), (4, 1));
        assert_eq!(line_and_column("a\r\nbc", 4), (2, 2));
        assert_eq!(line_and_column("abc", 99), (1, 4));
        let error = rejection("const é = '日本';\n  enum E {}");
        assert_eq!((error.line, error.column), (2, 3));
    }

    #[test]
    fn error_display() {
        let error = TypeScriptError { message: "boom".to_string(), line: 3, column: 5 };
        assert_eq!(error.to_string(), "line 3, column 5: boom");
        let _: &dyn std::error::Error = &error;
    }

    // ----- robustness ------------------------------------------------------------------------------

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let parens = format!("{}x as T{}", "(".repeat(20_000), ")".repeat(20_000));
        assert!(strip_types(&parens).is_ok());
        // Unclosed `[` in a type is the deepest-recursing input measured.
        let brackets = format!("let a: {}", "[".repeat(20_000));
        assert!(strip_types(&brackets).is_err());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for source in
            ["\u{FEFF}1", "#!/usr/bin/env node\n1", "\u{2028}let x: T\u{2029}", "<", "as", "x!", "class {", "`${"]
        {
            let _ = strip_types(source);
        }
        assert_eq!(strip("let x: T\u{2028}= 1"), "let x   \u{2028}= 1");
    }
}
