//! Subcommands that are clients: of a running server (`admin`, `health`)
//! and for pattern authors (`pattern`).

pub mod admin;
pub mod health;
pub mod pattern;
