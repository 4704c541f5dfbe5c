//! A real PostgreSQL for tests: [`database`] gives each test a fresh, empty database of its
//! own, dropped (`DROP DATABASE ... WITH (FORCE)`) when its [`TestDatabase`] is dropped.
//!
//! Where the databases live: when `AQ_TEST_POSTGRES` names a running server (an admin URL,
//! `postgres://USER@HOST:PORT/DB`, with the password in `AQ_TEST_POSTGRES_PASSWORD`), on it:
//! `scripts/test` starts one for the whole run, so that a test only creates a database.
//! Otherwise this process starts a private server on first use: `initdb` into a temporary
//! directory, password authentication (scram-sha-256), `postgres` listening on 127.0.0.1 on a
//! free port with its unix socket inside that directory, run as an unprivileged user when the
//! tests run as root (PostgreSQL refuses root). That server is this process's child and dies
//! with it: stopped (immediate shutdown) and its directory removed at exit, and told by the
//! kernel to stop (`PR_SET_PDEATHSIG`) should the process be killed; the directory and
//! password files a killed process left are removed by the next process that asks for a
//! database.
//!
//! The binaries come from PATH, then `/usr/lib/postgresql/*/bin` (highest version). Without
//! them a test fails saying what to install: a test on PostgreSQL never passes without it.
//! Administration (CREATE and DROP DATABASE) goes through `tokio-postgres` on a runtime of its
//! own in a thread of its own, so that [`database`] and the drop work inside or outside an
//! async test.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;

/// The user of a private server (its superuser), and of every database on it.
const PRIVATE_USER: &str = "aqueduct";
/// How long a private server may take to accept connections before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of private servers' directories in the temporary directory: `aq-postgres-PID-*`.
const DIR_PREFIX: &str = "aq-postgres-";
/// The prefix of the databases' password files there: `aq-pgpass-PID-*`.
const PASSWORD_PREFIX: &str = "aq-pgpass-";

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "PostgreSQL's server programs (initdb, postgres) are neither on PATH nor in \
         /usr/lib/postgresql/*/bin; install them (as root: `apt-get install -y postgresql`), or \
         point AQ_TEST_POSTGRES at a running server's admin URL (password in \
         AQ_TEST_POSTGRES_PASSWORD)"
    )]
    Missing,
    #[error("AQ_TEST_POSTGRES={url:?} is not usable: {why}")]
    BadAdminUrl { url: String, why: String },
    #[error("AQ_TEST_POSTGRES is set but AQ_TEST_POSTGRES_PASSWORD is not: set it to the server's password")]
    NoPassword,
    #[error("the test PostgreSQL server's directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("running {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("initdb into {dir} failed ({status}):\n{output}")]
    Initdb { dir: PathBuf, status: String, output: String },
    #[error("the private PostgreSQL server in {dir} did not start: {why}; its log ends:\n{log}")]
    Start { dir: PathBuf, why: String, log: String },
    #[error("cannot make a runtime for PostgreSQL's client: {0}")]
    Runtime(io::Error),
    #[error("{what} on the test PostgreSQL server at {server}: {source}")]
    Sql { what: String, server: String, source: tokio_postgres::Error },
}

/// One test's database, dropped with `DROP DATABASE ... WITH (FORCE)` (closing any connection
/// still open to it) when this value is dropped.
pub struct TestDatabase {
    admin: &'static Admin,
    name: String,
    password_file: tempfile::NamedTempFile,
}

impl TestDatabase {
    /// `postgres://USER@127.0.0.1:PORT/NAME`: no password in it (see [`Self::password`]).
    pub fn url(&self) -> String {
        format!("postgres://{}@{}:{}/{}", self.admin.user, self.admin.host, self.admin.port, self.name)
    }

    pub fn password(&self) -> &str {
        &self.admin.password
    }

    /// A file (mode 0600) that holds the password and nothing else, removed with the database.
    pub fn password_file(&self) -> &Path {
        self.password_file.path()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to this database, its connection task spawned on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.admin.config(&self.name).connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote(&self.name));
        if let Err(e) = self.admin.execute(&sql, "dropping the test database") {
            eprintln!("left database {} behind: {e}", self.name);
        }
    }
}

/// A fresh, empty database for one test. Panics with what is missing and how to get it when
/// no PostgreSQL can be had (see [`try_database`]).
pub fn database() -> TestDatabase {
    try_database().unwrap_or_else(|e| panic!("no PostgreSQL for this test: {e}"))
}

