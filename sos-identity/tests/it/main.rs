//! Integration tests of sos-identity through its public API.

mod portraits;
mod registry;
mod router;
mod vectors;
