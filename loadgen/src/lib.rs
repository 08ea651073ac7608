//! zpxe-loadgen: virtual PXE clients driven by the engine's client machines.
