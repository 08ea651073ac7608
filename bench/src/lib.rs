//! zpxe's benchmarks: the loopback ceiling shared by the criterion benches and `compare`, and
//! the comparison against peer servers (`zpxe-bench compare`). The peers are Linux packages and
//! the figures come from /proc, so all of it is Linux-only.

#[cfg(target_os = "linux")]
pub mod ceiling;
#[cfg(target_os = "linux")]
pub mod compare;
#[cfg(target_os = "linux")]
pub mod dhcp_blast;
#[cfg(target_os = "linux")]
pub mod dora;
#[cfg(target_os = "linux")]
pub mod hook_bench;
#[cfg(target_os = "linux")]
pub mod netns;
#[cfg(target_os = "linux")]
pub mod procstat;
#[cfg(target_os = "linux")]
pub mod servers;
#[cfg(target_os = "linux")]
pub mod ttfb;
