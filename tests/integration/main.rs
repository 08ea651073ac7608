//! zpxe's integration tests: the real binary, real sockets, real clients.
//! One test binary with modules (ripgrep style), so the suite links once.

#![allow(unreachable_pub)]

mod attack;
mod check;
mod common;
mod db;
mod dhcp_netns;
#[cfg(unix)]
mod dhcp_server;
#[cfg(unix)]
mod dhcp_server_defences;
mod drain;
mod explain;
mod firmware;
mod hook;
mod http;
mod http_hostile;
mod instance;
mod live;
mod loadgen;
mod netns;
mod reload;
mod reporting;
#[cfg(unix)]
mod rewrite;
mod secureboot;
mod tftp;
mod tftp_load;
mod web_api;
mod web_hostile;
mod windows;
mod windows_service;
