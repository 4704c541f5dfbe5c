//! One SQL layer over the hub's two database engines: SQLite (embedded, one file, the default)
//! and PostgreSQL (shared by several hubs). The store's code is written once against [`Db`]
//! and [`Tx`]: statements in the SQL both engines speak, with numbered placeholders (`?1`),
//! arguments and rows as [`Value`]s.
//!
//! Every call runs in one transaction ([`Db::write`], [`Db::read`]). On PostgreSQL the
//! transactions are `SERIALIZABLE`, so that the rollout rules a call applies to what it read see
//! the same rows as they would alone, whichever hub runs the call; a transaction that the server
//! aborts for a conflict with another (SQLSTATE 40001, 40P01) is run again from the start, which
//! is why the closures are `FnMut` and do nothing but database work. SQLite has one writer at a
//! time (one connection behind a lock), which is serial by construction.
//!
//! The store's trait is synchronous (callers on the async runtime go through
//! `spawn_blocking`); the PostgreSQL engine drives tokio-postgres and its deadpool pool on a
//! small runtime of its own and waits for each statement, so it can be called from any thread
//! that is not an async task of a current-thread runtime.
//!
//! The file is some 660 lines long: the layer's one contract (values both ways on both
//! engines, transactions and their retry, placeholders, errors) with its tests beside it.

use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::StoreError;

/// An argument or a column: what both engines store (integers, text, bytes, NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

/// Counts and sizes are kept as SQL integers (`i64`): they never come near 2^63.
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The arguments of a statement: `args![name, 3_i64, blob.as_slice()]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*][..] };
}
pub(crate) use args;

/// One row of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` as a `T`; `Corrupt` (naming the column) when the stored value is not one.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let value = self.0.get(i).ok_or_else(|| StoreError::Corrupt(format!("a row has no column {i}")))?;
        T::from_value(value).ok_or_else(|| StoreError::Corrupt(format!("column {i} holds {value:?}")))
    }
}

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i as u64)
    }
}

impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Where the PostgreSQL database is and how the hub signs in (the password never in the URL's
/// log lines: [`PostgresTarget`]'s `Debug` leaves it out).
#[derive(Clone)]
pub struct PostgresTarget {
    /// `postgres://USER@HOST:PORT/DATABASE` (libpq's URL form; options such as
    /// `connect_timeout` in its query).
    pub url: String,
    pub password: Option<String>,
    /// Connections in the pool.
    pub connections: usize,
    /// The CA certificates (PEM) that sign the server's: with them, every connection is TLS
    /// and the server's certificate is verified; without, none is.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &redact(&self.url))
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("connections", &self.connections)
            .field("tls", &self.ca_pem.is_some())
            .finish()
    }
}

/// The URL with any password in it replaced (for messages).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The hub's database: one of the two engines.
pub struct Db {
    engine: Engine,
}

enum Engine {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Postgres),
}

struct Postgres {
    pool: Pool,
    /// Runs the pool's connections and the statements the store waits for (always `Some`
    /// until dropped).
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Postgres {
    /// The store may go in an async task (a hub that stops): its runtime is shut down without
    /// waiting, which is allowed there, and the pool's connections end with it.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How often a transaction that PostgreSQL aborted for a conflict is run again.
const RETRIES: u32 = 20;

/// Which engine a [`Db`] is (the schema differs in its types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self { engine: Engine::Sqlite(Mutex::new(conn)) }
    }

