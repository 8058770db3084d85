//! The one error type every call returns, mapped once from gRPC status codes.

use tonic::Code;

/// What a call can fail with. No raw [`tonic::Status`] escapes the client:
/// each gRPC status code Prism answers with has a variant of its own (see
/// the error semantics in Prism's design: NOT_FOUND for a missing key or
/// identity, INVALID_ARGUMENT for bad input, UNAVAILABLE for a backend that is
/// down, ...), and anything else lands in [`Error::Other`].
///
/// Every `message` is the server's (or, for a request the client refuses to
/// send, the client's) explanation, meant for a person to act on.
///
/// ```
/// use prism_client::Error;
///
/// let err = Error::from(tonic::Status::unavailable("Redis 'cache' at 127.0.0.1:6379 is down"));
/// assert!(matches!(err, Error::Unavailable { .. }));
/// assert!(err.is_retryable());
/// assert_eq!(err.code(), tonic::Code::Unavailable);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key or registry identity is absent (or expired), or the
    /// subscription is unknown.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The server has no such namespace.
    #[error("namespace not found: {message}")]
    NamespaceNotFound { message: String },
    /// The thing to create exists already (a registry identity registered
    /// without `replace`).
    #[error("already exists: {message}")]
    AlreadyExists { message: String },
    /// The request was malformed: a bad key, a value over the namespace's
    /// limits, a bad TTL, cursor or filter. Requests the client refuses to
    /// send (an endpoint that is no URI, a token that cannot travel as
    /// metadata) fail with this too.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// The namespace cannot serve this kind of request (it runs another
    /// pattern), or there is nothing to act on.
    #[error("failed precondition: {message}")]
    FailedPrecondition { message: String },
    /// The token is valid but its grants do not cover this namespace or
    /// operation.
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// No valid token: none was given, or it is malformed, expired or
    /// untrusted.
    #[error("unauthenticated: {message}")]
    Unauthenticated { message: String },
    /// A limit of the namespace was hit (quota, instances, a subscriber's
    /// buffer under the disconnect policy); retry later.
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String },
    /// Prism or its backend cannot be reached right now; retry later.
    #[error("unavailable: {message}")]
    Unavailable { message: String },
    /// The call did not finish within its timeout.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded { message: String },
    /// The namespace's pattern failed (trapped) while serving the request.
    #[error("internal error: {message}")]
    Internal { message: String },
    /// The connection to Prism could not be set up (`connect`).
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Any other status code.
    #[error("{code:?}: {message}")]
    Other { code: Code, message: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the same call may well succeed if made again later: Prism or
    /// its backend was unavailable, a limit was hit, or the connection could
    /// not be made. The client already retries idempotent calls on
    /// UNAVAILABLE by itself (a few times, with backoff); this is for the
    /// caller's own policy. It says nothing about whether the call took
    /// effect (a failed `publish` may have been published).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::ResourceExhausted { .. } | Error::Transport(_)
        )
    }

    /// Whether the key, identity or subscription asked for does not exist
    /// (not an unknown namespace: that is [`Error::NamespaceNotFound`]).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// The gRPC status code this error stands for (`Unavailable` for a
    /// transport error).
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } | Error::NamespaceNotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::Unavailable { .. } | Error::Transport(_) => Code::Unavailable,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Internal { .. } => Code::Internal,
            Error::Other { code, .. } => *code,
        }
    }

    /// The explanation, without the code.
    pub fn message(&self) -> String {
        match self {
            Error::NotFound { message }
            | Error::NamespaceNotFound { message }
            | Error::AlreadyExists { message }
            | Error::InvalidArgument { message }
            | Error::FailedPrecondition { message }
            | Error::PermissionDenied { message }
            | Error::Unauthenticated { message }
            | Error::ResourceExhausted { message }
            | Error::Unavailable { message }
            | Error::DeadlineExceeded { message }
            | Error::Internal { message }
            | Error::Other { message, .. } => message.clone(),
            Error::Transport(err) => err.to_string(),
        }
    }

    /// A request the client refuses to send.
    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            message: message.into(),
        }
    }
}

/// What tonic's own deadline (from the `grpc-timeout` the client sends)
/// reports when it fires: CANCELLED, with this message.
const TIMEOUT_EXPIRED: &str = "Timeout expired";

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let message = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        match status.code() {
            // The host's own wording for a namespace it does not serve.
            Code::NotFound
                if message.starts_with("namespace '") && message.contains("not configured") =>
            {
                Error::NamespaceNotFound { message }
            }
            Code::NotFound => Error::NotFound { message },
            Code::AlreadyExists => Error::AlreadyExists { message },
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument { message },
            Code::FailedPrecondition => Error::FailedPrecondition { message },
            Code::PermissionDenied => Error::PermissionDenied { message },
            Code::Unauthenticated => Error::Unauthenticated { message },
            Code::ResourceExhausted => Error::ResourceExhausted { message },
            Code::Unavailable => Error::Unavailable { message },
            Code::DeadlineExceeded => Error::DeadlineExceeded { message },
            Code::Cancelled if message == TIMEOUT_EXPIRED => Error::DeadlineExceeded { message },
            Code::Internal => Error::Internal { message },
            code => Error::Other { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn every_status_prism_answers_has_its_variant() {
        let cases = [
            (Status::not_found("key 'k' not found"), Code::NotFound),
            (Status::already_exists("x"), Code::AlreadyExists),
            (Status::invalid_argument("x"), Code::InvalidArgument),
            (Status::out_of_range("x"), Code::InvalidArgument),
            (Status::failed_precondition("x"), Code::FailedPrecondition),
            (Status::permission_denied("x"), Code::PermissionDenied),
            (Status::unauthenticated("x"), Code::Unauthenticated),
            (Status::resource_exhausted("x"), Code::ResourceExhausted),
            (Status::unavailable("x"), Code::Unavailable),
            (Status::deadline_exceeded("x"), Code::DeadlineExceeded),
            (Status::internal("x"), Code::Internal),
            (Status::aborted("x"), Code::Aborted),
        ];
        for (status, code) in cases {
            assert_eq!(Error::from(status).code(), code);
        }
    }

    #[test]
    fn an_unknown_namespace_is_not_a_missing_key() {
        let err = Error::from(Status::not_found(
            "namespace 'nope' is not configured on this server",
        ));
        assert!(matches!(err, Error::NamespaceNotFound { .. }));
        assert!(!err.is_not_found());
        assert!(Error::from(Status::not_found("key 'k' not found")).is_not_found());
    }

    #[test]
    fn tonic_deadline_is_deadline_exceeded() {
        let err = Error::from(Status::cancelled(TIMEOUT_EXPIRED));
        assert!(matches!(err, Error::DeadlineExceeded { .. }));
        let other = Error::from(Status::cancelled("stream reset"));
        assert_eq!(other.code(), Code::Cancelled);
    }

    #[test]
    fn retryable_and_messages() {
        assert!(Error::from(Status::unavailable("down")).is_retryable());
        assert!(Error::from(Status::resource_exhausted("quota")).is_retryable());
        assert!(!Error::from(Status::invalid_argument("bad")).is_retryable());
        assert_eq!(
            Error::from(Status::internal("")).message(),
            "Internal error"
        );
        assert_eq!(
            Error::from(Status::invalid_argument("bad key")).to_string(),
            "invalid argument: bad key"
        );
    }
}
