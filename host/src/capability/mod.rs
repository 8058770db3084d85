//! The host side of each WIT capability: namespace scoping, and backend
//! errors mapped once into what a guest may see.

pub mod kv;
pub mod pubsub;
pub mod registry;

use crate::backend::BackendError;
use crate::runtime::bindings::CapabilityError;

/// The one place backend failures become guest-visible errors. Messages are
/// built by backends to be safe to show (backend summary, no credentials).
pub fn guest_error(err: BackendError) -> CapabilityError {
    match err {
        BackendError::Unavailable { .. } => CapabilityError::Unavailable(err.to_string()),
        BackendError::CapacityExceeded(m) | BackendError::QuotaExceeded(m) => {
            CapabilityError::ResourceExhausted(m)
        }
        BackendError::InvalidArgument(m) => CapabilityError::InvalidArgument(m),
        BackendError::Internal(m) => CapabilityError::Internal(m),
    }
}
