// The JavaScript half of the guest. It runs once, when the guest is pre-initialised,
// and receives the native doors from Rust as arguments; nothing it receives stays on
// the global object, so agent code reaches the host only through what is defined here.
//
// Agent code runs in the same realm and may replace any global or prototype method
// before this code runs again (to report an outcome or deliver a reply). So every
// built-in used after agent code has started is captured here, at initialisation,
// and called through `apply`; objects handed to JSON.stringify have no prototype
// (no inherited `toJSON`); and every read of an agent value is guarded, because a
// getter or a Proxy can throw. Nothing agent code does can make an outcome claim a
// kind the host reserves, or make reporting it fail.
(function (hostCall, hostLog, hostRandom) {
  "use strict";
  const g = globalThis;
  const indirectEval = g.eval;
  const apply = Reflect.apply;
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const create = Object.create;
  const freeze = Object.freeze;
  const defineProperty = Object.defineProperty;
  const getPrototypeOf = Object.getPrototypeOf;
  const setPrototypeOf = Object.setPrototypeOf;
  const hasOwn = Object.hasOwn;
  const syntaxErrorPrototype = SyntaxError.prototype;
  const NewError = Error;
  const NewPromise = Promise;
  const NewProxy = Proxy;
  const toStr = String;
  const isSafeInteger = Number.isSafeInteger;
  const weakMapGet = WeakMap.prototype.get;
  const weakMapSet = WeakMap.prototype.set;
  const regexExec = RegExp.prototype.exec;
  const strReplace = String.prototype.replace;
  const strSplit = String.prototype.split;
  const strIncludes = String.prototype.includes;
  const strWellFormed = String.prototype.toWellFormed;
  const arrayJoin = Array.prototype.join;
  const arrayPush = Array.prototype.push;
  const errorStackLimit = () => NewError.stackTraceLimit;
  const setErrorStackLimit = (n) => {
    NewError.stackTraceLimit = n;
  };

  // Calls in flight, by id: `[resolve, reject]`. A plain object with no prototype, so
  // nothing agent code does to Map or Object can reach it.
  const pending = create(null);
  // Errors this prelude made from host replies, and the kind the host gave each. An
  // error's own `kind` property is only for the code to read; the outcome's kind
  // comes from here, so a thrown `{kind: "internal"}` is just an exception.
  const hostKinds = new WeakMap();

  // Prefixes the code is wrapped in; columns on the first line are reported relative
  // to the code as submitted.
  const EXPR_PREFIX = "(async function(){return (";
  const BODY_PREFIX = "(async function(){";
  const INPUT_POSITION = /<input>:(\d+):(\d+)/;
  const INPUT_POSITIONS = /<input>:(\d+):(\d+)/g;
  const FILE_CODE = /^([A-Z]+):/;
  // The largest line or column reported; anything else is a forged or broken position.
  const MAX_POSITION = 0x7fffffff;

  // The wrapper prefix of the code now running (see `compile`).
  let currentPrefix = BODY_PREFIX;

  // A string with every lone surrogate replaced by U+FFFD, so it is valid UTF-8.
  function wellFormed(text) {
    return apply(strWellFormed, text, []);
  }

  // `String(value)`, or a placeholder when the value refuses to be a string.
  function safeString(value) {
    try {
      return toStr(value);
    } catch (_) {
      return "[value that cannot be shown]";
    }
  }

  // Keeps the frames of the submitted code, with first-line columns made relative to
  // the code as submitted; prelude frames are not the caller's business.
  function cleanStack(stack) {
    const lines = apply(strSplit, stack, ["\n"]);
    const kept = [];
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (typeof line !== "string" || !apply(strIncludes, line, ["<input>"])) continue;
      apply(arrayPush, kept, [
        apply(strReplace, line, [
          INPUT_POSITIONS,
          (_, ln, col) => `<code>:${ln}:${ln === "1" ? clampColumn(col - currentPrefix.length) : col}`,
        ]),
      ]);
    }
    return apply(arrayJoin, kept, ["\n"]);
  }

  function clampColumn(column) {
    return column < 1 ? 1 : column;
  }

  function show(value) {
    if (typeof value === "string") return value;
    if (value instanceof NewError) {
      const stack = typeof value.stack === "string" ? cleanStack(value.stack) : "";
      return stack ? `${value.name}: ${value.message}\n${stack}` : `${value.name}: ${value.message}`;
    }
    if (typeof value === "function") return `[Function ${value.name || "anonymous"}]`;
    if (typeof value === "bigint") return `${value}n`;
    try {
      const text = stringify(value, (_, v) => (typeof v === "bigint" ? `${v}n` : v));
      return text === undefined ? toStr(value) : text;
    } catch (_) {
      return toStr(value);
    }
  }

  function join(values) {
    let line = "";
    for (let i = 0; i < values.length; i++) {
      line += (i === 0 ? "" : " ") + show(values[i]);
    }
    return wellFormed(line);
  }

  const logger = (level) => (...args) => hostLog(level, join(args));
  g.console = freeze({
    log: logger(0),
    info: logger(1),
    warn: logger(2),
    error: logger(3),
    debug: logger(0),
  });

  Math.random = hostRandom;

  // Starts host call `name` with `args` as JSON: a promise of its reply. `name` is
  // well-formed already: every caller passes a literal or a name made so.
  function call(name, args) {
    return new NewPromise((resolve, reject) => {
      const text = stringify(args === undefined ? null : args);
      const id = hostCall(name, text === undefined ? "null" : text);
      pending[id] = [resolve, reject];
    });
  }

  // The same with no arguments: `{}`, without stringifying it (about 8,000 fuel).
  function callWithout(name) {
    return new NewPromise((resolve, reject) => {
      pending[hostCall(name, "{}")] = [resolve, reject];
    });
  }

  // `tools.<server>.<tool>(args)`: any name can be written; the host decides whether it
  // exists and whether this principal may call it.
  // `tools` and each server's object are ordinary objects whose prototype is a Proxy:
  // a name read for the first time misses, reaches the Proxy, which makes its value
  // (a server's object, a tool's function) and defines it on the object, read-only;
  // every later read finds it there without a trap. A loop of calls then costs only
  // the calls.
  const noThen = (name) => typeof name !== "string" || name === "then";
  function lazyNames(make) {
    const names = create(null);
    const maker = create(null);
    maker.get = (_, name, receiver) => {
      if (noThen(name)) return undefined;
      const value = make(name);
      if (receiver === names) {
        const descriptor = create(null);
        descriptor.value = value;
        descriptor.enumerable = true;
        defineProperty(names, name, descriptor);
      }
      return value;
    };
    setPrototypeOf(names, new NewProxy(freeze(create(null)), maker));
    return names;
  }
  g.tools = lazyNames((server) =>
    lazyNames((tool) => {
      const name = wellFormed(`tools.${server}.${tool}`);
      return (args) => (args === undefined ? callWithout(name) : call(name, args));
    }),
  );
  g.model = freeze({ chat: (request) => call("model.chat", request) });

  // `fs`: the session's workspace and the directories policies mount, shaped like
  // `node:fs/promises`. Text is UTF-8; the encoding "base64" reads and writes bytes.
  const promiseThen = Promise.prototype.then;
  const options = (value) => (value !== null && typeof value === "object" ? value : create(null));
  const encodingOf = (value) => (typeof value === "string" ? value : options(value).encoding);
  const isType = (type) =>
    function () {
      return this.type === type;
    };
  const isFile = isType("file");
  const isDirectory = isType("directory");
  function statResult(stat) {
    stat.isFile = isFile;
    stat.isDirectory = isDirectory;
    return stat;
  }
  g.fs = freeze({
    readFile: (path, how) => call("fs.readFile", { path, encoding: encodingOf(how) }),
    writeFile: (path, data, how) => call("fs.writeFile", { path, data, encoding: encodingOf(how) }),
    appendFile: (path, data, how) => call("fs.writeFile", { path, data, encoding: encodingOf(how), append: true }),
    readdir: (path) => call("fs.readdir", { path: path === undefined ? "." : path }),
    stat: (path) => apply(promiseThen, call("fs.stat", { path }), [statResult]),
    exists: (path) => call("fs.exists", { path }),
    mkdir: (path, how) => call("fs.mkdir", { path, recursive: options(how).recursive === true }),
    rm: (path, how) => {
      const o = options(how);
      return call("fs.rm", { path, recursive: o.recursive === true, force: o.force === true });
    },
    rename: (from, to) => call("fs.rename", { path: from, to }),
  });

  // Delivers a host reply. The host's envelope is trusted JSON; the error made from
  // it is remembered with its kind.
  function complete(id, envelope) {
    const entry = pending[id];
    if (entry === undefined) return;
    delete pending[id];
    // Own properties only: agent code may have put getters on Object.prototype.
    const reply = parse(envelope);
    if (!hasOwn(reply, "error")) {
      entry[0](hasOwn(reply, "ok") ? reply.ok : null);
    } else {
      const kind = reply.error.kind;
      const error = new NewError(reply.error.message);
      const descriptor = create(null);
      descriptor.value = kind;
      descriptor.enumerable = true;
      defineProperty(error, "kind", descriptor);
      if (kind === "file_error") {
        // `ENOENT: ...` → `error.code === "ENOENT"`, as Node's errors have.
        const code = apply(regexExec, FILE_CODE, [reply.error.message]);
        if (code !== null) {
          const codeDescriptor = create(null);
          codeDescriptor.value = code[1];
          codeDescriptor.enumerable = true;
          defineProperty(error, "code", codeDescriptor);
        }
      }
      apply(weakMapSet, hostKinds, [error, kind]);
      entry[1](error);
    }
  }

  function position(stack, prefix) {
    const m = apply(regexExec, INPUT_POSITION, [stack]);
    if (m === null) return null;
    const line = +m[1];
    let column = +m[2];
    if (line === 1) column = clampColumn(column - prefix.length);
    if (!isSafeInteger(line) || !isSafeInteger(column) || line > MAX_POSITION || column > MAX_POSITION) return null;
    return [line, column];
  }

  // The outcome for a thrown value. Every property of the value is read under a
  // guard; if the value cannot be read at all, the outcome says so.
  function failure(kind, error, prefix) {
    try {
      return [false, describe(kind, error, prefix)];
    } catch (reason) {
      const out = create(null);
      out.kind = "exception";
      out.message = `the code threw a value that cannot be read (${safeString(reason)})`;
      return [false, stringify(out)];
    }
  }

  function describe(kind, error, prefix) {
    const out = create(null);
    out.kind = kind;
    if (error === null || (typeof error !== "object" && typeof error !== "function")) {
      out.message = wellFormed(`uncaught: ${show(error)}`);
      return stringify(out);
    }
    const hostKind = apply(weakMapGet, hostKinds, [error]);
    if (hostKind !== undefined) out.kind = hostKind;
    const message = error.message;
    out.message = wellFormed(message !== undefined ? toStr(message) : show(error));
    const name = error.name;
    if (name !== undefined) out.name = wellFormed(toStr(name));
    const stack = error.stack;
    if (typeof stack === "string") {
      const at = position(stack, prefix);
      if (at !== null) {
        out.line = at[0];
        out.column = at[1];
      }
      if (kind !== "syntax") {
        const cleaned = cleanStack(stack);
        if (cleaned.length > 0) out.stack = wellFormed(cleaned);
      }
    }
    return stringify(out);
  }

  function plainFailure(kind, message) {
    const out = create(null);
    out.kind = kind;
    out.message = message;
    return [false, stringify(out)];
  }

  // Compiles `code` as a single expression if it is one (its value is the result; a
  // function value is invoked), else as the body of an async function. Returns the
  // function and the prefix it was compiled with.
  // Code that opens with a statement keyword cannot be a single expression.
  const STATEMENT = /^\s*(?:return|const|let|var|if|for|while|do|try|throw|switch|class|import|export)\b/;

  function compile(code) {
    if (apply(regexExec, STATEMENT, [code]) !== null) {
      currentPrefix = BODY_PREFIX;
      return indirectEval(BODY_PREFIX + code + "\n})");
    }
    // The failed attempt when the code is not an expression should cost only the
    // parse, not a stack trace.
    const traceLimit = errorStackLimit();
    setErrorStackLimit(0);
    try {
      currentPrefix = EXPR_PREFIX;
      return indirectEval(EXPR_PREFIX + code + "\n)})");
    } catch (_) {
      currentPrefix = BODY_PREFIX;
    } finally {
      setErrorStackLimit(traceLimit);
    }
    return indirectEval(BODY_PREFIX + code + "\n})");
  }

  // The own property of what a session's top-level `return` throws (see
  // `sandgate_typescript::session_script`): a script cannot `return`, so it throws.
  const RETURN_KEY = "__sandgate_return__";

  // `[value]` when `error` is what a session's top-level `return value` threw, else null.
  // Code that throws such an object itself just ends with that value, as a return would.
  function returnedValue(error) {
    try {
      if (error !== null && typeof error === "object" && hasOwn(error, RETURN_KEY)) {
        return [error[RETURN_KEY]];
      }
    } catch (_) {
      // A Proxy's trap threw: not the marker.
    }
    return null;
  }

  function isSyntaxError(error) {
    return error !== null && typeof error === "object" && getPrototypeOf(error) === syntaxErrorPrototype;
  }

  // Runs the code. Settles with `[ok, json]`: the result as JSON, or an error object.
  // It never rejects, whatever the code did to the realm.
  //
  // In a session, `evalScript` (from Rust) evaluates the code as one global script
  // with top-level await: its declarations stay in the realm for the session's next
  // execution, and its completion value is the result. It starts the script at once
  // and returns a promise of `{value}`; a syntax error throws before anything runs.
  // A top-level `return value` (rewritten by the guest, since a script cannot return)
  // ends the script by throwing `{__sandgate_return__: value}`, which is the result.
  async function run(code, inputJson, maxResultBytes, evalScript) {
    g.input = inputJson.length === 0 ? null : parse(inputJson);
    let fn;
    let prefix;
    if (evalScript !== undefined) {
      currentPrefix = "";
      let completion;
      try {
        completion = evalScript(code);
      } catch (error) {
        return failure(isSyntaxError(error) ? "syntax" : "exception", error, "");
      }
      prefix = "";
      fn = async () => {
        try {
          return (await completion).value;
        } catch (error) {
          const returned = returnedValue(error);
          if (returned === null) throw error;
          return returned[0];
        }
      };
    } else {
      try {
        fn = compile(code);
      } catch (error) {
        return failure(isSyntaxError(error) ? "syntax" : "exception", error, BODY_PREFIX);
      }
      prefix = currentPrefix;
    }
    let value;
    try {
      value = await fn();
      if (typeof value === "function") value = await value();
    } catch (error) {
      return failure("exception", error, prefix);
    }
    if (typeof value === "string" && value.length > maxResultBytes) {
      return plainFailure("output_limit", `result is larger than the ${maxResultBytes}-byte limit`);
    }
    let text;
    try {
      text = stringify(value === undefined ? null : value);
    } catch (error) {
      return plainFailure("exception", `result is not JSON-serialisable: ${safeString(error && error.message)}`);
    }
    return [true, text === undefined ? "null" : text];
  }

  return [run, complete];
});
