//! QIDO-RS (PS3.18 10.6): query parameters and result rows.
//!
//! * [`Query::parse`] turns the query pairs of a search request at a
//!   [`Level`] into a [`Query`]: attribute matching by keyword or tag,
//!   `limit`, `offset`, `includefield` and `fuzzymatching`; anything else is
//!   refused with a [`QidoError`] naming the parameter (never its value).
//! * [`StudyRow`], [`SeriesRow`] and [`InstanceRow`] are the result rows, built
//!   from [`Instance`](crate::Instance)s ([`study_rows`], [`series_rows`],
//!   `From<&Instance>`), matched with [`Query::matches_study`] and friends, and
//!   written with `to_json` as the DICOM JSON objects QIDO-RS returns.
//!
//! Paging is left to the caller: filter the rows, then skip
//! [`Query::offset`] and take [`Query::limit`].

mod glob;
mod query;
mod rows;

pub use glob::glob_match;
pub use query::{IncludeFields, Level, MAX_QUERY_BYTES, MAX_UIDS, QidoError, Query};
pub use rows::{InstanceRow, SeriesRow, StudyRow, series_rows, study_rows};