/// A fresh, empty database for one test, on the server of `AQ_TEST_POSTGRES` or on this
/// process's private server (started on first use).
pub fn try_database() -> Result<TestDatabase, PostgresError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let admin = server()?;
    let name =
        format!("aq_test_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), &random_hex()[..8]);
    let password_file = write_password_file(&admin.password)?;
    admin.execute(&format!("CREATE DATABASE {}", quote(&name)), "creating a test database")?;
    Ok(TestDatabase { admin, name, password_file })
}

/// How long this process's private server took to start (initdb included); `None` when the
/// databases live on the server of `AQ_TEST_POSTGRES` or none was needed yet.
pub fn private_server_start_time() -> Option<Duration> {
    let server = *SERVER.lock().unwrap_or_else(|e| e.into_inner());
    server.and_then(|admin| admin.started_in)
}

/// Where a server is reached as its superuser.
#[derive(Debug)]
struct Admin {
    host: String,
    port: u16,
    user: String,
    password: String,
    /// The database the administration connects to (`postgres`).
    dbname: String,
    /// For a private server: how long it took to start.
    started_in: Option<Duration>,
}

impl Admin {
    fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Runs `sql` on the admin database, on a runtime of its own in a thread of its own (so
    /// that it works from a drop inside an async test as well as from plain code).
    fn execute(&self, sql: &str, what: &str) -> Result<(), PostgresError> {
        let config = self.config(&self.dbname);
        let run = || -> io::Result<Result<(), tokio_postgres::Error>> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(async {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                let connection = tokio::spawn(connection);
                let result = client.batch_execute(sql).await;
                drop(client);
                let _ = connection.await;
                result
            }))
        };
        let result = std::thread::scope(|s| s.spawn(run).join())
            .unwrap_or_else(|_| panic!("the PostgreSQL administration thread panicked while {what}"));
        result.map_err(PostgresError::Runtime)?.map_err(|source| PostgresError::Sql {
            what: what.to_string(),
            server: format!("{}:{}", self.host, self.port),
            source,
        })
    }
}

/// The server of this process: the shared one of `AQ_TEST_POSTGRES`, or a private one started
/// now. A failed start is tried again by the next caller.
static SERVER: Mutex<Option<&'static Admin>> = Mutex::new(None);

fn server() -> Result<&'static Admin, PostgresError> {
    let mut server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(admin) = *server {
        return Ok(admin);
    }
    sweep_stale(&std::env::temp_dir());
    let admin = match std::env::var("AQ_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => shared(&url, std::env::var("AQ_TEST_POSTGRES_PASSWORD").ok())?,
        _ => start_private()?,
    };
    let admin: &'static Admin = Box::leak(Box::new(admin));
    *server = Some(admin);
    Ok(admin)
}

/// The server of `AQ_TEST_POSTGRES` (its admin URL, `url`) and `AQ_TEST_POSTGRES_PASSWORD`.
fn shared(url: &str, password: Option<String>) -> Result<Admin, PostgresError> {
    let bad = |why: &str| PostgresError::BadAdminUrl { url: url.to_string(), why: why.to_string() };
    let config = tokio_postgres::Config::from_str(url).map_err(|e| bad(&e.to_string()))?;
    if config.get_password().is_some() {
        return Err(bad("it holds a password: give it in AQ_TEST_POSTGRES_PASSWORD instead"));
    }
    let host = match config.get_hosts() {
        [Host::Tcp(host)] => host.clone(),
        _ => return Err(bad("name exactly one TCP host (postgres://USER@HOST:PORT/DB)")),
    };
    let port = match config.get_ports() {
        [] => 5432,
        [port] => *port,
        _ => return Err(bad("name one port")),
    };
    let user = config.get_user().ok_or_else(|| bad("name the admin user (postgres://USER@HOST:PORT/DB)"))?;
    let password = password.ok_or(PostgresError::NoPassword)?;
    Ok(Admin {
        host,
        port,
        user: user.to_string(),
        password,
        dbname: config.get_dbname().unwrap_or("postgres").to_string(),
        started_in: None,
    })
}

