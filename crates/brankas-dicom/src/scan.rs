//! Structural checks on the raw bytes, before dicom-rs sees them.
//!
//! dicom-rs trusts the lengths it reads: a value length is allocated (and
//! zero-filled) before the bytes are read, so a 200-byte file declaring a
//! 4 GiB element makes it touch 4 GiB of memory; and it builds nested
//! sequences recursively, so deep nesting overflows the stack (an abort, not
//! a panic). This module walks the file meta group and the data set with the
//! same reading rules as dicom-rs 0.10 (`dicom_parser::dataset::read`) and
//! refuses, before any allocation, whatever would make dicom-rs misbehave:
//!
//! * a value, item or sequence longer than what remains of the input or of
//!   its enclosing item / sequence,
//! * an unclosed undefined-length sequence, item or encapsulated pixel data
//!   (dicom-rs would take an end of input inside encapsulated pixel data as
//!   a normal end),
//! * sequence nesting beyond [`Limits::max_depth`],
//! * more elements and items than [`Limits::max_elements`], or more
//!   backslash-separated string values than [`Limits::max_string_values`]
//!   (dicom-rs stores each as its own `String`: a 1-byte `\` costs 24 bytes),
//! * the few encodings on which dicom-rs' position bookkeeping would drift
//!   from the bytes actually consumed (a binary value whose length is not a
//!   multiple of its value size, a basic offset table whose length is not a
//!   multiple of 4, delimiters in unexpected places, trailing partial
//!   headers).
//!
//! Everything accepted here is read by dicom-rs as the same tree of
//! elements, so the bounds checked here are the bounds dicom-rs sees.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::uid::{is_valid_uid, trim_uid};
use crate::{DicomError, Limits};

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// The transfer syntax UIDs this crate reads with a non-default encoding.
const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
/// Transfer syntaxes whose data set is deflated: dicom-object can only read
/// them with its `deflate` feature, which this crate does not enable.
const DEFLATED: [&str; 3] = [
    "1.2.840.10008.1.2.1.99",  // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.95",  // JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.205", // JPIP HTJ2K Referenced Deflate
];

/// How the data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
}

/// What the file meta group says (UIDs only: no patient data).
pub(crate) struct Meta {
    pub transfer_syntax: String,
    pub media_storage_sop_instance_uid: String,
}

/// A Part 10 file split into its meta information and its data set.
pub(crate) struct Part10<'a> {
    pub meta: Meta,
    pub encoding: Encoding,
    pub dataset: &'a [u8],
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// VRs whose explicit-VR header has a 2-byte length (PS3.5 7.1.2), exactly
/// the list dicom-encoding uses.
fn has_short_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

