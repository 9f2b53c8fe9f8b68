"""Engine: homomorphic encryption with TenSEAL (arrives with the HE issue; nothing is
registered until it works end to end)."""
