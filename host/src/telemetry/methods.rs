//! Every gRPC method Prism serves, so a request's path maps to a fixed
//! label set: a path nobody serves is counted as `unknown`, never as a new
//! series (paths are chosen by callers).

/// go-grpc-prometheus's `grpc_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl CallType {
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::ClientStream => "client_stream",
            CallType::ServerStream => "server_stream",
            CallType::BidiStream => "bidi_stream",
        }
    }
}

pub struct Method {
    pub service: &'static str,
    pub method: &'static str,
    pub call_type: CallType,
    /// Whether the call names a namespace in `x-prism-namespace` (data
    /// calls); Admin, health and reflection calls are counted without one.
    pub namespaced: bool,
}

const fn data(service: &'static str, method: &'static str, call_type: CallType) -> Method {
    Method {
        service,
        method,
        call_type,
        namespaced: true,
    }
}

const fn plain(service: &'static str, method: &'static str, call_type: CallType) -> Method {
    Method {
        service,
        method,
        call_type,
        namespaced: false,
    }
}

use CallType::{BidiStream, ClientStream, ServerStream, Unary};

pub const METHODS: &[Method] = &[
    data("prism.v1.KeyValue", "Get", Unary),
    data("prism.v1.KeyValue", "Set", Unary),
    data("prism.v1.KeyValue", "Delete", Unary),
    data("prism.v1.KeyValue", "Exists", Unary),
    data("prism.v1.KeyValue", "Scan", Unary),
    data("prism.v1.KeyValue", "BatchGet", Unary),
    data("prism.v1.KeyValue", "BatchSet", Unary),
    data("prism.v1.KeyValue", "BatchDelete", Unary),
    data("prism.v1.PubSub", "Publish", Unary),
    data("prism.v1.PubSub", "PublishBatch", Unary),
    data("prism.v1.PubSub", "PublishStream", BidiStream),
    data("prism.v1.PubSub", "Subscribe", ServerStream),
    data("prism.v1.PubSub", "Unsubscribe", Unary),
    data("prism.v1.PubSub", "Ack", Unary),
    data("prism.v1.Registry", "Register", Unary),
    data("prism.v1.Registry", "Heartbeat", Unary),
    data("prism.v1.Registry", "Unregister", Unary),
    data("prism.v1.Registry", "Get", Unary),
    data("prism.v1.Registry", "Enumerate", Unary),
    data("prism.v1.Registry", "Multicast", Unary),
    data("prism.v1.Registry", "Listen", ServerStream),
    plain("prism.v1.Admin", "ListNamespaces", Unary),
    plain("prism.v1.Admin", "GetNamespace", Unary),
    plain("prism.v1.Admin", "CreateNamespace", Unary),
    plain("prism.v1.Admin", "UpdateNamespace", Unary),
    plain("prism.v1.Admin", "DeleteNamespace", Unary),
    plain("prism.v1.Admin", "UploadPattern", ClientStream),
    plain("prism.v1.Admin", "ListPatterns", Unary),
    plain("prism.v1.Admin", "DeployPattern", Unary),
    plain("prism.v1.Admin", "Promote", Unary),
    plain("prism.v1.Admin", "Rollback", Unary),
    plain("grpc.health.v1.Health", "Check", Unary),
    plain("grpc.health.v1.Health", "Watch", ServerStream),
    plain(
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        BidiStream,
    ),
    plain(
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        BidiStream,
    ),
];

/// Where requests to paths no service answers are counted.
pub const UNKNOWN: Method = plain("unknown", "unknown", Unary);

/// The index into [`METHODS`] of a request path, or `METHODS.len()` (unknown).
pub fn index(path: &str) -> usize {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(service, method)| {
            METHODS
                .iter()
                .position(|m| m.service == service && m.method == method)
        })
        .unwrap_or(METHODS.len())
}

pub fn get(index: usize) -> &'static Method {
    METHODS.get(index).unwrap_or(&UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_method_or_unknown() {
        let get_kv = get(index("/prism.v1.KeyValue/Get"));
        assert_eq!(
            (get_kv.service, get_kv.method),
            ("prism.v1.KeyValue", "Get")
        );
        let listen = get(index("/prism.v1.Registry/Listen"));
        assert_eq!(listen.call_type, CallType::ServerStream);
        assert_eq!(get(index("/prism.v1.KeyValue/Nope")).method, "unknown");
        assert_eq!(get(index("nonsense")).method, "unknown");
        assert_eq!(index("/a/b/c"), METHODS.len());
    }
}
