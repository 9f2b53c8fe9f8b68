"""Engine: two-party additive secret sharing over Z_2^64 (fixed point, Beaver products,
truncation, dealer-side material)."""
