//! Attachments: the content of `Binary` resources lives in the blob store, sealed under its
//! patient's data key in 64 KiB segments (`brankas_vault::stream_sealer`), and the Binary
//! resource (sealed like any other) names its blob. Inline attachments elsewhere
//! (`Patient.photo`, `Media.content`, `DocumentReference.content.attachment`, …) stay inside
//! their resource; every JPEG or PNG, inline or in a Binary, is stored without its metadata
//! (`brankas_media`).
//!
//! *Architecture invariant:* a Binary belongs to a patient: its `securityContext` names the
//! patient (a reference to another resource of the patient's record is resolved to the
//! patient when written), it is placed in that patient's partition, gated, audited and counted
//! like the rest of the record, and its blob opens only with that patient's key and only as
//! the content of that Binary id (the blob id and the Binary id are the stream's associated
//! data), so a blob reference copied into another Binary fails to open and is refused.
//!
//! *Accepted leakage, introduced here:* the blob store sees each blob's size (the attachment's
//! size plus 16 bytes per 64 KiB segment and a 15-byte header) and write time, not which
//! Binary or patient it belongs to.
//!
//! Memory stays flat whatever the size: uploads are sealed as they arrive ([`BlobSink`]), and
//! downloads are opened one segment at a time ([`BlobReader`]), so ranges cost one segment.

use std::sync::Arc;

use base64::Engine as _;
use brankas_auth::Principal;
use brankas_store::{BlobId, BlobStore, BlobWriter};
use brankas_vault::{DataKey, STREAM_HEADER_LEN, STREAM_TAG_LEN, StreamOpener, StreamSealer};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::{Engine, EngineError, Result, Stored, WriteOutcome};

/// The extension on `Binary._data` that names the sealed blob holding the content.
pub const BLOB_EXT: &str = "https://brankas.id/fhir/StructureDefinition/attachment-blob";
/// The extension on `Binary._data` that gives the content's size in bytes.
pub const BLOB_SIZE_EXT: &str = "https://brankas.id/fhir/StructureDefinition/attachment-size";

/// Sizes of attachments, documented in the README.
#[derive(Clone, Debug)]
pub struct AttachmentLimits {
    /// Largest attachment (Binary content, DICOM instance); larger uploads get 413.
    pub max_bytes: u64,
    /// Largest Binary served inline as FHIR JSON (`data` in base64); larger ones only raw.
    pub max_inline: u64,
    /// Photo decoding bounds (JPEG and PNG are decoded to be cleaned of metadata).
    pub photo: brankas_media::Limits,
}

impl Default for AttachmentLimits {
    fn default() -> Self {
        Self { max_bytes: 4 << 30, max_inline: 16 << 20, photo: brankas_media::Limits::default() }
    }
}

/// Where a new Binary goes: its id, its patient and that patient's key. Made only by
/// [`Engine::binary_target`], after the caller's rights to write to the patient were checked.
pub struct BinaryTarget {
    pub id: String,
    pub patient_id: String,
    key: Arc<DataKey>,
}

/// A committed blob, not yet named by a Binary.
pub struct NewBlob {
    blob: BlobId,
    pub size: u64,
}

/// Seals an attachment as it arrives and writes it to the blob store; nothing is visible
/// until [`BlobSink::finish`], and dropping the sink discards what was written.
pub struct BlobSink {
    sealer: StreamSealer<Arc<DataKey>>,
    writer: Box<dyn BlobWriter>,
    blob: BlobId,
    buf: Zeroizing<Vec<u8>>,
    size: u64,
    max: u64,
}

impl BlobSink {
    /// Adds bytes; fails with [`EngineError::TooLarge`] past the attachment limit.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        let seg = self.sealer.segment_size();
        while !data.is_empty() {
            // A full segment is sealed only once more data follows: the last one is marked.
            if self.buf.len() == seg {
                let sealed = self.sealer.seal(&self.buf, false)?;
                self.writer.write(&sealed)?;
                self.buf.clear();
            }
            let n = (seg - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.size += n as u64;
            if self.size > self.max {
                return Err(too_large(self.max));
            }
        }
        Ok(())
    }

