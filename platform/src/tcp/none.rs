//! Systems with no path from file to socket that zpxe uses: bodies are written from the mapping.

use std::rc::Rc;

use zpxe_engine::ByteRange;

use super::{KernelSend, TcpConn};
use crate::store::Version;

pub(super) fn kernel_bodies(_stream: &compio::net::TcpStream) -> bool {
    false
}

pub(super) fn body_path() -> &'static str {
    "writes from the mapping"
}

impl TcpConn {
    /// Never taken (`kernel_bodies` is false); hands everything back to the mapping path.
    pub(super) async fn kernel_head_and_image(
        &mut self,
        head: Vec<u8>,
        _image: &Rc<Version>,
        _range: ByteRange,
    ) -> Result<u64, KernelSend> {
        Err(KernelSend::Unsupported { head })
    }
}
