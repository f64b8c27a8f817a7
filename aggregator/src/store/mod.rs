//! The store's format and access: the object store (`object`), the manifest and the files it
//! names (`manifest`), the rollup rows as Arrow (`rollup`), and the rollup files of the
//! manifest in force as SQL reads them (`history`). Durability and SQL both build on this
//! module, and on neither of each other.

pub mod history;
pub mod manifest;
pub mod object;
pub mod rollup;
