//! A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster
//! made with `initdb` in a temporary directory, listening on a free port of 127.0.0.1.
//! One cluster serves the whole test process, and each test gets a database of its
//! own. When the test process ends, a watcher started with the server stops it and
//! removes its directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::free_port;

/// The running cluster.
pub struct Cluster {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    /// Off for the tests (nothing here survives the machine anyway); on, as
    /// PostgreSQL ships, for benchmarks.
    fsync: bool,
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: `$PG_BIN`, else the newest
/// version under `/usr/lib/postgresql`.
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "the storage tests need PostgreSQL's server binaries (Debian: `apt-get install postgresql`; tests/run installs it)",
    )
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program args…`, as the `postgres` user when the tests run as root (PostgreSQL
/// refuses to run as root).
fn command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Cluster {
    fn start(fsync: bool) -> Self {
        let bin = binaries();
        let dir = std::env::temp_dir().join(format!("sandgate-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap();
            assert!(status.success(), "chown of the cluster directory failed");
        }
        let data = dir.join("data");
        let output = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "sg", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        let cluster = Self { bin, port: free_port(), dir, fsync };
        // The server runs under a watcher that stops it once this test process is gone.
        cluster.run(&format!(
            "{start} || exit 1; \
             (while [ -d /proc/{pid} ]; do sleep 1; done; '{pg_ctl}' -D '{data}' -m immediate stop; rm -rf '{dir}') \
             >/dev/null 2>&1 </dev/null & exit 0",
            start = cluster.start_command(""),
            pg_ctl = cluster.bin.join("pg_ctl").display(),
            data = data.display(),
            dir = cluster.dir.display(),
            pid = std::process::id(),
        ));
        cluster
    }

    fn start_command(&self, options: &str) -> String {
        format!(
            "'{pg_ctl}' -D '{dir}/data' -l '{dir}/log' -w -t 60 -o \"-p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
             -c max_connections=300 -c fsync={fsync} {options}\" start >/dev/null",
            pg_ctl = self.bin.join("pg_ctl").display(),
            dir = self.dir.display(),
            port = self.port,
            fsync = if self.fsync { "on" } else { "off" },
        )
    }

    fn run(&self, script: &str) {
        let output = command(Path::new("/bin/sh")).args(["-c", script]).output().unwrap();
        assert!(
            output.status.success(),
            "`{script}` failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// A cluster of its own, for a test that stops and starts it.
    pub fn own() -> Self {
        Self::start(false)
    }

    /// A cluster of its own with PostgreSQL's shipped durability (fsync and
    /// synchronous commit on), for benchmarks (`benches/store.rs`).
    #[allow(dead_code)]
    pub fn durable() -> Self {
        Self::start(true)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: connections are cut).
    pub fn stop(&self) {
        self.run(&format!(
            "'{}' -D '{}/data' -m immediate -w stop >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.dir.display()
        ));
    }

    /// Starts the server again after [`Cluster::stop`], on the same port.
    pub fn restart(&self) {
        self.run(&self.start_command(""));
    }

    /// Restarts the server serving TLS only, with `cert` and `key` (PEM files).
    pub fn restart_with_tls(&self, cert: &Path, key: &Path) {
        self.stop();
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(from, self.dir.join(to)).unwrap();
            if is_root() {
                let status = Command::new("chown").arg("postgres:postgres").arg(self.dir.join(to)).status().unwrap();
                assert!(status.success());
            }
        }
        // Refuse connections that do not use TLS.
        let hba = self.dir.join("data/pg_hba.conf");
        std::fs::write(&hba, "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        self.run(&format!(
            "chmod 600 '{dir}/server.key' && {start}",
            dir = self.dir.display(),
            start = self.start_command(&format!(
                "-c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
                dir = self.dir.display()
            ))
        ));
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://sg@127.0.0.1:{}/{name}", self.port)
    }
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(false))
}

/// A new, empty database on the cluster: its URL.
pub async fn database() -> String {
    let cluster = cluster();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let (client, connection) =
        tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    let task = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    drop(client);
    let _ = task.await;
    cluster.url(&name)
}