/// Splits a Part 10 file into file meta information and data set.
///
/// The meta group is read here rather than by dicom-rs so that a missing
/// group length is tolerated, a missing MediaStorageSOPInstanceUID is
/// noticed (dicom-rs silently fills it in from the data set) and no value
/// is allocated from an unchecked length.
pub(crate) fn split_part10(bytes: &[u8]) -> Result<Part10<'_>, DicomError> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(DicomError::NotPart10);
    }
    let mut p = 132;
    let mut transfer_syntax: Option<String> = None;
    let mut media_instance: Option<String> = None;
    let mut seen: Vec<u16> = Vec::new();
    // The meta group is every leading element of group 0002, always in
    // explicit VR little endian.
    while bytes.len() - p >= 2 && u16_le(bytes, p) == 0x0002 {
        let rest = &bytes[p..];
        if rest.len() < 8 {
            return Err(DicomError::Truncated);
        }
        let element = u16_le(rest, 2);
        let vr = VR::from_binary([rest[4], rest[5]]).ok_or(DicomError::MalformedMeta("invalid value representation"))?;
        let (header, len) = if has_short_length(vr) {
            (8, u32::from(u16_le(rest, 6)))
        } else {
            if rest.len() < 12 {
                return Err(DicomError::Truncated);
            }
            (12, u32_le(rest, 8))
        };
        if len == UNDEFINED {
            return Err(DicomError::MalformedMeta("undefined length"));
        }
        let len = len as usize;
        if len > rest.len() - header {
            return Err(DicomError::Truncated);
        }
        if seen.contains(&element) {
            return Err(DicomError::MalformedMeta("duplicate element"));
        }
        seen.push(element);
        let value = &rest[header..header + len];
        match element {
            0x0000 if len != 4 => {
                return Err(DicomError::MalformedMeta("invalid group length"));
            }
            0x0003 => media_instance = Some(uid_text(value)),
            0x0010 => transfer_syntax = Some(uid_text(value)),
            _ => {}
        }
        p += header + len;
    }
    let transfer_syntax = match transfer_syntax {
        Some(ts) if !ts.is_empty() => ts,
        _ => return Err(DicomError::MissingAttribute("TransferSyntaxUID")),
    };
    if !is_valid_uid(&transfer_syntax) {
        return Err(DicomError::InvalidUid("TransferSyntaxUID"));
    }
    let media_storage_sop_instance_uid = match media_instance {
        Some(uid) if !uid.is_empty() => uid,
        _ => return Err(DicomError::MissingAttribute("MediaStorageSOPInstanceUID")),
    };
    if !is_valid_uid(&media_storage_sop_instance_uid) {
        return Err(DicomError::InvalidUid("MediaStorageSOPInstanceUID"));
    }
    let encoding = match transfer_syntax.as_str() {
        IMPLICIT_VR_LITTLE_ENDIAN => Encoding::ImplicitLe,
        EXPLICIT_VR_BIG_ENDIAN => Encoding::ExplicitBe,
        ts if DEFLATED.contains(&ts) => return Err(DicomError::UnsupportedTransferSyntax),
        // Every other transfer syntax dicom-rs knows is explicit VR little
        // endian; unknown ones are refused by dicom-rs after this scan.
        _ => Encoding::ExplicitLe,
    };
    Ok(Part10 { meta: Meta { transfer_syntax, media_storage_sop_instance_uid }, encoding, dataset: &bytes[p..] })
}

fn uid_text(value: &[u8]) -> String {
    trim_uid(&String::from_utf8_lossy(value)).to_owned()
}

/// A minimal, well-formed file meta group ("DICM" included, no preamble)
/// for dicom-rs: group length, MediaStorageSOPInstanceUID and
/// TransferSyntaxUID, all already validated. dicom-rs reads this followed
/// by the original data set bytes; MediaStorageSOPClassUID is left for it to
/// fill in from SOPClassUID.
pub(crate) fn canonical_meta(meta: &Meta) -> Vec<u8> {
    fn put_ui(out: &mut Vec<u8>, element: u16, uid: &str) {
        let mut value = uid.as_bytes().to_vec();
        if value.len() % 2 == 1 {
            value.push(0);
        }
        out.extend_from_slice(&[0x02, 0x00]);
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(b"UI");
        // UIDs are at most 64 bytes (validated), so this cannot truncate.
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(&value);
    }
    let mut body = Vec::with_capacity(160);
    put_ui(&mut body, 0x0003, &meta.media_storage_sop_instance_uid);
    put_ui(&mut body, 0x0010, &meta.transfer_syntax);
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(b"DICM");
    out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// The root data set or a sequence item: element headers expected.
    Items,
    /// A sequence: item headers expected.
    Sequence,
    /// Encapsulated pixel data: fragment items expected.
    Pixels { first: bool },
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Where a defined-length container ends.
    end: Option<usize>,
    /// Where the innermost defined-length container ends (the input's end
    /// when there is none): nothing inside may cross it.
    bound: usize,
}

/// Walks the data set, see the module documentation.
pub(crate) fn check_dataset(data: &[u8], encoding: Encoding, limits: &Limits) -> Result<(), DicomError> {
    Walker { data, encoding, limits, p: 0, stack: Vec::new(), depth: 0, elements: 0, strings: 0 }.run()
}

struct Walker<'a> {
    data: &'a [u8],
    encoding: Encoding,
    limits: &'a Limits,
    p: usize,
    /// Open containers; the root data set is implicit (empty stack).
    stack: Vec<Frame>,
    /// Number of open sequences.
    depth: usize,
    elements: usize,
    strings: usize,
}

