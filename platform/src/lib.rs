//! zpxe's OS layer.
