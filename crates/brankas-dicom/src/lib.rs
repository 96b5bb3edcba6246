//! DICOM knowledge for the Brankas DICOMweb endpoints, without any I/O.
//!
//! The server accepts DICOM Part 10 instances by STOW-RS, stores them
//! encrypted, links them to a patient and an FHIR ImagingStudy, and answers
//! WADO-RS metadata and QIDO-RS searches. This crate does the DICOM part:
//!
//! * **Parsing** — [`parse`] reads a whole Part 10 file (preamble, `DICM`,
//!   file meta group, the entire data set including pixel data) with
//!   dicom-rs, after a structural pre-check of our own that bounds every
//!   length, the sequence nesting ([`Limits`]) and the number of elements,
//!   so hostile input can neither exhaust memory nor overflow the stack.
//!   Truncated or broken files are refused with a [`DicomError`]; so are
//!   files without file meta information (STOW-RS requires Part 10).
//!   Encapsulated (compressed) pixel data is read as fragments, never
//!   decoded.
//! * **[`Instance`]** — the validated UIDs (study, series, SOP instance,
//!   SOP class, transfer syntax) and the patient / study / series / instance
//!   attributes the server indexes, in [`Parsed::instance`]. Serde-serialisable
//!   (the server stores it sealed).
//! * **Metadata** — [`Parsed::metadata_json`] gives the instance's DICOM JSON
//!   model (PS3.18 F.2) for WADO-RS metadata, bulk data replaced by a
//!   `BulkDataURI`.
//! * **QIDO-RS** — the [`qido`] module: [`qido::Query`] parses and checks the
//!   query parameters, [`qido::StudyRow`], [`qido::SeriesRow`] and
//!   [`qido::InstanceRow`] are the result rows with their DICOM JSON.
//!
//! Patient data never appears in `Debug` output or error messages: types
//! holding it have hand-written, redacting `Debug` implementations, and
//! [`DicomError`] / [`qido::QidoError`] name problems and attribute keywords,
//! never values.
//!
//! # Example
//!
//! ```no_run
//! use brankas_dicom::{parse, Limits};
//! use brankas_dicom::qido::{Level, Query, SeriesRow};
//!
//! let bytes = std::fs::read("CT_small.dcm")?;
//! let parsed = parse(&bytes, &Limits::default())?;
//! let instance = &parsed.instance;
//! println!("study {} series {}", instance.study_uid, instance.series_uid);
//!
//! // WADO-RS metadata: one DICOM JSON object per instance.
//! let uri = "https://example.org/dicomweb/studies/1.2/series/1.3/instances/1.4";
//! let metadata = parsed.metadata_json(uri);
//! assert!(metadata["7FE00010"]["BulkDataURI"].is_string());
//!
//! // QIDO-RS: a series-level search.
//! let pairs = vec![("Modality".to_owned(), "CT".to_owned())];
//! let query = Query::parse(Level::Series, &pairs)?;
//! let row = SeriesRow::from(instance);
//! if query.matches_series(&row) {
//!     let json = row.to_json(Some("https://example.org/dicomweb/studies/1.2/series/1.3"));
//!     println!("{json}");
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! * dicom-object is used without its `deflate` feature, so the deflated
//!   transfer syntaxes (1.2.840.10008.1.2.1.99 and the JPIP deflate ones)
//!   are refused with [`DicomError::UnsupportedTransferSyntax`].
//! * Non-conformant encodings that dicom-rs does not read are refused: a
//!   data set in implicit VR under an explicit VR transfer syntax, or an
//!   undefined-length UN element holding implicit VR items (PS3.5 6.2.2;
//!   dicom-rs reads the items as explicit VR).
//! * Standard attributes that a file stores as UN are written to the
//!   metadata with their dictionary VR and decoded value (sequences
//!   excepted, which stay UN).
//! * A file cut exactly between two top-level elements cannot be told from
//!   a complete one.
//! * dicom-json is not used for the metadata (see [`Parsed::metadata_json`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod instance;
mod json;
pub mod qido;
pub mod render;
mod scan;
mod uid;
mod un;

use std::fmt;
use std::io::{Cursor, Read};

use dicom_object::InMemDicomObject;
use dicom_object::file::{OpenFileOptions, ReadPreamble};

pub use error::DicomError;
pub use instance::Instance;
pub use uid::{MAX_UID_LEN, is_valid_uid};

/// Bounds on the work and memory [`parse`] may spend on one file.
///
/// Memory is roughly the input size plus a bounded overhead per element and
/// per string value; the stack depth is bounded by `max_depth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes (default 512 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences (default 32; real data rarely
    /// goes beyond 10, structured reports included). dicom-rs builds nested
    /// sequences recursively and a deeper file overflows the stack (an
    /// abort, not a panic): measured on a 2 MiB thread (tokio's blocking
    /// pool default) with this workspace's dev profile, dicom-rs 0.10
    /// survives 128 levels and overflows at 250. Keep this well below 100.
    pub max_depth: usize,
    /// Most data elements plus sequence items plus pixel data fragments in
    /// the whole file (default 1 000 000). Each costs dicom-rs about a
    /// hundred bytes of memory however few bytes it takes in the file.
    pub max_elements: usize,
    /// Most backslash-separated values of multi-valued string VRs (AE, AS,
    /// CS, DA, DS, DT, IS, LO, PN, SH, TM, UC, UI) in the whole file
    /// (default 10 000 000). dicom-rs stores each as its own `String`.
    pub max_string_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 512 * 1024 * 1024, max_depth: 32, max_elements: 1_000_000, max_string_values: 10_000_000 }
    }
}

