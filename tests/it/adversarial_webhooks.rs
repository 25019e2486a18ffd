//! Adversarial tests against `sos-webhooks`'s public API: forged input, races, replays, zero-row writes, NULLs in unique keys.