/// A private server's process and directory, for the stop at exit.
struct Running {
    pid: libc::pid_t,
    dir: PathBuf,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// Starts a private server for this process (see the module's comment).
fn start_private() -> Result<Admin, PostgresError> {
    let started = Instant::now();
    let bin = binaries()?;
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{}", std::process::id(), &random_hex()[..8]));
    let dir_err = |source| PostgresError::Dir { path: dir.clone(), source };
    std::fs::create_dir(&dir).map_err(dir_err)?;
    let result = start_in(&bin, &dir, started);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn start_in(bin: &Path, dir: &Path, started: Instant) -> Result<Admin, PostgresError> {
    let dir_err = |source| PostgresError::Dir { path: dir.to_owned(), source };
    let owner = unprivileged_user();
    let password = random_hex();
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n")).map_err(dir_err)?;
    if let Some((uid, gid)) = owner {
        for path in [dir, &pwfile] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(dir_err)?;
        }
    }
    let data = dir.join("data");
    let mut initdb = as_owner(Command::new(bin.join("initdb")), owner, dir);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", PRIVATE_USER, "-A", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"])
        .arg(format!("--pwfile={}", pwfile.display()));
    let output = initdb.output().map_err(|source| PostgresError::Spawn { program: bin.join("initdb"), source })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(PostgresError::Initdb { dir: data, status: output.status.to_string(), output: text });
    }
    let _ = std::fs::remove_file(&pwfile);
    // A free port can be taken by another process before the server binds it: try again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = free_port().map_err(dir_err)?;
        let admin = Admin {
            host: "127.0.0.1".to_string(),
            port,
            user: PRIVATE_USER.to_string(),
            password: password.clone(),
            dbname: "postgres".to_string(),
            started_in: None,
        };
        match run_postgres(bin, dir, owner, &admin) {
            Ok(()) => return Ok(Admin { started_in: Some(started.elapsed()), ..admin }),
            Err(why) if why.contains("could not bind") && attempts < 3 => continue,
            Err(why) => {
                let log = log_tail(&dir.join("postgres.log"));
                return Err(PostgresError::Start { dir: dir.to_owned(), why, log });
            }
        }
    }
}

/// Starts `postgres` on `admin.port` and waits until it accepts `admin`'s connections; the
/// error says why not (the log says more).
fn run_postgres(bin: &Path, dir: &Path, owner: Option<(u32, u32)>, admin: &Admin) -> Result<(), String> {
    let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
    let mut command = as_owner(Command::new(bin.join("postgres")), owner, dir);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &admin.port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "shared_buffers=32MB"])
        // A test's data need not survive a crash of the machine.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe. It runs after the switch of user (which would clear
    // it): the server gets SIGQUIT (immediate shutdown) when the thread that started it ends.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pid = spawn_kept(command)?;
    register_stop(Running { pid, dir: dir.to_owned() });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: a plain waitpid on our own child, without blocking.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            let bind = if log.contains("could not bind") { ": could not bind its port" } else { "" };
            return Err(format!("postgres exited (wait status {status:#x}){bind}"));
        }
        match admin.execute("SELECT 1", "waiting for the server") {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                kill_running();
                return Err(format!("not accepting connections after {START_TIMEOUT:?}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Spawns `command` from a thread that lives as long as the process, so that the parent-death
/// signal comes at the process's end and not at the end of the test's thread; returns the pid.
fn spawn_kept(mut command: Command) -> Result<libc::pid_t, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("aq-postgres".to_string())
        .spawn(move || {
            let child = command.spawn();
            let pid = child.as_ref().map(|c| c.id() as libc::pid_t).map_err(|e| e.to_string());
            let _ = tx.send(pid);
            // Hold the child (never waited here: the exit handler reaps it) until the end.
            let _child = child;
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?.map_err(|e| format!("cannot run postgres: {e}"))
}

fn register_stop(running: Running) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
    REGISTERED.get_or_init(|| {
        extern "C" fn at_exit() {
            stop_running();
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(at_exit) };
    });
}

/// Stops the private server and removes its directory.
fn stop_running() {
    if let Some(running) = kill_running() {
        let _ = std::fs::remove_dir_all(&running.dir);
    }
}

/// Stops the private server (immediate shutdown: it ends its backends and exits) and waits
/// for it.
fn kill_running() -> Option<Running> {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(running.pid, libc::SIGQUIT);
        let mut status = 0;
        libc::waitpid(running.pid, &mut status, 0);
    }
    Some(running)
}

/// Runs `command` in `dir` as `owner` (uid, gid), if any.
fn as_owner(mut command: Command, owner: Option<(u32, u32)>, dir: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command.current_dir(dir).env_remove("PGDATA").env("LC_ALL", "C");
    command
}

/// The user a private server runs as when the tests run as root: `postgres` (made by Debian's
/// package) or else `nobody`. `None` when not root: the server runs as the tests' user.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    ["postgres", "nobody"].into_iter().find_map(|name| {
        let name = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam reads the user database; the fields are copied at once (a test
        // process starts its server under the SERVER lock, so no other call races this one).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        // SAFETY: a non-null result points at a valid passwd entry.
        (!pw.is_null()).then(|| unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    })
}

/// The directory of `initdb` and `postgres`: PATH first (a symbolic link followed to the real
/// directory), then `/usr/lib/postgresql/*/bin`, the highest version.
fn binaries() -> Result<PathBuf, PostgresError> {
    find_binaries(std::env::var_os("PATH").as_deref(), Path::new("/usr/lib/postgresql"))
}

fn find_binaries(path: Option<&std::ffi::OsStr>, versions_root: &Path) -> Result<PathBuf, PostgresError> {
    let complete = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let on_path = path
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|dir| std::fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| complete(dir));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versions_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or(PostgresError::Missing)
}

