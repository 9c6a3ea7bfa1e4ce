//! Query results and conversion of values into Rust types.

use nexusd_protocol::Value;

use crate::{Error, Result};

/// The rows a query returned, all in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    decltypes: Vec<Option<String>>,
    last_insert_rowid: i64,
    total_changes: u64,
}

impl Rows {
    pub(crate) fn from_wire(rows: nexusd_protocol::Rows) -> Rows {
        Rows {
            columns: rows.columns,
            rows: rows.rows,
            decltypes: rows.decltypes,
            last_insert_rowid: rows.last_insert_rowid,
            total_changes: rows.total_changes,
        }
    }

    /// The columns and their declared types, without the rows.
    pub(crate) fn head(&self) -> Rows {
        Rows {
            columns: self.columns.clone(),
            decltypes: self.decltypes.clone(),
            ..Rows::default()
        }
    }

    /// These columns over `rows`.
    pub(crate) fn with_rows(&self, rows: Vec<Vec<Value>>) -> Rows {
        Rows {
            rows,
            ..self.head()
        }
    }

    /// `more`'s rows after these, and what it says of its statement (its
    /// last insert rowid and change total): to put a
    /// [`crate::RowStream`]'s parts together.
    pub fn append(&mut self, mut more: Rows) {
        self.rows.append(&mut more.rows);
        self.last_insert_rowid = more.last_insert_rowid;
        self.total_changes = more.total_changes;
    }

    /// No rows, from a statement that returned none.
    pub(crate) fn executed(e: &crate::Executed) -> Rows {
        Rows {
            last_insert_rowid: e.last_insert_rowid,
            total_changes: e.total_changes,
            ..Rows::default()
        }
    }

    /// Rows the statement changed in all, its triggers' and foreign-key
    /// actions' included (SQLite's `total_changes()` moved by this much
    /// while it ran): for `INSERT ... RETURNING` and the like; 0 for a
    /// read.
    pub fn total_changes(&self) -> u64 {
        self.total_changes
    }

    /// The rowid of the last row the statement inserted, for one that
    /// inserted rows and returned some (`INSERT ... RETURNING`); 0 for any
    /// other.
    pub fn last_insert_rowid(&self) -> i64 {
        self.last_insert_rowid
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Column `index`'s declared type, as in the table's definition
    /// (`"TIMESTAMP"` for a column declared `created TIMESTAMP`); `None`
    /// for an expression, and for every column unless the client asked
    /// for them ([`crate::ClientOptions::declared_types`]).
    pub fn decltype(&self, index: usize) -> Option<&str> {
        self.decltypes.get(index).and_then(|d| d.as_deref())
    }

    /// Every column's declared type, in order; empty unless the client
    /// asked for them ([`crate::ClientOptions::declared_types`]).
    pub fn decltypes(&self) -> &[Option<String>] {
        &self.decltypes
    }

    /// The rows, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Row<'_>> + '_ {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// Row `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<Row<'_>> {
        self.rows.get(index).map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// Column names and rows, by value.
    pub fn into_parts(self) -> (Vec<String>, Vec<Vec<Value>>) {
        (self.columns, self.rows)
    }
}

/// One row of a [`Rows`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    /// The value of column `index`, converted to `T`.
    ///
    /// ```
    /// # fn demo(row: nexusd_client::Row<'_>) -> nexusd_client::Result<()> {
    /// let id: i64 = row.get(0)?;
    /// let name: Option<String> = row.get(1)?;
    /// # Ok(()) }
    /// ```
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let value = self.values.get(index).ok_or(Error::ColumnOutOfRange {
            index,
            columns: self.values.len(),
        })?;
        T::from_value(value).map_err(|expected| Error::Conversion {
            index,
            expected,
            found: value.type_name(),
        })
    }

    /// The raw values.
    pub fn values(&self) -> &'a [Value] {
        self.values
    }

    pub fn columns(&self) -> &'a [String] {
        self.columns
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A Rust type a [`Value`] converts into. The error is the name of the
/// type, for the message.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, &'static str>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Integer(i) => Ok(*i),
            _ => Err("i64"),
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Integer(i) => i32::try_from(*i).map_err(|_| "i32"),
            _ => Err("i32"),
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Integer(i) => u64::try_from(*i).map_err(|_| "u64"),
            _ => Err("u64"),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Real(f) => Ok(*f),
            // SQLite stores whole REAL values of REAL-affinity columns as
            // integers on disk; reading them back as f64 must work.
            Value::Integer(i) => Ok(*i as f64),
            _ => Err("f64"),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Integer(i) => Ok(*i != 0),
            _ => Err("bool"),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            _ => Err("String"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            _ => Err("Vec<u8>"),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        Ok(value.clone())
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Rows {
        Rows {
            columns: vec!["a".into(), "b".into(), "c".into()],
            rows: vec![vec![
                Value::Integer(7),
                Value::Null,
                Value::Text("x".into()),
            ]],
            decltypes: Vec::new(),
            last_insert_rowid: 0,
            total_changes: 0,
        }
    }

    #[test]
    fn converts_values_and_reports_mismatches() {
        let rows = rows();
        let row = rows.get(0).expect("one row");
        assert_eq!(row.get::<i64>(0).expect("i64"), 7);
        assert_eq!(row.get::<f64>(0).expect("f64"), 7.0);
        assert!(row.get::<bool>(0).expect("bool"));
        assert_eq!(row.get::<Option<String>>(1).expect("null"), None);
        assert_eq!(
            row.get::<Option<String>>(2).expect("text"),
            Some("x".into())
        );
        let err = row.get::<i64>(2).expect_err("text is not i64");
        assert_eq!(
            err.to_string(),
            "column 2 holds TEXT, which does not convert to i64"
        );
        assert!(matches!(
            row.get::<i64>(9),
            Err(Error::ColumnOutOfRange {
                index: 9,
                columns: 3
            })
        ));
    }
}
