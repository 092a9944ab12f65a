//! The `sandgate_v1` host ABI (documented in the QuickJS guest's crate docs), and the
//! few helpers both guests build on it: reading the request, reporting the outcome,
//! starting host calls and waiting for their replies.

mod host {
    #[link(wasm_import_module = "sandgate_v1")]
    extern "C" {
        pub fn request_len(which: u32) -> i32;
        pub fn request_read(which: u32, ptr: *mut u8, len: u32) -> i32;
        pub fn max_result() -> i32;
        pub fn log(level: u32, ptr: *const u8, len: u32);
        pub fn call(name_ptr: *const u8, name_len: u32, args_ptr: *const u8, args_len: u32) -> i32;
        pub fn wait() -> i64;
        pub fn reply_read(id: u32, ptr: *mut u8, len: u32) -> i32;
        pub fn source_ready();
        pub fn finish(status: u32, ptr: *const u8, len: u32);
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn random_get(buf: *mut u8, len: usize) -> u16;
    }
}

/// Request parts (see `request_len`).
pub const CODE: u32 = 0;
pub const INPUT: u32 = 1;
pub const LANGUAGE: u32 = 2;
pub const MODE: u32 = 3;

/// Request part `which` as text (lossy UTF-8).
pub fn request(which: u32) -> String {
    // SAFETY: the host writes at most `len` bytes into the buffer we own.
    unsafe {
        let len = host::request_len(which).max(0) as usize;
        let mut buf = vec![0u8; len];
        let written = host::request_read(which, buf.as_mut_ptr(), len as u32).max(0) as usize;
        buf.truncate(written);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The largest result, in bytes, the host accepts.
pub fn max_result() -> i32 {
    // SAFETY: a plain query with no memory arguments.
    unsafe { host::max_result() }.max(0)
}

/// One console line at `level` (0 log, 1 info, 2 warn, 3 error).
pub fn log(level: u32, line: &str) {
    // SAFETY: `line` is live for the duration of the call.
    unsafe { host::log(level, line.as_ptr(), line.len() as u32) }
}

/// Starts host call `name` with JSON `args`: its id (> 0), or a negative code (-1: the
/// call limit is reached).
pub fn call(name: &str, args: &str) -> i32 {
    // SAFETY: both slices are live for the duration of the call.
    unsafe { host::call(name.as_ptr(), name.len() as u32, args.as_ptr(), args.len() as u32) }
}

/// What waiting for the host gives.
pub enum Wait {
    /// A host call completed: its id and reply (`{"ok": value}` or
    /// `{"error": {"kind", "message"}}`).
    Reply(u32, String),
    /// No call is in flight: nothing will ever complete.
    Idle,
    /// Every call in flight is held outside the execution (a person's approval):
    /// the guest returns from the export it is in, keeping everything it needs to go
    /// on in its memory, and the host calls `resume` once a reply can come.
    Pause,
}

/// Blocks until a host call completes, or says none will (see [`Wait`]).
pub fn wait() -> Wait {
    // SAFETY: a plain query with no memory arguments.
    let ready = unsafe { host::wait() };
    match ready {
        -2 => return Wait::Pause,
        r if r < 0 => return Wait::Idle,
        _ => {}
    }
    let id = (ready >> 32) as u32;
    let len = (ready & 0xffff_ffff) as usize;
    let mut buf = vec![0u8; len];
    // SAFETY: the host writes at most `len` bytes into the buffer we own.
    let written = unsafe { host::reply_read(id, buf.as_mut_ptr(), len as u32) }.max(0) as usize;
    buf.truncate(written);
    Wait::Reply(id, String::from_utf8_lossy(&buf).into_owned())
}

/// Ends the preparation phase (see the host's docs).
pub fn source_ready() {
    // SAFETY: a plain notification with no memory arguments.
    unsafe { host::source_ready() };
}

/// Reports the outcome: status 0 with the result as JSON, 1 with an error object, 2
/// with a message when the guest runtime itself failed.
pub fn finish(status: u32, text: &str) {
    // SAFETY: the host only reads `text.len()` bytes from a live slice.
    unsafe { host::finish(status, text.as_ptr(), text.len() as u32) }
}

/// Reports an error of `kind` the guest itself found (status 1).
pub fn fail(kind: &str, message: &str, position: Option<(u32, u32)>) {
    let mut text = format!("{{\"kind\":{},\"message\":{}", json_string(kind), json_string(message));
    if let Some((line, column)) = position {
        text.push_str(&format!(",\"line\":{line},\"column\":{column}"));
    }
    text.push('}');
    finish(1, &text);
}

/// Reports a fault of the guest runtime itself (status 2): the host's `internal`.
pub fn fault(message: &str) {
    finish(2, message);
}

/// Eight bytes of OS randomness.
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: `seed` is a live 8-byte buffer.
    unsafe { host::random_get(seed.as_mut_ptr(), seed.len()) };
    u64::from_le_bytes(seed)
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
