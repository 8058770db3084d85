//! Text helpers every floor may use: how names from requests and files are
//! quoted back in errors and logs.

/// A name from a request, as errors quote it: never more than 64
/// characters, so a huge header is not echoed back.
pub fn shorten(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
        None => name.to_string(),
    }
}