impl Walker<'_> {
    fn u16_at(&self, at: usize) -> u16 {
        let b = [self.data[at], self.data[at + 1]];
        match self.encoding {
            Encoding::ExplicitBe => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = [self.data[at], self.data[at + 1], self.data[at + 2], self.data[at + 3]];
        match self.encoding {
            Encoding::ExplicitBe => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        }
    }

    fn tag_at(&self, at: usize) -> Tag {
        Tag(self.u16_at(at), self.u16_at(at + 2))
    }

    fn bound(&self) -> usize {
        self.stack.last().map_or(self.data.len(), |f| f.bound)
    }

    /// Refuses `len` bytes from the current position if they cross the
    /// enclosing container or the input.
    fn fits(&self, len: usize) -> Result<usize, DicomError> {
        let bound = self.bound();
        let end = self.p.checked_add(len).ok_or(DicomError::Truncated)?;
        if end <= bound {
            Ok(end)
        } else if end <= self.data.len() {
            Err(DicomError::Malformed("value extends past the end of its item or sequence"))
        } else {
            Err(DicomError::Truncated)
        }
    }

    fn count_element(&mut self) -> Result<(), DicomError> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(DicomError::TooManyElements);
        }
        Ok(())
    }

    fn run(mut self) -> Result<(), DicomError> {
        loop {
            let Some(frame) = self.stack.last().copied() else {
                if self.p == self.data.len() {
                    return Ok(());
                }
                self.element()?;
                continue;
            };
            if frame.end == Some(self.p) {
                self.stack.pop();
                if matches!(frame.kind, Kind::Sequence) {
                    self.depth -= 1;
                }
                continue;
            }
            match frame.kind {
                Kind::Items => self.element()?,
                Kind::Sequence => self.item()?,
                Kind::Pixels { first } => self.fragment(first)?,
            }
        }
    }

    fn open_sequence(&mut self, len: u32) -> Result<(), DicomError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(DicomError::TooDeep);
        }
        let (end, bound) = if len == UNDEFINED {
            (None, self.bound())
        } else {
            let end = self.fits(len as usize)?;
            (Some(end), end)
        };
        self.stack.push(Frame { kind: Kind::Sequence, end, bound });
        Ok(())
    }

    /// One element of a data set (root or item), or the item delimiter
    /// closing an undefined-length item.
    fn element(&mut self) -> Result<(), DicomError> {
        self.fits(4)?;
        let tag = self.tag_at(self.p);
        if tag.0 == 0xFFFE {
            self.fits(8)?;
            let undefined_item = matches!(self.stack.last(), Some(Frame { kind: Kind::Items, end: None, .. }));
            if tag == ITEM_DELIMITER && undefined_item {
                // dicom-rs ignores the delimiter's length field; so do we.
                self.p += 8;
                self.stack.pop();
                return Ok(());
            }
            return Err(DicomError::Malformed("unexpected item or delimiter"));
        }
        let (vr, len, header) = match self.encoding {
            Encoding::ImplicitLe => {
                self.fits(8)?;
                (implicit_vr(tag), self.u32_at(self.p + 4), 8)
            }
            Encoding::ExplicitLe | Encoding::ExplicitBe => {
                self.fits(8)?;
                let vr = VR::from_binary([self.data[self.p + 4], self.data[self.p + 5]]).unwrap_or(VR::UN);
                if has_short_length(vr) {
                    (vr, u32::from(self.u16_at(self.p + 6)), 8)
                } else {
                    self.fits(12)?;
                    (vr, self.u32_at(self.p + 8), 12)
                }
            }
        };
        self.count_element()?;
        self.p += header;
        if vr == VR::SQ {
            return self.open_sequence(len);
        }
        if len == UNDEFINED {
            if tag == PIXEL_DATA {
                let bound = self.bound();
                self.stack.push(Frame { kind: Kind::Pixels { first: true }, end: None, bound });
                return Ok(());
            }
            // dicom-rs reads any other undefined-length element as a
            // sequence, whatever its VR.
            return self.open_sequence(len);
        }
        let len = len as usize;
        let end = self.fits(len)?;
        if !len.is_multiple_of(value_size(vr)) {
            return Err(DicomError::Malformed("value length is not a multiple of its value size"));
        }
        if is_multi_valued_string(vr) {
            let values = self.data[self.p..end].iter().filter(|&&b| b == b'\\').count() + 1;
            self.strings += values;
            if self.strings > self.limits.max_string_values {
                return Err(DicomError::TooManyElements);
            }
        }
        self.p = end;
        Ok(())
    }

    /// One item header in a sequence, or the sequence delimiter.
    fn item(&mut self) -> Result<(), DicomError> {
        self.fits(8)?;
        let tag = self.tag_at(self.p);
        let len = self.u32_at(self.p + 4);
        let undefined_sequence = matches!(self.stack.last(), Some(f) if f.end.is_none());
        if tag == SEQUENCE_DELIMITER && undefined_sequence {
            self.p += 8;
            self.stack.pop();
            self.depth -= 1;
            return Ok(());
        }
        if tag != ITEM {
            return Err(DicomError::Malformed("expected a sequence item"));
        }
        self.count_element()?;
        self.p += 8;
        let (end, bound) = if len == UNDEFINED {
            (None, self.bound())
        } else {
            let end = self.fits(len as usize)?;
            (Some(end), end)
        };
        self.stack.push(Frame { kind: Kind::Items, end, bound });
        Ok(())
    }

    /// One fragment item of encapsulated pixel data (the first is the basic
    /// offset table), or the sequence delimiter.
    fn fragment(&mut self, first: bool) -> Result<(), DicomError> {
        self.fits(8)?;
        let tag = self.tag_at(self.p);
        let len = self.u32_at(self.p + 4);
        if tag == SEQUENCE_DELIMITER {
            if first {
                return Err(DicomError::Malformed("pixel data without offset table item"));
            }
            self.p += 8;
            self.stack.pop();
            return Ok(());
        }
        if tag != ITEM {
            return Err(DicomError::Malformed("expected a pixel data fragment"));
        }
        if len == UNDEFINED {
            return Err(DicomError::Malformed("undefined pixel data fragment length"));
        }
        if first && !len.is_multiple_of(4) {
            return Err(DicomError::Malformed("invalid basic offset table length"));
        }
        self.count_element()?;
        self.p += 8;
        self.p = self.fits(len as usize)?;
        if let Some(Frame { kind: Kind::Pixels { first }, .. }) = self.stack.last_mut() {
            *first = false;
        }
        Ok(())
    }
}

