//! Letting a session's code end with a top-level `return`.
//!
//! Outside a session, submitted code is the body of an async function, so `return x` at the top
//! level ends it with `x`. In a session it is evaluated as one global script instead, so that its
//! `let`, `const`, `class` and `function` declarations stay in the realm for the next execution;
//! and in a script, `return` outside a function is a syntax error. [`session_script`] rewrites the
//! code so that the same snippet gives the same result either way.
//!
//! # Throwing the returned value
//!
//! Each top-level `return x` becomes `throw { __sandgate_return__: (x) }`, and the guest's prelude
//! takes a rejection with such an object as the code's result. A thrown value unwinds the script
//! exactly as far as a `return` would unwind a function body: it runs every enclosing `finally`,
//! closes the iterators of enclosing `for … of` loops, and is overridden, like a `return`, by a
//! `break`, `continue`, `return` or `throw` in a `finally`. Nothing else in the code moves, so:
//!
//! * declarations stay declarations, with the language's rules intact (a `const` stays constant,
//!   a `let` has its temporal dead zone, a function declaration is hoisted as a global function
//!   and can be declared again in the next execution);
//! * the directive prologue (`"use strict"`) stays first;
//! * the script's completion value, the result when no `return` runs, is the one QuickJS would
//!   give the unchanged code (but for a guarded `catch`, below, whose block produces no value:
//!   its guard is an `if`, whose completion value is `undefined`);
//! * every line stays where it was, and every column too, except after an edit on the same line
//!   (a rewritten `return`, or a guarded `catch`, below).
//!
//! The one place where a thrown value and a `return` differ inside top-level code is a `catch`:
//! it would catch the returned value. So each `catch` whose `try` block holds a top-level `return`
//! rethrows the marker object first (`catch (e) { if (… "__sandgate_return__" in e) throw e; …`).
//! A `catch` with a destructuring parameter catches into a fresh name, rethrows the marker, and
//! destructures in a nested `catch` (`catch (__sandgate_error__) { …; try { throw
//! __sandgate_error__ } catch ({ message }) { … } }`), so that no default initializer runs and no
//! nested pattern throws on the marker; a `catch` without a parameter gets one.
//!
//! The marker is an own property of a fresh object rather than a global variable, so nothing can
//! shadow it (not a `with` statement, not a local named like it), strict code needs no declared
//! global to assign, and the prelude keeps no state between executions.
//!
//! The other way to leave a script early, wrapping it in a labelled block and turning `return`
//! into `break`, changes far more: a block scopes the `let`, `const`, `class` and `function`
//! declarations in it, so each would have to be rewritten (`let`s hoisted in front of the block,
//! losing their dead zone and making `const`s assignable, declarations turned into assignments,
//! which changes the completion value, function declarations moved after the block, which moves
//! their lines), and a prefix in front of the code would end its directive prologue.
//!
//! # Trade-offs
//!
//! * A declaration after the `return` that ran is never evaluated, so its binding stays in its
//!   temporal dead zone for the rest of the session, as after an exception (reading it throws a
//!   `ReferenceError`; declaring it again is a `SyntaxError`). Functions declared anywhere in the
//!   code are hoisted and usable, as in a function body.
//! * Code that throws an object with an own `__sandgate_return__` property itself ends with that
//!   property's value, as if it had returned it.
//! * An error in an iterator's `return()` while a top-level `return` leaves a `for … of` loop is
//!   dropped (the marker wins, as it would for any exception); in a function body it would be
//!   thrown. A `using` declaration whose disposal throws while a `return` unwinds reports a
//!   `SuppressedError` rather than the disposal's own error.
//!
//! # Parsing
//!
//! The code is parsed as a *module* with top-level `return` allowed, the closest match to a
//! QuickJS global script evaluated with top-level await: a plain script would reject every
//! top-level `await`. The parser leaves nearly all strict-mode checks to semantic analysis, so
//! sloppy-mode code still parses; the few exceptions (HTML-like comments, `<!--` and `-->`, and
//! `await` used as a name) make [`session_script`] return `None`, and QuickJS then reports the
//! `return` as a syntax error. The parse only has to find statements, which it does the same way
//! in both goals.