/// A parsed and validated DICOM instance.
///
/// `Debug` is redacted: it shows only the non-identifying fields of the
/// instance and the number of elements.
#[derive(Clone)]
pub struct Parsed {
    /// The indexed attributes.
    pub instance: Instance,
    dataset: InMemDicomObject,
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed").field("instance", &self.instance).field("elements", &self.dataset.iter().count()).finish_non_exhaustive()
    }
}

impl Parsed {
    /// The instance's DICOM JSON model (PS3.18 F.2), as one WADO-RS metadata
    /// object.
    ///
    /// * Every element of the data set, sorted by tag, nested sequences
    ///   included; left out are the file meta group (0002,xxxx), group
    ///   lengths (gggg,0000) and Data Set Trailing Padding (FFFC,FFFC).
    /// * Keys are tags as 8 upper-case hex digits; each attribute has `"vr"`
    ///   and, unless empty, `"Value"`, `"InlineBinary"` or `"BulkDataURI"`.
    /// * Strings are trimmed of padding; PN values are
    ///   `{"Alphabetic", "Ideographic", "Phonetic"}` objects (empty groups
    ///   left out); IS and DS values are JSON numbers (a DS keeps its decimal
    ///   digits, without binary rounding, when its text is valid JSON; a
    ///   malformed IS / DS value is kept as a string rather than lost); AT values are `"GGGGEEEE"`
    ///   strings; empty values within a multi-valued attribute are `null`,
    ///   as are NaN / infinite floats.
    /// * Bulk data is not inlined: PixelData (7FE0,0010, native or
    ///   encapsulated), FloatPixelData (7FE0,0008), DoubleFloatPixelData
    ///   (7FE0,0009), WaveformData (5400,1010, inside WaveformSequence),
    ///   OverlayData (60xx,3000), EncapsulatedDocument (0042,0011),
    ///   SpectroscopyData (5600,0020), and any other OB, OD, OF, OL, OV, OW
    ///   or UN value longer than 1024 bytes — and, beyond the same size,
    ///   arrays of binary numbers (US, SS, UL, SL, FL, FD, UV, SV: e.g.
    ///   LUT data), whose JSON would be ten times their size — become
    ///   `{"vr": .., "BulkDataURI": bulk_data_uri}` — the same URI, given by
    ///   the caller, for every bulk element (typically the instance's URL,
    ///   from which the whole instance can be retrieved). Shorter binary
    ///   values are `InlineBinary` (base64 of the little-endian bytes).
    pub fn metadata_json(&self, bulk_data_uri: &str) -> serde_json::Value {
        json::dataset_json(&self.dataset, bulk_data_uri)
    }

    /// The parsed data set (without the file meta group), for callers that
    /// need more than [`Instance`] (e.g. pixel data fragments).
    pub fn dataset(&self) -> &InMemDicomObject {
        &self.dataset
    }
}

/// Parses and validates a whole DICOM Part 10 file.
///
/// Refused (see [`DicomError`] for the variants):
/// * input larger than [`Limits::max_bytes`];
/// * no 128-byte preamble and `DICM` prefix (e.g. a bare data set);
/// * a file meta group that is truncated or malformed, or lacks
///   TransferSyntaxUID or MediaStorageSOPInstanceUID (a missing group
///   length is tolerated);
/// * a deflated or unknown transfer syntax;
/// * a data set that is truncated anywhere (inside a value, an item, a
///   sequence or encapsulated pixel data, or with a partial element header
///   at the end), structurally malformed, nested deeper than
///   [`Limits::max_depth`], or with too many elements;
/// * a data set dicom-rs cannot decode;
/// * SOPClassUID, SOPInstanceUID, StudyInstanceUID or SeriesInstanceUID
///   absent, empty, multi-valued or not a valid UID (digits and dots, 1 to
///   64 characters, no empty component; leading zeros are tolerated);
/// * MediaStorageSOPInstanceUID different from SOPInstanceUID.
///
/// A file cut exactly between two top-level elements cannot be told from a
/// complete one; it is accepted if the required attributes come before the
/// cut.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Parsed, DicomError> {
    if bytes.len() > limits.max_bytes {
        return Err(DicomError::TooLarge);
    }
    let part10 = scan::split_part10(bytes)?;
    scan::check_dataset(part10.dataset, part10.encoding, limits)?;
    // dicom-rs reads a minimal file meta group of ours, then the original
    // data set bytes.
    let source = Cursor::new(scan::canonical_meta(&part10.meta)).chain(part10.dataset);
    let file = OpenFileOptions::new().read_preamble(ReadPreamble::Never).from_reader(source).map_err(|e| match e {
        dicom_object::ReadError::ReadUnrecognizedTransferSyntax { .. }
        | dicom_object::ReadError::ReadUnsupportedTransferSyntax { .. }
        | dicom_object::ReadError::ReadUnsupportedTransferSyntaxWithSuggestion { .. } => DicomError::UnsupportedTransferSyntax,
        // The dicom-rs error is dropped: its Debug output can hold
        // element values.
        _ => DicomError::Decode,
    })?;
    let dataset = file.into_inner();
    let instance = Instance::from_dataset(&dataset, &part10.meta.transfer_syntax, &part10.meta.media_storage_sop_instance_uid)?;
    Ok(Parsed { instance, dataset })
}