    /// Seals the final segment and commits the blob durably.
    pub fn finish(mut self) -> Result<NewBlob> {
        let sealed = self.sealer.seal(&self.buf, true)?;
        self.writer.write(&sealed)?;
        self.writer.commit()?;
        Ok(NewBlob { blob: self.blob, size: self.size })
    }
}

fn too_large(max: u64) -> EngineError {
    EngineError::TooLarge(format!("the attachment exceeds the limit of {max} bytes"))
}

/// Reads a stored attachment one segment at a time, authenticating each.
pub struct BlobReader {
    opener: StreamOpener<Arc<DataKey>>,
    store: Arc<dyn BlobStore>,
    blob: BlobId,
    segments: u64,
    size: u64,
}

impl BlobReader {
    /// The content's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The plaintext from `offset` to the end of the segment holding `offset + max - 1` (whole
    /// segments, read from the store in one piece and opened one by one; `max` 1 reads one
    /// segment); empty at or past the end. Fails with [`EngineError::Integrity`] if a segment
    /// was altered, moved, cut or spliced in from elsewhere.
    pub fn read_span(&self, offset: u64, max: usize) -> Result<Zeroizing<Vec<u8>>> {
        if offset >= self.size {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let seg = self.opener.segment_size() as u64;
        let full = seg + STREAM_TAG_LEN as u64;
        let first = offset / seg;
        let last = ((offset + max.max(1) as u64 - 1) / seg).min(self.segments - 1);
        let at = STREAM_HEADER_LEN as u64 + first * full;
        let want = ((last - first + 1) * full) as usize;
        let sealed = self.store.read_at(&self.blob, at, want)?.ok_or(EngineError::Integrity)?;
        let mut out = Zeroizing::new(Vec::with_capacity(((last - first + 1) * seg) as usize));
        for (k, chunk) in sealed.chunks(full as usize).enumerate() {
            let index = first + k as u64;
            let plain = self.opener.open(index, index + 1 == self.segments, chunk).map_err(|_| EngineError::Integrity)?;
            out.extend_from_slice(&plain);
        }
        if (sealed.len() as u64) < (last - first) * full + STREAM_TAG_LEN as u64 {
            return Err(EngineError::Integrity);
        }
        let skip = (offset - first * seg) as usize;
        if skip > out.len() {
            return Err(EngineError::Integrity);
        }
        out.drain(..skip);
        Ok(out)
    }

    /// The whole content (for small attachments only: inline JSON, DICOM parsing).
    pub fn read_all(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.size as usize));
        while (out.len() as u64) < self.size {
            let part = self.read_span(out.len() as u64, 1 << 20)?;
            if part.is_empty() {
                return Err(EngineError::Integrity);
            }
            out.extend_from_slice(&part);
        }
        Ok(out)
    }
}

