//! Placeholder module: filled by the dhcp work.
