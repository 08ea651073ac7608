//! zpxe-loadgen: a boot-storm simulator. Virtual PXE clients, built from the engine's client
//! machines and run on the platform's event loops, walk a whole network boot (DHCP, 4011, TFTP,
//! iPXE DHCP, HTTP), check every byte, and report latency per phase.

pub mod arrival;
pub mod cli;
pub mod client;
pub mod client_port;
pub mod firmware;
mod html;
pub mod profile;
pub mod progress;
pub mod report;
pub mod script;
pub mod storm;
pub mod verify;