/// The associated data binding a blob to the Binary that names it.
fn context(binary_id: &str, blob: &BlobId) -> Vec<u8> {
    let mut c = b"Binary".to_vec();
    c.extend_from_slice(&(binary_id.len() as u64).to_be_bytes());
    c.extend_from_slice(binary_id.as_bytes());
    c.extend_from_slice(&blob.0);
    c
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn blob_id_of(resource: &Value) -> Option<BlobId> {
    let exts = resource.get("_data")?.get("extension")?.as_array()?;
    let h = exts.iter().find(|e| e.get("url").and_then(Value::as_str) == Some(BLOB_EXT))?.get("valueString")?.as_str()?;
    if h.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(BlobId(id))
}

/// The patient a Binary belongs to: its `securityContext`, which must name a Patient.
pub(crate) fn binary_patient(resource: &Value) -> Option<&str> {
    let r = resource.get("securityContext")?.get("reference")?.as_str()?;
    let id = r.strip_prefix("Patient/")?;
    brankas_fhir::is_valid_id(id).then_some(id)
}

fn no_patient() -> EngineError {
    EngineError::Unprocessable("a Binary must belong to a patient: its securityContext must name the patient (Patient/<id>) or a resource of the patient's record".into())
}

/// Whether an attachment's bytes are a photo to clean, and cleans them.
fn clean_photo(content_type: &str, bytes: Vec<u8>, limits: &brankas_media::Limits) -> Result<Vec<u8>> {
    match brankas_media::classify(content_type, &bytes[..bytes.len().min(16)]) {
        brankas_media::Handling::PassThrough => Ok(bytes),
        brankas_media::Handling::Refuse => {
            Err(EngineError::UnsupportedMedia("images of this type can carry location and camera metadata that cannot be removed here: send JPEG or PNG".into()))
        }
        brankas_media::Handling::Clean(kind) => brankas_media::clean(kind, &bytes, limits).map_err(|e| match e {
            brankas_media::MediaError::TooLarge => EngineError::TooLarge(format!("images are limited to {} bytes", limits.max_bytes)),
            brankas_media::MediaError::TooManyPixels => {
                EngineError::TooLarge(format!("images are limited to {} pixels, {} when their EXIF orientation must be applied", limits.max_pixels, limits.max_pixels_turned))
            }
            brankas_media::MediaError::TooMuchMemory => EngineError::TooLarge("decoding the image would exceed the memory limit".into()),
            e => EngineError::Unprocessable(format!("the image cannot be read: {e}")),
        }),
    }
}

impl Engine {
    fn blob_store(&self) -> Result<&Arc<dyn BlobStore>> {
        self.blobs.as_ref().ok_or_else(|| EngineError::Unprocessable("this server stores no attachments".into()))
    }

    /// The patient named by an attachment's security context: `Patient/<id>`, or a resource of
    /// a patient's record, read with the caller's rights.
    pub fn attachment_patient(&self, who: &Principal, reference: &str) -> Result<String> {
        let (t, id) = reference.split_once('/').ok_or_else(no_patient)?;
        if t == "Patient" {
            return brankas_fhir::is_valid_id(id).then(|| id.to_string()).ok_or_else(no_patient);
        }
        if !self.registry.in_patient_compartment(t) {
            return Err(no_patient());
        }
        let s = self.read_gated(who, t, id).map_err(|e| match e {
            EngineError::NotFound | EngineError::Gone | EngineError::BadRequest(_) => EngineError::Unprocessable("the securityContext names a resource that does not exist".into()),
            e => e,
        })?;
        self.audit_subject(&s.resource).map(|(p, _)| p).ok_or_else(no_patient)
    }

    /// Rewrites a Binary's `securityContext` to the patient it names (see
    /// [`Engine::attachment_patient`]); other types pass unchanged.
    pub(crate) fn bind_binary(&self, who: &Principal, rtype: &str, resource: &mut Value) -> Result<()> {
        if rtype != "Binary" {
            return Ok(());
        }
        let r = resource.get("securityContext").and_then(|c| c.get("reference")).and_then(Value::as_str).ok_or_else(no_patient)?.to_string();
        if r.starts_with("Patient/") {
            return Ok(());
        }
        let pid = self.attachment_patient(who, &r)?;
        resource["securityContext"] = json!({"reference": format!("Patient/{pid}")});
        Ok(())
    }

    /// Checks that `who` may write attachments of patient `patient_id` (`perm` 'c' or 'u') and
    /// returns where the new Binary goes; `id` for an update, else a new id.
    pub fn binary_target(&self, who: &Principal, patient_id: &str, id: Option<&str>, perm: char) -> Result<BinaryTarget> {
        self.require(who, "Binary", perm)?;
        self.blob_store()?;
        let patient = self.current_row("Patient", patient_id)?.filter(|r| !r.deleted);
        if patient.is_none() {
            return Err(EngineError::Unprocessable("the attachment's patient does not exist".into()));
        }
        let partition = self.vault.patient_partition(patient_id);
        self.gate_new(who, &partition)?;
        let key = self.data_key(&partition, false)?.ok_or(EngineError::Integrity)?;
        let id = match id {
            Some(i) if brankas_fhir::is_valid_id(i) => i.to_string(),
            Some(_) => return Err(EngineError::BadRequest("invalid resource id".into())),
            None => crate::crud::new_id()?,
        };
        Ok(BinaryTarget { id, patient_id: patient_id.to_string(), key })
    }

    /// Starts a blob for the Binary `target`.
    pub fn blob_sink(&self, target: &BinaryTarget) -> Result<BlobSink> {
        self.new_sink(&target.id, target.key.clone())
    }

    fn new_sink(&self, binary_id: &str, key: Arc<DataKey>) -> Result<BlobSink> {
        let store = self.blob_store()?;
        let mut raw = [0u8; 32];
        brankas_vault::random_bytes(&mut raw)?;
        let blob = BlobId(raw);
        let (sealer, header) = brankas_vault::stream_sealer(key, &context(binary_id, &blob))?;
        let mut writer = store.create(&blob)?;
        writer.write(&header)?;
        Ok(BlobSink { sealer, writer, blob, buf: Zeroizing::new(Vec::new()), size: 0, max: self.attachments.max_bytes })
    }

    /// Removes a blob no Binary names (a write that failed after its upload).
    pub fn discard_blob(&self, blob: NewBlob) {
        if let Ok(s) = self.blob_store() {
            let _ = s.delete(&blob.blob);
        }
    }

    /// Writes the Binary that names an uploaded blob: a create (`if_match` None and no such
    /// Binary yet), or a new version of an existing Binary. On failure the blob is removed.
    pub fn binary_commit(&self, who: &Principal, target: &BinaryTarget, content_type: &str, blob: NewBlob, if_match: Option<u64>) -> Result<crate::Admitted<WriteOutcome>> {
        self.binary_commit_with(who, target, content_type, blob, if_match, Vec::new()).map(|w| self.admit_write(w))
    }

    /// [`Engine::binary_commit`] with further extensions on `Binary._data`.
    pub(crate) fn binary_commit_with(
        &self,
        who: &Principal,
        target: &BinaryTarget,
        content_type: &str,
        blob: NewBlob,
        if_match: Option<u64>,
        extra: Vec<Value>,
    ) -> Result<WriteOutcome> {
        let mut resource = json!({
            "resourceType": "Binary",
            "id": target.id,
            "contentType": content_type,
            "securityContext": {"reference": format!("Patient/{}", target.patient_id)},
        });
        resource["_data"] = blob_element(&blob);
        if let Some(e) = resource["_data"]["extension"].as_array_mut() {
            e.extend(extra);
        }
        let out = self.write_version(who, "Binary", &target.id, resource, if_match);
        if out.is_err() {
            self.discard_blob(blob);
        }
        out
    }

    /// The content of a served Binary, if it has any.
    pub fn binary_reader(&self, s: &Stored) -> Result<Option<BlobReader>> {
        if s.resource.get("resourceType").and_then(Value::as_str) != Some("Binary") || s.deleted {
            return Ok(None);
        }
        let Some(blob) = blob_id_of(&s.resource) else { return Ok(None) };
        let id = s.resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        let pid = binary_patient(&s.resource).ok_or(EngineError::Integrity)?;
        let key = self.data_key(&self.vault.patient_partition(pid), false)?.ok_or(EngineError::Integrity)?;
        self.open_blob(id, key, blob).map(Some)
    }

    /// Whether the blob a Binary names is absent from the blob store (`brankas verify` tells a
    /// missing attachment from a damaged one).
    pub(crate) fn blob_absent(&self, resource: &Value) -> bool {
        match (blob_id_of(resource), self.blobs.as_ref()) {
            (Some(b), Some(s)) => matches!(s.len(&b), Ok(None)),
            _ => false,
        }
    }

    fn open_blob(&self, binary_id: &str, key: Arc<DataKey>, blob: BlobId) -> Result<BlobReader> {
        let store = self.blob_store()?.clone();
        let len = store.len(&blob)?.ok_or(EngineError::Integrity)?;
        let header = store.read_at(&blob, 0, STREAM_HEADER_LEN)?.ok_or(EngineError::Integrity)?;
        let opener = brankas_vault::stream_opener(key, &context(binary_id, &blob), &header).map_err(|_| EngineError::Integrity)?;
        let (segments, size) = opener.layout(len.checked_sub(STREAM_HEADER_LEN as u64).ok_or(EngineError::Integrity)?).ok_or(EngineError::Integrity)?;
        Ok(BlobReader { opener, store, blob, segments, size })
    }

    /// Puts a Binary's content inline (`data`, base64) for FHIR JSON, within the inline limit.
    pub fn inline_binary(&self, s: &mut Stored) -> Result<()> {
        let Some(reader) = self.binary_reader(s)? else { return Ok(()) };
        if reader.size() > self.attachments.max_inline {
            return Err(EngineError::TooLarge(format!(
                "this Binary holds {} bytes, more than the {} served inside FHIR JSON: request it with Accept set to its contentType",
                reader.size(),
                self.attachments.max_inline
            )));
        }
        let bytes = reader.read_all()?;
        if let Some(o) = s.resource.as_object_mut() {
            o.remove("_data");
            o.insert("data".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes[..])));
        }
        Ok(())
    }

    /// Called by `prepare` for every write: cleans inline photos anywhere in the resource and,
    /// for a Binary, moves `data` into a new blob (or checks that the blob it names is its own).
    pub(crate) fn prepare_attachments(&self, rtype: &str, id: &str, resource: &mut Value, key: &Arc<DataKey>) -> Result<()> {
        clean_inline(resource, &self.attachments.photo, 0)?;
        if rtype != "Binary" {
            return Ok(());
        }
        if binary_patient(resource).is_none() {
            return Err(no_patient());
        }
        if let Some(data) = resource.get("data").and_then(Value::as_str) {
            let bytes = decode_base64(data).ok_or_else(|| EngineError::BadRequest("Binary.data is not valid base64".into()))?;
            let mut sink = self.new_sink(id, key.clone())?;
            sink.write(&bytes)?;
            let blob = sink.finish()?;
            let o = resource.as_object_mut().ok_or(EngineError::Integrity)?;
            o.remove("data");
            o.insert("_data".into(), blob_element(&blob));
        } else if let Some(blob) = blob_id_of(resource) {
            // Only a blob sealed for this Binary under this patient's key opens here.
            let r = self.open_blob(id, key.clone(), blob).map_err(|_| EngineError::Unprocessable("the Binary's content reference is not valid".into()))?;
            r.read_span(0, 1).map_err(|_| EngineError::Unprocessable("the Binary's content reference is not valid".into()))?;
            if let Some(ext) = resource.pointer_mut("/_data/extension").and_then(Value::as_array_mut) {
                ext.retain(|e| e.get("url").and_then(Value::as_str) != Some(BLOB_SIZE_EXT));
                ext.push(json!({"url": BLOB_SIZE_EXT, "valueString": r.size().to_string()}));
            }
        }
        Ok(())
    }
}

