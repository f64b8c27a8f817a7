//! The store's format and access, in one module: the object store (`object`), reading and
//! writing its files (`files`), the manifest with its named sections, finding the one in force
//! and the sweep of files none names (`manifest`), the rollup rows as Arrow and Parquet
//! (`rollup`), cost lines and rejects as Arrow (`cost`), the state image's series file (`image`), every object's name (`paths`), and the rollup files of the manifest in
//! force as SQL reads them (`history`). Durability and SQL both build on this module, and on
//! neither of each other.

pub mod cost;
pub mod files;
pub mod history;
pub mod image;
pub mod manifest;
pub mod object;
pub mod paths;
pub mod rollup;
