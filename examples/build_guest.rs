//! Builds the guests and pre-initialises them into `guest/sandgate_guest.wasm`
//! (QuickJS) and `guest/sandgate_python.wasm` (Monty).
//!
//! ```text
//! cargo run --example build_guest            # rebuild and write the committed file
//! cargo run --example build_guest -- --check # rebuild; fail if it differs from the committed file
//! ```
//!
//! Steps: `cargo build --release` in `guest/` (wasm32-wasip1, see guest/.cargo/config.toml),
//! then, for each guest, Wizer: instantiate the module, call its `wizer-initialize`
//! export (which builds the QuickJS runtime, context and prelude, or warms Monty up),
//! and snapshot memory and globals into a new module. The guest sees zeroed clocks and randomness while it initialises, so
//! the same sources give the same bytes, which is what `--check` relies on.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use sandgate::sandbox::wasi::{self, Entropy, HasWasi, WasiState};
use wasmtime::{Engine, Instance, Linker, Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

struct Init(WasiState);

impl HasWasi for Init {
    fn wasi(&mut self) -> &mut WasiState {
        &mut self.0
    }
}

struct Snapshot<'a> {
    store: &'a mut Store<Init>,
    instance: Instance,
}

impl InstanceState for Snapshot<'_> {
    async fn global_get(&mut self, name: &str, _type_hint: ValType) -> SnapshotVal {
        let global = self.instance.get_global(&mut *self.store, name).expect("wizer asks only for exported globals");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("unsupported global value {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self.instance.get_memory(&mut *self.store, name).expect("wizer asks only for exported memories");
        contents(memory.data(&*self.store))
    }
}

/// The guests: crate, then the committed file.
const GUESTS: [(&str, &str); 2] =
    [("sandgate_guest", "sandgate_guest.wasm"), ("sandgate_python_guest", "sandgate_python.wasm")];

/// Builds the guests with the paths of this checkout and of the cargo home mapped to
/// fixed names, so the bytes do not depend on where the sources live.
fn build_raw_guests(guest_dir: &Path) -> anyhow::Result<()> {
    let guest = guest_dir.canonicalize()?;
    let checkout = guest.parent().unwrap_or(&guest).to_path_buf();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let rustflags = [
        "-C".to_string(),
        "link-arg=-zstack-size=2097152".to_string(),
        format!("--remap-path-prefix={}=/src", checkout.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f");
    let cflags = format!("--target=wasm32-wasi -ffile-prefix-map={}=/src", checkout.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "-p", "sandgate-guest", "-p", "sandgate-python-guest"])
        .current_dir(&guest)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("CFLAGS_wasm32_wasip1", cflags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()?;
    anyhow::ensure!(
        status.success(),
        "building the guest failed; it needs `rustup target add wasm32-wasip1` and clang, lld, llvm, \
         wasi-libc and libclang-rt-14-dev-wasm32 (see the README)"
    );
    Ok(())
}

async fn wizen(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let wizer = Wizer::new();
    let (context, instrumented) = wizer.instrument(raw).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let engine = Engine::default();
    let module = Module::new(&engine, &instrumented).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut linker: Linker<Init> = Linker::new(&engine);
    wasi::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The host ABI is not available while initialising: calling it traps.
    linker.define_unknown_imports_as_traps(&module).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut store = Store::new(&engine, Init(WasiState::new(Entropy::Fixed)));
    let instance = linker.instantiate_async(&mut store, &module).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let init =
        instance.get_typed_func::<(), ()>(&mut store, wizer.get_init_func()).map_err(|e| anyhow::anyhow!("{e}"))?;
    init.call_async(&mut store, ()).await.map_err(|e| {
        let diagnostics = String::from_utf8_lossy(&store.data().0.diagnostics).into_owned();
        anyhow::anyhow!("guest initialisation trapped: {e} {diagnostics}")
    })?;
    let snapshot = wizer
        .snapshot(&context, &mut Snapshot { store: &mut store, instance })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(snapshot)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guest_dir = root.join("guest");
    build_raw_guests(&guest_dir)?;
    let mut failed = false;
    for (name, file) in GUESTS {
        let out = guest_dir.join(file);
        let raw = std::fs::read(guest_dir.join(format!("target/wasm32-wasip1/release/{name}.wasm")))?;
        let wizened = wizen(&raw).await?;
        if check {
            let committed = std::fs::read(&out).unwrap_or_default();
            if committed != wizened {
                eprintln!(
                    "{} differs from a fresh build of guest/ ({} vs {} bytes): run `cargo run --example build_guest` and commit it",
                    out.display(),
                    committed.len(),
                    wizened.len()
                );
                failed = true;
            } else {
                eprintln!("{} matches a fresh build of guest/ ({} bytes)", out.display(), wizened.len());
            }
            continue;
        }
        std::fs::write(&out, &wizened)?;
        eprintln!("wrote {} ({} bytes; raw guest {} bytes)", out.display(), wizened.len(), raw.len());
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