/// The VR dicom-rs gives an element in implicit VR little endian.
fn implicit_vr(tag: Tag) -> VR {
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) { VR::OW } else { StandardDataDictionary.by_tag(tag).map(|entry| entry.vr().relaxed()).unwrap_or(VR::UN) }
}

/// The size of one binary value: dicom-rs reads `len / size` values, so a
/// remainder would leave bytes unread while its position counter skips them.
fn value_size(vr: VR) -> usize {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::AT | VR::UL | VR::SL | VR::FL | VR::OF | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

/// VRs dicom-rs splits on backslashes into one `String` per value.
fn is_multi_valued_string(vr: VR) -> bool {
    matches!(vr, VR::AE | VR::AS | VR::CS | VR::DA | VR::DS | VR::DT | VR::IS | VR::LO | VR::PN | VR::SH | VR::TM | VR::UC | VR::UI)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    /// Explicit VR little endian element with a short length.
    fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn header32(group: u16, element: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    fn item_header(element: u16, len: u32) -> Vec<u8> {
        let mut out = vec![0xFE, 0xFF];
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    fn check(data: &[u8]) -> Result<(), DicomError> {
        check_dataset(data, Encoding::ExplicitLe, &limits())
    }

    #[test]
    fn plain_elements() {
        let mut data = short(0x0008, 0x0060, b"CS", b"CT");
        data.extend(short(0x0028, 0x0010, b"US", &[1, 0]));
        assert_eq!(check(&data), Ok(()));
        assert_eq!(check(&data[..data.len() - 1]), Err(DicomError::Truncated));
        assert_eq!(check(&data[..data.len() - 3]), Err(DicomError::Truncated));
        // Trailing partial header.
        let mut trailing = data.clone();
        trailing.extend_from_slice(&[0x10, 0x00]);
        assert_eq!(check(&trailing), Err(DicomError::Truncated));
    }

    #[test]
    fn huge_declared_length_is_refused_without_allocating() {
        let data = header32(0x0009, 0x0010, b"OB", 0xFFFF_FFF0);
        assert_eq!(check(&data), Err(DicomError::Truncated));
    }

    #[test]
    fn odd_binary_lengths_are_refused() {
        let data = short(0x0028, 0x0010, b"US", &[1, 0, 2]);
        assert!(matches!(check(&data), Err(DicomError::Malformed(_))));
    }

    #[test]
    fn sequences_and_items() {
        // Undefined-length sequence with one undefined-length item.
        let mut data = header32(0x0008, 0x1115, b"SQ", UNDEFINED);
        data.extend(item_header(0xE000, UNDEFINED));
        data.extend(short(0x0008, 0x1150, b"UI", b"1.2\0"));
        data.extend(item_header(0xE00D, 0));
        data.extend(item_header(0xE0DD, 0));
        assert_eq!(check(&data), Ok(()));
        // Missing sequence delimiter.
        assert_eq!(check(&data[..data.len() - 8]), Err(DicomError::Truncated));
        // Defined lengths.
        let inner = short(0x0008, 0x1150, b"UI", b"1.2\0");
        let mut item = item_header(0xE000, inner.len() as u32);
        item.extend(&inner);
        let mut data = header32(0x0008, 0x1115, b"SQ", item.len() as u32);
        data.extend(&item);
        assert_eq!(check(&data), Ok(()));
        // An item longer than its sequence.
        let mut bad = header32(0x0008, 0x1115, b"SQ", 8);
        bad.extend(item_header(0xE000, inner.len() as u32));
        bad.extend(&inner);
        assert!(matches!(check(&bad), Err(DicomError::Malformed(_))));
    }

    #[test]
    fn nesting_depth_is_bounded_without_recursion() {
        let levels = 200_000;
        let mut data = Vec::new();
        for _ in 0..levels {
            data.extend(header32(0x0040, 0xA730, b"SQ", UNDEFINED));
            data.extend(item_header(0xE000, UNDEFINED));
        }
        assert_eq!(check(&data), Err(DicomError::TooDeep));
        let limits = Limits { max_depth: usize::MAX, ..Limits::default() };
        // Without a depth limit the walk still ends, on the truncation.
        assert_eq!(check_dataset(&data, Encoding::ExplicitLe, &limits), Err(DicomError::Truncated));
    }

    #[test]
    fn encapsulated_pixel_data() {
        let mut data = header32(0x7FE0, 0x0010, b"OB", UNDEFINED);
        data.extend(item_header(0xE000, 0));
        data.extend(item_header(0xE000, 4));
        data.extend([1, 2, 3, 4]);
        data.extend(item_header(0xE0DD, 0));
        assert_eq!(check(&data), Ok(()));
        // Ends without the sequence delimiter (dicom-rs would accept this).
        assert_eq!(check(&data[..data.len() - 8]), Err(DicomError::Truncated));
        // No basic offset table item.
        let mut bad = header32(0x7FE0, 0x0010, b"OB", UNDEFINED);
        bad.extend(item_header(0xE0DD, 0));
        assert!(matches!(check(&bad), Err(DicomError::Malformed(_))));
    }

    #[test]
    fn string_values_are_counted() {
        let data = short(0x0008, 0x0008, b"CS", &[b'\\'; 100]);
        let limits = Limits { max_string_values: 100, ..Limits::default() };
        assert_eq!(check_dataset(&data, Encoding::ExplicitLe, &limits), Err(DicomError::TooManyElements));
    }

    #[test]
    fn implicit_vr_uses_the_dictionary() {
        // (0008,1115) is SQ in the dictionary: a defined-length sequence.
        let mut data = Vec::new();
        data.extend_from_slice(&[0x08, 0x00, 0x15, 0x11]);
        data.extend_from_slice(&8u32.to_le_bytes());
        data.extend(item_header(0xE000, 0));
        assert_eq!(check_dataset(&data, Encoding::ImplicitLe, &limits()), Ok(()));
        // (0028,0010) Rows is US: an odd length is refused.
        let mut bad = Vec::new();
        bad.extend_from_slice(&[0x28, 0x00, 0x10, 0x00]);
        bad.extend_from_slice(&3u32.to_le_bytes());
        bad.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(check_dataset(&bad, Encoding::ImplicitLe, &limits()), Err(DicomError::Malformed(_))));
    }
}
