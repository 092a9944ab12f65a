// The JavaScript half of the guest. It runs once, when the guest is pre-initialised,
// and receives the native doors from Rust as arguments; nothing it receives stays on
// the global object, so agent code reaches the host only through what is defined here.
(function (hostCall, hostLog, hostRandom) {
  "use strict";
  const g = globalThis;
  const indirectEval = g.eval;
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const pending = new Map();

  // Prefixes the code is wrapped in; columns on the first line are reported relative
  // to the code as submitted.
  const EXPR_PREFIX = "(async function(){return (";
  const BODY_PREFIX = "(async function(){";

  // The wrapper prefix of the code now running (see `compile`).
  let currentPrefix = BODY_PREFIX;

  // Keeps the frames of the submitted code, with first-line columns made relative to
  // the code as submitted; prelude frames are not the caller's business.
  function cleanStack(stack) {
    return stack
      .split("\n")
      .filter((line) => line.includes("<input>"))
      .map((line) =>
        line.replace(/<input>:(\d+):(\d+)/g, (_, ln, col) =>
          `<code>:${ln}:${ln === "1" ? Math.max(1, Number(col) - currentPrefix.length) : col}`,
        ),
      )
      .join("\n");
  }

  function show(value) {
    if (typeof value === "string") return value;
    if (value instanceof Error) {
      const stack = typeof value.stack === "string" ? cleanStack(value.stack) : "";
      return stack ? `${value.name}: ${value.message}\n${stack}` : `${value.name}: ${value.message}`;
    }
    if (typeof value === "function") return `[Function ${value.name || "anonymous"}]`;
    if (typeof value === "bigint") return `${value}n`;
    try {
      const text = stringify(value, (_, v) => (typeof v === "bigint" ? `${v}n` : v));
      return text === undefined ? String(value) : text;
    } catch (_) {
      return String(value);
    }
  }

  const logger = (level) => (...args) => hostLog(level, args.map(show).join(" "));
  g.console = Object.freeze({
    log: logger(0),
    info: logger(1),
    warn: logger(2),
    error: logger(3),
    debug: logger(0),
  });

  Math.random = hostRandom;

  function call(name, args) {
    return new Promise((resolve, reject) => {
      const text = stringify(args === undefined ? null : args);
      const id = hostCall(name, text === undefined ? "null" : text);
      pending.set(id, [resolve, reject]);
    });
  }

  // `tools.<server>.<tool>(args)`: any name can be written; the host decides whether it
  // exists and whether this principal may call it.
  const noThen = (name) => typeof name !== "string" || name === "then";
  g.tools = new Proxy(Object.freeze({}), {
    get(_, server) {
      if (noThen(server)) return undefined;
      return new Proxy(Object.freeze({}), {
        get(_, tool) {
          if (noThen(tool)) return undefined;
          return (args) => call(`tools.${server}.${tool}`, args === undefined ? {} : args);
        },
      });
    },
  });
  g.model = Object.freeze({ chat: (request) => call("model.chat", request) });

  function complete(id, envelope) {
    const entry = pending.get(id);
    if (entry === undefined) return;
    pending.delete(id);
    const reply = parse(envelope);
    if (reply.error === undefined) {
      entry[0](reply.ok);
    } else {
      const error = new Error(reply.error.message);
      error.kind = reply.error.kind;
      entry[1](error);
    }
  }

  function position(error, prefix) {
    const stack = typeof error.stack === "string" ? error.stack : "";
    const m = /<input>:(\d+):(\d+)/.exec(stack);
    if (!m) return {};
    const line = Number(m[1]);
    let column = Number(m[2]);
    if (line === 1) column = Math.max(1, column - prefix.length);
    return { line, column };
  }

  function failure(kind, error, prefix) {
    if (error !== null && typeof error === "object") {
      const message = error.message !== undefined ? String(error.message) : show(error);
      const out = { kind, message, name: error.name !== undefined ? String(error.name) : undefined };
      Object.assign(out, position(error, prefix));
      if (kind !== "syntax" && typeof error.stack === "string") {
        const stack = cleanStack(error.stack);
        if (stack.length > 0) out.stack = stack;
      }
      if (typeof error.kind === "string") out.kind = error.kind;
      return [false, stringify(out)];
    }
    return [false, stringify({ kind, message: `uncaught: ${show(error)}` })];
  }

  // Compiles `code` as a single expression if it is one (its value is the result; a
  // function value is invoked), else as the body of an async function.
  // Code that opens with a statement keyword cannot be a single expression.
  const STATEMENT = /^\s*(?:return|const|let|var|if|for|while|do|try|throw|switch|class|import|export)\b/;

  function compile(code) {
    if (STATEMENT.test(code)) {
      currentPrefix = BODY_PREFIX;
      return [indirectEval(BODY_PREFIX + code + "\n})"), BODY_PREFIX];
    }
    // The failed attempt when the code is not an expression should cost only the
    // parse, not a stack trace.
    const traceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      currentPrefix = EXPR_PREFIX;
      return [indirectEval(EXPR_PREFIX + code + "\n)})"), EXPR_PREFIX];
    } catch (_) {
      currentPrefix = BODY_PREFIX;
    } finally {
      Error.stackTraceLimit = traceLimit;
    }
    return [indirectEval(BODY_PREFIX + code + "\n})"), BODY_PREFIX];
  }

  async function run(code, inputJson, maxResultBytes) {
    g.input = inputJson.length === 0 ? null : parse(inputJson);
    let fn, prefix;
    try {
      [fn, prefix] = compile(code);
    } catch (error) {
      return failure(error instanceof SyntaxError ? "syntax" : "exception", error, BODY_PREFIX);
    }
    let value;
    try {
      value = await fn();
      if (typeof value === "function") value = await value();
    } catch (error) {
      return failure("exception", error, prefix);
    }
    if (typeof value === "string" && value.length > maxResultBytes) {
      return [false, stringify({ kind: "output_limit", message: `result is larger than the ${maxResultBytes}-byte limit` })];
    }
    let text;
    try {
      text = stringify(value === undefined ? null : value);
    } catch (error) {
      return [false, stringify({ kind: "exception", message: `result is not JSON-serialisable: ${error.message}` })];
    }
    return [true, text === undefined ? "null" : text];
  }

  return [run, complete];
});
