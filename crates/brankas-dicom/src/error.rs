//! The error type of [`parse`](crate::parse).

/// Why a DICOM Part 10 file was refused.
///
/// Messages are generic on purpose: they name the problem and, at most, the
/// standard keyword of the attribute concerned, **never a value** read from
/// the file, so they can be logged and returned to clients without leaking
/// patient data. No variant carries the underlying dicom-rs error either
/// (its `Debug` output can contain element values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DicomError {
    /// The input is larger than [`Limits::max_bytes`](crate::Limits::max_bytes).
    #[error("DICOM file exceeds the size limit")]
    TooLarge,
    /// No 128-byte preamble followed by `DICM`: not a DICOM Part 10 file (a
    /// bare data set without file meta information, for instance). STOW-RS
    /// requires Part 10.
    #[error("not a DICOM Part 10 file (no preamble and DICM prefix)")]
    NotPart10,
    /// The file meta information group (0002,xxxx) is malformed.
    #[error("malformed file meta information: {0}")]
    MalformedMeta(&'static str),
    /// A required attribute is absent or empty. Carries its keyword.
    #[error("missing {0}")]
    MissingAttribute(&'static str),
    /// A required UID attribute is not a valid UID (1 to 64 characters, digits
    /// and dots, no empty component) or has more than one value. Carries its
    /// keyword.
    #[error("invalid {0}")]
    InvalidUid(&'static str),
    /// MediaStorageSOPInstanceUID (0002,0003) differs from SOPInstanceUID
    /// (0008,0018).
    #[error("MediaStorageSOPInstanceUID does not match SOPInstanceUID")]
    SopInstanceMismatch,
    /// The transfer syntax is unknown or cannot be read by this build (the
    /// deflated transfer syntaxes need dicom-rs' `deflate` feature, which is
    /// not enabled).
    #[error("unsupported transfer syntax")]
    UnsupportedTransferSyntax,
    /// The data set ends in the middle of an element, item or sequence.
    #[error("truncated data set")]
    Truncated,
    /// The data set is structurally invalid.
    #[error("malformed data set: {0}")]
    Malformed(&'static str),
    /// Sequences are nested deeper than [`Limits::max_depth`](crate::Limits::max_depth).
    #[error("sequences nested deeper than the limit")]
    TooDeep,
    /// More elements and items than [`Limits::max_elements`](crate::Limits::max_elements),
    /// or more string values than [`Limits::max_string_values`](crate::Limits::max_string_values).
    #[error("too many data elements or values")]
    TooManyElements,
    /// dicom-rs could not decode a data set that passed the structural
    /// checks.
    #[error("data set could not be decoded")]
    Decode,
}
