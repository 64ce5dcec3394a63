//! The registry's logic, written once over [`crate::store::sql::Tx`].

pub(crate) mod common;
pub(crate) mod mutate;
pub(crate) mod read;
pub(crate) mod record;
pub(crate) mod tokens;