use oxc_allocator::Allocator;
use oxc_ast::ast::{BindingPattern, CatchClause, Class, FunctionBody, ReturnStatement, TryStatement};
use oxc_ast_visit::Visit;
use oxc_parser::{ParseOptions, Parser};
use oxc_span::{GetSpan, SourceType};

/// The own property that marks an object thrown for a top-level `return`; the prelude looks for
/// the same name.
const RETURN_KEY: &str = "__sandgate_return__";

/// The parameter given to a `catch` that must see the marker before the code does.
const CAUGHT: &str = "__sandgate_error__";

/// `code` (JavaScript, already free of TypeScript types) rewritten so that QuickJS can evaluate
/// it as a global script although it has a top-level `return`; `None` when it has no top-level
/// return (or does not parse: QuickJS then reports the syntax error in its own words).
///
/// The rewritten code throws `{ __sandgate_return__: value }` where the original returns
/// `value`, and is otherwise the same code, line for line; `session.rs` explains the design.
///
/// Like [`strip_types`](crate::strip_types), this function bounds neither the parser's recursion
/// nor its work: inside the guest, the caller's fuel, memory and wasm stack limits do.
pub fn session_script(code: &str) -> Option<String> {
    // Spans are `u32` offsets.
    u32::try_from(code.len()).ok()?;
    let allocator = Allocator::default();
    let options = ParseOptions { allow_return_outside_function: true, ..ParseOptions::default() };
    let parsed = Parser::new(&allocator, code, SourceType::mjs()).with_options(options).parse();
    if parsed.panicked || parsed.diagnostics.errors().next().is_some() {
        return None;
    }

    let mut finder = TopLevelReturns { source: code, returns: 0, edits: Vec::new() };
    finder.visit_program(&parsed.program);
    if finder.returns == 0 {
        return None;
    }
    apply(code, finder.edits)
}

/// An edit of the source: the bytes `start..end` (often empty) replaced by `text`.
struct Edit {
    start: u32,
    end: u32,
    text: String,
}

/// Finds the top-level `return` statements and the `catch` clauses that could catch them,
/// recording the edits that turn each into what a global script can run.
struct TopLevelReturns<'s> {
    source: &'s str,
    /// Top-level `return` statements seen so far.
    returns: usize,
    edits: Vec<Edit>,
}

impl TopLevelReturns<'_> {
    fn insert(&mut self, at: u32, text: String) {
        self.edits.push(Edit { start: at, end: at, text });
    }

    fn replace(&mut self, start: u32, end: u32, text: String) {
        self.edits.push(Edit { start, end, text });
    }

    /// `return x;` → `throw { __sandgate_return__: (x) };`, where the parentheses keep a comma
    /// expression whole.
    fn rewrite_return(&mut self, it: &ReturnStatement<'_>) {
        let start = it.span.start;
        let keyword_end = start + "return".len() as u32;
        // Keywords cannot be written with escapes, so the statement starts with the plain word.
        debug_assert_eq!(self.source.get(start as usize..keyword_end as usize), Some("return"));
        match &it.argument {
            Some(argument) => {
                // What lies between the keyword and the value (spaces, a comment) goes too; it
                // holds no line break, or the `return` would have ended before the value.
                let value = argument.span();
                self.replace(start, value.start, format!("throw {{ {RETURN_KEY}: ("));
                self.insert(value.end, ") }".to_string());
            }
            None => self.replace(start, keyword_end, format!("throw {{ {RETURN_KEY}: void 0 }}")),
        }
        // A `return` that automatic semicolon insertion ended gets a `;` of its own: the object
        // literal that now ends the statement could be continued by a `(`, `[` or template on
        // the next line, where the original value (an arrow function, say) could not.
        if !self.source.as_bytes()[..it.span.end as usize].ends_with(b";") {
            self.insert(it.span.end, ";".to_string());
        }
    }

    /// Makes `handler` rethrow the marker of a top-level `return` in its `try` block before the
    /// code in it sees the marker.
    fn guard_catch(&mut self, handler: &CatchClause<'_>) {
        let body = handler.body.span;
        match handler.param.as_ref().map(|param| &param.pattern) {
            Some(BindingPattern::BindingIdentifier(identifier)) => {
                self.insert(body.start + 1, rethrow(identifier.name.as_str()));
            }
            Some(pattern) => {
                // `catch (P) {…}` → `catch (C) { rethrow; try { throw C } catch (P) {…} }`,
                // written around `P` and its block so that both stay where they are.
                let nested = format!("{CAUGHT}) {{{} try {{ throw {CAUGHT} }} catch (", rethrow(CAUGHT));
                self.insert(pattern.span().start, nested);
                self.insert(body.end, " }".to_string());
            }
            None => {
                self.insert(body.start, format!("({CAUGHT}) "));
                self.insert(body.start + 1, rethrow(CAUGHT));
            }
        }
    }
}

