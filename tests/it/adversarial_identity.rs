//! Adversarial tests against `sos-identity`'s public API: forged input, races, replays, zero-row writes, NULLs in unique keys.
