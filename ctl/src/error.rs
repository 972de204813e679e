//! The control plane's error type. Each variant knows its QMP error class; its `Display`
//! is the `desc` a QMP client sees and the message the command line prints.

/// Errors of control-plane operations.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Arguments did not match the schema.
    #[error(transparent)]
    Qapi(#[from] crate::qapi::QapiError),
    /// A backend could not be created.
    #[error("{id}: {source}")]
    Backend {
        /// The netdev.
        id: String,
        /// What failed.
        #[source]
        source: backends::Error,
    },
    /// The data plane refused a change.
    #[error(transparent)]
    Switch(#[from] switch::SwitchError),
    /// The netdev type exists in the schema but pollswitch cannot serve it (yet, or on
    /// this host); the text says which and why.
    #[error("{0}")]
    Unsupported(String),
    /// An option value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl CtlError {
    /// The QMP error class, as QEMU would report it.
    pub fn class(&self) -> &'static str {
        match self {
            CtlError::Switch(switch::SwitchError::NotFound(_)) => "DeviceNotFound",
            _ => "GenericError",
        }
    }
}