    /// Connects to PostgreSQL (the first connection is made here, so that a wrong address or
    /// password is said at start).
    pub fn postgres(target: &PostgresTarget) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = target.url.parse().map_err(|e| {
            StoreError::Config(format!("database url {:?} is not a PostgreSQL URL: {e}", redact(&target.url)))
        })?;
        if let Some(password) = &target.password {
            config.password(password.as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hub-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(format!("starting the PostgreSQL runtime: {e}")))?;
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &target.ca_pem {
            Some(ca) => {
                let tls = super::pg_tls::RustlsConnect::new(ca)
                    .map_err(|e| StoreError::Config(format!("database.ca_file: {e}")))?;
                // A CA given: TLS is required, never fallen back from.
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Manager::from_config(config, tls, recycling)
            }
            None if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require => {
                return Err(StoreError::Config(format!(
                    "database.url {:?} asks for TLS (sslmode=require): give database.ca_file, the CA that signs the server's certificate",
                    redact(&target.url)
                )));
            }
            None => Manager::from_config(config, tokio_postgres::NoTls, recycling),
        };
        let pool = {
            let _entered = rt.enter();
            Pool::builder(manager)
                .max_size(target.connections.max(1))
                .wait_timeout(Some(Duration::from_secs(30)))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Pool(e.to_string()))?
        };
        let db = Self { engine: Engine::Postgres(Postgres { pool, rt: Some(rt) }) };
        db.read(|tx| tx.query("SELECT 1", &[]).map(|_| ()))?;
        Ok(db)
    }

    pub fn kind(&self) -> Kind {
        match self.engine {
            Engine::Sqlite(_) => Kind::Sqlite,
            Engine::Postgres(_) => Kind::Postgres,
        }
    }

    /// The SQLite connection (for what only SQLite does: its own schema steps, backups, and
    /// tests that rewind a database to an old schema); `None` on PostgreSQL.
    pub fn sqlite_conn(&self) -> Option<std::sync::MutexGuard<'_, rusqlite::Connection>> {
        match &self.engine {
            // A panic while holding the lock cannot leave SQLite inconsistent (transactions
            // roll back on drop), so a poisoned lock is still usable.
            Engine::Sqlite(conn) => Some(conn.lock().unwrap_or_else(|e| e.into_inner())),
            Engine::Postgres(_) => None,
        }
    }

    /// Runs `f` in a transaction that may write; committed if `f` returns `Ok`, rolled back
    /// otherwise.
    pub fn write<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.transaction(false, f)
    }

    /// Runs `f` in a read-only transaction (one consistent view of the database).
    pub fn read<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.transaction(true, f)
    }

    fn transaction<T>(
        &self,
        read_only: bool,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.engine {
            Engine::Sqlite(_) => {
                let mut conn = self.sqlite_conn().expect("the SQLite engine has a connection");
                let tx = conn.transaction()?;
                let out = f(&mut Tx { inner: TxInner::Sqlite(&tx) })?;
                tx.commit()?;
                Ok(out)
            }
            Engine::Postgres(pg) => {
                let mut attempt = 0;
                loop {
                    match pg.transaction(read_only, &mut f) {
                        Err(e) if is_conflict(&e) && attempt < RETRIES => {
                            attempt += 1;
                            tracing::debug!(attempt, error = %e, "a PostgreSQL transaction conflicted; running it again");
                            std::thread::sleep(Duration::from_millis(2 << attempt.min(6)));
                        }
                        out => return out,
                    }
                }
            }
        }
    }
}

impl Postgres {
    /// Waits for `fut` on the engine's runtime, from any thread that is not a task of a
    /// current-thread runtime.
    fn wait<F: Future>(&self, fut: F) -> F::Output {
        let rt = self.rt.as_ref().expect("the runtime lives as long as the engine");
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| rt.block_on(fut))
            }
            _ => rt.block_on(fut),
        }
    }

    fn transaction<T>(
        &self,
        read_only: bool,
        f: &mut impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.wait(self.pool.get()).map_err(pool_error)?;
        let tx = self.wait(
            client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                .read_only(read_only)
                .start(),
        )?;
        let out = f(&mut Tx { inner: TxInner::Postgres { tx: &tx, pg: self } })?;
        self.wait(tx.commit())?;
        Ok(out)
    }
}

/// A transaction of either engine.
pub struct Tx<'a> {
    inner: TxInner<'a>,
}

enum TxInner<'a> {
    Sqlite(&'a rusqlite::Transaction<'a>),
    Postgres { tx: &'a deadpool_postgres::Transaction<'a>, pg: &'a Postgres },
}

