//! Fixtures that zpxe's integration tests (tests/integration/) and zpxe-bench both need. A crate
//! of its own because zpxe-bench depends on zpxe, so zpxe's tests cannot use zpxe-bench's; here
//! one copy serves both (zpxe takes it as a dev-dependency).

pub mod dhcp;
pub mod io;
pub mod netns;