/// A statement, to put first in a `catch` block, that rethrows the caught `name` if it is the
/// marker of a top-level `return`. It reads no global, which the code could have replaced.
fn rethrow(name: &str) -> String {
    format!(" if (typeof {name} === \"object\" && {name} !== null && \"{RETURN_KEY}\" in {name}) throw {name};")
}

impl<'a> Visit<'a> for TopLevelReturns<'_> {
    fn visit_return_statement(&mut self, it: &ReturnStatement<'a>) {
        // The value can hold a `return` only inside a function, which is not top-level.
        self.returns += 1;
        self.rewrite_return(it);
    }

    fn visit_try_statement(&mut self, it: &TryStatement<'a>) {
        let before = self.returns;
        self.visit_block_statement(&it.block);
        if let Some(handler) = &it.handler {
            if self.returns > before {
                self.guard_catch(handler);
            }
            self.visit_catch_clause(handler);
        }
        if let Some(finalizer) = &it.finalizer {
            self.visit_block_statement(finalizer);
        }
    }

    // A `return` in the body of a function or arrow function is its own; a class can hold one
    // only in a method (a function) or, as a syntax error QuickJS reports, in a static block.
    fn visit_function_body(&mut self, _it: &FunctionBody<'a>) {}

    fn visit_class(&mut self, _it: &Class<'a>) {}
}

/// `source` with `edits` made. Edits never overlap; several at one position apply in the order
/// they were recorded. `None` if the edits do not fit the source, which would be a bug here, but
/// leaves QuickJS to report the `return` rather than run something else.
fn apply(source: &str, mut edits: Vec<Edit>) -> Option<String> {
    edits.sort_by_key(|edit| edit.start);
    let extra: usize = edits.iter().map(|edit| edit.text.len()).sum();
    let mut output = String::with_capacity(source.len() + extra);
    let mut copied = 0;
    for edit in edits {
        let (start, end) = (edit.start as usize, edit.end as usize);
        output.push_str(source.get(copied..start)?);
        output.push_str(&edit.text);
        copied = copied.max(end);
    }
    output.push_str(source.get(copied..)?);
    Some(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with a large stack: natively nothing bounds the parser's recursion
    /// (in the guest the wasm stack limit does).
    fn on_large_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(1 << 30)
                .spawn_scoped(scope, f)
                .expect("a test thread starts")
                .join()
                .expect("the test thread does not panic")
        })
    }

    fn session_script(code: &str) -> Option<String> {
        on_large_stack(|| super::session_script(code))
    }

    /// Rewrites `code`, which must have a top-level `return`, and checks what every output must
    /// meet: the lines are those of `code` (edits stay within a line), and the output is
    /// JavaScript without a top-level `return`.
    fn rewrite(code: &str) -> String {
        let output = session_script(code).unwrap_or_else(|| panic!("not rewritten:\n{code}"));
        assert_eq!(lines(code).len(), lines(&output).len(), "line count changed:\n{output}");
        on_large_stack(|| assert_valid_script(&output));
        output
    }

    fn lines(text: &str) -> Vec<&str> {
        text.split(['\n', '\r', '\u{2028}', '\u{2029}']).collect()
    }

    /// `output` parses without `return` allowed outside functions: as a module (which, like the
    /// session's script, allows top-level `await`) and, when it has no `await`, as a script.
    fn assert_valid_script(output: &str) {
        let mut goals = vec![SourceType::mjs()];
        if !output.contains("await") {
            goals.push(SourceType::script());
        }
        for goal in goals {
            let allocator = Allocator::default();
            let parsed = Parser::new(&allocator, output, goal).parse();
            let errors: Vec<String> = parsed.diagnostics.errors().map(|error| error.message.to_string()).collect();
            assert!(errors.is_empty() && !parsed.panicked, "not valid JavaScript: {errors:?}\n{output}");
        }
    }

    /// The 1-based line holding the first occurrence of `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        let offset = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"));
        lines(&text[..offset]).len()
    }

    // ----- what is rewritten ---------------------------------------------------------------------

    #[test]
    fn top_level_returns_throw_the_value() {
        assert_eq!(rewrite("return 1 + 1;"), "throw { __sandgate_return__: (1 + 1) };");
        assert_eq!(
            rewrite("const x = await f();\nreturn x"),
            "const x = await f();\nthrow { __sandgate_return__: (x) };"
        );
        assert_eq!(rewrite("return a, b;"), "throw { __sandgate_return__: (a, b) };");
        assert_eq!(rewrite("return(a) ;"), "throw { __sandgate_return__: ((a)) } ;");
        assert_eq!(rewrite("return /* c */ x;"), "throw { __sandgate_return__: (x) };");
    }

    #[test]
    fn a_return_without_a_value_throws_undefined() {
        assert_eq!(rewrite("return;"), "throw { __sandgate_return__: void 0 };");
        assert_eq!(rewrite("if (a) return\nf()"), "if (a) throw { __sandgate_return__: void 0 };\nf()");
        // A line break after `return` ends the statement: the next line is not its value.
        assert_eq!(rewrite("return\n1"), "throw { __sandgate_return__: void 0 };\n1");
        assert_eq!(rewrite("return // done\n1"), "throw { __sandgate_return__: void 0 }; // done\n1");
    }

    #[test]
    fn a_return_ended_by_a_line_break_gets_a_semicolon() {
        // Without it the object literal would be called with `(g)`.
        assert_eq!(
            rewrite("if (a) return () => {}\n(g)()"),
            "if (a) throw { __sandgate_return__: (() => {}) };\n(g)()"
        );
        assert_eq!(
            rewrite("if (a) return 1\nelse return 2"),
            "if (a) throw { __sandgate_return__: (1) };\nelse throw { __sandgate_return__: (2) };"
        );
        assert_eq!(rewrite("{ return 1 }"), "{ throw { __sandgate_return__: (1) }; }");
    }

    #[test]
    fn returns_in_nested_statements_are_rewritten() {
        let code = concat!(
            "for (const x of xs) {\n",
            "  if (x > 2) { return x }\n",
            "  while (true) { switch (x) { case 1: return 'one'; default: break } break }\n",
            "}\n",
            "label: { with (o) return 3; }\n",
            "try { return 4 } finally { cleanup() }\n",
            "do return 5; while (0)\n",
        );
        let output = rewrite(code);
        assert_eq!(output.matches("throw { __sandgate_return__: ").count(), 5, "{output}");
        assert_eq!(output.matches("return").count(), 5, "{output}");
        assert!(output.contains("try { throw { __sandgate_return__: (4) }; } finally { cleanup() }"), "{output}");
    }

    #[test]
    fn returns_in_functions_and_classes_are_their_own() {
        let own = concat!(
            "function f() { return 1 }\n",
            "const g = () => { return 2 };\n",
            "const h = async function* () { return 3 };\n",
            "class A { m() { return 4 } static s = () => { return 5 }; get g() { return 6 } }\n",
            "const o = { m() { return 7 }, set s(v) { return } };\n",
            "f(function () { try { return 8 } catch (e) {} });\n",
        );
        assert_eq!(session_script(own), None);
        let mixed = format!("{own}return f();");
        let output = rewrite(&mixed);
        assert_eq!(output.strip_prefix(own), Some("throw { __sandgate_return__: (f()) };"));
    }

    #[test]
    fn code_without_a_top_level_return_is_left_alone() {
        assert_eq!(session_script("1 + 1"), None);
        assert_eq!(session_script("let a = 1;\nconst b = await a;\na + b"), None);
        assert_eq!(session_script(""), None);
        assert_eq!(session_script("// return 1\n'return'"), None);
    }

    #[test]
    fn syntax_errors_are_left_to_quickjs() {
        assert_eq!(session_script("return 1 +;"), None);
        assert_eq!(session_script("if (a) {\n  return 1;\n"), None);
        assert_eq!(session_script("return\n  )"), None);
    }

    // ----- what stays as it was -------------------------------------------------------------------

    #[test]
    fn declarations_are_left_alone() {
        let code = concat!(
            "\"use strict\";\n",
            "const {a, b: [c]} = o, d = 2;\n",
            "let e;\n",
            "var v = 1;\n",
            "class A extends B { static x = 1 }\n",
            "async function* gen() { yield 1 }\n",
            "function helper(x) { return x * 2 }\n",
            "if (!a) return helper(d);\n",
            "let late = 3;\n",
            "function hoisted() { return late }\n",
        );
        let output = rewrite(code);
        let expected = code.replace("return helper(d);", "throw { __sandgate_return__: (helper(d)) };");
        assert_eq!(output, expected);
        assert!(output.starts_with("\"use strict\";\n"));
    }

    #[test]
    fn lines_stay_where_they_were() {
        let code = concat!(
            "const config = {\n",
            "  retries: 3,\n",
            "};\n",
            "if (!config) return {\n",
            "  error: 'none',\n",
            "};\n",
            "try {\n",
            "  if (x) return (\n",
            "    1\n",
            "  )\n",
            "} catch ({ message }) {\n",
            "  log(message)\n",
            "}\n",
            "const later = boom();\n",
            "return later\n",
        );
        let output = rewrite(code);
        for needle in ["retries", "error:", "    1", "log(message)", "const later = boom();", "(later)"] {
            let needle_in_code = if needle == "(later)" { "return later" } else { needle };
            assert_eq!(line_of(&output, needle), line_of(code, needle_in_code), "{needle}:\n{output}");
        }
        // Lines without an edit are unchanged, so their columns are too.
        let (before, after) = (lines(code), lines(&output));
        for line in [1, 2, 3, 5, 7, 9, 12, 14, 16] {
            assert_eq!(before[line - 1], after[line - 1], "line {line}:\n{output}");
        }
    }

    #[test]
    fn unicode_text_is_copied_through() {
        let code = "const 名前 = \"日本語 🎌\";\nif (名前) return `${名前} é`;\n/* ü */ return 'ß'";
        assert_eq!(
            rewrite(code),
            "const 名前 = \"日本語 🎌\";\nif (名前) throw { __sandgate_return__: (`${名前} é`) };\n\
             /* ü */ throw { __sandgate_return__: ('ß') };"
        );
        assert_eq!(rewrite("\u{FEFF}return 1\u{2028}f()"), "\u{FEFF}throw { __sandgate_return__: (1) };\u{2028}f()");
    }

    // ----- catch clauses --------------------------------------------------------------------------

    #[test]
    fn a_catch_around_a_return_rethrows_it() {
        assert_eq!(
            rewrite("try { return 1 } catch (e) { log(e) }"),
            concat!(
                "try { throw { __sandgate_return__: (1) }; } catch (e) {",
                " if (typeof e === \"object\" && e !== null && \"__sandgate_return__\" in e) throw e;",
                " log(e) }"
            )
        );
        assert_eq!(
            rewrite("try { if (a) return 1 } catch { fallback() }"),
            concat!(
                "try { if (a) throw { __sandgate_return__: (1) }; } catch (__sandgate_error__) {",
                " if (typeof __sandgate_error__ === \"object\" && __sandgate_error__ !== null",
                " && \"__sandgate_return__\" in __sandgate_error__) throw __sandgate_error__;",
                " fallback() }"
            )
        );
    }

    #[test]
    fn a_destructuring_catch_parameter_never_sees_the_marker() {
        let output = rewrite("try {\n  return 1\n} catch ({ message = f() }) {\n  log(message)\n}");
        assert_eq!(
            output,
            concat!(
                "try {\n  throw { __sandgate_return__: (1) };\n} catch (__sandgate_error__) {",
                " if (typeof __sandgate_error__ === \"object\" && __sandgate_error__ !== null",
                " && \"__sandgate_return__\" in __sandgate_error__) throw __sandgate_error__;",
                " try { throw __sandgate_error__ } catch ({ message = f() }) {\n  log(message)\n} }"
            )
        );
    }

    #[test]
    fn only_catches_that_could_catch_a_return_are_guarded() {
        let code = concat!(
            "try { a() } catch (e) { return 1 }\n",
            "try { b() } catch (e) { } finally { return 2 }\n",
            "try { f(() => { return 3 }) } catch (e) { }\n",
        );
        let output = rewrite(code);
        assert!(!output.contains("typeof"), "{output}");
        // A `return` in an inner `try` is caught by the outer `catch` too.
        let nested = rewrite("try { try { return 1 } finally { } } catch (outer) { }");
        assert!(nested.contains("\"__sandgate_return__\" in outer) throw outer;"), "{nested}");
        let in_catch = rewrite("try { try { x() } catch (inner) { return 1 } } catch (outer) { }");
        // The guard goes in front of a `return` that starts the `catch` block.
        assert_eq!(
            rewrite("try { return 1 } catch (e) {return 2}"),
            concat!(
                "try { throw { __sandgate_return__: (1) }; } catch (e) {",
                " if (typeof e === \"object\" && e !== null && \"__sandgate_return__\" in e) throw e;",
                "throw { __sandgate_return__: (2) };}"
            )
        );
        assert!(in_catch.contains("in outer) throw outer;") && !in_catch.contains("in inner"), "{in_catch}");
    }

    // ----- behaviour, when node is installed ----------------------------------------------------

    /// What `code` gives as the body of an async function (outside a session) and what its
    /// rewrite gives as a script (in a session: run as a global script, or as an async function
    /// body where it awaits, which node's scripts cannot), both as JSON: `{"value": …}`,
    /// `{"error": …}`, or `{"completed": …}` when the rewrite ended without returning. `None`
    /// when node is not installed.
    fn node_outcomes(code: &str, rewritten: &str) -> Option<(String, String)> {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let script = r#"
            const vm = require("vm");
            const AsyncFunction = (async () => {}).constructor;
            const [code, rewritten] = JSON.parse(require("fs").readFileSync(0, "utf8"));
            const settle = async (run) => {
              try { return { value: await run() }; } catch (error) { return { error: String(error) }; }
            };
            (async () => {
              const outside = await settle(() => new AsyncFunction(code)());
              const inside = await settle(async () => {
                try {
                  const completion = rewritten.includes("await")
                    ? await new AsyncFunction(rewritten)()
                    : vm.runInThisContext(rewritten);
                  return { completed: completion };
                } catch (error) {
                  if (error !== null && typeof error === "object" && Object.hasOwn(error, "__sandgate_return__")) {
                    return error.__sandgate_return__;
                  }
                  throw error;
                }
              });
              console.log(JSON.stringify(outside));
              console.log(JSON.stringify("value" in inside ? { value: inside.value } : inside));
            })();
        "#;
        let mut child = Command::new("node")
            .args(["-e", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let input = format!("[{}, {}]", json_string(code), json_string(rewritten));
        child.stdin.take()?.write_all(input.as_bytes()).ok()?;
        let output = child.wait_with_output().ok()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut lines = stdout.lines().map(str::to_string);
        Some((lines.next()?, lines.next()?))
    }

    fn json_string(text: &str) -> String {
        let mut json = String::from("\"");
        for ch in text.chars() {
            match ch {
                '"' => json.push_str("\\\""),
                '\\' => json.push_str("\\\\"),
                ch if (ch as u32) < 0x20 || ch == '\u{2028}' || ch == '\u{2029}' => {
                    json.push_str(&format!("\\u{:04x}", ch as u32));
                }
                ch => json.push(ch),
            }
        }
        json.push('"');
        json
    }

    #[test]
    fn the_rewrite_returns_what_the_function_body_returns() {
        let cases = [
            ("return 1, 2", "2"),
            ("return {a: [1]}", r#"{"a":[1]}"#),
            ("return", "undefined"),
            ("return\n1", "undefined"),
            ("const x = await Promise.resolve(2);\nif (x) return x * 3;\nreturn 0", "6"),
            ("let s = 0;\nfor (const x of [1, 2, 3]) { s += x; if (x === 2) return s; }\nreturn -1", "3"),
            ("switch (2) { case 1: return 'a'; case 2: return 'b' }", r#""b""#),
            ("with ({v: 5}) return v", "5"),
            ("'use strict';\nlet x = 1;\nif (x) return x", "1"),
            ("return f();\nfunction f() { return 'hoisted' }", r#""hoisted""#),
            ("const 名 = 'é';\nreturn 名 + '🎌'", r#""é🎌""#),
            // `finally` runs, and can override the return as it would in a function.
            ("const log = [];\ntry { log.push('t'); return log } finally { log.push('f') }", r#"["t","f"]"#),
            ("try { return 1 } finally { return 2 }", "2"),
            ("L: try { return 1 } finally { break L }\nreturn 3", "3"),
            ("let n = 0;\nfor (const i of [1, 2]) { try { if (i === 1) return 'early' } finally { n++; continue } }\nreturn n", "2"),
            (
                "const closed = [];\nfunction* g() { try { yield 1 } finally { closed.push('closed') } }\nfor (const x of g()) return closed",
                r#"["closed"]"#,
            ),
            // A `catch` does not catch a return, and still catches errors.
            ("try { return 1 } catch (e) { return 'caught' }", "1"),
            ("try { return 1 } catch { return 'caught' }", "1"),
            ("try { try { return 1 } catch ({ a: { b } }) { return 'caught' } } finally { }", "1"),
            ("let hit = false;\ntry { try { return 1 } catch ({ m = (hit = true) }) { } } finally { if (hit) return 'hit' }", "1"),
            ("try { if (false) return 0; null.x } catch (e) { return e instanceof TypeError }", "true"),
            ("try { if (false) return 0; throw [7] } catch ([n]) { return n }", "7"),
            ("try { if (false) return 0; throw undefined } catch { return 'caught' }", r#""caught""#),
            ("try { if (false) return 0; throw null } catch (e) { return e }", "null"),
        ];
        for (code, expected) in cases {
            let rewritten = rewrite(code);
            let Some((outside, inside)) = node_outcomes(code, &rewritten) else { return };
            let expected = if expected == "undefined" { "{}".to_string() } else { format!("{{\"value\":{expected}}}") };
            assert_eq!(outside, expected, "outside a session:\n{code}");
            assert_eq!(inside, expected, "in a session:\n{rewritten}");
        }
    }

    // ----- robustness -------------------------------------------------------------------------------

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let blocks = format!("{}return 1{}", "{".repeat(20_000), "}".repeat(20_000));
        let output = rewrite(&blocks);
        assert!(output.contains("{throw { __sandgate_return__: (1) };}"));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for code in ["\u{FEFF}", "#!/usr/bin/env node\nreturn 1", "return", "return;;", "`${", "return `${", "<!--"] {
            let _ = session_script(code);
        }
        assert_eq!(
            rewrite("#!/usr/bin/env node\nreturn 1"),
            "#!/usr/bin/env node\nthrow { __sandgate_return__: (1) };"
        );
    }
}
