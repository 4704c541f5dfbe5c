//! The PostgreSQL of the tests (`aqueduct_testkit::postgres`): a database per test that holds
//! what is written to it, is its own, needs the password, and is gone once dropped; a private
//! server that leaves no process behind, whether its test process exits or is killed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use aqueduct_testkit::postgres::{self, TestDatabase};
use tokio_postgres::error::SqlState;

async fn connect_with(
    db: &TestDatabase,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::from_str(&db.url()).expect("the URL parses");
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn a_test_database_keeps_what_is_written_to_it() {
    let db = postgres::database();
    let url = db.url();
    let config = tokio_postgres::Config::from_str(&url).expect("the URL parses");
    assert!(url.starts_with("postgres://"), "{url}");
    assert_eq!(config.get_password(), None, "no password in {url}");
    assert_eq!(config.get_dbname(), Some(db.name()));
    assert_eq!(std::fs::read_to_string(db.password_file()).expect("the password file"), db.password());

    let client = connect_with(&db, Some(db.password())).await.expect("connect with the password");
    client.batch_execute("CREATE TABLE chunks (digest TEXT PRIMARY KEY, len BIGINT NOT NULL)").await.expect("create");
    client
        .execute("INSERT INTO chunks VALUES ($1, $2), ($3, $4)", &[&"aa", &4096_i64, &"bb", &17_i64])
        .await
        .expect("insert");
    let rows = client.query("SELECT digest, len FROM chunks ORDER BY digest", &[]).await.expect("select");
    let read: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(read, [("aa".to_string(), 4096), ("bb".to_string(), 17)]);
}

#[tokio::test]
async fn two_test_databases_are_independent() {
    let (a, b) = (postgres::database(), postgres::database());
    assert_ne!(a.name(), b.name());
    let (ca, cb) = (a.connect().await.expect("connect to a"), b.connect().await.expect("connect to b"));
    ca.batch_execute("CREATE TABLE t (x INT); INSERT INTO t VALUES (1)").await.expect("a's table");
    let err = cb.query("SELECT x FROM t", &[]).await.expect_err("b has no table t");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE), "{err}");
    cb.batch_execute("CREATE TABLE t (x INT); INSERT INTO t VALUES (2), (3)").await.expect("b's own table t");
    let count = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get::<_, i64>(0)
    };
    assert_eq!((count(ca).await, count(cb).await), (1, 2));
}

#[tokio::test]
async fn the_password_is_required() {
    let db = postgres::database();
    let Err(wrong) = connect_with(&db, Some("not-the-password")).await else { panic!("a wrong password was accepted") };
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong}");
    let Err(none) = connect_with(&db, None).await else { panic!("no password was accepted") };
    println!("without a password: {none}");
    connect_with(&db, Some(db.password())).await.expect("the right password is accepted");
}

#[tokio::test]
async fn a_dropped_test_database_is_gone_with_its_connections() {
    let (gone, witness) = (postgres::database(), postgres::database());
    let name = gone.name().to_string();
    let open = gone.connect().await.expect("connect");
    drop(gone);
    assert!(open.simple_query("SELECT 1").await.is_err(), "the connection open at the drop was closed");
    let client = witness.connect().await.expect("connect");
    let left = client.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name]).await.expect("query");
    assert_eq!(left.get::<_, i64>(0), 0, "database {name} still exists");
}

#[test]
fn creating_and_dropping_a_database_is_quick_enough_to_do_per_test() {
    let first = Instant::now();
    drop(postgres::database());
    let first = first.elapsed();
    let rounds = 10;
    let started = Instant::now();
    for _ in 0..rounds {
        drop(postgres::database());
    }
    let each = started.elapsed() / rounds;
    match postgres::private_server_start_time() {
        Some(start) => println!("private server: started in {start:.2?}; first database {first:.2?}"),
        None => println!("shared server (AQ_TEST_POSTGRES): first database {first:.2?}"),
    }
    println!("create + drop a database: {each:.2?} each ({rounds} rounds)");
}

