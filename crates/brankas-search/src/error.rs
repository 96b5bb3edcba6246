//! Query errors.
//!
//! Messages name the offending parameter but never echo a query VALUE: values
//! can be patient data (names, NIKs, phone numbers) and errors end up in logs
//! and OperationOutcomes. Parameter names are passed through [`safe_name`] so
//! that even a name cannot smuggle arbitrary text into a message.

/// Why a search query was refused. `param` fields hold a sanitised parameter
/// name (at most 64 characters of `[A-Za-z0-9_:.-]`), never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The resource type searched on is not an R4 resource type.
    #[error("unknown resource type")]
    UnknownResourceType,
    /// A value could not be parsed for its parameter's kind (bad date,
    /// number, token form, `_count`, ...).
    #[error("invalid value for search parameter `{param}`")]
    BadValue {
        /// The parameter name.
        param: String,
    },
    /// The modifier is not valid for the parameter's kind, or needs
    /// machinery this server does not have (`:in`, `:below` on tokens, ...).
    #[error("unsupported modifier on search parameter `{param}`")]
    UnsupportedModifier {
        /// The parameter name including the modifier.
        param: String,
    },
    /// A known parameter or feature that this server does not support:
    /// chaining, `_has`, `_include`, composite/special parameters, and
    /// parameters whose FHIRPath expression could not be compiled.
    #[error("search parameter `{param}` is not supported")]
    UnsupportedParam {
        /// The parameter name.
        param: String,
    },
    /// `_sort` on a parameter that cannot be sorted by (only date
    /// parameters, `_lastUpdated` and `_id` can).
    #[error("cannot sort by `{param}`")]
    UnsupportedSort {
        /// The sort parameter name.
        param: String,
    },
    /// More than 50 parameters or more than 100 OR-values in one query.
    #[error("search query too complex")]
    TooComplex,
}

/// A parameter name fit for an error message: only `[A-Za-z0-9_:.-]`,
/// at most 64 characters.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-')).take(64).collect()
}

impl QueryError {
    pub(crate) fn bad_value(name: &str) -> QueryError {
        QueryError::BadValue { param: safe_name(name) }
    }
    pub(crate) fn modifier(name: &str) -> QueryError {
        QueryError::UnsupportedModifier { param: safe_name(name) }
    }
    pub(crate) fn unsupported(name: &str) -> QueryError {
        QueryError::UnsupportedParam { param: safe_name(name) }
    }
    pub(crate) fn sort(name: &str) -> QueryError {
        QueryError::UnsupportedSort { param: safe_name(name) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(safe_name("name:exact"), "name:exact");
        assert_eq!(safe_name("a b<script>"), "abscript");
        assert_eq!(safe_name(&"x".repeat(100)).len(), 64);
        assert_eq!(QueryError::bad_value("birth date").to_string(), "invalid value for search parameter `birthdate`");
    }
}
