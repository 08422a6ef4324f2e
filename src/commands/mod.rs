//! One module per `tidings` subcommand.

pub mod check;
pub mod demo;
pub mod explain;
pub mod inbound;
pub mod log;
pub mod migrate;
pub mod run;
pub mod status;
pub mod templates;