/// Removes the directories of private servers and the password files whose process is gone
/// (killed before its exit handler ran, or its drops).
fn sweep_stale(tmp: &Path) {
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(rest) =
            name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX).or_else(|| n.strip_prefix(PASSWORD_PREFIX)))
        else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<libc::pid_t>) else { continue };
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_password_file(password: &str) -> Result<tempfile::NamedTempFile, PostgresError> {
    let mut file = tempfile::Builder::new()
        .prefix(&format!("{PASSWORD_PREFIX}{}-", std::process::id()))
        .tempfile()
        .map_err(|source| PostgresError::Dir { path: std::env::temp_dir(), source })?;
    io::Write::write_all(&mut file, password.as_bytes())
        .map_err(|source| PostgresError::Dir { path: file.path().to_owned(), source })?;
    Ok(file)
}

/// 32 hex digits from the system's random source.
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (nanos.as_nanos() ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An SQL identifier in double quotes.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The last lines of a log file, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path, programs: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for p in programs {
            std::fs::write(dir.join(p), "").unwrap();
        }
    }

    #[test]
    fn binaries_come_from_path_then_the_highest_version() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        for version in ["9", "16", "15"] {
            install(&lib.join(version).join("bin"), &["initdb", "postgres"]);
        }
        install(&lib.join("17/bin"), &["initdb"]); // no server: not a complete install
        install(&lib.join("dev/bin"), &["initdb", "postgres"]); // not a version
        let empty = root.path().join("empty");
        install(&empty, &[]);
        let path = std::env::join_paths([&empty]).unwrap();
        assert_eq!(find_binaries(Some(&path), &lib).unwrap(), lib.join("16/bin"));

        // On PATH through a symbolic link (as /usr/local/bin/initdb): the real directory.
        let real = root.path().join("real");
        install(&real, &["initdb", "postgres"]);
        let links = root.path().join("links");
        install(&links, &[]);
        std::os::unix::fs::symlink(real.join("initdb"), links.join("initdb")).unwrap();
        let path = std::env::join_paths([&empty, &links]).unwrap();
        let found = find_binaries(Some(&path), &lib).unwrap();
        assert_eq!(found, std::fs::canonicalize(&real).unwrap());
    }

    #[test]
    fn missing_binaries_say_what_to_install() {
        let root = tempfile::tempdir().unwrap();
        let err = find_binaries(None, &root.path().join("nothing")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("apt-get install -y postgresql"), "{text}");
        assert!(text.contains("AQ_TEST_POSTGRES"), "{text}");
    }

    #[test]
    fn a_shared_server_is_named_by_an_admin_url_without_its_password() {
        let admin = shared("postgres://admin@db.example:6543/postgres", Some("pw".into())).unwrap();
        assert_eq!((admin.host.as_str(), admin.port, admin.user.as_str()), ("db.example", 6543, "admin"));
        assert_eq!((admin.password.as_str(), admin.dbname.as_str()), ("pw", "postgres"));
        assert_eq!(shared("postgres://admin@127.0.0.1", Some("pw".into())).unwrap().port, 5432);

        let refused = [
            ("postgres://admin:secret@127.0.0.1:5432/postgres", "holds a password"),
            ("postgres://admin@%2Frun%2Fpostgresql/postgres", "TCP host"),
            ("postgres://127.0.0.1:5432/postgres", "admin user"),
            ("not a url", "not usable"),
        ];
        for (url, why) in refused {
            let err = shared(url, Some("pw".into())).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{url}: {err:?}");
        }
        let err = shared("postgres://admin@127.0.0.1/postgres", None).unwrap_err();
        assert!(err.to_string().contains("AQ_TEST_POSTGRES_PASSWORD"), "{err}");
    }
}
