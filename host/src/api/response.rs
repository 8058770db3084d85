//! Responses bounded by what a client can receive: a pattern (a user's
//! included) can return more than `server.max_message_bytes`; the caller
//! then gets a status saying so instead of a transport error.

use tonic::{Response, Status};

pub fn bounded<T: prost::Message>(message: T, limit: usize) -> Result<Response<T>, Status> {
    let len = message.encoded_len();
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "the response would be {len} bytes, more than this server sends in one message \
             ({limit} bytes, server.max_message_bytes); ask for less (a smaller page or batch)"
        )));
    }
    Ok(Response::new(message))
}
