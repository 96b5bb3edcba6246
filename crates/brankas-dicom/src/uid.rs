//! UID syntax (PS3.5 9.1).

/// The longest UID allowed (PS3.5 9.1).
pub const MAX_UID_LEN: usize = 64;

/// Whether `s` is a syntactically valid UID: 1 to 64 characters, only digits
/// and dots, no empty component (so no leading, trailing or doubled dot).
///
/// Components with a leading zero (`1.02.3`) are accepted although PS3.5
/// forbids them: such UIDs exist in the wild and are harmless.
///
/// ```
/// use brankas_dicom::is_valid_uid;
/// assert!(is_valid_uid("1.2.840.10008.1.2.1"));
/// assert!(is_valid_uid("1.02.3")); // lenient on leading zeros
/// assert!(!is_valid_uid("1..2"));
/// assert!(!is_valid_uid("1.2.a"));
/// assert!(!is_valid_uid(""));
/// ```
pub fn is_valid_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_UID_LEN && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') && s.split('.').all(|c| !c.is_empty())
}

/// Removes UI value padding: trailing NULs and spaces (trailing spaces are
/// not allowed in UIDs but some writers use them), and leading spaces.
pub(crate) fn trim_uid(s: &str) -> &str {
    s.trim_end_matches(['\0', ' ']).trim_start_matches(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_syntax() {
        assert!(is_valid_uid("1"));
        assert!(is_valid_uid(&"1".repeat(64)));
        assert!(!is_valid_uid(&"1".repeat(65)));
        assert!(!is_valid_uid(".1"));
        assert!(!is_valid_uid("1."));
        assert!(!is_valid_uid("1.2 "));
        assert!(!is_valid_uid("1.2\\1.3"));
        assert!(!is_valid_uid("１.2")); // full-width digit
        assert_eq!(trim_uid("1.2\0"), "1.2");
        assert_eq!(trim_uid(" 1.2 "), "1.2");
    }
}
