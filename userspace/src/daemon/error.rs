//! The daemon's typed error: what went wrong, in the user's terms. Only the HTTP layer (`server`)
//! turns a kind into a status code; front-ends that do not speak HTTP map the same kinds their way.
use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// The request asks for something malformed or impossible: a bad name, subnet or address.
    Invalid(String),
    /// A named object (network, endpoint) does not exist.
    NotFound(String),
    /// The request clashes with what exists: a name or address in use, endpoints still attached.
    Conflict(String),
    /// Something the request needs is out of reach for now (the cluster's etcd): try again later.
    Unavailable(String),
    /// The daemon or the kernel failed; the message carries the whole cause chain.
    Internal(anyhow::Error),
}

impl Error {
    pub fn invalid(e: impl fmt::Display) -> Self {
        Self::Invalid(e.to_string())
    }
    pub fn not_found(e: impl fmt::Display) -> Self {
        Self::NotFound(e.to_string())
    }
    pub fn conflict(e: impl fmt::Display) -> Self {
        Self::Conflict(e.to_string())
    }
    pub fn unavailable(e: impl fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }
    /// A refusal by `ipam`: a conflict when what was asked for is taken, bad input otherwise.
    pub fn refused(e: anyhow::Error) -> Self {
        if e.downcast_ref::<crate::ipam::InUse>().is_some() { Self::conflict(e) } else { Self::invalid(e) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::NotFound(m) | Self::Conflict(m) | Self::Unavailable(m) => f.write_str(m),
            Self::Internal(e) => write!(f, "{e:#}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::store::shared::SharedError> for Error {
    fn from(e: crate::store::shared::SharedError) -> Self {
        use crate::store::shared::SharedError as S;
        match e {
            S::Conflict(m) => Self::Conflict(m),
            S::NotFound(m) => Self::NotFound(m),
            S::Unavailable(m) => Self::Unavailable(m),
            S::Failed(e) => Self::Internal(e),
        }
    }
}
