//! The one place errors become gRPC statuses.

use tonic::Status;

use crate::admin::AdminError;
use crate::admission::QuotaError;
use crate::capability::bindings::{CapabilityError, PatternError};
use crate::namespace::NamespaceError;
use crate::runtime::CallError;
use crate::runtime::RuntimeError;

impl From<PatternError> for Status {
    fn from(err: PatternError) -> Status {
        match err {
            PatternError::NotFound(m) => Status::not_found(m),
            PatternError::InvalidArgument(m) => Status::invalid_argument(m),
            PatternError::ResourceExhausted(m) => Status::resource_exhausted(m),
            PatternError::Unavailable(m) => Status::unavailable(m),
            PatternError::FailedPrecondition(m) => Status::failed_precondition(m),
            PatternError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<RuntimeError> for Status {
    fn from(err: RuntimeError) -> Status {
        let message = err.to_string();
        match err {
            RuntimeError::Busy { .. }
            | RuntimeError::ComputeBusy { .. }
            | RuntimeError::PoolExhausted => Status::resource_exhausted(message),
            RuntimeError::Trap { .. }
            | RuntimeError::Engine(_)
            | RuntimeError::InvalidComponent { .. }
            | RuntimeError::WrongWorld { .. }
            | RuntimeError::UnsupportedImport { .. }
            | RuntimeError::Configure { .. }
            | RuntimeError::Instantiate { .. } => Status::internal(message),
        }
    }
}

impl From<NamespaceError> for Status {
    fn from(err: NamespaceError) -> Status {
        let message = err.to_string();
        match err {
            NamespaceError::Unknown(_) => Status::not_found(message),
            NamespaceError::BadMetadata => Status::invalid_argument(message),
            NamespaceError::WrongPattern { .. } => Status::failed_precondition(message),
        }
    }
}

impl From<CallError> for Status {
    fn from(err: CallError) -> Status {
        match err {
            CallError::Pattern(e) => e.into(),
            CallError::Runtime(e) => e.into(),
        }
    }
}

impl From<CapabilityError> for Status {
    fn from(err: CapabilityError) -> Status {
        match err {
            CapabilityError::Unavailable(m) => Status::unavailable(m),
            CapabilityError::ResourceExhausted(m) => Status::resource_exhausted(m),
            CapabilityError::InvalidArgument(m) => Status::invalid_argument(m),
            CapabilityError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<QuotaError> for Status {
    fn from(err: QuotaError) -> Status {
        Status::resource_exhausted(err.to_string())
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        match e {
            AdminError::NotFound(m) => Status::not_found(m),
            AdminError::AlreadyExists(m) => Status::already_exists(m),
            AdminError::Invalid(m) => Status::invalid_argument(m),
            AdminError::FailedPrecondition(m) => Status::failed_precondition(m),
            AdminError::Quota(m) => Status::resource_exhausted(m),
            AdminError::Storage(m) => Status::unavailable(m),
            AdminError::Aborted(m) => Status::aborted(m),
            AdminError::Internal(m) => Status::internal(m),
        }
    }
}
