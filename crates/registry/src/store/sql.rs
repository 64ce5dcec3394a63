//! The little SQL layer both backends implement, so the registry's logic (in `ops`) is written
//! once and runs unchanged on SQLite and PostgreSQL.
//!
//! Statements use PostgreSQL's `$1` placeholders; the SQLite backend rewrites them to `?1`
//! (numbered parameters), so no statement may contain a `$` elsewhere. Every value goes through
//! a parameter: no SQL is ever built from input.

use crate::error::RegistryError;

/// Which backend a transaction runs on, for the few places the SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Row locks: PostgreSQL locks the selected row; SQLite's `BEGIN IMMEDIATE` already
    /// serialises writers.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

/// A statement parameter. Nulls are typed because PostgreSQL checks parameter types.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
}

/// A result column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

/// A result row; accessors fail with a storage error instead of panicking on a schema
/// mismatch.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) cells: Vec<Cell>,
    pub(crate) backend: &'static str,
}

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, RegistryError> {
        self.cells
            .get(i)
            .ok_or_else(|| self.bad(i, "missing column"))
    }

    fn bad(&self, i: usize, what: &str) -> RegistryError {
        RegistryError::Storage {
            backend: self.backend,
            operation: "reading a row",
            message: format!("column {i}: {what} (is the database from another program?)"),
            transient: false,
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, RegistryError> {
        match self.cell(i)? {
            Cell::Int(v) => Ok(*v),
            Cell::Bool(b) => Ok(i64::from(*b)),
            _ => Err(self.bad(i, "expected an integer")),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, RegistryError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, RegistryError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(s.clone()),
            _ => Err(self.bad(i, "expected text")),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, RegistryError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub(crate) fn bool(&self, i: usize) -> Result<bool, RegistryError> {
        match self.cell(i)? {
            Cell::Bool(b) => Ok(*b),
            Cell::Int(v) => Ok(*v != 0),
            _ => Err(self.bad(i, "expected a boolean")),
        }
    }
}

/// One open transaction. Implemented by `SqliteTx` and `PgTx`.
#[allow(async_fn_in_trait)]
pub(crate) trait Tx {
    fn dialect(&self) -> Dialect;

    /// Runs a statement that returns rows.
    async fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, RegistryError>;

    /// Runs a statement and returns the number of rows it changed.
    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, RegistryError>;

    /// Runs a script of statements without parameters (migrations).
    async fn batch(&mut self, sql: &str) -> Result<(), RegistryError>;

    async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
    ) -> Result<Option<Row>, RegistryError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    async fn query_one(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Row, RegistryError> {
        let backend = self.dialect().name();
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| RegistryError::Storage {
                backend,
                operation: "reading a row",
                message: "a statement that always returns a row returned none".into(),
                transient: false,
            })
    }
}

/// `($n, $n+1, …)` placeholders for an `IN` list starting at parameter `first`.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    let list: Vec<String> = (first..first + count).map(|i| format!("${i}")).collect();
    format!("({})", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_list() {
        assert_eq!(placeholders(2, 3), "($2, $3, $4)");
    }

    #[test]
    fn row_accessors() {
        let r = Row {
            cells: vec![
                Cell::Int(1),
                Cell::Null,
                Cell::Text("x".into()),
                Cell::Bool(true),
            ],
            backend: "t",
        };
        assert_eq!(r.int(0).ok(), Some(1));
        assert_eq!(r.opt_int(1).ok(), Some(None));
        assert_eq!(r.text(2).ok().as_deref(), Some("x"));
        assert!(r.bool(3).unwrap_or(false));
        assert!(r.bool(0).unwrap_or(false));
        assert!(r.text(0).is_err());
        assert!(r.int(9).is_err());
    }
}
