//! zpxe's benchmarks: the loopback ceiling shared by the criterion benches and `compare`, and
//! the comparison against peer servers (`zpxe-bench compare`).

pub mod ceiling;
pub mod compare;
pub mod dhcp_blast;
pub mod procstat;
pub mod servers;