impl Tx<'_> {
    pub fn kind(&self) -> Kind {
        match self.inner {
            TxInner::Sqlite(_) => Kind::Sqlite,
            TxInner::Postgres { .. } => Kind::Postgres,
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        match &self.inner {
            TxInner::Sqlite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter()))? as u64)
            }
            TxInner::Postgres { tx, pg } => pg.wait(async {
                let stmt = tx.prepare_cached(&placeholders(sql)).await?;
                let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                Ok(tx.execute(&stmt, &params).await?)
            }),
        }
    }

    /// Runs a query; returns its rows.
    pub fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        match &self.inner {
            TxInner::Sqlite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    (0..columns).map(|i| r.get_ref(i).map(value_of_sqlite)).collect::<rusqlite::Result<Vec<_>>>()
                })?;
                Ok(rows.map(|r| r.map(Row)).collect::<rusqlite::Result<_>>()?)
            }
            TxInner::Postgres { tx, pg } => pg.wait(async {
                let stmt = tx.prepare_cached(&placeholders(sql)).await?;
                let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                let rows = tx.query(&stmt, &params).await?;
                rows.iter().map(row_of_postgres).collect()
            }),
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always returns one (an aggregate, `EXISTS`).
    pub fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, args)?.ok_or_else(|| StoreError::Corrupt(format!("no row from {sql:?}")))
    }

    /// Runs several statements (no arguments): schema steps.
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match &self.inner {
            TxInner::Sqlite(tx) => Ok(tx.execute_batch(sql)?),
            TxInner::Postgres { tx, pg } => Ok(pg.wait(tx.batch_execute(sql))?),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value_of_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // No column of the schema is REAL; a float read back keeps its integer part.
        ValueRef::Real(f) => Value::Int(f as i64),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// A PostgreSQL row as values, by each column's type.
fn row_of_postgres(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME || *ty == Type::BPCHAR {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            return Err(StoreError::Corrupt(format!(
                "column {:?} has type {ty}, which the store does not read (cast it to BIGINT or TEXT)",
                column.name()
            )));
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

/// Arguments take the type PostgreSQL infers for their placeholder.
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Int(i) if *ty == Type::TEXT || *ty == Type::VARCHAR => i.to_string().to_sql(ty, out),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Rewrites SQLite's numbered placeholders (`?1`) as PostgreSQL's (`$1`), outside string
/// literals and quoted names.
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            None => out.push(c),
        }
    }
    out
}

/// A pool's error: the server's own when it refused a connection (a wrong password), else
/// what the pool says (a timeout).
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
        e => StoreError::Pool(e.to_string()),
    }
}

/// What a PostgreSQL error says: the server's message (and its SQLSTATE), or the client's
/// error with its cause (a refused connection).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({}, SQLSTATE {})", db.message(), db.severity(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Whether PostgreSQL aborted a transaction for a conflict with another (it is safe and right
/// to run it again).
fn is_conflict(e: &StoreError) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(e, StoreError::Postgres(e)
        if e.code().is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED))
}

/// Whether a statement broke a unique or foreign-key constraint (on either engine).
pub fn is_constraint(e: &StoreError) -> bool {
    use tokio_postgres::error::SqlState;
    match e {
        StoreError::Db(rusqlite::Error::SqliteFailure(f, _)) => f.code == rusqlite::ErrorCode::ConstraintViolation,
        StoreError::Postgres(e) => e.code().is_some_and(|c| {
            *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::FOREIGN_KEY_VIOLATION
                || *c == SqlState::NOT_NULL_VIOLATION
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_quotes() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(placeholders("SELECT '?1', \"?2\" FROM t WHERE x = ?3"), "SELECT '?1', \"?2\" FROM t WHERE x = $3");
        assert_eq!(placeholders("SELECT 'it''s ?1' WHERE a = ?2"), "SELECT 'it''s ?1' WHERE a = $2");
        assert_eq!(placeholders("a ? b"), "a ? b");
    }

    #[test]
    fn values_read_back_as_what_they_were() {
        let row = Row(vec![Value::Int(7), Value::Null, Value::Text("x".into()), Value::Blob(vec![1])]);
        assert_eq!(row.get::<u64>(0).unwrap(), 7);
        assert!(row.get::<bool>(0).unwrap());
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<String>(2).unwrap(), "x");
        assert_eq!(row.get::<Vec<u8>>(3).unwrap(), vec![1]);
        assert!(matches!(row.get::<String>(0), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.get::<i64>(9), Err(StoreError::Corrupt(_))));
        assert!(matches!(Row(vec![Value::Int(-1)]).get::<u32>(0), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let target = PostgresTarget {
            url: "postgres://hub:secret@db:5432/aq".into(),
            password: Some("pw".into()),
            connections: 4,
            ca_pem: None,
        };
        let shown = format!("{target:?}");
        assert!(!shown.contains("secret") && !shown.contains("pw\""), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(512))]

        /// Only the `?` of a placeholder changes: the text keeps its length and every other
        /// character, and a statement with no placeholder is unchanged.
        #[test]
        fn fuzz_placeholders(sql in "[a-z ?$'\"0-9,=()]{0,64}") {
            let out = placeholders(&sql);
            prop_assert_eq!(out.chars().count(), sql.chars().count());
            for (a, b) in sql.chars().zip(out.chars()) {
                prop_assert!(a == b || (a == '?' && b == '$'));
            }
            if !sql.contains('?') {
                prop_assert_eq!(&out, &sql);
            }
        }
    }
}
