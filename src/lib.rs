//! The zpxe server: configuration, services wired from the engine's machines to the platform's
//! event loops, and the demo.

pub mod config;
pub mod db;
pub mod demo;
pub mod demo_images;
pub mod explain;
pub mod firewall;
pub mod logging;
pub mod machines_cli;
pub mod metrics;
pub mod serve;
pub mod web;
#[cfg(windows)]
pub mod winservice;
