//! SQL sources with real clients: SQLite files (read-only, under the
//! configured directories, interrupted at the deadline) and PostgreSQL
//! (tokio-postgres, plain TCP, a read-only session, the simple query
//! protocol so that every value arrives as text).

use std::path::Path;

use crate::{ImportError, Settings, Table, config};

/// The file, if it is inside one of the allowed directories.
fn allowed(path: &str, s: &Settings) -> Result<std::path::PathBuf, ImportError> {
    let real = Path::new(path)
        .canonicalize()
        .map_err(|e| config(format!("connection_string {path}: {e}")))?;
    let inside = s.sqlite_dirs.iter().any(|d| {
        d.canonicalize()
            .map(|d| real.starts_with(d))
            .unwrap_or(false)
    });
    if !inside {
        return Err(config(format!(
            "connection_string {path} is not in a directory this server imports SQLite files from ([datasets] import_dirs)"
        )));
    }
    if !real.is_file() {
        return Err(config(format!("connection_string {path} is not a file")));
    }
    Ok(real)
}

pub(crate) async fn sqlite(
    path: &str,
    query: &str,
    s: &Settings,
    mut table: Table,
) -> Result<Table, ImportError> {
    use rusqlite::{OpenFlags, types::ValueRef};
    let file = allowed(path, s)?;
    let conn = rusqlite::Connection::open_with_flags(
        &file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| config(format!("connection_string {path}: {e}")))?;
    // The deadline interrupts a query still running when it passes.
    let interrupt = conn.get_interrupt_handle();
    struct Interrupt(rusqlite::InterruptHandle);
    impl Drop for Interrupt {
        fn drop(&mut self) {
            self.0.interrupt();
        }
    }
    let guard = Interrupt(interrupt);
    let query = query.to_owned();
    let work = tokio::task::spawn_blocking(move || -> Result<Table, ImportError> {
        let q = |e: rusqlite::Error| ImportError::Query(e.to_string());
        let mut stmt = conn.prepare(&query).map_err(q)?;
        if !stmt.readonly() {
            return Err(config("the query must only read (a SELECT)"));
        }
        table.columns = stmt.column_names().map(str::to_owned).collect();
        let width = table.columns.len();
        let mut rows = stmt.query([]).map_err(q)?;
        while let Some(row) = rows.next().map_err(q)? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                cells.push(match row.get_ref(i).map_err(q)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(n) => Some(n.to_string()),
                    ValueRef::Real(x) => Some(x.to_string()),
                    ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => {
                        return Err(config(format!(
                            "column {} holds binary data, which a dataset cannot",
                            table.columns[i]
                        )));
                    }
                });
            }
            table.push(cells)?;
        }
        Ok(table)
    });
    let result = work
        .await
        .map_err(|e| ImportError::Query(format!("the SQLite reader failed: {e}")))?;
    drop(guard);
    result
}

pub(crate) async fn postgres(
    connection_string: &str,
    query: &str,
    mut table: Table,
) -> Result<Table, ImportError> {
    use tokio_postgres::SimpleQueryMessage;
    let cfg: tokio_postgres::Config = connection_string
        .parse()
        .map_err(|e| config(format!("connection_string: {e}")))?;
    let (client, connection) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| ImportError::Unreachable(format!("could not connect to PostgreSQL: {e}")))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL import connection ended");
        }
    });
    // The client and the driver end together when this returns.
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = Abort(driver);
    let q = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => ImportError::Query(db.message().to_owned()),
        None => ImportError::Unreachable(format!("PostgreSQL: {e}")),
    };
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .map_err(q)?;
    let messages = client.simple_query(query).await.map_err(q)?;
    // The last statement's rows (a script may set things up first).
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                table.columns = cols.iter().map(|c| c.name().to_owned()).collect();
                table.rows.clear();
            }
            SimpleQueryMessage::Row(row) => {
                if table.columns.is_empty() {
                    table.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                let cells = (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect();
                table.push(cells)?;
            }
            _ => {}
        }
    }
    Ok(table)
}
