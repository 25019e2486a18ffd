//! Adversarial tests against `sos-audit`'s public API: forged input, races, replays, zero-row writes, NULLs in unique keys.