/// FHIR `base64Binary`, which may hold whitespace (R4's pattern allows it between quanta).
fn decode_base64(data: &str) -> Option<Vec<u8>> {
    if data.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD.decode(compact).ok();
    }
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}

fn blob_element(blob: &NewBlob) -> Value {
    json!({"extension": [
        {"url": BLOB_EXT, "valueString": hex(&blob.blob.0)},
        {"url": BLOB_SIZE_EXT, "valueString": blob.size.to_string()},
    ]})
}

/// Cleans every inline image attachment (an object with `contentType` and `data`) in a
/// resource, contained resources included.
fn clean_inline(v: &mut Value, limits: &brankas_media::Limits, depth: usize) -> Result<()> {
    if depth > 64 {
        return Ok(());
    }
    match v {
        Value::Object(o) => {
            clean_attachment(o, limits)?;
            for (_, x) in o.iter_mut() {
                clean_inline(x, limits, depth + 1)?;
            }
        }
        Value::Array(a) => {
            for x in a {
                clean_inline(x, limits, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn clean_attachment(o: &mut Map<String, Value>, limits: &brankas_media::Limits) -> Result<()> {
    let (Some(Value::String(data)), ct) = (o.get("data"), o.get("contentType").and_then(Value::as_str).unwrap_or("")) else { return Ok(()) };
    // Only attachments that say or look like images are decoded (a cheap peek at the start).
    let start: String = data.chars().filter(|c| !c.is_ascii_whitespace()).take(24).collect();
    let head = base64::engine::general_purpose::STANDARD.decode(start.get(..start.len() / 4 * 4).unwrap_or("")).unwrap_or_default();
    if matches!(brankas_media::classify(ct, &head), brankas_media::Handling::PassThrough) {
        return Ok(());
    }
    let bytes = decode_base64(data).ok_or_else(|| EngineError::BadRequest("attachment data is not valid base64".into()))?;
    let ct = ct.to_string();
    let cleaned = clean_photo(&ct, bytes, limits)?;
    o.insert("data".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(cleaned)));
    Ok(())
}