/// Run by `a_private_server_leaves_no_process_behind` in a process of its own: starts a
/// private server, prints its postmaster's pid and directory, then returns (AQ_PG_CHILD=exit)
/// or waits to be killed (AQ_PG_CHILD=hang).
#[test]
#[ignore = "run by a_private_server_leaves_no_process_behind"]
fn private_server_child() {
    let db = postgres::database();
    let start = postgres::private_server_start_time().expect("a private server");
    let dir = std::env::temp_dir()
        .read_dir()
        .expect("the temporary directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("aq-postgres-{}-", std::process::id())))
        })
        .expect("the private server's directory");
    let pid = std::fs::read_to_string(dir.join("data/postmaster.pid")).expect("postmaster.pid");
    let pid = pid.lines().next().expect("a pid").trim().to_string();
    println!("server pid={pid} dir={} started_ms={}", dir.display(), start.as_millis());
    if std::env::var("AQ_PG_CHILD").as_deref() == Ok("hang") {
        std::thread::sleep(Duration::from_secs(600));
    }
    drop(db);
}

struct ChildServer {
    child: std::process::Child,
    pids: Vec<u32>,
    dir: PathBuf,
}

/// Runs `private_server_child` in a new process without AQ_TEST_POSTGRES, until it printed its
/// server; returns the server's processes (postmaster and its children) and directory.
fn child_server(mode: &str) -> ChildServer {
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["private_server_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env_remove("AQ_TEST_POSTGRES")
        .env_remove("AQ_TEST_POSTGRES_PASSWORD")
        .env("AQ_PG_CHILD", mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the child test");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines().map_while(Result::ok);
    // libtest prints the test's name on the same line, before the test's own output.
    let line = lines
        .find_map(|l| l.find("server pid=").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| panic!("the child printed no server line (status {:?})", child.wait()));
    // Read the rest, so that the child's last lines find a reader.
    std::thread::spawn(move || lines.for_each(drop));
    println!("{mode}: {line}");
    let field = |key: &str| line.split(' ').find_map(|f| f.strip_prefix(key)).expect("a field").to_string();
    let postmaster: u32 = field("pid=").parse().expect("a pid");
    let mut pids = vec![postmaster];
    pids.extend(children_of(postmaster));
    ChildServer { child, pids, dir: PathBuf::from(field("dir=")) }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat(*p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// A process's state and parent, from /proc/PID/stat; `None` once it is gone.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut after = text.rsplit_once(')')?.1.split_whitespace();
    Some((after.next()?.chars().next()?, after.next()?.parse().ok()?))
}

/// Waits (a minute at most) until none of `pids` runs (gone, or a zombie nobody reaped yet).
fn wait_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: Vec<u32> = pids.iter().copied().filter(|p| stat(*p).is_some_and(|(s, _)| s != 'Z')).collect();
        if running.is_empty() || Instant::now() > deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_private_server_leaves_no_process_behind() {
    // Killed: the kernel stops the server (parent-death signal); its directory stays.
    let mut killed = child_server("hang");
    assert!(killed.pids.len() > 1, "the postmaster has children: {:?}", killed.pids);
    killed.child.kill().expect("SIGKILL the child");
    killed.child.wait().expect("reap the child");
    let started = Instant::now();
    assert_eq!(wait_gone(&killed.pids), Vec::<u32>::new(), "postgres processes left after SIGKILL");
    println!("after SIGKILL of its test process, the server was gone in {:.2?}", started.elapsed());

    assert!(killed.dir.exists(), "a killed process's directory stays until the next private server");
    let killed_files = format!("aq-pgpass-{}-", killed.child.id());

    // Exits: the server is stopped and its directory removed, and the killed one's with it.
    let mut exited = child_server("exit");
    let status = exited.child.wait().expect("the child exits");
    assert!(status.success(), "{status}");
    assert_eq!(wait_gone(&exited.pids), Vec::<u32>::new(), "postgres processes left after exit");
    assert!(!exited.dir.exists(), "{} removed at exit", exited.dir.display());
    assert!(!killed.dir.exists(), "{} (left by the killed process) swept", killed.dir.display());
    let left: Vec<_> = std::env::temp_dir()
        .read_dir()
        .expect("the temporary directory")
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&killed_files)))
        .collect();
    assert!(left.is_empty(), "the killed process's password files swept: {left:?}");
}
