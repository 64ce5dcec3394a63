//! Capabilities: what a step may do, the broker every host call passes, and the audit log.
//!
//! Default deny. A grant is written in the build script next to the step that needs it
//! (`#{ allow: #{ read: ["files"], secrets: ["DB_PW"] } }`); builders and
//! post-processors get a small fixed set by default (see [`Grants::for_builder`]).

mod audit;
mod broker;
mod fs;
mod grants;

pub use audit::{AuditLog, AuditRecord, now_rfc3339 as now_rfc3339_pub};
pub use broker::{Broker, Denied, Scope};
pub use fs::{FsError, Project};
pub use grants::{Capability, GrantError, Grants};
