//! The one error type of the QAPI layer.
//!
//! Each variant renders exactly the text QEMU puts in a QMP error's `desc` (or prints
//! for a bad `-netdev`), so clients that match on QEMU's messages keep working. All of
//! them are of QMP class `GenericError`, as in QEMU.

use thiserror::Error;

/// A member of a QAPI argument object that is missing, unexpected or malformed.
///
/// `Display` is QEMU's text; [`QapiError::class`] is the QMP error class.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QapiError {
    /// A mandatory member is absent (both visitors).
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    /// A member no schema type asked for, left over after the visit (QMP input).
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
    /// A key no schema type asked for, left over after the visit (`-netdev` input).
    #[error("Invalid parameter '{0}'")]
    InvalidParameter(String),
    /// A JSON value of the wrong type; `expected` is QEMU's word for the type
    /// ("string", "boolean", "integer", "number", "object", "array").
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    InvalidType {
        /// Full name of the member, e.g. `hostfwd[0].str`.
        name: String,
        /// QEMU's name for the expected JSON type.
        expected: &'static str,
    },
    /// A value of the right type that the member cannot hold, e.g. out of range
    /// (`uint32_t`) or not parseable from a string (`a size value`).
    #[error("Parameter '{name}' expects {expects}")]
    InvalidValue {
        /// Name of the member.
        name: String,
        /// What QEMU says the member expects.
        expects: &'static str,
    },
    /// An enum member (the union discriminator `type`) with an unknown value.
    #[error("Parameter '{name}' does not accept value '{value}'")]
    BadEnumValue {
        /// Name of the member.
        name: String,
        /// The value given.
        value: String,
    },
    /// An `id` that is not an identifier (see [`crate::qapi::id_wellformed`]).
    #[error("Parameter 'id' expects an identifier")]
    BadId,
    /// A `type` that is a valid `NetClientDriver` but has no netdev backend
    /// (`none`): QEMU's `net_client_init1` refuses it with this text.
    #[error("network backend '{0}' is not compiled into this binary")]
    NoBackend(String),
}

impl QapiError {
    /// The QMP error class: every QAPI input error is a `GenericError` in QEMU.
    pub fn class(&self) -> &'static str {
        "GenericError"
    }

    /// The hint QEMU appends on the command line (never part of a QMP `desc`).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            QapiError::BadId => Some(
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
            ),
            _ => None,
        }
    }

    pub(crate) fn invalid_type(name: impl Into<String>, expected: &'static str) -> Self {
        QapiError::InvalidType {
            name: name.into(),
            expected,
        }
    }

    pub(crate) fn invalid_value(name: impl Into<String>, expects: &'static str) -> Self {
        QapiError::InvalidValue {
            name: name.into(),
            expects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_qemus() {
        assert_eq!(
            QapiError::Missing("id".into()).to_string(),
            "Parameter 'id' is missing"
        );
        assert_eq!(
            QapiError::Unexpected("bogus".into()).to_string(),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            QapiError::invalid_type("up", "boolean").to_string(),
            "Invalid parameter type for 'up', expected: boolean"
        );
        assert_eq!(
            QapiError::invalid_value("queues", "uint32_t").to_string(),
            "Parameter 'queues' expects uint32_t"
        );
        assert_eq!(
            QapiError::BadEnumValue {
                name: "type".into(),
                value: "bogus".into()
            }
            .to_string(),
            "Parameter 'type' does not accept value 'bogus'"
        );
        assert_eq!(
            QapiError::BadId.to_string(),
            "Parameter 'id' expects an identifier"
        );
        assert_eq!(QapiError::BadId.class(), "GenericError");
        assert!(QapiError::BadId.hint().is_some());
        assert!(QapiError::Missing("x".into()).hint().is_none());
    }
}
